//! The core of the `locking` gem, with no Ruby in it. Its folders are
//! layers, each using only the ones below it (docs/DESIGN.md, "Layout"):
//!
//! - `operate`: the operator tools (walks, backfill, control keys) and the
//!   renewer thread, on top of a `client::Lease`;
//! - `client`: the process-wide `Client` and the hot operations of a
//!   `Lease`, which drive the protocol's state machines against Redis;
//! - `topology`: which node serves a key (one server, or a Redis Cluster);
//! - `wire`: bytes to and from one server (codec, transport, TLS, the
//!   connection, the pipeline executor, the pool);
//! - `protocol`: the phase protocol as plain state machines, the rules of
//!   the fleet, and the in-memory model that explores them;
//! - `error` and `process`, which everything may use.

pub mod client;
pub mod error;
pub mod operate;
pub mod process;
pub mod protocol;
pub mod topology;
pub mod wire;

pub use client::{Client, ClientConfig, DynamicPhase, Lease, MAX_POOL_SIZE, MAX_SECONDS};
pub use error::{Error, Result};
pub use operate::operator::Operator;
pub use protocol::phase::Phase;
pub use protocol::{TokenTtl, MAX_TTL_MS};
pub use topology::node::EvictionCheck;
pub use wire::connection::{redact, Interrupt};
