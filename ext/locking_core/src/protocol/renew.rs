//! Renew (DESIGN §3): extend our token wherever the phase may hold it.

use super::{release::Servers, unexpected, AcquireReply, Command, Operation, Reply, Step, Target};
use crate::error::{Error, Result};
use crate::protocol::phase::Phase;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RenewState {
    Start,
    /// Phases 0 and 1: the source answered; now the destination copy. In
    /// this order, never both at once: a backfill copying the lock meanwhile
    /// then either sees the source's new TTL in its re-check, or its copy
    /// exists before ours is extended. At once, a renewal that shortens the
    /// lock could miss the copy and land on the source after the re-check,
    /// leaving a copy that outlives the lock (the explorer's case).
    Copy,
    /// The copy's reply, after the source's.
    CopyExtended,
    /// Phases 2 and 3: destination and source at once.
    Extended,
    Mirrored,
    /// The copy appeared meanwhile (a backfill): reset its TTL to ours.
    Refreshed,
}

/// renew: CAX wherever the phase may hold the token; the answer comes from
/// the server that decides ownership in the phase (source in 0 and 1,
/// destination in 2 and 3). In phase 1 a lock from phase 0 has no destination
/// copy yet: renew adds it (as backfill would), so it meets the gate.
///
/// A lock with no source copy renewed in phase 1 (taken in phase 2, renewed
/// after a rollback to 1) reports lost. Re-taking the source instead looks
/// harmless but is not: the explorer finds two holders when a stale backfill
/// wrote the destination copy that this renew then extends, and later removes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Renew {
    phase: Phase,
    token: Vec<u8>,
    ttl_ms: u64,
    servers: Servers,
    state: RenewState,
}

impl Renew {
    pub fn new(phase: Phase, token: &[u8], ttl_ms: u64, servers: Servers) -> Self {
        Renew {
            phase,
            token: token.to_vec(),
            ttl_ms,
            servers,
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
        let flag = |reply: Option<Result<Reply>>| match reply {
            Some(Ok(Reply::Flag(flag))) => Ok(flag),
            Some(Ok(other)) => Err(unexpected("compare-and-extend", &other)),
            Some(Err(error)) => Err(Step::Done(Err(error))),
            None => Err(Step::Done(Err(Error::Internal(
                "renew lost its reply".into(),
            )))),
        };
        match self.state {
            RenewState::Start => match self.phase {
                Phase::Source | Phase::Dual => {
                    self.state = RenewState::Copy;
                    Step::Send(vec![self.extend(Target::Source)])
                }
                Phase::Drain | Phase::Destination => {
                    self.state = RenewState::Extended;
                    let mut batch = vec![self.extend(Target::Destination)];
                    if self.phase == Phase::Drain || self.servers.source {
                        batch.push(self.extend(Target::Source));
                    }
                    Step::Send(batch)
                }
            },
            RenewState::Copy => {
                let held = match flag(replies.into_iter().next()) {
                    Ok(held) => held,
                    Err(step) => return step,
                };
                // Lost where it is decided: a copy is left to its TTL.
                if !held || !self.servers.destination {
                    return Step::Done(Ok(held));
                }
                self.state = RenewState::CopyExtended;
                Step::Send(vec![self.extend(Target::Destination)])
            }
            RenewState::CopyExtended => {
                let copy = match (flag(replies.into_iter().next()), self.phase) {
                    (Ok(copy), _) => copy,
                    // Phase 0 keeps the destination up to date on a best-effort basis.
                    (Err(_), Phase::Source) => true,
                    (Err(step), _) => return step,
                };
                // Phase 1 writes both servers: a lock from phase 0 has no
                // destination copy yet, so renew adds it (as backfill would),
                // unless someone else holds it, which means the lock was lost.
                if self.phase == Phase::Dual && !copy {
                    self.state = RenewState::Mirrored;
                    return Step::Send(vec![(
                        Target::Destination,
                        Command::Acquire {
                            token: self.token.clone(),
                            ttl_ms: self.ttl_ms,
                        },
                    )]);
                }
                Step::Done(Ok(true))
            }
            RenewState::Extended => {
                let mut replies = replies.into_iter();
                // The destination decides ownership in phases 2 and 3.
                let held = match flag(replies.next()) {
                    Ok(held) => held,
                    Err(step) => return step,
                };
                // The source: required in phase 2, best-effort in phase 3.
                match flag(replies.next()) {
                    Err(step) if self.phase == Phase::Drain => step,
                    _ => Step::Done(Ok(held)),
                }
            }
            RenewState::Mirrored => match replies.into_iter().next() {
                Some(Ok(Reply::Acquire(AcquireReply::Set))) => Step::Done(Ok(true)),
                Some(Ok(Reply::Acquire(AcquireReply::AlreadyMine))) => {
                    self.state = RenewState::Refreshed;
                    Step::Send(vec![self.extend(Target::Destination)])
                }
                Some(Ok(Reply::Acquire(AcquireReply::Taken))) => Step::Done(Ok(false)),
                Some(Ok(other)) => unexpected("acquire", &other),
                Some(Err(error)) => Step::Done(Err(error)),
                None => Step::Done(Err(Error::Internal("renew lost its reply".into()))),
            },
            // The answer was settled by the source; the copy follows if it can.
            RenewState::Refreshed => match replies.into_iter().next() {
                Some(Err(error)) => Step::Done(Err(error)),
                _ => Step::Done(Ok(true)),
            },
        }
    }
}
