//! An in-memory model of the two servers, and an explorer that runs protocol
//! operations of several clients in every interleaving of their commands.
//!
//! Each command is atomic, as on Redis. Commands a batch sends "at once" are
//! separate events here, in either order, since on real servers they are
//! independent. Time moves only by expiry events, each of which jumps the
//! clock to the next moment a key expires. States already seen are skipped,
//! so the search is exhaustive without walking every schedule.

use crate::error::Result;
use crate::phase::Phase;
use crate::protocol::{
    self, AcquireReply, BackfillOutcome, Command, CopyTtlRule, Entry, Operation, Reply, Step,
    Target, TokenTtl,
};
use std::collections::HashSet;
use std::fmt;

/// One key on one server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Stored {
    pub value: Vec<u8>,
    /// Absolute expiry time; `None` = no expiry.
    pub expires_at: Option<u64>,
}

/// A model Redis holding a single key (the protocol is per key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MemoryStore {
    pub key: Option<Stored>,
}

impl MemoryStore {
    fn live(&self, now: u64) -> Option<&Stored> {
        self.key
            .as_ref()
            .filter(|stored| stored.expires_at.is_none_or(|at| at > now))
    }

    /// Runs one command atomically at time `now`.
    pub fn execute(&mut self, command: &Command, now: u64) -> Reply {
        if self.live(now).is_none() {
            self.key = None;
        }
        match command {
            Command::Acquire { token, ttl_ms } => self.set_nx(token, Some(*ttl_ms), now),
            Command::Mirror { value, ttl_ms } => self.set_nx(value, *ttl_ms, now),
            Command::CompareAndDelete { token } => {
                let held = self.holds(token);
                if held {
                    self.key = None;
                }
                Reply::Flag(held)
            }
            Command::CompareAndExtend { token, ttl_ms } => {
                let held = self.holds(token);
                if let (true, Some(stored)) = (held, self.key.as_mut()) {
                    stored.expires_at = Some(now + ttl_ms);
                }
                Reply::Flag(held)
            }
            Command::ExtendIfGreater { token, ttl_ms } => {
                let mut extended = false;
                if let (true, Some(stored)) = (self.holds(token), self.key.as_mut()) {
                    if let Some(at) = stored.expires_at {
                        if at < now + ttl_ms {
                            stored.expires_at = Some(now + ttl_ms);
                            extended = true;
                        }
                    }
                }
                Reply::Flag(extended)
            }
            Command::Exists => Reply::Flag(self.key.is_some()),
            Command::TokenTtl { token } => Reply::Ttl(match &self.key {
                Some(stored) if stored.value == *token => match stored.expires_at {
                    Some(at) => TokenTtl::Millis(at - now),
                    None => TokenTtl::Forever,
                },
                _ => TokenTtl::NotHeld,
            }),
            Command::ReadWithTtl => Reply::Entry(self.key.as_ref().map(|stored| Entry {
                value: stored.value.clone(),
                ttl_ms: stored.expires_at.map(|at| at - now),
                expires_at_ms: stored.expires_at,
                expires_by_ms: stored.expires_at,
            })),
        }
    }

    fn holds(&self, token: &[u8]) -> bool {
        self.key
            .as_ref()
            .is_some_and(|stored| stored.value == token)
    }

    fn set_nx(&mut self, value: &[u8], ttl: Option<u64>, now: u64) -> Reply {
        match &self.key {
            Some(stored) if stored.value == value => Reply::Acquire(AcquireReply::AlreadyMine),
            Some(_) => Reply::Acquire(AcquireReply::Taken),
            None => {
                self.key = Some(Stored {
                    value: value.to_vec(),
                    expires_at: ttl.map(|ttl| now + ttl),
                });
                Reply::Acquire(AcquireReply::Set)
            }
        }
    }
}

/// The model store at a moment in time, as a `Store`.
pub struct ModelStore<'a> {
    pub store: &'a mut MemoryStore,
    pub now: u64,
}

impl crate::store::Store for ModelStore<'_> {
    fn execute(&mut self, _key: &[u8], command: &Command) -> Result<Reply> {
        Ok(self.store.execute(command, self.now))
    }
}

/// What a client does, one action after another, each in its own phase (a
/// process that flips phase between operations, or a job enqueued in one
/// phase and performed in the next).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Acquire; the client's later actions run only if it got the lock.
    Acquire(Phase),
    Renew(Phase),
    /// Renew with another TTL than the scenario's (say, shorter).
    RenewTo(Phase, u64),
    Release(Phase),
    /// In a fleet scenario: an operation in the phase its process has cached
    /// when it starts (dynamic phases).
    Dynamic(DynamicOp),
    /// The original team's plan: acquire on one server only (phase 1 = source,
    /// phase 2 = destination). Kept to show the explorer finds its bug.
    NaiveAcquire(Target),
    NaiveRelease(Target),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DynamicOp {
    Acquire,
    Renew,
    Release,
}

impl Action {
    fn phase(self) -> Option<Phase> {
        match self {
            Action::Acquire(p) | Action::Renew(p) | Action::RenewTo(p, _) | Action::Release(p) => {
                Some(p)
            }
            _ => None,
        }
    }

    fn is_acquire(self) -> bool {
        matches!(
            self,
            Action::Acquire(_) | Action::NaiveAcquire(_) | Action::Dynamic(DynamicOp::Acquire)
        )
    }

    fn is_renew(self) -> bool {
        matches!(
            self,
            Action::Renew(_) | Action::RenewTo(..) | Action::Dynamic(DynamicOp::Renew)
        )
    }

    fn is_release(self) -> bool {
        matches!(
            self,
            Action::Release(_) | Action::NaiveRelease(_) | Action::Dynamic(DynamicOp::Release)
        )
    }
}

/// Dynamic phases (DESIGN: dynamic phases), modelled: each client belongs to
/// a process that caches the fleet's phase and reports, in a heartbeat, the
/// phases it may act in; an operator moves the control phase one step at a
/// time when the heartbeats (and the gates) allow it. Operations start in
/// their process's cached phase and may still be running when the cache or
/// the control phase moves on.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub processes: usize,
    pub start: Phase,
    /// The operator's moves, in order (each to an adjacent phase).
    pub moves: Vec<Phase>,
    /// Phase reads (with heartbeat) each process may make.
    pub refreshes: u8,
    pub heartbeat: Heartbeat,
    /// Before 1 -> 0: no lock on the destination only.
    pub reverse_gate: bool,
    /// The control key may be lost once (a destination restart without data).
    pub lose_control: bool,
    pub missing_control: MissingControl,
    /// A move into phase 2 waits for a running backfill, and a backfill
    /// starts only while the control phase is 0 or 1.
    pub backfill_lease: bool,
}

/// What a heartbeat reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Heartbeat {
    /// The phases still in use: the cache before and after the read, and
    /// every operation in flight. A move needs every heartbeat at exactly
    /// the current phase.
    PhasesInUse,
    /// The phase just read. Wrong: an operation that began on the cached
    /// phase may still be writing in it. Negative control only.
    LatestRead,
}

/// What a process does when the control key is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MissingControl {
    /// Refuses to act until the phase is set again.
    Refuse,
    /// Reads it as phase 0. Wrong: a fleet in phase 3 falls back to the
    /// source. Negative control only.
    ReadsAsSource,
}

impl Fleet {
    pub fn new(processes: usize, start: Phase, moves: &[Phase]) -> Self {
        Fleet {
            processes,
            start,
            moves: moves.to_vec(),
            refreshes: 2,
            heartbeat: Heartbeat::PhasesInUse,
            reverse_gate: true,
            lose_control: false,
            missing_control: MissingControl::Refuse,
            backfill_lease: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ProcessState {
    /// The phase its operations start in; `None`: it refuses (no phase known).
    cached: Option<Phase>,
    /// What its heartbeat says: lowest and highest phase.
    heartbeat: (Phase, Phase),
    refreshes_left: u8,
}

/// A client of the scenario: a token, its actions, and whether it starts
/// out holding a lock (a job whose lock was taken before the scenario).
#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub actions: Vec<Action>,
    pub holding_from_start: bool,
    /// Its process, in a fleet scenario (clients of one process share its
    /// cached phase and heartbeat, like threads).
    pub process: usize,
}

impl ClientSpec {
    pub fn new(actions: &[Action]) -> Self {
        ClientSpec {
            actions: actions.to_vec(),
            holding_from_start: false,
            process: 0,
        }
    }

    /// The same client, in process `process` of a fleet scenario.
    pub fn in_process(mut self, process: usize) -> Self {
        self.process = process;
        self
    }

    /// A client that took its lock before the scenario began.
    pub fn already_holding(actions: &[Action]) -> Self {
        ClientSpec {
            actions: actions.to_vec(),
            holding_from_start: true,
            process: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub clients: Vec<ClientSpec>,
    /// Keys present before the scenario: (server, index of the owning client).
    pub initial: Vec<(Target, usize)>,
    /// Run one backfill step on the key, at any moment.
    pub backfill: bool,
    /// How many expiry events (clock jumps) may happen.
    pub expiries: u8,
    pub ttl: u64,
    /// Release actions and what follows them always run, even after a refused
    /// acquire (cross-phase release tests). Default: skip after a refusal.
    pub release_after_refusal: bool,
    /// Actions in phases 2 and 3 start only once the gate has held: no
    /// client with phase-0 actions left, and no lock on the source only.
    pub gate: bool,
    /// With only acquires and no expiry, someone must end up holding the
    /// lock (no mutual abort).
    pub require_a_winner: bool,
    /// The backfill's TTL rule for its copy.
    pub backfill_rule: CopyTtlRule,
    /// The backfill may start even once phase 2 actions have begun (a
    /// backfill that does not know the fleet is in phase 2: static phases).
    /// Negative control only.
    pub backfill_after_phase_2: bool,
    /// Dynamic phases: processes, a control phase and an operator.
    pub fleet: Option<Fleet>,
}

impl Scenario {
    pub fn new(clients: Vec<ClientSpec>) -> Self {
        Scenario {
            clients,
            initial: Vec::new(),
            backfill: false,
            expiries: 1,
            ttl: 10,
            release_after_refusal: false,
            gate: true,
            require_a_winner: false,
            backfill_rule: CopyTtlRule::Recheck,
            backfill_after_phase_2: false,
            fleet: None,
        }
    }

    /// A fleet scenario: the operator's moves replace the per-client gate.
    pub fn with_fleet(clients: Vec<ClientSpec>, fleet: Fleet) -> Self {
        let mut scenario = Scenario::new(clients);
        scenario.gate = false;
        scenario.fleet = Some(fleet);
        scenario
    }
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
struct Pending {
    op: RunningOp,
    batch: Vec<(Target, Command)>,
    replies: Vec<Option<Reply>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientState {
    next_action: usize,
    running: Option<(Action, Pending)>,
    /// The client believes it holds the lock until this time.
    lease_until: Option<u64>,
    /// Its last acquire was refused: later actions are skipped.
    refused: bool,
    /// Time its current acquire or renew started (the lease counts from then).
    op_started: u64,
    /// The phase of its operation in flight (dynamic operations).
    op_phase: Option<Phase>,
    /// TTL of its last acquire or renew (the lease's length).
    lease_ttl: u64,
    /// When its last successful acquire or renew finished, and its TTL.
    write_end: u64,
    write_ttl: u64,
    /// It began a release since that write.
    released: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct State {
    now: u64,
    source: MemoryStore,
    destination: MemoryStore,
    clients: Vec<ClientState>,
    backfill: Option<Option<Pending>>, // None = not started, Some(None) = done
    expiries_left: u8,
    gate_passed: bool,
    phase_2_started: bool,
    /// Fleet scenarios: the control phase (`None`: the key was lost), the
    /// processes, the operator's progress, and whether the loss happened.
    control: Option<Phase>,
    processes: Vec<ProcessState>,
    moves_done: u8,
    control_lost: bool,
    /// The phase the control key held when it was lost.
    lost_phase: Option<Phase>,
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
                })
            })
            .collect(),
        moves_done: 0,
        control_lost: false,
        lost_phase: None,
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
        seen: HashSet::new(),
        stats: Stats::default(),
        schedule: Vec::new(),
    };
    initial.gate_passed |= explorer.gate_holds(&initial);
    explorer.visit(initial)?;
    Ok(explorer.stats)
}

struct Explorer<'a> {
    scenario: &'a Scenario,
    seen: HashSet<State>,
    stats: Stats,
    schedule: Vec<String>,
}

/// One thing that can happen next.
#[derive(Debug, Clone, Copy)]
enum Event {
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
}

impl Explorer<'_> {
    fn visit(&mut self, state: State) -> std::result::Result<(), Counterexample> {
        if let Some(violation) = self.violated(&state) {
            return Err(Counterexample {
                violation,
                schedule: self.schedule.clone(),
            });
        }
        if !self.seen.insert(state.clone()) {
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
        if state.expiries_left > 0 && next_expiry(state).is_some() {
            events.push(Event::Expire);
        }
        if let Some(fleet) = &self.scenario.fleet {
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
        events
    }

    fn backfill_may_start(&self, state: &State) -> bool {
        match &self.scenario.fleet {
            // The CLI reads the control phase before it starts.
            Some(_) => matches!(state.control, Some(Phase::Source | Phase::Dual)),
            None => !state.phase_2_started || self.scenario.backfill_after_phase_2,
        }
    }

    /// Whether the operator's next move passes its checks now.
    fn move_allowed(&self, state: &State, fleet: &Fleet) -> bool {
        let (Some(current), Some(&target)) =
            (state.control, fleet.moves.get(state.moves_done as usize))
        else {
            return false;
        };
        if !current.adjacent(target) {
            return false;
        }
        let caught_up = state.processes.iter().all(|p| match fleet.heartbeat {
            Heartbeat::PhasesInUse => p.heartbeat == (current, current),
            Heartbeat::LatestRead => p.heartbeat.1 == current,
        });
        if !caught_up {
            return false;
        }
        let source_only = match (
            state.source.live(state.now),
            state.destination.live(state.now),
        ) {
            (Some(s), Some(d)) => s.value != d.value,
            (Some(_), None) => true,
            _ => false,
        };
        let destination_only = match (
            state.source.live(state.now),
            state.destination.live(state.now),
        ) {
            (Some(s), Some(d)) => s.value != d.value,
            (None, Some(_)) => true,
            _ => false,
        };
        let backfill_running = matches!(state.backfill, Some(Some(_)));
        match (current, target) {
            (Phase::Dual, Phase::Drain) => {
                let backfill_holds_it = fleet.backfill_lease && backfill_running;
                !source_only && !backfill_holds_it
            }
            (Phase::Dual, Phase::Source) => !(fleet.reverse_gate && destination_only),
            _ => true,
        }
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
            return state.processes.get(process)?.cached.map(|_| action);
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
        let source_only = match (
            state.source.live(state.now),
            state.destination.live(state.now),
        ) {
            (Some(source), Some(destination)) => u64::from(source.value != destination.value),
            (Some(_), None) => 1,
            _ => 0,
        };
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
                if matches!(action_phase, Some(Phase::Drain | Phase::Destination)) {
                    state.phase_2_started = true;
                }
                let client = &mut state.clients[index];
                client.next_action += 1;
                client.op_started = state.now;
                client.op_phase = dynamic.and(action_phase);
                client.lease_ttl = match action {
                    Action::RenewTo(_, ttl) => ttl,
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
                    self.run_command(state, &mut pending, slot, &format!("client {index}"));
                if pending.replies.iter().all(Option::is_some) {
                    let replies = pending.replies.iter().flatten().cloned().map(Ok).collect();
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
                    let replies = pending.replies.iter().flatten().cloned().map(Ok).collect();
                    state.backfill = Some(self.advance(pending.op, replies).ok());
                } else {
                    state.backfill = Some(Some(pending));
                }
                description
            }
            Event::Refresh(process) => self.refresh(state, process),
            Event::Move => {
                let Some(fleet) = &self.scenario.fleet else {
                    return "no-op".into();
                };
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
            Event::Expire => {
                let at = next_expiry(state).unwrap_or(state.now);
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
                let phases = in_flight
                    .into_iter()
                    .chain(process.cached)
                    .chain(std::iter::once(read));
                let (low, high) =
                    phases.fold((read, read), |(low, high), p| (low.min(p), high.max(p)));
                (low, high)
            }
        };
        process.cached = Some(read);
        format!(
            "process {index} reads phase {read}; heartbeat {}..{}",
            process.heartbeat.0.index(),
            process.heartbeat.1.index()
        )
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
        pending.replies[slot] = Some(reply);
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
            // The model never fails a command, so no operation can fail.
            Step::Done(Err(_)) => Err(Output::Bool(false)),
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
                let lease = client.op_started + client.lease_ttl;
                match output {
                    Output::Bool(true) if action.is_acquire() || action.is_renew() => {
                        client.lease_until = Some(lease);
                        client.write_end = now;
                        client.write_ttl = client.lease_ttl;
                        client.released = false;
                    }
                    Output::Bool(false) if action.is_acquire() => client.refused = true,
                    Output::Bool(false) if action.is_renew() => client.lease_until = None,
                    _ => {}
                }
            }
        }
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
                let left_by_its_holder = state.clients.iter().enumerate().any(|(index, c)| {
                    stored.value == token(index)
                        && !c.released
                        && stored
                            .expires_at
                            .is_some_and(|at| at <= c.write_end + c.write_ttl)
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

fn next_expiry(state: &State) -> Option<u64> {
    let keys = [&state.source.key, &state.destination.key];
    let leases = state.clients.iter().filter_map(|c| c.lease_until);
    keys.into_iter()
        .flatten()
        .filter_map(|stored| stored.expires_at)
        .chain(leases)
        .filter(|at| *at > state.now)
        .min()
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
    }
}
