//! Phase resolution for dynamic phases: the fleet's phase is read from its
//! control key on the destination (with this process's heartbeat) when the
//! cached read is stale, and each operation counts itself in flight in the
//! phase it acts in (`inflight`) until its lease is dropped.
//!
//! Control keys live under `{locking-control}:<key_prefix>`, outside the key
//! prefix (so they never count as locks) and in one cluster slot; the
//! operator's commands on them are in `operate::control`.

use super::inflight::Dynamic;
use super::lease::{Lease, Route};
use crate::error::{Error, Result};
use crate::protocol::phase::Phase;
use crate::protocol::Target;
use crate::wire::codec::scripts::{self, Script};
use crate::wire::codec::{Arg, Value};
use crate::wire::connection::Interrupt;
use crate::wire::pipeline::Request;
use std::sync::atomic::Ordering;

/// The hash tag every control key shares: on a cluster, one master holds them all.
pub const CONTROL_TAG: &[u8] = b"{locking-control}";

fn control_prefix(key_prefix: &[u8]) -> Vec<u8> {
    let mut prefix = CONTROL_TAG.to_vec();
    prefix.push(b':');
    prefix.extend_from_slice(key_prefix);
    prefix
}

/// The control key `name` of the locks under `key_prefix`.
pub fn control_key(key_prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut key = control_prefix(key_prefix);
    key.extend_from_slice(name);
    key
}

/// The fleet's phase (a number).
pub fn phase_key(key_prefix: &[u8]) -> Vec<u8> {
    control_key(key_prefix, b"phase")
}

/// The audit log: backfills and phase changes, who, when, totals.
pub fn audit_key(key_prefix: &[u8]) -> Vec<u8> {
    control_key(key_prefix, b"audit")
}

/// The running backfill's lease.
pub fn backfill_key(key_prefix: &[u8]) -> Vec<u8> {
    control_key(key_prefix, b"backfill")
}

/// The fleet: process -> when its heartbeat expires (a sorted set).
pub fn fleet_key(key_prefix: &[u8]) -> Vec<u8> {
    control_key(key_prefix, b"fleet")
}

/// The fleet's heartbeats: process -> "LOW HIGH TTL_MS" (a hash).
pub fn fleet_phases_key(key_prefix: &[u8]) -> Vec<u8> {
    control_key(key_prefix, b"fleet-phases")
}

/// Runs a control script on the destination's control node (loaded by the
/// executor if the server lacks it); an error reply is an `Error::Command`.
pub(crate) fn control_script(
    lease: &mut Lease<'_>,
    script: &'static Script,
    keys: &[&[u8]],
    args: &[Arg<'_>],
    interrupt: &Interrupt,
) -> Result<Value> {
    let request = Request::Script { script, keys, args };
    let value = lease
        .exchange(
            Target::Destination,
            Route::Key(CONTROL_TAG),
            &[request],
            interrupt,
        )?
        .pop()
        .unwrap_or(Value::Nil);
    match value {
        Value::ServerError(error) => Err(Error::Command {
            server: lease
                .client()
                .server_name(Target::Destination)
                .unwrap_or("destination")
                .to_string(),
            detail: error.to_string(),
        }),
        value => Ok(value),
    }
}

/// Reads the fleet's phase and records this process's heartbeat: the
/// phases it may act in, `in_use` (lowest, highest) widened by the one read.
fn phase_heartbeat(
    lease: &mut Lease<'_>,
    process: &str,
    heartbeat_ttl_ms: u64,
    in_use: (u8, u8),
    interrupt: &Interrupt,
) -> Result<Phase> {
    let prefix = lease.client().key_prefix().to_vec();
    let result = control_script(
        lease,
        &scripts::PHASE_HEARTBEAT,
        &[
            &phase_key(&prefix),
            &fleet_key(&prefix),
            &fleet_phases_key(&prefix),
        ],
        &[
            heartbeat_ttl_ms.into(),
            u64::from(in_use.0).into(),
            u64::from(in_use.1).into(),
            process.into(),
        ],
        interrupt,
    );
    match result {
        // Lua's error_reply: "ERR LOCKING_..." on Redis 7, bare on older servers.
        Err(Error::Command { server, detail }) if detail.contains("LOCKING_") => {
            Err(Error::Phase(format!(
                "reading the fleet's phase (phase = :dynamic) from {server}: {}; operations refuse until \
                 it is set: `locking phase set PHASE --init` (if the destination lost its data, set \
                 the phase the fleet was in)",
                if detail.contains("LOCKING_NO_PHASE") {
                    "no phase is set (never set, or lost with the destination's data)"
                } else {
                    "the phase key holds no phase number"
                }
            )))
        }
        Err(error) => Err(error.reading_the_phase()),
        Ok(value) => phase_of(value),
    }
}

impl<'c> Lease<'c> {
    /// Settles the phase for this operation: with dynamic phases, reads the
    /// control key (and reports this process) when the cached read is stale,
    /// then counts the operation in flight in the phase it will use.
    pub fn resolve_phase(&mut self, interrupt: &Interrupt) -> Result<Phase> {
        let Some(dynamic) = &self.client.dynamic else {
            return Ok(self.phase);
        };
        if self.registered.is_some() {
            return Ok(self.phase);
        }
        if self.refresh && !backing_off(dynamic) {
            self.read_phase(dynamic, interrupt)?;
            self.refresh = false;
        }
        Ok(self.count_in_flight(dynamic))
    }

    /// Reads the fleet's phase (and writes this process's heartbeat) into
    /// the client's cache; while the control key's master is unreachable,
    /// the cached phase stands as long as the last heartbeat covers it.
    fn read_phase(&mut self, dynamic: &Dynamic, interrupt: &Interrupt) -> Result<()> {
        let process = format!("{}:{}", dynamic.host, crate::process::id());
        let in_use = dynamic.phases_in_use(self.client.phase());
        let mut read = phase_heartbeat(self, &process, dynamic.heartbeat_ttl_ms, in_use, interrupt);
        // A connection that broke (a master that restarted, perhaps
        // empty) is not yet an unreachable master: asked once more on a
        // new connection, a master that is back answers, with its phase
        // or with none (then this process refuses; it must not act on
        // a cached phase whose heartbeat the master no longer holds).
        if matches!(read, Err(Error::Connection { .. })) {
            read = phase_heartbeat(self, &process, dynamic.heartbeat_ttl_ms, in_use, interrupt);
        }
        match read {
            Ok(phase) => {
                self.client.phase.store(phase.index(), Ordering::SeqCst);
                dynamic
                    .read_by_pid
                    .store(crate::process::id(), Ordering::Release);
                dynamic.read_at.store(dynamic.now_ms(), Ordering::SeqCst);
                dynamic.unreachable_at.store(0, Ordering::SeqCst);
                Ok(())
            }
            // The master of the control key is down or failing over:
            // this process's last heartbeat still tells the fleet which
            // phase it acts in, so it goes on in the cached phase until
            // that heartbeat lapses (DESIGN: the control master down).
            Err(error) if control_unreachable(&error) && dynamic.cached_phase_covered() => {
                dynamic
                    .unreachable_at
                    .store(dynamic.now_ms(), Ordering::SeqCst);
                Ok(())
            }
            Err(error) if control_unreachable(&error) && dynamic.read_at.load(Ordering::SeqCst) != 0 => {
                Err(Error::Phase(format!(
                    "{error}; this process went on in its cached phase while its last heartbeat lived \
                     (sending nothing past {} ms of its {} ms), and now refuses until the phase can be read again",
                    dynamic.lapse_ms,
                    dynamic.heartbeat_ttl_ms
                )))
            }
            Err(error) => Err(error),
        }
    }

    /// With dynamic phases, an operation is covered by its process's
    /// heartbeats (which count it in flight) only while they live without a
    /// gap. A process stopped mid-operation for longer (SIGSTOP, a VM pause)
    /// may find the fleet moved on without it: it sends nothing more, even
    /// once another of its threads has read the phase again.
    pub(super) fn heartbeat_lapsed(&self) -> Option<Error> {
        let dynamic = self.client.dynamic.as_ref()?;
        self.registered?;
        let read_at = dynamic.read_at.load(Ordering::SeqCst);
        let now = dynamic.epoch.elapsed().as_millis() as u64 + 1;
        // Whatever is sent before the lapse lands within the heartbeat.
        let lapse = dynamic.lapse_ms;
        let lapsed = crate::protocol::fleet::operation_lapsed(now, self.began_read, read_at, lapse);
        (read_at != 0 && lapsed).then(|| {
            Error::Phase(format!(
                "this operation began under a phase read {} ms ago, and its process's heartbeat lapsed \
                 since ({lapse} ms without a read; was it stopped?): the fleet may have moved to another \
                 phase meanwhile, so this operation sends nothing more",
                now.saturating_sub(self.began_read)
            ))
        })
    }
}

/// How long the cached phase is used without asking again after a failed
/// read of the control key.
const CONTROL_RETRY_MS: u64 = 100;

/// After a failed read of the control key, the cached phase is used for a
/// moment without asking again: a master that blackholes would otherwise
/// cost every operation a timeout.
fn backing_off(dynamic: &Dynamic) -> bool {
    let unreachable_at = dynamic.unreachable_at.load(Ordering::SeqCst);
    unreachable_at != 0
        && dynamic.now_ms() < unreachable_at + CONTROL_RETRY_MS
        && dynamic.cached_phase_covered()
}

/// A failure to read the control key that says its master cannot be
/// reached now (down, failing over), not that the key is missing or wrong:
/// only these let a process go on in its cached phase.
fn control_unreachable(error: &Error) -> bool {
    match error {
        Error::Connection { .. } | Error::Timeout { .. } => true,
        Error::Command { detail, .. } => [
            "CLUSTERDOWN",
            "TRYAGAIN",
            "LOADING",
            "MASTERDOWN",
            "READONLY",
        ]
        .iter()
        .any(|code| detail.contains(code)),
        _ => false,
    }
}

pub(crate) fn phase_of(value: Value) -> Result<Phase> {
    match value {
        Value::Int(index) => Phase::from_index(index),
        Value::BulkString(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| text.trim().parse::<i64>().ok())
            .map_or_else(
                || Err(Error::Internal("a phase key holds no number".into())),
                Phase::from_index,
            ),
        other => Err(Error::Internal(format!("unexpected phase reply {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_keys_stay_outside_the_lock_prefix() {
        assert!(!phase_key(b"locking:").starts_with(b"locking:"));
        assert_eq!(
            fleet_key(b"locking:"),
            b"{locking-control}:locking:fleet".to_vec()
        );
    }
}
