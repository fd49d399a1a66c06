//! A `Lease`'s semaphore operations (DESIGN "Semaphores"): each settles its
//! phase, then runs the protocol's semaphore state machine on the
//! semaphore's key. Phases 1 and 2 refuse inside the state machine, after
//! the phase is known, so a dynamic fleet's move is seen as for locks.

use super::Lease;
use crate::error::{Error, Result};
use crate::protocol::semaphore::{check_limit, NOT_PROVEN};
use crate::protocol::{
    SemaphoreAcquire, SemaphoreHolders, SemaphoreRelease, SemaphoreRenew, Target,
};
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
        self.check_one_server()?;
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

    /// A new TTL for `token`'s live place: false when it has none.
    pub fn semaphore_renew(
        &mut self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
        interrupt: &Interrupt,
    ) -> Result<bool> {
        self.check_one_server()?;
        self.write(key, ttl_ms, interrupt, |phase, _| {
            SemaphoreRenew::new(phase, token, ttl_ms)
        })
    }

    /// Places are taken and kept only while one server is configured: with
    /// both (a migration under way), neither the gate nor the backfill sees
    /// a semaphore's places yet, so a phase move could let a process count
    /// one server while live places sit on the other (more than the limit).
    /// Releases and `holders` still run.
    fn check_one_server(&self) -> Result<()> {
        let client = self.client();
        if client.server(Target::Source).is_some() && client.server(Target::Destination).is_some() {
            return Err(Error::Phase(format!(
                "{NOT_PROVEN}: with both a source and a destination configured (a migration under way) \
                 no place is taken or renewed, since the phase moves cannot see them yet"
            )));
        }
        Ok(())
    }

    /// The live places now.
    pub fn semaphore_holders(&mut self, key: &[u8], interrupt: &Interrupt) -> Result<u64> {
        let phase = self.resolve_phase(interrupt)?;
        self.run(key, SemaphoreHolders::new(phase), interrupt)
    }
}
