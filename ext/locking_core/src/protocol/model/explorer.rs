//! The explorer: every interleaving of the clients' commands, the backfill,
//! expiry and (in `operator`) the fleet's events, with the invariants checked
//! in every state reached.

use super::scenario::{Action, DynamicOp, Scenario};
use super::store::{MemoryStore, Stored};
use crate::error::{Error, Result};
use crate::protocol::phase::Phase;
use crate::protocol::{
    self, AcquireReply, BackfillOutcome, Command, Operation, Reply, Step, Target,
};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ProcessState {
    /// The phase its operations start in; `None`: it refuses (no phase known).
    pub(super) cached: Option<Phase>,
    /// What its heartbeat says: lowest and highest phase.
    pub(super) heartbeat: (Phase, Phase),
    pub(super) refreshes_left: u8,
    /// When it last read the phase (and wrote its heartbeat).
    pub(super) read_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RunningOp {
    Acquire(protocol::Acquire),
    Renew(protocol::Renew),
    Release(protocol::Release),
    Naive(NaiveOp),
    Backfill(protocol::Backfill),
}

/// The naive plan's single-server acquire and release.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct NaiveOp {
    target: Target,
    command: Command,
    sent: bool,
}

impl Operation for NaiveOp {
    type Output = bool;
    fn step(&mut self, replies: Vec<Result<Reply>>) -> Step<bool> {
        if !self.sent {
            self.sent = true;
            return Step::Send(vec![(self.target, self.command.clone())]);
        }
        Step::Done(Ok(matches!(
            replies.first(),
            Some(Ok(Reply::Acquire(
                AcquireReply::Set | AcquireReply::AlreadyMine
            ))) | Some(Ok(Reply::Flag(true)))
        )))
    }
}

/// What an operation returned, in a form every kind shares.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Output {
    Bool(bool),
    Backfill(BackfillOutcome),
    /// It failed with an error (its process's heartbeat lapsed).
    Failed,
}

impl RunningOp {
    fn step(&mut self, replies: Vec<Result<Reply>>) -> Step<Output> {
        fn map<T>(step: Step<T>, f: impl FnOnce(T) -> Output) -> Step<Output> {
            match step {
                Step::Send(batch) => Step::Send(batch),
                Step::Done(result) => Step::Done(result.map(f)),
            }
        }
        match self {
            RunningOp::Acquire(op) => map(op.step(replies), Output::Bool),
            RunningOp::Renew(op) => map(op.step(replies), Output::Bool),
            RunningOp::Release(op) => map(op.step(replies), Output::Bool),
            RunningOp::Naive(op) => map(op.step(replies), Output::Bool),
            RunningOp::Backfill(op) => map(op.step(replies), Output::Backfill),
        }
    }
}

/// A batch in flight: its commands, and the replies of those already run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Pending {
    op: RunningOp,
    pub(super) batch: Vec<(Target, Command)>,
    pub(super) replies: Vec<Option<Landed>>,
}

/// What became of one command of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Landed {
    Ran(Reply),
    /// Its process's heartbeat had lapsed: it sent nothing (DESIGN: the
    /// explorer, a control key out of reach).
    NotSent,
}

/// The replies of a batch whose commands have all landed, as the driver
/// hands them to the operation.
fn replies_of(landed: &[Option<Landed>]) -> Vec<Result<Reply>> {
    landed
        .iter()
        .flatten()
        .map(|landed| match landed {
            Landed::Ran(reply) => Ok(reply.clone()),
            Landed::NotSent => Err(Error::Phase("the process's heartbeat lapsed".into())),
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ClientState {
    pub(super) next_action: usize,
    pub(super) running: Option<(Action, Pending)>,
    /// The client believes it holds the lock until this time.
    pub(super) lease_until: Option<u64>,
    /// Its last acquire was refused: later actions are skipped.
    pub(super) refused: bool,
    /// Time its current acquire or renew started (the lease counts from then).
    pub(super) op_started: u64,
    /// The phase of its operation in flight (dynamic operations).
    pub(super) op_phase: Option<Phase>,
    /// TTL of its last acquire or renew (the lease's length).
    pub(super) lease_ttl: u64,
    /// When its last successful acquire or renew finished, and its TTL.
    pub(super) write_end: u64,
    pub(super) write_ttl: u64,
    /// It began a release since that write.
    pub(super) released: bool,
    /// A command of it was not sent because its process's heartbeat lapsed:
    /// like a process that stopped, it leaves its keys to their TTLs (a
    /// rollback it could not send included).
    pub(super) stopped: bool,
    /// Its process's last read when its operation in flight began (the
    /// operation's heartbeat coverage starts there).
    pub(super) began_read: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct State {
    pub(super) now: u64,
    pub(super) source: MemoryStore,
    pub(super) destination: MemoryStore,
    pub(super) clients: Vec<ClientState>,
    pub(super) backfill: Option<Option<Pending>>, // None = not started, Some(None) = done
    pub(super) expiries_left: u8,
    pub(super) gate_passed: bool,
    /// An action began in a phase that backfill may not run beside
    /// (`Phase::check_backfill`).
    pub(super) phase_2_started: bool,
    /// Fleet scenarios: the control phase (`None`: the key was lost), the
    /// processes, the operator's progress, and whether the loss happened.
    pub(super) control: Option<Phase>,
    pub(super) processes: Vec<ProcessState>,
    pub(super) moves_done: u8,
    pub(super) control_lost: bool,
    /// The phase the control key held when it was lost.
    pub(super) lost_phase: Option<Phase>,
    /// The control key's node is out of reach now; its outage happened.
    pub(super) control_down: bool,
    pub(super) outage_done: bool,
}

/// A schedule that broke an invariant, printable step by step.
#[derive(Debug, Clone)]
pub struct Counterexample {
    pub violation: String,
    pub schedule: Vec<String>,
}

impl fmt::Display for Counterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.violation)?;
        for (index, step) in self.schedule.iter().enumerate() {
            writeln!(f, "  {:>2}. {step}", index + 1)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub states: usize,
    pub terminal_states: usize,
}

pub fn token(client: usize) -> Vec<u8> {
    format!("t{client}").into_bytes()
}

/// Explores every interleaving of the scenario. Invariants:
/// - never two clients that believe they hold the lock with unexpired leases;
/// - when everyone is done, no key is left that nobody holds (an orphan).
pub fn explore(scenario: &Scenario) -> std::result::Result<Stats, Counterexample> {
    let mut initial = State {
        now: 0,
        source: MemoryStore::default(),
        destination: MemoryStore::default(),
        clients: scenario
            .clients
            .iter()
            .map(|spec| ClientState {
                next_action: 0,
                running: None,
                lease_until: spec.holding_from_start.then_some(scenario.ttl),
                refused: false,
                op_started: 0,
                op_phase: None,
                lease_ttl: scenario.ttl,
                write_end: 0,
                write_ttl: scenario.ttl,
                released: false,
                stopped: false,
                began_read: 0,
            })
            .collect(),
        backfill: if scenario.backfill { None } else { Some(None) },
        expiries_left: scenario.expiries,
        gate_passed: !scenario.gate,
        phase_2_started: false,
        control: scenario.fleet.as_ref().map(|fleet| fleet.start),
        processes: scenario
            .fleet
            .iter()
            .flat_map(|fleet| {
                (0..fleet.processes).map(|_| ProcessState {
                    cached: Some(fleet.start),
                    heartbeat: (fleet.start, fleet.start),
                    refreshes_left: fleet.refreshes,
                    read_at: 0,
                })
            })
            .collect(),
        moves_done: 0,
        control_lost: false,
        lost_phase: None,
        control_down: false,
        outage_done: false,
    };
    for (target, owner) in &scenario.initial {
        let stored = Some(Stored {
            value: token(*owner),
            expires_at: Some(scenario.ttl),
        });
        match target {
            Target::Source => initial.source.key = stored,
            Target::Destination => initial.destination.key = stored,
        }
    }
    let mut explorer = Explorer {
        scenario,
        seen: super::Visited::default(),
        stats: Stats::default(),
        schedule: Vec::new(),
    };
    initial.gate_passed |= explorer.gate_holds(&initial);
    explorer.visit(initial)?;
    Ok(explorer.stats)
}

pub(super) struct Explorer<'a> {
    pub(super) scenario: &'a Scenario,
    pub(super) seen: super::Visited,
    pub(super) stats: Stats,
    pub(super) schedule: Vec<String>,
}

/// One thing that can happen next.
#[derive(Debug, Clone, Copy)]
pub(super) enum Event {
    /// Client starts its next action.
    Start(usize),
    /// Client runs the command at this index of its pending batch.
    Run(usize, usize),
    StartBackfill,
    RunBackfill(usize),
    Expire,
    /// A process reads the control phase and writes its heartbeat.
    Refresh(usize),
    /// The operator makes its next move.
    Move,
    /// The destination loses the control key.
    LoseControl,
    /// The operator sets it again (`phase set --init`) to the phase it held.
    RestoreControl,
    /// The control key's node goes out of reach (its master is down).
    ControlDown,
    /// It is back, with the state it had (a promoted replica).
    ControlUp,
}

impl Explorer<'_> {
    fn visit(&mut self, state: State) -> std::result::Result<(), Counterexample> {
        if let Some(violation) = self.violated(&state) {
            return Err(Counterexample {
                violation,
                schedule: self.schedule.clone(),
            });
        }
        if !self.seen.first_visit(&state) {
            return Ok(());
        }
        self.stats.states += 1;
        let events = self.events(&state);
        if events.iter().all(|e| matches!(e, Event::Expire)) {
            self.stats.terminal_states += 1;
            // A client left with actions it may not start (its process
            // refuses, with no phase to read) is a process that stopped: its
            // lock expires with its TTL, which is not an orphan.
            let stuck = (0..state.clients.len()).any(|index| {
                let client = &state.clients[index];
                client.running.is_none()
                    && !client.refused
                    && client.next_action < self.scenario.clients[index].actions.len()
                    && self.next_action(&state, index).is_none()
            });
            let orphan = if stuck { None } else { self.orphan(&state) };
            if let Some(violation) = orphan.or_else(|| self.no_winner(&state)) {
                return Err(Counterexample {
                    violation,
                    schedule: self.schedule.clone(),
                });
            }
        }
        for event in events {
            let mut next = state.clone();
            let description = self.apply(&mut next, event);
            next.gate_passed |= self.gate_holds(&next);
            self.schedule.push(description);
            let result = self.visit(next);
            self.schedule.pop();
            result?;
        }
        Ok(())
    }

    fn events(&self, state: &State) -> Vec<Event> {
        let mut events = Vec::new();
        for (index, client) in state.clients.iter().enumerate() {
            match &client.running {
                Some((_, pending)) => {
                    for (slot, reply) in pending.replies.iter().enumerate() {
                        if reply.is_none() {
                            events.push(Event::Run(index, slot));
                        }
                    }
                }
                None => {
                    if self.next_action(state, index).is_some() {
                        events.push(Event::Start(index));
                    }
                }
            }
        }
        match &state.backfill {
            // Backfill serves the gate into phase 2; it is not run after that.
            None if self.backfill_may_start(state) => events.push(Event::StartBackfill),
            None => {}
            Some(Some(pending)) => {
                for (slot, reply) in pending.replies.iter().enumerate() {
                    if reply.is_none() {
                        events.push(Event::RunBackfill(slot));
                    }
                }
            }
            Some(None) => {}
        }
        if state.expiries_left > 0 && self.next_expiry(state).is_some() {
            events.push(Event::Expire);
        }
        self.fleet_events(state, &mut events);
        events
    }

    fn next_action(&self, state: &State, index: usize) -> Option<Action> {
        let client = &state.clients[index];
        let action = *self.scenario.clients[index]
            .actions
            .get(client.next_action)?;
        if client.refused && !self.scenario.release_after_refusal {
            return None;
        }
        if let Action::Dynamic(_) = action {
            let process = self.scenario.clients[index].process;
            return self.may_act(state, process).then_some(action);
        }
        let after_gate = matches!(action.phase(), Some(Phase::Drain | Phase::Destination));
        let backfill_running = matches!(state.backfill, Some(Some(_)));
        if after_gate && (!state.gate_passed || backfill_running) {
            return None;
        }
        Some(action)
    }

    /// The gate predicate on a model state (`protocol::gate` over its inputs).
    fn gate_holds(&self, state: &State) -> bool {
        let in_phase_0 = state
            .clients
            .iter()
            .zip(&self.scenario.clients)
            .filter(|(client, spec)| {
                let running = client.running.as_ref().map(|(action, _)| *action);
                running
                    .into_iter()
                    .chain(
                        spec.actions[client.next_action.min(spec.actions.len())..]
                            .iter()
                            .copied(),
                    )
                    .any(|action| action.phase() == Some(Phase::Source))
            })
            .count();
        let source_only = u64::from(super::lock_one_sided(
            state.source.live(state.now),
            state.destination.live(state.now),
            state.now,
        ));
        protocol::gate(in_phase_0, source_only).open
    }

    fn no_winner(&self, state: &State) -> Option<String> {
        let winner = state.clients.iter().any(|c| c.lease_until.is_some());
        let no_expiry = state.expiries_left == self.scenario.expiries;
        (self.scenario.require_a_winner && no_expiry && !winner)
            .then(|| "mutual abort: every contender gave up and nobody holds the lock".to_string())
    }

    fn apply(&self, state: &mut State, event: Event) -> String {
        match event {
            Event::Start(index) => {
                let Some(action) = self.next_action(state, index) else {
                    return "no-op".into();
                };
                let ttl = self.scenario.ttl;
                let process = self.scenario.clients[index].process;
                let cached = state.processes.get(process).and_then(|p| p.cached);
                let (action_phase, dynamic) = match (action, cached) {
                    (Action::Dynamic(op), Some(phase)) => (Some(phase), Some(op)),
                    _ => (action.phase(), None),
                };
                let op = match (action, dynamic, action_phase) {
                    (_, Some(DynamicOp::Acquire), Some(phase)) | (Action::Acquire(phase), ..) => {
                        RunningOp::Acquire(protocol::Acquire::new(phase, &token(index), ttl))
                    }
                    (_, Some(DynamicOp::Renew), Some(phase)) | (Action::Renew(phase), ..) => {
                        RunningOp::Renew(protocol::Renew::new(
                            phase,
                            &token(index),
                            ttl,
                            protocol::Servers::BOTH,
                        ))
                    }
                    (_, Some(DynamicOp::Release), Some(phase)) | (Action::Release(phase), ..) => {
                        RunningOp::Release(protocol::Release::new(
                            phase,
                            &token(index),
                            protocol::Servers::BOTH,
                        ))
                    }
                    (Action::AcquireFor(phase, ttl), ..) => {
                        RunningOp::Acquire(protocol::Acquire::new(phase, &token(index), ttl))
                    }
                    (Action::RenewTo(phase, ttl), ..) => RunningOp::Renew(protocol::Renew::new(
                        phase,
                        &token(index),
                        ttl,
                        protocol::Servers::BOTH,
                    )),
                    (Action::Dynamic(_), ..) => return "no-op: no phase cached".into(),
                    (Action::NaiveAcquire(target), ..) => RunningOp::Naive(NaiveOp {
                        target,
                        command: Command::Acquire {
                            token: token(index),
                            ttl_ms: ttl,
                        },
                        sent: false,
                    }),
                    (Action::NaiveRelease(target), ..) => RunningOp::Naive(NaiveOp {
                        target,
                        command: Command::CompareAndDelete {
                            token: token(index),
                        },
                        sent: false,
                    }),
                };
                if action_phase.is_some_and(|phase| phase.check_backfill().is_err()) {
                    state.phase_2_started = true;
                }
                let client = &mut state.clients[index];
                client.next_action += 1;
                client.op_started = state.now;
                client.op_phase = dynamic.and(action_phase);
                client.began_read = state.processes.get(process).map_or(0, |p| p.read_at);
                client.lease_ttl = match action {
                    Action::RenewTo(_, ttl) | Action::AcquireFor(_, ttl) => ttl,
                    _ => ttl,
                };
                if action.is_release() {
                    // Done with its critical section from here on.
                    client.lease_until = None;
                    client.released = true;
                }
                let description = match action_phase {
                    Some(phase) if dynamic.is_some() => {
                        format!("client {index} starts {action:?} in phase {phase}")
                    }
                    _ => format!("client {index} starts {action:?}"),
                };
                let outcome = self.advance(op, Vec::new());
                self.settle(state, Some(index), action, outcome);
                description
            }
            Event::Run(index, slot) => {
                let Some((action, mut pending)) = state.clients[index].running.take() else {
                    return "no-op".into();
                };
                let description =
                    if matches!(action, Action::Dynamic(_)) && !self.may_send(state, index) {
                        pending.replies[slot] = Some(Landed::NotSent);
                        state.clients[index].stopped = true;
                        format!("client {index}: its heartbeat lapsed, it sends nothing more")
                    } else {
                        self.run_command(state, &mut pending, slot, &format!("client {index}"))
                    };
                if pending.replies.iter().all(Option::is_some) {
                    let replies = replies_of(&pending.replies);
                    let outcome = self.advance(pending.op, replies);
                    self.settle(state, Some(index), action, outcome);
                } else {
                    state.clients[index].running = Some((action, pending));
                }
                description
            }
            Event::StartBackfill => {
                let backfill = protocol::Backfill::with_rule(self.scenario.backfill_rule);
                let outcome = self.advance(RunningOp::Backfill(backfill), Vec::new());
                state.backfill = Some(outcome.ok());
                "backfill starts".into()
            }
            Event::RunBackfill(slot) => {
                let Some(Some(mut pending)) = state.backfill.take() else {
                    return "no-op".into();
                };
                let description = self.run_command(state, &mut pending, slot, "backfill");
                if pending.replies.iter().all(Option::is_some) {
                    let replies = replies_of(&pending.replies);
                    state.backfill = Some(self.advance(pending.op, replies).ok());
                } else {
                    state.backfill = Some(Some(pending));
                }
                description
            }
            Event::Refresh(_)
            | Event::Move
            | Event::LoseControl
            | Event::RestoreControl
            | Event::ControlDown
            | Event::ControlUp => self.apply_fleet(state, event),
            Event::Expire => {
                let at = self.next_expiry(state).unwrap_or(state.now);
                state.now = at;
                state.expiries_left -= 1;
                for store in [&mut state.source, &mut state.destination] {
                    if store.live(at).is_none() {
                        store.key = None;
                    }
                }
                format!("time passes to {at}: keys with that expiry are gone")
            }
        }
    }

    fn run_command(
        &self,
        state: &mut State,
        pending: &mut Pending,
        slot: usize,
        who: &str,
    ) -> String {
        let (target, command) = &pending.batch[slot];
        let store = match target {
            Target::Source => &mut state.source,
            Target::Destination => &mut state.destination,
        };
        let reply = store.execute(command, state.now);
        let description = format!("{who}: {target:?} {} -> {reply:?}", describe(command));
        pending.replies[slot] = Some(Landed::Ran(reply));
        description
    }

    /// Steps an operation until it sends a batch (`Ok(pending)`) or is done (`Err(output)`).
    fn advance(
        &self,
        mut op: RunningOp,
        replies: Vec<Result<Reply>>,
    ) -> std::result::Result<Pending, Output> {
        match op.step(replies) {
            Step::Send(batch) => {
                let replies = vec![None; batch.len()];
                Ok(Pending { op, batch, replies })
            }
            Step::Done(Ok(output)) => Err(output),
            // Only a command its process did not send fails in the model.
            Step::Done(Err(_)) => Err(Output::Failed),
        }
    }

    fn settle(
        &self,
        state: &mut State,
        index: Option<usize>,
        action: Action,
        outcome: std::result::Result<Pending, Output>,
    ) {
        let Some(index) = index else { return };
        let now = state.now;
        let client = &mut state.clients[index];
        match outcome {
            Ok(pending) => client.running = Some((action, pending)),
            Err(output) => {
                client.running = None;
                client.op_phase = None;
                let lease = super::believed_until(client.op_started, client.lease_ttl);
                match output {
                    Output::Bool(true) if action.is_acquire() || action.is_renew() => {
                        client.lease_until = Some(lease);
                        client.write_end = now;
                        client.write_ttl = client.lease_ttl;
                        client.released = false;
                    }
                    Output::Bool(false) if action.is_acquire() => client.refused = true,
                    Output::Bool(false) if action.is_renew() => client.lease_until = None,
                    // As the product: an error is not an answer; the holder
                    // trusts its lock until its lease ends, and what the
                    // process wrote expires with its TTL.
                    Output::Failed => {
                        client.stopped = true;
                        client.refused |= action.is_acquire();
                    }
                    _ => {}
                }
            }
        }
    }

    /// The next moment something expires: a key, a lease, or (with
    /// heartbeat timing) a process's lapse or heartbeat.
    pub(super) fn next_expiry(&self, state: &State) -> Option<u64> {
        let keys = [&state.source.key, &state.destination.key];
        let leases = state.clients.iter().filter_map(|c| c.lease_until);
        keys.into_iter()
            .flatten()
            .filter_map(|stored| stored.expires_at)
            .chain(leases)
            .chain(self.heartbeat_deadlines(state))
            .filter(|at| *at > state.now)
            .min()
    }

    fn violated(&self, state: &State) -> Option<String> {
        let holders: Vec<usize> = state
            .clients
            .iter()
            .enumerate()
            .filter(|(_, c)| c.lease_until.is_some_and(|until| until > state.now))
            .map(|(index, _)| index)
            .collect();
        (holders.len() > 1).then(|| {
            format!(
                "two holders at time {}: clients {holders:?} both believe they hold the lock",
                state.now
            )
        })
    }

    fn orphan(&self, state: &State) -> Option<String> {
        let anyone_holding = state
            .clients
            .iter()
            .any(|c| c.lease_until.is_some_and(|until| until > state.now));
        if anyone_holding {
            return None;
        }
        for (name, store) in [
            ("source", &state.source),
            ("destination", &state.destination),
        ] {
            if let Some(stored) = store.live(state.now) {
                // A holder that stopped without releasing leaves its key for
                // the TTL it last asked for, counted from when that request
                // ended (a write lands during the request, not at its start).
                // So does a client whose process stopped sending (its
                // heartbeat lapsed) in the middle of an operation.
                let left_by_its_holder = state.clients.iter().enumerate().any(|(index, c)| {
                    let holder_stopped = !c.released
                        && stored
                            .expires_at
                            .is_some_and(|at| at <= c.write_end + c.write_ttl);
                    stored.value == token(index) && (holder_stopped || c.stopped)
                });
                if left_by_its_holder {
                    continue;
                }
                return Some(format!(
                    "orphan: everyone is done, yet the {name} still holds {:?}",
                    String::from_utf8_lossy(&stored.value)
                ));
            }
        }
        None
    }
}

fn describe(command: &Command) -> String {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    match command {
        Command::Acquire { token, ttl_ms } => format!("ACQ({}, ttl {ttl_ms})", text(token)),
        Command::CompareAndDelete { token } => format!("CAD({})", text(token)),
        Command::CompareAndExtend { token, ttl_ms } => {
            format!("CAX({}, ttl {ttl_ms})", text(token))
        }
        Command::Exists => "EXISTS".into(),
        Command::TokenTtl { token } => format!("TTL({})", text(token)),
        Command::ReadWithTtl => "READ value+ttl".into(),
        Command::Mirror { value, ttl_ms } => format!("SET NX({}, ttl {ttl_ms:?})", text(value)),
        Command::ExtendIfGreater { token, ttl_ms } => {
            format!("EXTEND GT({}, ttl {ttl_ms})", text(token))
        }
        semaphore_command => super::semaphore::describe(semaphore_command),
    }
}
