//! The process-wide lock client: the configured servers, the current phase,
//! and the driver that runs protocol operations against real Redis.
//!
//! Using it takes three calls, so that a caller holding a global interpreter
//! lock can release it for the blocking part only: `lease` (takes idle
//! connections, never blocks), one blocking operation on the lease, and
//! `finish` (gives healthy connections back, never blocks).

use crate::error::{Error, Result};
use crate::protocol::phase::Phase;
use crate::protocol::{self, Command, Operation, Reply, Servers, Step, Target, TokenTtl};
use crate::topology::cluster::{self, Redirect};
use crate::topology::node::{EvictionCheck, Node};
use crate::topology::server::Server;
use crate::wire::codec::Value;
use crate::wire::connection::{Interrupt, ServerConfig};
use crate::wire::pipeline::{self, Link, Received, Request};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

pub const MAX_TTL_MS: u64 = i64::MAX as u64 / 1_000_000;
/// The most connections kept per server per process.
pub const MAX_POOL_SIZE: usize = 1024;
/// The longest timeout, and the longest phase cache: a day.
pub const MAX_SECONDS: u64 = 86_400;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub source: Option<String>,
    pub destination: Option<String>,
    /// The phase, or with `dynamic` the phase used until the first read.
    pub phase: Phase,
    pub key_prefix: Vec<u8>,
    pub timeout: Duration,
    pub pool_size: usize,
    /// Read the phase from the destination's control key instead.
    pub dynamic: Option<DynamicPhase>,
    /// What to do about servers whose maxmemory-policy may evict locks.
    pub eviction: EvictionCheck,
    /// After a successful acquire or renew, `WAIT` for this many replicas
    /// of each server written to acknowledge it (0: do not wait).
    pub min_replicas_acked: u32,
}

#[derive(Debug, Clone)]
pub struct DynamicPhase {
    /// How long a phase read from the control key is used before reading again.
    pub cache: Duration,
    /// Names this process in its heartbeat, with its pid: "host:pid".
    pub host: String,
}

/// The cache of a dynamic phase. Atomics only: a fork may happen at any
/// moment, and a child must not inherit a held lock.
struct Dynamic {
    cache_ms: u64,
    heartbeat_ttl_ms: u64,
    /// The heartbeat's age past which this process sends nothing more
    /// (`belief::heartbeat_lapse_ms`).
    lapse_ms: u64,
    host: String,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last read, plus one; 0 = never.
    read_at: AtomicU64,
    read_by_pid: AtomicU32,
    /// Milliseconds since `epoch` of the last failed read of the control key
    /// (its master down or failing over), plus one; 0 = none.
    unreachable_at: AtomicU64,
    /// Operations in flight, per phase they act in. A heartbeat reports every
    /// phase still in use, not just the latest read: an operation that began
    /// on an older cached phase may still be writing in it.
    in_flight: [InFlight; 4],
}

impl Dynamic {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether this process read the phase itself, and its heartbeat of
    /// that read still lives with a phase cache's worth of margin: the
    /// span in which acting in the cached phase is covered by the heartbeat
    /// (the same lapse as `Lease::heartbeat_lapsed`).
    fn cached_phase_covered(&self) -> bool {
        let read_at = self.read_at.load(Ordering::SeqCst);
        read_at != 0
            && self.read_by_pid.load(Ordering::SeqCst) == crate::process::id()
            && !crate::protocol::fleet::heartbeat_lapsed(self.now_ms(), read_at, self.lapse_ms)
    }

    /// The lowest and highest phase this process may still act in: the
    /// cached phase and those of its operations in flight.
    fn phases_in_use(&self, cached: Phase) -> (u8, u8) {
        let busy = Phase::ALL
            .into_iter()
            .filter(|phase| self.in_flight[phase.index() as usize].get() > 0);
        let (low, high) = crate::protocol::fleet::phases_in_use(cached, busy);
        (low.index(), high.index())
    }
}

/// A count of operations in flight that belongs to one process: the pid in
/// the high 32 bits, the count in the low. A forked child inherits its
/// parent's counts mid-flight; here they read as 0 in the child, and the
/// child's first operation starts its own count, with no reset to race.
#[derive(Default)]
struct InFlight(AtomicU64);

impl InFlight {
    fn enter(&self) {
        let pid = u64::from(crate::process::id());
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |value| {
                Some(if value >> 32 == pid {
                    value + 1
                } else {
                    (pid << 32) | 1
                })
            });
    }

    fn leave(&self) {
        let pid = u64::from(crate::process::id());
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |value| {
                (value >> 32 == pid && value & 0xffff_ffff > 0).then(|| value - 1)
            });
    }

    fn get(&self) -> u32 {
        let value = self.0.load(Ordering::SeqCst);
        if value >> 32 == u64::from(crate::process::id()) {
            (value & 0xffff_ffff) as u32
        } else {
            0
        }
    }
}

pub struct Client {
    source: Option<Server>,
    destination: Option<Server>,
    phase: AtomicU8,
    key_prefix: Vec<u8>,
    dynamic: Option<Dynamic>,
    min_replicas_acked: u32,
    timeout: Duration,
    /// Locks taken with auto_renew, and the thread renewing them.
    renewals: crate::operate::renew::Renewals,
    /// Warnings about the configuration, given once (`take_warnings`).
    warnings: std::sync::Mutex<Vec<String>>,
}

/// The connections an operation holds to one server: one per node it
/// used (a cluster's keys live on many), each with the node's place.
pub(crate) type Held = Vec<(usize, Link)>;

/// Connections kept by the renewer thread between its batches (never the
/// pools': see `renew`).
#[derive(Default)]
pub struct Slots {
    source: Held,
    destination: Held,
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Client> {
        let max = Duration::from_secs(MAX_SECONDS);
        if config.timeout.is_zero() || config.timeout > max {
            return Err(Error::InvalidArgument(format!(
                "timeout must be between 0 and {MAX_SECONDS} seconds, got {:?}",
                config.timeout
            )));
        }
        if config.pool_size == 0 || config.pool_size > MAX_POOL_SIZE {
            return Err(Error::InvalidArgument(format!(
                "pool_size must be between 1 and {MAX_POOL_SIZE}, got {}",
                config.pool_size
            )));
        }
        if let Some(dynamic) = &config.dynamic {
            if dynamic.cache.is_zero() || dynamic.cache > max {
                return Err(Error::InvalidArgument(format!(
                    "phase_cache_ttl must be between 0 and {MAX_SECONDS} seconds, got {:?}",
                    dynamic.cache
                )));
            }
        }
        let server = |url: &Option<String>| -> Result<Option<Server>> {
            url.as_deref()
                .map(|url| {
                    ServerConfig::parse(url, config.timeout)
                        .and_then(|parsed| Server::new(parsed, config.pool_size, config.eviction))
                })
                .transpose()
        };
        let dynamic = config.dynamic.map(|dynamic| {
            let cache_ms = dynamic.cache.as_millis().max(1) as u64;
            let timeout_ms = config.timeout.as_millis() as u64;
            // Longer than the cache and the timeout, so a process acting on
            // a cached phase is always visible to `phase advance`.
            let heartbeat_ttl_ms = crate::protocol::belief::heartbeat_ttl_ms(cache_ms, timeout_ms);
            Dynamic {
                cache_ms,
                heartbeat_ttl_ms,
                lapse_ms: crate::protocol::belief::heartbeat_lapse_ms(
                    heartbeat_ttl_ms,
                    cache_ms,
                    timeout_ms,
                ),
                host: dynamic.host,
                epoch: Instant::now(),
                read_at: AtomicU64::new(0),
                read_by_pid: AtomicU32::new(0),
                unreachable_at: AtomicU64::new(0),
                in_flight: Default::default(),
            }
        });
        let (source, destination) = (server(&config.source)?, server(&config.destination)?);
        if let (Some(source), Some(destination)) = (&source, &destination) {
            if source.name() == destination.name() {
                return Err(Error::InvalidArgument(format!(
                    "source and destination are the same server ({}): a migration needs two",
                    source.name()
                )));
            }
        }
        let client = Client {
            source,
            destination,
            phase: AtomicU8::new(config.phase.index()),
            key_prefix: config.key_prefix,
            dynamic,
            min_replicas_acked: config.min_replicas_acked,
            timeout: config.timeout,
            renewals: Default::default(),
            warnings: Default::default(),
        };
        client.warn_of_pinned_prefix();
        if client.dynamic.is_some() {
            if client.destination.is_none() || client.source.is_none() {
                return Err(Error::InvalidArgument(
                    "dynamic phases need both a source and a destination (the phase is kept on the destination)"
                        .into(),
                ));
            }
        } else {
            client.check_phase(config.phase)?;
        }
        Ok(client)
    }

    /// A key prefix with a hash tag gives every lock the same hash slot:
    /// a cluster would keep them all on one master.
    fn warn_of_pinned_prefix(&self) {
        let Some(tag) = crate::topology::cluster::hash_tag(&self.key_prefix) else {
            return;
        };
        for server in [&self.source, &self.destination].into_iter().flatten() {
            if server.cluster().is_some() {
                self.warnings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!(
                        "{}: the key_prefix {:?} has the hash tag {{{}}}, so every lock hashes to one slot and \
                         lives on one master of the cluster; drop the braces to spread them",
                        server.name(),
                        String::from_utf8_lossy(&self.key_prefix),
                        String::from_utf8_lossy(tag)
                    ));
            }
        }
    }

    pub fn phase(&self) -> Phase {
        Phase::from_index(self.phase.load(Ordering::SeqCst) as i64).unwrap_or(Phase::Source)
    }

    pub fn is_dynamic(&self) -> bool {
        self.dynamic.is_some()
    }

    pub fn set_phase(&self, phase: Phase) -> Result<()> {
        if self.dynamic.is_some() {
            return Err(Error::InvalidArgument(
                "the phase is dynamic: change it with `locking phase set` (or advance)".into(),
            ));
        }
        self.check_phase(phase)?;
        self.phase.store(phase.index(), Ordering::Release);
        Ok(())
    }

    fn check_phase(&self, phase: Phase) -> Result<()> {
        if phase.uses_source() && self.source.is_none() {
            return Err(Error::InvalidArgument(format!(
                "phase {phase} needs a source server; configure `source` (or REDIS_URL)"
            )));
        }
        if phase.uses_destination() && self.destination.is_none() {
            return Err(Error::InvalidArgument(format!(
                "phase {phase} needs a destination server; configure `destination`"
            )));
        }
        Ok(())
    }

    /// Whether a best-effort cleanup of `key` on `target` is skipped for now.
    fn skips_cleanup(&self, target: Target, key: &[u8]) -> bool {
        self.server(target)
            .and_then(|server| server.peek(key))
            .is_some_and(Node::skips_cleanup)
    }

    fn servers(&self) -> Servers {
        Servers {
            source: self.source.is_some(),
            destination: self.destination.is_some(),
        }
    }

    pub fn key_prefix(&self) -> &[u8] {
        &self.key_prefix
    }

    pub fn server_name(&self, target: Target) -> Option<&str> {
        self.server(target).map(Server::name)
    }

    pub fn server(&self, target: Target) -> Option<&Server> {
        match target {
            Target::Source => self.source.as_ref(),
            Target::Destination => self.destination.as_ref(),
        }
    }

    /// Reads the phase once and takes idle connections for the servers it uses.
    pub fn lease(&self) -> Lease<'_> {
        // Release and renew may touch every configured server in any phase.
        Lease {
            client: self,
            phase: self.phase(),
            refresh: self.phase_is_stale(),
            registered: None,
            began_read: 0,
            source: self
                .source
                .as_ref()
                .map(idle_connection)
                .unwrap_or_default(),
            destination: self
                .destination
                .as_ref()
                .map(idle_connection)
                .unwrap_or_default(),
        }
    }

    /// How long a connect, read or write may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The auto-renewed locks of this process.
    pub fn renewals(&self) -> &crate::operate::renew::Renewals {
        &self.renewals
    }

    /// Renews `items` (key, token, TTL in ms) in one batch, on the renewer's
    /// own connections: each renew runs as the protocol says for the phase
    /// (read and heartbeated as by any operation), their commands pipelined
    /// per server. One result per item.
    pub fn renew_batch(
        &self,
        slots: &mut Slots,
        items: &[(&[u8], &[u8], u64)],
    ) -> Vec<Result<bool>> {
        let mut lease = Lease {
            client: self,
            phase: self.phase(),
            refresh: self.phase_is_stale(),
            registered: None,
            began_read: 0,
            source: std::mem::take(&mut slots.source),
            destination: std::mem::take(&mut slots.destination),
        };
        let interrupt = Interrupt::new();
        let results = match lease.resolve_phase(&interrupt) {
            Err(error) => items.iter().map(|_| Err(error.clone())).collect(),
            Ok(phase) => {
                let mut keys = Vec::with_capacity(items.len());
                let mut ops = Vec::with_capacity(items.len());
                for (key, token, ttl_ms) in items {
                    keys.push(lease.full_key(key));
                    // Only the servers the phase decides on (see `renew`).
                    let servers = self.servers().used_by(phase);
                    ops.push(protocol::Renew::new(phase, token, *ttl_ms, servers));
                }
                let results = lease.run_batch(&keys, ops, &interrupt);
                // A renewal that min_replicas_acked does not confirm is not one.
                let renewed = results.iter().any(|result| matches!(result, Ok(true)));
                match renewed.then(|| lease.wait_for_replicas_on_nodes(&interrupt)) {
                    Some(Err(error)) => results
                        .into_iter()
                        .map(|result| match result {
                            Ok(true) => Err(error.clone()),
                            other => other,
                        })
                        .collect(),
                    _ => results,
                }
            }
        };
        for (target, held) in [
            (Target::Source, std::mem::take(&mut lease.source)),
            (Target::Destination, std::mem::take(&mut lease.destination)),
        ] {
            let mut kept = Held::new();
            for (node, connection) in held {
                if !connection.healthy {
                    if let Some(server) = self.server(target) {
                        server.connection_failed(node);
                    }
                } else if connection.pid == crate::process::id() && connection.settled() {
                    kept.push((node, connection));
                }
            }
            match target {
                Target::Source => slots.source = kept,
                Target::Destination => slots.destination = kept,
            }
        }
        results
    }

    /// A handle for one operator command (bulk walks, backfill, control),
    /// with the same connections and phase as a lease.
    pub fn operator(&self) -> crate::operate::operator::Operator<'_> {
        crate::operate::operator::Operator::new(self.lease())
    }

    /// Gives an operator's healthy connections back to their pools.
    pub fn finish_operator(&self, operator: crate::operate::operator::Operator<'_>) {
        self.finish(operator.into_lease());
    }

    /// Whether this process has operations in flight (dynamic phases).
    pub fn operations_in_flight(&self) -> u32 {
        self.dynamic.as_ref().map_or(0, |dynamic| {
            dynamic.in_flight.iter().map(InFlight::get).sum()
        })
    }

    /// This process's name in the fleet, if it has reported (dynamic phases).
    pub fn own_heartbeat(&self) -> Option<String> {
        let dynamic = self.dynamic.as_ref()?;
        let pid = crate::process::id();
        (dynamic.read_by_pid.load(Ordering::Acquire) == pid)
            .then(|| format!("{}:{pid}", dynamic.host))
    }

    /// Forgets the cached phase, so that the next operation reads it (and
    /// heartbeats) again.
    pub fn forget_phase(&self) {
        if let Some(dynamic) = &self.dynamic {
            dynamic.read_at.store(0, Ordering::SeqCst);
        }
    }

    fn phase_is_stale(&self) -> bool {
        let Some(dynamic) = &self.dynamic else {
            return false;
        };
        let read_at = dynamic.read_at.load(Ordering::Acquire);
        let now = dynamic.epoch.elapsed().as_millis() as u64 + 1;
        read_at == 0
            || dynamic.read_by_pid.load(Ordering::Acquire) != crate::process::id()
            || now.saturating_sub(read_at) >= dynamic.cache_ms
    }

    /// Gives the lease's healthy connections back to their pools.
    pub fn finish(&self, mut lease: Lease<'_>) {
        for (server, held) in [
            (&self.source, std::mem::take(&mut lease.source)),
            (&self.destination, std::mem::take(&mut lease.destination)),
        ] {
            let Some(server) = server else { continue };
            for (index, connection) in held {
                if !connection.healthy {
                    server.connection_failed(index);
                }
                if let Some(node) = server.node(index) {
                    node.pool.give_back(connection);
                }
            }
        }
    }

    /// Warnings about the servers (an evicting maxmemory-policy), each once.
    pub fn take_warnings(&self) -> Vec<String> {
        [&self.source, &self.destination]
            .into_iter()
            .flatten()
            .flat_map(Server::known_nodes)
            .filter_map(Node::take_warning)
            .chain(
                self.warnings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .drain(..),
            )
            .collect()
    }

    pub fn idle_connections(&self, target: Target) -> usize {
        self.server(target).map_or(0, |s| {
            s.known_nodes().iter().map(|n| n.pool.idle_count()).sum()
        })
    }
}

/// An idle connection to a server of one node, taken with the lease (a
/// cluster's are taken per node as keys are routed).
fn idle_connection(server: &Server) -> Held {
    match server {
        Server::Standalone(node) => node.pool.take().map(|c| (0, c)).into_iter().collect(),
        Server::Cluster(_) => Held::new(),
    }
}

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
    client: &'c Client,
    phase: Phase,
    /// A dynamic phase to read (and heartbeat) before the operation.
    refresh: bool,
    /// The phase this operation counts itself in (dynamic phases), until dropped.
    registered: Option<Phase>,
    /// The process's phase read (`Dynamic::read_at`) when it was counted:
    /// its heartbeat coverage starts there (`fleet::operation_lapsed`).
    began_read: u64,
    /// The connections to each server, with the node each goes to.
    source: Held,
    destination: Held,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let (Some(phase), Some(dynamic)) = (self.registered.take(), &self.client.dynamic) {
            dynamic.in_flight[phase.index() as usize].leave();
        }
    }
}

impl<'c> Lease<'c> {
    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub(crate) fn client(&self) -> &'c Client {
        self.client
    }

    /// Settles the phase for this operation: with dynamic phases, reads the
    /// control key (and reports this process) when the cached read is stale,
    /// then counts the operation in flight in the phase it will use.
    pub fn resolve_phase(&mut self, interrupt: &Interrupt) -> Result<Phase> {
        let client = self.client;
        let Some(dynamic) = &client.dynamic else {
            return Ok(self.phase);
        };
        if self.registered.is_some() {
            return Ok(self.phase);
        }
        // After a failed read of the control key, the cached phase is used
        // for a moment without asking again: a master that blackholes would
        // otherwise cost every operation a timeout.
        let unreachable_at = dynamic.unreachable_at.load(Ordering::SeqCst);
        let backing_off = unreachable_at != 0
            && dynamic.now_ms() < unreachable_at + CONTROL_RETRY_MS
            && dynamic.cached_phase_covered();
        if self.refresh && !backing_off {
            let process = format!("{}:{}", dynamic.host, crate::process::id());
            let in_use = dynamic.phases_in_use(client.phase());
            let mut read = crate::operate::control::phase_heartbeat(
                self,
                &process,
                dynamic.heartbeat_ttl_ms,
                in_use,
                interrupt,
            );
            // A connection that broke (a master that restarted, perhaps
            // empty) is not yet an unreachable master: asked once more on a
            // new connection, a master that is back answers, with its phase
            // or with none (then this process refuses; it must not act on
            // a cached phase whose heartbeat the master no longer holds).
            if matches!(read, Err(Error::Connection { .. })) {
                read = crate::operate::control::phase_heartbeat(
                    self,
                    &process,
                    dynamic.heartbeat_ttl_ms,
                    in_use,
                    interrupt,
                );
            }
            match read {
                Ok(phase) => {
                    client.phase.store(phase.index(), Ordering::SeqCst);
                    dynamic
                        .read_by_pid
                        .store(crate::process::id(), Ordering::Release);
                    dynamic.read_at.store(dynamic.now_ms(), Ordering::SeqCst);
                    dynamic.unreachable_at.store(0, Ordering::SeqCst);
                }
                // The master of the control key is down or failing over:
                // this process's last heartbeat still tells the fleet which
                // phase it acts in, so it goes on in the cached phase until
                // that heartbeat lapses (DESIGN: the control master down).
                Err(error) if control_unreachable(&error) && dynamic.cached_phase_covered() => {
                    dynamic
                        .unreachable_at
                        .store(dynamic.now_ms(), Ordering::SeqCst);
                }
                Err(error) if control_unreachable(&error) && dynamic.read_at.load(Ordering::SeqCst) != 0 => {
                    return Err(Error::Phase(format!(
                        "{error}; this process went on in its cached phase while its last heartbeat lived \
                         (sending nothing past {} ms of its {} ms), and now refuses until the phase can be read again",
                        dynamic.lapse_ms,
                        dynamic.heartbeat_ttl_ms
                    )))
                }
                Err(error) => return Err(error),
            }
            self.refresh = false;
        }
        // Count ourselves in the phase we act in, then make sure the cache
        // did not move meanwhile: a heartbeat written after this point sees
        // either our count or the phase we read (DESIGN: dynamic phases).
        loop {
            let phase = client.phase();
            let count = &dynamic.in_flight[phase.index() as usize];
            count.enter();
            if client.phase() == phase {
                self.phase = phase;
                self.registered = Some(phase);
                self.began_read = dynamic.read_at.load(Ordering::SeqCst);
                return Ok(phase);
            }
            count.leave();
        }
    }

    pub fn acquire(
        &mut self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
        interrupt: &Interrupt,
    ) -> Result<bool> {
        check_ttl(ttl_ms)?;
        self.resolve_phase(interrupt)?;
        let op = protocol::Acquire::new(self.phase, token, ttl_ms);
        let acquired = self.run(key, op, interrupt)?;
        if acquired {
            self.wait_for_replicas(key, interrupt)?;
        }
        Ok(acquired)
    }

    /// `min_replicas_acked`: waits (`WAIT n timeout`) until that many
    /// replicas of each server this operation wrote have the write. Fewer in
    /// time is `Error::NotReplicated`; the lock stays written on the master.
    fn wait_for_replicas(&mut self, key: &[u8], interrupt: &Interrupt) -> Result<()> {
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

    fn held(&self, target: Target) -> &Held {
        match target {
            Target::Source => &self.source,
            Target::Destination => &self.destination,
        }
    }

    fn replicated(
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
        check_ttl(ttl_ms)?;
        self.resolve_phase(interrupt)?;
        let op = protocol::Renew::new(self.phase, token, ttl_ms, self.client.servers());
        let renewed = self.run(key, op, interrupt)?;
        if renewed {
            self.wait_for_replicas(key, interrupt)?;
        }
        Ok(renewed)
    }

    pub fn ttl(&mut self, key: &[u8], token: &[u8], interrupt: &Interrupt) -> Result<TokenTtl> {
        self.resolve_phase(interrupt)?;
        self.run(key, protocol::Ttl::new(self.phase, token), interrupt)
    }

    fn run<O: Operation>(&mut self, key: &[u8], op: O, interrupt: &Interrupt) -> Result<O::Output> {
        let full_key = self.full_key(key)?;
        self.run_on(&full_key, op, interrupt)
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

    /// Runs `ops` side by side, one per key: each round, every operation's
    /// next commands go out in one pipeline per node (source first, then
    /// destination), and each gets its replies. A node that fails fails
    /// the commands sent to it, and the operations decide (as one alone
    /// would); a command a cluster redirects is followed on its own. At
    /// most `BATCH_PIPELINE` commands per pipeline.
    pub(crate) fn run_batch<O: Operation>(
        &mut self,
        keys: &[Result<Vec<u8>>],
        mut ops: Vec<O>,
        interrupt: &Interrupt,
    ) -> Vec<Result<O::Output>> {
        const BATCH_PIPELINE: usize = 1000;
        // (operation, its command's place in its batch, target, command)
        type Sent = (usize, usize, Target, Command);
        let mut outputs: Vec<Option<Result<O::Output>>> = (0..ops.len()).map(|_| None).collect();
        let mut replies: Vec<Vec<Result<Reply>>> = (0..ops.len()).map(|_| Vec::new()).collect();
        let mut active: Vec<usize> = Vec::with_capacity(ops.len());
        for (index, key) in keys.iter().enumerate() {
            match key {
                Ok(_) => active.push(index),
                Err(error) => outputs[index] = Some(Err(error.clone())),
            }
        }
        let key_of = |index: usize| -> &[u8] { keys[index].as_deref().unwrap_or_default() };
        while !active.is_empty() {
            let mut sends: Vec<Sent> = Vec::new();
            let mut next = Vec::with_capacity(active.len());
            for index in active {
                match ops[index].step(std::mem::take(&mut replies[index])) {
                    Step::Done(result) => outputs[index] = Some(result),
                    Step::Send(batch) => {
                        replies[index] = batch
                            .iter()
                            .map(|_| Err(Error::Internal("no reply".into())))
                            .collect();
                        for (place, (target, command)) in batch.into_iter().enumerate() {
                            sends.push((index, place, target, command));
                        }
                        next.push(index);
                    }
                }
            }
            if let Some(error) = self.heartbeat_lapsed() {
                for (index, place, _, _) in &sends {
                    replies[*index][*place] = Err(error.clone());
                }
                active = next;
                continue;
            }
            // Every command's server and node; a key no node serves fails here.
            let mut groups: Vec<((Target, usize), Vec<&Sent>)> = Vec::new();
            for send in &sends {
                let target = send.2;
                let located = self
                    .client
                    .server(target)
                    .ok_or_else(|| self.missing(target))
                    .and_then(|server| server.locate(key_of(send.0), interrupt));
                match located {
                    Ok(node) => match groups.iter_mut().find(|(at, _)| *at == (target, node)) {
                        Some((_, group)) => group.push(send),
                        None => groups.push(((target, node), vec![send])),
                    },
                    Err(error) => replies[send.0][send.1] = Err(error),
                }
            }
            // In waves of one pipeline per node: every node is sent its
            // pipeline before any reply is read, so the nodes (and both
            // servers) work at once; one pipeline in flight per connection.
            let mut done = vec![0usize; groups.len()];
            loop {
                let mut wave = Vec::new();
                for (index, ((target, node), group)) in groups.iter().enumerate() {
                    let range = done[index]..(done[index] + BATCH_PIPELINE).min(group.len());
                    if range.is_empty() {
                        continue;
                    }
                    done[index] = range.end;
                    let requests = lock_requests(&group[range.clone()], keys);
                    let sent = self
                        .connection(*target, Route::Node(*node), interrupt)
                        .and_then(|(_, node, connection)| {
                            let stale = connection.from_pool;
                            pipeline::send(connection, &node.dialect, &requests, interrupt).map(
                                |ticket| {
                                    (ticket, Instant::now() + connection.read_timeout(), stale)
                                },
                            )
                        });
                    wave.push((index, range, sent));
                }
                if wave.is_empty() {
                    break;
                }
                for (index, range, sent) in wave {
                    let ((target, node), group) = &groups[index];
                    let (target, node) = (*target, *node);
                    let chunk = &group[range];
                    let requests = lock_requests(chunk, keys);
                    let mut stale = false;
                    let received = sent.and_then(|(ticket, deadline, was_stale)| {
                        stale = was_stale;
                        let (_, node, connection) =
                            self.connection(target, Route::Node(node), interrupt)?;
                        pipeline::receive(
                            connection,
                            &node.dialect,
                            ticket,
                            &requests,
                            deadline,
                            interrupt,
                        )
                    });
                    let received = match received {
                        // A pooled connection found dead: once more on a new one.
                        Err(Error::Connection { .. }) if stale => self
                            .exchange_raw(target, Route::Node(node), &requests, interrupt)
                            .map(|values| values.into_iter().map(Received::Reply).collect()),
                        other => other,
                    };
                    drop(requests);
                    match received {
                        Ok(received) => {
                            // Each reply is taken, not copied, into its operation.
                            for (send, received) in chunk.iter().zip(received) {
                                let key = key_of(send.0);
                                let request = Request::Lock {
                                    key,
                                    command: &send.3,
                                };
                                let reply = match received {
                                    Received::Reply(value) => self
                                        .follow(target, key, request, value, interrupt)
                                        .and_then(|value| self.decode(target, &send.3, value)),
                                    // NOSCRIPT, an old server: on its own, through the executor.
                                    Received::Resend => {
                                        self.run_command(target, key, &send.3, interrupt)
                                    }
                                };
                                replies[send.0][send.1] = reply;
                            }
                        }
                        Err(error) => {
                            for send in chunk {
                                replies[send.0][send.1] = Err(error.clone());
                            }
                        }
                    }
                }
            }
            active = next;
        }
        outputs
            .into_iter()
            .map(|output| {
                output.unwrap_or_else(|| Err(Error::Internal("an operation did not finish".into())))
            })
            .collect()
    }

    pub(crate) fn run_on<O: Operation>(
        &mut self,
        full_key: &[u8],
        mut op: O,
        interrupt: &Interrupt,
    ) -> Result<O::Output> {
        let mut replies = Vec::new();
        loop {
            match op.step(replies) {
                Step::Done(result) => return result,
                Step::Send(batch) => replies = self.execute(full_key, &batch, interrupt),
            }
        }
    }

    /// With dynamic phases, an operation is covered by its process's
    /// heartbeats (which count it in flight) only while they live without a
    /// gap. A process stopped mid-operation for longer (SIGSTOP, a VM pause)
    /// may find the fleet moved on without it: it sends nothing more, even
    /// once another of its threads has read the phase again.
    fn heartbeat_lapsed(&self) -> Option<Error> {
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

    /// Runs one batch. Commands for two different servers are sent to both
    /// before either reply is read: one round trip of wall time.
    fn execute(
        &mut self,
        key: &[u8],
        batch: &[(Target, Command)],
        interrupt: &Interrupt,
    ) -> Vec<Result<Reply>> {
        if let Some(error) = self.heartbeat_lapsed() {
            return batch.iter().map(|_| Err(error.clone())).collect();
        }
        if let [(first, _), (second, _)] = batch {
            if first != second {
                return self.execute_at_once(key, batch, interrupt);
            }
        }
        batch
            .iter()
            .map(|(target, command)| self.run_command(*target, key, command, interrupt))
            .collect()
    }

    /// Runs one protocol command on the node that serves `key`, following
    /// a cluster's redirects. A pooled connection that breaks before its
    /// first reply in this operation was most likely dropped by the server
    /// while idle (a restart, an idle timeout): the command is sent once
    /// more on a new connection (see `exchange_raw`). Every protocol command
    /// is idempotent for its token (an acquire that did run answers
    /// "already mine" the second time), so the retry is safe even if the
    /// first attempt did reach the server.
    fn run_command(
        &mut self,
        target: Target,
        key: &[u8],
        command: &Command,
        interrupt: &Interrupt,
    ) -> Result<Reply> {
        let request = Request::Lock { key, command };
        let value = self.request(target, Route::Key(key), request, interrupt)?;
        self.decode(target, command, value)
    }

    /// A protocol command's reply, or the server's refusal as an error.
    fn decode(&self, target: Target, command: &Command, value: Value) -> Result<Reply> {
        crate::wire::codec::lock::decode(command, value).map_err(|detail| Error::Command {
            server: self.client.server_name(target).unwrap_or("?").to_string(),
            detail,
        })
    }

    fn execute_at_once(
        &mut self,
        key: &[u8],
        batch: &[(Target, Command)],
        interrupt: &Interrupt,
    ) -> Vec<Result<Reply>> {
        let mut stale = Vec::with_capacity(batch.len());
        // The node each command went to, its ticket, and when its reply is due.
        let mut sent: Vec<Result<(usize, pipeline::Ticket, Instant)>> =
            Vec::with_capacity(batch.len());
        for (target, command) in batch {
            match self.connection(*target, Route::Key(key), interrupt) {
                Ok((index, node, connection)) => {
                    stale.push(connection.from_pool);
                    sent.push(
                        node.send(connection, key, command, interrupt)
                            .map(|ticket| {
                                (index, ticket, Instant::now() + connection.read_timeout())
                            }),
                    );
                }
                Err(error) => {
                    stale.push(false);
                    sent.push(Err(error));
                }
            }
        }
        // One deadline for all replies: the first one sent bounds the wait.
        let deadline = sent.iter().flatten().map(|(_, _, at)| *at).min();
        batch
            .iter()
            .zip(sent)
            .enumerate()
            .map(|(index, ((target, command), sent))| {
                let result = sent.and_then(|(node_index, ticket, _)| {
                    let deadline = deadline.unwrap_or_else(Instant::now);
                    let (_, node, connection) =
                        self.connection(*target, Route::Node(node_index), interrupt)?;
                    node.finish(connection, ticket, key, command, deadline, interrupt)
                });
                match result {
                    Ok(value) => {
                        let request = Request::Lock { key, command };
                        self.follow(*target, key, request, value, interrupt)
                            .and_then(|value| self.decode(*target, command, value))
                    }
                    // See `run_command`: once more on a new connection.
                    Err(Error::Connection { .. }) if stale[index] => {
                        self.run_command(*target, key, command, interrupt)
                    }
                    Err(error) => Err(error),
                }
            })
            .collect()
    }

    /// Runs one request on the node `route` names, following a cluster's
    /// redirects (see `follow`).
    fn request(
        &mut self,
        target: Target,
        route: Route<'_>,
        request: Request<'_>,
        interrupt: &Interrupt,
    ) -> Result<Value> {
        // The hot path: one request, no Vec for its reply.
        let value = self.on_node(target, route, interrupt, |connection, dialect| {
            pipeline::run_one(connection, dialect, request, interrupt)
        })?;
        match (route, request.key()) {
            (_, Some(key)) | (Route::Key(key), None) => {
                self.follow(target, key, request, value, interrupt)
            }
            (Route::Node(_), None) => Ok(value),
        }
    }

    /// `value`, the reply to `request` on `key`; when it is a cluster's
    /// redirect, the request is sent where it says, until a reply that is
    /// not one (at most `MAX_REDIRECTS`). MOVED updates the slot map; ASK
    /// sends `ASKING` first, once; TRYAGAIN and CLUSTERDOWN wait a little
    /// (doubling, within the timeout) and ask the slot's master again. None
    /// of these replies means the command ran, so sending it again is safe.
    fn follow(
        &mut self,
        target: Target,
        key: &[u8],
        request: Request<'_>,
        mut value: Value,
        interrupt: &Interrupt,
    ) -> Result<Value> {
        let Some(cluster) = self.client.server(target).and_then(Server::cluster) else {
            return Ok(value);
        };
        let give_up = Instant::now() + self.client.timeout;
        let mut pause = Duration::from_millis(5);
        for _ in 0..cluster::MAX_REDIRECTS {
            let Some(redirect) = cluster::redirect(&value) else {
                return Ok(value);
            };
            value = match redirect {
                Redirect::Moved(slot, address) => {
                    let node = cluster.moved(slot, &address)?;
                    self.exchange_raw(target, Route::Node(node), &[request], interrupt)?
                        .pop()
                        .unwrap_or(Value::Nil)
                }
                Redirect::Ask(_, address) => {
                    cluster.asked.fetch_add(1, Ordering::Relaxed);
                    let node = cluster.node_at(&address)?;
                    let asking = [Request::Plain(&["ASKING".into()]), request];
                    self.exchange_raw(target, Route::Node(node), &asking, interrupt)?
                        .pop()
                        .unwrap_or(Value::Nil)
                }
                Redirect::Retry(_) if Instant::now() + pause >= give_up => return Ok(value),
                Redirect::Retry(_) => {
                    cluster.retried.fetch_add(1, Ordering::Relaxed);
                    let until = Instant::now() + pause;
                    while Instant::now() < until {
                        if interrupt.is_cancelled() {
                            return Err(Error::Interrupted {
                                server: cluster.name().to_string(),
                            });
                        }
                        std::thread::sleep(Duration::from_millis(1).min(pause));
                    }
                    pause = (pause * 2).min(Duration::from_millis(100));
                    // A failover may have moved the slot meanwhile.
                    cluster.refresh(false, interrupt)?;
                    self.exchange_raw(target, Route::Key(key), &[request], interrupt)?
                        .pop()
                        .unwrap_or(Value::Nil)
                }
            };
        }
        Err(Error::Command {
            server: cluster.name().to_string(),
            detail: format!(
                "still redirected after {} tries (the cluster's slots keep moving)",
                cluster::MAX_REDIRECTS
            ),
        })
    }

    /// Runs `requests` on the node of `target` that `route` names, as one
    /// pipeline through the executor; each request a cluster redirects is
    /// followed on its own (see `follow`).
    pub(crate) fn exchange(
        &mut self,
        target: Target,
        route: Route<'_>,
        requests: &[Request<'_>],
        interrupt: &Interrupt,
    ) -> Result<Vec<Value>> {
        let values = self.exchange_raw(target, route, requests, interrupt)?;
        let redirects = self
            .client
            .server(target)
            .and_then(Server::cluster)
            .is_some();
        if !redirects {
            return Ok(values);
        }
        let mut followed = Vec::with_capacity(values.len());
        for (request, value) in requests.iter().zip(values) {
            let key = match (request.key(), route) {
                (Some(key), _) | (None, Route::Key(key)) => key,
                (None, Route::Node(_)) => {
                    followed.push(value);
                    continue;
                }
            };
            followed.push(self.follow(target, key, *request, value, interrupt)?);
        }
        Ok(followed)
    }

    /// `exchange` without following redirects. Like every operation, it is
    /// sent once more on a new connection when a pooled one turns out dead
    /// (a restart, an idle drop).
    fn exchange_raw(
        &mut self,
        target: Target,
        route: Route<'_>,
        requests: &[Request<'_>],
        interrupt: &Interrupt,
    ) -> Result<Vec<Value>> {
        self.on_node(target, route, interrupt, |connection, dialect| {
            pipeline::run(connection, dialect, requests, interrupt)
        })
    }

    /// Runs `exchange` on the connection to the node `route` names, and once
    /// more on a new connection when a pooled one turns out dead.
    fn on_node<T>(
        &mut self,
        target: Target,
        route: Route<'_>,
        interrupt: &Interrupt,
        exchange: impl Fn(&mut Link, &pipeline::Dialect) -> Result<T>,
    ) -> Result<T> {
        let (index, node, connection) = self.connection(target, route, interrupt)?;
        let stale = connection.from_pool;
        match exchange(connection, &node.dialect) {
            Err(Error::Connection { .. }) if stale => {
                let (_, node, connection) =
                    self.connection(target, Route::Node(index), interrupt)?;
                exchange(connection, &node.dialect)
            }
            other => other,
        }
    }

    fn missing(&self, target: Target) -> Error {
        Error::InvalidArgument(format!(
            "phase {} needs the {} server, which is not configured",
            self.phase,
            target.name()
        ))
    }

    /// The lease's connection to the node `route` names (with its place),
    /// opened (or reopened after a failure) on first use and watched by
    /// this operation's interrupt.
    pub(crate) fn connection(
        &mut self,
        target: Target,
        route: Route<'_>,
        interrupt: &Interrupt,
    ) -> Result<(usize, &Node, &mut Link)> {
        let client = self.client;
        let server = client.server(target).ok_or_else(|| self.missing(target))?;
        let index = match route {
            Route::Key(key) => server.locate(key, interrupt)?,
            Route::Node(index) => index,
        };
        let node = server
            .node(index)
            .ok_or_else(|| Error::Internal(format!("{} has no node {index}", server.name())))?;
        let held = match target {
            Target::Source => &mut self.source,
            Target::Destination => &mut self.destination,
        };
        let place = match held.iter().position(|(at, _)| *at == index) {
            Some(place) if held[place].1.healthy && held[place].1.pid == crate::process::id() => {
                place
            }
            found => {
                if let Some(place) = found {
                    // Not given back: this operation's interrupt still watches it.
                    let (_, broken) = held.remove(place);
                    if !broken.healthy {
                        server.connection_failed(index);
                    }
                }
                // After a broken one, a new connection: the pooled ones are
                // likely as dead (a restart).
                let pooled = found.is_none().then(|| node.pool.take()).flatten();
                let connection = match pooled {
                    Some(connection) => connection,
                    None => match node.connect(interrupt) {
                        Ok(connection) => connection,
                        Err(error) => {
                            if matches!(error, Error::Connection { .. } | Error::Timeout { .. }) {
                                server.connection_failed(index);
                            }
                            return Err(error);
                        }
                    },
                };
                held.push((index, connection));
                held.len() - 1
            }
        };
        let connection = &mut held[place].1;
        connection.watch(interrupt)?;
        Ok((index, node, connection))
    }
}

/// How long the cached phase is used without asking again after a failed
/// read of the control key.
const CONTROL_RETRY_MS: u64 = 100;

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

/// The lock requests of a batch's commands.
fn lock_requests<'a>(
    chunk: &[&'a (usize, usize, Target, Command)],
    keys: &'a [Result<Vec<u8>>],
) -> Vec<Request<'a>> {
    chunk
        .iter()
        .map(|send| Request::Lock {
            key: keys[send.0].as_deref().unwrap_or_default(),
            command: &send.3,
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_counts_in_flight_until_it_leaves() {
        let count = InFlight::default();
        assert_eq!(count.get(), 0);
        count.enter();
        count.enter();
        assert_eq!(count.get(), 2);
        count.leave();
        assert_eq!(count.get(), 1);
        count.leave();
        count.leave(); // never below zero
        assert_eq!(count.get(), 0);
        count.enter();
        assert_eq!(count.get(), 1);
    }

    #[test]
    fn a_forked_child_does_not_inherit_its_parents_counts() {
        let pid = u64::from(crate::process::id());
        let parents = ((pid + 1) << 32) | 3; // another pid, 3 in flight
        let count = InFlight(AtomicU64::new(parents));
        assert_eq!(count.get(), 0);
        count.leave();
        assert_eq!(count.0.load(Ordering::SeqCst), parents);
        count.enter();
        assert_eq!(count.get(), 1);
        assert_eq!(count.0.load(Ordering::SeqCst), (pid << 32) | 1);
    }

    #[test]
    fn a_heartbeat_spans_the_phases_of_the_operations_in_flight() {
        let dynamic = Dynamic {
            cache_ms: 1_000,
            heartbeat_ttl_ms: 10_000,
            host: "web".into(),
            epoch: Instant::now(),
            lapse_ms: 9_000,
            read_at: AtomicU64::new(0),
            read_by_pid: AtomicU32::new(0),
            unreachable_at: AtomicU64::new(0),
            in_flight: Default::default(),
        };
        assert_eq!(dynamic.phases_in_use(Phase::Dual), (1, 1));
        dynamic.in_flight[3].enter();
        assert_eq!(dynamic.phases_in_use(Phase::Dual), (1, 3));
        dynamic.in_flight[0].enter();
        assert_eq!(dynamic.phases_in_use(Phase::Dual), (0, 3));
        dynamic.in_flight[3].leave();
        dynamic.in_flight[0].leave();
        assert_eq!(dynamic.phases_in_use(Phase::Drain), (2, 2));
    }
}

#[cfg(test)]
mod redirect_tests;
