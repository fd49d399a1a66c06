//! An in-memory model of the two servers, and an explorer that runs protocol
//! operations of several clients in every interleaving of their commands.
//!
//! Each command is atomic, as on Redis. Commands a batch sends "at once" are
//! separate events here, in either order, since on real servers they are
//! independent. Time moves only by expiry events, each of which jumps the
//! clock to the next moment a key (or, with heartbeat timing, a heartbeat)
//! expires. States already seen are skipped, so the search is exhaustive
//! without walking every schedule.
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
