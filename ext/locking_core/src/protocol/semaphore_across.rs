//! The semaphore's rules (DESIGN "Semaphores"): the whole table of the four
//! phases, as state machines, two servers in phases 1 and 2. Explored with
//! the gates that count semaphore places (`tests/semaphores.rs`), and run by
//! the product (`SemaphoreRules::TwoServers`).

use super::{unexpected, AcquireReply, Command, Operation, Reply, Step, Target};
use crate::error::{Error, Result};
use crate::protocol::phase::Phase;

/// Which semaphore rules an operation follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SemaphoreRules {
    /// The product's (DESIGN's table).
    TwoServers,
    /// Negative control: phase 1 takes its place on the destination only
    /// (counting one server only), so a phase-0 holder is not counted.
    DualOnDestinationOnly,
}

fn no_reply<T>() -> Step<T> {
    Step::Done(Err(Error::Internal(
        "a semaphore command lost its reply".into(),
    )))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum AcquireState {
    Start,
    First,
    Second,
    /// Undo our places, one server at a time in this order, then finish.
    RollBack {
        outcome: Result<bool>,
        remaining: Vec<Target>,
    },
}

/// Acquire across servers: phase 0 S; phase 1 S, then D, undoing S then D
/// when D is full or fails; phases 2 and 3 D.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AcrossAcquire {
    phase: Phase,
    rules: SemaphoreRules,
    token: Vec<u8>,
    ttl_ms: u64,
    limit: u64,
    state: AcquireState,
    /// The first server answered "already mine": the place there was this
    /// token's before this acquire (another object's, or a retry's), so a
    /// failed second half never undoes it (its holder still believes it).
    first_was_ours: bool,
}

impl AcrossAcquire {
    pub fn across(
        phase: Phase,
        rules: SemaphoreRules,
        token: &[u8],
        ttl_ms: u64,
        limit: u64,
    ) -> Self {
        AcrossAcquire {
            phase,
            rules,
            token: token.to_vec(),
            ttl_ms,
            limit,
            state: AcquireState::Start,
            first_was_ours: false,
        }
    }

    fn acquire_on(&self, target: Target) -> Step<bool> {
        Step::Send(vec![(
            target,
            Command::SemaphoreAcquire {
                token: self.token.clone(),
                ttl_ms: self.ttl_ms,
                limit: self.limit,
            },
        )])
    }

    fn first_server(&self) -> Target {
        match (self.phase, self.rules) {
            (Phase::Source, _) => Target::Source,
            (Phase::Dual, SemaphoreRules::DualOnDestinationOnly) => Target::Destination,
            (Phase::Dual, _) => Target::Source,
            (Phase::Drain | Phase::Destination, _) => Target::Destination,
        }
    }

    fn roll_back(&mut self, outcome: Result<bool>, mut remaining: Vec<Target>) -> Step<bool> {
        if remaining.is_empty() {
            return Step::Done(outcome);
        }
        let target = remaining.remove(0);
        self.state = AcquireState::RollBack { outcome, remaining };
        let undo = Command::SemaphoreRelease {
            token: self.token.clone(),
        };
        Step::Send(vec![(target, undo)])
    }
}

impl Operation for AcrossAcquire {
    type Output = bool;
    fn step(&mut self, mut replies: Vec<Result<Reply>>) -> Step<bool> {
        let both = [Target::Source, Target::Destination].to_vec();
        match std::mem::replace(&mut self.state, AcquireState::Start) {
            AcquireState::Start => {
                self.state = AcquireState::First;
                self.acquire_on(self.first_server())
            }
            AcquireState::First => match replies.pop() {
                Some(Ok(Reply::Acquire(
                    reply @ (AcquireReply::Set | AcquireReply::AlreadyMine),
                ))) => {
                    self.first_was_ours = reply == AcquireReply::AlreadyMine;
                    if self.phase == Phase::Dual && self.first_server() == Target::Source {
                        self.state = AcquireState::Second;
                        self.acquire_on(Target::Destination)
                    } else {
                        Step::Done(Ok(true))
                    }
                }
                Some(Ok(Reply::Acquire(AcquireReply::Taken))) => Step::Done(Ok(false)),
                // It may have run: its place expires with its TTL. Never undone:
                // the token may have held that place before (another object's,
                // whose holder still believes it; an adversary found the undo).
                Some(Err(error)) => Step::Done(Err(error)),
                Some(Ok(other)) => unexpected("semaphore acquire", &other),
                None => no_reply(),
            },
            AcquireState::Second => match replies.pop() {
                Some(Ok(Reply::Acquire(AcquireReply::Set | AcquireReply::AlreadyMine))) => {
                    Step::Done(Ok(true))
                }
                // A place the token held before stays, as its holder believes
                // it (the explorer found the undo of another object's place).
                Some(Ok(Reply::Acquire(AcquireReply::Taken))) if self.first_was_ours => {
                    Step::Done(Ok(false))
                }
                Some(Err(error)) if self.first_was_ours => Step::Done(Err(error)),
                // Undo like a release, S then D: a backfill may have copied
                // our S place onto D meanwhile (the lock's gap 2).
                Some(Ok(Reply::Acquire(AcquireReply::Taken))) => self.roll_back(Ok(false), both),
                Some(Err(error)) => self.roll_back(Err(error), both),
                Some(Ok(other)) => unexpected("semaphore acquire", &other),
                None => no_reply(),
            },
            AcquireState::RollBack { outcome, remaining } => self.roll_back(outcome, remaining),
        }
    }
}

/// Release across servers: phase 0 S; phase 1 S then D; phase 2 D and S at
/// once; phase 3 D. True when any live place was given back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AcrossRelease {
    token: Vec<u8>,
    /// The batches still to send, in order.
    batches: Vec<Vec<Target>>,
    released: bool,
}

impl AcrossRelease {
    pub fn new(phase: Phase, token: &[u8]) -> Self {
        let (s, d) = (Target::Source, Target::Destination);
        let batches = match phase {
            Phase::Source => vec![vec![s]],
            Phase::Dual => vec![vec![s], vec![d]],
            Phase::Drain => vec![vec![d, s]],
            Phase::Destination => vec![vec![d]],
        };
        AcrossRelease {
            token: token.to_vec(),
            batches,
            released: false,
        }
    }
}

impl Operation for AcrossRelease {
    type Output = bool;
    fn step(&mut self, replies: Vec<Result<Reply>>) -> Step<bool> {
        for reply in replies {
            match reply {
                Ok(Reply::Flag(flag)) => self.released |= flag,
                Ok(other) => return unexpected("semaphore release", &other),
                Err(error) => return Step::Done(Err(error)),
            }
        }
        if self.batches.is_empty() {
            return Step::Done(Ok(self.released));
        }
        let batch = self.batches.remove(0);
        Step::Send(
            batch
                .into_iter()
                .map(|target| {
                    (
                        target,
                        Command::SemaphoreRelease {
                            token: self.token.clone(),
                        },
                    )
                })
                .collect(),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RenewState {
    Start,
    /// Phases 0, 2 and 3: the answer is the reply from `answer`'s server.
    Single {
        answer: usize,
    },
    /// Phase 1: S renewed first; then D.
    DualSource,
    DualDestination,
    /// Phase 1: D had no place (one from phase 0): taken with the limit.
    Retake,
}

/// Renew across servers: phase 0 S; phase 1 S, then D (a missing D place
/// taken against the limit, or lost); phase 2 D and S at once, answered by
/// D; phase 3 D.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AcrossRenew {
    phase: Phase,
    token: Vec<u8>,
    ttl_ms: u64,
    limit: u64,
    state: RenewState,
}

impl AcrossRenew {
    pub fn new(phase: Phase, token: &[u8], ttl_ms: u64, limit: u64) -> Self {
        AcrossRenew {
            phase,
            token: token.to_vec(),
            ttl_ms,
            limit,
            state: RenewState::Start,
        }
    }

    fn renew(&self, target: Target) -> (Target, Command) {
        (
            target,
            Command::SemaphoreRenew {
                token: self.token.clone(),
                ttl_ms: self.ttl_ms,
            },
        )
    }
}

impl Operation for AcrossRenew {
    type Output = bool;
    fn step(&mut self, mut replies: Vec<Result<Reply>>) -> Step<bool> {
        let (s, d) = (Target::Source, Target::Destination);
        match std::mem::replace(&mut self.state, RenewState::Start) {
            RenewState::Start => match self.phase {
                Phase::Source => {
                    self.state = RenewState::Single { answer: 0 };
                    Step::Send(vec![self.renew(s)])
                }
                Phase::Dual => {
                    self.state = RenewState::DualSource;
                    Step::Send(vec![self.renew(s)])
                }
                Phase::Drain => {
                    self.state = RenewState::Single { answer: 0 };
                    Step::Send(vec![self.renew(d), self.renew(s)])
                }
                Phase::Destination => {
                    self.state = RenewState::Single { answer: 0 };
                    Step::Send(vec![self.renew(d)])
                }
            },
            RenewState::Single { answer } => {
                if replies.len() <= answer {
                    return no_reply();
                }
                match replies.swap_remove(answer) {
                    Ok(Reply::Flag(flag)) => Step::Done(Ok(flag)),
                    Ok(other) => unexpected("semaphore renew", &other),
                    Err(error) => Step::Done(Err(error)),
                }
            }
            RenewState::DualSource => match replies.pop() {
                Some(Ok(Reply::Flag(true))) => {
                    self.state = RenewState::DualDestination;
                    Step::Send(vec![self.renew(d)])
                }
                // No S place (expired, or a phase-2 place after a rollback):
                // lost. Re-taking S is the lock's unsafe alternative.
                Some(Ok(Reply::Flag(false))) => Step::Done(Ok(false)),
                Some(Ok(other)) => unexpected("semaphore renew", &other),
                Some(Err(error)) => Step::Done(Err(error)),
                None => no_reply(),
            },
            RenewState::DualDestination => match replies.pop() {
                Some(Ok(Reply::Flag(true))) => Step::Done(Ok(true)),
                Some(Ok(Reply::Flag(false))) => {
                    self.state = RenewState::Retake;
                    Step::Send(vec![(
                        d,
                        Command::SemaphoreAcquire {
                            token: self.token.clone(),
                            ttl_ms: self.ttl_ms,
                            limit: self.limit,
                        },
                    )])
                }
                Some(Ok(other)) => unexpected("semaphore renew", &other),
                Some(Err(error)) => Step::Done(Err(error)),
                None => no_reply(),
            },
            RenewState::Retake => match replies.pop() {
                Some(Ok(Reply::Acquire(AcquireReply::Set | AcquireReply::AlreadyMine))) => {
                    Step::Done(Ok(true))
                }
                // D is full: this holder is not counted there, so it stops
                // believing; its S place expires with its TTL.
                Some(Ok(Reply::Acquire(AcquireReply::Taken))) => Step::Done(Ok(false)),
                Some(Ok(other)) => unexpected("semaphore acquire", &other),
                Some(Err(error)) => Step::Done(Err(error)),
                None => no_reply(),
            },
        }
    }
}
