//! The process-wide lock client: the configured servers, the current phase,
//! and the driver that runs protocol operations against real Redis.
//!
//! Using it takes three calls, so that a caller holding a global interpreter
//! lock can release it for the blocking part only: `lease` (takes idle
//! connections, never blocks), one blocking operation on the lease, and
//! `finish` (gives healthy connections back, never blocks).

mod driver;
mod dynamic;
mod inflight;
mod lease;
mod route;
mod semaphore;

pub use dynamic::{
    audit_key, backfill_key, control_key, fleet_key, fleet_phases_key, phase_key, CONTROL_TAG,
};
pub(crate) use dynamic::{control_script, phase_of};
pub use lease::{Lease, Route};

use inflight::{Dynamic, InFlight};

use crate::error::{Error, Result};
use crate::protocol::phase::Phase;
use crate::protocol::{Servers, Target};
use crate::topology::node::{EvictionCheck, Node};
use crate::topology::server::Server;
use crate::wire::connection::ServerConfig;
use crate::wire::pipeline::Link;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

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

pub struct Client {
    source: Option<Server>,
    destination: Option<Server>,
    phase: AtomicU8,
    key_prefix: Vec<u8>,
    dynamic: Option<Dynamic>,
    min_replicas_acked: u32,
    timeout: Duration,
    /// Warnings about the configuration, given once (`take_warnings`).
    warnings: std::sync::Mutex<Vec<String>>,
}

/// The connections an operation holds to one server: one per node it
/// used (a cluster's keys live on many), each with the node's place.
pub(crate) type Held = Vec<(usize, Link)>;

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

    pub(crate) fn servers(&self) -> Servers {
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
        let idle =
            |server: &Option<Server>| server.as_ref().map(idle_connection).unwrap_or_default();
        Lease::new(self, idle(&self.source), idle(&self.destination))
    }

    /// How long a connect, read or write may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
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
