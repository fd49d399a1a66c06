//! The fleet's rules, as pure functions of what they decide on: what a
//! process's heartbeat reports (`phases_in_use`), how long a process may act
//! on its last phase read (`heartbeat_lapsed`), and when the operator may move
//! the fleet (`check_transition`, with the gate and the reverse gate of
//! `protocol`). No I/O: the client, the CLI and the explorer (`model`) call
//! these same functions, so the proof checks the rules the product runs
//! (DESIGN: what the explorer shares with the product).

use crate::error::{Error, Result};
use crate::protocol;
use crate::protocol::phase::Phase;

/// The lowest and highest phase a process may still act in, as its
/// heartbeat reports them: its cached phase and the phase of every
/// operation it has in flight. (`phase_heartbeat.lua` widens the span by the
/// phase it reads, in the same atomic step.)
pub fn phases_in_use(cached: Phase, in_flight: impl IntoIterator<Item = Phase>) -> (Phase, Phase) {
    in_flight
        .into_iter()
        .fold((cached, cached), |(low, high), phase| {
            (low.min(phase), high.max(phase))
        })
}

/// How long after its last successful phase read a process may still act
/// in the phase it read: its heartbeat's TTL less one phase cache (a margin
/// for the operator to act), less twice the timeout (the heartbeat was
/// written up to a timeout before its reply came in, and a command sent
/// just before the lapse may be held that long before it runs), less the
/// clocks' drift. The product passes its timeout and `belief::drift_ms`
/// (`belief::heartbeat_lapse_ms`); the explorer, whose steps take no time
/// on the wire, passes 0 for both.
pub fn lapse_ms(heartbeat_ttl_ms: u64, cache_ms: u64, timeout_ms: u64, drift_ms: u64) -> u64 {
    heartbeat_ttl_ms
        .saturating_sub(cache_ms)
        .saturating_sub(timeout_ms.saturating_mul(2))
        .saturating_sub(drift_ms)
}

/// Whether a process whose last successful phase read was at `last_read_ms`
/// must stop acting in that phase at `now_ms` (same clock), `lapse_ms` (see
/// `lapse_ms`) after it: its heartbeat may be gone from the fleet soon, and
/// the operator may move on without it. An operation in flight sends
/// nothing more; a new one needs a fresh read (so a process that cannot
/// reach the control key fails closed from here on).
pub fn heartbeat_lapsed(now_ms: u64, last_read_ms: u64, lapse_ms: u64) -> bool {
    now_ms.saturating_sub(last_read_ms) >= lapse_ms
}

/// Whether an operation that began under the phase read at `began_ms` must
/// send nothing more at `now_ms`, the process's latest read being at
/// `latest_read_ms`. A later read (by another thread) keeps covering the
/// operation, its heartbeat counting it in flight, only if it came before the
/// operation's own coverage lapsed: a read after that gap comes too late, as
/// the fleet may have moved two phases on meanwhile without this process.
pub fn operation_lapsed(now_ms: u64, began_ms: u64, latest_read_ms: u64, lapse_ms: u64) -> bool {
    let covered_from = if latest_read_ms.saturating_sub(began_ms) < lapse_ms {
        latest_read_ms.max(began_ms)
    } else {
        began_ms
    };
    heartbeat_lapsed(now_ms, covered_from, lapse_ms)
}

/// A process of the fleet, as its heartbeat reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetMember {
    pub process: String,
    /// The lowest phase it may act in (its cache, or an operation in flight).
    pub phase: Phase,
    /// The highest: above `phase` while it moves to a new phase, until its
    /// operations in the old one are done.
    pub highest: Phase,
    pub expires_in_ms: i64,
    /// Milliseconds since the heartbeat was written (`None`: a heartbeat of
    /// an older version, which does not say).
    pub age_ms: Option<i64>,
}

impl FleetMember {
    /// Reads a heartbeat's value: "LOW HIGH TTL_MS", or an older "PHASE".
    pub fn parse(process: String, value: &[u8], expires_in_ms: i64) -> Result<FleetMember> {
        let text = std::str::from_utf8(value)
            .map_err(|_| Error::Internal("a heartbeat holds no text".into()))?;
        let numbers: Vec<i64> = text
            .split_whitespace()
            .map(|word| word.parse::<i64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::Internal(format!("a heartbeat holds {text:?}")))?;
        let (low, high, ttl) = match numbers.as_slice() {
            [phase] => (*phase, *phase, None),
            [low, high, ttl] => (*low, *high, Some(*ttl)),
            _ => return Err(Error::Internal(format!("a heartbeat holds {text:?}"))),
        };
        Ok(FleetMember {
            process,
            phase: Phase::from_index(low)?,
            highest: Phase::from_index(high)?,
            expires_in_ms,
            age_ms: ttl.map(|ttl| (ttl - expires_in_ms).max(0)),
        })
    }

    fn describe(&self) -> String {
        let phases = if self.phase == self.highest {
            format!("phase {}", self.phase.index())
        } else {
            format!("phases {}..{}", self.phase.index(), self.highest.index())
        };
        match self.age_ms {
            Some(age) => format!(
                "{} ({phases}, last seen {:.1}s ago, gone in {:.1}s unless it reports again)",
                self.process,
                age as f64 / 1000.0,
                self.expires_in_ms.max(0) as f64 / 1000.0
            ),
            None => format!("{} ({phases})", self.process),
        }
    }
}

/// Why moving the fleet from `current` to `target` is not safe now; empty
/// when it is. `one_sided` is the gate's count of locks on one server only:
/// source-only for a move from phase 1 to 2, destination-only for a
/// rollback from 1 to 0 (the reverse gate).
pub fn check_transition(
    current: Option<Phase>,
    target: Phase,
    fleet: &[FleetMember],
    one_sided: Option<u64>,
) -> Vec<String> {
    let mut reasons = Vec::new();
    let Some(current) = current else {
        reasons.push(
            "no phase is set on the destination (never set, or lost with its data): \
             `locking phase set PHASE --init` sets it, to the phase the fleet is in"
                .into(),
        );
        return reasons;
    };
    if target == current {
        reasons.push(format!("the fleet is already in phase {current}"));
        return reasons;
    }
    if !current.adjacent(target) {
        reasons.push(format!(
            "phase {current} to {target} is not adjacent: move one phase at a time"
        ));
        return reasons;
    }
    let behind: Vec<&FleetMember> = fleet
        .iter()
        .filter(|m| m.phase != current || m.highest != current)
        .collect();
    if !behind.is_empty() {
        let names: Vec<String> = behind.iter().take(5).map(|m| m.describe()).collect();
        reasons.push(format!(
            "{} process(es) not yet in phase {current}: {}{}",
            behind.len(),
            names.join(", "),
            if behind.len() > 5 { ", ..." } else { "" }
        ));
    }
    if current == Phase::Dual && target == Phase::Drain {
        let in_phase_0 = fleet.iter().filter(|m| m.phase == Phase::Source).count();
        match one_sided {
            Some(count) => reasons.extend(protocol::gate(in_phase_0, count).reasons),
            None => reasons.push("the gate was not checked".into()),
        }
    }
    if current == Phase::Dual && target == Phase::Source {
        match one_sided {
            Some(count) => reasons.extend(protocol::reverse_gate(count).reasons),
            None => reasons.push("the reverse gate was not checked".into()),
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(phase: Phase) -> FleetMember {
        FleetMember {
            process: format!("host:{}", phase.index()),
            phase,
            highest: phase,
            expires_in_ms: 1000,
            age_ms: Some(9000),
        }
    }

    #[test]
    fn a_process_still_finishing_an_operation_in_the_old_phase_is_behind() {
        let moving = FleetMember::parse("web:1".into(), b"0 1 10000", 7000).unwrap();
        assert_eq!((moving.phase, moving.highest), (Phase::Source, Phase::Dual));
        assert_eq!(moving.age_ms, Some(3000));
        let reasons = check_transition(Some(Phase::Dual), Phase::Drain, &[moving], Some(0));
        assert!(reasons
            .iter()
            .any(|r| r.contains("web:1 (phases 0..1, last seen 3.0s ago")));
        let old = FleetMember::parse("web:2".into(), b"1", 7000).unwrap();
        assert_eq!(
            (old.phase, old.highest, old.age_ms),
            (Phase::Dual, Phase::Dual, None)
        );
        assert!(FleetMember::parse("web:3".into(), b"x y", 1).is_err());
    }

    #[test]
    fn a_process_still_finishing_an_operation_in_a_later_phase_is_behind() {
        // After a rollback to 1: a phase-2 acquire is still in flight.
        let finishing = FleetMember::parse("web:1".into(), b"1 2 10000", 7000).unwrap();
        let reasons = check_transition(Some(Phase::Dual), Phase::Source, &[finishing], Some(0));
        assert!(reasons
            .iter()
            .any(|r| r.contains("1 process(es) not yet in phase 1 (dual): web:1 (phases 1..2")));
    }

    #[test]
    fn transitions_must_be_adjacent_and_the_fleet_caught_up() {
        let fleet = [member(Phase::Dual), member(Phase::Dual)];
        assert!(check_transition(Some(Phase::Dual), Phase::Drain, &fleet, Some(0)).is_empty());
        assert!(check_transition(Some(Phase::Dual), Phase::Source, &fleet, Some(0)).is_empty());
        let reasons = check_transition(Some(Phase::Dual), Phase::Source, &fleet, Some(2));
        assert!(reasons.iter().any(|r| r.contains("destination only")));
        assert!(!check_transition(Some(Phase::Dual), Phase::Source, &fleet, None).is_empty());
        assert!(!check_transition(None, Phase::Source, &fleet, Some(0)).is_empty());
        assert!(!check_transition(Some(Phase::Source), Phase::Drain, &[], Some(0)).is_empty());
        assert!(!check_transition(Some(Phase::Dual), Phase::Dual, &fleet, Some(0)).is_empty());

        let behind = [member(Phase::Dual), member(Phase::Source)];
        let reasons = check_transition(Some(Phase::Dual), Phase::Drain, &behind, Some(0));
        assert!(reasons.iter().any(|r| r.contains("not yet in phase")));
        assert!(reasons.iter().any(|r| r.contains("still in phase 0")));

        let reasons = check_transition(Some(Phase::Dual), Phase::Drain, &fleet, Some(3));
        assert!(reasons.iter().any(|r| r.contains("source only")));
    }

    #[test]
    fn each_move_checks_its_own_gate_and_no_other() {
        let at = |phase| [member(phase), member(phase)];
        // Only 1 -> 2 has the gate, only 1 -> 0 the reverse gate; the others need no count.
        for (from, to) in [
            (Phase::Source, Phase::Dual),
            (Phase::Drain, Phase::Destination),
            (Phase::Destination, Phase::Drain),
            (Phase::Drain, Phase::Dual),
        ] {
            assert_eq!(
                check_transition(Some(from), to, &at(from), None),
                Vec::<String>::new()
            );
        }
        let forward = check_transition(Some(Phase::Dual), Phase::Drain, &at(Phase::Dual), Some(2));
        assert_eq!(forward.len(), 1);
        assert!(forward[0].contains("source only"), "{forward:?}");
        let back = check_transition(Some(Phase::Dual), Phase::Source, &at(Phase::Dual), Some(2));
        assert_eq!(back.len(), 1);
        assert!(back[0].contains("destination only"), "{back:?}");
    }

    #[test]
    fn a_heartbeat_spans_the_cache_and_every_operation_in_flight() {
        assert_eq!(phases_in_use(Phase::Dual, []), (Phase::Dual, Phase::Dual));
        assert_eq!(
            phases_in_use(Phase::Dual, [Phase::Drain, Phase::Dual]),
            (Phase::Dual, Phase::Drain)
        );
        assert_eq!(
            phases_in_use(Phase::Drain, [Phase::Source]),
            (Phase::Source, Phase::Drain)
        );
    }

    #[test]
    fn a_process_stops_acting_one_cache_before_its_heartbeat_expires() {
        assert_eq!(lapse_ms(10_000, 1_000, 0, 0), 9_000);
        assert_eq!(lapse_ms(12_000, 1_000, 2_000, 122), 6_878);
        assert_eq!(lapse_ms(1_000, 5_000, 0, 0), 0);
        let lapse = lapse_ms(10_000, 1_000, 0, 0);
        assert!(!heartbeat_lapsed(18_999, 10_000, lapse));
        assert!(heartbeat_lapsed(19_000, 10_000, lapse));
        assert!(heartbeat_lapsed(25_000, 10_000, lapse));
        // A clock that went back (or a read in the future) is not a lapse.
        assert!(!heartbeat_lapsed(9_000, 10_000, lapse));
    }

    #[test]
    fn a_read_after_an_operation_lapsed_does_not_revive_it() {
        // Lapse 9,000 after a read: the operation began under the read at 0.
        let lapse = lapse_ms(10_000, 1_000, 0, 0);
        assert!(!operation_lapsed(8_999, 0, 0, lapse));
        assert!(operation_lapsed(9_000, 0, 0, lapse));
        // Another thread read at 5,000, in time: covered until 14,000.
        assert!(!operation_lapsed(13_999, 0, 5_000, lapse));
        assert!(operation_lapsed(14_000, 0, 5_000, lapse));
        // ... at 9,000, too late: the fleet may have moved on meanwhile.
        assert!(operation_lapsed(9_500, 0, 9_000, lapse));
    }
}
