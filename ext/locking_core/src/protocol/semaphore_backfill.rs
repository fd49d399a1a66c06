//! Backfill of one semaphore (DESIGN "Semaphores"): read the live places on
//! the source (each token with its ms left), then write them onto the
//! destination in one script (`semaphore_copy.lua`): a place there is
//! raised, never lowered, and a missing one is added only while every live
//! place there is among those read.
//!
//! Why: a lowered expiry shortens a place under a holder that renewed it
//! between the read and the write (a phase-2 acquire then takes it); and an
//! added place beside a holder the read did not see (a phase-2 acquire)
//! puts the destination past the limit, where its token's next acquire
//! (a phase-1 renewal re-taking its place) finds it "already mine". The
//! explorer found the second while this was built; it runs this operation
//! beside the clients (`tests/semaphores.rs`) and catches both wrong rules.

use super::{unexpected, Command, Operation, Reply, Step, Target};
use crate::error::{Error, Result};

/// What one semaphore's backfill did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PlacesCopied {
    /// Live places read on the source.
    pub places: u64,
    /// Places added on the destination, or whose expiry was raised there.
    pub written: u64,
    /// The destination holds another type at the key (a lock): left alone.
    pub conflict: bool,
}

/// How a copy is written on the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlaceCopyRule {
    /// The product: raise an expiry, never lower it; add a missing place
    /// only while the destination's places are all among those read.
    Raise,
    /// Set the expiry to the source's, even when lower. Wrong: it shortens
    /// a place renewed between the read and the write. Kept for the
    /// explorer's negative control only.
    Set,
    /// Add missing places whatever the destination holds. Wrong: past the
    /// limit beside a holder the read did not see. Negative control only.
    Unchecked,
}

impl PlaceCopyRule {
    /// The rule's name in `semaphore_copy.lua`'s ARGV[1].
    pub fn name(self) -> &'static str {
        match self {
            PlaceCopyRule::Raise => "raise",
            PlaceCopyRule::Set => "set",
            PlaceCopyRule::Unchecked => "unchecked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum State {
    Start,
    Read,
    Written { places: u64 },
}

/// Copies one semaphore's live source places onto the destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SemaphoreBackfill {
    state: State,
    rule: PlaceCopyRule,
}

impl SemaphoreBackfill {
    pub fn new() -> Self {
        SemaphoreBackfill::with_rule(PlaceCopyRule::Raise)
    }

    pub fn with_rule(rule: PlaceCopyRule) -> Self {
        SemaphoreBackfill {
            state: State::Start,
            rule,
        }
    }
}

impl Default for SemaphoreBackfill {
    fn default() -> Self {
        Self::new()
    }
}

impl Operation for SemaphoreBackfill {
    type Output = PlacesCopied;

    fn step(&mut self, mut replies: Vec<Result<Reply>>) -> Step<PlacesCopied> {
        let reply = replies.pop();
        match std::mem::replace(&mut self.state, State::Start) {
            State::Start => {
                self.state = State::Read;
                Step::Send(vec![(Target::Source, Command::SemaphorePlaces)])
            }
            State::Read => match reply {
                Some(Ok(Reply::Places(places))) if places.is_empty() => {
                    Step::Done(Ok(PlacesCopied::default()))
                }
                Some(Ok(Reply::Places(places))) => {
                    self.state = State::Written {
                        places: places.len() as u64,
                    };
                    Step::Send(vec![(
                        Target::Destination,
                        Command::SemaphoreCopy {
                            places,
                            rule: self.rule,
                        },
                    )])
                }
                Some(Ok(other)) => unexpected("semaphore places", &other),
                Some(Err(error)) => Step::Done(Err(error)),
                None => no_reply(),
            },
            State::Written { places } => match reply {
                Some(Ok(Reply::Count(written))) => Step::Done(Ok(PlacesCopied {
                    places,
                    written,
                    conflict: false,
                })),
                Some(Ok(Reply::Flag(false))) => Step::Done(Ok(PlacesCopied {
                    places,
                    written: 0,
                    conflict: true,
                })),
                Some(Ok(other)) => unexpected("semaphore copy", &other),
                Some(Err(error)) => Step::Done(Err(error)),
                None => no_reply(),
            },
        }
    }
}

fn no_reply() -> Step<PlacesCopied> {
    Step::Done(Err(Error::Internal(
        "a semaphore backfill step had no reply".into(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_source_then_copies_what_it_read_to_the_destination() {
        let mut op = SemaphoreBackfill::new();
        let Step::Send(read) = op.step(Vec::new()) else {
            panic!("the read first")
        };
        assert_eq!(read, vec![(Target::Source, Command::SemaphorePlaces)]);
        let places = vec![(b"a".to_vec(), 900), (b"b".to_vec(), 40)];
        let Step::Send(copy) = op.step(vec![Ok(Reply::Places(places.clone()))]) else {
            panic!("then the copy")
        };
        assert_eq!(
            copy,
            vec![(
                Target::Destination,
                Command::SemaphoreCopy {
                    places,
                    rule: PlaceCopyRule::Raise
                }
            )]
        );
        assert!(matches!(
            op.step(vec![Ok(Reply::Count(1))]),
            Step::Done(Ok(PlacesCopied {
                places: 2,
                written: 1,
                conflict: false
            }))
        ));
    }

    #[test]
    fn no_places_on_the_source_write_nothing() {
        let mut op = SemaphoreBackfill::new();
        let _ = op.step(Vec::new());
        assert!(matches!(
            op.step(vec![Ok(Reply::Places(Vec::new()))]),
            Step::Done(Ok(PlacesCopied { places: 0, .. }))
        ));
    }
}
