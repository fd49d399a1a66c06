//! The fake Redis Cluster of the redirect tests: three nodes on real sockets
//! that share one slot map and answer what the seeded schedule says.
//!
//! What its keys hold depends on its `Keys`: a value only that key can have
//! (the hot path's schedules), a backfill's source whose locks are a function
//! of the key and of how often it was read, or a backfill's destination that
//! keeps what was stored and written. A redirect names another node, which
//! then serves the slot's keys as if they had moved with it: the keyspace is
//! the cluster's, and a write served by a node that neither owns its slot
//! nor was named for it is noted (`misrouted`).

use crate::topology::cluster::key_slot;
use crate::wire::codec::scripts;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub(super) const NODES: usize = 3;

/// What a schedule does to the keyed commands it is asked, by chance.
#[derive(Clone, Copy)]
pub(super) struct Odds {
    /// In parts per 1,000 of keyed commands.
    moved: u64,
    ask: u64,
    try_again: u64,
    down: u64,
    noscript: u64,
}

impl Odds {
    /// Schedule `seed`'s: redirects often, retries and lost scripts now and then.
    pub(super) fn of(seed: u64) -> Odds {
        Odds {
            moved: 60 + mix(seed ^ 1) % 100,
            ask: 60 + mix(seed ^ 2) % 100,
            try_again: mix(seed ^ 3) % 6,
            down: mix(seed ^ 4) % 4,
            noscript: mix(seed ^ 5) % 40,
        }
    }
}

/// What a fake cluster's keys hold.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Keys {
    /// Every key holds `value_of(key)` for `pttl_of(key)`, and is held by
    /// the token of any script (`held`).
    Computed,
    /// A backfill's source: `source_lock(key, reads served)`.
    Source,
    /// A backfill's destination: what was stored and written since the
    /// schedule began.
    Stored,
}

/// A key of a `Keys::Stored` cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Stored {
    pub(super) value: Vec<u8>,
    pub(super) pttl: i64,
}

pub(super) struct Shared {
    pub(super) ports: Vec<u16>,
    keys: Keys,
    seed: AtomicU64,
    odds: Mutex<Odds>,
    /// How often each key was asked in this schedule.
    asked: Mutex<HashMap<Vec<u8>, u64>>,
    /// How many reads (GET) of each key were served in this schedule.
    served: Mutex<HashMap<Vec<u8>, u64>>,
    /// `Keys::Stored`: the cluster's keys.
    pub(super) store: Mutex<HashMap<Vec<u8>, Stored>>,
    /// Every (slot, node) a redirect named: that node may serve the slot.
    named: Mutex<HashSet<(u16, usize)>>,
    /// Writes served by a node that neither owns the key's slot nor was
    /// named for it by a redirect.
    pub(super) misrouted: Mutex<Vec<String>>,
    pub(super) redirects: AtomicU64,
    stop: AtomicBool,
}

pub(super) struct FakeCluster {
    pub(super) shared: Arc<Shared>,
}

impl FakeCluster {
    pub(super) fn start(keys: Keys) -> FakeCluster {
        let listeners: Vec<TcpListener> = (0..NODES)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
            .collect();
        let shared = Arc::new(Shared {
            ports: listeners
                .iter()
                .map(|l| l.local_addr().expect("port").port())
                .collect(),
            keys,
            seed: AtomicU64::new(0),
            odds: Mutex::new(Odds {
                moved: 0,
                ask: 0,
                try_again: 0,
                down: 0,
                noscript: 0,
            }),
            asked: Mutex::new(HashMap::new()),
            served: Mutex::new(HashMap::new()),
            store: Mutex::new(HashMap::new()),
            named: Mutex::new(HashSet::new()),
            misrouted: Mutex::new(Vec::new()),
            redirects: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        for (me, listener) in listeners.into_iter().enumerate() {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if shared.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let shared = Arc::clone(&shared);
                    std::thread::spawn(move || serve(me, stream, &shared));
                }
            });
        }
        FakeCluster { shared }
    }

    pub(super) fn url(&self) -> String {
        let hosts: Vec<String> = self
            .shared
            .ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Starts schedule `seed`: its odds, nothing asked or served yet, and
    /// (`Keys::Stored`) the keys it stores.
    pub(super) fn schedule(&self, seed: u64, odds: Odds, store: HashMap<Vec<u8>, Stored>) {
        self.shared.seed.store(seed, Ordering::SeqCst);
        *self.shared.odds.lock().expect("odds") = odds;
        self.shared.asked.lock().expect("asked").clear();
        self.shared.served.lock().expect("served").clear();
        *self.shared.store.lock().expect("store") = store;
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for port in &self.shared.ports {
            let _ = TcpStream::connect(("127.0.0.1", *port));
        }
    }
}

pub(super) fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

pub(super) fn hash(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| mix(h ^ u64::from(*b)))
}

/// Whether the lock on `key` counts as held: what compare-and-extend answers.
pub(super) fn held(key: &[u8]) -> bool {
    !hash(key).is_multiple_of(3)
}

pub(super) fn value_of(key: &[u8]) -> Vec<u8> {
    let mut value = b"v:".to_vec();
    value.extend_from_slice(key);
    value
}

pub(super) fn pttl_of(key: &[u8]) -> i64 {
    1_000 + (hash(key) % 9_000) as i64
}

/// How a backfill's source lock behaves over its reads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum SourceLock {
    /// No lock.
    Absent,
    /// `value_of(key)` for `pttl_of(key)`, read after read.
    Steady,
    /// Renewed longer (1 s more) after its first read.
    Extended,
    /// Taken by another holder (another value) after its first read.
    Replaced,
}

pub(super) fn source_lock_of(key: &[u8]) -> SourceLock {
    match mix(hash(key)) % 8 {
        0 => SourceLock::Absent,
        1 => SourceLock::Extended,
        2 => SourceLock::Replaced,
        _ => SourceLock::Steady,
    }
}

/// What a backfill's source answers to the `read`th read of `key` (from 1):
/// its value and PTTL, or `None`.
pub(super) fn source_lock(key: &[u8], read: u64) -> Option<(Vec<u8>, i64)> {
    let later = read > 1;
    match source_lock_of(key) {
        SourceLock::Absent => None,
        SourceLock::Extended if later => Some((value_of(key), pttl_of(key) + 1_000)),
        SourceLock::Replaced if later => Some((b"another".to_vec(), pttl_of(key))),
        _ => Some((value_of(key), pttl_of(key))),
    }
}

/// The master of `slot` in the map every node gives.
pub(super) fn owner_of(slot: u16) -> usize {
    (usize::from(slot) / (16_384 / NODES)).min(NODES - 1)
}

enum Answer {
    Serve,
    Redirect(String),
}

impl Shared {
    /// What the schedule answers to this ask of `key` on node `me`.
    fn decide(&self, me: usize, key: &[u8], scripted: bool) -> Answer {
        let count = {
            let mut asked = self.asked.lock().expect("asked");
            let count = asked.entry(key.to_vec()).or_insert(0);
            *count += 1;
            *count
        };
        let odds = *self.odds.lock().expect("odds");
        let roll = mix(self.seed.load(Ordering::SeqCst) ^ hash(key) ^ mix(count));
        let other = (me + 1 + (roll >> 20) as usize % (NODES - 1)) % NODES;
        let port = self.ports[other];
        let slot = key_slot(key);
        let mut at = roll % 1_000;
        for (place, (odds, text)) in [
            (odds.moved, format!("MOVED {slot} 127.0.0.1:{port}")),
            (odds.ask, format!("ASK {slot} 127.0.0.1:{port}")),
            (
                odds.try_again,
                "TRYAGAIN Multiple keys request during rehashing of slot".into(),
            ),
            (odds.down, "CLUSTERDOWN The cluster is down".into()),
            (
                if scripted { odds.noscript } else { 0 },
                "NOSCRIPT No matching script. Please use EVAL.".into(),
            ),
        ]
        .into_iter()
        .enumerate()
        {
            if at < odds {
                if place < 2 {
                    self.named.lock().expect("named").insert((slot, other));
                }
                self.redirects.fetch_add(1, Ordering::Relaxed);
                return Answer::Redirect(text);
            }
            at -= odds;
        }
        Answer::Serve
    }

    fn nodes_text(&self, me: usize) -> String {
        let per = 16_384 / NODES;
        (0..NODES)
            .map(|node| {
                let first = node * per;
                let last = if node == NODES - 1 {
                    16_383
                } else {
                    first + per - 1
                };
                let flags = if node == me {
                    "myself,master"
                } else {
                    "master"
                };
                format!(
                    "{:040x} 127.0.0.1:{}@1 {flags} - 0 0 {} connected {first}-{last}\n",
                    node + 1,
                    self.ports[node],
                    node + 1
                )
            })
            .collect()
    }

    /// GET: what `key` holds (counted as a read served).
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.keys {
            Keys::Computed => Some(value_of(key)),
            Keys::Source => {
                let mut served = self.served.lock().expect("served");
                let read = served.entry(key.to_vec()).or_insert(0);
                *read += 1;
                source_lock(key, *read).map(|(value, _)| value)
            }
            Keys::Stored => self.stored(key).map(|stored| stored.value),
        }
    }

    /// PTTL: of the last read served (-2: no key).
    fn pttl(&self, key: &[u8]) -> i64 {
        match self.keys {
            Keys::Computed => pttl_of(key),
            Keys::Source => {
                let read = self.served.lock().expect("served").get(key).copied();
                source_lock(key, read.unwrap_or(1)).map_or(-2, |(_, pttl)| pttl)
            }
            Keys::Stored => self.stored(key).map_or(-2, |stored| stored.pttl),
        }
    }

    fn stored(&self, key: &[u8]) -> Option<Stored> {
        self.store.lock().expect("store").get(key).cloned()
    }

    /// Notes a write to `key` served by node `me` that no map or redirect
    /// sent there.
    fn check_route(&self, me: usize, key: &[u8]) {
        let slot = key_slot(key);
        if owner_of(slot) != me && !self.named.lock().expect("named").contains(&(slot, me)) {
            self.misrouted.lock().expect("misrouted").push(format!(
                "{:?} written on node {me}",
                String::from_utf8_lossy(key)
            ));
        }
    }

    /// `SET key value NX GET [PX ttl]` on a `Keys::Stored` cluster.
    fn set_nx_get(&self, me: usize, args: &[Vec<u8>], out: &mut Vec<u8>) {
        let (Some(key), Some(value)) = (args.get(1), args.get(2)) else {
            return out.extend_from_slice(b"-ERR wrong number of arguments\r\n");
        };
        // SET key value NX GET [PX ttl]
        let pttl = match args.get(6).map(|ttl| number(ttl)) {
            Some(Some(ttl)) => ttl,
            Some(None) => return out.extend_from_slice(b"-ERR value is not an integer\r\n"),
            None => -1,
        };
        self.check_route(me, key);
        let mut store = self.store.lock().expect("store");
        match store.get(key) {
            Some(current) => bulk(out, &current.value),
            None => {
                store.insert(
                    key.clone(),
                    Stored {
                        value: value.clone(),
                        pttl,
                    },
                );
                out.extend_from_slice(b"$-1\r\n");
            }
        }
    }

    /// The scripts a backfill sends its destination: compare-and-delete and
    /// extend-if-greater, as their Lua does.
    fn run_script(&self, me: usize, args: &[Vec<u8>], key: &[u8], out: &mut Vec<u8>) {
        if self.keys != Keys::Stored {
            return out.extend_from_slice(format!(":{}\r\n", u8::from(held(key))).as_bytes());
        }
        let sha = args[1].as_slice();
        let token = args.get(4).map(Vec::as_slice);
        self.check_route(me, key);
        let mut store = self.store.lock().expect("store");
        let holds = store
            .get(key)
            .is_some_and(|s| Some(s.value.as_slice()) == token);
        let done = if sha == scripts::COMPARE_AND_DELETE.sha.as_bytes() {
            holds && store.remove(key).is_some()
        } else if sha == scripts::EXTEND_IF_GREATER.sha.as_bytes() {
            let ttl = args.get(5).and_then(|ttl| number(ttl));
            match (store.get_mut(key), ttl) {
                (Some(stored), Some(ttl)) if holds && (0..ttl).contains(&stored.pttl) => {
                    stored.pttl = ttl;
                    true
                }
                _ => false,
            }
        } else {
            return out.extend_from_slice(b"-ERR a script the fake does not know\r\n");
        };
        out.extend_from_slice(format!(":{}\r\n", u8::from(done)).as_bytes());
    }
}

fn number(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

fn read_command(reader: &mut impl BufRead) -> Option<Vec<Vec<u8>>> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let count: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let length: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut arg = vec![0; length + 2];
        reader.read_exact(&mut arg).ok()?;
        arg.truncate(length);
        args.push(arg);
    }
    Some(args)
}

fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// One connection of node `me`: answers until the client hangs up.
fn serve(me: usize, stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    // Like Redis, answers go out once every command read so far is answered.
    let mut pending = Vec::new();
    let mut reader = BufReader::new(stream);
    // A transaction's queued commands, or None outside MULTI; a redirect
    // while queuing aborts it (EXEC then answers EXECABORT). Like Redis, the
    // commands run at EXEC.
    let mut queued: Option<Vec<Vec<Vec<u8>>>> = None;
    let mut aborted = false;
    while let Some(args) = read_command(&mut reader) {
        let mut out = Vec::new();
        let name = args
            .first()
            .map(|a| a.to_ascii_uppercase())
            .unwrap_or_default();
        match name.as_slice() {
            b"MULTI" => {
                queued = Some(Vec::new());
                aborted = false;
                out.extend_from_slice(b"+OK\r\n");
            }
            b"EXEC" => match queued.take() {
                Some(_) if aborted => out.extend_from_slice(
                    b"-EXECABORT Transaction discarded because of previous errors.\r\n",
                ),
                Some(commands) => {
                    out.extend_from_slice(format!("*{}\r\n", commands.len()).as_bytes());
                    for command in commands {
                        answer_to(me, &command, shared, &mut out);
                    }
                }
                None => out.extend_from_slice(b"-ERR EXEC without MULTI\r\n"),
            },
            _ => match (queued.as_mut(), refusal(me, &args, shared)) {
                (Some(commands), Some(refused)) => {
                    aborted = true;
                    commands.clear();
                    out.extend_from_slice(&refused);
                }
                (Some(commands), None) => {
                    commands.push(args);
                    out.extend_from_slice(b"+QUEUED\r\n");
                }
                (None, Some(refused)) => out.extend_from_slice(&refused),
                (None, None) => answer_to(me, &args, shared, &mut out),
            },
        }
        pending.extend_from_slice(&out);
        if reader.buffer().is_empty() {
            if writer.write_all(&pending).is_err() {
                return;
            }
            pending.clear();
        }
    }
}

/// The key of a keyed command.
fn key_of(args: &[Vec<u8>]) -> Option<&Vec<u8>> {
    match args[0].to_ascii_uppercase().as_slice() {
        b"EVALSHA" => args.get(3),
        b"GET" | b"EXISTS" | b"PTTL" | b"MGET" | b"SET" => args.get(1),
        _ => None,
    }
}

/// The redirect the schedule answers instead of serving, if any.
fn refusal(me: usize, args: &[Vec<u8>], shared: &Shared) -> Option<Vec<u8>> {
    let key = key_of(args)?;
    let scripted = args[0].eq_ignore_ascii_case(b"EVALSHA");
    match shared.decide(me, key, scripted) {
        Answer::Redirect(text) => Some(format!("-{text}\r\n").into_bytes()),
        Answer::Serve => None,
    }
}

fn answer_to(me: usize, args: &[Vec<u8>], shared: &Shared, out: &mut Vec<u8>) {
    let name = args[0].to_ascii_uppercase();
    match (name.as_slice(), key_of(args)) {
        (b"CLUSTER", _) => bulk(out, shared.nodes_text(me).as_bytes()),
        (b"ASKING", _) => out.extend_from_slice(b"+OK\r\n"),
        (b"SCRIPT", _) => bulk(out, b"0000000000000000000000000000000000000000"),
        (b"TIME", _) => out.extend_from_slice(b"*2\r\n$10\r\n1700000000\r\n$1\r\n0\r\n"),
        (b"EVALSHA", Some(key)) => shared.run_script(me, args, key, out),
        (b"EXISTS", Some(key)) => {
            out.extend_from_slice(format!(":{}\r\n", u8::from(held(key))).as_bytes())
        }
        (b"GET", Some(key)) => match shared.get(key) {
            Some(value) => bulk(out, &value),
            None => out.extend_from_slice(b"$-1\r\n"),
        },
        (b"PTTL", Some(key)) => {
            out.extend_from_slice(format!(":{}\r\n", shared.pttl(key)).as_bytes())
        }
        (b"SET", Some(_)) if shared.keys == Keys::Stored => shared.set_nx_get(me, args, out),
        (b"MGET", _) => {
            out.extend_from_slice(format!("*{}\r\n", args.len() - 1).as_bytes());
            for key in &args[1..] {
                bulk(out, &value_of(key));
            }
        }
        _ => out.extend_from_slice(b"-ERR unknown command\r\n"),
    }
}
