//! The holes adversarial testing found on real processes, each as an
//! explorer scenario: the scenario fails on the old behaviour (kept as a
//! named negative control) and holds on the protocol as it is now.
//!
//! What these scenarios model, and what they assume (DESIGN: the explorer):
//! - a fleet of processes, each caching the control phase; operations start
//!   in the cached phase and may still be running when the cache, or the
//!   control phase, moves on (dynamic phases);
//! - an operator who moves the control phase one step at a time whenever the
//!   checks of `locking phase set/advance` pass at that instant;
//! - a backfill that reads the control phase when it starts;
//! - the control key may vanish (a destination restarted without its data),
//!   or be out of reach for a while (its master down) and come back as it
//!   was (a promoted replica), while heartbeats expire and processes act on
//!   their cached phase only until their heartbeat lapses.

use locking_core::protocol::model::{
    explore, Action, ClientSpec, DynamicOp, Fleet, Heartbeat, HeartbeatTiming, MissingControl,
    Scenario, StaleCache,
};
use locking_core::protocol::CopyTtlRule;
use locking_core::Phase;
use std::time::Instant;

fn holds(name: &str, scenario: &Scenario) {
    let started = Instant::now();
    match explore(scenario) {
        Ok(stats) => println!(
            "{name}: {} states, no violation ({:.2}s)",
            stats.states,
            started.elapsed().as_secs_f64()
        ),
        Err(counterexample) => panic!("{name}: {scenario:?}\n{counterexample}"),
    }
}

fn breaks(name: &str, scenario: &Scenario, violation: &str) {
    let counterexample =
        explore(scenario).expect_err("the negative control must find the hole it stands for");
    println!("{name} (negative control):\n{counterexample}");
    assert!(
        counterexample.violation.contains(violation),
        "{}",
        counterexample.violation
    );
}

const ACQUIRE: Action = Action::Dynamic(DynamicOp::Acquire);
const RELEASE: Action = Action::Dynamic(DynamicOp::Release);

/// Item 1: an operation that began on the cached phase is still in flight
/// when another thread of its process reads the next phase. A heartbeat of
/// the latest read lets the operator move on past it.
#[test]
fn operations_in_flight_across_a_phase_change() {
    let clients = || {
        vec![
            // Two threads of process 0, one of process 1.
            ClientSpec::new(&[ACQUIRE, RELEASE]).in_process(0),
            ClientSpec::new(&[ACQUIRE, RELEASE]).in_process(0),
            ClientSpec::new(&[ACQUIRE, RELEASE]).in_process(1),
        ]
    };
    for moves in [
        &[Phase::Dual, Phase::Drain][..],
        &[Phase::Drain, Phase::Destination][..],
    ] {
        let start = if moves[0] == Phase::Dual {
            Phase::Source
        } else {
            Phase::Dual
        };
        let fleet = Fleet::new(2, start, moves);
        let mut scenario = Scenario::with_fleet(clients(), fleet.clone());
        scenario.expiries = 1;
        holds(&format!("in flight, moves {moves:?}"), &scenario);
    }

    let mut fleet = Fleet::new(2, Phase::Source, &[Phase::Dual, Phase::Drain]);
    fleet.heartbeat = Heartbeat::LatestRead;
    let mut scenario = Scenario::with_fleet(clients(), fleet);
    scenario.expiries = 0;
    breaks("heartbeat of the latest read", &scenario, "two holders");
}

/// Item 2: rolling back 2 -> 1 -> 0 while a lock taken in phase 2 (on the
/// destination only) is held: phase 0 looks at the source only.
#[test]
fn rollbacks_through_the_reverse_gate() {
    let clients = || {
        vec![
            ClientSpec::new(&[ACQUIRE, RELEASE]).in_process(0),
            ClientSpec::new(&[ACQUIRE, RELEASE]).in_process(1),
        ]
    };
    let mut fleet = Fleet::new(2, Phase::Drain, &[Phase::Dual, Phase::Source]);
    fleet.refreshes = 3; // to 1, caught up at 1, to 0
    let mut scenario = Scenario::with_fleet(clients(), fleet.clone());
    scenario.expiries = 1;
    holds("rollback 2 -> 1 -> 0", &scenario);

    fleet.reverse_gate = false;
    let mut scenario = Scenario::with_fleet(clients(), fleet);
    scenario.expiries = 0;
    breaks(
        "rollback without the reverse gate",
        &scenario,
        "two holders",
    );
}

/// Item 4: a backfill that does not know the fleet is in phase 2 races a
/// phase-2 release (both servers at once) and copies the lock back.
#[test]
fn backfill_never_runs_beside_phase_2() {
    let clients = || {
        vec![ClientSpec::new(&[
            Action::Acquire(Phase::Dual),
            Action::Release(Phase::Drain),
        ])]
    };
    let mut scenario = Scenario::new(clients());
    scenario.backfill = true;
    scenario.expiries = 0;
    holds("backfill confined to phases 0-1", &scenario);

    scenario.backfill_after_phase_2 = true;
    breaks("backfill in static phase 2", &scenario, "orphan");

    // Dynamic phases: the move into phase 2 waits for a running backfill.
    let dynamic = || vec![ClientSpec::new(&[ACQUIRE, RELEASE, ACQUIRE, RELEASE]).in_process(0)];
    let mut fleet = Fleet::new(1, Phase::Dual, &[Phase::Drain]);
    fleet.refreshes = 1;
    let mut scenario = Scenario::with_fleet(dynamic(), fleet.clone());
    scenario.backfill = true;
    scenario.expiries = 0;
    holds("backfill lease against advance", &scenario);

    fleet.backfill_lease = false;
    let mut scenario = Scenario::with_fleet(dynamic(), fleet);
    scenario.backfill = true;
    scenario.expiries = 0;
    breaks("advance while a backfill runs", &scenario, "orphan");
}

/// Item 5: the holder renews to a shorter TTL while a backfill is copying.
#[test]
fn a_shortening_renew_racing_a_backfill() {
    for (acquire, renew) in [
        (Phase::Source, Phase::Source),
        (Phase::Source, Phase::Dual),
        (Phase::Dual, Phase::Dual),
        (Phase::Dual, Phase::Source),
    ] {
        let mut scenario = Scenario::new(vec![ClientSpec::new(&[
            Action::Acquire(acquire),
            Action::RenewTo(renew, 2),
        ])]);
        scenario.backfill = true;
        scenario.expiries = 2;
        holds(
            &format!("shortening renew in {renew} of a lock from {acquire}"),
            &scenario,
        );
    }

    let mut scenario = Scenario::new(vec![ClientSpec::new(&[
        Action::Acquire(Phase::Source),
        Action::RenewTo(Phase::Dual, 2),
    ])]);
    scenario.backfill = true;
    scenario.expiries = 2;
    scenario.backfill_rule = CopyTtlRule::LongestRead;
    breaks(
        "the copy raised to the first read's TTL",
        &scenario,
        "orphan",
    );
}

/// Item 6: the destination restarts without its data, and the control key
/// with it, while the fleet is in phase 3.
#[test]
fn a_lost_control_key() {
    let clients = || {
        vec![
            ClientSpec::new(&[ACQUIRE, RELEASE]).in_process(0),
            ClientSpec::new(&[ACQUIRE, RELEASE]).in_process(1),
        ]
    };
    let mut fleet = Fleet::new(2, Phase::Destination, &[]);
    fleet.lose_control = true;
    fleet.refreshes = 3;
    let mut scenario = Scenario::with_fleet(clients(), fleet.clone());
    scenario.expiries = 1;
    holds("lost control key: refuse", &scenario);

    fleet.missing_control = MissingControl::ReadsAsSource;
    let mut scenario = Scenario::with_fleet(clients(), fleet);
    scenario.expiries = 0;
    breaks("lost control key read as phase 0", &scenario, "two holders");
}

/// Sibling issue (Redis Cluster): the master that holds the control keys is
/// down for a while, then back with the state it had. No process can read
/// the phase or write its heartbeat meanwhile; each keeps acting in its
/// cached phase only until its heartbeat lapses (`fleet::heartbeat_lapsed`),
/// then fails closed. Heartbeats expire, so once the key is back the
/// operator may move the fleet on without a process that has not reported.
#[test]
fn a_control_key_out_of_reach() {
    let clients = |actions: &[Action]| {
        vec![
            ClientSpec::new(actions).in_process(0),
            ClientSpec::new(actions).in_process(1),
        ]
    };
    let mut fleet = Fleet::new(2, Phase::Source, &[Phase::Dual, Phase::Drain]);
    // A heartbeat lives 3, a cache 1: a process stops acting 2 after its read.
    fleet.timing = Some(HeartbeatTiming { ttl: 3, cache: 1 });
    fleet.control_outage = true;
    let mut scenario = Scenario::with_fleet(clients(&[ACQUIRE, RELEASE]), fleet.clone());
    scenario.expiries = 2;
    holds("control key out of reach, walking 0 -> 2", &scenario);

    for (stale_cache, name) in [
        (StaleCache::KeepForever, "a cached phase kept for ever"),
        (
            StaleCache::LatestReadCovers,
            "an operation revived by a later read of its process",
        ),
    ] {
        fleet.stale_cache = stale_cache;
        let mut scenario = Scenario::with_fleet(clients(&[ACQUIRE]), fleet.clone());
        scenario.expiries = 2;
        breaks(name, &scenario, "two holders");
    }
}

/// The fleet model over the whole walk 0 -> 3 and back, with every
/// protection on: two processes, three threads, a backfill, expiry.
#[test]
fn a_fleet_walking_every_phase_and_back() {
    let walks: [(Phase, &[Phase]); 4] = [
        (Phase::Source, &[Phase::Dual, Phase::Drain]),
        (Phase::Dual, &[Phase::Drain, Phase::Destination]),
        (Phase::Destination, &[Phase::Drain, Phase::Dual]),
        (Phase::Drain, &[Phase::Dual, Phase::Source]),
    ];
    for (start, moves) in walks {
        let clients = vec![
            ClientSpec::new(&[ACQUIRE, Action::Dynamic(DynamicOp::Renew), RELEASE]).in_process(0),
            ClientSpec::new(&[ACQUIRE, RELEASE]).in_process(1),
        ];
        let mut scenario = Scenario::with_fleet(clients, Fleet::new(2, start, moves));
        scenario.backfill = true;
        scenario.expiries = 1;
        holds(&format!("walk from {start} through {moves:?}"), &scenario);
    }
}
