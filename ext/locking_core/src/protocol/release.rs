//! Release (DESIGN §3): delete our token wherever the phase may hold it,
//! and clean up, on a best-effort basis, the server the phase does not write.

use super::{unexpected, Command, Operation, Reply, Step, Target};
use crate::error::Result;
use crate::protocol::phase::Phase;

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
