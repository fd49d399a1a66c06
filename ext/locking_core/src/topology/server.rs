//! A configured server: the routing seam, which gives the node (`node`),
//! and so the connection, for a key. A standalone server, or a Sentinel
//! setting, is one node for every key.
//!
//! A Cluster setting has a node per master (`cluster`): each key's node is
//! the master of its hash slot, and walks go master by master.

use crate::error::Result;
use crate::topology::cluster::{self, Cluster, Survey, WalkStep};
use crate::topology::node::{EvictionCheck, Node};
use crate::wire::connection::{Interrupt, ServerConfig};

/// A server of the configuration (the source, or the destination).
pub enum Server {
    /// One Redis server: the node of every key.
    Standalone(Node),
    /// A Redis Cluster: each key's node is its hash slot's master.
    Cluster(Cluster),
}

impl Server {
    pub fn new(config: ServerConfig, pool_size: usize, eviction: EvictionCheck) -> Result<Server> {
        Ok(if config.cluster.is_some() {
            Server::Cluster(Cluster::new(config, pool_size, eviction)?)
        } else {
            Server::Standalone(Node::new(config, pool_size, eviction))
        })
    }

    /// The place (in `node`) of the node that serves `key`; for a cluster,
    /// the slot map may be read first.
    pub fn locate(&self, key: &[u8], interrupt: &Interrupt) -> Result<usize> {
        match self {
            Server::Standalone(_) => Ok(0),
            Server::Cluster(cluster) => cluster.locate(cluster::key_slot(key), interrupt),
        }
    }

    /// The node that serves `key` as far as is known now, without asking.
    pub fn peek(&self, key: &[u8]) -> Option<&Node> {
        match self {
            Server::Standalone(node) => Some(node),
            Server::Cluster(cluster) => cluster
                .known_master(cluster::key_slot(key))
                .and_then(|index| cluster.node(index)),
        }
    }

    /// The node at place `index`.
    pub fn node(&self, index: usize) -> Option<&Node> {
        match self {
            Server::Standalone(node) => (index == 0).then_some(node),
            Server::Cluster(cluster) => cluster.node(index),
        }
    }

    /// Every node known (for warnings and counts).
    pub fn known_nodes(&self) -> Vec<&Node> {
        match self {
            Server::Standalone(node) => vec![node],
            Server::Cluster(cluster) => cluster.known().collect(),
        }
    }

    pub fn cluster(&self) -> Option<&Cluster> {
        match self {
            Server::Standalone(_) => None,
            Server::Cluster(cluster) => Some(cluster),
        }
    }

    /// A connection to the node at `index` broke (or met READONLY).
    pub fn connection_failed(&self, index: usize) {
        match self {
            Server::Standalone(node) => node.connection_failed(),
            Server::Cluster(cluster) => cluster.connection_failed(index),
        }
    }

    /// Where the walk at `position` stands: which node, its SCAN cursor.
    /// `None`: nothing to walk.
    pub fn walk_at(&self, position: u64, interrupt: &Interrupt) -> Result<Option<WalkStep>> {
        match self {
            Server::Standalone(_) => Ok(Some(WalkStep::single(position))),
            Server::Cluster(cluster) => cluster.walk_at(position, interrupt),
        }
    }

    /// The walk's position after `step`'s node answered the cursor `next`.
    pub fn walk_after(&self, step: &WalkStep, next: u64) -> Result<u64> {
        match self {
            Server::Standalone(_) => Ok(next),
            Server::Cluster(cluster) => cluster.walk_after(step, next),
        }
    }

    /// How far along the walk at `position` is, from 0.0 to 1.0 (the end,
    /// position 0). SCAN gives no total: the fraction is read off the
    /// cursor, whose bits reversed walk the hash table in order (and for a
    /// cluster, off the master's place among the masters too).
    pub fn walk_fraction(&self, position: u64) -> f64 {
        match self {
            _ if position == 0 => 1.0,
            Server::Standalone(_) => position.reverse_bits() as f64 / 2f64.powi(64),
            Server::Cluster(cluster) => cluster.walk_fraction(position),
        }
    }

    /// Whether the server's map of keys to nodes is settled (always, for one
    /// server).
    pub fn survey(&self, interrupt: &Interrupt) -> Result<Survey> {
        match self {
            Server::Standalone(_) => Ok(Survey {
                fingerprint: 0,
                unsettled: None,
            }),
            Server::Cluster(cluster) => cluster.survey(interrupt),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Server::Standalone(node) => node.name(),
            Server::Cluster(cluster) => cluster.name(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use proptest::prelude::*;
    use std::time::Duration;

    proptest! {
        // Configuration parsing: any string is a config or an InvalidArgument.
        #[test]
        fn any_url_parses_or_is_rejected_cleanly(url in ".{0,40}") {
            match ServerConfig::parse(&url, Duration::from_secs(1)) {
                Ok(_) => {}
                Err(Error::InvalidArgument(_)) => {}
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
        }

        #[test]
        fn redis_looking_urls_never_panic(host in "[a-z0-9.:@\\[\\]/%?=-]{0,30}", port in any::<u32>(), db in any::<i64>()) {
            let url = format!("redis://{host}:{port}/{db}");
            let _ = ServerConfig::parse(&url, Duration::from_secs(1));
        }

        #[test]
        fn phases_from_any_input(index in any::<i64>(), name in ".{0,12}") {
            let _ = crate::protocol::phase::Phase::from_index(index);
            let _ = crate::protocol::phase::Phase::from_name(&name);
        }
    }
}
