//! The fleet around the protocol, in the explorer: processes that read the
//! control phase and write heartbeats, an operator who moves the phase, a
//! backfill that reads it, and a control key that may be lost or out of
//! reach for a while.
//!
//! Every decision the product makes here is made by the product's own
//! function, called with what the product would read: the move rule
//! (`fleet::check_transition`, with `protocol::gate` and
//! `protocol::reverse_gate` inside), the heartbeat's span
//! (`fleet::phases_in_use`), the lapse (`fleet::heartbeat_lapsed`) and the
//! backfill's phase rule (`Phase::check_backfill`). The model supplies only
//! the inputs: the live heartbeats, the one-sided count, the clock.

use super::explorer::{Event, Explorer, State};
use super::scenario::{Fleet, Heartbeat, HeartbeatTiming, MissingControl, StaleCache};
use crate::protocol::fleet::{self, FleetMember};
use crate::protocol::phase::Phase;

impl Explorer<'_> {
    /// The fleet's events that may happen next.
    pub(super) fn fleet_events(&self, state: &State, events: &mut Vec<Event>) {
        let Some(fleet) = &self.scenario.fleet else {
            return;
        };
        // While the control key's node is out of reach, nobody reads or
        // writes it: no phase read, no heartbeat, no move, no `--init`.
        if !state.control_down {
            for (index, process) in state.processes.iter().enumerate() {
                if process.refreshes_left > 0 {
                    events.push(Event::Refresh(index));
                }
            }
            if self.move_allowed(state, fleet) {
                events.push(Event::Move);
            }
            if fleet.lose_control && !state.control_lost {
                events.push(Event::LoseControl);
            }
            if state.control.is_none() && state.lost_phase.is_some() {
                events.push(Event::RestoreControl);
            }
        }
        if fleet.control_outage && !state.outage_done {
            events.push(if state.control_down {
                Event::ControlUp
            } else {
                Event::ControlDown
            });
        }
    }

    pub(super) fn apply_fleet(&self, state: &mut State, event: Event) -> String {
        let Some(fleet) = &self.scenario.fleet else {
            return "no-op".into();
        };
        match event {
            Event::Refresh(process) => self.refresh(state, process),
            Event::Move => {
                let target = fleet.moves[state.moves_done as usize];
                let from = state.control;
                state.control = Some(target);
                state.moves_done += 1;
                format!("operator moves the fleet from phase {from:?} to {target}")
            }
            Event::LoseControl => {
                state.lost_phase = state.control.take();
                state.control_lost = true;
                "the destination restarts without its data: the control key is gone".into()
            }
            Event::RestoreControl => {
                state.control = state.lost_phase.take();
                format!("the operator sets the phase again: {:?}", state.control)
            }
            Event::ControlDown => {
                state.control_down = true;
                "the control key's master goes down: no phase read, no heartbeat, no move".into()
            }
            Event::ControlUp => {
                state.control_down = false;
                state.outage_done = true;
                "the control key is back (a promoted replica), with the state it had".into()
            }
            _ => "no-op".into(),
        }
    }

    /// Whether the backfill may start now.
    pub(super) fn backfill_may_start(&self, state: &State) -> bool {
        match &self.scenario.fleet {
            // The CLI reads the control phase before it starts.
            Some(_) => {
                !state.control_down
                    && state
                        .control
                        .is_some_and(|phase| phase.check_backfill().is_ok())
            }
            None => !state.phase_2_started || self.scenario.backfill_after_phase_2,
        }
    }

    /// Whether a process may start an operation: it has a phase, and its
    /// last read has not lapsed (`fleet::heartbeat_lapsed`). Whether it
    /// could read anew (the control key out of reach) does not matter here:
    /// a process is never made to read, so one that cannot is among the
    /// schedules explored.
    pub(super) fn may_act(&self, state: &State, process: usize) -> bool {
        let Some(p) = state.processes.get(process) else {
            return false;
        };
        let lapsed = match self.lapse_rule() {
            Some(timing) => fleet::heartbeat_lapsed(state.now, p.read_at, timing.lapse()),
            None => false,
        };
        p.cached.is_some() && !lapsed
    }

    /// Whether a client's operation in flight may still send: until its
    /// heartbeat coverage lapses (`fleet::operation_lapsed`, which
    /// `Lease::heartbeat_lapsed` checks before each batch).
    ///
    /// Checked per command here, not per batch: the product's margin (one
    /// phase cache between the lapse and the heartbeat's expiry) is taken to
    /// cover the time a batch sent just before the lapse takes to land.
    pub(super) fn may_send(&self, state: &State, client: usize) -> bool {
        let process = self.scenario.clients[client].process;
        let (Some(timing), Some(p)) = (self.lapse_rule(), state.processes.get(process)) else {
            return true;
        };
        let began = match self.scenario.fleet.as_ref().map(|fleet| fleet.stale_cache) {
            Some(StaleCache::LatestReadCovers) => p.read_at,
            _ => state.clients[client].began_read,
        };
        !fleet::operation_lapsed(state.now, began, p.read_at, timing.lapse())
    }

    /// The heartbeat timing, if processes stop acting when it lapses.
    fn lapse_rule(&self) -> Option<HeartbeatTiming> {
        let fleet = self.scenario.fleet.as_ref()?;
        match fleet.stale_cache {
            StaleCache::FailClosed | StaleCache::LatestReadCovers => fleet.timing,
            StaleCache::KeepForever => None,
        }
    }

    /// The moments a process's lapse or heartbeat comes (heartbeat timing).
    pub(super) fn heartbeat_deadlines(&self, state: &State) -> Vec<u64> {
        let Some(timing) = self.scenario.fleet.as_ref().and_then(|fleet| fleet.timing) else {
            return Vec::new();
        };
        state
            .processes
            .iter()
            .flat_map(|p| [p.read_at + timing.lapse(), p.read_at + timing.ttl])
            .collect()
    }

    /// Whether the operator's next move passes `locking phase set/advance`
    /// now: the product's move rule on what the CLI would read (the live
    /// heartbeats, the gate's one-sided count), and the backfill lease that
    /// `set_phase.lua` checks.
    fn move_allowed(&self, state: &State, fleet: &Fleet) -> bool {
        let Some(&target) = fleet.moves.get(state.moves_done as usize) else {
            return false;
        };
        let (source_only, destination_only) = one_sided(state);
        let one_sided = match (state.control, target) {
            (Some(Phase::Dual), Phase::Drain) => Some(source_only),
            (Some(Phase::Dual), Phase::Source) if fleet.reverse_gate => Some(destination_only),
            // Negative control: an operator who never counts.
            (Some(Phase::Dual), Phase::Source) => Some(0),
            _ => None,
        };
        let backfill_holds_lease = target == Phase::Drain
            && fleet.backfill_lease
            && matches!(state.backfill, Some(Some(_)));
        !backfill_holds_lease
            && fleet::check_transition(state.control, target, &self.heartbeats(state), one_sided)
                .is_empty()
    }

    /// The fleet as `Operator::fleet` reads it: every heartbeat not yet
    /// expired (without timing, heartbeats never expire).
    fn heartbeats(&self, state: &State) -> Vec<FleetMember> {
        let timing = self.scenario.fleet.as_ref().and_then(|fleet| fleet.timing);
        state
            .processes
            .iter()
            .enumerate()
            .filter_map(|(index, process)| {
                let expires_at = timing.map_or(u64::MAX, |timing| process.read_at + timing.ttl);
                (expires_at > state.now).then(|| FleetMember {
                    process: format!("process {index}"),
                    phase: process.heartbeat.0,
                    highest: process.heartbeat.1,
                    expires_in_ms: (expires_at - state.now).min(i64::MAX as u64) as i64,
                    age_ms: Some((state.now - process.read_at) as i64),
                })
            })
            .collect()
    }

    /// A process reads the control phase and writes its heartbeat in one
    /// atomic step (as `phase_heartbeat.lua` does).
    fn refresh(&self, state: &mut State, index: usize) -> String {
        let Some(fleet) = &self.scenario.fleet else {
            return "no-op".into();
        };
        let read = match (state.control, fleet.missing_control) {
            (Some(phase), _) => Some(phase),
            (None, MissingControl::ReadsAsSource) => Some(Phase::Source),
            (None, MissingControl::Refuse) => None,
        };
        let in_flight: Vec<Phase> = state
            .clients
            .iter()
            .zip(&self.scenario.clients)
            .filter(|(client, spec)| spec.process == index && client.running.is_some())
            .filter_map(|(client, _)| client.op_phase)
            .collect();
        let now = state.now;
        let process = &mut state.processes[index];
        process.refreshes_left -= 1;
        let Some(read) = read else {
            // The script fails before writing: the heartbeat stays, and the
            // process refuses to start operations.
            process.cached = None;
            return format!("process {index} finds no control phase and refuses");
        };
        process.heartbeat = match fleet.heartbeat {
            Heartbeat::LatestRead => (read, read),
            Heartbeat::PhasesInUse => {
                // The client's span (`Dynamic::phases_in_use`), then the
                // script's: the same span widened by the phase it reads.
                let (low, high) = fleet::phases_in_use(process.cached.unwrap_or(read), in_flight);
                fleet::phases_in_use(read, [low, high])
            }
        };
        process.cached = Some(read);
        if fleet.timing.is_some() {
            // Without timing, when a read happened never matters (and would
            // only multiply the states).
            process.read_at = now;
        }
        format!(
            "process {index} reads phase {read}; heartbeat {}..{}",
            process.heartbeat.0.index(),
            process.heartbeat.1.index()
        )
    }
}

/// Whether the key lives on the source only, and on the destination only
/// (another value on the other side counts as missing there), as the gate's
/// and the reverse gate's walks count it.
fn one_sided(state: &State) -> (u64, u64) {
    let source = state.source.live(state.now);
    let destination = state.destination.live(state.now);
    (
        u64::from(super::lock_one_sided(source, destination, state.now)),
        u64::from(super::lock_one_sided(destination, source, state.now)),
    )
}
