//! Acquire (DESIGN §3): take the lock where the phase puts it, and in
//! phase 1 on both servers, undoing a half-taken lock.

use super::{primary, unexpected, AcquireReply, Command, Operation, Reply, Step, Target};
use crate::error::{Error, Result};
use crate::protocol::phase::Phase;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum AcquireState {
    Start,
    First,
    /// "Already mine" on the first server: its TTL is reset to ours before
    /// going on (then, in phase 1, to the destination).
    Refreshing {
        then_second: bool,
    },
    Second,
    /// "Already mine" on the destination in phase 1: its TTL is reset too.
    RefreshingSecond,
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Acquire {
    phase: Phase,
    token: Vec<u8>,
    ttl_ms: u64,
    state: AcquireState,
    /// The first server answered "already mine": the lock there was this
    /// token's before this acquire (another object's, or a retry's), so a
    /// failure after it never undoes it (its holder may still believe it).
    first_was_ours: bool,
}

impl Acquire {
    pub fn new(phase: Phase, token: &[u8], ttl_ms: u64) -> Self {
        Acquire {
            phase,
            token: token.to_vec(),
            ttl_ms,
            state: AcquireState::Start,
            first_was_ours: false,
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

    fn extend_on(&self, target: Target) -> Vec<(Target, Command)> {
        vec![(
            target,
            Command::CompareAndExtend {
                token: self.token.clone(),
                ttl_ms: self.ttl_ms,
            },
        )]
    }

    /// The first server is ours: phase 1 goes on to the destination.
    fn after_first(&mut self) -> Step<bool> {
        if self.phase == Phase::Dual {
            self.state = AcquireState::Second;
            Step::Send(self.acquire_on(Target::Destination))
        } else {
            Step::Done(Ok(true))
        }
    }

    fn roll_back(&mut self, outcome: Result<bool>, mut remaining: Vec<Target>) -> Step<bool> {
        if self.first_was_ours {
            // Nothing of this acquire's own to undo on the first server, and
            // a destination copy with our token expires with its TTL.
            return Step::Done(outcome);
        }
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
                Some(Ok(Reply::Acquire(AcquireReply::Set))) => self.after_first(),
                // A retry of ours whose first attempt did land (its reply was
                // lost, or it timed out): the key still has the first
                // attempt's TTL, while the caller counts a full TTL from now.
                Some(Ok(Reply::Acquire(AcquireReply::AlreadyMine))) => {
                    self.first_was_ours = true;
                    self.state = AcquireState::Refreshing {
                        then_second: self.phase == Phase::Dual,
                    };
                    Step::Send(self.extend_on(primary(self.phase)))
                }
                Some(Ok(Reply::Acquire(AcquireReply::Taken))) => Step::Done(Ok(false)),
                Some(Err(error)) if error.retry_on_new_connection() => {
                    self.roll_back(Err(error), vec![primary(self.phase)])
                }
                Some(Err(error)) => Step::Done(Err(error)),
                Some(Ok(other)) => unexpected("acquire", &other),
                None => Step::Done(Err(Error::Internal("acquire lost its reply".into()))),
            },
            AcquireState::Refreshing { then_second } => match replies.pop() {
                Some(Ok(Reply::Flag(true))) if then_second => {
                    self.state = AcquireState::Second;
                    Step::Send(self.acquire_on(Target::Destination))
                }
                Some(Ok(Reply::Flag(true))) => Step::Done(Ok(true)),
                // Expired (or taken) since the acquire answered: not ours.
                Some(Ok(Reply::Flag(false))) => Step::Done(Ok(false)),
                Some(Err(error)) => self.roll_back(Err(error), vec![primary(self.phase)]),
                Some(Ok(other)) => unexpected("compare-and-extend", &other),
                None => Step::Done(Err(Error::Internal("acquire lost its reply".into()))),
            },
            AcquireState::RefreshingSecond => match replies.pop() {
                Some(Ok(Reply::Flag(true))) => Step::Done(Ok(true)),
                Some(Ok(Reply::Flag(false))) => {
                    self.roll_back(Ok(false), vec![Target::Source, Target::Destination])
                }
                Some(Err(error)) => {
                    self.roll_back(Err(error), vec![Target::Source, Target::Destination])
                }
                Some(Ok(other)) => unexpected("compare-and-extend", &other),
                None => Step::Done(Err(Error::Internal("acquire lost its reply".into()))),
            },
            AcquireState::Second => match replies.pop() {
                Some(Ok(Reply::Acquire(AcquireReply::Set))) => Step::Done(Ok(true)),
                Some(Ok(Reply::Acquire(AcquireReply::AlreadyMine))) => {
                    self.state = AcquireState::RefreshingSecond;
                    Step::Send(self.extend_on(Target::Destination))
                }
                // Undo like a release, source then destination: a backfill may
                // have copied our short-lived source key onto the destination
                // meanwhile, and only this order is sure to remove that copy.
                Some(Ok(Reply::Acquire(AcquireReply::Taken))) => {
                    self.roll_back(Ok(false), vec![Target::Source, Target::Destination])
                }
                Some(Err(error)) if error.retry_on_new_connection() => {
                    self.roll_back(Err(error), vec![Target::Source, Target::Destination])
                }
                Some(Err(error)) => {
                    self.roll_back(Err(error), vec![Target::Source, Target::Destination])
                }
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
