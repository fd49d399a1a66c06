//! The model of a semaphore on one server: its places, token -> expiry, as
//! the `semaphore_*.lua` scripts keep them (each command atomic at a moment).

use crate::protocol::{AcquireReply, PlaceCopyRule, Reply};
use std::collections::BTreeMap;

/// A semaphore's places on one server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Places {
    /// token -> absolute expiry; a place is live while its expiry is ahead.
    pub places: BTreeMap<Vec<u8>, u64>,
    /// Negative control: scripts that count only live places but never drop
    /// the expired ones, so a renewal finds (and revives) an expired place
    /// that was counted free and may have been taken meanwhile.
    pub keeps_expired: bool,
}

impl Places {
    fn drop_expired(&mut self, now: u64) {
        if !self.keeps_expired {
            self.places.retain(|_, expiry| *expiry > now);
        }
    }

    fn live(&self, now: u64) -> usize {
        self.places.values().filter(|expiry| **expiry > now).count()
    }

    pub fn acquire(&mut self, token: &[u8], ttl_ms: u64, limit: u64, now: u64) -> Reply {
        self.drop_expired(now);
        let reply = match self.places.get(token) {
            Some(expiry) if *expiry > now || self.keeps_expired => AcquireReply::AlreadyMine,
            _ if self.live(now) as u64 >= limit => return Reply::Acquire(AcquireReply::Taken),
            _ => AcquireReply::Set,
        };
        self.places.insert(token.to_vec(), now + ttl_ms);
        Reply::Acquire(reply)
    }

    pub fn release(&mut self, token: &[u8], now: u64) -> Reply {
        self.drop_expired(now);
        Reply::Flag(self.places.remove(token).is_some())
    }

    pub fn renew(&mut self, token: &[u8], ttl_ms: u64, now: u64) -> Reply {
        self.drop_expired(now);
        match self.places.get_mut(token) {
            Some(expiry) => {
                *expiry = now + ttl_ms;
                Reply::Flag(true)
            }
            None => Reply::Flag(false),
        }
    }

    /// The backfill's read: each live place and what it has left.
    pub fn read(&self, now: u64) -> Reply {
        Reply::Places(
            self.places
                .iter()
                .filter(|(_, expiry)| **expiry > now)
                .map(|(token, expiry)| (token.clone(), expiry - now))
                .collect(),
        )
    }

    /// The backfill's write, as `semaphore_copy.lua` does it under `rule`.
    pub fn copy(&mut self, places: &[(Vec<u8>, u64)], rule: PlaceCopyRule, now: u64) -> Reply {
        self.drop_expired(now);
        let covered = rule == PlaceCopyRule::Unchecked
            || self
                .places
                .iter()
                .filter(|(_, expiry)| **expiry > now)
                .all(|(token, _)| places.iter().any(|(copied, _)| copied == token));
        let mut written = 0;
        for (token, left) in places {
            let expiry = now + left;
            let write = match self.places.get(token) {
                Some(current) => rule == PlaceCopyRule::Set || *current < expiry,
                None => covered,
            };
            if write {
                self.places.insert(token.clone(), expiry);
                written += 1;
            }
        }
        Reply::Count(written)
    }

    pub fn holders(&self, now: u64) -> Reply {
        Reply::Count(self.live(now) as u64)
    }

    /// The next moment a place expires, after `now`.
    pub fn next_expiry(&self, now: u64) -> Option<u64> {
        self.places.values().copied().filter(|at| *at > now).min()
    }
}
