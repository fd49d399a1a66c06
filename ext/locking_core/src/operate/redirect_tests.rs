//! Every reply answers its own request, through a cluster's redirects.
//!
//! A fake Redis Cluster on real sockets: three nodes that share one slot map
//! and answer every keyed command with a value that only that key can have,
//! unless the seeded schedule says to answer `MOVED`, `ASK`, `TRYAGAIN`,
//! `CLUSTERDOWN` or `NOSCRIPT` instead (inside transactions too). Each
//! schedule runs renewal batches (pipelines to every node at once), single
//! commands and pipelines of plain reads and of transactions, and checks
//! that each result is the one its key's value says. A schedule's answers
//! depend on the seed, the key and how often the key was asked, not on the
//! order in which the threads run, so a failing seed replays.
//!
//! The negative control turns off the executor's tickets (a pipeline's
//! replies are read from the oldest owed, as before): the same schedules
//! must then hand some replies to the wrong requests.

use crate::client::{Client, ClientConfig, Route};
use crate::operate::renew::{renew_batch, Slots};
use crate::protocol::phase::Phase;
use crate::topology::node::EvictionCheck;
use crate::wire::codec::{lock, Value};
use crate::wire::connection::Interrupt;
use crate::wire::pipeline::{self, Request};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NODES: usize = 3;

/// What a schedule does to the keyed commands it is asked, by chance.
#[derive(Clone, Copy)]
struct Odds {
    /// In parts per 1,000 of keyed commands.
    moved: u64,
    ask: u64,
    try_again: u64,
    down: u64,
    noscript: u64,
}

struct Shared {
    ports: Vec<u16>,
    seed: AtomicU64,
    odds: Mutex<Odds>,
    /// How often each key was asked in this schedule.
    asked: Mutex<HashMap<Vec<u8>, u64>>,
    redirects: AtomicU64,
    stop: AtomicBool,
}

struct FakeCluster {
    shared: Arc<Shared>,
}

impl FakeCluster {
    fn start() -> FakeCluster {
        let listeners: Vec<TcpListener> = (0..NODES)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
            .collect();
        let shared = Arc::new(Shared {
            ports: listeners
                .iter()
                .map(|l| l.local_addr().expect("port").port())
                .collect(),
            seed: AtomicU64::new(0),
            odds: Mutex::new(Odds {
                moved: 0,
                ask: 0,
                try_again: 0,
                down: 0,
                noscript: 0,
            }),
            asked: Mutex::new(HashMap::new()),
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

    fn url(&self) -> String {
        let hosts: Vec<String> = self
            .shared
            .ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    fn schedule(&self, seed: u64, odds: Odds) {
        self.shared.seed.store(seed, Ordering::SeqCst);
        *self.shared.odds.lock().expect("odds") = odds;
        self.shared.asked.lock().expect("asked").clear();
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

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

fn hash(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| mix(h ^ u64::from(*b)))
}

/// Whether the lock on `key` counts as held: what compare-and-extend answers.
fn held(key: &[u8]) -> bool {
    !hash(key).is_multiple_of(3)
}

fn value_of(key: &[u8]) -> Vec<u8> {
    let mut value = b"v:".to_vec();
    value.extend_from_slice(key);
    value
}

fn pttl_of(key: &[u8]) -> i64 {
    1_000 + (hash(key) % 9_000) as i64
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
        let other = self.ports[(me + 1 + (roll >> 20) as usize % (NODES - 1)) % NODES];
        let slot = crate::topology::cluster::key_slot(key);
        let mut at = roll % 1_000;
        let answer = |text: String| {
            self.redirects.fetch_add(1, Ordering::Relaxed);
            Answer::Redirect(text)
        };
        for (odds, text) in [
            (odds.moved, format!("MOVED {slot} 127.0.0.1:{other}")),
            (odds.ask, format!("ASK {slot} 127.0.0.1:{other}")),
            (
                odds.try_again,
                "TRYAGAIN Multiple keys request during rehashing of slot".into(),
            ),
            (odds.down, "CLUSTERDOWN The cluster is down".into()),
            (
                if scripted { odds.noscript } else { 0 },
                "NOSCRIPT No matching script. Please use EVAL.".into(),
            ),
        ] {
            if at < odds {
                return answer(text);
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
    // A transaction's queued answers, or None outside MULTI; a redirect
    // while queuing aborts it (EXEC then answers EXECABORT).
    let mut queued: Option<Vec<Vec<u8>>> = None;
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
                Some(answers) => {
                    out.extend_from_slice(format!("*{}\r\n", answers.len()).as_bytes());
                    for answer in answers {
                        out.extend_from_slice(&answer);
                    }
                }
                None => out.extend_from_slice(b"-ERR EXEC without MULTI\r\n"),
            },
            _ => {
                let answer = answer_to(me, &args, shared);
                match queued.as_mut() {
                    Some(answers) if answer.first() == Some(&b'-') => {
                        aborted = true;
                        answers.clear();
                        out.extend_from_slice(&answer);
                    }
                    Some(answers) => {
                        answers.push(answer);
                        out.extend_from_slice(b"+QUEUED\r\n");
                    }
                    None => out.extend_from_slice(&answer),
                }
            }
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

fn answer_to(me: usize, args: &[Vec<u8>], shared: &Shared) -> Vec<u8> {
    let mut out = Vec::new();
    let name = args[0].to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVALSHA" => args.get(3),
        b"GET" | b"EXISTS" | b"PTTL" | b"MGET" => args.get(1),
        _ => None,
    };
    if let Some(key) = key {
        if let Answer::Redirect(text) = shared.decide(me, key, name == b"EVALSHA") {
            out.extend_from_slice(format!("-{text}\r\n").as_bytes());
            return out;
        }
    }
    match (name.as_slice(), key) {
        (b"CLUSTER", _) => bulk(&mut out, shared.nodes_text(me).as_bytes()),
        (b"ASKING", _) => out.extend_from_slice(b"+OK\r\n"),
        (b"SCRIPT", _) => bulk(&mut out, b"0000000000000000000000000000000000000000"),
        (b"TIME", _) => out.extend_from_slice(b"*2\r\n$10\r\n1700000000\r\n$1\r\n0\r\n"),
        (b"EVALSHA" | b"EXISTS", Some(key)) => {
            out.extend_from_slice(format!(":{}\r\n", u8::from(held(key))).as_bytes())
        }
        (b"GET", Some(key)) => bulk(&mut out, &value_of(key)),
        (b"PTTL", Some(key)) => out.extend_from_slice(format!(":{}\r\n", pttl_of(key)).as_bytes()),
        (b"MGET", _) => {
            out.extend_from_slice(format!("*{}\r\n", args.len() - 1).as_bytes());
            for key in &args[1..] {
                bulk(&mut out, &value_of(key));
            }
        }
        _ => out.extend_from_slice(b"-ERR unknown command\r\n"),
    }
    out
}

fn client_for(cluster: &FakeCluster) -> Client {
    Client::new(ClientConfig {
        source: None,
        destination: Some(cluster.url()),
        phase: Phase::Destination,
        key_prefix: b"t:".to_vec(),
        timeout: Duration::from_millis(800),
        pool_size: 4,
        dynamic: None,
        eviction: EvictionCheck::Off,
        min_replicas_acked: 0,
    })
    .expect("a client of the fake cluster")
}

/// The wrong answers one schedule gets (empty: every reply answered its own
/// request). Stops at the first few: after one, the stream is out of step.
fn run_schedule(client: &Client, slots: &mut Slots, seed: u64) -> Vec<String> {
    let mut wrong = Vec::new();
    let size = 1 + (mix(seed) % 120) as usize;
    let keys: Vec<Vec<u8>> = (0..size)
        .map(|i| format!("k{seed}:{i}").into_bytes())
        .collect();
    // Renewal batches: one pipeline per node, sent to all before any is read.
    let items: Vec<(&[u8], &[u8], u64)> = keys
        .iter()
        .map(|key| (key.as_slice(), b"token".as_slice(), 5_000))
        .collect();
    for (key, result) in keys.iter().zip(renew_batch(client, slots, &items)) {
        let expected = held(&[b"t:".as_slice(), key].concat());
        match result {
            Ok(renewed) if renewed == expected => {}
            other => wrong.push(format!(
                "renew of {:?}: {other:?}",
                String::from_utf8_lossy(key)
            )),
        }
    }
    let interrupt = Interrupt::new();
    let mut lease = client.lease();
    // Single commands on the hot path.
    for key in keys.iter().take(8) {
        let expected = held(&[b"t:".as_slice(), key].concat());
        match lease.renew(key, b"token", 5_000, &interrupt) {
            Ok(renewed) if renewed == expected => {}
            other => wrong.push(format!(
                "single renew of {:?}: {other:?}",
                String::from_utf8_lossy(key)
            )),
        }
    }
    // A pipeline of plain reads and of transactions on one node.
    let full: Vec<Vec<u8>> = keys
        .iter()
        .take(10)
        .map(|k| [b"t:".as_slice(), k].concat())
        .collect();
    let gets: Vec<[crate::wire::codec::Arg<'_>; 2]> = full
        .iter()
        .map(|k| ["GET".into(), k.as_slice().into()])
        .collect();
    let pages: Vec<[&[u8]; 1]> = full.iter().map(|k| [k.as_slice()]).collect();
    let mut requests: Vec<Request<'_>> = Vec::new();
    for (get, page) in gets.iter().zip(&pages) {
        requests.push(Request::Plain(get));
        requests.push(Request::Reads(page));
    }
    if let Some(first) = full.first() {
        match lease.exchange(
            crate::protocol::Target::Destination,
            Route::Key(first),
            &requests,
            &interrupt,
        ) {
            Ok(values) => {
                for ((request, value), key) in requests
                    .iter()
                    .zip(values)
                    .zip(full.iter().flat_map(|k| [k, k]))
                {
                    let right = match request {
                        Request::Plain(_) => value == Value::BulkString(value_of(key)),
                        _ => matches!(
                            lock::decode_reads(1, value.clone()).as_deref(),
                            Ok([Some(entry)]) if entry.value == value_of(key)
                        ),
                    };
                    if !right {
                        wrong.push(format!(
                            "{} of {:?}: {value:?}",
                            request.describe(),
                            String::from_utf8_lossy(key)
                        ));
                    }
                }
            }
            Err(error) => wrong.push(format!("pipeline: {error}")),
        }
    }
    client.finish(lease);
    wrong
}

fn odds_for(seed: u64) -> Odds {
    Odds {
        moved: 60 + mix(seed ^ 1) % 100,
        ask: 60 + mix(seed ^ 2) % 100,
        try_again: mix(seed ^ 3) % 6,
        down: mix(seed ^ 4) % 4,
        noscript: mix(seed ^ 5) % 40,
    }
}

#[test]
fn every_reply_reaches_its_own_request_through_redirects() {
    let cluster = FakeCluster::start();
    let client = client_for(&cluster);
    let mut slots = Slots::default();
    let schedules = 2_000;
    // SEED=N replays one schedule.
    let only: Option<u64> = std::env::var("SEED").ok().and_then(|s| s.parse().ok());
    for seed in (0..schedules).filter(|seed| only.is_none_or(|only| only == *seed)) {
        cluster.schedule(seed, odds_for(seed));
        let wrong = run_schedule(&client, &mut slots, seed);
        assert!(
            wrong.is_empty(),
            "seed {seed}: {} wrong, first: {:?}",
            wrong.len(),
            wrong.first()
        );
    }
    let redirects = cluster.shared.redirects.load(Ordering::Relaxed);
    assert!(
        redirects > 10 * schedules,
        "only {redirects} redirects were answered"
    );
}

#[test]
fn without_tickets_the_same_schedules_mix_replies_up() {
    pipeline::testing::WITHOUT_TICKETS.with(|off| off.set(true));
    let cluster = FakeCluster::start();
    let client = client_for(&cluster);
    let mut slots = Slots::default();
    let mut found = None;
    for seed in 0..200 {
        cluster.schedule(seed, odds_for(seed));
        let wrong = run_schedule(&client, &mut slots, seed);
        if !wrong.is_empty() {
            found = Some((seed, wrong));
            break;
        }
    }
    pipeline::testing::WITHOUT_TICKETS.with(|off| off.set(false));
    let Some((seed, wrong)) = found else {
        panic!("200 schedules without tickets found nothing wrong");
    };
    eprintln!("without tickets, seed {seed}: {wrong:?}");
}
