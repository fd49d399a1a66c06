//! The core of the `locking` gem, with no Ruby in it: the phase protocol as
//! state machines (`protocol`), the hot operations (`client::Lease`), the
//! operator tools (`operator`, `bulk`, `backfill`, `control`), and the wire
//! layer underneath: `codec` (every command and reply, the script table),
//! `pipeline` (the one executor), `connection` over a `transport`, `pool`,
//! and `server` (which node serves a key; `cluster` for a Redis Cluster).

pub mod backfill;
pub mod belief;
pub mod bulk;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod connection;
pub mod control;
pub mod error;
pub mod fleet;
pub mod memory;
pub mod model;
pub mod operator;
pub mod phase;
pub mod pipeline;
pub mod pool;
pub mod process;
pub mod protocol;
#[cfg(test)]
mod redirect_tests;
pub mod renew;
pub mod server;
pub mod store;
pub mod tls;
pub mod transport;
pub mod url;

pub use client::{
    Client, ClientConfig, DynamicPhase, Lease, MAX_POOL_SIZE, MAX_SECONDS, MAX_TTL_MS,
};
pub use connection::{redact, Interrupt};
pub use error::{Error, Result};
pub use operator::Operator;
pub use phase::Phase;
pub use protocol::TokenTtl;
pub use server::EvictionCheck;
pub use store::Store;
