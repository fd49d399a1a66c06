//! Exhaustive interleavings of the lock protocol over the in-memory model:
//! two and three clients, every pair of adjacent phases (and each phase with
//! itself), acquire / renew / release, a concurrent backfill and key expiry.

use locking_core::protocol::model::{explore, Action, ClientSpec, Scenario};
use locking_core::protocol::Target;
use locking_core::Phase;

/// Every client shape over two phases: acquire in one, optionally renew in
/// either, release in either (a job enqueued in one phase, run in the next).
fn shapes(p: Phase, q: Phase) -> Vec<Vec<Action>> {
    let mut shapes = Vec::new();
    for acquire in [p, q] {
        for release in [p, q] {
            shapes.push(vec![Action::Acquire(acquire), Action::Release(release)]);
            for renew in [p, q] {
                shapes.push(vec![
                    Action::Acquire(acquire),
                    Action::Renew(renew),
                    Action::Release(release),
                ]);
            }
        }
    }
    shapes.sort_by_key(|s| format!("{s:?}"));
    shapes.dedup();
    shapes
}

fn check(scenario: &Scenario) -> usize {
    match explore(scenario) {
        Ok(stats) => stats.states,
        Err(counterexample) => panic!("{scenario:?}\n{counterexample}"),
    }
}

/// Checks many scenarios on every core; returns the states explored.
fn check_all(scenarios: Vec<Scenario>) -> usize {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = scenarios.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = scenarios
            .chunks(chunk)
            .map(|chunk| scope.spawn(move || chunk.iter().map(check).sum::<usize>()))
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .sum()
    })
}

#[test]
fn two_clients_in_every_adjacent_pair_with_backfill_and_expiry() {
    let mut scenarios = Vec::new();
    for (p, q) in Phase::LIVE_PAIRS {
        // Backfill runs in phase 1 (and while phase 0 processes remain).
        let backfills: &[bool] = if p == Phase::Dual || q == Phase::Dual {
            &[false, true]
        } else {
            &[false]
        };
        for a in shapes(p, q) {
            for b in shapes(p, q) {
                for &backfill in backfills {
                    let mut scenario =
                        Scenario::new(vec![ClientSpec::new(&a), ClientSpec::new(&b)]);
                    scenario.backfill = backfill;
                    scenario.expiries = 2;
                    scenarios.push(scenario);
                }
            }
        }
    }
    let count = scenarios.len();
    let states = check_all(scenarios);
    println!("two clients: {count} scenarios, {states} states, no violation");
    assert!(count > 500);
}

#[test]
fn three_clients_in_every_adjacent_pair() {
    let mut scenarios = Vec::new();
    for (p, q) in Phase::LIVE_PAIRS {
        let simple = [
            vec![Action::Acquire(p), Action::Release(q)],
            vec![Action::Acquire(q), Action::Release(p)],
            vec![Action::Acquire(p), Action::Renew(q), Action::Release(p)],
        ];
        for a in &simple {
            for b in &simple {
                for c in &simple {
                    let mut scenario = Scenario::new(vec![
                        ClientSpec::new(a),
                        ClientSpec::new(b),
                        ClientSpec::new(c),
                    ]);
                    scenario.backfill = p == Phase::Dual || q == Phase::Dual;
                    scenario.expiries = 1;
                    scenarios.push(scenario);
                }
            }
        }
    }
    let count = scenarios.len();
    let states = check_all(scenarios);
    println!("three clients: {count} scenarios, {states} states, no violation");
}

#[test]
fn phase_1_contenders_never_all_give_up() {
    for (p, q) in [
        (Phase::Dual, Phase::Dual),
        (Phase::Source, Phase::Dual),
        (Phase::Dual, Phase::Drain),
    ] {
        for phases in [[p, p, q], [p, q, q], [q, p, p]] {
            let clients = phases
                .iter()
                .map(|phase| ClientSpec::new(&[Action::Acquire(*phase)]))
                .collect();
            let mut scenario = Scenario::new(clients);
            scenario.require_a_winner = true;
            scenario.expiries = 0;
            check(&scenario);
        }
    }
}

/// A lock taken in phase 0 lives on the source only. Behind the gate (backfill
/// copies it, or it expires) phase 2 is safe; without the gate it is not.
#[test]
fn the_gate_protects_phase_0_leftovers() {
    let leftover = ClientSpec::already_holding(&[Action::Release(Phase::Dual)]);
    let clients = vec![
        leftover,
        ClientSpec::new(&[Action::Acquire(Phase::Drain), Action::Release(Phase::Drain)]),
        ClientSpec::new(&[Action::Acquire(Phase::Dual), Action::Release(Phase::Drain)]),
    ];
    let mut scenario = Scenario::new(clients);
    scenario.initial = vec![(Target::Source, 0)];
    scenario.backfill = true;
    scenario.expiries = 1;
    let states = check(&scenario);
    println!("with the gate: {states} states, no violation");

    scenario.gate = false;
    let counterexample = explore(&scenario).expect_err("without the gate phase 2 must break");
    println!("without the gate:\n{counterexample}");
    assert!(counterexample.violation.contains("two holders"));
}

/// The original three-step plan: phase 1 writes the source only, phase 2 the
/// destination only. Run side by side in a rolling deploy, both jobs run.
#[test]
fn the_original_plan_has_two_holders_and_the_explorer_finds_them() {
    let scenario = Scenario::new(vec![
        ClientSpec::new(&[
            Action::NaiveAcquire(Target::Source),
            Action::NaiveRelease(Target::Source),
        ]),
        ClientSpec::new(&[
            Action::NaiveAcquire(Target::Destination),
            Action::NaiveRelease(Target::Destination),
        ]),
    ]);
    let counterexample = explore(&scenario).expect_err("the naive plan must be caught");
    println!("the original plan:\n{counterexample}");
    assert!(counterexample.violation.contains("two holders"));
    assert!(counterexample.schedule.len() >= 4);
}

/// Why phase-1 release goes source first: the other order lets a racing
/// backfill copy the lock back onto the destination after it was deleted there.
#[test]
fn releasing_destination_first_leaves_an_orphan_that_the_explorer_finds() {
    let mut scenario = Scenario::new(vec![ClientSpec::new(&[
        Action::Acquire(Phase::Source),
        Action::NaiveRelease(Target::Destination),
        Action::NaiveRelease(Target::Source),
    ])]);
    scenario.backfill = true;
    scenario.expiries = 0;
    let counterexample = explore(&scenario).expect_err("the reversed order must orphan");
    println!("destination-first release:\n{counterexample}");
    assert!(counterexample.violation.contains("orphan"));

    // The protocol's order, same race: no orphan.
    let mut scenario = Scenario::new(vec![ClientSpec::new(&[
        Action::Acquire(Phase::Source),
        Action::Release(Phase::Dual),
    ])]);
    scenario.backfill = true;
    scenario.expiries = 0;
    check(&scenario);
}

/// Copies that end at different times (an adversary's finding, with no
/// fault): a second object with the token acquires for longer in phase 0,
/// which resets only the source copy. A gate that asked only "the same token
/// on both?" opened, the destination copy ran out, and phase 2 let a second
/// holder in. The gate compares what each copy has left
/// (`protocol::copy_one_sided`); `bin/mutants --fixed` plants the old rule.
#[test]
fn the_gate_compares_what_each_copy_has_left() {
    let clients = vec![
        ClientSpec::new(&[
            Action::AcquireFor(Phase::Dual, 10),
            Action::AcquireFor(Phase::Source, 20),
        ]),
        ClientSpec::new(&[Action::Acquire(Phase::Drain)]),
    ];
    let mut scenario = Scenario::new(clients);
    scenario.expiries = 3;
    let states = check(&scenario);
    println!("copies ending apart, with the gate: {states} states, no violation");
}
