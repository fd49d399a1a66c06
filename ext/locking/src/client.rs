//! `Locking::Client`: the native half of the Ruby API. Its methods are
//! private and positional; lib/locking owns keyword arguments, defaults and
//! validation.

use crate::error::{panic_error, RubyError};
use crate::nogvl::{without_gvl, Outcome};
use crate::rules;
use crate::walk::{RbWalk, Walk};
use locking_core::operate::bulk::OneSidedWalk;
use locking_core::operate::control::LeaseStep;
use locking_core::operate::renew::Renewals;
use locking_core::operate::stats::KeyStatsWalk;
use locking_core::protocol::Target;
use locking_core::{
    Client, ClientConfig, DynamicPhase, EvictionCheck, Interrupt, Lease, Operator, Phase, TokenTtl,
};
use magnus::{function, method, prelude::*, IntoValue, RArray, RHash, RString, Ruby, Value};
use std::sync::Arc;
use std::time::Duration;

#[magnus::wrap(class = "Locking::Client", free_immediately, size)]
pub struct RbClient {
    /// Shared with the renewer thread (which holds a weak reference).
    pub(crate) client: Arc<Client>,
    /// The client's auto-renewed locks (kept here: the core's client knows
    /// nothing of its renewer).
    pub(crate) renewals: Renewals,
}

/// Copies a Ruby String's bytes: the copy is what the GVL-free code reads,
/// so another Ruby thread may change the String meanwhile.
pub(crate) fn bytes(string: RString) -> Vec<u8> {
    // SAFETY: the slice is copied before any other Ruby call can run.
    unsafe { string.as_slice() }.to_vec()
}

fn optional_url(value: Option<RString>) -> Result<Option<String>, magnus::Error> {
    value.map(|url| url.to_string()).transpose()
}

impl RbClient {
    /// `dynamic_cache`: seconds a phase read from the control key is used;
    /// nil for a fixed phase.
    #[allow(clippy::too_many_arguments)]
    fn new(
        source: Option<RString>,
        destination: Option<RString>,
        phase: i64,
        key_prefix: RString,
        timeout: f64,
        pool_size: usize,
        dynamic_cache: Option<f64>,
        host: RString,
        eviction: u8,
        min_replicas_acked: u32,
    ) -> Result<RbClient, magnus::Error> {
        let seconds = |value: f64, what: &str| {
            Duration::try_from_secs_f64(value).map_err(|_| {
                RubyError(locking_core::Error::InvalidArgument(format!(
                    "{what} must be a positive number of seconds, got {value}"
                )))
            })
        };
        let dynamic = match dynamic_cache {
            Some(cache) => Some(DynamicPhase {
                cache: seconds(cache, "phase_cache_ttl")?,
                host: host.to_string()?,
            }),
            None => None,
        };
        let config = ClientConfig {
            source: optional_url(source)?,
            destination: optional_url(destination)?,
            phase: Phase::from_index(phase).map_err(RubyError)?,
            key_prefix: bytes(key_prefix),
            timeout: seconds(timeout, "timeout")?,
            pool_size,
            dynamic,
            eviction: match eviction {
                0 => EvictionCheck::Off,
                1 => EvictionCheck::Warn,
                _ => EvictionCheck::Strict,
            },
            min_replicas_acked,
        };
        Ok(RbClient {
            client: Arc::new(Client::new(config).map_err(RubyError)?),
            renewals: Renewals::default(),
        })
    }

    /// Takes connections with the GVL held, runs `operation` without it,
    /// gives healthy connections back with the GVL held again. Keeping pool
    /// access under the GVL means a fork (which holds the GVL) never copies a
    /// pool lock that another thread holds.
    pub(crate) fn with_lease<T>(
        &self,
        ruby: &Ruby,
        operation: impl FnOnce(&mut Lease<'_>, &Interrupt) -> locking_core::Result<T>,
    ) -> Result<T, magnus::Error> {
        self.with_session(ruby, Client::lease, Client::finish, operation)
    }

    /// The same for an operator command (bulk walks, backfill, control).
    pub(crate) fn with_operator<T>(
        &self,
        ruby: &Ruby,
        operation: impl FnOnce(&mut Operator<'_>, &Interrupt) -> locking_core::Result<T>,
    ) -> Result<T, magnus::Error> {
        self.with_session(
            ruby,
            Operator::new,
            |_, operator| operator.finish(),
            operation,
        )
    }

    fn with_session<'c, S, T>(
        &'c self,
        ruby: &Ruby,
        take: impl FnOnce(&'c Client) -> S,
        give_back: impl FnOnce(&'c Client, S),
        operation: impl FnOnce(&mut S, &Interrupt) -> locking_core::Result<T>,
    ) -> Result<T, magnus::Error> {
        let mut session = take(&self.client);
        let interrupt = Interrupt::new();
        let outcome = without_gvl(&interrupt, || operation(&mut session, &interrupt));
        if interrupt.is_cancelled() {
            drop(session); // its sockets were shut down
        } else {
            give_back(&self.client, session);
        }
        self.give_warnings(ruby);
        match outcome {
            Outcome::Finished(result) => result.map_err(|e| RubyError(e).into()),
            Outcome::Interrupted(jump) => Err(jump),
            Outcome::Panicked(message) => Err(panic_error(ruby, &message)),
        }
    }

    /// Hands the client's and the renewer's warnings to `Locking.server_warning`.
    pub(crate) fn give_warnings(&self, ruby: &Ruby) {
        let renewer = self.renewals.take_warnings();
        for warning in self.client.take_warnings().into_iter().chain(renewer) {
            let _: Result<Value, _> = ruby
                .class_object()
                .const_get::<_, magnus::RClass>("Locking")
                .and_then(|locking| locking.funcall("server_warning", (warning,)));
        }
    }

    fn acquire(
        ruby: &Ruby,
        rb_self: &Self,
        key: RString,
        token: RString,
        ttl_ms: u64,
    ) -> Result<bool, magnus::Error> {
        let (key, token) = (bytes(key), bytes(token));
        rb_self.with_lease(ruby, |lease, interrupt| {
            lease.acquire(&key, &token, ttl_ms, interrupt)
        })
    }

    fn release(
        ruby: &Ruby,
        rb_self: &Self,
        key: RString,
        token: RString,
    ) -> Result<bool, magnus::Error> {
        let (key, token) = (bytes(key), bytes(token));
        rb_self.with_lease(ruby, |lease, interrupt| {
            lease.release(&key, &token, interrupt)
        })
    }

    fn locked(ruby: &Ruby, rb_self: &Self, key: RString) -> Result<bool, magnus::Error> {
        let key = bytes(key);
        rb_self.with_lease(ruby, |lease, interrupt| lease.locked(&key, interrupt))
    }

    fn renew(
        ruby: &Ruby,
        rb_self: &Self,
        key: RString,
        token: RString,
        ttl_ms: u64,
    ) -> Result<bool, magnus::Error> {
        let (key, token) = (bytes(key), bytes(token));
        rb_self.with_lease(ruby, |lease, interrupt| {
            lease.renew(&key, &token, ttl_ms, interrupt)
        })
    }

    /// The renewer's numbers in this process, as a Hash.
    fn renewer_stats(ruby: &Ruby, rb_self: &Self) -> Result<RHash, magnus::Error> {
        let stats = rb_self.renewals.stats();
        let hash = ruby.hash_new();
        hash.aset(ruby.to_symbol("held"), stats.held)?;
        hash.aset(ruby.to_symbol("renewed"), stats.renewed)?;
        hash.aset(ruby.to_symbol("failed"), stats.failed)?;
        hash.aset(ruby.to_symbol("lost"), stats.lost)?;
        hash.aset(ruby.to_symbol("batches"), stats.batches)?;
        hash.aset(ruby.to_symbol("lag_p50_ms"), stats.lag_p50_ms)?;
        hash.aset(ruby.to_symbol("lag_p99_ms"), stats.lag_p99_ms)?;
        hash.aset(ruby.to_symbol("lag_max_ms"), stats.lag_max_ms)?;
        hash.aset(ruby.to_symbol("cpu_ms"), stats.cpu_ms)?;
        hash.aset(ruby.to_symbol("last_error"), stats.last_error)?;
        Ok(hash)
    }

    /// Milliseconds left on our lock; -1 when it has no TTL; nil when not held.
    fn ttl(
        ruby: &Ruby,
        rb_self: &Self,
        key: RString,
        token: RString,
    ) -> Result<Option<i64>, magnus::Error> {
        let (key, token) = (bytes(key), bytes(token));
        let ttl =
            rb_self.with_lease(ruby, |lease, interrupt| lease.ttl(&key, &token, interrupt))?;
        Ok(match ttl {
            TokenTtl::NotHeld => None,
            TokenTtl::Forever => Some(-1),
            TokenTtl::Millis(ms) => Some(ms.min(i64::MAX as u64) as i64),
        })
    }

    /// Mirrors one source lock (full Redis key) onto the destination.
    fn backfill_key(
        ruby: &Ruby,
        rb_self: &Self,
        full_key: RString,
    ) -> Result<&'static str, magnus::Error> {
        use locking_core::protocol::BackfillOutcome;
        let full_key = bytes(full_key);
        let outcome = rb_self.with_operator(ruby, |operator, interrupt| {
            operator.backfill(&full_key, interrupt)
        })?;
        Ok(match outcome {
            BackfillOutcome::Absent => "absent",
            BackfillOutcome::Copied => "copied",
            BackfillOutcome::AlreadyThere => "already_there",
            BackfillOutcome::Conflict => "conflict",
            BackfillOutcome::Undone => "undone",
        })
    }

    /// Lock keys on one server (0 = source, 1 = destination) and their TTLs.
    /// A walk of a server's lock keys: kind 0 = key stats, 1 = one-sided
    /// locks (the gate's count on the source, the reverse gate's on the
    /// destination). Stepped with `_walk_step`, ended with `_walk_finish`.
    fn walk_new(kind: u8, server: u8) -> Result<RbWalk, magnus::Error> {
        let target = target_of(server)?;
        let walk = match kind {
            0 => Walk::Stats(KeyStatsWalk::new(target)),
            _ => Walk::OneSided(OneSidedWalk::new(target)),
        };
        Ok(RbWalk(std::sync::Mutex::new(walk)))
    }

    /// Walks up to `pages` SCAN pages; true when the walk is complete.
    fn walk_step(
        ruby: &Ruby,
        rb_self: &Self,
        walk: &RbWalk,
        pages: usize,
    ) -> Result<bool, magnus::Error> {
        let mut state = walk.take(ruby)?;
        let result = rb_self.with_operator(ruby, |operator, interrupt| match &mut state {
            Walk::Stats(stats) => operator.key_stats_step(stats, pages, interrupt),
            Walk::OneSided(one_sided) => operator.one_sided_step(one_sided, pages, interrupt),
            Walk::Busy => Ok(true),
        });
        walk.put_back(state);
        result
    }

    /// Ends a walk. Key stats: {keys:, without_ttl:, max_ttl_ms:, p99_ttl_ms:,
    /// semaphores:, places:};
    /// one-sided: [count, scanned, example keys, counted without re-check,
    /// semaphore places among the count].
    fn walk_finish(
        ruby: &Ruby,
        rb_self: &Self,
        walk: &RbWalk,
        examples: usize,
    ) -> Result<Value, magnus::Error> {
        match walk.take(ruby)? {
            Walk::Stats(stats) => {
                let stats = stats.finish();
                let hash = counts(
                    ruby,
                    &[
                        ("keys", stats.keys),
                        ("without_ttl", stats.without_ttl),
                        ("max_ttl_ms", stats.max_ttl_ms),
                        ("p99_ttl_ms", stats.p99_ttl_ms),
                        ("semaphores", stats.semaphores),
                        ("places", stats.places),
                    ],
                )?;
                Ok(hash.as_value())
            }
            Walk::OneSided(one_sided) => {
                let report = rb_self.with_operator(ruby, |operator, interrupt| {
                    operator.one_sided_finish(one_sided, examples, interrupt)
                })?;
                let keys = ruby.ary_new();
                for key in &report.examples {
                    keys.push(ruby.str_from_slice(key))?;
                }
                Ok(ruby
                    .ary_new_from_values(&[
                        report.count.into_value_with(ruby),
                        report.scanned.into_value_with(ruby),
                        keys.as_value(),
                        report.unchecked.into_value_with(ruby),
                        report.places.into_value_with(ruby),
                    ])
                    .as_value())
            }
            Walk::Busy => Ok(ruby.qnil().as_value()),
        }
    }

    /// `lease_until`: when the backfill's lease is believed to run out, in
    /// seconds on `belief::now_us`'s clock (nil: a dry run); no write past it.
    fn backfill_batch(
        ruby: &Ruby,
        rb_self: &Self,
        cursor: u64,
        count: usize,
        pages: usize,
        dry_run: bool,
        lease_until: Option<f64>,
    ) -> Result<RHash, magnus::Error> {
        let fence = lease_until.map(|seconds| (seconds.max(0.0) * 1e6).min(u64::MAX as f64) as u64);
        let report = rb_self.with_operator(ruby, |operator, interrupt| {
            if let Some(until) = fence {
                operator.fence(until);
            }
            operator.backfill_batch(cursor, count, pages, dry_run, interrupt)
        })?;
        let errors = ruby.ary_new();
        for error in &report.errors {
            errors.push(error.as_str())?;
        }
        let hash = counts(
            ruby,
            &[
                ("cursor", report.cursor),
                ("scanned", report.scanned),
                ("copied", report.copied),
                ("already_there", report.already_there),
                ("conflicts", report.conflicts),
                ("undone", report.undone),
                ("absent", report.absent),
                ("failed", report.failed),
                ("semaphores", report.semaphores),
                ("places_copied", report.places_copied),
                ("restarted", u64::from(report.restarted)),
            ],
        )?;
        hash.aset(ruby.to_symbol("errors"), errors)?;
        hash.aset(
            ruby.to_symbol("restart_reason"),
            report.restart_reason.as_deref(),
        )?;
        Ok(hash)
    }

    /// One page of the dashboard's lock list on a server (0 source, 1
    /// destination): [next cursor, [[key, token, pttl], ...]].
    #[allow(clippy::type_complexity)]
    fn lock_page(
        ruby: &Ruby,
        rb_self: &Self,
        server: u8,
        cursor: u64,
        glob: RString,
        count: usize,
    ) -> Result<(u64, RArray), magnus::Error> {
        let target = target_of(server)?;
        let glob = bytes(glob);
        let (next, locks) = rb_self.with_operator(ruby, |operator, interrupt| {
            operator.lock_page(target, cursor, &glob, count, interrupt)
        })?;
        let array = ruby.ary_new_capa(locks.len());
        for (key, token, pttl) in locks {
            array.push((ruby.str_from_slice(&key), ruby.str_from_slice(&token), pttl))?;
        }
        Ok((next, array))
    }

    /// One page of `locking cleanup-source`: [next cursor, found, deleted].
    fn cleanup_source_page(
        ruby: &Ruby,
        rb_self: &Self,
        cursor: u64,
        count: usize,
        dry_run: bool,
    ) -> Result<(u64, u64, u64), magnus::Error> {
        rb_self.with_operator(ruby, |operator, interrupt| {
            operator.cleanup_source_page(cursor, count, dry_run, interrupt)
        })
    }

    /// The phase the fleet is told to use (dynamic phases: the control key).
    /// nil when no phase is set.
    fn control_phase(ruby: &Ruby, rb_self: &Self) -> Result<Option<u8>, magnus::Error> {
        let phase = rb_self.with_operator(ruby, |operator, interrupt| {
            operator.control_phase(interrupt)
        })?;
        Ok(phase.map(Phase::index))
    }

    /// Sets the control phase if it is still `expected` (nil: if none is
    /// set); returns the phase stored afterwards (nil: none).
    fn set_control_phase(
        ruby: &Ruby,
        rb_self: &Self,
        expected: Option<i64>,
        target: i64,
    ) -> Result<Option<u8>, magnus::Error> {
        let expected = expected
            .map(Phase::from_index)
            .transpose()
            .map_err(RubyError)?;
        let target = Phase::from_index(target).map_err(RubyError)?;
        let phase = rb_self.with_operator(ruby, |operator, interrupt| {
            operator.set_control_phase(expected, target, interrupt)
        })?;
        Ok(phase.map(Phase::index))
    }

    /// Waits until the control master's replicas have the control writes:
    /// [acknowledged, replicas] ([0, 0]: the master has no replica).
    fn replicate_control(ruby: &Ruby, rb_self: &Self) -> Result<(u64, u64), magnus::Error> {
        rb_self.with_operator(ruby, |operator, interrupt| {
            operator.replicate_control(interrupt)
        })
    }

    /// Live heartbeats: [[process, lowest phase, highest phase, expires_in_ms, age_ms or nil], ...].
    #[allow(clippy::type_complexity)]
    fn fleet(
        ruby: &Ruby,
        rb_self: &Self,
    ) -> Result<Vec<(String, u8, u8, i64, Option<i64>)>, magnus::Error> {
        let members =
            rb_self.with_operator(ruby, |operator, interrupt| operator.fleet(interrupt))?;
        Ok(members
            .into_iter()
            .map(|m| {
                (
                    m.process,
                    m.phase.index(),
                    m.highest.index(),
                    m.expires_in_ms,
                    m.age_ms,
                )
            })
            .collect())
    }

    /// The backfill lease: take or keep it (ttl_ms > 0, over `take_over`'s),
    /// give it back (0) or leave it to expire (-1); returns its holder or nil.
    fn backfill_lease(
        ruby: &Ruby,
        rb_self: &Self,
        holder: RString,
        ttl_ms: i64,
        take_over: Option<RString>,
    ) -> Result<Option<String>, magnus::Error> {
        let holder = holder.to_string()?;
        let take_over = take_over.map(|value| value.to_string()).transpose()?;
        rb_self.with_operator(ruby, |operator, interrupt| {
            let step = match ttl_ms {
                0 => LeaseStep::GiveBack,
                ttl if ttl < 0 => LeaseStep::LetExpire,
                ttl => LeaseStep::Hold {
                    ttl_ms: ttl as u64,
                    take_over: take_over.as_deref(),
                },
            };
            operator.backfill_lease(&holder, step, interrupt)
        })
    }

    /// The run_id of the source (0) or the destination (1).
    /// What the client has seen of a cluster server (nil for another kind).
    fn cluster_stats(
        ruby: &Ruby,
        rb_self: &Self,
        server: u8,
    ) -> Result<Option<RHash>, magnus::Error> {
        let target = target_of(server)?;
        let Some(cluster) = rb_self.client.server(target).and_then(|s| s.cluster()) else {
            return Ok(None);
        };
        let stats = cluster.stats();
        counts(
            ruby,
            &[
                ("masters", stats.masters),
                ("nodes_known", stats.nodes_known),
                ("refreshes", stats.refreshes),
                ("moved", stats.moved),
                ("asked", stats.asked),
                ("retried", stats.retried),
            ],
        )
        .and_then(|hash| {
            let control = cluster.master_of(locking_core::client::CONTROL_TAG);
            hash.aset(ruby.to_symbol("control_master"), control)?;
            Ok(Some(hash))
        })
    }

    /// How far along a walk's position is, 0.0 to 1.0 (1.0 at the end, 0).
    fn walk_fraction(&self, server: u8, position: u64) -> Result<f64, magnus::Error> {
        let target = target_of(server)?;
        Ok(self
            .client
            .server(target)
            .map_or(1.0, |server| server.walk_fraction(position)))
    }

    fn server_run_id(ruby: &Ruby, rb_self: &Self, server: u8) -> Result<String, magnus::Error> {
        let target = if server == 0 {
            Target::Source
        } else {
            Target::Destination
        };
        rb_self.with_operator(ruby, |operator, interrupt| {
            operator.server_run_id(target, interrupt)
        })
    }

    fn audit_push(
        ruby: &Ruby,
        rb_self: &Self,
        entry: RString,
        keep: u64,
    ) -> Result<(), magnus::Error> {
        let entry = bytes(entry);
        rb_self.with_operator(ruby, |operator, interrupt| {
            operator.audit_push(&entry, keep, interrupt)
        })
    }

    fn audit_recent(ruby: &Ruby, rb_self: &Self, count: u64) -> Result<RArray, magnus::Error> {
        let entries = rb_self.with_operator(ruby, |operator, interrupt| {
            operator.audit_recent(count, interrupt)
        })?;
        let array = ruby.ary_new();
        for entry in entries {
            array.push(ruby.str_from_slice(&entry))?;
        }
        Ok(array)
    }

    /// Removes this process's heartbeat when it leaves the fleet (at exit),
    /// unless an operation is still in flight (then it expires by itself).
    /// Returns whether one was removed.
    fn leave_fleet(ruby: &Ruby, rb_self: &Self) -> Result<bool, magnus::Error> {
        let client = &rb_self.client;
        let Some(key) = client.own_heartbeat() else {
            return Ok(false);
        };
        if client.operations_in_flight() > 0 {
            return Ok(false);
        }
        client.forget_phase(); // a later operation reports again
        rb_self.with_operator(ruby, |operator, interrupt| {
            operator.delete_heartbeat(&key, interrupt)
        })
    }

    /// Why the fleet may not move to `target` now: [current, reasons].
    /// `source_only` is the gate's count (needed for 1 -> 2), or nil.
    fn transition_reasons(
        ruby: &Ruby,
        rb_self: &Self,
        target: i64,
        source_only: Option<u64>,
    ) -> Result<(Option<u8>, Vec<String>), magnus::Error> {
        let target = Phase::from_index(target).map_err(RubyError)?;
        let (current, fleet, backfill) = rb_self.with_operator(ruby, |operator, interrupt| {
            Ok((
                operator.control_phase(interrupt)?,
                operator.fleet(interrupt)?,
                operator.control_get(b"backfill", interrupt)?,
            ))
        })?;
        let mut reasons =
            locking_core::operate::control::check_transition(current, target, &fleet, source_only);
        let backfill = backfill.map(|holder| String::from_utf8_lossy(&holder).into_owned());
        reasons.extend(locking_core::operate::control::backfill_blocks(
            target,
            backfill.as_deref(),
        ));
        Ok((current.map(Phase::index), reasons))
    }

    /// A control value on the destination (backfill's saved cursor ...), or nil.
    fn control_get(
        ruby: &Ruby,
        rb_self: &Self,
        name: RString,
    ) -> Result<Option<RString>, magnus::Error> {
        let name = bytes(name);
        let value = rb_self.with_operator(ruby, |operator, interrupt| {
            operator.control_get(&name, interrupt)
        })?;
        Ok(value.map(|v| ruby.str_from_slice(&v)))
    }

    /// A control value's time to live in ms, or nil (not set, or no TTL).
    fn control_ttl_ms(
        ruby: &Ruby,
        rb_self: &Self,
        name: RString,
    ) -> Result<Option<u64>, magnus::Error> {
        let name = bytes(name);
        rb_self.with_operator(ruby, |operator, interrupt| {
            operator.control_pttl(&name, interrupt)
        })
    }

    /// Sets a control value (with a TTL in ms), or deletes it when `value` is nil.
    fn control_set(
        ruby: &Ruby,
        rb_self: &Self,
        name: RString,
        value: Option<RString>,
        ttl_ms: u64,
    ) -> Result<(), magnus::Error> {
        let name = bytes(name);
        let value = value.map(bytes);
        rb_self.with_operator(ruby, |operator, interrupt| {
            operator.control_set(&name, value.as_deref(), ttl_ms, interrupt)
        })
    }

    /// Deletes a lock on every configured server, whoever holds it.
    fn force_delete(ruby: &Ruby, rb_self: &Self, key: RString) -> Result<u64, magnus::Error> {
        let key = bytes(key);
        rb_self.with_operator(ruby, |operator, interrupt| {
            operator.force_delete(&key, interrupt)
        })
    }

    /// Deletes every lock whose key starts with `key_start` (SCAN, every server).
    fn delete_matching(
        ruby: &Ruby,
        rb_self: &Self,
        key_start: RString,
    ) -> Result<u64, magnus::Error> {
        let key_start = bytes(key_start);
        rb_self.with_operator(ruby, |operator, interrupt| {
            operator.delete_matching(&key_start, interrupt)
        })
    }

    fn is_dynamic(&self) -> bool {
        self.client.is_dynamic()
    }

    fn phase(&self) -> u8 {
        self.client.phase().index()
    }

    fn set_phase(&self, phase: i64) -> Result<(), magnus::Error> {
        let phase = Phase::from_index(phase).map_err(RubyError)?;
        self.client.set_phase(phase).map_err(RubyError)?;
        Ok(())
    }

    fn key_prefix(ruby: &Ruby, rb_self: &Self) -> RString {
        ruby.str_from_slice(rb_self.client.key_prefix())
    }

    /// Idle pooled connections of this process, per server (for tests and status).
    fn idle_connections(&self) -> (usize, usize) {
        (
            self.client.idle_connections(Target::Source),
            self.client.idle_connections(Target::Destination),
        )
    }

    fn generate_token() -> String {
        uuid::Uuid::new_v4().to_string()
    }
}

/// A Hash of Symbol => Integer, for reports.
fn counts(ruby: &Ruby, pairs: &[(&str, u64)]) -> Result<RHash, magnus::Error> {
    let hash = ruby.hash_new();
    for (name, value) in pairs {
        hash.aset(ruby.to_symbol(name), *value)?;
    }
    Ok(hash)
}

pub(crate) fn target_of(index: u8) -> Result<locking_core::protocol::Target, magnus::Error> {
    use locking_core::protocol::Target;
    match index {
        0 => Ok(Target::Source),
        1 => Ok(Target::Destination),
        other => Err(RubyError(locking_core::Error::InvalidArgument(format!(
            "server index must be 0 (source) or 1 (destination), got {other}"
        )))
        .into()),
    }
}

pub fn init(ruby: &Ruby) -> Result<(), magnus::Error> {
    let locking = ruby.define_class("Locking", ruby.class_object())?;
    let class = locking.define_class("Client", ruby.class_object())?;
    class.define_singleton_method("_new", function!(RbClient::new, 10))?;
    // Limits live in the core; Ruby's validation reads them from here.
    class.const_set("MAX_POOL_SIZE", locking_core::MAX_POOL_SIZE)?;
    class.const_set("MAX_SECONDS", locking_core::MAX_SECONDS)?;
    class.const_set("MAX_TTL_MS", locking_core::MAX_TTL_MS)?;
    class.const_set(
        "MAX_BACKFILL_PAGES",
        locking_core::operate::bulk::MAX_PAGES_PER_BATCH,
    )?;
    // Rules, too: the CLI prints the core's reasons, never its own copy.
    class.define_singleton_method("gate_reasons", function!(rules::gate_reasons, 3))?;
    class.define_singleton_method(
        "reverse_gate_reasons",
        function!(rules::reverse_gate_reasons, 1),
    )?;
    class.define_singleton_method("backfill_refusal", function!(rules::backfill_refusal, 1))?;
    class.define_singleton_method("generate_token", function!(RbClient::generate_token, 0))?;
    class.define_singleton_method("redact", function!(rules::redact_url, 1))?;
    class.define_singleton_method("server_name", function!(rules::server_name, 1))?;
    class.define_private_method("_acquire", method!(RbClient::acquire, 3))?;
    class.define_private_method("_release", method!(RbClient::release, 2))?;
    class.define_private_method("_locked", method!(RbClient::locked, 1))?;
    class.define_private_method("_renew", method!(RbClient::renew, 3))?;
    class.define_private_method("_ttl", method!(RbClient::ttl, 2))?;
    class.define_private_method("_lock_page", method!(RbClient::lock_page, 4))?;
    class.define_private_method("_renewer_stats", method!(RbClient::renewer_stats, 0))?;
    class.define_private_method("_backfill_key", method!(RbClient::backfill_key, 1))?;
    class.define_private_method("_backfill_batch", method!(RbClient::backfill_batch, 5))?;
    class.define_singleton_method("_walk", function!(RbClient::walk_new, 2))?;
    class.define_private_method("_walk_step", method!(RbClient::walk_step, 2))?;
    class.define_private_method("_walk_finish", method!(RbClient::walk_finish, 2))?;
    class.define_method("phase_index", method!(RbClient::phase, 0))?;
    class.define_method("dynamic?", method!(RbClient::is_dynamic, 0))?;
    class.define_private_method("_force_delete", method!(RbClient::force_delete, 1))?;
    class.define_private_method("_delete_matching", method!(RbClient::delete_matching, 1))?;
    class.define_private_method("_walk_fraction", method!(RbClient::walk_fraction, 2))?;
    class.define_private_method("_cluster_stats", method!(RbClient::cluster_stats, 1))?;
    class.define_private_method("_control_get", method!(RbClient::control_get, 1))?;
    class.define_private_method("_control_set", method!(RbClient::control_set, 3))?;
    class.define_private_method("_control_ttl_ms", method!(RbClient::control_ttl_ms, 1))?;
    class.define_private_method("_control_phase", method!(RbClient::control_phase, 0))?;
    class.define_private_method(
        "_set_control_phase",
        method!(RbClient::set_control_phase, 2),
    )?;
    class.define_private_method(
        "_replicate_control",
        method!(RbClient::replicate_control, 0),
    )?;
    class.define_private_method("_fleet", method!(RbClient::fleet, 0))?;
    class.define_private_method("_leave_fleet", method!(RbClient::leave_fleet, 0))?;
    class.define_private_method("_backfill_lease", method!(RbClient::backfill_lease, 3))?;
    class.define_private_method("_server_run_id", method!(RbClient::server_run_id, 1))?;
    class.define_private_method(
        "_cleanup_source_page",
        method!(RbClient::cleanup_source_page, 3),
    )?;
    class.define_private_method("_audit_push", method!(RbClient::audit_push, 2))?;
    class.define_private_method("_audit_recent", method!(RbClient::audit_recent, 1))?;
    class.define_private_method(
        "_transition_reasons",
        method!(RbClient::transition_reasons, 2),
    )?;
    class.define_private_method("_set_phase", method!(RbClient::set_phase, 1))?;
    class.define_method("key_prefix", method!(RbClient::key_prefix, 0))?;
    class.define_method("idle_connections", method!(RbClient::idle_connections, 0))?;
    Ok(())
}
