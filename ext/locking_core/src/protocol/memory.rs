//! An in-process backend for apps' test suites (`Locking::Testing.mode =
//! :memory`): the same protocol state machines as on Redis, run against the
//! explorer's model store (`model::MemoryStore`), one pair of stores (source,
//! destination) per key, on a clock the test moves. No server, same answers.

use crate::error::{Error, Result};
use crate::protocol::model::{MemoryStore, ModelStore};
use crate::protocol::phase::Phase;
use crate::protocol::store::{run, Store};
use crate::protocol::{self, Servers, TokenTtl};
use std::collections::HashMap;

#[derive(Debug, Default)]
struct Key {
    source: MemoryStore,
    destination: MemoryStore,
}

#[derive(Debug)]
pub struct MemoryBackend {
    keys: HashMap<Vec<u8>, Key>,
    /// Milliseconds on the test's clock.
    now_ms: u64,
    phase: Phase,
    servers: Servers,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend::new()
    }
}

impl MemoryBackend {
    pub fn new() -> Self {
        MemoryBackend {
            keys: HashMap::new(),
            now_ms: 0,
            phase: Phase::Source,
            servers: Servers::BOTH,
        }
    }

    /// Clears every lock (the clock and the phase stay).
    pub fn reset(&mut self) {
        self.keys.clear();
    }

    /// Moves the clock forward: locks whose TTL runs out expire.
    pub fn travel(&mut self, ms: u64) {
        self.now_ms = self.now_ms.saturating_add(ms);
        let now = self.now_ms;
        self.keys.retain(|_, key| {
            for store in [&mut key.source, &mut key.destination] {
                if store
                    .key
                    .as_ref()
                    .is_some_and(|k| k.expires_at.is_some_and(|at| at <= now))
                {
                    store.key = None;
                }
            }
            key.source.key.is_some() || key.destination.key.is_some()
        });
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    pub fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    fn run<O: protocol::Operation>(&mut self, key: &[u8], op: O) -> Result<O::Output> {
        if key.is_empty() {
            return Err(Error::InvalidArgument("lock key must not be empty".into()));
        }
        let now = self.now_ms;
        let entry = self.keys.entry(key.to_vec()).or_default();
        let mut source = ModelStore {
            store: &mut entry.source,
            now,
        };
        let mut destination = ModelStore {
            store: &mut entry.destination,
            now,
        };
        let result = run(
            op,
            key,
            Some(&mut source as &mut dyn Store),
            Some(&mut destination as &mut dyn Store),
        );
        self.travel(0); // drops what expired, and empty entries
        result
    }

    pub fn acquire(&mut self, key: &[u8], token: &[u8], ttl_ms: u64) -> Result<bool> {
        check_ttl(ttl_ms)?;
        let op = protocol::Acquire::new(self.phase, token, ttl_ms);
        self.run(key, op)
    }

    pub fn release(&mut self, key: &[u8], token: &[u8]) -> Result<bool> {
        let op = protocol::Release::new(self.phase, token, self.servers);
        self.run(key, op)
    }

    pub fn locked(&mut self, key: &[u8]) -> Result<bool> {
        self.run(key, protocol::Locked::new(self.phase))
    }

    pub fn renew(&mut self, key: &[u8], token: &[u8], ttl_ms: u64) -> Result<bool> {
        check_ttl(ttl_ms)?;
        let op = protocol::Renew::new(self.phase, token, ttl_ms, self.servers);
        self.run(key, op)
    }

    pub fn ttl(&mut self, key: &[u8], token: &[u8]) -> Result<TokenTtl> {
        self.run(key, protocol::Ttl::new(self.phase, token))
    }

    /// Deletes a lock whoever holds it; returns how many copies went.
    pub fn force_delete(&mut self, key: &[u8]) -> u64 {
        self.keys.remove(key).map_or(0, |key| {
            u64::from(key.source.key.is_some()) + u64::from(key.destination.key.is_some())
        })
    }

    /// Deletes every lock whose key starts with `start`; returns how many.
    pub fn delete_matching(&mut self, start: &[u8]) -> u64 {
        let doomed: Vec<Vec<u8>> = self
            .keys
            .keys()
            .filter(|key| key.starts_with(start))
            .cloned()
            .collect();
        doomed.iter().map(|key| self.force_delete(key)).sum()
    }

    /// The keys of every live lock, sorted.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = self.keys.keys().cloned().collect();
        keys.sort();
        keys
    }
}

fn check_ttl(ttl_ms: u64) -> Result<()> {
    if ttl_ms == 0 || ttl_ms > protocol::MAX_TTL_MS {
        return Err(Error::InvalidArgument(format!(
            "TTL must be between 1 and {} ms, got {ttl_ms}",
            protocol::MAX_TTL_MS
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_expire_on_the_test_clock_and_follow_the_phase() {
        let mut memory = MemoryBackend::new();
        assert_eq!(memory.acquire(b"k", b"a", 1000), Ok(true));
        assert_eq!(memory.acquire(b"k", b"b", 1000), Ok(false));
        assert_eq!(memory.acquire(b"k", b"a", 1000), Ok(true)); // already mine
        memory.travel(999);
        assert_eq!(memory.locked(b"k"), Ok(true));
        memory.travel(1);
        assert_eq!(memory.locked(b"k"), Ok(false));
        assert_eq!(memory.acquire(b"k", b"b", 1000), Ok(true));
        assert_eq!(memory.release(b"k", b"a"), Ok(false));
        assert_eq!(memory.release(b"k", b"b"), Ok(true));
        assert!(memory.keys().is_empty());

        // A lock taken in phase 0 lives on the source only: phase 3 does not see it.
        assert_eq!(memory.acquire(b"k", b"a", 1000), Ok(true));
        memory.set_phase(Phase::Destination);
        assert_eq!(memory.locked(b"k"), Ok(false));
        memory.set_phase(Phase::Drain);
        assert_eq!(memory.locked(b"k"), Ok(true));
        assert_eq!(memory.ttl(b"k", b"a"), Ok(TokenTtl::NotHeld)); // asks the destination in phase 2
    }
}
