//! A `Lease`'s semaphore operations (DESIGN "Semaphores"): each settles its
//! phase, then runs the protocol's semaphore state machine on the
//! semaphore's key, on one server or two as the phase says.

use super::Lease;
use crate::error::Result;
use crate::protocol::semaphore::check_limit;
use crate::protocol::{SemaphoreAcquire, SemaphoreHolders, SemaphoreRelease, SemaphoreRenew};
use crate::wire::connection::Interrupt;

impl Lease<'_> {
    /// Takes a place for `token` unless `limit` live places are taken; true
    /// also when `token` already held one (its TTL is reset).
    pub fn semaphore_acquire(
        &mut self,
        key: &[u8],
        token: &[u8],
        limit: u64,
        ttl_ms: u64,
        interrupt: &Interrupt,
    ) -> Result<bool> {
        check_limit(limit)?;
        self.write(key, ttl_ms, interrupt, |phase, _| {
            SemaphoreAcquire::new(phase, token, ttl_ms, limit)
        })
    }

    /// Gives `token`'s place back: true when a live place was removed.
    pub fn semaphore_release(
        &mut self,
        key: &[u8],
        token: &[u8],
        interrupt: &Interrupt,
    ) -> Result<bool> {
        let phase = self.resolve_phase(interrupt)?;
        self.run(key, SemaphoreRelease::new(phase, token), interrupt)
    }

    /// A new TTL for `token`'s live place: false when it has none. `limit`
    /// counts a place re-taken on the destination in phase 1 (one taken in
    /// phase 0, not yet there).
    pub fn semaphore_renew(
        &mut self,
        key: &[u8],
        token: &[u8],
        limit: u64,
        ttl_ms: u64,
        interrupt: &Interrupt,
    ) -> Result<bool> {
        check_limit(limit)?;
        self.write(key, ttl_ms, interrupt, |phase, _| {
            SemaphoreRenew::new(phase, token, ttl_ms, limit)
        })
    }

    /// The live places now.
    pub fn semaphore_holders(&mut self, key: &[u8], interrupt: &Interrupt) -> Result<u64> {
        let phase = self.resolve_phase(interrupt)?;
        self.run(key, SemaphoreHolders::new(phase), interrupt)
    }
}
