//! Redis Cluster: which node serves a key, and how that map is learnt and
//! kept.
//!
//! A key lives in one of 16,384 hash slots (CRC16 of the key, or of its
//! hash tag `{...}`), and each slot is served by one master. The map is
//! read from `CLUSTER NODES` of any reachable node (the seeds of the
//! setting, then the masters already known) and kept as one atomic entry
//! per slot, so that routing a key is two loads and no lock.
//!
//! Nodes live in an append-only table: a node, once known, keeps its place
//! (and its pool) for the life of the client, so a `&Node` handed out stays
//! valid while the map changes under it. Replicas are never entered: locks
//! are only read and written on masters.
//!
//! The map changes under a running client (resharding, failover):
//! - `MOVED slot host:port`: the slot is entered for that node at once, and
//!   the whole map is read again before the next use (at most every
//!   `REFRESH_INTERVAL`);
//! - `ASK slot host:port`: the command goes once to that node, after
//!   `ASKING` (a slot being migrated; the map is unchanged);
//! - `TRYAGAIN`, `CLUSTERDOWN`: retried after a short pause, within the
//!   operation's timeout;
//! - a connection to a node that breaks: the map is read again (a failover
//!   may have promoted a replica).
//!
//! Walks (the operator tools) go master by master, in slot order. Their
//! position is one number: the walked master's place, its own SCAN cursor,
//! and 15 bits of the map's fingerprint, so a position kept across a
//! topology change is seen to be stale and the walk starts over.

use crate::error::{Error, Result};
use crate::topology::node::{EvictionCheck, Node};
use crate::wire::codec::Value;
use crate::wire::connection::{Interrupt, ServerConfig};
use crate::wire::pipeline::Request;
use crate::wire::transport::{self, Address};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const SLOTS: usize = 16_384;
/// The most nodes one client keeps (masters seen over its life).
pub const MAX_NODES: usize = 1024;
const UNKNOWN: u16 = u16::MAX;
/// A map read again because of a redirect waits at least this long after
/// the last read.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(100);
/// How many MOVED/ASK redirects one command follows (retries are bounded
/// by the timeout).
pub const MAX_REDIRECTS: usize = 16;

const fn crc16_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = (byte as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[byte] = crc;
        byte += 1;
    }
    table
}

static CRC16: [u16; 256] = crc16_table();

/// CRC16/XMODEM, the cluster's key hash.
pub fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &byte| {
        (crc << 8) ^ CRC16[(((crc >> 8) as u8) ^ byte) as usize]
    })
}

/// The part of `key` that is hashed: the first `{...}` with something
/// inside, else the whole key.
pub fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let close = key[open + 1..].iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &key[open + 1..open + 1 + close])
}

/// The hash slot of `key`.
pub fn key_slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key).unwrap_or(key)) % SLOTS as u16
}

/// A reply that sends the command elsewhere, or asks for it later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// The slot is served by another node for good.
    Moved(u16, Address),
    /// The slot is being migrated: this key is asked of that node, once.
    Ask(u16, Address),
    /// TRYAGAIN or CLUSTERDOWN: the same command, a little later.
    Retry(String),
}

/// The redirect an error reply is, if it is one. Each of these replies
/// means the command was not run.
pub fn redirect(value: &Value) -> Option<Redirect> {
    let error = value.as_error()?;
    let mut words = error.0.split(' ');
    let code = words.next()?;
    match code {
        "MOVED" | "ASK" => {
            let slot = words.next()?.parse::<u16>().ok()?;
            let address = parse_host_port(words.next()?)?;
            Some(if code == "MOVED" {
                Redirect::Moved(slot, address)
            } else {
                Redirect::Ask(slot, address)
            })
        }
        "TRYAGAIN" | "CLUSTERDOWN" => Some(Redirect::Retry(error.0.clone())),
        _ => None,
    }
}

/// `host:port` (an IPv6 host may come bare, as Redis writes it).
fn parse_host_port(text: &str) -> Option<Address> {
    let (host, port) = text.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(Address::Tcp(host.to_string(), port.parse().ok()?))
}

/// What one node says of the cluster (`CLUSTER NODES`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// (first slot, last slot, master's address), in slot order.
    pub ranges: Vec<(u16, u16, Address)>,
    /// The map and every master's config epoch: changes with any move of a
    /// slot (the new owner bumps its epoch) and any failover.
    pub fingerprint: u64,
    /// The slots this node is migrating or importing (`[slot->-id]`).
    pub moving: Vec<String>,
}

/// Reads a `CLUSTER NODES` reply; `asked` stands in for an empty address
/// (a node that does not know its own IP yet).
pub fn parse_nodes(text: &str, asked: &Address) -> std::result::Result<View, String> {
    let mut view = View::default();
    let mut fingerprinted: Vec<(u16, u16, String, u64)> = Vec::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 8 {
            return Err(format!("a short line in CLUSTER NODES: {line:?}"));
        }
        let flags: Vec<&str> = fields[2].split(',').collect();
        let myself = flags.contains(&"myself");
        if !flags.contains(&"master") || flags.contains(&"noaddr") || flags.contains(&"handshake") {
            continue;
        }
        // `ip:port@cport[,hostname]`: an announced hostname is what the
        // node's TLS certificate names, so it is preferred.
        let (endpoint, hostname) = match fields[1].split_once(',') {
            Some((endpoint, hostname)) => (endpoint, Some(hostname).filter(|h| !h.is_empty())),
            None => (fields[1], None),
        };
        let endpoint = endpoint.split('@').next().unwrap_or("");
        let address = match parse_host_port(endpoint) {
            Some(Address::Tcp(_, port)) if hostname.is_some() => {
                Address::Tcp(hostname.unwrap_or_default().to_string(), port)
            }
            Some(Address::Tcp(host, port)) if host.is_empty() => match asked {
                Address::Tcp(asked_host, _) => Address::Tcp(asked_host.clone(), port),
                other => other.clone(),
            },
            Some(address) => address,
            None => return Err(format!("a bad address in CLUSTER NODES: {:?}", fields[1])),
        };
        let epoch = fields[6].parse::<u64>().unwrap_or(0);
        for slot in &fields[8..] {
            if slot.starts_with('[') {
                if myself {
                    view.moving.push(slot.to_string());
                }
                continue;
            }
            let (first, last) = match slot.split_once('-') {
                Some((first, last)) => (first.parse::<u16>(), last.parse::<u16>()),
                None => (slot.parse::<u16>(), slot.parse::<u16>()),
            };
            let (Ok(first), Ok(last)) = (first, last) else {
                return Err(format!("a bad slot range in CLUSTER NODES: {slot:?}"));
            };
            if first > last || usize::from(last) >= SLOTS {
                return Err(format!("a bad slot range in CLUSTER NODES: {slot:?}"));
            }
            view.ranges.push((first, last, address.clone()));
            fingerprinted.push((first, last, fields[0].to_string(), epoch));
        }
    }
    view.ranges.sort_by_key(|range| range.0);
    fingerprinted.sort();
    view.fingerprint = fnv(format!("{fingerprinted:?}").as_bytes());
    Ok(view)
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Where a walk of the masters stands, as one number (see the module).
/// 0 is the start, and the end.
const CURSOR_BITS: u32 = 34;
const PLACE_BITS: u32 = 14;

fn encode_walk(fingerprint: u64, place: usize, cursor: u64) -> Result<u64> {
    if cursor >= 1 << CURSOR_BITS || place >= 1 << PLACE_BITS {
        return Err(Error::Internal(format!(
            "a cluster walk position out of range (node {place}, cursor {cursor})"
        )));
    }
    let tag = (fingerprint & 0x7fff) | 0x8000;
    Ok(tag << (CURSOR_BITS + PLACE_BITS) | (place as u64) << CURSOR_BITS | cursor)
}

fn decode_walk(position: u64) -> (u64, usize, u64) {
    let tag = position >> (CURSOR_BITS + PLACE_BITS);
    let place = (position >> CURSOR_BITS) & ((1 << PLACE_BITS) - 1);
    (tag, place as usize, position & ((1 << CURSOR_BITS) - 1))
}

/// One step of a walk: which node, and its own SCAN cursor.
#[derive(Debug, Clone, Copy)]
pub struct WalkStep {
    pub node: usize,
    pub cursor: u64,
    /// A position from another map was given: the walk started over.
    pub restarted: bool,
    place: usize,
    fingerprint: u64,
}

impl WalkStep {
    /// The step of a one-node server: the position is the SCAN cursor.
    pub fn single(cursor: u64) -> WalkStep {
        WalkStep {
            node: 0,
            cursor,
            restarted: false,
            place: 0,
            fingerprint: 0,
        }
    }
}

/// The cluster as a whole, checked on every master: whether its map is the
/// same everywhere and no slot is moving. The gates decide only between two
/// settled surveys with one fingerprint.
#[derive(Debug, Clone)]
pub struct Survey {
    pub fingerprint: u64,
    /// Why the cluster is not settled, if it is not.
    pub unsettled: Option<String>,
}

/// A Redis Cluster setting: its nodes and the slot map.
pub struct Cluster {
    template: ServerConfig,
    pool_size: usize,
    eviction: EvictionCheck,
    nodes: Box<[OnceLock<Box<Node>>]>,
    /// The address of each node of `nodes`, in order (append-only).
    addresses: Mutex<Vec<Address>>,
    slots: Box<[AtomicU16]>,
    /// The masters that serve slots, in slot order.
    masters: Mutex<Vec<usize>>,
    fingerprint: AtomicU64,
    /// The map must be read again before the next use.
    stale: AtomicBool,
    /// When the map was last read (None: never); held while reading it.
    refreshed: Mutex<Option<Instant>>,
    /// When a connection to each node last failed (ms since `epoch`, 0:
    /// never): the map is asked of those last.
    failed_at: Box<[AtomicU64]>,
    epoch: Instant,
    /// How many times the map was read (for stats and tests).
    pub refreshes: AtomicU64,
    /// Redirects followed: MOVED, ASK, and TRYAGAIN/CLUSTERDOWN retries.
    pub moved: AtomicU64,
    pub asked: AtomicU64,
    pub retried: AtomicU64,
}

/// What a cluster client has seen (`Locking::Client#cluster_stats`).
#[derive(Debug, Clone, Default)]
pub struct ClusterStats {
    pub masters: u64,
    pub nodes_known: u64,
    pub refreshes: u64,
    pub moved: u64,
    pub asked: u64,
    pub retried: u64,
}

impl Cluster {
    pub fn new(config: ServerConfig, pool_size: usize, eviction: EvictionCheck) -> Result<Cluster> {
        let seeds = config.cluster.clone().unwrap_or_default();
        let cluster = Cluster {
            template: config,
            pool_size,
            eviction,
            nodes: (0..MAX_NODES).map(|_| OnceLock::new()).collect(),
            addresses: Mutex::new(Vec::new()),
            slots: (0..SLOTS).map(|_| AtomicU16::new(UNKNOWN)).collect(),
            masters: Mutex::new(Vec::new()),
            fingerprint: AtomicU64::new(0),
            stale: AtomicBool::new(true),
            refreshed: Mutex::new(None),
            failed_at: (0..MAX_NODES).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            refreshes: AtomicU64::new(0),
            moved: AtomicU64::new(0),
            asked: AtomicU64::new(0),
            retried: AtomicU64::new(0),
        };
        for seed in &seeds {
            cluster.node_at(seed)?;
        }
        Ok(cluster)
    }

    pub fn name(&self) -> &str {
        &self.template.name
    }

    /// The node at place `index`, if there is one.
    pub fn node(&self, index: usize) -> Option<&Node> {
        self.nodes.get(index)?.get().map(|node| &**node)
    }

    /// Every node known so far (masters, former masters, seeds).
    pub fn known(&self) -> impl Iterator<Item = &Node> {
        self.nodes
            .iter()
            .map_while(|slot| slot.get().map(|node| &**node))
    }

    /// The place of the node at `address`, entered if new.
    pub fn node_at(&self, address: &Address) -> Result<usize> {
        let mut addresses = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(index) = addresses.iter().position(|known| known == address) {
            return Ok(index);
        }
        let index = addresses.len();
        let slot = self.nodes.get(index).ok_or_else(|| {
            Error::Internal(format!(
                "{}: more than {MAX_NODES} cluster nodes seen by one client",
                self.name()
            ))
        })?;
        let mut config = self.template.clone();
        config.name = format!(
            "{} node {}",
            self.template.name,
            transport::describe(address)
        );
        config.address = address.clone();
        let _ = slot.set(Box::new(Node::new(config, self.pool_size, self.eviction)));
        addresses.push(address.clone());
        Ok(index)
    }

    /// The master serving `slot`, reading the map first if it is stale (at
    /// most every `REFRESH_INTERVAL`) or the slot unknown.
    pub fn locate(&self, slot: u16, interrupt: &Interrupt) -> Result<usize> {
        let known = self.slots[usize::from(slot)].load(Ordering::Acquire);
        if known == UNKNOWN || self.stale.load(Ordering::Acquire) {
            let forced = known == UNKNOWN;
            if let Err(error) = self.refresh(forced, interrupt) {
                if known == UNKNOWN {
                    return Err(error);
                }
            }
        }
        match self.slots[usize::from(slot)].load(Ordering::Acquire) {
            UNKNOWN => Err(Error::Command {
                server: self.name().to_string(),
                detail: format!("no master serves hash slot {slot} (the cluster is incomplete)"),
            }),
            index => Ok(usize::from(index)),
        }
    }

    /// The master of `slot` as far as is known now.
    pub fn known_master(&self, slot: u16) -> Option<usize> {
        match self.slots.get(usize::from(slot))?.load(Ordering::Acquire) {
            UNKNOWN => None,
            index => Some(usize::from(index)),
        }
    }

    /// The address (`host:port`) of the master that serves `key`, as far
    /// as is known now.
    pub fn master_of(&self, key: &[u8]) -> Option<String> {
        self.known_master(key_slot(key))
            .map(|index| self.describe(index))
    }

    /// A MOVED reply: the slot is served by `address` from now on, and the
    /// rest of the map is read again before the next use.
    pub fn moved(&self, slot: u16, address: &Address) -> Result<usize> {
        self.moved.fetch_add(1, Ordering::Relaxed);
        let index = self.node_at(address)?;
        if let Some(entry) = self.slots.get(usize::from(slot)) {
            entry.store(index as u16, Ordering::Release);
        }
        self.stale.store(true, Ordering::Release);
        Ok(index)
    }

    /// A connection to a node broke: a failover may have moved its slots.
    pub fn connection_failed(&self, index: usize) {
        if let Some(node) = self.node(index) {
            node.pool.clear();
        }
        if let Some(at) = self.failed_at.get(index) {
            at.store(
                self.epoch.elapsed().as_millis() as u64 + 1,
                Ordering::Release,
            );
        }
        self.stale.store(true, Ordering::Release);
    }

    /// Reads the map from the first node that answers: the masters known,
    /// then every other node known (the seeds first). Unless `forced`, a
    /// read within `REFRESH_INTERVAL` of the last one is skipped.
    pub fn refresh(&self, forced: bool, interrupt: &Interrupt) -> Result<()> {
        let asked_at = Instant::now();
        let mut refreshed = self.refreshed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = *refreshed {
            // Another thread read it while this one waited.
            if at >= asked_at {
                return Ok(());
            }
            if !forced && at.elapsed() < REFRESH_INTERVAL {
                return Ok(());
            }
        }
        let mut order = self
            .masters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let known = self
            .addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        let others: Vec<usize> = (0..known).filter(|index| !order.contains(index)).collect();
        order.extend(others);
        // A node that just failed (a dead master) is asked last: its connect
        // may take the whole timeout, and other threads wait for this read.
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        order.sort_by_key(|&index| {
            let failed = self
                .failed_at
                .get(index)
                .map_or(0, |at| at.load(Ordering::Acquire));
            failed != 0 && now.saturating_sub(failed) < 10_000
        });
        let mut failures = Vec::new();
        for index in order {
            match self.ask_nodes(index, interrupt) {
                Ok(view) if !view.ranges.is_empty() => {
                    self.apply(&view)?;
                    *refreshed = Some(Instant::now());
                    self.refreshes.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(_) => failures.push(format!(
                    "{}: serves no slot (not part of a cluster yet?)",
                    self.describe(index)
                )),
                Err(error @ Error::Interrupted { .. }) => return Err(error),
                Err(error) => {
                    failures.push(format!("{}: {}", self.describe(index), error.detail()))
                }
            }
        }
        *refreshed = Some(Instant::now());
        Err(Error::Connection {
            server: self.name().to_string(),
            detail: format!(
                "no cluster node could give the slot map ({})",
                failures.join("; ")
            ),
        })
    }

    fn describe(&self, index: usize) -> String {
        self.addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(index)
            .map_or_else(|| format!("node {index}"), transport::describe)
    }

    /// `CLUSTER NODES` of the node at `index`.
    fn ask_nodes(&self, index: usize, interrupt: &Interrupt) -> Result<View> {
        let node = self
            .node(index)
            .ok_or_else(|| Error::Internal(format!("no cluster node {index}")))?;
        let mut connection = match node.pool.take() {
            Some(connection) => connection,
            None => node.connect(interrupt)?,
        };
        connection.watch(interrupt)?;
        let request = Request::Plain(&["CLUSTER".into(), "NODES".into()]);
        let value = node.run(&mut connection, request, interrupt);
        node.pool.give_back(connection);
        match value? {
            Value::BulkString(bytes) => {
                parse_nodes(&String::from_utf8_lossy(&bytes), &node.config.address).map_err(
                    |detail| Error::Command {
                        server: node.name().to_string(),
                        detail,
                    },
                )
            }
            Value::ServerError(error) => Err(Error::Command {
                server: node.name().to_string(),
                detail: if error.0.contains("cluster support disabled") {
                    format!(
                        "CLUSTER NODES: {}: this server is not a cluster node; a standalone server takes a redis:// URL",
                        error.0
                    )
                } else {
                    format!("CLUSTER NODES: {}", error.0)
                },
            }),
            other => Err(Error::Command {
                server: node.name().to_string(),
                detail: format!("unexpected reply to CLUSTER NODES: {other:?}"),
            }),
        }
    }

    fn apply(&self, view: &View) -> Result<()> {
        let mut owners = vec![UNKNOWN; SLOTS];
        let mut masters = Vec::new();
        for (first, last, address) in &view.ranges {
            let index = self.node_at(address)?;
            if !masters.contains(&index) {
                masters.push(index);
            }
            for slot in *first..=*last {
                owners[usize::from(slot)] = index as u16;
            }
        }
        for (entry, owner) in self.slots.iter().zip(owners) {
            entry.store(owner, Ordering::Release);
        }
        *self.masters.lock().unwrap_or_else(|p| p.into_inner()) = masters;
        self.fingerprint.store(view.fingerprint, Ordering::Release);
        self.stale.store(false, Ordering::Release);
        Ok(())
    }

    /// The first master in slot order (a cluster's stand-in where one node
    /// is asked, as for the source's identity).
    pub fn first_master(&self, interrupt: &Interrupt) -> Result<usize> {
        self.masters(interrupt)?
            .first()
            .copied()
            .ok_or_else(|| Error::Command {
                server: self.name().to_string(),
                detail: "no master serves any slot (the cluster is not set up yet?)".into(),
            })
    }

    /// The masters, in slot order (the map read first if never read).
    pub fn masters(&self, interrupt: &Interrupt) -> Result<Vec<usize>> {
        if self.fingerprint.load(Ordering::Acquire) == 0 || self.stale.load(Ordering::Acquire) {
            self.refresh(true, interrupt)?;
        }
        Ok(self
            .masters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }

    /// Where the walk at `position` stands (`None`: nothing to walk). A
    /// position made under another map starts the walk over.
    pub fn walk_at(&self, position: u64, interrupt: &Interrupt) -> Result<Option<WalkStep>> {
        let masters = self.masters(interrupt)?;
        let fingerprint = self.fingerprint.load(Ordering::Acquire);
        let (tag, place, cursor) = decode_walk(position);
        let current = (fingerprint & 0x7fff) | 0x8000;
        let (place, cursor, restarted) = if position == 0 {
            (0, 0, false)
        } else if tag != current || place >= masters.len() {
            (0, 0, true)
        } else {
            (place, cursor, false)
        };
        Ok(masters.get(place).map(|&node| WalkStep {
            node,
            cursor,
            restarted,
            place,
            fingerprint,
        }))
    }

    /// The position after `step`, whose node answered `next` (0 = the end
    /// of the walk).
    pub fn walk_after(&self, step: &WalkStep, next: u64) -> Result<u64> {
        if next != 0 {
            return encode_walk(step.fingerprint, step.place, next);
        }
        let masters = self.masters.lock().unwrap_or_else(|p| p.into_inner()).len();
        if step.place + 1 < masters {
            encode_walk(step.fingerprint, step.place + 1, 0)
        } else {
            Ok(0)
        }
    }

    pub fn stats(&self) -> ClusterStats {
        ClusterStats {
            masters: self.masters.lock().unwrap_or_else(|p| p.into_inner()).len() as u64,
            nodes_known: self
                .addresses
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len() as u64,
            refreshes: self.refreshes.load(Ordering::Relaxed),
            moved: self.moved.load(Ordering::Relaxed),
            asked: self.asked.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
        }
    }

    /// See `Server::walk_fraction`.
    pub fn walk_fraction(&self, position: u64) -> f64 {
        let (_, place, cursor) = decode_walk(position);
        let masters = self
            .masters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
            .max(1);
        let within = cursor.reverse_bits() as f64 / 2f64.powi(64);
        ((place as f64 + within) / masters as f64).min(1.0)
    }

    /// A position that starts a walk over under the current map (not 0,
    /// which would end it).
    pub fn restart_position(&self) -> Result<u64> {
        encode_walk(self.fingerprint.load(Ordering::Acquire), 0, 0)
    }

    /// Asks every master for its view: settled when all agree and no slot
    /// is moving.
    pub fn survey(&self, interrupt: &Interrupt) -> Result<Survey> {
        self.refresh(true, interrupt)?;
        let masters = self
            .masters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut fingerprints = Vec::new();
        let mut moving = Vec::new();
        for index in masters {
            let view = self.ask_nodes(index, interrupt)?;
            fingerprints.push(view.fingerprint);
            for slot in view.moving {
                moving.push(format!("{} {slot}", self.describe(index)));
            }
        }
        let fingerprint = fingerprints.first().copied().unwrap_or(0);
        let unsettled = if !moving.is_empty() {
            Some(format!(
                "slots are being moved (resharding): {}",
                moving
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        } else if fingerprints.iter().any(|other| *other != fingerprint) {
            Some(
                "the masters do not agree on the slot map yet (a failover or a move in progress)"
                    .into(),
            )
        } else {
            None
        };
        Ok(Survey {
            fingerprint,
            unsettled,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hashes_keys_as_redis_does() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.0.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(hash_tag(b"foo{}{bar}"), None);
        assert_eq!(hash_tag(b"foo{{bar}}zap"), Some(&b"{bar"[..]));
        assert_eq!(
            hash_tag(b"{locking-control}:phase"),
            Some(&b"locking-control"[..])
        );
        assert_eq!(crc16(b"123456789"), 0x31c3);
    }

    #[test]
    fn reads_redirects() {
        let error = |text: &str| Value::ServerError(crate::wire::codec::ErrorReply(text.into()));
        assert_eq!(
            redirect(&error("MOVED 3999 127.0.0.1:6381")),
            Some(Redirect::Moved(
                3999,
                Address::Tcp("127.0.0.1".into(), 6381)
            ))
        );
        assert_eq!(
            redirect(&error("ASK 1 ::1:7000")),
            Some(Redirect::Ask(1, Address::Tcp("::1".into(), 7000)))
        );
        assert!(matches!(
            redirect(&error("CLUSTERDOWN The cluster is down")),
            Some(Redirect::Retry(_))
        ));
        assert_eq!(redirect(&error("ERR wrong")), None);
        assert_eq!(redirect(&Value::Nil), None);
    }

    #[test]
    fn reads_cluster_nodes() {
        let named = parse_nodes(
            "e7d1 10.0.0.5:7000@17000,locks-1.internal myself,master - 0 0 1 connected 0-16383\n",
            &Address::Tcp("h".into(), 1),
        )
        .unwrap();
        assert_eq!(
            named.ranges,
            vec![(0, 16383, Address::Tcp("locks-1.internal".into(), 7000))]
        );
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003,host-c master - 0 1426238318243 3 connected 10923-16383
e7d1 :30001@40001 myself,master - 0 0 1 connected 0-5460 [5461-<-67ed]
";
        let view = parse_nodes(text, &Address::Tcp("10.1.1.1".into(), 30001)).unwrap();
        assert_eq!(
            view.ranges,
            vec![
                (0, 5460, Address::Tcp("10.1.1.1".into(), 30001)),
                (5461, 10922, Address::Tcp("127.0.0.1".into(), 30002)),
                (10923, 16383, Address::Tcp("host-c".into(), 30003)),
            ]
        );
        assert_eq!(view.moving, vec!["[5461-<-67ed]".to_string()]);
        let bumped = text.replace("1426238316232 2 connected", "1426238316232 7 connected");
        let other = parse_nodes(&bumped, &Address::Tcp("10.1.1.1".into(), 30001)).unwrap();
        assert_ne!(view.fingerprint, other.fingerprint);
        assert!(parse_nodes("x y", &Address::Tcp("h".into(), 1)).is_err());
    }

    proptest! {
        #[test]
        fn walk_positions_round_trip(fingerprint in any::<u64>(), place in 0usize..16_384, cursor in 0u64..(1 << 34)) {
            let position = encode_walk(fingerprint, place, cursor).unwrap();
            prop_assert_ne!(position, 0);
            let (tag, got_place, got_cursor) = decode_walk(position);
            prop_assert_eq!(tag, (fingerprint & 0x7fff) | 0x8000);
            prop_assert_eq!(got_place, place);
            prop_assert_eq!(got_cursor, cursor);
        }

        #[test]
        fn any_cluster_nodes_text_parses_or_is_refused(text in ".{0,200}") {
            let _ = parse_nodes(&text, &Address::Tcp("h".into(), 1));
        }

        #[test]
        fn every_key_has_a_slot(key in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert!(usize::from(key_slot(&key)) < SLOTS);
        }
    }
}
