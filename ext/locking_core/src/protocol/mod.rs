//! The lock protocol of DESIGN §3 as plain state machines.
//!
//! An operation never talks to Redis itself: each `step` either asks its driver
//! to send a batch of single-key commands (the commands of one batch may run at
//! once, on different servers) or finishes with a result. The same operations
//! run against real servers (`crate::client`) and against the in-memory model
//! (`crate::protocol::model`) that the interleaving tests explore.
//!
//! This file is the seam between an operation and its driver (commands,
//! replies, `Operation`); each operation is in its own file beside it.

mod acquire;
mod backfill;
pub mod belief;
pub mod fleet;
mod gate;
pub mod memory;
pub mod model;
pub mod phase;
mod queries;
mod release;
mod renew;
pub mod semaphore;
mod semaphore_across;
mod semaphore_backfill;
pub mod store;

pub use acquire::Acquire;
pub use backfill::{Backfill, BackfillOutcome, CopyTtlRule};
pub use gate::{copy_one_sided, gate, grouped, reverse_gate, Gate};
pub use queries::{Locked, Ttl};
pub use release::{Release, Servers};
pub use renew::Renew;
pub use semaphore::{
    Place, SemaphoreAcquire, SemaphoreHolders, SemaphoreRelease, SemaphoreRenew,
    MAX_SEMAPHORE_LIMIT,
};
pub use semaphore_across::SemaphoreRules;
pub use semaphore_backfill::{PlaceCopyRule, PlacesCopied, SemaphoreBackfill};

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
    /// Semaphore: drop expired places, then take one for the token unless
    /// `limit` live places are taken (the token's own place: its TTL reset).
    SemaphoreAcquire {
        token: Vec<u8>,
        ttl_ms: u64,
        limit: u64,
    },
    /// Semaphore: give the token's place back.
    SemaphoreRelease { token: Vec<u8> },
    /// Semaphore: a new TTL for the token's live place; an expired one stays free.
    SemaphoreRenew { token: Vec<u8>, ttl_ms: u64 },
    /// Semaphore: how many places are live.
    SemaphoreHolders,
    /// Semaphore backfill: the live places and each one's ms left (none
    /// when the key holds no semaphore).
    SemaphorePlaces,
    /// Semaphore backfill: these places (token, ms left, from one read of
    /// the source) written as `rule` says (`semaphore_copy.lua`). A key of
    /// another type is left alone.
    SemaphoreCopy {
        places: Vec<(Vec<u8>, u64)>,
        rule: PlaceCopyRule,
    },
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
    Count(u64),
    /// Live places: token and ms left.
    Places(Vec<(Vec<u8>, u64)>),
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
            ..MemoryStore::default()
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

    /// A store of the model whose clock reads 0.
    fn at_zero(store: &mut MemoryStore) -> ModelStore<'_> {
        ModelStore { store, now: 0 }
    }

    fn go<O: Operation>(op: O, s: &mut MemoryStore, d: &mut MemoryStore) -> Result<O::Output> {
        run(op, b"k", Some(&mut at_zero(s)), Some(&mut at_zero(d)))
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
        let result = run(&mut op, b"k", Some(&mut at_zero(&mut s)), Some(&mut Down));
        assert_eq!(result, Ok(true));
        assert_eq!(value(&s), None);
        assert_eq!(op.cleanup_failed(), Some(Target::Destination));

        // Phase 3 with the source down, likewise.
        let mut d = held("a");
        let mut op = Release::new(Phase::Destination, b"a", Servers::BOTH);
        let result = run(&mut op, b"k", Some(&mut Down), Some(&mut at_zero(&mut d)));
        assert_eq!((result, value(&d)), (Ok(true), None));

        // Phases 1 and 2 write both servers: an error on either is the release's.
        for phase in [Phase::Dual, Phase::Drain] {
            let mut s = held("a");
            let result = run(
                Release::new(phase, b"a", Servers::BOTH),
                b"k",
                Some(&mut at_zero(&mut s)),
                Some(&mut Down),
            );
            assert!(matches!(result, Err(Error::Connection { .. })), "{phase}");
        }

        // Renew in phase 0 answers from the source even when the destination is down.
        let mut s = held("a");
        let result = run(
            Renew::new(Phase::Source, b"a", 50, Servers::BOTH),
            b"k",
            Some(&mut at_zero(&mut s)),
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
            Some(&mut at_zero(&mut s)),
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
