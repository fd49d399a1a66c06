//! Semaphores (DESIGN "Semaphores"): the product's semaphore operations over
//! the model servers, in every interleaving of clients in each pair of
//! adjacent phases, forward (with the gate) and in a rollback (with the
//! reverse gate). Invariant: never more believed holders than the limit.

use locking_core::protocol::model::{
    explore_semaphore, MemoryStore, ModelStore, SemaphoreAction, SemaphoreClient, SemaphoreScenario,
};
use locking_core::protocol::store::run;
use locking_core::protocol::{
    Operation, PlaceCopyRule, SemaphoreAcquire, SemaphoreHolders, SemaphoreRelease, SemaphoreRenew,
    SemaphoreRules,
};
use locking_core::{Error, Phase};

use SemaphoreAction::{Acquire, Backfill, Release, Renew};

/// What one client does, TTLs in clock units (the clock jumps to expiries).
const SCRIPTS: [&[SemaphoreAction]; 6] = [
    &[Acquire { ttl: 2 }],
    &[Acquire { ttl: 2 }, Renew { ttl: 3 }],
    &[Acquire { ttl: 2 }, Release, Acquire { ttl: 2 }],
    // A renewal that may come after the place expired.
    &[Acquire { ttl: 1 }, Renew { ttl: 2 }],
    // A renewal that shortens the place, then a release.
    &[Acquire { ttl: 2 }, Renew { ttl: 1 }, Release],
    // The token acquiring again (another object): "already mine" resets the
    // place on the servers that phase asks, only there.
    &[Acquire { ttl: 2 }, Acquire { ttl: 3 }],
];

/// A client's phases: all in p, all in q, or its first action in p and the
/// rest in q (a process that moved on between its operations). (1, 2) also
/// has a holder from phase 0 carried into phase 1 (phase-2 actions wait for
/// the fleet to leave phase 0, and the gate).
///
/// A rollback of (p, q) runs q then p (a process that moved back), and for
/// (0, 1) a holder from phase 2 carried into phase 1 and into phase 0
/// (phase-0 actions wait for the fleet to leave phase 2, and the reverse gate).
///
/// Walks that come back: in (1, 2) forward, a holder from phase 1 that
/// renewed in phase 0 after a rollback (the source copy only); rolling back
/// (0, 1), one that renewed in phase 3 (the destination copy only) or
/// acquired again in phase 2. The copies then end at different times, which
/// only a gate that compares what each has left sees.
fn patterns(p: Phase, q: Phase, rollback: bool) -> Vec<Vec<Phase>> {
    if p == q {
        return vec![vec![p; 3]];
    }
    let (s, dual, drain, d) = (Phase::Source, Phase::Dual, Phase::Drain, Phase::Destination);
    if rollback {
        let mut patterns = vec![vec![p; 3], vec![q; 3], vec![q, p, p]];
        if (p, q) == (s, dual) {
            patterns.push(vec![drain, dual, dual]);
            patterns.push(vec![drain, s, s]);
            patterns.push(vec![dual, d, dual]);
            patterns.push(vec![dual, drain, dual]);
        }
        return patterns;
    }
    let mut patterns = vec![vec![p; 3], vec![q; 3], vec![p, q, q]];
    if (p, q) == (dual, drain) {
        patterns.push(vec![s, dual, dual]);
        patterns.push(vec![dual, s, dual]);
    }
    patterns
}

/// The scripts beside the backfill (whose copies race renewals and
/// re-acquires): the full set beside a third actor takes minutes per pair.
/// `SEMAPHORE_BACKFILL_ALL=1` explores it with every script.
const BACKFILL_SCRIPTS: [&[SemaphoreAction]; 3] = [
    &[Acquire { ttl: 2 }],
    &[Acquire { ttl: 2 }, Renew { ttl: 3 }],
    &[Acquire { ttl: 2 }, Acquire { ttl: 3 }],
];

/// Every multiset of `count` clients (clients are symmetric: order is not explored).
fn clients(
    scripts: &[&[SemaphoreAction]],
    p: Phase,
    q: Phase,
    count: usize,
    rollback: bool,
) -> Vec<Vec<SemaphoreClient>> {
    let mut kinds = Vec::new();
    for script in scripts {
        for pattern in patterns(p, q, rollback) {
            kinds.push(SemaphoreClient {
                actions: script
                    .iter()
                    .zip(&pattern)
                    .map(|(action, phase)| (*phase, *action))
                    .collect(),
            });
        }
    }
    let mut out = Vec::new();
    let mut pick = vec![0usize; count];
    loop {
        out.push(pick.iter().map(|kind| kinds[*kind].clone()).collect());
        // The next non-decreasing index sequence.
        let Some(position) = (0..count).rev().find(|i| pick[*i] + 1 < kinds.len()) else {
            return out;
        };
        let next = pick[position] + 1;
        for slot in &mut pick[position..] {
            *slot = next;
        }
    }
}

/// Every scenario of every pair, forward or in a rollback, under the
/// product's rules; with `backfill`, a backfiller copies the semaphore twice
/// (in phases 1 and 2, or phase 1 before a rollback) beside the clients.
fn every_pair(limits: &[u64], rollback: bool, backfill: bool) {
    let mut total_states = 0;
    let mut scenarios = 0;
    for (p, q) in Phase::LIVE_PAIRS {
        // The backfill runs in phases 0 and 1 (`Phase::check_backfill`); its
        // copies are explored into phase 2 too (a static deploy may overlap).
        if backfill && p > Phase::Dual {
            continue;
        }
        for &limit in limits {
            let mut most = 0;
            let scripts: &[&[SemaphoreAction]] =
                if backfill && std::env::var("SEMAPHORE_BACKFILL_ALL").is_err() {
                    &BACKFILL_SCRIPTS
                } else {
                    &SCRIPTS
                };
            for mut clients in clients(scripts, p, q, limit as usize + 1, rollback) {
                if backfill {
                    clients.push(client(&[(Phase::Dual, Backfill)]));
                }
                let mut scenario = SemaphoreScenario::new(limit, clients);
                scenario.rollback = rollback;
                match explore_semaphore(&scenario) {
                    Ok(stats) => {
                        total_states += stats.states;
                        most = most.max(stats.most_holders);
                    }
                    Err(counterexample) => panic!(
                        "phases ({}, {}), limit {limit}:\n{counterexample}",
                        p.index(),
                        q.index()
                    ),
                }
                scenarios += 1;
            }
            // Not vacuous: the limit is reached.
            assert_eq!(
                most,
                limit as usize,
                "phases ({}, {}), limit {limit}",
                p.index(),
                q.index()
            );
        }
    }
    eprintln!(
        "{}{}: {scenarios} semaphore scenarios, {total_states} states",
        if rollback { "rollback" } else { "forward" },
        if backfill { ", with the backfill" } else { "" }
    );
}

/// The product's rules, limit 1 (two clients): limit 2 with three clients
/// over two servers runs out of memory (DESIGN).
#[test]
fn never_more_holders_than_the_limit_in_each_adjacent_pair() {
    every_pair(&[1], false, false);
}

#[test]
fn never_more_holders_than_the_limit_in_each_adjacent_pair_rolling_back() {
    every_pair(&[1], true, false);
}

#[test]
fn never_more_holders_than_the_limit_with_the_backfill_copying_places() {
    every_pair(&[1], false, true);
}

#[test]
fn never_more_holders_than_the_limit_with_the_backfill_copying_places_rolling_back() {
    every_pair(&[1], true, true);
}

#[test]
fn the_explorer_finds_a_backfill_that_sets_what_it_read_negative_control() {
    // A holder acquired in phase 1; the backfill reads its source place, the
    // holder renews it longer on both servers, then the copy lands: set to
    // what was read, it shortens the destination's place under a holder that
    // believes longer, and a phase-2 acquire takes the place.
    let clients = vec![
        client(&[
            (Phase::Dual, Acquire { ttl: 2 }),
            (Phase::Dual, Renew { ttl: 3 }),
        ]),
        client(&[(Phase::Drain, Acquire { ttl: 2 })]),
        client(&[(Phase::Dual, Backfill)]),
    ];
    let mut scenario = SemaphoreScenario::new(1, clients);
    scenario.copy_rule = PlaceCopyRule::Set;
    let counterexample = explore_semaphore(&scenario).expect_err("two holders of one place");
    assert!(counterexample.starts_with("2 holders"), "{counterexample}");
    scenario.copy_rule = PlaceCopyRule::Raise;
    if let Err(counterexample) = explore_semaphore(&scenario) {
        panic!("{counterexample}");
    }
}

#[test]
fn the_explorer_finds_a_backfill_that_adds_places_beside_unseen_holders_negative_control() {
    // Found by the explorer while the backfill was built: a phase-1 holder's
    // destination place expires before its renewal reaches it, a phase-2
    // acquire takes the one place there, the copy adds the holder's place
    // back beside it, and the renewal re-taking its place finds it "already
    // mine": two holders of one.
    let clients = vec![
        client(&[
            (Phase::Dual, Acquire { ttl: 2 }),
            (Phase::Dual, Renew { ttl: 3 }),
        ]),
        client(&[(Phase::Drain, Acquire { ttl: 2 })]),
        client(&[(Phase::Dual, Backfill)]),
    ];
    let mut scenario = SemaphoreScenario::new(1, clients);
    scenario.copy_rule = PlaceCopyRule::Unchecked;
    let counterexample = explore_semaphore(&scenario).expect_err("two holders of one place");
    assert!(counterexample.starts_with("2 holders"), "{counterexample}");
    scenario.copy_rule = PlaceCopyRule::Raise;
    if let Err(counterexample) = explore_semaphore(&scenario) {
        panic!("{counterexample}");
    }
}

fn client(actions: &[(Phase, SemaphoreAction)]) -> SemaphoreClient {
    SemaphoreClient {
        actions: actions.to_vec(),
    }
}

#[test]
fn the_explorer_finds_phase_1_counting_on_one_server_only_negative_control() {
    // A phase-0 holder has its place on the source only; a phase-1 acquire
    // that counts the destination only does not see it.
    let clients = vec![
        client(&[(Phase::Source, Acquire { ttl: 2 })]),
        client(&[(Phase::Dual, Acquire { ttl: 2 })]),
    ];
    let mut scenario = SemaphoreScenario::new(1, clients);
    scenario.rules = SemaphoreRules::DualOnDestinationOnly;
    let counterexample = explore_semaphore(&scenario).expect_err("two holders of one place");
    assert!(counterexample.starts_with("2 holders"), "{counterexample}");
    scenario.rules = SemaphoreRules::TwoServers;
    assert!(explore_semaphore(&scenario).is_ok());
}

#[test]
fn the_explorer_finds_a_gate_blind_to_semaphores_negative_control() {
    // A place taken in phase 0 lives on the source only; phase 2 counts the
    // destination only. Only the gate keeps them apart.
    let clients = vec![
        client(&[(Phase::Source, Acquire { ttl: 2 })]),
        client(&[(Phase::Drain, Acquire { ttl: 2 })]),
    ];
    let mut scenario = SemaphoreScenario::new(1, clients);
    scenario.gate = false;
    let counterexample = explore_semaphore(&scenario).expect_err("two holders of one place");
    assert!(counterexample.starts_with("2 holders"), "{counterexample}");
    scenario.gate = true;
    assert!(explore_semaphore(&scenario).is_ok());
}

/// The adversary's walks (DESIGN "Semaphores"): copies that end at
/// different times pass a gate that asks only whether each is live.
#[test]
fn the_gates_compare_what_each_copy_has_left() {
    // Forward: acquired in phase 1 (both copies end at 2), renewed in phase 0
    // after a rollback (the source copy ends at 3), then phase 2.
    let forward = vec![
        client(&[
            (Phase::Dual, Acquire { ttl: 2 }),
            (Phase::Source, Renew { ttl: 3 }),
        ]),
        client(&[(Phase::Drain, Acquire { ttl: 2 })]),
    ];
    // Rolling back: acquired in phase 1, renewed in phase 3 (the destination
    // copy only), or acquired again in phase 2, then phase 0.
    let renewed = client(&[
        (Phase::Dual, Acquire { ttl: 2 }),
        (Phase::Destination, Renew { ttl: 3 }),
    ]);
    let again = client(&[
        (Phase::Dual, Acquire { ttl: 2 }),
        (Phase::Drain, Acquire { ttl: 3 }),
    ]);
    let phase_0 = client(&[(Phase::Source, Acquire { ttl: 2 })]);
    for (clients, rollback) in [
        (forward, false),
        (vec![renewed, phase_0.clone()], true),
        (vec![again, phase_0], true),
    ] {
        let mut scenario = SemaphoreScenario::new(1, clients);
        scenario.rollback = rollback;
        if let Err(counterexample) = explore_semaphore(&scenario) {
            panic!("{counterexample}");
        }
    }
}

#[test]
fn the_explorer_finds_a_reverse_gate_blind_to_semaphores_negative_control() {
    // A place taken in phase 2 lives on the destination only; after a
    // rollback, phase 0 counts the source only. Only the reverse gate keeps
    // them apart.
    let clients = vec![
        client(&[(Phase::Drain, Acquire { ttl: 2 })]),
        client(&[(Phase::Source, Acquire { ttl: 2 })]),
    ];
    let mut scenario = SemaphoreScenario::new(1, clients);
    scenario.rollback = true;
    scenario.gate = false;
    let counterexample = explore_semaphore(&scenario).expect_err("two holders of one place");
    assert!(counterexample.starts_with("2 holders"), "{counterexample}");
    scenario.gate = true;
    assert!(explore_semaphore(&scenario).is_ok());
}

#[test]
fn the_explorer_finds_a_revived_place_negative_control() {
    // Scripts that never drop expired places: the first holder's place
    // expires, the second takes the only place, the first renews its
    // expired place back to life.
    let mut scenario = SemaphoreScenario::new(
        1,
        vec![
            SemaphoreClient {
                actions: vec![
                    (Phase::Source, Acquire { ttl: 1 }),
                    (Phase::Source, Renew { ttl: 2 }),
                ],
            },
            SemaphoreClient {
                actions: vec![(Phase::Source, Acquire { ttl: 2 })],
            },
        ],
    );
    scenario.keeps_expired = true;
    let counterexample = explore_semaphore(&scenario).expect_err("two holders of one place");
    assert!(counterexample.starts_with("2 holders"), "{counterexample}");
    let mut fixed = scenario;
    fixed.keeps_expired = false;
    assert!(explore_semaphore(&fixed).is_ok());
}

fn at_zero(store: &mut MemoryStore) -> ModelStore<'_> {
    ModelStore { store, now: 0 }
}

fn go<O: Operation>(op: O, s: &mut ModelStore, d: &mut ModelStore) -> Result<O::Output, Error> {
    run(op, b"k", Some(s), Some(d))
}

#[test]
fn one_server_operations_on_the_model() {
    for (phase, used) in [(Phase::Source, 0), (Phase::Destination, 1)] {
        let mut stores = [MemoryStore::default(), MemoryStore::default()];
        {
            let [s, d] = &mut stores;
            let (mut s, mut d) = (at_zero(s), at_zero(d));
            for (token, expected) in [(b"a", true), (b"b", true), (b"a", true), (b"c", false)] {
                let got = go(SemaphoreAcquire::new(phase, token, 10, 2), &mut s, &mut d);
                assert_eq!(got, Ok(expected), "{phase} {token:?}");
            }
            assert_eq!(
                go(SemaphoreRenew::new(phase, b"a", 20, 2), &mut s, &mut d),
                Ok(true)
            );
            assert_eq!(
                go(SemaphoreRenew::new(phase, b"c", 20, 2), &mut s, &mut d),
                Ok(false)
            );
            assert_eq!(
                go(SemaphoreRelease::new(phase, b"a"), &mut s, &mut d),
                Ok(true)
            );
            assert_eq!(
                go(SemaphoreRelease::new(phase, b"a"), &mut s, &mut d),
                Ok(false)
            );
            let holders = run(
                SemaphoreHolders::new(phase),
                b"k",
                Some(&mut s),
                Some(&mut d),
            );
            assert_eq!(holders, Ok(1));
        }
        // Only the phase's server holds places.
        assert_eq!(stores[used].places.places.len(), 1, "{phase}");
        assert!(stores[1 - used].places.places.is_empty(), "{phase}");
    }
}

#[test]
fn phases_1_and_2_use_both_servers_as_the_table_says() {
    let (mut s, mut d) = (MemoryStore::default(), MemoryStore::default());
    let mut both = |op: &mut dyn FnMut(&mut ModelStore, &mut ModelStore) -> Result<u64, Error>| {
        op(&mut at_zero(&mut s), &mut at_zero(&mut d))
    };
    // Phase 0 takes the source only; phase 1 takes both; phase 2 the destination only.
    let acquire = |phase, token: &'static [u8]| {
        move |s: &mut ModelStore, d: &mut ModelStore| {
            go(SemaphoreAcquire::new(phase, token, 10, 3), s, d).map(u64::from)
        }
    };
    assert_eq!(both(&mut acquire(Phase::Source, b"zero")), Ok(1));
    assert_eq!(both(&mut acquire(Phase::Dual, b"one")), Ok(1));
    assert_eq!(both(&mut acquire(Phase::Drain, b"two")), Ok(1));
    // Phase 1's renewal of the phase-0 place takes it on the destination, against the limit.
    let renew = |s: &mut ModelStore, d: &mut ModelStore| {
        go(SemaphoreRenew::new(Phase::Dual, b"zero", 10, 3), s, d).map(u64::from)
    };
    assert_eq!(both(&mut { renew }), Ok(1));
    // Holders: the source in phase 1, the destination in phase 2.
    let holders = |phase| {
        move |s: &mut ModelStore, d: &mut ModelStore| {
            run(SemaphoreHolders::new(phase), b"k", Some(s), Some(d))
        }
    };
    assert_eq!(both(&mut holders(Phase::Dual)), Ok(2));
    assert_eq!(both(&mut holders(Phase::Drain)), Ok(3));
    let tokens = |store: &MemoryStore| store.places.places.keys().cloned().collect::<Vec<_>>();
    assert_eq!(tokens(&s), [b"one".to_vec(), b"zero".to_vec()]);
    assert_eq!(
        tokens(&d),
        [b"one".to_vec(), b"two".to_vec(), b"zero".to_vec()]
    );
}
