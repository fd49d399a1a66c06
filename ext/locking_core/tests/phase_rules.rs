//! The product's phase rules, each in the smallest fleet scenario that needs
//! it: the explorer's operator and processes decide with the product's own
//! functions (`fleet::check_transition` and the gates in it,
//! `fleet::phases_in_use`, `fleet::operation_lapsed`,
//! `Phase::check_backfill`), so a bug planted in one of them must make its
//! scenario fail. `bin/mutants --fixed` (run by bin/test) plants such bugs,
//! one at a time, and runs these tests: each is quick on purpose.

use locking_core::protocol::model::{
    explore, Action, ClientSpec, DynamicOp, Fleet, HeartbeatTiming, Scenario,
};
use locking_core::Phase;

fn holds(name: &str, scenario: &Scenario) {
    if let Err(counterexample) = explore(scenario) {
        panic!("{name}:\n{counterexample}");
    }
}

const ACQUIRE: Action = Action::Dynamic(DynamicOp::Acquire);

/// Two processes, one client each, that only acquire (a holder keeps its lock).
fn two_acquirers() -> Vec<ClientSpec> {
    vec![
        ClientSpec::new(&[ACQUIRE]).in_process(0),
        ClientSpec::new(&[ACQUIRE]).in_process(1),
    ]
}

/// The move rule's in-flight half and the reverse gate: a rollback 2 -> 1 -> 0
/// while a phase-2 acquire is in flight, or held on the destination only.
#[test]
fn a_rollback_waits_for_operations_in_flight_and_the_reverse_gate() {
    let mut fleet = Fleet::new(2, Phase::Drain, &[Phase::Dual, Phase::Source]);
    fleet.refreshes = 3;
    let mut scenario = Scenario::with_fleet(two_acquirers(), fleet);
    scenario.expiries = 0;
    holds("rollback 2 -> 1 -> 0", &scenario);
}

/// The gate: a lock taken in phase 0 lives on the source only; phase 2 must
/// not start while it does.
#[test]
fn phase_2_waits_for_the_gate() {
    let mut fleet = Fleet::new(2, Phase::Source, &[Phase::Dual, Phase::Drain]);
    fleet.refreshes = 3;
    let mut scenario = Scenario::with_fleet(two_acquirers(), fleet);
    scenario.expiries = 0;
    holds("advance 0 -> 1 -> 2", &scenario);
}

/// The heartbeat's span: an acquire begun in phase 0 is still in flight
/// while its process (another thread) reads phase 1, twice.
#[test]
fn a_heartbeat_reports_the_operations_in_flight() {
    let mut fleet = Fleet::new(2, Phase::Source, &[Phase::Dual, Phase::Drain]);
    fleet.refreshes = 3;
    let mut scenario = Scenario::with_fleet(two_acquirers(), fleet);
    scenario.expiries = 0;
    holds("an acquire in flight across two reads", &scenario);
}

/// The lapse: heartbeats expire, the operator moves on without a process
/// that has not read, and that process must not act in its old phase.
#[test]
fn a_process_stops_acting_when_its_heartbeat_lapses() {
    let mut fleet = Fleet::new(2, Phase::Source, &[Phase::Dual, Phase::Drain]);
    fleet.timing = Some(HeartbeatTiming { ttl: 3, cache: 1 });
    let mut scenario = Scenario::with_fleet(two_acquirers(), fleet);
    scenario.expiries = 2;
    holds("heartbeats that expire", &scenario);
}

/// The backfill's phase rule: it never runs beside phase 2.
#[test]
fn backfill_runs_in_phases_0_and_1_only() {
    let mut scenario = Scenario::new(vec![ClientSpec::new(&[
        Action::Acquire(Phase::Dual),
        Action::Release(Phase::Drain),
    ])]);
    scenario.backfill = true;
    scenario.expiries = 0;
    holds("static phases", &scenario);

    let clients =
        vec![ClientSpec::new(&[ACQUIRE, Action::Dynamic(DynamicOp::Release)]).in_process(0)];
    let mut fleet = Fleet::new(1, Phase::Dual, &[Phase::Drain]);
    fleet.refreshes = 1;
    let mut scenario = Scenario::with_fleet(clients, fleet);
    scenario.backfill = true;
    scenario.expiries = 0;
    holds("dynamic phases", &scenario);
}
