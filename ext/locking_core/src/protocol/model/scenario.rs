//! What a scenario is made of: clients and their actions, and optionally a
//! fleet of processes with an operator (dynamic phases).

use crate::protocol::phase::Phase;
use crate::protocol::{CopyTtlRule, Target};

/// What a client does, one action after another, each in its own phase (a
/// process that flips phase between operations, or a job enqueued in one
/// phase and performed in the next).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Acquire; the client's later actions run only if it got the lock.
    Acquire(Phase),
    /// Acquire with another TTL than the scenario's (a second object with
    /// the client's token, asking for longer: "already mine" resets only the
    /// copies that phase writes).
    AcquireFor(Phase, u64),
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
    pub(super) fn phase(self) -> Option<Phase> {
        match self {
            Action::Acquire(p)
            | Action::AcquireFor(p, _)
            | Action::Renew(p)
            | Action::RenewTo(p, _)
            | Action::Release(p) => Some(p),
            _ => None,
        }
    }

    pub(super) fn is_acquire(self) -> bool {
        matches!(
            self,
            Action::Acquire(_)
                | Action::AcquireFor(..)
                | Action::NaiveAcquire(_)
                | Action::Dynamic(DynamicOp::Acquire)
        )
    }

    pub(super) fn is_renew(self) -> bool {
        matches!(
            self,
            Action::Renew(_) | Action::RenewTo(..) | Action::Dynamic(DynamicOp::Renew)
        )
    }

    pub(super) fn is_release(self) -> bool {
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
    /// Heartbeats that expire, and processes that stop acting once their
    /// last read is too old (`None`: heartbeats live for ever, as before).
    pub timing: Option<HeartbeatTiming>,
    /// The control key's node may be unreachable once for a while (its
    /// master down, a failover), then come back with the state it had.
    pub control_outage: bool,
    /// What a process does with its cached phase when it cannot read anew.
    pub stale_cache: StaleCache,
}

/// The heartbeat's clock, in the model's time units: a heartbeat expires
/// `ttl` after the read that wrote it; a process acts in its cached phase
/// only until `fleet::heartbeat_lapsed(now, read_at, lapse)` (`HeartbeatTiming::lapse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeartbeatTiming {
    pub ttl: u64,
    pub cache: u64,
}

impl HeartbeatTiming {
    /// The product's lapse (`fleet::lapse_ms`) for this timing. The model's
    /// steps take no time on the wire, so no timeout and no drift: a command
    /// held by the network until after the lapse is the belief explorer's
    /// (tests/belief.rs), with the product's timeout and drift.
    pub fn lapse(&self) -> u64 {
        crate::protocol::fleet::lapse_ms(self.ttl, self.cache, 0, 0)
    }
}

/// What a process does when its cached phase is older than the lapse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StaleCache {
    /// Stops acting (new operations and those in flight) until a read
    /// succeeds: `fleet::heartbeat_lapsed`, as the product does.
    FailClosed,
    /// An operation in flight keeps sending while its process's latest read
    /// is recent, whichever thread made it. Wrong: a read after the lapse
    /// revives an operation begun before it, though the fleet may have moved
    /// two phases on meanwhile. Negative control only (the rule until the
    /// explorer modelled heartbeat expiry).
    LatestReadCovers,
    /// Keeps acting in its cached phase for ever. Wrong: the operator moves
    /// on once its heartbeat expires. Negative control only.
    KeepForever,
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
            timing: None,
            control_outage: false,
            stale_cache: StaleCache::FailClosed,
        }
    }
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
