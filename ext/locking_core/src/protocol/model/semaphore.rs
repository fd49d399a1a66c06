//! The semaphore's explorer: the product's semaphore operations
//! (`protocol::Semaphore*`) of several clients, each command atomic on the
//! model servers (`Places`), in every interleaving, with the clock jumping
//! to each expiry (of a place, or of a holder's belief). Invariant: never
//! more believed holders than the limit.
//!
//! A client believes it holds a place from the start of a successful
//! acquire or renewal until that start plus its TTL (the server's place is
//! counted from when the command ran, which is no earlier), and stops
//! believing when a release starts or a renewal answers false. A renewal
//! in flight caps the belief at its own start plus its TTL: it may shorten
//! the place before its reply comes (the explorer found this with phase 2's
//! renewal of both servers at once, whose replies come one by one).

use super::store::MemoryStore;
use crate::error::Result;
use crate::protocol::phase::Phase;
use crate::protocol::{
    self, Command, Operation, Place, PlaceCopyRule, Reply, SemaphoreAcquire, SemaphoreBackfill,
    SemaphoreRelease, SemaphoreRenew, SemaphoreRules, Step, Target,
};
use std::fmt::Write;

/// What a client does next, with its TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SemaphoreAction {
    Acquire {
        ttl: u64,
    },
    Renew {
        ttl: u64,
    },
    Release,
    /// The backfill of the semaphore (`protocol::SemaphoreBackfill`): the
    /// source's live places copied onto the destination. A backfiller holds
    /// nothing; give it its own client (its phase only orders it against
    /// the gates: 1 runs it in phases 1 and 2).
    Backfill,
}

/// One client (its own token): its actions, each in a phase.
#[derive(Debug, Clone)]
pub struct SemaphoreClient {
    pub actions: Vec<(Phase, SemaphoreAction)>,
}

#[derive(Debug, Clone)]
pub struct SemaphoreScenario {
    pub limit: u64,
    pub clients: Vec<SemaphoreClient>,
    /// Negative control: the model servers keep expired places (`Places::keeps_expired`).
    pub keeps_expired: bool,
    /// The rules the clients follow (the product's refuse phases 1 and 2).
    pub rules: SemaphoreRules,
    /// Actions in phases 2 and 3 start only once the gate has held (no live
    /// source place whose token has no live destination place), as the
    /// fleet moves into phase 2 only then. False: the negative control of a
    /// gate blind to semaphores.
    pub gate: bool,
    /// A rollback (2 → 1 → 0): the clients' phase-2 actions come from before
    /// it, and their phase-0 actions start only once every phase-2 action is
    /// done and the reverse gate has held (no live destination place whose
    /// token has no live source place), as the fleet moves back into phase 0
    /// only then. The forward gate does not apply (phase 0 comes last).
    pub rollback: bool,
    /// How the backfill writes places on the destination (the product's:
    /// `Raise`; `Set` and `Unchecked` are negative controls).
    pub copy_rule: PlaceCopyRule,
}

impl SemaphoreScenario {
    /// The product's rules, with the gate.
    pub fn new(limit: u64, clients: Vec<SemaphoreClient>) -> Self {
        SemaphoreScenario {
            limit,
            clients,
            keeps_expired: false,
            rules: SemaphoreRules::TwoServers,
            gate: true,
            rollback: false,
            copy_rule: PlaceCopyRule::Raise,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SemaphoreStats {
    pub states: usize,
    /// The most believed holders seen at once (a test checks the limit is reached).
    pub most_holders: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Running {
    Acquire(SemaphoreAcquire),
    Renew(SemaphoreRenew),
    Release(SemaphoreRelease),
    Backfill(SemaphoreBackfill),
}

impl Running {
    fn step(&mut self, replies: Vec<Result<Reply>>) -> Step<bool> {
        match self {
            Running::Acquire(op) => op.step(replies),
            Running::Renew(op) => op.step(replies),
            Running::Release(op) => op.step(replies),
            Running::Backfill(op) => match op.step(replies) {
                Step::Send(batch) => Step::Send(batch),
                Step::Done(copied) => Step::Done(copied.map(|copied| copied.written > 0)),
            },
        }
    }
}

/// A command of the batch in flight, and its reply once it ran.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Pending {
    target: Target,
    command: Command,
    reply: Option<Reply>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct ClientState {
    next: usize,
    running: Option<Running>,
    started: u64,
    batch: Vec<Pending>,
    believed_until: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct State {
    now: u64,
    source: MemoryStore,
    destination: MemoryStore,
    clients: Vec<ClientState>,
    gate_held: bool,
    reverse_gate_held: bool,
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Start(usize),
    Run(usize, usize),
    Tick(u64),
}

/// Explores every interleaving of `scenario`; a violation comes back as the
/// schedule that led to it, in words.
pub fn explore_semaphore(
    scenario: &SemaphoreScenario,
) -> std::result::Result<SemaphoreStats, String> {
    let mut store = MemoryStore::default();
    store.places.keeps_expired = scenario.keeps_expired;
    let state = State {
        now: 0,
        source: store.clone(),
        destination: store,
        clients: vec![ClientState::default(); scenario.clients.len()],
        gate_held: false,
        reverse_gate_held: false,
    };
    let mut search = Search {
        scenario,
        seen: super::Visited::default(),
        trace: Vec::new(),
        stats: SemaphoreStats::default(),
    };
    search.visit(state)?;
    Ok(search.stats)
}

struct Search<'a> {
    scenario: &'a SemaphoreScenario,
    seen: super::Visited,
    trace: Vec<String>,
    stats: SemaphoreStats,
}

impl Search<'_> {
    fn visit(&mut self, mut state: State) -> std::result::Result<(), String> {
        state.gate_held |= self.left(&state, |phase| phase == Phase::Source) && gate_holds(&state);
        state.reverse_gate_held |=
            self.left(&state, |phase| phase >= Phase::Drain) && reverse_gate_holds(&state);
        if !self.seen.first_visit(&state) {
            return Ok(());
        }
        self.stats.states += 1;
        let holders = holders(&state);
        self.stats.most_holders = self.stats.most_holders.max(holders.len());
        if holders.len() as u64 > self.scenario.limit {
            let mut text = format!(
                "{} holders of a semaphore of {} at t={}: clients {:?}\n",
                holders.len(),
                self.scenario.limit,
                state.now,
                holders
            );
            for line in &self.trace {
                let _ = writeln!(text, "  {line}");
            }
            return Err(text);
        }
        for event in self.events(&state) {
            let mut next = state.clone();
            let line = self.apply(&mut next, event);
            self.trace.push(line);
            let result = self.visit(next);
            self.trace.pop();
            result?;
        }
        Ok(())
    }

    /// The fleet left the phases `in_them` names: no action in them running
    /// or still to come (it moves into phase 2 only after it left phase 0,
    /// and back into phase 0 only after it left phase 2).
    fn left(&self, state: &State, in_them: impl Fn(Phase) -> bool) -> bool {
        state.clients.iter().enumerate().all(|(index, client)| {
            let actions = &self.scenario.clients[index].actions;
            // The running action (if any) is `next`: it counts as still to come.
            actions
                .iter()
                .skip(client.next)
                .all(|(phase, _)| !in_them(*phase))
        })
    }

    fn events(&self, state: &State) -> Vec<Event> {
        let mut events = Vec::new();
        for (index, client) in state.clients.iter().enumerate() {
            if client.running.is_none() {
                let actions = &self.scenario.clients[index].actions;
                let waits_for_gate = |phase: Phase| {
                    if self.scenario.rollback {
                        self.scenario.gate && phase == Phase::Source && !state.reverse_gate_held
                    } else {
                        self.scenario.gate && phase >= Phase::Drain && !state.gate_held
                    }
                };
                if actions
                    .get(client.next)
                    .is_some_and(|(phase, _)| !waits_for_gate(*phase))
                {
                    events.push(Event::Start(index));
                }
            } else {
                for (command, pending) in client.batch.iter().enumerate() {
                    if pending.reply.is_none() {
                        events.push(Event::Run(index, command));
                    }
                }
            }
        }
        let expiries = [&state.source, &state.destination]
            .into_iter()
            .filter_map(|store| store.places.next_expiry(state.now))
            .chain(
                state
                    .clients
                    .iter()
                    .filter_map(|client| client.believed_until)
                    .filter(|at| *at > state.now),
            );
        if let Some(at) = expiries.min() {
            events.push(Event::Tick(at));
        }
        events
    }

    fn apply(&self, state: &mut State, event: Event) -> String {
        match event {
            Event::Tick(at) => {
                state.now = at;
                format!("t={at}")
            }
            Event::Start(index) => {
                let client = &mut state.clients[index];
                let (phase, action) = self.scenario.clients[index].actions[client.next];
                let token = super::token(index);
                client.started = state.now;
                let (rules, limit) = (self.scenario.rules, self.scenario.limit);
                let place = |ttl_ms| Place {
                    token: &token,
                    ttl_ms,
                    limit,
                };
                let mut op = match action {
                    SemaphoreAction::Acquire { ttl } => {
                        Running::Acquire(SemaphoreAcquire::with_rules(phase, rules, place(ttl)))
                    }
                    SemaphoreAction::Renew { ttl } => {
                        // A renewal may shorten the place before its reply:
                        // from its send, the belief is no longer than it asks.
                        client.believed_until = client
                            .believed_until
                            .map(|at| super::believed_while_renewing(at, state.now, ttl));
                        Running::Renew(SemaphoreRenew::with_rules(phase, rules, place(ttl)))
                    }
                    SemaphoreAction::Release => {
                        client.believed_until = None;
                        Running::Release(SemaphoreRelease::with_rules(phase, rules, &token))
                    }
                    SemaphoreAction::Backfill => {
                        Running::Backfill(SemaphoreBackfill::with_rule(self.scenario.copy_rule))
                    }
                };
                let step = op.step(Vec::new());
                client.running = Some(op);
                let outcome = self.settle(state, index, step);
                format!(
                    "client {index} starts {action:?} in phase {}{outcome}",
                    phase.index()
                )
            }
            Event::Run(index, command) => {
                let now = state.now;
                let pending = &state.clients[index].batch[command];
                let (target, cmd) = (pending.target, pending.command.clone());
                let store = match target {
                    Target::Source => &mut state.source,
                    Target::Destination => &mut state.destination,
                };
                let reply = store.execute(&cmd, now);
                let line = format!(
                    "client {index}: {} on {} -> {reply:?}",
                    describe(&cmd),
                    target.name()
                );
                let client = &mut state.clients[index];
                client.batch[command].reply = Some(reply);
                if client.batch.iter().all(|pending| pending.reply.is_some()) {
                    let replies = std::mem::take(&mut client.batch)
                        .into_iter()
                        .filter_map(|pending| pending.reply.map(Ok))
                        .collect();
                    let step = match client.running.as_mut() {
                        Some(op) => op.step(replies),
                        None => return line,
                    };
                    return line + &self.settle(state, index, step);
                }
                line
            }
        }
    }

    /// After a step: the next batch in flight, or the operation's end and
    /// what its client now believes.
    fn settle(&self, state: &mut State, index: usize, step: Step<bool>) -> String {
        let client = &mut state.clients[index];
        match step {
            Step::Send(batch) => {
                client.batch = batch
                    .into_iter()
                    .map(|(target, command)| Pending {
                        target,
                        command,
                        reply: None,
                    })
                    .collect();
                String::new()
            }
            Step::Done(result) => {
                let (_, action) = self.scenario.clients[index].actions[client.next];
                match (action, &result) {
                    (
                        SemaphoreAction::Acquire { ttl } | SemaphoreAction::Renew { ttl },
                        Ok(true),
                    ) => client.believed_until = Some(super::believed_until(client.started, ttl)),
                    (SemaphoreAction::Renew { .. }, Ok(false)) => client.believed_until = None,
                    // An error is not an answer: a holder trusts its place
                    // until its belief ends, as the product does.
                    _ => {}
                }
                client.running = None;
                client.next += 1;
                format!(", done: {result:?}")
            }
        }
    }
}

/// The gate, for semaphores, as the product decides it: the places on the
/// source only (`protocol::copy_one_sided`) are the gate's count.
fn gate_holds(state: &State) -> bool {
    protocol::gate(0, one_sided(&state.source, &state.destination, state.now)).open
}

/// The reverse gate, as the product decides it: places on the destination only.
fn reverse_gate_holds(state: &State) -> bool {
    protocol::reverse_gate(one_sided(&state.destination, &state.source, state.now)).open
}

/// The places live on `here` that `there` does not cover, by the product's
/// rule: each side's time left in ms (a tick is a second), one clock (no
/// uncertainty between the two reads).
fn one_sided(here: &MemoryStore, there: &MemoryStore, now: u64) -> u64 {
    let left = |store: &MemoryStore, token: &[u8]| {
        store
            .places
            .places
            .get(token)
            .filter(|at| **at > now)
            .map(|at| (at - now) * 1000)
    };
    here.places
        .places
        .keys()
        .filter(|token| protocol::copy_one_sided(left(here, token), left(there, token), 0))
        .count() as u64
}

fn holders(state: &State) -> Vec<usize> {
    state
        .clients
        .iter()
        .enumerate()
        .filter(|(_, client)| client.believed_until.is_some_and(|at| at > state.now))
        .map(|(index, _)| index)
        .collect()
}

/// A semaphore command in a schedule's words.
pub(super) fn describe(command: &Command) -> String {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    match command {
        Command::SemaphoreAcquire {
            token,
            ttl_ms,
            limit,
        } => format!("SEM ACQ({}, ttl {ttl_ms}, limit {limit})", text(token)),
        Command::SemaphoreRelease { token } => format!("SEM REL({})", text(token)),
        Command::SemaphoreRenew { token, ttl_ms } => {
            format!("SEM REN({}, ttl {ttl_ms})", text(token))
        }
        Command::SemaphoreHolders => "SEM HOLDERS".into(),
        Command::SemaphorePlaces => "SEM PLACES".into(),
        Command::SemaphoreCopy { places, rule } => {
            let places: Vec<String> = places
                .iter()
                .map(|(token, left)| format!("{}: {left}", text(token)))
                .collect();
            format!("SEM COPY({}; {})", places.join(", "), rule.name())
        }
        other => format!("{other:?}"),
    }
}
