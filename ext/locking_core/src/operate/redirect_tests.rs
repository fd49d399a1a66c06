//! Every reply answers its own request, through a cluster's redirects.
//!
//! A fake Redis Cluster on real sockets (`fake`): three nodes that share one
//! slot map and answer every keyed command from what its keys hold, unless
//! the seeded schedule says to answer `MOVED`, `ASK`, `TRYAGAIN`,
//! `CLUSTERDOWN` or `NOSCRIPT` instead (inside transactions too). Each seed
//! runs a schedule of each kind:
//!
//! - the hot path: renewal batches (pipelines to every node at once),
//!   single commands and pipelines of plain reads and of transactions, on a
//!   cluster whose every key holds a value only it can have; each result
//!   must be the one its key's value says;
//! - a backfill batch by node (`Operator::backfill_side_by_side`, the call
//!   a backfill makes when a cluster is on either side) from a source cluster
//!   whose locks are absent, steady, renewed longer or taken by another
//!   holder after their first read, to a destination cluster that keeps its
//!   keys (none, our copy with a shorter or longer TTL, another holder's).
//!   Each key's outcome, and the destination's keys afterwards, must be what
//!   that key's own replies imply; no other key may be written, and every
//!   write must be served by its slot's master or a node a redirect named.
//!
//! A schedule's answers depend on the seed, the key and how often the key
//! was asked (and, on the source, read), not on the order in which the
//! threads run, so a failing seed replays (`SEED=N`, `KIND=hot|backfill`).
//!
//! The negative control turns off the executor's tickets (a pipeline's
//! replies are read from the oldest owed, as before): the same schedules
//! must then hand some replies to the wrong requests, the backfill's alone
//! too.

mod fake;

use crate::client::{Client, ClientConfig, Route};
use crate::operate::operator::Operator;
use crate::operate::renew::{renew_batch, Renewed, Slots};
use crate::protocol::phase::Phase;
use crate::protocol::BackfillOutcome;
use crate::topology::node::EvictionCheck;
use crate::wire::codec::{lock, Value};
use crate::wire::connection::Interrupt;
use crate::wire::pipeline::{self, Request};
use fake::{
    hash, held, mix, pttl_of, source_lock_of, value_of, FakeCluster, Keys, Odds, SourceLock, Stored,
};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn client_for(cluster: &FakeCluster) -> Client {
    client_of(None, cluster, Phase::Destination)
}

/// A client of `destination` (and of `source`) in `phase`.
fn client_of(source: Option<&FakeCluster>, destination: &FakeCluster, phase: Phase) -> Client {
    Client::new(ClientConfig {
        source: source.map(FakeCluster::url),
        destination: Some(destination.url()),
        phase,
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
    let items: Vec<(&[u8], &[u8], u64, Renewed)> = keys
        .iter()
        .map(|key| (key.as_slice(), b"token".as_slice(), 5_000, Renewed::Lock))
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

/// The destination's copy of `key` before its backfill (`None`: absent):
/// ours with a shorter or a longer TTL, or another holder's.
fn stored_before(key: &[u8]) -> Option<Stored> {
    let (value, pttl) = (value_of(key), pttl_of(key));
    match mix(hash(key) ^ 0x5eed) % 6 {
        3 => Some(Stored {
            value,
            pttl: pttl - 500,
        }),
        4 => Some(Stored {
            value,
            pttl: pttl + 500,
        }),
        5 => Some(Stored {
            value: b"theirs".to_vec(),
            pttl,
        }),
        _ => None,
    }
}

/// What the backfill of `key` must end in, and the destination's copy
/// after it: what the key's own replies imply (the source's clock stands
/// still, so a TTL moves only as `source_lock` says).
fn backfill_expected(key: &[u8]) -> (BackfillOutcome, Option<Stored>) {
    let before = stored_before(key);
    let ours = |pttl| {
        Some(Stored {
            value: value_of(key),
            pttl,
        })
    };
    let mine = before
        .as_ref()
        .is_none_or(|copy| copy.value == value_of(key));
    let lock = source_lock_of(key);
    match before {
        _ if lock == SourceLock::Absent => (BackfillOutcome::Absent, before),
        Some(theirs) if !mine => (BackfillOutcome::Conflict, Some(theirs)),
        None => match lock {
            SourceLock::Extended => (BackfillOutcome::Copied, ours(pttl_of(key) + 1_000)),
            SourceLock::Replaced => (BackfillOutcome::Undone, None),
            _ => (BackfillOutcome::Copied, ours(pttl_of(key))),
        },
        Some(copy) => match lock {
            SourceLock::Extended => (BackfillOutcome::AlreadyThere, ours(pttl_of(key) + 1_000)),
            SourceLock::Replaced => (BackfillOutcome::Absent, Some(copy)),
            _ => (
                BackfillOutcome::AlreadyThere,
                ours(copy.pttl.max(pttl_of(key))),
            ),
        },
    }
}

/// The kinds of schedule.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Renewal batches, single commands, pipelines of reads (`run_schedule`).
    HotPath,
    /// A backfill batch by node between two clusters (`Fakes::run_backfill`).
    Backfill,
}

/// The fake clusters a test drives, and their clients.
struct Fakes {
    cluster: FakeCluster,
    client: Client,
    slots: Slots,
    /// A backfill's source and destination, and its client (phase 0).
    source: FakeCluster,
    destination: FakeCluster,
    backfiller: Client,
    /// The backfill's outcomes so far, each as expected.
    outcomes: HashMap<BackfillOutcome, u64>,
}

impl Fakes {
    fn start() -> Fakes {
        let cluster = FakeCluster::start(Keys::Computed);
        let source = FakeCluster::start(Keys::Source);
        let destination = FakeCluster::start(Keys::Stored);
        Fakes {
            client: client_for(&cluster),
            backfiller: client_of(Some(&source), &destination, Phase::Source),
            cluster,
            slots: Slots::default(),
            source,
            destination,
            outcomes: HashMap::new(),
        }
    }

    /// Schedule `seed` of `kind`: its wrong answers.
    fn run(&mut self, kind: Kind, seed: u64) -> Vec<String> {
        match kind {
            Kind::HotPath => {
                self.cluster.schedule(seed, Odds::of(seed), HashMap::new());
                run_schedule(&self.client, &mut self.slots, seed)
            }
            Kind::Backfill => self.run_backfill(seed),
        }
    }

    /// One backfill batch by node (the call a batch makes when a cluster is
    /// on either side), with redirects on both clusters: each key's outcome
    /// and the destination's keys afterwards must be what its own replies
    /// imply, every write served where the map or a redirect sent it.
    fn run_backfill(&mut self, seed: u64) -> Vec<String> {
        let size = 1 + (mix(seed ^ 7) % 40) as usize;
        let keys: Vec<Vec<u8>> = (0..size)
            .map(|i| format!("t:b{seed}:{i}").into_bytes())
            .collect();
        let store = keys
            .iter()
            .filter_map(|key| Some((key.clone(), stored_before(key)?)))
            .collect();
        self.source.schedule(seed, Odds::of(seed), HashMap::new());
        self.destination
            .schedule(mix(seed), Odds::of(mix(seed)), store);
        let batch: Vec<crate::error::Result<Vec<u8>>> = keys.iter().cloned().map(Ok).collect();
        let mut operator = Operator::new(&self.backfiller);
        let outcomes = operator.backfill_side_by_side(&batch, &Interrupt::new());
        operator.finish();
        let name = |key: &[u8]| String::from_utf8_lossy(key).into_owned();
        let mut wrong = Vec::new();
        match outcomes {
            Ok(outcomes) => {
                for (key, outcome) in keys.iter().zip(outcomes) {
                    let (expected, _) = backfill_expected(key);
                    match outcome {
                        Ok(outcome) if outcome == expected => {
                            *self.outcomes.entry(outcome).or_insert(0) += 1
                        }
                        other => wrong.push(format!(
                            "backfill of {:?}: {other:?}, not {expected:?}",
                            name(key)
                        )),
                    }
                }
            }
            Err(error) => wrong.push(format!("backfill: {error}")),
        }
        let mut stored = std::mem::take(&mut *self.destination.shared.store.lock().expect("store"));
        for key in &keys {
            let (_, expected) = backfill_expected(key);
            let found = stored.remove(key);
            if found != expected {
                wrong.push(format!(
                    "the destination's {:?}: {found:?}, not {expected:?}",
                    name(key)
                ));
            }
        }
        wrong.extend(stored.keys().map(|key| format!("{:?} written", name(key))));
        let misrouted = &self.destination.shared.misrouted;
        wrong.extend(std::mem::take(&mut *misrouted.lock().expect("misrouted")));
        wrong
    }
}

#[test]
fn every_reply_reaches_its_own_request_through_redirects() {
    let mut fakes = Fakes::start();
    let schedules = 2_000;
    // SEED=N replays one schedule (KIND=backfill or hot: of that kind only).
    let only: Option<u64> = std::env::var("SEED").ok().and_then(|s| s.parse().ok());
    let kinds: Vec<Kind> = match std::env::var("KIND").as_deref() {
        Ok("backfill") => vec![Kind::Backfill],
        Ok("hot") => vec![Kind::HotPath],
        _ => vec![Kind::HotPath, Kind::Backfill],
    };
    for seed in (0..schedules).filter(|seed| only.is_none_or(|only| only == *seed)) {
        for kind in &kinds {
            let wrong = fakes.run(*kind, seed);
            assert!(
                wrong.is_empty(),
                "seed {seed}, {kind:?}: {} wrong, first: {:?}",
                wrong.len(),
                wrong.first()
            );
        }
    }
    if only.is_some() || kinds.len() < 2 {
        return;
    }
    for (name, cluster, least) in [
        ("hot path", &fakes.cluster, 10),
        ("backfill's source", &fakes.source, 10),
        ("backfill's destination", &fakes.destination, 3),
    ] {
        let redirects = cluster.shared.redirects.load(Ordering::Relaxed);
        assert!(
            redirects > least * schedules,
            "the {name} cluster answered only {redirects} redirects"
        );
    }
    // Every ending of a backfill was reached, through redirects.
    for outcome in [
        BackfillOutcome::Absent,
        BackfillOutcome::Copied,
        BackfillOutcome::AlreadyThere,
        BackfillOutcome::Conflict,
        BackfillOutcome::Undone,
    ] {
        let seen = fakes.outcomes.get(&outcome).copied().unwrap_or(0);
        assert!(seen > schedules, "only {seen} backfills ended {outcome:?}");
    }
}

/// Runs `schedules` schedules of `kind` with the executor of before its
/// tickets (a pipeline's replies read from the oldest owed), a new backfill
/// client each (so a schedule is caught by its own replies, not by a
/// connection an earlier one left out of step); stops once `enough` were
/// caught. The schedules caught, each with its first wrong answer.
fn without_tickets(kind: Kind, schedules: u64, enough: usize) -> Vec<(u64, String)> {
    pipeline::testing::WITHOUT_TICKETS.with(|off| off.set(true));
    let mut fakes = Fakes::start();
    let mut caught = Vec::new();
    for seed in 0..schedules {
        fakes.backfiller = client_of(Some(&fakes.source), &fakes.destination, Phase::Source);
        if let Some(first) = fakes.run(kind, seed).into_iter().next() {
            caught.push((seed, first));
            if caught.len() == enough {
                break;
            }
        }
    }
    pipeline::testing::WITHOUT_TICKETS.with(|off| off.set(false));
    caught
}

#[test]
fn without_tickets_the_same_schedules_mix_replies_up() {
    let caught = without_tickets(Kind::HotPath, 200, 1);
    let Some((seed, wrong)) = caught.first() else {
        panic!("200 schedules without tickets found nothing wrong");
    };
    eprintln!("without tickets, seed {seed}: {wrong}");
}

#[test]
fn without_tickets_the_backfill_schedules_alone_mix_replies_up() {
    let schedules = 100;
    let caught = without_tickets(Kind::Backfill, schedules, usize::MAX);
    let Some((seed, wrong)) = caught.first() else {
        panic!("{schedules} backfill schedules without tickets found nothing wrong");
    };
    eprintln!(
        "without tickets, {} of {schedules} backfill schedules caught; seed {seed}: {wrong}",
        caught.len()
    );
}

/// A lease fenced until a moment already past (a backfill whose lease ran
/// out) sends nothing more: each pipeline asks the fence first.
#[test]
fn a_lease_whose_fence_ran_out_sends_nothing() {
    let cluster = FakeCluster::start(Keys::Computed);
    let client = client_for(&cluster);
    let mut lease = client.lease();
    lease.fence(0);
    let outcome = lease.acquire(b"fenced", b"me", 1_000, &Interrupt::new());
    assert!(
        matches!(outcome, Err(crate::error::Error::Phase(_))),
        "{outcome:?}"
    );
}
