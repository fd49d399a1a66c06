//! Idle connections to one server, kept per process.
//!
//! Each operation takes connections out for its whole length, so threads never
//! queue behind one socket. The pool remembers the process that filled it: in
//! a forked child (Resque forks per job) the inherited sockets are closed
//! without being shut down, so the parent's connections stay intact, and the
//! child opens its own. Taking and giving back never block on the network.

use crate::wire::pipeline::Link;
use std::sync::Mutex;

pub struct Pool {
    idle: Mutex<Idle>,
    capacity: usize,
}

struct Idle {
    pid: u32,
    connections: Vec<Link>,
}

impl Pool {
    pub fn new(capacity: usize) -> Pool {
        Pool {
            idle: Mutex::new(Idle {
                pid: crate::process::id(),
                connections: Vec::with_capacity(capacity),
            }),
            capacity,
        }
    }

    /// An idle connection of this process, if there is one.
    pub fn take(&self) -> Option<Link> {
        let pid = crate::process::id();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.pid != pid {
            // Dropping closes our copies of the parent's sockets; the parent's
            // own descriptors, and its server-side sessions, are untouched.
            idle.connections.clear();
            idle.pid = pid;
        }
        let mut connection = idle.connections.pop()?;
        connection.from_pool = true;
        Some(connection)
    }

    /// Keeps a healthy connection of this process for the next operation.
    pub fn give_back(&self, mut connection: Link) {
        let pid = crate::process::id();
        // A connection still owed replies (a caller that stopped midway
        // through a stream of pipelines) would hand them to the next user.
        if !connection.healthy || connection.pid != pid || !connection.settled() {
            return;
        }
        connection.unwatch();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.pid == pid && idle.connections.len() < self.capacity {
            idle.connections.push(connection);
        }
    }

    /// Drops every idle connection (their server is gone: a failover).
    pub fn clear(&self) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .connections
            .clear();
    }

    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .map(|idle| idle.connections.len())
            .unwrap_or(0)
    }
}
