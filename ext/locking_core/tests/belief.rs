//! The explorer for what a holder believes (issue 27): the renewer with its
//! renewals in flight (each request and reply delayed up to `timeout`, or
//! lost to a partition), holder pauses, a fork whose child keeps the belief
//! while its parent dies, a hung server the phase does not use, a request
//! delayed up to `timeout` against its process's heartbeat, and a backfill
//! stopped past its lease. Every schedule of those choices is run, on a
//! millisecond clock, against the product's own rules (`belief`, the
//! `protocol::Renew` state machine); each scenario's negative control is the
//! rule it replaced, kept here under a name, and must be found.

use locking_core::error::Error;
use locking_core::protocol::belief;
use locking_core::protocol::phase::Phase;
use locking_core::protocol::{Operation, Renew, Reply, Servers, Step, Target};

const MS: u64 = 1000; // belief time is in microseconds

/// How a holder decides what it believes after each renewal.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Rule {
    /// The product: `belief::after_renewal`, `belief::holds`.
    Deadline,
    /// Before issue 27: `have_lock? == !lost?`, and a renewal that failed
    /// marks the lock lost only when its error returns after the TTL ran
    /// out since the last success (counted from that renewal's start).
    ReplyFlips,
}

/// What happens to one renewal.
#[derive(Clone, Copy, Debug)]
enum Fate {
    /// Runs on the server `request` ms after it is sent; its reply takes
    /// `reply` ms more (if the two pass `timeout`, the client gives up then,
    /// though the command ran).
    Delivered { request: u64, reply: u64 },
    /// Lost in a partition: never runs, the client gives up at `timeout`.
    Dropped,
}

/// One run: the lock is acquired at 0 (run at once, confirmed at 0), renewed
/// by the rule's renewer; the holder reads `have_lock?` every millisecond
/// except while it is paused, and another client takes the key the moment
/// Redis lets it go. Returns the first moment the holder believed a lock
/// Redis no longer held for it, if any.
#[derive(Clone, Copy, Debug)]
struct Run {
    ttl_ms: u64,
    timeout_ms: u64,
    /// The holder (and its renewer) stopped over [at, at + for).
    pause: Option<(u64, u64)>,
    /// At this moment the holder forks and dies: the child keeps its belief
    /// and reads on; nothing renews the lock any more.
    fork_at: Option<u64>,
}

fn violation(run: Run, fates: &[Fate], rule: Rule) -> Option<u64> {
    let (ttl, timeout) = (run.ttl_ms, run.timeout_ms);
    // The server's clock may run faster than ours by the drift bound: a TTL
    // of `ttl` ends up to 1% sooner in our time (1/101 of it, within 1%).
    let server_ttl = ttl * 100 / 101;
    let interval = match rule {
        Rule::Deadline => belief::renew_interval_ms(ttl, timeout),
        Rule::ReplyFlips => ttl / 3,
    };
    let mut expires = server_ttl; // on the server, in our ms
    let mut valid_until = belief::valid_until(0, ttl); // µs
    let mut lost = false;
    let mut last_start = 0; // ReplyFlips: start of the last success
    let mut next_send = interval;
    let mut fates = fates.iter();
    let horizon = 6 * ttl;
    let paused = |t: u64| run.pause.is_some_and(|(at, len)| t >= at && t < at + len);
    let after_pause = |t: u64| match run.pause {
        Some((at, len)) if t >= at && t < at + len => at + len,
        _ => t,
    };
    let mut in_flight: Option<(u64, u64, Result<bool, ()>)> = None; // (sent, back at, outcome)
    for t in 0..horizon {
        let renewing = run.fork_at.is_none_or(|at| t < at);
        // The renewer thread, which runs only while its process does.
        if renewing && !paused(t) && !lost {
            if let Some((sent, back, outcome)) = in_flight {
                if after_pause(back) == t {
                    in_flight = None;
                    match (rule, outcome) {
                        (Rule::Deadline, Ok(true)) => {
                            match belief::after_renewal(valid_until, sent * MS, t * MS, ttl) {
                                Some(until) => valid_until = until,
                                None => lost = true,
                            }
                            next_send = sent + interval;
                        }
                        (Rule::ReplyFlips, Ok(true)) => {
                            last_start = sent;
                            next_send = sent + interval;
                        }
                        (_, Ok(false)) => lost = true,
                        (Rule::Deadline, Err(())) => {
                            lost |= !belief::holds(valid_until, t * MS);
                            next_send = t + belief::retry_after_ms(ttl);
                        }
                        (Rule::ReplyFlips, Err(())) => {
                            lost |= t >= last_start + ttl;
                            next_send = t + (ttl / 3 / 3).clamp(1, 200);
                        }
                    }
                }
            }
            if in_flight.is_none() && t >= next_send && !lost {
                let Some(fate) = fates.next() else {
                    return None; // every schedule ends after its renewals
                };
                in_flight = Some(match *fate {
                    Fate::Dropped => (t, t + timeout, Err(())),
                    Fate::Delivered { request, reply } => {
                        let ran = t + request;
                        let held = ran < expires;
                        if held {
                            expires = ran + server_ttl;
                        }
                        if request + reply > timeout {
                            (t, t + timeout, Err(()))
                        } else {
                            (t, ran + reply, Ok(held))
                        }
                    }
                });
            }
        }
        // The holder (or, after a fork, its child) asks `have_lock?`.
        let reading = run.fork_at.is_some() || !paused(t);
        if reading {
            let believes = match rule {
                Rule::Deadline => !lost && belief::holds(valid_until, t * MS),
                Rule::ReplyFlips => !lost,
            };
            if rule == Rule::Deadline && !believes {
                lost = true; // the latch: false for good
            }
            if believes && t >= expires {
                return Some(t);
            }
        }
    }
    None
}

fn fates(timeout: u64) -> Vec<Fate> {
    let delays = [0, timeout / 2, timeout];
    let mut all = vec![Fate::Dropped];
    for request in delays {
        for reply in delays {
            all.push(Fate::Delivered { request, reply });
        }
    }
    all
}

/// Every sequence of `depth` fates, each run for each pause and fork.
fn explore(rule: Rule, ttl_ms: u64, timeout_ms: u64, depth: u32) -> Vec<(Run, Vec<Fate>, u64)> {
    let choices = fates(timeout_ms);
    let mut found = Vec::new();
    let mut runs = vec![Run {
        ttl_ms,
        timeout_ms,
        pause: None,
        fork_at: None,
    }];
    for at in [ttl_ms / 2, ttl_ms] {
        for len in [ttl_ms / 2, ttl_ms, 2 * ttl_ms] {
            runs.push(Run {
                pause: Some((at, len)),
                ..runs[0]
            });
        }
        runs.push(Run {
            fork_at: Some(at),
            ..runs[0]
        });
    }
    let total = choices.len().pow(depth);
    for run in runs {
        for mut index in 0..total {
            let mut schedule = Vec::with_capacity(depth as usize);
            for _ in 0..depth {
                schedule.push(choices[index % choices.len()]);
                index /= choices.len();
            }
            if let Some(at) = violation(run, &schedule, rule) {
                found.push((run, schedule, at));
            }
        }
    }
    found
}

#[test]
fn have_lock_never_outlives_the_lock_in_redis() {
    for (ttl, timeout) in [(300, 50), (1000, 300), (1500, 500)] {
        let found = explore(Rule::Deadline, ttl, timeout, 4);
        assert!(
            found.is_empty(),
            "TTL {ttl}, timeout {timeout}: {:?}",
            &found[..1]
        );
    }
}

#[test]
fn negative_control_a_belief_a_late_reply_flips_outlives_the_lock() {
    // Items 1-3 of issue 27: a partition, a pause, a fork.
    let found = explore(Rule::ReplyFlips, 1000, 300, 3);
    assert!(found
        .iter()
        .any(|(run, ..)| run.pause.is_none() && run.fork_at.is_none()));
    assert!(found.iter().any(|(run, ..)| run.pause.is_some()));
    assert!(found.iter().any(|(run, ..)| run.fork_at.is_some()));
}

/// An explicit `renew(ttl)` (`Locking#renew`, `Semaphore#renew`) of a lock
/// believed until `valid_until` (µs), sent at `sent` (ms), whose request
/// runs `request` ms later and whose reply takes `reply` ms more (past
/// `timeout`, the call raises though the command ran), while another thread
/// of the holder reads `have_lock?` every millisecond. `cap`: the product's
/// `belief::renewal_sent` at the send; without it, the belief before the
/// call stands until the reply. Returns the first moment believed while
/// Redis no longer holds the lock.
fn explicit_renewal(
    cap: bool,
    held_ms: u64,
    ttl: u64,
    timeout: u64,
    request: u64,
    reply: u64,
) -> Option<u64> {
    let server = |ttl: u64| ttl * 100 / 101; // the server's clock fast by the drift bound
    let mut expires = server(held_ms);
    let mut valid_until = belief::valid_until(0, held_ms);
    let sent = held_ms / 4;
    if cap {
        valid_until = belief::renewal_sent(valid_until, sent * MS, ttl);
    }
    let ran = sent + request;
    let back = (request + reply).min(timeout) + sent;
    for t in 0..2 * held_ms {
        if t == ran && ran < expires {
            expires = ran + server(ttl);
        }
        if t == back && request + reply <= timeout {
            // Confirmed: believed from the send (Locking#renew); refused: not at all.
            let held = ran < server(held_ms);
            valid_until = if held {
                belief::valid_until(sent * MS, ttl)
            } else {
                0
            };
        }
        if belief::holds(valid_until, t * MS) && t >= expires {
            return Some(t);
        }
    }
    None
}

fn explicit_renewals(cap: bool) -> Vec<(u64, u64, u64, u64)> {
    let (held, timeout) = (2000, 600);
    let mut found = Vec::new();
    for ttl in [50, 300, 1000, 3000] {
        for request in [0, 1, timeout / 2, timeout] {
            for reply in [0, timeout / 2, timeout, timeout + 1] {
                if let Some(at) = explicit_renewal(cap, held, ttl, timeout, request, reply) {
                    found.push((ttl, request, reply, at));
                }
            }
        }
    }
    found
}

#[test]
fn an_explicit_renewal_that_shortens_the_lock_is_believed_no_longer_than_it_asks() {
    let found = explicit_renewals(true);
    assert!(found.is_empty(), "{found:?}");
    // Negative control: the belief before the call stood while the renewal flew (the lock's
    // renew before this rule), and after a timeout that hid whether it ran.
    let found = explicit_renewals(false);
    assert!(
        found
            .iter()
            .any(|&(ttl, _, reply, _)| ttl == 50 && reply <= 300),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|&(_, request, reply, _)| request + reply > 600),
        "{found:?}"
    );
}

/// How long one renewal in phase 3 takes with the source hung (answering
/// never: the read waits out `timeout`) and the destination answering in
/// `prompt` ms, as `protocol::Renew` sends it for these servers.
fn renewal_ms(servers: Servers, phase: Phase, prompt: u64, timeout: u64) -> u64 {
    let hung = match phase {
        Phase::Destination | Phase::Drain => Target::Source,
        Phase::Source | Phase::Dual => Target::Destination,
    };
    let mut renew = Renew::new(phase, b"me", 1000, servers);
    let mut replies = Vec::new();
    let mut took = 0;
    loop {
        match renew.step(replies) {
            Step::Done(_) => return took,
            Step::Send(batch) => {
                let waits = batch.iter().any(|(target, _)| *target == hung);
                took += if waits { timeout } else { prompt };
                replies = batch
                    .iter()
                    .map(|(target, _)| {
                        if *target == hung {
                            Err(Error::Internal("read timed out".into()))
                        } else {
                            Ok(Reply::Flag(true))
                        }
                    })
                    .collect();
            }
        }
    }
}

/// Whether a lock renewed at the product's interval survives renewals that
/// each take `took` ms, for 20 renewals.
fn survives(ttl: u64, timeout: u64, took: u64) -> bool {
    let interval = belief::renew_interval_ms(ttl, timeout);
    let mut valid_until = belief::valid_until(0, ttl);
    let mut sent = interval;
    for _ in 0..20 {
        let back = sent + took;
        match belief::after_renewal(valid_until, sent * MS, back * MS, ttl) {
            Some(until) => valid_until = until,
            None => return false,
        }
        sent = (sent + interval).max(back);
    }
    true
}

#[test]
fn a_hung_server_the_phase_does_not_use_never_loses_a_lock() {
    for phase in [Phase::Source, Phase::Destination] {
        let used = Servers::BOTH.used_by(phase);
        // TTL 1 s, timeout 0.6 s: a renewal that waited out the hung server would come back too late.
        let took = renewal_ms(used, phase, 2, 600);
        assert!(survives(1000, 600, took), "{phase:?}: {took} ms a renewal");
        // Negative control: the servers the renewer asked before issue 27 (item 4).
        let took = renewal_ms(Servers::BOTH, phase, 2, 600);
        assert!(
            !survives(1000, 600, took),
            "{phase:?}: the control found nothing"
        );
    }
}

/// Whether a command the heartbeat guard lets through lands while the
/// heartbeat that covers it lives, with a phase cache to spare (the time
/// the operator needs to act), for every schedule: the heartbeat written
/// anywhere in its read's round trip, the server's clock fast by the drift
/// bound, the command held by the network for up to `timeout`.
fn heartbeat_covers(
    heartbeat_ttl: impl Fn(u64, u64) -> u64,
    lapse: impl Fn(u64, u64, u64) -> u64,
) -> Vec<(u64, u64)> {
    let mut found = Vec::new();
    for cache in [50, 1000, 5000] {
        for timeout in [100, 1000, 12_500, 20_000] {
            let ttl = heartbeat_ttl(cache, timeout);
            let lapse = lapse(ttl, cache, timeout);
            let reply_at = timeout; // the heartbeat's read came back then
            for written_at in [0, timeout / 2, timeout] {
                let expires = written_at + ttl * 100 / 101;
                // The last send the guard allows, held by the network.
                for held in [0, timeout / 2, timeout] {
                    let lands = reply_at + lapse.saturating_sub(1) + held;
                    if lands + cache > expires {
                        found.push((cache, timeout));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn no_command_outlives_its_process_heartbeat() {
    let found = heartbeat_covers(belief::heartbeat_ttl_ms, belief::heartbeat_lapse_ms);
    assert!(found.is_empty(), "{found:?}");
    // Negative control (item 5): the heartbeat lived max(10 s, 3 x cache)
    // and the guard allowed sends until its age reached that less a cache.
    let found = heartbeat_covers(
        |cache, _| (cache * 3).max(10_000),
        |ttl, cache, _| ttl - cache,
    );
    assert!(found.contains(&(1000, 12_500)), "{found:?}");
}

/// A backfill keeps its lease (TTL `lease`) with a command sent at 0, then
/// sends the pipelines of one batch, every 7 ms for 50 ms, each held by the
/// network for up to `timeout`; it may be stopped at `stop` for `stopped`
/// ms in the middle. Returns whether a write of its may land after the
/// lease expired (when the fleet may have moved into phase 2).
fn copies_past_the_lease(lease: u64, timeout: u64, stop: u64, stopped: u64, fenced: bool) -> bool {
    let valid_until = belief::valid_until(0, lease);
    // The lease on the server: from when its keep ran (at once here; later only helps).
    let expires = lease * 100 / 101;
    let mut clock = 0;
    for pipeline in (0..50).step_by(7) {
        if pipeline == stop {
            clock += stopped;
        }
        let t = pipeline + clock;
        if fenced && !belief::may_send(valid_until, t * MS, timeout * MS) {
            return false; // the batch stops with an error
        }
        if t + timeout >= expires {
            return true;
        }
    }
    false
}

#[test]
fn a_backfill_stopped_past_its_lease_copies_nothing_more() {
    for stopped in [0, 500, 1790, 2000, 40_000] {
        for stop in [0, 14, 35] {
            assert!(
                !copies_past_the_lease(2000, 200, stop, stopped, true),
                "{stop} {stopped}"
            );
        }
    }
    // Negative control (item 9): the batch went on after the stop, unfenced.
    assert!(copies_past_the_lease(2000, 200, 14, 40_000, false));
    assert!(!copies_past_the_lease(2000, 200, 14, 0, false));
}
