//! The watchdog: locks taken with `auto_renew` are renewed by one native
//! thread per process and client, about every third of their TTL, for as long
//! as their holder has not released them. The thread never needs Ruby's GVL,
//! so a job that spins in Ruby or blocks in C keeps its lock; and a holder
//! that dies takes the thread with it, so its locks expire within their TTL.
//!
//! - Renewals are the protocol's renew (`protocol::Renew`), so each phase
//!   renews the servers it says, a dynamic phase is read (and heartbeated) as
//!   by any operation, and a key holding another token is never extended.
//! - Every lock due at the same moment is renewed in one batch: the renew
//!   operations run side by side, each step's commands in one pipeline per
//!   server (`Lease::run_batch`). 10,000 locks cost a few round trips.
//! - A renewal that finds the lock gone or taken marks it lost (`lost?`) and
//!   stops renewing it. One that fails (the server is down) is retried soon,
//!   until the lock's TTL has run out since its last renewal: then it is lost.
//! - The thread has its own connections, never the pools: a `fork` may happen
//!   while it works, and must not copy a pool lock it holds. The registry is
//!   per process: a forked child starts with an empty one (it renews nothing
//!   of its parent's), and never touches the parent's copy, whose lock the
//!   renewer may have held at the fork.

use crate::client::{Client, Slots};
use crate::error::Error;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Renewals are retried this soon after a failure (at most; less for short TTLs).
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// Lag samples (one per batch) kept for the percentiles.
const LAG_SAMPLES: usize = 8192;

/// The renewals of one client: the registry of the current process.
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
}

struct Entry {
    key: Vec<u8>,
    token: Vec<u8>,
    ttl_ms: u64,
    due: Instant,
    /// When the lock runs out if no renewal succeeds (as last known).
    expires: Instant,
    in_flight: bool,
    lost: Arc<AtomicBool>,
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
    lost: Arc<AtomicBool>,
}

impl Renewal {
    /// Whether a renewal found the lock gone or taken.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
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

/// Starts renewing a lock this token holds for `ttl_ms`, about every
/// `ttl_ms / 3`, until `Renewal::stop`.
pub fn start(client: &Arc<Client>, key: &[u8], token: &[u8], ttl_ms: u64) -> Renewal {
    let registry = client.renewals().registry();
    let now = Instant::now();
    let lost = Arc::new(AtomicBool::new(false));
    let mut state = registry.lock();
    state.next_id += 1;
    let id = state.next_id;
    state.entries.insert(
        id,
        Entry {
            key: key.to_vec(),
            token: token.to_vec(),
            ttl_ms,
            due: now + period(ttl_ms),
            expires: now + Duration::from_millis(ttl_ms),
            in_flight: false,
            lost: Arc::clone(&lost),
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
    Renewal { registry, id, lost }
}

fn period(ttl_ms: u64) -> Duration {
    Duration::from_millis((ttl_ms / 3).max(1))
}

/// One lock to renew in this batch.
struct Due {
    id: u64,
    key: Vec<u8>,
    token: Vec<u8>,
    ttl_ms: u64,
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
                            if !entry.in_flight && entry.due <= now + period(entry.ttl_ms) / 4 {
                                entry.in_flight = true;
                                batch.push(Due {
                                    id: *id,
                                    key: entry.key.clone(),
                                    token: entry.token.clone(),
                                    ttl_ms: entry.ttl_ms,
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
        let cpu_before = thread_cpu_ns();
        let items: Vec<(&[u8], &[u8], u64)> = batch
            .iter()
            .map(|due| (due.key.as_slice(), due.token.as_slice(), due.ttl_ms))
            .collect();
        let results = client.renew_batch(&mut slots, &items);
        drop(client);
        registry.counters.batches.fetch_add(1, Ordering::Relaxed);
        registry.counters.cpu_ns.fetch_add(
            thread_cpu_ns().saturating_sub(cpu_before),
            Ordering::Relaxed,
        );
        record(&registry, batch, results, started);
        registry.changed.notify_all();
    }
}

fn record(
    registry: &Registry,
    batch: Vec<Due>,
    results: Vec<Result<bool, Error>>,
    started: Instant,
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
            match result {
                Ok(true) => {
                    registry.counters.renewed.fetch_add(1, Ordering::Relaxed);
                    entry.expires = started + Duration::from_millis(entry.ttl_ms);
                    entry.due = started + period(entry.ttl_ms);
                }
                Ok(false) => gone = true,
                Err(failure) => {
                    registry.counters.failed.fetch_add(1, Ordering::Relaxed);
                    error = Some(failure.to_string());
                    if now >= entry.expires {
                        gone = true;
                    } else {
                        let retry = RETRY_AFTER.min(period(entry.ttl_ms) / 3);
                        entry.due = now + retry.max(Duration::from_millis(1));
                    }
                }
            }
            if gone {
                entry.lost.store(true, Ordering::Release);
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
