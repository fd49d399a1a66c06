//! The watchdog: locks (and semaphore places) taken with `auto_renew` are renewed by one native
//! thread per process and client, at an interval chosen from their TTL and
//! the timeout (`belief::renew_interval_ms`), for as long as their holder
//! has not released them (or for at most the time it asked for). The thread never needs Ruby's GVL,
//! so a job that spins in Ruby or blocks in C keeps its lock; and a holder
//! that dies takes the thread with it, so its locks expire within their TTL.
//!
//! - Renewals are the protocol's renew (`protocol::Renew`), so each phase
//!   renews the servers it says, a dynamic phase is read (and heartbeated) as
//!   by any operation, and a key holding another token is never extended.
//! - Every lock due at the same moment is renewed in one batch: the renew
//!   operations run side by side, each step's commands in one pipeline per
//!   server (`Lease::run_batch`). 10,000 locks cost a few round trips.
//! - What the holder believes is a deadline (`belief`): the send time of the
//!   last confirmed acquire or renewal, plus the TTL, less the drift bound.
//!   Past it the lock is lost (`Renewal::held` is false for good), whether or
//!   not a renewal is still in flight; a late reply never brings it back. A
//!   forked child reads the same deadline, which nothing renews there.
//! - A renewal that finds the lock gone or taken marks it lost and stops
//!   renewing it. One that fails (the server is down) is retried soon, while
//!   the deadline lasts.
//! - Renewals touch only the servers the phase decides on: a copy on the
//!   server the phase does not use expires with its TTL, and a hung server
//!   there never delays the ones that matter. A semaphore place is renewed
//!   by the semaphore's own renew (`protocol::SemaphoreRenew`), the one
//!   `Semaphore#renew` runs: the same table, explored with its gates.
//! - A `Renewal` dropped without `stop` (its `Locking` object was garbage
//!   collected) is renewed no more: the lock expires within its TTL, and a
//!   warning names the key.
//! - The thread has its own connections, never the pools: a `fork` may happen
//!   while it works, and must not copy a pool lock it holds. The registry is
//!   per process: a forked child starts with an empty one (it renews nothing
//!   of its parent's), and never touches the parent's copy, whose lock the
//!   renewer may have held at the fork.

use crate::client::{Client, Held as Connections, Lease};
use crate::error::Result;
use crate::protocol::belief;
use crate::protocol::{self, Operation, Reply, SemaphoreRenew, Step, Target};
use crate::wire::connection::Interrupt;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Connections kept by the renewer thread between its batches (never the
/// pools': see the top of this file).
#[derive(Default)]
pub struct Slots {
    source: Connections,
    destination: Connections,
}

/// What a renewal keeps: a lock, or a semaphore's place among `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewed {
    Lock,
    Place { limit: u64 },
}

/// One renew of a batch: the lock's or the semaphore's state machine.
enum Renewing {
    Lock(protocol::Renew),
    Place(SemaphoreRenew),
}

impl Operation for Renewing {
    type Output = bool;
    fn step(&mut self, replies: Vec<Result<Reply>>) -> Step<bool> {
        match self {
            Renewing::Lock(op) => op.step(replies),
            Renewing::Place(op) => op.step(replies),
        }
    }
}

/// Renews `items` (key, token, TTL in ms, what it is) in one batch, on the
/// renewer's own connections: each renew runs as the protocol says for the
/// phase (read and heartbeated as by any operation), their commands
/// pipelined per server. One result per item.
pub fn renew_batch(
    client: &Client,
    slots: &mut Slots,
    items: &[(&[u8], &[u8], u64, Renewed)],
) -> Vec<Result<bool>> {
    let mut lease = Lease::new(
        client,
        std::mem::take(&mut slots.source),
        std::mem::take(&mut slots.destination),
    );
    let interrupt = Interrupt::new();
    let results = match lease.resolve_phase(&interrupt) {
        Err(error) => items.iter().map(|_| Err(error.clone())).collect(),
        Ok(phase) => {
            let mut keys = Vec::with_capacity(items.len());
            let mut ops = Vec::with_capacity(items.len());
            for (key, token, ttl_ms, kind) in items {
                keys.push(lease.full_key(key));
                ops.push(match kind {
                    Renewed::Lock => {
                        // Only the servers the phase decides on (see the top of this file).
                        let servers = client.servers().used_by(phase);
                        Renewing::Lock(protocol::Renew::new(phase, token, *ttl_ms, servers))
                    }
                    Renewed::Place { limit } => {
                        Renewing::Place(SemaphoreRenew::new(phase, token, *ttl_ms, *limit))
                    }
                });
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
    let (source, destination) = lease.into_held();
    slots.source = keep_healthy(client, Target::Source, source);
    slots.destination = keep_healthy(client, Target::Destination, destination);
    results
}

/// The connections worth keeping for the next batch: a broken one tells
/// its server (a Sentinel master to look up again), and one of another
/// process or still owed replies is dropped.
fn keep_healthy(client: &Client, target: Target, held: Connections) -> Connections {
    let mut kept = Connections::new();
    for (node, connection) in held {
        if !connection.healthy {
            if let Some(server) = client.server(target) {
                server.connection_failed(node);
            }
        } else if connection.pid == crate::process::id() && connection.settled() {
            kept.push((node, connection));
        }
    }
    kept
}

/// Lag samples (one per batch) kept for the percentiles.
const LAG_SAMPLES: usize = 8192;

/// The renewals of one client: the registry of the current process. Whoever
/// owns the client keeps these beside it (the client knows nothing of
/// renewals); the thread holds only a weak reference to the client.
pub struct Renewals {
    current: AtomicPtr<Registry>,
}

impl Default for Renewals {
    fn default() -> Self {
        Renewals {
            current: AtomicPtr::new(std::ptr::null_mut()),
        }
    }
}

impl Drop for Renewals {
    fn drop(&mut self) {
        let pointer = self.current.swap(std::ptr::null_mut(), Ordering::AcqRel);
        // SAFETY: the pointer came from Arc::into_raw in `registry`, and this
        // is its one reference; a forked child leaves its parent's copy be.
        if !pointer.is_null() && unsafe { (*pointer).pid } == crate::process::id() {
            drop(unsafe { Arc::from_raw(pointer) });
        }
    }
}

impl Renewals {
    /// This process's registry (a new, empty one in a forked child).
    fn registry(&self) -> Arc<Registry> {
        let pid = crate::process::id();
        loop {
            let pointer = self.current.load(Ordering::Acquire);
            // SAFETY: a registry is never freed while `current` points to it
            // (only `drop` frees it, with `&mut self`).
            if !pointer.is_null() && unsafe { (*pointer).pid } == pid {
                unsafe { Arc::increment_strong_count(pointer) };
                return unsafe { Arc::from_raw(pointer) };
            }
            let fresh = Arc::into_raw(Arc::new(Registry::new(pid))) as *mut Registry;
            match self
                .current
                .compare_exchange(pointer, fresh, Ordering::AcqRel, Ordering::Acquire)
            {
                // The parent's registry (in a child) is left as it is: its
                // lock may be held by a thread that does not exist here.
                Ok(_) => {}
                Err(_) => drop(unsafe { Arc::from_raw(fresh) }),
            }
        }
    }

    /// What the renewer has done in this process.
    pub fn stats(&self) -> Stats {
        self.registry().stats()
    }

    /// Warnings for the holder's logger, each once: renewals dropped
    /// unstopped, settings where renewal cannot survive a slow reply.
    pub fn take_warnings(&self) -> Vec<String> {
        self.registry().take_warnings()
    }
}

struct Registry {
    pid: u32,
    state: Mutex<State>,
    /// Wakes the renewer (a new lock, a stop) and the stoppers (a batch ended).
    changed: Condvar,
    counters: Counters,
}

#[derive(Default)]
struct State {
    entries: HashMap<u64, Entry>,
    next_id: u64,
    running: bool,
    lags_us: Vec<u32>,
    lag_next: usize,
    last_error: Option<String>,
    /// For `take_warnings`: dropped renewals, settings that cannot work.
    warnings: Vec<String>,
    /// (TTL, timeout) pairs already warned about.
    warned: HashSet<(u64, u64)>,
}

struct Entry {
    key: Vec<u8>,
    token: Vec<u8>,
    ttl_ms: u64,
    kind: Renewed,
    interval: Duration,
    due: Instant,
    /// No renewal is sent after this (`auto_renew: seconds`), in `belief` time.
    renew_until_us: Option<u64>,
    in_flight: bool,
    belief: Arc<Belief>,
}

/// What the holder believes, shared by the renewer and the holder (and
/// copied into a forked child, where nothing renews it).
struct Belief {
    lost: AtomicBool,
    /// `belief::valid_until` of the last confirmed acquire or renewal.
    valid_until_us: AtomicU64,
}

impl Belief {
    /// Whether the lock is held now. Once false, false for good: the
    /// deadline passing latches `lost`, so a late renewal cannot revive it.
    fn holds(&self) -> bool {
        if self.lost.load(Ordering::Acquire) {
            return false;
        }
        if belief::holds(
            self.valid_until_us.load(Ordering::Acquire),
            belief::now_us(),
        ) {
            return true;
        }
        self.lost.store(true, Ordering::Release);
        false
    }
}

#[derive(Default)]
struct Counters {
    renewed: AtomicU64,
    failed: AtomicU64,
    lost: AtomicU64,
    batches: AtomicU64,
    cpu_ns: AtomicU64,
}

/// `Locking.stats`: the renewer of this process.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Locks being renewed now.
    pub held: usize,
    pub renewed: u64,
    /// Renewals that failed (an error; retried).
    pub failed: u64,
    /// Locks found gone or taken (or whose TTL ran out while renewals failed).
    pub lost: u64,
    pub batches: u64,
    /// How late batches of renewals were done (their last reply in) after
    /// their earliest renewal was due, over the last 8,192 batches.
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    /// The renewer thread's CPU time, in all.
    pub cpu_ms: f64,
    pub last_error: Option<String>,
}

/// One lock being renewed, held by its `Locking` object.
pub struct Renewal {
    registry: Arc<Registry>,
    id: u64,
    belief: Arc<Belief>,
}

impl Renewal {
    /// Whether the lock is held: no renewal found it gone or taken, and the
    /// deadline of the last confirmed one has not passed.
    pub fn held(&self) -> bool {
        self.belief.holds()
    }

    /// Whether the lock is lost (found gone or taken, or its deadline passed).
    pub fn lost(&self) -> bool {
        !self.held()
    }

    /// How long the lock is still believed held, if at all.
    pub fn remaining(&self) -> Duration {
        if !self.held() {
            return Duration::ZERO;
        }
        let until = self.belief.valid_until_us.load(Ordering::Acquire);
        Duration::from_micros(until.saturating_sub(belief::now_us()))
    }

    /// Stops renewing, after a renewal in flight has ended (so that no
    /// renewal runs after the release that follows). Nothing in a forked
    /// child: the renewal is its parent's.
    pub fn stop(&self) {
        if self.registry.pid != crate::process::id() {
            return;
        }
        let mut state = self.registry.lock();
        while state
            .entries
            .get(&self.id)
            .is_some_and(|entry| entry.in_flight)
        {
            state = self
                .registry
                .changed
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
        state.entries.remove(&self.id);
    }
}

/// A renewal nobody can stop any more (its `Locking` object was collected):
/// renewed no more, so that the lock frees within its TTL.
impl Drop for Renewal {
    fn drop(&mut self) {
        if self.registry.pid != crate::process::id() {
            return;
        }
        let mut state = self.registry.lock();
        if let Some(entry) = state.entries.remove(&self.id) {
            let what = match entry.kind {
                Renewed::Lock => "lock",
                Renewed::Place { .. } => "semaphore place",
            };
            let warning = format!(
                "the auto-renewed {what} {:?} was garbage collected while held (no release, no ensure?): it is no \
                 longer renewed and expires within its TTL of {} ms",
                String::from_utf8_lossy(&entry.key),
                entry.ttl_ms
            );
            state.warnings.push(warning);
        }
    }
}

impl Registry {
    fn new(pid: u32) -> Registry {
        Registry {
            pid,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            counters: Counters::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().warnings)
    }

    fn stats(&self) -> Stats {
        let state = self.lock();
        let mut lags = state.lags_us.clone();
        lags.sort_unstable();
        let at = |q: f64| {
            lags.get(((lags.len() as f64 * q) as usize).min(lags.len().saturating_sub(1)))
                .map_or(0.0, |us| f64::from(*us) / 1000.0)
        };
        Stats {
            held: state.entries.len(),
            renewed: self.counters.renewed.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            lost: self.counters.lost.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            lag_p50_ms: at(0.5),
            lag_p99_ms: at(0.99),
            lag_max_ms: lags.last().map_or(0.0, |us| f64::from(*us) / 1000.0),
            cpu_ms: self.counters.cpu_ns.load(Ordering::Relaxed) as f64 / 1e6,
            last_error: state.last_error.clone(),
        }
    }
}

/// A lock (or semaphore place) to renew, as the holder knows it.
pub struct Held<'a> {
    pub key: &'a [u8],
    pub token: &'a [u8],
    pub ttl_ms: u64,
    pub kind: Renewed,
    /// `belief::valid_until` of the acquire or renewal that confirmed it.
    pub valid_until_us: u64,
    /// Renew for at most this long, then let the TTL run out.
    pub renew_for: Option<Duration>,
}

/// Starts renewing a lock this token holds, at the interval its TTL and the
/// client's timeout allow, until `Renewal::stop` (or its `renew_for`).
pub fn start(client: &Arc<Client>, renewals: &Renewals, held: Held<'_>) -> Renewal {
    let registry = renewals.registry();
    let now = Instant::now();
    let now_us = belief::now_us();
    let timeout_ms = client.timeout().as_millis() as u64;
    let interval = Duration::from_millis(belief::renew_interval_ms(held.ttl_ms, timeout_ms));
    let belief = Arc::new(Belief {
        lost: AtomicBool::new(false),
        valid_until_us: AtomicU64::new(held.valid_until_us),
    });
    let mut state = registry.lock();
    if let Some(warning) = belief::renew_warning(held.ttl_ms, timeout_ms) {
        if state.warned.insert((held.ttl_ms, timeout_ms)) {
            state.warnings.push(warning);
        }
    }
    state.next_id += 1;
    let id = state.next_id;
    // Due an interval after the confirming command was sent (the deadline
    // less the validity), not after its reply came in.
    let remaining_us = held.valid_until_us.saturating_sub(now_us);
    let elapsed_us = (belief::valid_for_ms(held.ttl_ms) * 1000).saturating_sub(remaining_us);
    let due = now + interval.saturating_sub(Duration::from_micros(elapsed_us));
    state.entries.insert(
        id,
        Entry {
            key: held.key.to_vec(),
            token: held.token.to_vec(),
            ttl_ms: held.ttl_ms,
            kind: held.kind,
            interval,
            due,
            renew_until_us: held
                .renew_for
                .map(|renew_for| now_us.saturating_add(renew_for.as_micros() as u64)),
            in_flight: false,
            belief: Arc::clone(&belief),
        },
    );
    if !state.running {
        state.running = true;
        let weak = Arc::downgrade(client);
        let for_thread = Arc::clone(&registry);
        let spawned = std::thread::Builder::new()
            .name("locking-renewer".into())
            .spawn(move || run(weak, for_thread));
        if spawned.is_err() {
            state.running = false;
            state.last_error = Some("could not start the renewer thread".into());
        }
    } else {
        registry.changed.notify_all();
    }
    drop(state);
    Renewal {
        registry,
        id,
        belief,
    }
}

/// One lock to renew in this batch.
struct Due {
    id: u64,
    key: Vec<u8>,
    token: Vec<u8>,
    ttl_ms: u64,
    kind: Renewed,
    due: Instant,
}

/// The renewer thread: waits for the next due renewal, renews every lock due
/// then in one batch, and records what happened. It ends when there is
/// nothing left to renew (the next `start` begins another), or when its
/// client is gone.
fn run(client: Weak<Client>, registry: Arc<Registry>) {
    let mut slots = Slots::default();
    loop {
        let batch = {
            let mut state = registry.lock();
            loop {
                end_expired(&registry, &mut state);
                if state.entries.is_empty() {
                    state.running = false;
                    return;
                }
                let now = Instant::now();
                let earliest = state
                    .entries
                    .values()
                    .filter(|entry| !entry.in_flight)
                    .map(|entry| entry.due)
                    .min();
                let next = match earliest {
                    Some(due) if due <= now => {
                        // Locks due soon join the batch: renewed a little
                        // early, many locks cost one round trip, not one each.
                        let mut batch = Vec::new();
                        for (id, entry) in state.entries.iter_mut() {
                            if !entry.in_flight && entry.due <= now + entry.interval / 4 {
                                entry.in_flight = true;
                                batch.push(Due {
                                    id: *id,
                                    key: entry.key.clone(),
                                    token: entry.token.clone(),
                                    ttl_ms: entry.ttl_ms,
                                    kind: entry.kind,
                                    due: entry.due,
                                });
                            }
                        }
                        break batch;
                    }
                    Some(due) => due,
                    None => now + Duration::from_secs(3600),
                };
                state = registry
                    .changed
                    .wait_timeout(state, next - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        };
        let Some(client) = client.upgrade() else {
            registry.lock().running = false;
            return;
        };
        let started = Instant::now();
        // Before anything is sent: the deadline the renewals confirm.
        let sent_us = belief::now_us();
        let cpu_before = thread_cpu_ns();
        let items: Vec<(&[u8], &[u8], u64, Renewed)> = batch
            .iter()
            .map(|due| {
                (
                    due.key.as_slice(),
                    due.token.as_slice(),
                    due.ttl_ms,
                    due.kind,
                )
            })
            .collect();
        let results = renew_batch(&client, &mut slots, &items);
        drop(client);
        registry.counters.batches.fetch_add(1, Ordering::Relaxed);
        registry.counters.cpu_ns.fetch_add(
            thread_cpu_ns().saturating_sub(cpu_before),
            Ordering::Relaxed,
        );
        record(&registry, batch, results, started, sent_us);
        registry.changed.notify_all();
    }
}

/// Drops the locks whose belief ran out (lost) or whose `renew_for` ended
/// (left to their TTL), unless a renewal of theirs is in flight.
fn end_expired(registry: &Registry, state: &mut State) {
    let now_us = belief::now_us();
    state.entries.retain(|_, entry| {
        if entry.in_flight {
            return true;
        }
        if !entry.belief.holds() {
            registry.counters.lost.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        entry.renew_until_us.is_none_or(|until| now_us < until)
    });
}

fn record(
    registry: &Registry,
    batch: Vec<Due>,
    results: Vec<Result<bool>>,
    started: Instant,
    sent_us: u64,
) {
    let now = Instant::now();
    let mut state = registry.lock();
    // The batch's lag: how late it was done (its last reply in) after its
    // earliest renewal was due. One sample per batch: the locks in a batch
    // share it.
    if let Some(earliest) = batch.iter().map(|due| due.due).min() {
        let lag = now
            .saturating_duration_since(earliest)
            .as_micros()
            .min(u32::MAX as u128) as u32;
        if state.lags_us.len() < LAG_SAMPLES {
            state.lags_us.push(lag);
        } else {
            let at = state.lag_next;
            state.lags_us[at] = lag;
        }
        state.lag_next = (state.lag_next + 1) % LAG_SAMPLES;
    }
    for (due, result) in batch.into_iter().zip(results) {
        let mut error = None;
        let mut gone = false;
        if let Some(entry) = state.entries.get_mut(&due.id) {
            entry.in_flight = false;
            let extended = belief::after_renewal(
                entry.belief.valid_until_us.load(Ordering::Acquire),
                sent_us,
                belief::now_us(),
                entry.ttl_ms,
            );
            match (result, extended) {
                // `holds` last: it latches `lost` once the deadline passed.
                (Ok(true), Some(until)) if entry.belief.holds() => {
                    registry.counters.renewed.fetch_add(1, Ordering::Relaxed);
                    entry.belief.valid_until_us.store(until, Ordering::Release);
                    entry.due = started + entry.interval;
                }
                (Ok(_), _) => gone = true,
                (Err(failure), _) => {
                    registry.counters.failed.fetch_add(1, Ordering::Relaxed);
                    error = Some(failure.to_string());
                    if entry.belief.holds() {
                        let retry = Duration::from_millis(belief::retry_after_ms(entry.ttl_ms));
                        entry.due = now + retry;
                    } else {
                        gone = true;
                    }
                }
            }
            if gone {
                entry.belief.lost.store(true, Ordering::Release);
                registry.counters.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
        if gone {
            state.entries.remove(&due.id);
        }
        if error.is_some() {
            state.last_error = error;
        }
    }
}

/// CPU time of the calling thread, in ns.
fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill, for this thread's clock.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return 0;
    }
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
