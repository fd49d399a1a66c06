//! The model of a Redis server: one key, each command atomic at a moment.

use super::places::Places;
use crate::error::Result;
use crate::protocol::{AcquireReply, Command, Entry, Reply, TokenTtl};

/// One key on one server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Stored {
    pub value: Vec<u8>,
    /// Absolute expiry time; `None` = no expiry.
    pub expires_at: Option<u64>,
}

/// A model Redis holding a single key (the protocol is per key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MemoryStore {
    pub key: Option<Stored>,
    /// A semaphore at the key (the model holds one of either).
    pub places: Places,
}

impl MemoryStore {
    pub(super) fn live(&self, now: u64) -> Option<&Stored> {
        self.key
            .as_ref()
            .filter(|stored| stored.expires_at.is_none_or(|at| at > now))
    }

    /// Runs one command atomically at time `now`.
    pub fn execute(&mut self, command: &Command, now: u64) -> Reply {
        if self.live(now).is_none() {
            self.key = None;
        }
        match command {
            Command::Acquire { token, ttl_ms } => self.set_nx(token, Some(*ttl_ms), now),
            Command::Mirror { value, ttl_ms } => self.set_nx(value, *ttl_ms, now),
            Command::CompareAndDelete { token } => {
                let held = self.holds(token);
                if held {
                    self.key = None;
                }
                Reply::Flag(held)
            }
            Command::CompareAndExtend { token, ttl_ms } => {
                let held = self.holds(token);
                if let (true, Some(stored)) = (held, self.key.as_mut()) {
                    stored.expires_at = Some(now + ttl_ms);
                }
                Reply::Flag(held)
            }
            Command::ExtendIfGreater { token, ttl_ms } => {
                let mut extended = false;
                if let (true, Some(stored)) = (self.holds(token), self.key.as_mut()) {
                    if let Some(at) = stored.expires_at {
                        if at < now + ttl_ms {
                            stored.expires_at = Some(now + ttl_ms);
                            extended = true;
                        }
                    }
                }
                Reply::Flag(extended)
            }
            Command::Exists => Reply::Flag(self.key.is_some()),
            Command::TokenTtl { token } => Reply::Ttl(match &self.key {
                Some(stored) if stored.value == *token => match stored.expires_at {
                    Some(at) => TokenTtl::Millis(at - now),
                    None => TokenTtl::Forever,
                },
                _ => TokenTtl::NotHeld,
            }),
            Command::SemaphoreAcquire {
                token,
                ttl_ms,
                limit,
            } => self.places.acquire(token, *ttl_ms, *limit, now),
            Command::SemaphoreRelease { token } => self.places.release(token, now),
            Command::SemaphoreRenew { token, ttl_ms } => self.places.renew(token, *ttl_ms, now),
            Command::SemaphoreHolders => self.places.holders(now),
            // Any other type at the key has no places, and is left alone.
            Command::SemaphorePlaces if self.key.is_some() => Reply::Places(Vec::new()),
            Command::SemaphorePlaces => self.places.read(now),
            Command::SemaphoreCopy { .. } if self.key.is_some() => Reply::Flag(false),
            Command::SemaphoreCopy { places, rule } => self.places.copy(places, *rule, now),
            Command::ReadWithTtl => Reply::Entry(self.key.as_ref().map(|stored| Entry {
                value: stored.value.clone(),
                ttl_ms: stored.expires_at.map(|at| at - now),
                expires_at_ms: stored.expires_at,
                expires_by_ms: stored.expires_at,
            })),
        }
    }

    fn holds(&self, token: &[u8]) -> bool {
        self.key
            .as_ref()
            .is_some_and(|stored| stored.value == token)
    }

    fn set_nx(&mut self, value: &[u8], ttl: Option<u64>, now: u64) -> Reply {
        match &self.key {
            Some(stored) if stored.value == value => Reply::Acquire(AcquireReply::AlreadyMine),
            Some(_) => Reply::Acquire(AcquireReply::Taken),
            None => {
                self.key = Some(Stored {
                    value: value.to_vec(),
                    expires_at: ttl.map(|ttl| now + ttl),
                });
                Reply::Acquire(AcquireReply::Set)
            }
        }
    }
}

/// The model store at a moment in time, as a `Store`.
pub struct ModelStore<'a> {
    pub store: &'a mut MemoryStore,
    pub now: u64,
}

impl crate::protocol::store::Store for ModelStore<'_> {
    fn execute(&mut self, _key: &[u8], command: &Command) -> Result<Reply> {
        Ok(self.store.execute(command, self.now))
    }
}
