//! The core of the `locking` gem, with no Ruby in it: the phase protocol as
//! state machines (`protocol`), the real Redis driver (`client`), and the
//! connection handling underneath (`connection`, `pool`, `server`).

pub mod bulk;
pub mod client;
pub mod connection;
pub mod control;
pub mod error;
pub mod memory;
pub mod model;
pub mod phase;
pub mod pool;
pub mod process;
pub mod protocol;
pub(crate) mod resp;
pub(crate) mod scripts;
pub mod server;
pub mod store;

pub use client::{
    Client, ClientConfig, DynamicPhase, Lease, MAX_POOL_SIZE, MAX_SECONDS, MAX_TTL_MS,
};
pub use connection::{redact, Interrupt};
pub use error::{Error, Result};
pub use phase::Phase;
pub use protocol::TokenTtl;
pub use server::EvictionCheck;
pub use store::Store;
