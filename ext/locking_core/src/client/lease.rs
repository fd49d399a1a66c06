//! A `Lease`: connections and a phase for one operation, and the hot
//! operations on it (acquire, release, locked?, renew, ttl). Each settles
//! its phase (`dynamic`), then runs a protocol state machine (`driver`)
//! whose commands are routed to their nodes (`route`).

use super::{Client, Held};
use crate::error::{Error, Result};
use crate::protocol::phase::Phase;
use crate::protocol::{self, Operation, Servers, Target, TokenTtl, MAX_TTL_MS};
use crate::topology::server::Server;
use crate::wire::codec::Value;
use crate::wire::connection::Interrupt;
use crate::wire::pipeline::Request;

/// Which node of a server a request goes to.
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    /// The node that serves this key.
    Key(&'a [u8]),
    /// A node by its place in `Server::nodes` (the operator tools walk each).
    Node(usize),
}

/// Connections and a phase for one operation: the hot operations (acquire,
/// release, locked?, renew, ttl). Every method here may block.
pub struct Lease<'c> {
    pub(super) client: &'c Client,
    pub(super) phase: Phase,
    /// A dynamic phase to read (and heartbeat) before the operation.
    pub(super) refresh: bool,
    /// The phase this operation counts itself in (dynamic phases), until dropped.
    pub(super) registered: Option<Phase>,
    /// The process's phase read (`Dynamic::read_at`) when it was counted:
    /// its heartbeat coverage starts there (`fleet::operation_lapsed`).
    pub(super) began_read: u64,
    /// The connections to each server, with the node each goes to.
    pub(super) source: Held,
    pub(super) destination: Held,
    /// Sends only while a lease of its own (the backfill's) is believed
    /// held, until this `belief` time: see `fence`.
    pub(super) fence_until_us: Option<u64>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.leave_in_flight();
    }
}

impl<'c> Lease<'c> {
    /// A lease on connections already taken (a pool's idle ones, or the
    /// renewer's own), in the client's phase as cached now.
    pub(crate) fn new(client: &'c Client, source: Held, destination: Held) -> Self {
        Lease {
            client,
            phase: client.phase(),
            refresh: client.phase_is_stale(),
            registered: None,
            began_read: 0,
            source,
            destination,
            fence_until_us: None,
        }
    }

    /// Fences everything this lease sends with a lease believed held until
    /// `valid_until_us` (`belief::valid_until` of its last confirmed
    /// renewal): a pipeline is sent only if, held by the network for a whole
    /// timeout, it still lands before that lease can expire. Checked before
    /// every pipeline (each wave of a batch, each redirect followed, each
    /// retry), so a batch that outlives the lease stops in its middle.
    pub(crate) fn fence(&mut self, valid_until_us: u64) {
        self.fence_until_us = Some(valid_until_us);
    }

    /// `Error::Phase` once the fence no longer covers a pipeline sent now.
    pub(crate) fn check_fence(&self) -> crate::error::Result<()> {
        let Some(until) = self.fence_until_us else {
            return Ok(());
        };
        let timeout_us = self.client.timeout.as_micros() as u64;
        let now = crate::protocol::belief::now_us();
        if crate::protocol::belief::may_send(until, now, timeout_us) {
            return Ok(());
        }
        Err(crate::error::Error::Phase(format!(
            "the backfill's lease runs out in {} ms, less than a timeout: it sends nothing more (was it \
             stopped, or a batch slower than its lease?), since the fleet may move into phase 2 once the \
             lease is gone",
            until.saturating_sub(now) / 1000
        )))
    }

    /// Why nothing more may be sent now: the process's heartbeat lapsed
    /// (dynamic phases) or the fence passed; `None` while sending is safe.
    pub(super) fn must_not_send(&self) -> Option<crate::error::Error> {
        self.heartbeat_lapsed().or_else(|| self.check_fence().err())
    }

    /// Ends the lease, handing back the connections it holds (source,
    /// destination) instead of giving them to the pools.
    pub(crate) fn into_held(mut self) -> (Held, Held) {
        (
            std::mem::take(&mut self.source),
            std::mem::take(&mut self.destination),
        )
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub(crate) fn client(&self) -> &'c Client {
        self.client
    }

    pub fn acquire(
        &mut self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
        interrupt: &Interrupt,
    ) -> Result<bool> {
        self.write(key, ttl_ms, interrupt, |phase, _| {
            protocol::Acquire::new(phase, token, ttl_ms)
        })
    }

    /// An acquire or a renew (of a lock or a semaphore's place): a write
    /// with a TTL, which `min_replicas_acked` must see on the replicas
    /// before it counts.
    pub(super) fn write<O: Operation<Output = bool>>(
        &mut self,
        key: &[u8],
        ttl_ms: u64,
        interrupt: &Interrupt,
        operation: impl FnOnce(Phase, Servers) -> O,
    ) -> Result<bool> {
        check_ttl(ttl_ms)?;
        let phase = self.resolve_phase(interrupt)?;
        let written = self.run(key, operation(phase, self.client.servers()), interrupt)?;
        if written {
            self.wait_for_replicas(key, interrupt)?;
        }
        Ok(written)
    }

    /// `min_replicas_acked`: waits (`WAIT n timeout`) until that many
    /// replicas of each server this operation wrote have the write. Fewer in
    /// time is `Error::NotReplicated`; the lock stays written on the master.
    pub(super) fn wait_for_replicas(&mut self, key: &[u8], interrupt: &Interrupt) -> Result<()> {
        if self.client.min_replicas_acked == 0 {
            return Ok(());
        }
        let full_key = self.full_key(key)?;
        for target in [Target::Source, Target::Destination] {
            // The servers this operation talked to, not those of which the
            // lease merely took an idle connection (a server its phase does
            // not write may have none of the replicas asked for).
            if self
                .held(target)
                .iter()
                .any(|(_, connection)| connection.used())
            {
                self.replicated(target, Route::Key(&full_key), interrupt)?;
            }
        }
        Ok(())
    }

    /// `min_replicas_acked` for a batch (the renewer's): a WAIT on every
    /// node a connection of this lease wrote to.
    pub(crate) fn wait_for_replicas_on_nodes(&mut self, interrupt: &Interrupt) -> Result<()> {
        if self.client.min_replicas_acked == 0 {
            return Ok(());
        }
        for target in [Target::Source, Target::Destination] {
            let nodes: Vec<usize> = self
                .held(target)
                .iter()
                .filter(|(_, connection)| connection.used())
                .map(|(node, _)| *node)
                .collect();
            for node in nodes {
                self.replicated(target, Route::Node(node), interrupt)?;
            }
        }
        Ok(())
    }

    pub(super) fn held(&self, target: Target) -> &Held {
        match target {
            Target::Source => &self.source,
            Target::Destination => &self.destination,
        }
    }

    pub(super) fn replicated(
        &mut self,
        target: Target,
        route: Route<'_>,
        interrupt: &Interrupt,
    ) -> Result<()> {
        let wanted = self.client.min_replicas_acked;
        // Half the timeout, so that WAIT's own answer (fewer replicas)
        // arrives well before the read gives up on it.
        let timeout_ms = (self.client.timeout.as_millis() / 2).max(1).to_string();
        let wanted_text = wanted.to_string();
        let wait = [Request::Plain(&[
            "WAIT".into(),
            wanted_text.as_str().into(),
            timeout_ms.as_str().into(),
        ])];
        let replies = self.exchange(target, route, &wait, interrupt)?;
        let server = self
            .client
            .server(target)
            .map_or("", Server::name)
            .to_string();
        match replies.first() {
            Some(Value::Int(acked)) if *acked >= i64::from(wanted) => Ok(()),
            Some(Value::Int(acked)) => Err(Error::NotReplicated {
                server,
                detail: format!(
                    "the lock was written, but only {acked} of the {wanted} replicas asked for \
                     (min_replicas_acked) acknowledged it within {timeout_ms} ms; it may not survive \
                     a failover"
                ),
            }),
            other => Err(Error::Command {
                server,
                detail: format!("unexpected reply to WAIT: {other:?}"),
            }),
        }
    }

    pub fn release(&mut self, key: &[u8], token: &[u8], interrupt: &Interrupt) -> Result<bool> {
        self.resolve_phase(interrupt)?;
        let mut servers = self.client.servers();
        // A best-effort cleanup on a server that just failed one is skipped for
        // a while: a hung server would otherwise cost every release a timeout.
        let full_key = self.full_key(key)?;
        match self.phase {
            Phase::Source => {
                servers.destination &= !self.client.skips_cleanup(Target::Destination, &full_key)
            }
            Phase::Destination => {
                servers.source &= !self.client.skips_cleanup(Target::Source, &full_key)
            }
            Phase::Dual | Phase::Drain => {}
        }
        let mut op = protocol::Release::new(self.phase, token, servers);
        let result = self.run_on(&full_key, &mut op, interrupt);
        if let Some(target) = op.cleanup_failed() {
            if let Some(node) = self
                .client
                .server(target)
                .and_then(|server| server.peek(&full_key))
            {
                node.back_off_cleanup();
            }
        }
        result
    }

    pub fn locked(&mut self, key: &[u8], interrupt: &Interrupt) -> Result<bool> {
        self.resolve_phase(interrupt)?;
        self.run(key, protocol::Locked::new(self.phase), interrupt)
    }

    pub fn renew(
        &mut self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
        interrupt: &Interrupt,
    ) -> Result<bool> {
        self.write(key, ttl_ms, interrupt, |phase, servers| {
            protocol::Renew::new(phase, token, ttl_ms, servers)
        })
    }

    pub fn ttl(&mut self, key: &[u8], token: &[u8], interrupt: &Interrupt) -> Result<TokenTtl> {
        self.resolve_phase(interrupt)?;
        self.run(key, protocol::Ttl::new(self.phase, token), interrupt)
    }

    pub(crate) fn full_key(&self, key: &[u8]) -> Result<Vec<u8>> {
        if key.is_empty() {
            return Err(Error::InvalidArgument("lock key must not be empty".into()));
        }
        let mut full_key = Vec::with_capacity(self.client.key_prefix.len() + key.len());
        full_key.extend_from_slice(&self.client.key_prefix);
        full_key.extend_from_slice(key);
        Ok(full_key)
    }
}

fn check_ttl(ttl_ms: u64) -> Result<()> {
    if ttl_ms == 0 {
        return Err(Error::InvalidArgument(
            "TTL must be at least 1 millisecond".into(),
        ));
    }
    if ttl_ms > MAX_TTL_MS {
        return Err(Error::InvalidArgument(format!(
            "TTL of {ttl_ms} ms is too large (at most {MAX_TTL_MS} ms)"
        )));
    }
    Ok(())
}
