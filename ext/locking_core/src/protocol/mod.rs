//! The lock protocol of DESIGN §3 as plain state machines.
//!
//! An operation never talks to Redis itself: each `step` either asks its driver
//! to send a batch of single-key commands (the commands of one batch may run at
//! once, on different servers) or finishes with a result. The same operations
//! run against real servers (`crate::client`) and against the in-memory model
//! (`crate::protocol::model`) that the interleaving tests explore.

pub mod belief;
pub mod fleet;
pub mod memory;
pub mod model;
pub mod phase;
pub mod store;

use crate::error::{Error, Result};
use crate::protocol::phase::Phase;

/// The longest TTL a lock may ask for: in nanoseconds it still fits an i64.
pub const MAX_TTL_MS: u64 = i64::MAX as u64 / 1_000_000;

/// Which server a command goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Source,
    Destination,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Source => "source",
            Target::Destination => "destination",
        }
    }
}

/// A single-key command; the key is the operation's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
    /// Backfill: value and TTL, read atomically; only string keys count.
    ReadWithTtl,
    /// Backfill: set a copy unless the key exists (like `Acquire`, with the
    /// source's value and TTL; `None` = no expiry).
    Mirror { value: Vec<u8>, ttl_ms: Option<u64> },
    /// Backfill: raise the TTL while the key holds the value; never shorten it.
    ExtendIfGreater { token: Vec<u8>, ttl_ms: u64 },
}

/// A string key's value and remaining TTL (`None`: no expiry).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    pub value: Vec<u8>,
    pub ttl_ms: Option<u64>,
    /// When it expires, on the server's own clock (ms), at the earliest and
    /// at the latest: two reads of one key tell whether its expiry moved,
    /// whatever time passed between them. A read knows the server's time only
    /// to within the transaction it ran in (TIME before and after it: Redis 7
    /// freezes the clock of PTTL at the transaction's start, 6.2 does not).
    pub expires_at_ms: Option<u64>,
    pub expires_by_ms: Option<u64>,
}

impl Entry {
    /// From a `PTTL` (-1: no expiry) read at the server's time `now_ms`.
    pub fn read_at(value: Vec<u8>, pttl: i64, now_ms: u64) -> Entry {
        Entry::read_between(value, pttl, now_ms, now_ms)
    }

    /// From a `PTTL` read between the server's times `after_ms` and `before_ms`.
    pub fn read_between(value: Vec<u8>, pttl: i64, after_ms: u64, before_ms: u64) -> Entry {
        let ttl_ms = u64::try_from(pttl).ok();
        Entry {
            value,
            ttl_ms,
            expires_at_ms: ttl_ms.map(|ttl| after_ms + ttl),
            expires_by_ms: ttl_ms.map(|ttl| before_ms.max(after_ms) + ttl),
        }
    }

    /// Whether `self`, read later, surely expires sooner than `earlier` did:
    /// a renewal shortened the lock in between. Its latest possible expiry
    /// against the earlier read's earliest (TIME and PTTL also round to the
    /// millisecond, hence 2 ms of slack). A shortening smaller than that
    /// window goes unseen: the copy then outlives its lock by at most the
    /// length of one read transaction (a few ms).
    fn expires_sooner_than(&self, earlier: &Entry) -> bool {
        match (self.expires_by_ms, earlier.expires_at_ms) {
            (Some(_), None) => true,
            (Some(now), Some(before)) => now + 2 < before,
            _ => false,
        }
    }
}

/// What an `Acquire` command found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AcquireReply {
    /// The key was absent and now holds our token.
    Set,
    /// The key already held our token (a retry after a lost reply).
    AlreadyMine,
    /// Another token holds the key.
    Taken,
}

/// Remaining lifetime of a token's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenTtl {
    /// The key is absent or holds another token.
    NotHeld,
    /// The key holds the token and has no expiry.
    Forever,
    Millis(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reply {
    Acquire(AcquireReply),
    Flag(bool),
    Ttl(TokenTtl),
    Entry(Option<Entry>),
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

/// An operation borrowed, so its driver can ask it questions afterwards.
impl<O: Operation> Operation for &mut O {
    type Output = O::Output;
    fn step(&mut self, replies: Vec<Result<Reply>>) -> Step<Self::Output> {
        (**self).step(replies)
    }
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

// ---------------------------------------------------------------- release

/// Release: CAD wherever the phase may hold the key, which is every configured
/// server: a lock taken in phase 1 lives on both, and may be released by a
/// process in phase 0 (rolling out, or rolling back) or phase 2.
/// Phases 0 and 1 go source first, then destination: a backfill racing the
/// release could otherwise copy the lock back onto the destination after it
/// was deleted there (backfill runs only before phase 2). Phases 2 and 3 ask
/// both at once.
///
/// The server a phase does not write (the destination in phase 0, the source
/// in phase 3) is cleaned up on a best-effort basis: it can hold only a copy
/// left from the neighbouring phase, and that copy expires with its TTL. An
/// error there is not the release's error: a job whose lock was freed where
/// its phase decides must not fail because a server it does not use is down.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Release {
    batches: Vec<Vec<Target>>,
    /// The server whose errors are ignored (see above), if any.
    best_effort: Option<Target>,
    /// The batch sent last, to match replies to servers.
    sent: Vec<Target>,
    token: Vec<u8>,
    deleted: bool,
    started: bool,
    cleanup_failed: bool,
}

/// Which servers are configured, for operations that clean up on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Servers {
    pub source: bool,
    pub destination: bool,
}

impl Servers {
    pub const BOTH: Servers = Servers {
        source: true,
        destination: true,
    };

    /// Without the server `phase` does not use (the destination in phase 0,
    /// the source in phase 3): it can hold only a copy left from the
    /// neighbouring phase, which expires with its TTL.
    pub fn used_by(self, phase: Phase) -> Servers {
        Servers {
            source: self.source && phase != Phase::Destination,
            destination: self.destination && phase != Phase::Source,
        }
    }
}

impl Release {
    pub fn new(phase: Phase, token: &[u8], servers: Servers) -> Self {
        let batches = match phase {
            Phase::Source | Phase::Dual if servers.destination => {
                vec![vec![Target::Source], vec![Target::Destination]]
            }
            Phase::Source | Phase::Dual => vec![vec![Target::Source]],
            Phase::Drain | Phase::Destination if servers.source => {
                vec![vec![Target::Destination, Target::Source]]
            }
            Phase::Drain | Phase::Destination => vec![vec![Target::Destination]],
        };
        let best_effort = match phase {
            Phase::Source => Some(Target::Destination),
            Phase::Destination => Some(Target::Source),
            Phase::Dual | Phase::Drain => None,
        };
        Release {
            batches,
            best_effort,
            sent: Vec::new(),
            token: token.to_vec(),
            deleted: false,
            started: false,
            cleanup_failed: false,
        }
    }

    /// Whether a best-effort cleanup failed (the driver backs off from that server).
    pub fn cleanup_failed(&self) -> Option<Target> {
        if self.cleanup_failed {
            self.best_effort
        } else {
            None
        }
    }
}

impl Operation for Release {
    type Output = bool;

    fn step(&mut self, replies: Vec<Result<Reply>>) -> Step<bool> {
        if self.started {
            for (reply, target) in replies.into_iter().zip(&self.sent) {
                match reply {
                    Ok(Reply::Flag(deleted)) => self.deleted |= deleted,
                    Ok(other) => return unexpected("compare-and-delete", &other),
                    Err(_) if self.best_effort == Some(*target) => self.cleanup_failed = true,
                    Err(error) => return Step::Done(Err(error)),
                }
            }
        }
        self.started = true;
        if self.batches.is_empty() {
            return Step::Done(Ok(self.deleted));
        }
        self.sent = self.batches.remove(0);
        Step::Send(
            self.sent
                .iter()
                .map(|target| {
                    (
                        *target,
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

// ---------------------------------------------------------------- ttl

/// Remaining TTL of our lock on the server that decides ownership in the phase.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

// ---------------------------------------------------------------- backfill

/// What one backfill step did to one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackfillOutcome {
    /// No string lock on the source (gone, or not a lock key's type): nothing to do.
    Absent,
    /// The destination now has the source's value.
    Copied,
    /// The destination already had the source's value (its TTL was raised if needed).
    AlreadyThere,
    /// The destination holds another token for this key: left alone.
    Conflict,
    /// The source changed while we copied: our copy was removed again.
    Undone,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum BackfillState {
    Start,
    Read,
    Mirrored {
        entry: Entry,
    },
    Rechecked {
        entry: Entry,
        wrote: bool,
    },
    /// The copy's TTL was asked to rise to the re-check's.
    Raised {
        outcome: BackfillOutcome,
        recheck: Entry,
    },
    /// After a raise, the source read once more.
    FinalCheck {
        outcome: BackfillOutcome,
        recheck: Entry,
    },
    Finishing(BackfillOutcome),
}

/// Mirrors one source lock onto the destination (DESIGN §3): read value+TTL
/// on the source atomically, `SET NX` on the destination, re-read the source;
/// if the source no longer holds the value, delete our copy (compare-and-
/// delete); if the source's TTL grew meanwhile, raise the copy's TTL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backfill {
    state: BackfillState,
    rule: CopyTtlRule,
}

/// Which TTL the copy is raised to after the re-check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CopyTtlRule {
    /// The re-check's: the source's latest TTL.
    Recheck,
    /// The longer of the first read's and the re-check's. Wrong: it undoes a
    /// renewal that shortened the lock meanwhile. Kept for the explorer's
    /// negative control only.
    LongestRead,
}

impl Backfill {
    pub fn new() -> Self {
        Backfill::with_rule(CopyTtlRule::Recheck)
    }

    pub fn with_rule(rule: CopyTtlRule) -> Self {
        Backfill {
            state: BackfillState::Start,
            rule,
        }
    }
}

impl Default for Backfill {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether TTL `a` outlives `b` (`None` = no expiry).
fn ttl_longer(a: Option<u64>, b: Option<u64>) -> bool {
    match (a, b) {
        (None, Some(_)) => true,
        (Some(a), Some(b)) => a > b,
        _ => false,
    }
}

impl Operation for Backfill {
    type Output = BackfillOutcome;

    fn step(&mut self, replies: Vec<Result<Reply>>) -> Step<BackfillOutcome> {
        let reply = replies.into_iter().next();
        match std::mem::replace(&mut self.state, BackfillState::Start) {
            BackfillState::Start => {
                self.state = BackfillState::Read;
                Step::Send(vec![(Target::Source, Command::ReadWithTtl)])
            }
            BackfillState::Read => match reply {
                Some(Ok(Reply::Entry(None))) => Step::Done(Ok(BackfillOutcome::Absent)),
                // Read in its last millisecond: expiring, nothing to copy
                // (and `SET .. PX 0` is refused by Redis).
                Some(Ok(Reply::Entry(Some(entry)))) if entry.ttl_ms == Some(0) => {
                    Step::Done(Ok(BackfillOutcome::Absent))
                }
                Some(Ok(Reply::Entry(Some(entry)))) => {
                    let command = Command::Mirror {
                        value: entry.value.clone(),
                        ttl_ms: entry.ttl_ms,
                    };
                    self.state = BackfillState::Mirrored { entry };
                    Step::Send(vec![(Target::Destination, command)])
                }
                Some(Ok(other)) => unexpected("read with ttl", &other),
                Some(Err(error)) => Step::Done(Err(error)),
                None => Step::Done(Err(Error::Internal("backfill lost its reply".into()))),
            },
            BackfillState::Mirrored { entry } => {
                let wrote = match reply {
                    Some(Ok(Reply::Acquire(AcquireReply::Set))) => true,
                    Some(Ok(Reply::Acquire(AcquireReply::AlreadyMine))) => false,
                    Some(Ok(Reply::Acquire(AcquireReply::Taken))) => {
                        return Step::Done(Ok(BackfillOutcome::Conflict))
                    }
                    Some(Ok(other)) => return unexpected("mirror", &other),
                    Some(Err(error)) => return Step::Done(Err(error)),
                    None => {
                        return Step::Done(Err(Error::Internal("backfill lost its reply".into())))
                    }
                };
                self.state = BackfillState::Rechecked { entry, wrote };
                Step::Send(vec![(Target::Source, Command::ReadWithTtl)])
            }
            BackfillState::Rechecked { entry, wrote } => {
                let now = match reply {
                    Some(Ok(Reply::Entry(now))) => now,
                    Some(Ok(other)) => return unexpected("read with ttl", &other),
                    Some(Err(error)) => return Step::Done(Err(error)),
                    None => {
                        return Step::Done(Err(Error::Internal("backfill lost its reply".into())))
                    }
                };
                // Our copy was written with the first read's TTL. If a renewal
                // shortened the lock since, the copy would outlive it: delete it
                // (the lock stays source-only, which the gate sees, and the next
                // backfill copies it with its new TTL). Deleting a copy is safe
                // in phases 0 and 1, where the source decides.
                let shortened = now
                    .as_ref()
                    .is_some_and(|now| now.expires_sooner_than(&entry));
                let stale_copy = wrote && shortened && self.rule == CopyTtlRule::Recheck;
                match now {
                    Some(now)
                        if now.value == entry.value && now.ttl_ms != Some(0) && !stale_copy =>
                    {
                        let outcome = if wrote {
                            BackfillOutcome::Copied
                        } else {
                            BackfillOutcome::AlreadyThere
                        };
                        // The copy must not expire before the source: follow a
                        // renewal since our first read, or an older, shorter
                        // copy. The target is the re-check's TTL, the source's
                        // latest: the first read's may predate a renewal that
                        // shortened the lock (raising the copy to it would keep
                        // the key locked long after its holder is gone).
                        // Never lower: a renewal after the re-check may have
                        // extended the copy already.
                        let target = match self.rule {
                            CopyTtlRule::Recheck => now.ttl_ms,
                            CopyTtlRule::LongestRead if ttl_longer(entry.ttl_ms, now.ttl_ms) => {
                                entry.ttl_ms
                            }
                            CopyTtlRule::LongestRead => now.ttl_ms,
                        };
                        match target {
                            Some(ttl_ms) if !wrote || ttl_longer(now.ttl_ms, entry.ttl_ms) => {
                                self.state = match self.rule {
                                    CopyTtlRule::Recheck => BackfillState::Raised {
                                        outcome,
                                        recheck: now.clone(),
                                    },
                                    CopyTtlRule::LongestRead => BackfillState::Finishing(outcome),
                                };
                                Step::Send(vec![(
                                    Target::Destination,
                                    Command::ExtendIfGreater {
                                        token: entry.value,
                                        ttl_ms,
                                    },
                                )])
                            }
                            _ => Step::Done(Ok(outcome)),
                        }
                    }
                    _ if wrote => {
                        self.state = BackfillState::Finishing(BackfillOutcome::Undone);
                        Step::Send(vec![(
                            Target::Destination,
                            Command::CompareAndDelete { token: entry.value },
                        )])
                    }
                    _ => Step::Done(Ok(BackfillOutcome::Absent)),
                }
            }
            // A raise is a write based on a read: a renewal that shortened the
            // lock after the re-check, and reached the copy before the raise,
            // would be undone by it. The renewal writes the source first, so
            // one more read of the source tells; then the copy goes (the lock
            // is source-only again, which the gate sees).
            BackfillState::Raised { outcome, recheck } => match reply {
                Some(Err(error)) => Step::Done(Err(error)),
                Some(Ok(Reply::Flag(true))) => {
                    self.state = BackfillState::FinalCheck { outcome, recheck };
                    Step::Send(vec![(Target::Source, Command::ReadWithTtl)])
                }
                _ => Step::Done(Ok(outcome)),
            },
            BackfillState::FinalCheck { outcome, recheck } => {
                let last = match reply {
                    Some(Ok(Reply::Entry(last))) => last,
                    Some(Ok(other)) => return unexpected("read with ttl", &other),
                    Some(Err(error)) => return Step::Done(Err(error)),
                    None => {
                        return Step::Done(Err(Error::Internal("backfill lost its reply".into())))
                    }
                };
                let still = last.is_some_and(|last| {
                    last.value == recheck.value
                        && last.ttl_ms != Some(0)
                        && !last.expires_sooner_than(&recheck)
                });
                if still {
                    return Step::Done(Ok(outcome));
                }
                self.state = BackfillState::Finishing(BackfillOutcome::Undone);
                Step::Send(vec![(
                    Target::Destination,
                    Command::CompareAndDelete {
                        token: recheck.value,
                    },
                )])
            }
            BackfillState::Finishing(outcome) => match reply {
                Some(Err(error)) => Step::Done(Err(error)),
                _ => Step::Done(Ok(outcome)),
            },
        }
    }
}

// ---------------------------------------------------------------- gate

/// Whether moving the fleet from phase 1 to phase 2 is safe, and if not why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    pub open: bool,
    pub reasons: Vec<String>,
}

/// The gate of DESIGN §3: no process still in phase 0, and no lock that lives
/// on the source only (a backfill mirrors them, or they expire).
pub fn gate(processes_in_phase_0: usize, source_only_locks: u64) -> Gate {
    let mut reasons = Vec::new();
    if source_only_locks > 0 {
        reasons.push(format!(
            "{} lock(s) live on the source only: run `locking backfill`, or wait for their TTLs",
            grouped(source_only_locks)
        ));
    }
    if processes_in_phase_0 > 0 {
        reasons.push(format!(
            "{processes_in_phase_0} process(es) still in phase 0 (source): they write the source only"
        ));
    }
    Gate {
        open: reasons.is_empty(),
        reasons,
    }
}

/// The reverse gate, before rolling back from phase 1 to 0: no lock that
/// lives on the destination only. Such a lock was taken in phase 2, and a
/// process in phase 0 looks at the source only: it would take the lock again.
pub fn reverse_gate(destination_only_locks: u64) -> Gate {
    let mut reasons = Vec::new();
    if destination_only_locks > 0 {
        reasons.push(format!(
            "{} lock(s) live on the destination only (taken in phase 2): a process in phase 0 \
             would not see them; wait for their TTLs",
            grouped(destination_only_locks)
        ));
    }
    Gate {
        open: reasons.is_empty(),
        reasons,
    }
}

/// A count with thousands separators: 2,000,000.
pub fn grouped(count: u64) -> String {
    let digits = count.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::model::{MemoryStore, ModelStore, Stored};
    use crate::protocol::store::run;

    #[test]
    fn a_key_that_gained_a_ttl_since_the_first_read_expires_sooner() {
        let entry = |at: Option<u64>| Entry {
            value: b"t".to_vec(),
            ttl_ms: at.map(|at| at - 1_000),
            expires_at_ms: at,
            expires_by_ms: at.map(|at| at + 1),
        };
        // No TTL at the first read, one now (a PERSISTed lock renewed): the
        // copy, written without a TTL, would outlive it.
        assert!(entry(Some(10_000)).expires_sooner_than(&entry(None)));
        assert!(!entry(None).expires_sooner_than(&entry(Some(10_000))));
        assert!(!entry(None).expires_sooner_than(&entry(None)));
        assert!(entry(Some(5_000)).expires_sooner_than(&entry(Some(10_000))));
        assert!(!entry(Some(10_000)).expires_sooner_than(&entry(Some(10_000))));
    }

    fn held(value: &str) -> MemoryStore {
        MemoryStore {
            key: Some(Stored {
                value: value.as_bytes().to_vec(),
                expires_at: Some(100),
            }),
        }
    }

    #[test]
    fn a_read_in_a_long_transaction_does_not_look_like_a_renewal() {
        // Found by the backfill benchmark: 145 of 1,000,000 copies undone on a
        // source nobody touched. A page of 1,000 keys read in one transaction
        // took 10 ms; Redis 7 measured its PTTLs at the start, and the TIME at
        // its end made the key look 10 ms longer-lived than the single-key
        // re-check did, so the re-check looked like a shortening renewal.
        let ttl = 600_000;
        let first = Entry::read_between(b"t".to_vec(), ttl, 1_000, 1_010);
        let recheck = Entry::read_at(b"t".to_vec(), ttl - 11, 1_011);
        assert!(!recheck.expires_sooner_than(&first));
        // A real shortening, beyond the window, is still seen.
        let renewed = Entry::read_at(b"t".to_vec(), 5_000, 1_011);
        assert!(renewed.expires_sooner_than(&first));
    }

    fn value(store: &MemoryStore) -> Option<String> {
        store
            .key
            .as_ref()
            .map(|s| String::from_utf8_lossy(&s.value).into_owned())
    }

    fn go<O: Operation>(op: O, s: &mut MemoryStore, d: &mut MemoryStore) -> Result<O::Output> {
        run(
            op,
            b"k",
            Some(&mut ModelStore { store: s, now: 0 }),
            Some(&mut ModelStore { store: d, now: 0 }),
        )
    }

    #[test]
    fn dual_acquire_writes_both_and_rolls_back_the_source_when_destination_is_taken() {
        let (mut s, mut d) = (MemoryStore::default(), MemoryStore::default());
        assert_eq!(
            go(Acquire::new(Phase::Dual, b"a", 10), &mut s, &mut d),
            Ok(true)
        );
        assert_eq!((value(&s), value(&d)), (Some("a".into()), Some("a".into())));

        let (mut s, mut d) = (MemoryStore::default(), held("other"));
        assert_eq!(
            go(Acquire::new(Phase::Dual, b"a", 10), &mut s, &mut d),
            Ok(false)
        );
        assert_eq!((value(&s), value(&d)), (None, Some("other".into())));
    }

    #[test]
    fn acquire_is_idempotent_for_the_same_token() {
        let (mut s, mut d) = (held("a"), held("a"));
        for phase in Phase::ALL {
            assert_eq!(go(Acquire::new(phase, b"a", 10), &mut s, &mut d), Ok(true));
        }
    }

    #[test]
    fn a_retry_answered_already_mine_resets_the_ttl() {
        for phase in Phase::ALL {
            let (mut s, mut d) = (held("a"), held("a"));
            let mut s_store = ModelStore {
                store: &mut s,
                now: 90,
            };
            let mut d_store = ModelStore {
                store: &mut d,
                now: 90,
            };
            let result = run(
                Acquire::new(phase, b"a", 50),
                b"k",
                Some(&mut s_store),
                Some(&mut d_store),
            );
            assert_eq!(result, Ok(true), "{phase}");
            let primary = if phase.uses_destination() && phase != Phase::Dual {
                &d
            } else {
                &s
            };
            assert_eq!(
                primary.key.as_ref().and_then(|k| k.expires_at),
                Some(140),
                "{phase}"
            );
        }
    }

    #[test]
    fn backfill_skips_a_key_read_in_its_last_millisecond() {
        let mut op = Backfill::new();
        assert!(matches!(op.step(Vec::new()), Step::Send(_)));
        let expiring = Entry::read_at(b"a".to_vec(), 0, 1_000);
        match op.step(vec![Ok(Reply::Entry(Some(expiring)))]) {
            Step::Done(Ok(BackfillOutcome::Absent)) => {}
            other => panic!("expected Absent, got {}", matches!(other, Step::Send(_))),
        }
    }

    #[test]
    fn release_cleans_every_configured_server_and_only_our_token() {
        for phase in Phase::ALL {
            let (mut s, mut d) = (held("a"), held("a"));
            assert_eq!(
                go(Release::new(phase, b"a", Servers::BOTH), &mut s, &mut d),
                Ok(true)
            );
            assert_eq!((value(&s), value(&d)), (None, None), "{phase}");

            let (mut s, mut d) = (held("b"), held("b"));
            assert_eq!(
                go(Release::new(phase, b"a", Servers::BOTH), &mut s, &mut d),
                Ok(false)
            );
            assert_eq!((value(&s), value(&d)), (Some("b".into()), Some("b".into())));
        }
    }

    /// A server that is down: every command fails to connect.
    struct Down;

    impl crate::protocol::store::Store for Down {
        fn execute(&mut self, _key: &[u8], _command: &Command) -> Result<Reply> {
            Err(Error::Connection {
                server: "redis://down".into(),
                detail: "connection refused".into(),
            })
        }
    }

    #[test]
    fn a_server_the_phase_does_not_write_is_cleaned_up_on_a_best_effort_basis() {
        // Phase 0 with the destination down: the source copy is deleted and the
        // release succeeds; the failed cleanup is reported to the driver.
        let mut s = held("a");
        let mut op = Release::new(Phase::Source, b"a", Servers::BOTH);
        let result = run(
            &mut op,
            b"k",
            Some(&mut ModelStore {
                store: &mut s,
                now: 0,
            }),
            Some(&mut Down),
        );
        assert_eq!(result, Ok(true));
        assert_eq!(value(&s), None);
        assert_eq!(op.cleanup_failed(), Some(Target::Destination));

        // Phase 3 with the source down, likewise.
        let mut d = held("a");
        let mut op = Release::new(Phase::Destination, b"a", Servers::BOTH);
        let result = run(
            &mut op,
            b"k",
            Some(&mut Down),
            Some(&mut ModelStore {
                store: &mut d,
                now: 0,
            }),
        );
        assert_eq!((result, value(&d)), (Ok(true), None));

        // Phases 1 and 2 write both servers: an error on either is the release's.
        for phase in [Phase::Dual, Phase::Drain] {
            let mut s = held("a");
            let result = run(
                Release::new(phase, b"a", Servers::BOTH),
                b"k",
                Some(&mut ModelStore {
                    store: &mut s,
                    now: 0,
                }),
                Some(&mut Down),
            );
            assert!(matches!(result, Err(Error::Connection { .. })), "{phase}");
        }

        // Renew in phase 0 answers from the source even when the destination is down.
        let mut s = held("a");
        let result = run(
            Renew::new(Phase::Source, b"a", 50, Servers::BOTH),
            b"k",
            Some(&mut ModelStore {
                store: &mut s,
                now: 0,
            }),
            Some(&mut Down),
        );
        assert_eq!(result, Ok(true));
        assert_eq!(s.key.as_ref().and_then(|k| k.expires_at), Some(50));
    }

    #[test]
    fn a_missing_server_is_an_error_not_an_answer() {
        let mut s = MemoryStore::default();
        let result = run(
            Locked::new(Phase::Dual),
            b"k",
            Some(&mut ModelStore {
                store: &mut s,
                now: 0,
            }),
            None,
        );
        assert!(matches!(result, Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn backfill_copies_and_follows_ttl() {
        let (mut s, mut d) = (held("a"), MemoryStore::default());
        assert_eq!(
            go(Backfill::new(), &mut s, &mut d),
            Ok(BackfillOutcome::Copied)
        );
        assert_eq!(value(&d), Some("a".into()));
        assert_eq!(d.key.as_ref().and_then(|k| k.expires_at), Some(100));
        assert_eq!(
            go(Backfill::new(), &mut s, &mut d),
            Ok(BackfillOutcome::AlreadyThere)
        );

        let (mut s, mut d) = (held("a"), held("b"));
        assert_eq!(
            go(Backfill::new(), &mut s, &mut d),
            Ok(BackfillOutcome::Conflict)
        );
    }

    #[test]
    fn gate_reasons() {
        assert!(gate(0, 0).open);
        let closed = gate(2, 5);
        assert!(!closed.open);
        assert_eq!(closed.reasons.len(), 2);
    }
}
