//! An in-memory model of the two servers, and an explorer that runs protocol
//! operations of several clients in every interleaving of their commands.
//!
//! Each command is atomic, as on Redis. Commands a batch sends "at once" are
//! separate events here, in either order, since on real servers they are
//! independent. Time moves only by expiry events, each of which jumps the
//! clock to the next moment a key (or, with heartbeat timing, a heartbeat)
//! expires. States already seen are skipped, so the search is exhaustive
//! without walking every schedule. A state seen is kept as a 128-bit
//! fingerprint (`Visited`), not a copy: two states that differ share one
//! with a chance of about n² / 2¹²⁹ for n states (below 10⁻²¹ for the
//! largest sweep's 10⁸), and a shared fingerprint could only prune a state
//! unexplored.
//!
//! - `store`: one key on each of the two servers, each command atomic;
//! - `scenario`: what a scenario is made of (clients, their actions, a fleet);
//! - `explorer`: the search, the clients' operations and the invariants;
//! - `operator`: the fleet around the protocol (processes reading the phase,
//!   the operator's moves, the control key lost or unreachable), deciding
//!   with the product's own rules (`crate::protocol::fleet`, `Phase::check_backfill`).

mod explorer;
mod operator;
mod places;
mod scenario;
mod semaphore;
mod store;

use super::belief;
use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

/// The states an explorer has seen, by fingerprint.
#[derive(Default)]
pub(crate) struct Visited {
    seen: HashSet<(u64, u64)>,
}

impl Visited {
    /// Whether `state` is new (and now seen).
    pub(crate) fn first_visit(&mut self, state: &impl Hash) -> bool {
        let mut low = DefaultHasher::new();
        state.hash(&mut low);
        let mut high = DefaultHasher::new();
        0x9e37_79b9_7f4a_7c15_u64.hash(&mut high);
        state.hash(&mut high);
        self.seen.insert((low.finish(), high.finish()))
    }
}

pub use explorer::{explore, token, Counterexample, Stats};
pub use places::Places;
pub use scenario::{
    Action, ClientSpec, DynamicOp, Fleet, Heartbeat, HeartbeatTiming, MissingControl, Scenario,
    StaleCache,
};
pub use semaphore::{
    explore_semaphore, SemaphoreAction, SemaphoreClient, SemaphoreScenario, SemaphoreStats,
};
pub use store::{MemoryStore, ModelStore, Stored};

/// The model's clock counts ticks; one tick stands for a second of the
/// product's time, so the holder's belief is the product's own rule
/// (`belief::valid_until`, `belief::renewal_sent`, in microseconds) read
/// back in ticks, rounded up: at a whole tick `t`, `t < ceil(x)` exactly
/// when `t < x`, so a tick holds the belief when the product would.
const TICK_US: u64 = 1_000_000;

fn to_ticks(us: u64) -> u64 {
    us.div_ceil(TICK_US)
}

/// Until when a client believes the lock (or place) an acquire or renewal
/// of `ttl` ticks, sent at tick `sent_at`, confirmed.
pub(crate) fn believed_until(sent_at: u64, ttl: u64) -> u64 {
    to_ticks(belief::valid_until(sent_at * TICK_US, ttl * 1000))
}

/// What a client believes while a renewal of `ttl` ticks sent at `sent_at`
/// is in flight, from `until` before it.
pub(crate) fn believed_while_renewing(until: u64, sent_at: u64, ttl: u64) -> u64 {
    to_ticks(belief::renewal_sent(
        until * TICK_US,
        sent_at * TICK_US,
        ttl * 1000,
    ))
}

/// The gates' rule (`protocol::copy_one_sided`) on the model's lock copies:
/// `here` counts unless `there` holds the same token for at least as long,
/// less the drift bound (a tick is a second; one clock, so no uncertainty).
pub(crate) fn lock_one_sided(here: Option<&Stored>, there: Option<&Stored>, now: u64) -> bool {
    let left = |stored: &Stored| {
        stored
            .expires_at
            .map_or(u64::MAX, |at| at.saturating_sub(now).saturating_mul(1000))
    };
    let Some(here) = here else {
        return false;
    };
    let there = there.filter(|there| there.value == here.value).map(left);
    crate::protocol::copy_one_sided(Some(left(here)), there, 0)
}
