//! In-flight accounting for dynamic phases: the cached phase read from the
//! control key, and how many operations of this process act in each phase.
//! A heartbeat reports every phase still in use (`phases_in_use`), so the
//! fleet never moves while an operation may still write in an older one.

use super::lease::Lease;
use crate::protocol::phase::Phase;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// The cache of a dynamic phase. Atomics only: a fork may happen at any
/// moment, and a child must not inherit a held lock.
pub(super) struct Dynamic {
    pub(super) cache_ms: u64,
    pub(super) heartbeat_ttl_ms: u64,
    /// The heartbeat's age past which this process sends nothing more
    /// (`belief::heartbeat_lapse_ms`).
    pub(super) lapse_ms: u64,
    pub(super) host: String,
    pub(super) epoch: Instant,
    /// Milliseconds since `epoch` of the last read, plus one; 0 = never.
    pub(super) read_at: AtomicU64,
    pub(super) read_by_pid: AtomicU32,
    /// Milliseconds since `epoch` of the last failed read of the control key
    /// (its master down or failing over), plus one; 0 = none.
    pub(super) unreachable_at: AtomicU64,
    /// Operations in flight, per phase they act in. A heartbeat reports every
    /// phase still in use, not just the latest read: an operation that began
    /// on an older cached phase may still be writing in it.
    pub(super) in_flight: [InFlight; 4],
}

impl Dynamic {
    pub(super) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether this process read the phase itself, and its heartbeat of
    /// that read still lives with a phase cache's worth of margin: the
    /// span in which acting in the cached phase is covered by the heartbeat
    /// (the same lapse as `Lease::heartbeat_lapsed`).
    pub(super) fn cached_phase_covered(&self) -> bool {
        let read_at = self.read_at.load(Ordering::SeqCst);
        read_at != 0
            && self.read_by_pid.load(Ordering::SeqCst) == crate::process::id()
            && !crate::protocol::fleet::heartbeat_lapsed(self.now_ms(), read_at, self.lapse_ms)
    }

    /// The lowest and highest phase this process may still act in: the
    /// cached phase and those of its operations in flight.
    pub(super) fn phases_in_use(&self, cached: Phase) -> (u8, u8) {
        let busy = Phase::ALL
            .into_iter()
            .filter(|phase| self.in_flight[phase.index() as usize].get() > 0);
        let (low, high) = crate::protocol::fleet::phases_in_use(cached, busy);
        (low.index(), high.index())
    }
}

/// A count of operations in flight that belongs to one process: the pid in
/// the high 32 bits, the count in the low. A forked child inherits its
/// parent's counts mid-flight; here they read as 0 in the child, and the
/// child's first operation starts its own count, with no reset to race.
#[derive(Default)]
pub(super) struct InFlight(AtomicU64);

impl InFlight {
    pub(super) fn enter(&self) {
        let pid = u64::from(crate::process::id());
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |value| {
                Some(if value >> 32 == pid {
                    value + 1
                } else {
                    (pid << 32) | 1
                })
            });
    }

    pub(super) fn leave(&self) {
        let pid = u64::from(crate::process::id());
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |value| {
                (value >> 32 == pid && value & 0xffff_ffff > 0).then(|| value - 1)
            });
    }

    pub(super) fn get(&self) -> u32 {
        let value = self.0.load(Ordering::SeqCst);
        if value >> 32 == u64::from(crate::process::id()) {
            (value & 0xffff_ffff) as u32
        } else {
            0
        }
    }
}

impl Lease<'_> {
    /// Counts this operation in the phase it acts in, then makes sure the
    /// cache did not move meanwhile: a heartbeat written after this point
    /// sees either the count or the phase read (DESIGN: dynamic phases).
    pub(super) fn count_in_flight(&mut self, dynamic: &Dynamic) -> Phase {
        loop {
            let phase = self.client.phase();
            let count = &dynamic.in_flight[phase.index() as usize];
            count.enter();
            if self.client.phase() == phase {
                self.phase = phase;
                self.registered = Some(phase);
                self.began_read = dynamic.read_at.load(Ordering::SeqCst);
                return phase;
            }
            count.leave();
        }
    }

    /// The operation is over (its lease dropped): it no longer counts.
    pub(super) fn leave_in_flight(&mut self) {
        if let (Some(phase), Some(dynamic)) = (self.registered.take(), &self.client.dynamic) {
            dynamic.in_flight[phase.index() as usize].leave();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_counts_in_flight_until_it_leaves() {
        let count = InFlight::default();
        assert_eq!(count.get(), 0);
        count.enter();
        count.enter();
        assert_eq!(count.get(), 2);
        count.leave();
        assert_eq!(count.get(), 1);
        count.leave();
        count.leave(); // never below zero
        assert_eq!(count.get(), 0);
        count.enter();
        assert_eq!(count.get(), 1);
    }

    #[test]
    fn a_forked_child_does_not_inherit_its_parents_counts() {
        let pid = u64::from(crate::process::id());
        let parents = ((pid + 1) << 32) | 3; // another pid, 3 in flight
        let count = InFlight(AtomicU64::new(parents));
        assert_eq!(count.get(), 0);
        count.leave();
        assert_eq!(count.0.load(Ordering::SeqCst), parents);
        count.enter();
        assert_eq!(count.get(), 1);
        assert_eq!(count.0.load(Ordering::SeqCst), (pid << 32) | 1);
    }

    #[test]
    fn a_heartbeat_spans_the_phases_of_the_operations_in_flight() {
        let dynamic = Dynamic {
            cache_ms: 1_000,
            heartbeat_ttl_ms: 10_000,
            host: "web".into(),
            epoch: Instant::now(),
            lapse_ms: 9_000,
            read_at: AtomicU64::new(0),
            read_by_pid: AtomicU32::new(0),
            unreachable_at: AtomicU64::new(0),
            in_flight: Default::default(),
        };
        assert_eq!(dynamic.phases_in_use(Phase::Dual), (1, 1));
        dynamic.in_flight[3].enter();
        assert_eq!(dynamic.phases_in_use(Phase::Dual), (1, 3));
        dynamic.in_flight[0].enter();
        assert_eq!(dynamic.phases_in_use(Phase::Dual), (0, 3));
        dynamic.in_flight[3].leave();
        dynamic.in_flight[0].leave();
        assert_eq!(dynamic.phases_in_use(Phase::Drain), (2, 2));
    }
}
