//! The protocol driver: runs the protocol's state machines (`Operation`)
//! against Redis, one operation or a batch side by side, each step's
//! commands sent to their servers at once.

use super::lease::{Lease, Route};
use crate::error::{Error, Result};
use crate::protocol::{Command, Operation, Reply, Step, Target};
use crate::wire::codec::Value;
use crate::wire::connection::Interrupt;
use crate::wire::pipeline::{self, Received, Request};
use std::time::Instant;

impl<'c> Lease<'c> {
    pub(super) fn run<O: Operation>(
        &mut self,
        key: &[u8],
        op: O,
        interrupt: &Interrupt,
    ) -> Result<O::Output> {
        let full_key = self.full_key(key)?;
        self.run_on(&full_key, op, interrupt)
    }

    /// Runs `ops` side by side, one per key: each round, every operation's
    /// next commands go out in one pipeline per node (source first, then
    /// destination), and each gets its replies. A node that fails fails
    /// the commands sent to it, and the operations decide (as one alone
    /// would); a command a cluster redirects is followed on its own. At
    /// most `BATCH_PIPELINE` commands per pipeline.
    pub(crate) fn run_batch<O: Operation>(
        &mut self,
        keys: &[Result<Vec<u8>>],
        mut ops: Vec<O>,
        interrupt: &Interrupt,
    ) -> Vec<Result<O::Output>> {
        let mut outputs: Vec<Option<Result<O::Output>>> = (0..ops.len()).map(|_| None).collect();
        let mut replies: Replies = (0..ops.len()).map(|_| Vec::new()).collect();
        let mut active: Vec<usize> = Vec::with_capacity(ops.len());
        for (index, key) in keys.iter().enumerate() {
            match key {
                Ok(_) => active.push(index),
                Err(error) => outputs[index] = Some(Err(error.clone())),
            }
        }
        while !active.is_empty() {
            let (sends, next) = step_all(&mut ops, active, &mut replies, &mut outputs);
            if let Some(error) = self.must_not_send() {
                for (index, place, _, _) in &sends {
                    replies[*index][*place] = Err(error.clone());
                }
                active = next;
                continue;
            }
            let groups = self.group_by_node(&sends, keys, &mut replies, interrupt);
            self.send_in_waves(&groups, keys, &mut replies, interrupt);
            active = next;
        }
        outputs
            .into_iter()
            .map(|output| {
                output.unwrap_or_else(|| Err(Error::Internal("an operation did not finish".into())))
            })
            .collect()
    }

    /// Every command's server and node; a key no node serves fails here.
    fn group_by_node<'s>(
        &self,
        sends: &'s [Sent],
        keys: &[Result<Vec<u8>>],
        replies: &mut Replies,
        interrupt: &Interrupt,
    ) -> Groups<'s> {
        let mut groups: Groups<'s> = Vec::new();
        for send in sends {
            let target = send.2;
            let located = self
                .client
                .server(target)
                .ok_or_else(|| self.missing(target))
                .and_then(|server| server.locate(key_of(keys, send.0), interrupt));
            match located {
                Ok(node) => match groups.iter_mut().find(|(at, _)| *at == (target, node)) {
                    Some((_, group)) => group.push(send),
                    None => groups.push(((target, node), vec![send])),
                },
                Err(error) => replies[send.0][send.1] = Err(error),
            }
        }
        groups
    }

    /// In waves of one pipeline per node: every node is sent its pipeline
    /// before any reply is read, so the nodes (and both servers) work at
    /// once; one pipeline in flight per connection.
    fn send_in_waves(
        &mut self,
        groups: &Groups<'_>,
        keys: &[Result<Vec<u8>>],
        replies: &mut Replies,
        interrupt: &Interrupt,
    ) {
        let mut done = vec![0usize; groups.len()];
        loop {
            let mut wave = Vec::new();
            for (index, ((target, node), group)) in groups.iter().enumerate() {
                let range = done[index]..(done[index] + BATCH_PIPELINE).min(group.len());
                if range.is_empty() {
                    continue;
                }
                done[index] = range.end;
                let requests = lock_requests(&group[range.clone()], keys);
                // Each wave may wait a timeout for its replies: the lapse and
                // the fence are asked again before every pipeline.
                let sent = match self.must_not_send() {
                    Some(error) => Err(error),
                    None => Ok(()),
                }
                .and_then(|()| self.connection(*target, Route::Node(*node), interrupt))
                .and_then(|(_, node, connection)| {
                    let stale = connection.from_pool;
                    pipeline::send(connection, &node.dialect, &requests, interrupt)
                        .map(|ticket| (ticket, Instant::now() + connection.read_timeout(), stale))
                });
                wave.push((index, range, sent));
            }
            if wave.is_empty() {
                break;
            }
            for (index, range, sent) in wave {
                let (at, group) = &groups[index];
                self.receive_chunk(*at, &group[range], keys, sent, replies, interrupt);
            }
        }
    }

    /// Reads the replies to one pipeline of a wave (`sent`: its ticket, when
    /// its replies are due, and whether its connection came from the pool)
    /// into each command's operation, following redirects and resends.
    fn receive_chunk(
        &mut self,
        (target, node): (Target, usize),
        chunk: &[&Sent],
        keys: &[Result<Vec<u8>>],
        sent: Result<(pipeline::Ticket, Instant, bool)>,
        replies: &mut Replies,
        interrupt: &Interrupt,
    ) {
        let requests = lock_requests(chunk, keys);
        let mut stale = false;
        let received = sent.and_then(|(ticket, deadline, was_stale)| {
            stale = was_stale;
            let at = (target, Route::Node(node));
            let (_, received) = self.receive(at, ticket, &requests, Some(deadline), interrupt)?;
            Ok(received)
        });
        let received = match received {
            // A pooled connection found dead: once more on a new one.
            Err(Error::Connection { .. }) if stale => self
                .exchange_raw((target, Route::Node(node)), &requests, interrupt)
                .map(|values| values.into_iter().map(Received::Reply).collect()),
            other => other,
        };
        drop(requests);
        match received {
            Ok(received) => {
                // Each reply is taken, not copied, into its operation.
                for (send, received) in chunk.iter().zip(received) {
                    let key = key_of(keys, send.0);
                    let request = Request::Lock {
                        key,
                        command: &send.3,
                    };
                    let reply = match received {
                        Received::Reply(value) => self
                            .follow(target, key, request, value, interrupt)
                            .and_then(|value| self.decode(target, &send.3, value)),
                        // NOSCRIPT, an old server: on its own, through the executor.
                        Received::Resend => self.run_command(target, key, &send.3, interrupt),
                    };
                    replies[send.0][send.1] = reply;
                }
            }
            Err(error) => {
                for send in chunk {
                    replies[send.0][send.1] = Err(error.clone());
                }
            }
        }
    }

    pub(crate) fn run_on<O: Operation>(
        &mut self,
        full_key: &[u8],
        mut op: O,
        interrupt: &Interrupt,
    ) -> Result<O::Output> {
        let mut replies = Vec::new();
        loop {
            match op.step(replies) {
                Step::Done(result) => return result,
                Step::Send(batch) => replies = self.execute(full_key, &batch, interrupt),
            }
        }
    }

    /// Runs one batch. Commands for two different servers are sent to both
    /// before either reply is read: one round trip of wall time.
    pub(super) fn execute(
        &mut self,
        key: &[u8],
        batch: &[(Target, Command)],
        interrupt: &Interrupt,
    ) -> Vec<Result<Reply>> {
        if let Some(error) = self.must_not_send() {
            return batch.iter().map(|_| Err(error.clone())).collect();
        }
        if let [(first, _), (second, _)] = batch {
            if first != second {
                return self.execute_at_once(key, batch, interrupt);
            }
        }
        batch
            .iter()
            .map(|(target, command)| self.run_command(*target, key, command, interrupt))
            .collect()
    }

    /// Runs one protocol command on the node that serves `key`, following
    /// a cluster's redirects. A pooled connection that breaks before its
    /// first reply in this operation was most likely dropped by the server
    /// while idle (a restart, an idle timeout): the command is sent once
    /// more on a new connection (see `exchange_raw`). Every protocol command
    /// is idempotent for its token (an acquire that did run answers
    /// "already mine" the second time), so the retry is safe even if the
    /// first attempt did reach the server.
    pub(super) fn run_command(
        &mut self,
        target: Target,
        key: &[u8],
        command: &Command,
        interrupt: &Interrupt,
    ) -> Result<Reply> {
        let request = Request::Lock { key, command };
        let value = self.request(target, Route::Key(key), request, interrupt)?;
        self.decode(target, command, value)
    }

    /// A protocol command's reply, or the server's refusal as an error.
    pub(super) fn decode(&self, target: Target, command: &Command, value: Value) -> Result<Reply> {
        crate::wire::codec::lock::decode(command, value).map_err(|detail| Error::Command {
            server: self.client.server_name(target).unwrap_or("?").to_string(),
            detail,
        })
    }

    pub(super) fn execute_at_once(
        &mut self,
        key: &[u8],
        batch: &[(Target, Command)],
        interrupt: &Interrupt,
    ) -> Vec<Result<Reply>> {
        let mut stale = Vec::with_capacity(batch.len());
        // The node each command went to, its ticket, and when its reply is due.
        let mut sent: Vec<Result<(usize, pipeline::Ticket, Instant)>> =
            Vec::with_capacity(batch.len());
        for (target, command) in batch {
            match self.connection(*target, Route::Key(key), interrupt) {
                Ok((index, node, connection)) => {
                    stale.push(connection.from_pool);
                    sent.push(
                        node.send(connection, key, command, interrupt)
                            .map(|ticket| {
                                (index, ticket, Instant::now() + connection.read_timeout())
                            }),
                    );
                }
                Err(error) => {
                    stale.push(false);
                    sent.push(Err(error));
                }
            }
        }
        // One deadline for all replies: the first one sent bounds the wait.
        let deadline = sent.iter().flatten().map(|(_, _, at)| *at).min();
        batch
            .iter()
            .zip(sent)
            .enumerate()
            .map(|(index, ((target, command), sent))| {
                let result = sent.and_then(|(node_index, ticket, _)| {
                    let deadline = deadline.unwrap_or_else(Instant::now);
                    let (_, node, connection) =
                        self.connection(*target, Route::Node(node_index), interrupt)?;
                    node.finish(connection, ticket, key, command, deadline, interrupt)
                });
                match result {
                    Ok(value) => {
                        let request = Request::Lock { key, command };
                        self.follow(*target, key, request, value, interrupt)
                            .and_then(|value| self.decode(*target, command, value))
                    }
                    // See `run_command`: once more on a new connection.
                    Err(Error::Connection { .. }) if stale[index] => {
                        self.run_command(*target, key, command, interrupt)
                    }
                    Err(error) => Err(error),
                }
            })
            .collect()
    }
}

/// Most commands in one pipeline of a batch.
const BATCH_PIPELINE: usize = 1000;

/// A command of a batch: its operation, its place among that operation's
/// commands of the round, its server, the command.
type Sent = (usize, usize, Target, Command);

/// Each operation's replies of the round, in the order of its commands.
type Replies = Vec<Vec<Result<Reply>>>;

/// A round's commands per node: (server, the node's place), its commands.
type Groups<'s> = Vec<((Target, usize), Vec<&'s Sent>)>;

/// Steps every active operation: the finished ones give their output, the
/// others their next commands (`sends`) and stay active (`next`).
fn step_all<O: Operation>(
    ops: &mut [O],
    active: Vec<usize>,
    replies: &mut Replies,
    outputs: &mut [Option<Result<O::Output>>],
) -> (Vec<Sent>, Vec<usize>) {
    let mut sends: Vec<Sent> = Vec::new();
    let mut next = Vec::with_capacity(active.len());
    for index in active {
        match ops[index].step(std::mem::take(&mut replies[index])) {
            Step::Done(result) => outputs[index] = Some(result),
            Step::Send(batch) => {
                replies[index] = batch
                    .iter()
                    .map(|_| Err(Error::Internal("no reply".into())))
                    .collect();
                for (place, (target, command)) in batch.into_iter().enumerate() {
                    sends.push((index, place, target, command));
                }
                next.push(index);
            }
        }
    }
    (sends, next)
}

/// The key of operation `index` (a key that was invalid never sends).
fn key_of(keys: &[Result<Vec<u8>>], index: usize) -> &[u8] {
    keys[index].as_deref().unwrap_or_default()
}

/// The lock requests of a batch's commands.
fn lock_requests<'a>(chunk: &[&'a Sent], keys: &'a [Result<Vec<u8>>]) -> Vec<Request<'a>> {
    chunk
        .iter()
        .map(|send| Request::Lock {
            key: key_of(keys, send.0),
            command: &send.3,
        })
        .collect()
}
