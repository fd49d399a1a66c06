//! `locking status`'s counts of a server (and the dashboard's): its lock
//! keys and their TTLs, and its semaphores and their live places, in one
//! resumable walk of SCAN pages.

use crate::error::Result;
use crate::operate::bulk::{KeyType, WalkPosition};
use crate::operate::operator::Operator;
use crate::protocol::Target;
use crate::wire::codec::Value;
use crate::wire::connection::Interrupt;

/// Lock keys on one server and their remaining TTLs, and its semaphores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyStats {
    pub keys: u64,
    pub without_ttl: u64,
    pub max_ttl_ms: u64,
    pub p99_ttl_ms: u64,
    /// Semaphore keys (sorted sets that `operator_key.lua` takes for one).
    pub semaphores: u64,
    /// Their live places, by the server's clock.
    pub places: u64,
}

/// TTLs kept to estimate the p99 of a key-stats walk (a uniform sample).
const TTL_SAMPLE: usize = 100_000;

/// A walk of one server for `key_stats`, resumable page by page.
#[derive(Debug, Clone)]
pub struct KeyStatsWalk {
    target: Target,
    /// The walk of string keys (locks), then of sorted sets (semaphores).
    position: WalkPosition,
    semaphores: WalkPosition,
    stats: KeyStats,
    ttls: Vec<u64>,
    ttls_seen: u64,
    random: u64,
}

impl KeyStatsWalk {
    pub fn new(target: Target) -> Self {
        KeyStatsWalk {
            target,
            position: WalkPosition::default(),
            semaphores: WalkPosition::default(),
            stats: KeyStats::default(),
            ttls: Vec::new(),
            ttls_seen: 0,
            random: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// Reservoir sampling: every TTL seen has the same chance to be kept.
    fn sample_ttl(&mut self, ttl: u64) {
        self.stats.max_ttl_ms = self.stats.max_ttl_ms.max(ttl);
        self.ttls_seen += 1;
        if self.ttls.len() < TTL_SAMPLE {
            self.ttls.push(ttl);
            return;
        }
        // xorshift64: enough to spread the sample, no dependency.
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        let slot = self.random % self.ttls_seen;
        if let Some(kept) = self.ttls.get_mut(slot as usize) {
            *kept = ttl;
        }
    }

    pub fn finish(mut self) -> KeyStats {
        if !self.ttls.is_empty() {
            let index = ((self.ttls.len() as f64) * 0.99).ceil() as usize;
            let index = index.clamp(1, self.ttls.len()) - 1;
            let (_, p99, _) = self.ttls.select_nth_unstable(index);
            self.stats.p99_ttl_ms = *p99;
        }
        self.stats
    }
}

impl Operator<'_> {
    /// Counts lock keys on a server and summarizes their TTLs, and counts its
    /// semaphores and their live places (a full walk).
    pub fn key_stats(&mut self, target: Target, interrupt: &Interrupt) -> Result<KeyStats> {
        let mut walk = KeyStatsWalk::new(target);
        while !self.key_stats_step(&mut walk, usize::MAX, interrupt)? {}
        Ok(walk.finish())
    }

    /// Walks up to `pages` SCAN pages of a key-stats walk; true when it is
    /// complete. A caller that steps a few pages at a time can stop between
    /// steps (Ctrl-C in the CLI), and memory stays bounded (a TTL sample).
    /// String keys are walked first, then sorted sets (SCAN's TYPE filter).
    pub fn key_stats_step(
        &mut self,
        walk: &mut KeyStatsWalk,
        pages: usize,
        interrupt: &Interrupt,
    ) -> Result<bool> {
        if walk.position.done {
            return self.semaphore_stats_step(walk, pages, interrupt);
        }
        let target = walk.target;
        let mut position = walk.position;
        let done = self.walk_pages(
            target,
            KeyType::Strings,
            &mut position,
            pages,
            interrupt,
            |operator, keys| {
                let pttls = operator.each_key(target, "PTTL", &keys, interrupt)?;
                for pttl in pttls {
                    match pttl {
                        Value::Int(-1) => {
                            walk.stats.keys += 1;
                            walk.stats.without_ttl += 1;
                        }
                        Value::Int(ms) if ms >= 0 => {
                            walk.stats.keys += 1;
                            walk.sample_ttl(ms as u64);
                        }
                        _ => {} // expired since the scan
                    }
                }
                Ok(())
            },
        )?;
        walk.position = position;
        Ok(done && self.semaphore_stats_step(walk, 0, interrupt)?)
    }

    /// Up to `pages` SCAN pages of the sorted sets (none with 0 pages unless
    /// the walk of them is already complete, which it is then told).
    fn semaphore_stats_step(
        &mut self,
        walk: &mut KeyStatsWalk,
        pages: usize,
        interrupt: &Interrupt,
    ) -> Result<bool> {
        if pages == 0 || walk.semaphores.done {
            return Ok(walk.semaphores.done);
        }
        let target = walk.target;
        let mut position = walk.semaphores;
        let done = self.walk_pages(
            target,
            KeyType::Zsets,
            &mut position,
            pages,
            interrupt,
            |operator, keys| {
                for places in operator
                    .semaphore_views(target, &keys, interrupt)?
                    .into_iter()
                    .flatten()
                {
                    walk.stats.semaphores += 1;
                    walk.stats.places += places.len() as u64;
                }
                Ok(())
            },
        )?;
        walk.semaphores = position;
        Ok(done)
    }
}
