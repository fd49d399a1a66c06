//! Which node serves a key: a configured `server` is one node, or a Redis
//! Cluster (`cluster`) of a node per master.

pub mod cluster;
pub mod node;
pub mod server;
