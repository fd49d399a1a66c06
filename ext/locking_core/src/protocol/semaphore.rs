//! Semaphores (DESIGN "Semaphores"): a lock with N places at one key, a
//! sorted set of token -> expiry on the server's clock. Each operation here
//! is a state machine over the same commands-and-replies seam as the lock's.
//!
//! Every phase runs: the two-server rules of phases 1 and 2 are in
//! `semaphore_across` (explored with the gates that count semaphore places,
//! `tests/semaphores.rs`).

use super::semaphore_across::{AcrossAcquire, AcrossRelease, AcrossRenew, SemaphoreRules};
use super::{unexpected, Command, Operation, Reply, Step, Target};
use crate::error::{Error, Result};
use crate::protocol::phase::Phase;

/// The most places a semaphore may have. The scripts' cost does not grow
/// with it (ZCARD is O(1)); it only bounds a typo.
pub const MAX_SEMAPHORE_LIMIT: u64 = 1_000_000;

/// A limit the core accepts: 1..=MAX_SEMAPHORE_LIMIT.
pub fn check_limit(limit: u64) -> Result<()> {
    if (1..=MAX_SEMAPHORE_LIMIT).contains(&limit) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "a semaphore's limit must be between 1 and {MAX_SEMAPHORE_LIMIT}, got {limit}"
        )))
    }
}

/// A place asked for: whose, for how long, and among how many (the limit,
/// which a renewal needs only for a place re-taken on the destination in
/// phase 1).
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub token: &'a [u8],
    pub ttl_ms: u64,
    pub limit: u64,
}

/// Take a place: true when this token holds one now (taken, or already its own).
pub type SemaphoreAcquire = AcrossAcquire;

impl SemaphoreAcquire {
    /// The product's rules.
    pub fn new(phase: Phase, token: &[u8], ttl_ms: u64, limit: u64) -> Self {
        AcrossAcquire::across(phase, SemaphoreRules::TwoServers, token, ttl_ms, limit)
    }

    pub fn with_rules(phase: Phase, rules: SemaphoreRules, place: Place<'_>) -> Self {
        AcrossAcquire::across(phase, rules, place.token, place.ttl_ms, place.limit)
    }
}

/// Give the token's place back: true when a live place was removed.
pub type SemaphoreRelease = AcrossRelease;

impl SemaphoreRelease {
    pub fn with_rules(phase: Phase, _rules: SemaphoreRules, token: &[u8]) -> Self {
        AcrossRelease::new(phase, token)
    }
}

/// A new TTL for the token's live place: false when it has none (expired,
/// released), which the holder must take as lost. The limit counts a place
/// re-taken on the destination in phase 1.
pub type SemaphoreRenew = AcrossRenew;

impl SemaphoreRenew {
    pub fn with_rules(phase: Phase, _rules: SemaphoreRules, place: Place<'_>) -> Self {
        AcrossRenew::new(phase, place.token, place.ttl_ms, place.limit)
    }
}

/// How many places are live now, on the server that counts every holder of
/// this phase and the ones next to it: the source in phases 0 and 1 (a
/// phase-1 place is on the source first), the destination in 2 and 3.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SemaphoreHolders {
    phase: Phase,
    sent: bool,
}

impl SemaphoreHolders {
    pub fn new(phase: Phase) -> Self {
        SemaphoreHolders { phase, sent: false }
    }
}

impl Operation for SemaphoreHolders {
    type Output = u64;
    fn step(&mut self, replies: Vec<Result<Reply>>) -> Step<u64> {
        if !self.sent {
            self.sent = true;
            let target = if self.phase <= Phase::Dual {
                Target::Source
            } else {
                Target::Destination
            };
            return Step::Send(vec![(target, Command::SemaphoreHolders)]);
        }
        match replies.into_iter().next() {
            Some(Ok(Reply::Count(count))) => Step::Done(Ok(count)),
            Some(Ok(other)) => unexpected("semaphore holders", &other),
            Some(Err(error)) => Step::Done(Err(error)),
            None => Step::Done(Err(Error::Internal(
                "a semaphore command got no reply".into(),
            ))),
        }
    }
}
