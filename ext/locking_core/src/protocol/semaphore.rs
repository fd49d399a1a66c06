//! Semaphores (DESIGN "Semaphores"): a lock with N places at one key, a
//! sorted set of token -> expiry on the server's clock. Each operation here
//! is a state machine over the same commands-and-replies seam as the lock's.
//!
//! Only the one-server phases run: 0 (source) and 3 (destination). The
//! two-server protocol of phases 1 and 2 is designed (DESIGN) but not yet
//! explored, so every operation refuses there rather than run unproven.

use super::semaphore_across::{AcrossAcquire, AcrossRelease, AcrossRenew, SemaphoreRules};
use super::{unexpected, AcquireReply, Command, Operation, Reply, Step, Target};
use crate::error::{Error, Result};
use crate::protocol::phase::Phase;

/// The most places a semaphore may have. The scripts' cost does not grow
/// with it (ZCARD is O(1)); it only bounds a typo.
pub const MAX_SEMAPHORE_LIMIT: u64 = 1_000_000;

/// The refusal of phases 1 and 2, in the words the Ruby API shows.
pub const NOT_PROVEN: &str =
    "semaphores are not yet proven across a migration; use them in phase 0 or 3";

/// The one server a semaphore lives on in `phase`, or the refusal.
pub fn semaphore_server(phase: Phase) -> Result<Target> {
    match phase {
        Phase::Source => Ok(Target::Source),
        Phase::Destination => Ok(Target::Destination),
        Phase::Dual | Phase::Drain => Err(Error::Phase(format!(
            "{NOT_PROVEN} (this process is in phase {})",
            phase.index()
        ))),
    }
}

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

/// One command on the phase's one server, then its reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OneServer {
    phase: Phase,
    command: Command,
    sent: bool,
}

/// Where a `OneServer` is: its command to send, or the answer.
enum Progress {
    Send(Vec<(Target, Command)>),
    Answer(Result<Reply>),
}

impl OneServer {
    fn new(phase: Phase, command: Command) -> Self {
        OneServer {
            phase,
            command,
            sent: false,
        }
    }

    fn step(&mut self, replies: Vec<Result<Reply>>) -> Progress {
        if !self.sent {
            self.sent = true;
            return match semaphore_server(self.phase) {
                Ok(target) => Progress::Send(vec![(target, self.command.clone())]),
                Err(error) => Progress::Answer(Err(error)),
            };
        }
        Progress::Answer(
            replies
                .into_iter()
                .next()
                .unwrap_or_else(|| Err(Error::Internal("a semaphore command got no reply".into()))),
        )
    }
}

/// Runs `one` a step; its reply is read by `answer`.
fn step_with<T>(
    one: &mut OneServer,
    replies: Vec<Result<Reply>>,
    answer: impl FnOnce(Reply) -> Step<T>,
) -> Step<T> {
    match one.step(replies) {
        Progress::Send(batch) => Step::Send(batch),
        Progress::Answer(Ok(reply)) => answer(reply),
        Progress::Answer(Err(error)) => Step::Done(Err(error)),
    }
}

/// A semaphore operation under its rules: one command on the phase's one
/// server, its reply read as `OneAnswer` says, or the two-server state
/// machine `A` (`semaphore_across`, explored, not yet run by the product).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ruled<A> {
    One(OneServer, OneAnswer),
    Across(A),
}

/// How a one-server semaphore command's reply reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OneAnswer {
    /// Taken or already its own: true; all places taken: false.
    Acquire,
    /// The script's flag, for the operation named.
    Flag(&'static str),
}

impl OneAnswer {
    fn read(self, reply: Reply) -> Step<bool> {
        match (self, reply) {
            (OneAnswer::Acquire, Reply::Acquire(AcquireReply::Set | AcquireReply::AlreadyMine)) => {
                Step::Done(Ok(true))
            }
            (OneAnswer::Acquire, Reply::Acquire(AcquireReply::Taken)) => Step::Done(Ok(false)),
            (OneAnswer::Acquire, other) => unexpected("semaphore acquire", &other),
            (OneAnswer::Flag(_), Reply::Flag(flag)) => Step::Done(Ok(flag)),
            (OneAnswer::Flag(what), other) => unexpected(what, &other),
        }
    }
}

impl<A: Operation<Output = bool>> Operation for Ruled<A> {
    type Output = bool;
    fn step(&mut self, replies: Vec<Result<Reply>>) -> Step<bool> {
        match self {
            Ruled::One(one, answer) => {
                let answer = *answer;
                step_with(one, replies, move |reply| answer.read(reply))
            }
            Ruled::Across(across) => across.step(replies),
        }
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
pub type SemaphoreAcquire = Ruled<AcrossAcquire>;

impl SemaphoreAcquire {
    pub fn new(phase: Phase, token: &[u8], ttl_ms: u64, limit: u64) -> Self {
        let place = Place {
            token,
            ttl_ms,
            limit,
        };
        Self::with_rules(phase, SemaphoreRules::OneServer, place)
    }

    pub fn with_rules(phase: Phase, rules: SemaphoreRules, place: Place<'_>) -> Self {
        match rules {
            SemaphoreRules::OneServer => {
                let command = Command::SemaphoreAcquire {
                    token: place.token.to_vec(),
                    ttl_ms: place.ttl_ms,
                    limit: place.limit,
                };
                Ruled::One(OneServer::new(phase, command), OneAnswer::Acquire)
            }
            rules => Ruled::Across(AcrossAcquire::new(
                phase,
                rules,
                place.token,
                place.ttl_ms,
                place.limit,
            )),
        }
    }
}

/// Give the token's place back: true when a live place was removed.
pub type SemaphoreRelease = Ruled<AcrossRelease>;

impl SemaphoreRelease {
    pub fn new(phase: Phase, token: &[u8]) -> Self {
        Self::with_rules(phase, SemaphoreRules::OneServer, token)
    }

    pub fn with_rules(phase: Phase, rules: SemaphoreRules, token: &[u8]) -> Self {
        match rules {
            SemaphoreRules::OneServer => {
                let command = Command::SemaphoreRelease {
                    token: token.to_vec(),
                };
                Ruled::One(
                    OneServer::new(phase, command),
                    OneAnswer::Flag("semaphore release"),
                )
            }
            _ => Ruled::Across(AcrossRelease::new(phase, token)),
        }
    }
}

/// A new TTL for the token's live place: false when it has none (expired,
/// released), which the holder must take as lost.
pub type SemaphoreRenew = Ruled<AcrossRenew>;

impl SemaphoreRenew {
    pub fn new(phase: Phase, token: &[u8], ttl_ms: u64) -> Self {
        let command = Command::SemaphoreRenew {
            token: token.to_vec(),
            ttl_ms,
        };
        Ruled::One(
            OneServer::new(phase, command),
            OneAnswer::Flag("semaphore renew"),
        )
    }

    pub fn with_rules(phase: Phase, rules: SemaphoreRules, place: Place<'_>) -> Self {
        let (token, ttl_ms) = (place.token, place.ttl_ms);
        match rules {
            SemaphoreRules::OneServer => Self::new(phase, token, ttl_ms),
            _ => Ruled::Across(AcrossRenew::new(phase, token, ttl_ms, place.limit)),
        }
    }
}

/// How many places are live now.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SemaphoreHolders(OneServer);

impl SemaphoreHolders {
    pub fn new(phase: Phase) -> Self {
        SemaphoreHolders(OneServer::new(phase, Command::SemaphoreHolders))
    }
}

impl Operation for SemaphoreHolders {
    type Output = u64;
    fn step(&mut self, replies: Vec<Result<Reply>>) -> Step<u64> {
        step_with(&mut self.0, replies, |reply| match reply {
            Reply::Count(count) => Step::Done(Ok(count)),
            other => unexpected("semaphore holders", &other),
        })
    }
}
