//! The lock protocol of DESIGN §3 as plain state machines.
//!
//! An operation never talks to Redis itself: each `step` either asks its driver
//! to send a batch of single-key commands (the commands of one batch may run at
//! once, on different servers) or finishes with a result. The same operations
//! run against real servers (`crate::client`) and against the in-memory model
//! (`crate::model`) that the interleaving tests explore.

use crate::error::{Error, Result};
use crate::phase::Phase;

/// Which server a command goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Source,
    Destination,
}

/// A single-key command; the key is the operation's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// ACQ: set the token with a TTL unless the key exists; report what was there.
    Acquire { token: Vec<u8>, ttl_ms: u64 },
    /// CAD: delete only while the key holds the token.
    CompareAndDelete { token: Vec<u8> },
    /// CAX: set a new TTL only while the key holds the token.
    CompareAndExtend { token: Vec<u8>, ttl_ms: u64 },
    /// Whether any holder has the key.
    Exists,
    /// Remaining TTL while the key holds the token.
    TokenTtl { token: Vec<u8> },
}

/// What an `Acquire` command found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireReply {
    /// The key was absent and now holds our token.
    Set,
    /// The key already held our token (a retry after a lost reply).
    AlreadyMine,
    /// Another token holds the key.
    Taken,
}

/// Remaining lifetime of a token's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenTtl {
    /// The key is absent or holds another token.
    NotHeld,
    /// The key holds the token and has no expiry.
    Forever,
    Millis(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Acquire(AcquireReply),
    Flag(bool),
    Ttl(TokenTtl),
}

pub enum Step<T> {
    Send(Vec<(Target, Command)>),
    Done(Result<T>),
}

/// One protocol operation. The first call gets no replies; each later call
/// gets one reply per command of the previous batch, in the same order.
pub trait Operation {
    type Output;
    fn step(&mut self, replies: Vec<Result<Reply>>) -> Step<Self::Output>;
}

fn unexpected<T>(what: &str, reply: &Reply) -> Step<T> {
    Step::Done(Err(Error::Internal(format!(
        "unexpected reply to {what}: {reply:?}"
    ))))
}

/// Where the phase puts a new lock first; phase 1 then also writes the destination.
fn primary(phase: Phase) -> Target {
    match phase {
        Phase::Source | Phase::Dual => Target::Source,
        Phase::Drain | Phase::Destination => Target::Destination,
    }
}

// ---------------------------------------------------------------- acquire

enum AcquireState {
    Start,
    First,
    Second,
    /// Undo our writes, one server at a time in this order, then finish.
    RollBack {
        outcome: Result<bool>,
        remaining: Vec<Target>,
    },
}

/// Acquire: ACQ on the primary; in phase 1 then ACQ on the destination, rolling
/// the source back when the destination is taken. A failure after a write undoes
/// it before reporting, source first. A write whose reply was lost on a broken
/// connection is undone too (it may have been applied); one that timed out is
/// not retried on that server, which is frozen or overloaded and would make the
/// caller wait a second timeout: its key expires with the TTL it was sent with.
pub struct Acquire {
    phase: Phase,
    token: Vec<u8>,
    ttl_ms: u64,
    state: AcquireState,
}

impl Acquire {
    pub fn new(phase: Phase, token: &[u8], ttl_ms: u64) -> Self {
        Acquire {
            phase,
            token: token.to_vec(),
            ttl_ms,
            state: AcquireState::Start,
        }
    }

    fn acquire_on(&self, target: Target) -> Vec<(Target, Command)> {
        vec![(
            target,
            Command::Acquire {
                token: self.token.clone(),
                ttl_ms: self.ttl_ms,
            },
        )]
    }

    fn roll_back(&mut self, outcome: Result<bool>, mut remaining: Vec<Target>) -> Step<bool> {
        if remaining.is_empty() {
            return Step::Done(outcome);
        }
        let target = remaining.remove(0);
        self.state = AcquireState::RollBack { outcome, remaining };
        Step::Send(vec![(
            target,
            Command::CompareAndDelete {
                token: self.token.clone(),
            },
        )])
    }
}

impl Operation for Acquire {
    type Output = bool;

    fn step(&mut self, mut replies: Vec<Result<Reply>>) -> Step<bool> {
        match std::mem::replace(&mut self.state, AcquireState::Start) {
            AcquireState::Start => {
                self.state = AcquireState::First;
                Step::Send(self.acquire_on(primary(self.phase)))
            }
            AcquireState::First => match replies.pop() {
                Some(Ok(Reply::Acquire(AcquireReply::Set | AcquireReply::AlreadyMine))) => {
                    if self.phase == Phase::Dual {
                        self.state = AcquireState::Second;
                        Step::Send(self.acquire_on(Target::Destination))
                    } else {
                        Step::Done(Ok(true))
                    }
                }
                Some(Ok(Reply::Acquire(AcquireReply::Taken))) => Step::Done(Ok(false)),
                Some(Err(error)) if error.retry_on_new_connection() => {
                    self.roll_back(Err(error), vec![primary(self.phase)])
                }
                Some(Err(error)) => Step::Done(Err(error)),
                Some(Ok(other)) => unexpected("acquire", &other),
                None => Step::Done(Err(Error::Internal("acquire lost its reply".into()))),
            },
            AcquireState::Second => match replies.pop() {
                Some(Ok(Reply::Acquire(AcquireReply::Set | AcquireReply::AlreadyMine))) => {
                    Step::Done(Ok(true))
                }
                Some(Ok(Reply::Acquire(AcquireReply::Taken))) => {
                    self.roll_back(Ok(false), vec![Target::Source])
                }
                Some(Err(error)) if error.retry_on_new_connection() => {
                    self.roll_back(Err(error), vec![Target::Source, Target::Destination])
                }
                Some(Err(error)) => self.roll_back(Err(error), vec![Target::Source]),
                Some(Ok(other)) => unexpected("acquire", &other),
                None => Step::Done(Err(Error::Internal("acquire lost its reply".into()))),
            },
            AcquireState::RollBack { outcome, remaining } => {
                // A failed rollback is not reported over the original outcome: the
                // key still carries its TTL, so it cannot outlive the lease.
                self.roll_back(outcome, remaining)
            }
        }
    }
}

// ---------------------------------------------------------------- release

/// Release: CAD wherever the phase may hold the key. Phase 1 goes source first,
/// then destination (a backfill racing the release could otherwise leave an
/// orphan on the destination); phases 2 and 3 ask both at once.
pub struct Release {
    batches: Vec<Vec<Target>>,
    token: Vec<u8>,
    deleted: bool,
    started: bool,
}

impl Release {
    pub fn new(phase: Phase, token: &[u8], source_configured: bool) -> Self {
        let batches = match phase {
            Phase::Source => vec![vec![Target::Source]],
            Phase::Dual => vec![vec![Target::Source], vec![Target::Destination]],
            Phase::Drain => vec![vec![Target::Destination, Target::Source]],
            Phase::Destination if source_configured => {
                vec![vec![Target::Destination, Target::Source]]
            }
            Phase::Destination => vec![vec![Target::Destination]],
        };
        Release {
            batches,
            token: token.to_vec(),
            deleted: false,
            started: false,
        }
    }
}

impl Operation for Release {
    type Output = bool;

    fn step(&mut self, replies: Vec<Result<Reply>>) -> Step<bool> {
        if self.started {
            for reply in replies {
                match reply {
                    Ok(Reply::Flag(deleted)) => self.deleted |= deleted,
                    Ok(other) => return unexpected("compare-and-delete", &other),
                    Err(error) => return Step::Done(Err(error)),
                }
            }
        }
        self.started = true;
        if self.batches.is_empty() {
            return Step::Done(Ok(self.deleted));
        }
        let batch = self.batches.remove(0);
        Step::Send(
            batch
                .into_iter()
                .map(|target| {
                    (
                        target,
                        Command::CompareAndDelete {
                            token: self.token.clone(),
                        },
                    )
                })
                .collect(),
        )
    }
}

// ---------------------------------------------------------------- locked?

/// locked?: any holder wherever the phase must look; both servers at once.
pub struct Locked {
    targets: Vec<Target>,
    started: bool,
}

impl Locked {
    pub fn new(phase: Phase) -> Self {
        let targets = match phase {
            Phase::Source => vec![Target::Source],
            Phase::Dual | Phase::Drain => vec![Target::Source, Target::Destination],
            Phase::Destination => vec![Target::Destination],
        };
        Locked {
            targets,
            started: false,
        }
    }
}

impl Operation for Locked {
    type Output = bool;

    fn step(&mut self, replies: Vec<Result<Reply>>) -> Step<bool> {
        if !self.started {
            self.started = true;
            return Step::Send(
                self.targets
                    .iter()
                    .map(|target| (*target, Command::Exists))
                    .collect(),
            );
        }
        // An error is never turned into an answer: one unreachable server makes
        // the whole question fail, even when the other says "free".
        let mut locked = false;
        for reply in replies {
            match reply {
                Ok(Reply::Flag(exists)) => locked |= exists,
                Ok(other) => return unexpected("exists", &other),
                Err(error) => return Step::Done(Err(error)),
            }
        }
        Step::Done(Ok(locked))
    }
}

// ---------------------------------------------------------------- renew

enum RenewState {
    Start,
    Extended,
    Mirrored,
}

/// renew: CAX wherever the phase may hold the token. In phase 1 a lock taken in
/// phase 0 has no destination copy yet; renew mirrors it there (as backfill
/// would) so that the lock stays visible to phase 2.
pub struct Renew {
    phase: Phase,
    token: Vec<u8>,
    ttl_ms: u64,
    source_configured: bool,
    state: RenewState,
}

impl Renew {
    pub fn new(phase: Phase, token: &[u8], ttl_ms: u64, source_configured: bool) -> Self {
        Renew {
            phase,
            token: token.to_vec(),
            ttl_ms,
            source_configured,
            state: RenewState::Start,
        }
    }

    fn extend(&self, target: Target) -> (Target, Command) {
        (
            target,
            Command::CompareAndExtend {
                token: self.token.clone(),
                ttl_ms: self.ttl_ms,
            },
        )
    }
}

impl Operation for Renew {
    type Output = bool;

    fn step(&mut self, replies: Vec<Result<Reply>>) -> Step<bool> {
        match self.state {
            RenewState::Start => {
                self.state = RenewState::Extended;
                let batch = match self.phase {
                    Phase::Source => vec![self.extend(Target::Source)],
                    Phase::Dual => vec![
                        self.extend(Target::Source),
                        self.extend(Target::Destination),
                    ],
                    Phase::Drain => vec![
                        self.extend(Target::Destination),
                        self.extend(Target::Source),
                    ],
                    Phase::Destination if self.source_configured => vec![
                        self.extend(Target::Destination),
                        self.extend(Target::Source),
                    ],
                    Phase::Destination => vec![self.extend(Target::Destination)],
                };
                Step::Send(batch)
            }
            RenewState::Extended => {
                let mut flags = Vec::with_capacity(replies.len());
                for reply in replies {
                    match reply {
                        Ok(Reply::Flag(extended)) => flags.push(extended),
                        Ok(other) => return unexpected("compare-and-extend", &other),
                        Err(error) => return Step::Done(Err(error)),
                    }
                }
                // The first flag is the server that decides ownership in this phase.
                let held = flags.first().copied().unwrap_or(false);
                if self.phase == Phase::Dual && held && !flags.get(1).copied().unwrap_or(true) {
                    self.state = RenewState::Mirrored;
                    return Step::Send(vec![(
                        Target::Destination,
                        Command::Acquire {
                            token: self.token.clone(),
                            ttl_ms: self.ttl_ms,
                        },
                    )]);
                }
                Step::Done(Ok(held))
            }
            RenewState::Mirrored => match replies.into_iter().next() {
                Some(Ok(Reply::Acquire(AcquireReply::Set | AcquireReply::AlreadyMine))) => {
                    Step::Done(Ok(true))
                }
                Some(Ok(Reply::Acquire(AcquireReply::Taken))) => Step::Done(Ok(false)),
                Some(Ok(other)) => unexpected("acquire", &other),
                Some(Err(error)) => Step::Done(Err(error)),
                None => Step::Done(Err(Error::Internal("renew lost its reply".into()))),
            },
        }
    }
}

// ---------------------------------------------------------------- ttl

/// Remaining TTL of our lock on the server that decides ownership in the phase.
pub struct Ttl {
    phase: Phase,
    token: Vec<u8>,
    started: bool,
}

impl Ttl {
    pub fn new(phase: Phase, token: &[u8]) -> Self {
        Ttl {
            phase,
            token: token.to_vec(),
            started: false,
        }
    }
}

impl Operation for Ttl {
    type Output = TokenTtl;

    fn step(&mut self, replies: Vec<Result<Reply>>) -> Step<TokenTtl> {
        if !self.started {
            self.started = true;
            return Step::Send(vec![(
                primary(self.phase),
                Command::TokenTtl {
                    token: self.token.clone(),
                },
            )]);
        }
        match replies.into_iter().next() {
            Some(Ok(Reply::Ttl(ttl))) => Step::Done(Ok(ttl)),
            Some(Ok(other)) => unexpected("token ttl", &other),
            Some(Err(error)) => Step::Done(Err(error)),
            None => Step::Done(Err(Error::Internal("ttl lost its reply".into()))),
        }
    }
}
