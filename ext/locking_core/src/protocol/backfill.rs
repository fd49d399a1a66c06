//! Backfill (DESIGN §3): mirror one source lock onto the destination.

use super::{unexpected, AcquireReply, Command, Entry, Operation, Reply, Step, Target};
use crate::error::{Error, Result};

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
