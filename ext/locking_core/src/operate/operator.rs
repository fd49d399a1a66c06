//! The operator tools' handle on the servers: what `locking status`, `gate`,
//! `backfill`, `phase` and `unlock` use, apart from the hot operations of a
//! `Lease`. Its methods live beside what they do: walks and deletes in
//! `bulk`, the backfill scheduler in `backfill`, control keys in `control`.

use crate::client::{Client, Lease, Route};
use crate::error::{Error, Result};
use crate::protocol::phase::Phase;
use crate::protocol::{self, BackfillOutcome, Target};
use crate::wire::codec::{Arg, Value};
use crate::wire::connection::Interrupt;
use crate::wire::pipeline::Request;

/// Connections for one operator command. Every method here may block.
pub struct Operator<'c> {
    lease: Lease<'c>,
}

impl<'c> Operator<'c> {
    /// A handle for one operator command (bulk walks, backfill, control),
    /// with the same connections and phase as a lease of `client`.
    pub fn new(client: &'c Client) -> Self {
        Operator {
            lease: client.lease(),
        }
    }

    /// Gives the command's healthy connections back to their pools.
    pub fn finish(self) {
        let client = self.lease.client();
        client.finish(self.lease);
    }

    /// Fences this command's writes with a lease believed held until
    /// `valid_until_us` (`belief::valid_until` of its last confirmed
    /// renewal): see `Lease::fence`. A backfill stopped past its lease
    /// (SIGSTOP, a VM pause), or a batch slower than it, then writes nothing
    /// more, even in the middle of a batch.
    pub fn fence(&mut self, valid_until_us: u64) {
        self.lease.fence(valid_until_us);
    }

    /// `Error::Phase` once the fence no longer covers a write sent now.
    pub(crate) fn check_fence(&self) -> Result<()> {
        self.lease.check_fence()
    }

    pub(crate) fn client(&self) -> &'c Client {
        self.lease.client()
    }

    pub(crate) fn lease(&mut self) -> &mut Lease<'c> {
        &mut self.lease
    }

    /// The phase this command acts in (read from the control key when dynamic).
    pub fn resolve_phase(&mut self, interrupt: &Interrupt) -> Result<Phase> {
        self.lease.resolve_phase(interrupt)
    }

    /// The tools that walk keys need a prefix: with an empty one every
    /// string key of the server (queue data included) would count as a lock.
    pub(crate) fn check_prefix(&self) -> Result<()> {
        if self.client().key_prefix().is_empty() {
            return Err(Error::InvalidArgument(
                "the operator tools need a non-empty key_prefix: with an empty one every string key \
                 of the server (queue data included) would count as a lock"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The configured servers.
    pub(crate) fn configured_targets(&self) -> Vec<Target> {
        [Target::Source, Target::Destination]
            .into_iter()
            .filter(|target| self.client().server(*target).is_some())
            .collect()
    }

    /// One command on a node; an error reply becomes an `Error::Command`.
    pub(crate) fn command(
        &mut self,
        target: Target,
        route: Route<'_>,
        args: &[Arg<'_>],
        interrupt: &Interrupt,
    ) -> Result<Value> {
        let value = self
            .lease
            .exchange(target, route, &[Request::Plain(args)], interrupt)?
            .pop()
            .unwrap_or(Value::Nil);
        self.refused(target, value)
    }

    /// `value`, or the error reply it is as an `Error::Command`.
    pub(crate) fn refused(&self, target: Target, value: Value) -> Result<Value> {
        match value {
            Value::ServerError(error) => Err(Error::Command {
                server: self.client().server_name(target).unwrap_or("?").to_string(),
                detail: error.to_string(),
            }),
            value => Ok(value),
        }
    }

    /// The same single-key command (GET, PTTL, DEL ...) for many keys: one
    /// pipeline per node that serves them (one for a single server), the
    /// replies in the keys' order.
    pub(crate) fn each_key(
        &mut self,
        target: Target,
        name: &str,
        keys: &[Vec<u8>],
        interrupt: &Interrupt,
    ) -> Result<Vec<Value>> {
        let args: Vec<[Arg<'_>; 2]> = keys
            .iter()
            .map(|key| [name.into(), key.as_slice().into()])
            .collect();
        let requests: Vec<Request<'_>> = args.iter().map(|args| Request::Plain(args)).collect();
        self.each_request(target, keys, &requests, interrupt)
    }

    /// `requests[i]` (on `keys[i]`) on `target`, grouped by node: their replies in order.
    pub(crate) fn each_request(
        &mut self,
        target: Target,
        keys: &[Vec<u8>],
        requests: &[Request<'_>],
        interrupt: &Interrupt,
    ) -> Result<Vec<Value>> {
        let client = self.client();
        let server = client.server(target).ok_or_else(|| {
            Error::InvalidArgument(format!("no {} server is configured", target.name()))
        })?;
        if server.cluster().is_none() {
            return self
                .lease
                .exchange(target, Route::Node(0), requests, interrupt);
        }
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (index, key) in keys.iter().enumerate() {
            let node = server.locate(key, interrupt)?;
            match groups.iter_mut().find(|(at, _)| *at == node) {
                Some((_, group)) => group.push(index),
                None => groups.push((node, vec![index])),
            }
        }
        let mut values = vec![Value::Nil; keys.len()];
        for (node, group) in groups {
            let mine: Vec<Request<'_>> = group.iter().map(|&index| requests[index]).collect();
            let replies = self
                .lease
                .exchange(target, Route::Node(node), &mine, interrupt)?;
            for (index, value) in group.into_iter().zip(replies) {
                values[index] = value;
            }
        }
        Ok(values)
    }

    /// Mirrors one source lock onto the destination (see `protocol::Backfill`).
    /// `full_key` is the Redis key, prefix included. Only in phases 0 and 1.
    pub fn backfill(&mut self, full_key: &[u8], interrupt: &Interrupt) -> Result<BackfillOutcome> {
        self.resolve_phase(interrupt)?.check_backfill()?;
        let prefix = self.client().key_prefix();
        if !full_key.starts_with(prefix) || full_key.len() == prefix.len() {
            return Err(Error::InvalidArgument(
                "backfill only touches keys under the key prefix".into(),
            ));
        }
        self.lease
            .run_on(full_key, protocol::Backfill::new(), interrupt)
    }
}
