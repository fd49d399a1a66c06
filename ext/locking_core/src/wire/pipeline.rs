//! The pipeline executor: the one way every caller (hot operations, control,
//! operator tools, backfill) talks to a server. It sends N requests in one
//! write and reads their N replies under one deadline, always through the
//! operation's `Interrupt`.
//!
//! Two replies ask for the request to be sent again, and are handled here
//! for everyone:
//! - NOSCRIPT (a restart, a failover, `SCRIPT FLUSH`): the script is queued
//!   on the connection and loaded at the front of its next pipeline, so a
//!   caller with later pipelines in flight (the backfill) never reads out of
//!   step; the load shares that pipeline's deadline and interrupt.
//! - a syntax error to `SET .. NX GET`: the server is older than Redis 7; it
//!   is remembered in the server's `Dialect`, and the request goes again as
//!   the Lua acquire (which may need loading in turn).
//!
//! `run` resends by itself (at most twice a request); `send`/`receive` hand
//! `Received::Resend` back to a caller that schedules its own pipelines.
//!
//! The one rule of the wire: replies come back in the order the requests
//! were written. Every pipeline written to a connection is given a
//! `Ticket`, its place among the replies the connection owes, and only that
//! ticket reads its replies. Reading a later ticket first reads the earlier
//! pipelines' replies ahead and keeps them for their own tickets, so a
//! caller that writes to a connection which still owes replies (a cluster's
//! redirect landing on a node whose pipeline of the same wave is unread)
//! gets its own replies, never another request's.

use crate::error::{Error, Result};
use crate::protocol::Command;
use crate::wire::codec::{self, lock, scripts::Script, Arg, Value};
use crate::wire::connection::{Connection, Interrupt};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// One request of a pipeline. Cheap to copy: it borrows what it sends.
#[derive(Clone, Copy)]
pub enum Request<'a> {
    /// A command with one reply.
    Plain(&'a [Arg<'a>]),
    /// `EVALSHA` of a script of the table, with its keys and arguments.
    Script {
        script: &'static Script,
        keys: &'a [&'a [u8]],
        args: &'a [Arg<'a>],
    },
    /// A protocol command on one key (`codec::lock`).
    Lock { key: &'a [u8], command: &'a Command },
    /// One transaction reading many keys' values and TTLs (a backfill page).
    Reads(&'a [&'a [u8]]),
}

/// What the executor hands back for one request.
#[derive(Debug)]
pub enum Received {
    /// The reply (which may be an error reply, for the caller to read).
    Reply(Value),
    /// Send the request again: a script is queued for loading, or the
    /// server turned out older than Redis 7.
    Resend,
}

/// What one server speaks, learnt from its replies and shared by all of its
/// connections.
#[derive(Debug)]
pub struct Dialect {
    set_get: AtomicBool,
}

impl Default for Dialect {
    fn default() -> Self {
        Dialect {
            set_get: AtomicBool::new(true),
        }
    }
}

impl Dialect {
    /// Whether the server knows `SET .. NX GET` (Redis 7), as far as we know.
    pub fn set_get(&self) -> bool {
        self.set_get.load(Ordering::Relaxed)
    }

    fn learn_no_set_get(&self) {
        self.set_get.store(false, Ordering::Relaxed);
    }
}

/// The executor's ledger of a connection: script loads due at its next send,
/// the pipelines sent whose replies are still owed (in the order they were
/// written), and the send buffer, kept between pipelines.
struct Loads {
    due: Vec<&'static Script>,
    owed: VecDeque<Owed>,
    output: Vec<u8>,
    /// This connection, among every connection of the process: a ticket is
    /// read only on the connection that gave it.
    connection: u64,
    /// The next pipeline's place on this connection.
    next: u64,
}

/// A pipeline written to a connection whose replies are not yet read.
struct Owed {
    place: u64,
    /// Script loads written in front of it: their replies come first.
    loads: usize,
    /// Every reply it will get (loads, acknowledgements and replies).
    frames: usize,
    /// Its replies, when a later ticket had to read past them.
    read_ahead: Option<VecDeque<Value>>,
}

static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Default for Loads {
    fn default() -> Self {
        Loads {
            due: Vec::new(),
            owed: VecDeque::new(),
            output: Vec::new(),
            connection: CONNECTIONS.fetch_add(1, Ordering::Relaxed),
            next: 0,
        }
    }
}

/// A connection as the executor uses it: the byte stream (`Connection`)
/// and the executor's ledger of it (`Loads`). The ledger lives here, beside
/// the only code that reads it, so that a `Connection` is only bytes; what
/// holds a connection between operations (a pool, a lease) holds a `Link`.
pub struct Link {
    connection: Connection,
    loads: Loads,
}

impl Link {
    pub fn new(connection: Connection) -> Link {
        Link {
            connection,
            loads: Loads::default(),
        }
    }

    /// No pipeline sent on the connection is still owed a reply.
    pub fn settled(&self) -> bool {
        self.loads.owed.is_empty()
    }
}

impl std::ops::Deref for Link {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.connection
    }
}

impl std::ops::DerefMut for Link {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.connection
    }
}

/// A pipeline's place among the replies its connection owes: `send` hands
/// it out, and `receive` takes it (once: it is neither `Copy` nor `Clone`).
#[must_use = "a pipeline's replies are read with its ticket"]
#[derive(Debug)]
pub struct Ticket {
    connection: u64,
    place: u64,
}

impl Request<'_> {
    fn encode(&self, out: &mut Vec<u8>, dialect: &Dialect) {
        match *self {
            Request::Plain(args) => codec::write_command(out, args),
            Request::Script { script, keys, args } => {
                codec::write_header_of(out, 3 + keys.len() + args.len());
                codec::write_arg(out, "EVALSHA".into());
                codec::write_arg(out, script.sha.as_str().into());
                codec::write_arg(out, (keys.len() as u64).into());
                for key in keys {
                    codec::write_arg(out, (*key).into());
                }
                for arg in args {
                    codec::write_arg(out, *arg);
                }
            }
            Request::Lock { key, command } => lock::encode(out, key, command, dialect.set_get()),
            Request::Reads(keys) => lock::encode_reads(out, keys),
        }
    }

    /// Acknowledgements (MULTI's OK, QUEUED) that come before the reply.
    fn queued(&self) -> usize {
        match *self {
            Request::Lock { command, .. } => lock::queued(command),
            Request::Reads(keys) => lock::queued_reads(keys.len()),
            Request::Plain(_) | Request::Script { .. } => 0,
        }
    }

    /// The script to load after a NOSCRIPT (only scripts meet one).
    fn script(&self) -> Option<&'static Script> {
        match *self {
            Request::Script { script, .. } => Some(script),
            Request::Lock { command, .. } => lock::script_of(command, false),
            Request::Plain(_) | Request::Reads(_) => None,
        }
    }

    /// The key the request is about, for a cluster's routing: a lock
    /// command's, a script's first, a plain command's first argument.
    pub fn key(&self) -> Option<&[u8]> {
        match *self {
            Request::Plain(args) => match args.get(1) {
                Some(Arg::Bytes(key)) if args.len() >= 2 => Some(key),
                _ => None,
            },
            Request::Script { keys, .. } => keys.first().copied(),
            Request::Lock { key, .. } => Some(key),
            Request::Reads(keys) => keys.first().copied(),
        }
    }

    /// What the request is, for a message.
    pub fn describe(&self) -> String {
        match *self {
            Request::Plain(args) => match args.first() {
                Some(Arg::Bytes(name)) => String::from_utf8_lossy(name).into_owned(),
                _ => "command".into(),
            },
            Request::Script { script, .. } => format!("script {}", script.name),
            Request::Lock { command, .. } => lock::name(command).into(),
            Request::Reads(_) => "read of a page of keys".into(),
        }
    }
}

/// The send buffer a connection keeps between pipelines is given back
/// above this size (after a large backfill page).
const MAX_IDLE_OUTPUT: usize = 1024 * 1024;

/// Sends `requests` in one write, after any script loads due on this
/// connection; the ticket reads their replies.
pub fn send(
    connection: &mut Link,
    dialect: &Dialect,
    requests: &[Request<'_>],
    interrupt: &Interrupt,
) -> Result<Ticket> {
    let mut packed = std::mem::take(&mut connection.loads.output);
    packed.clear();
    let mut due = std::mem::take(&mut connection.loads.due);
    due.sort_by_key(|script| script.name);
    due.dedup_by_key(|script| script.name);
    for script in &due {
        codec::write_command(
            &mut packed,
            &["SCRIPT".into(), "LOAD".into(), script.source.into()],
        );
    }
    for request in requests {
        request.encode(&mut packed, dialect);
    }
    let sent = connection.send(&packed, interrupt);
    if packed.capacity() <= MAX_IDLE_OUTPUT {
        connection.loads.output = packed;
    }
    sent?;
    let loads = &mut connection.loads;
    let place = loads.next;
    loads.next += 1;
    let frames = due.len() + requests.iter().map(|r| r.queued() + 1).sum::<usize>();
    loads.owed.push_back(Owed {
        place,
        loads: due.len(),
        frames,
        read_ahead: None,
    });
    Ok(Ticket {
        connection: loads.connection,
        place,
    })
}

/// Reads the replies to the pipeline of `ticket` (which must be `requests`)
/// by `deadline`, loads first.
pub fn receive(
    connection: &mut Link,
    dialect: &Dialect,
    ticket: Ticket,
    requests: &[Request<'_>],
    deadline: Instant,
    interrupt: &Interrupt,
) -> Result<Vec<Received>> {
    let mut replies = Replies::claim(connection, ticket, deadline, interrupt)?;
    let mut values = Vec::with_capacity(requests.len());
    for request in requests {
        values.push(receive_one(&mut replies, request.queued())?);
    }
    Ok(requests
        .iter()
        .zip(values)
        .map(|(request, value)| classify(connection, dialect, request, value))
        .collect())
}

/// `receive` for a pipeline of one request, without allocating.
pub fn receive_single(
    connection: &mut Link,
    dialect: &Dialect,
    ticket: Ticket,
    request: &Request<'_>,
    deadline: Instant,
    interrupt: &Interrupt,
) -> Result<Received> {
    let mut replies = Replies::claim(connection, ticket, deadline, interrupt)?;
    let value = receive_one(&mut replies, request.queued())?;
    Ok(classify(connection, dialect, request, value))
}

/// Where one pipeline's replies are read from: the wire, or what a later
/// ticket read ahead for it. Its script loads' replies are already passed.
enum Replies<'a> {
    Wire {
        connection: &'a mut Link,
        deadline: Instant,
        interrupt: &'a Interrupt,
    },
    ReadAhead(VecDeque<Value>),
}

impl<'a> Replies<'a> {
    /// The replies of `ticket`'s pipeline: every pipeline written before it
    /// is read ahead first (and kept for its own ticket), then its loads.
    fn claim(
        connection: &'a mut Link,
        ticket: Ticket,
        deadline: Instant,
        interrupt: &'a Interrupt,
    ) -> Result<Replies<'a>> {
        #[cfg(test)]
        if testing::WITHOUT_TICKETS.with(std::cell::Cell::get) {
            // The executor before tickets: the oldest pipeline owed, whatever it is.
            let loads = connection
                .loads
                .owed
                .pop_front()
                .map_or(0, |owed| owed.loads);
            for _ in 0..loads {
                connection.receive_by(deadline, interrupt)?;
            }
            return Ok(Replies::Wire {
                connection,
                deadline,
                interrupt,
            });
        }
        if ticket.connection != connection.loads.connection {
            // Its connection broke and was let go since: its replies are lost.
            return Err(Error::Connection {
                server: connection.server().to_string(),
                detail: "connection lost before the replies of a pipeline were read".into(),
            });
        }
        let Some(at) = connection
            .loads
            .owed
            .iter()
            .position(|owed| owed.place == ticket.place)
        else {
            return Err(Error::Internal(
                "a pipeline's replies were read twice".into(),
            ));
        };

        for index in 0..at {
            if connection.loads.owed[index].read_ahead.is_some() {
                continue;
            }
            let frames = connection.loads.owed[index].frames;
            let mut values = VecDeque::with_capacity(frames);
            for _ in 0..frames {
                values.push_back(connection.receive_by(deadline, interrupt)?);
            }
            connection.loads.owed[index].read_ahead = Some(values);
        }
        let Some(owed) = connection.loads.owed.remove(at) else {
            return Err(Error::Internal("a pipeline's place went missing".into()));
        };
        match owed.read_ahead {
            Some(mut values) => {
                values.drain(..owed.loads.min(values.len()));
                Ok(Replies::ReadAhead(values))
            }
            None => {
                for _ in 0..owed.loads {
                    connection.receive_by(deadline, interrupt)?;
                }
                Ok(Replies::Wire {
                    connection,
                    deadline,
                    interrupt,
                })
            }
        }
    }

    /// An acknowledgement (MULTI's OK, a QUEUED): `None` for a status line.
    fn acknowledgement(&mut self) -> Result<Option<Value>> {
        match self {
            Replies::Wire {
                connection,
                deadline,
                interrupt,
            } => connection.receive_acknowledgement_by(*deadline, interrupt),
            Replies::ReadAhead(values) => Ok(match values.pop_front() {
                Some(Value::Okay | Value::SimpleString(_)) => None,
                Some(value) => Some(value),
                None => Some(missing_reply()),
            }),
        }
    }

    fn reply(&mut self) -> Result<Value> {
        match self {
            Replies::Wire {
                connection,
                deadline,
                interrupt,
            } => connection.receive_by(*deadline, interrupt),
            Replies::ReadAhead(values) => Ok(values.pop_front().unwrap_or_else(missing_reply)),
        }
    }
}

/// Never met: a pipeline's frames are counted when it is written.
fn missing_reply() -> Value {
    Value::ServerError(codec::ErrorReply(
        "ERR reply missing from a read-ahead".into(),
    ))
}

/// Runs `requests` to completion on one connection: one pipeline, then the
/// requests that asked to be sent again, at most twice each. Each round is
/// read under one deadline.
pub fn run(
    connection: &mut Link,
    dialect: &Dialect,
    requests: &[Request<'_>],
    interrupt: &Interrupt,
) -> Result<Vec<Value>> {
    if let [request] = requests {
        return run_one(connection, dialect, *request, interrupt).map(|value| vec![value]);
    }
    let mut replies: Vec<Option<Value>> = vec![None; requests.len()];
    let mut pending: Vec<usize> = (0..requests.len()).collect();
    for _ in 0..3 {
        let round: Vec<Request<'_>> = pending.iter().map(|&index| requests[index]).collect();
        let ticket = send(connection, dialect, &round, interrupt)?;
        let deadline = Instant::now() + connection.read_timeout();
        let received = receive(connection, dialect, ticket, &round, deadline, interrupt)?;
        let mut again = Vec::new();
        for (index, received) in pending.into_iter().zip(received) {
            match received {
                Received::Reply(value) => replies[index] = Some(value),
                Received::Resend => again.push(index),
            }
        }
        pending = again;
        if pending.is_empty() {
            break;
        }
    }
    if let Some(&index) = pending.first() {
        return Err(Error::Command {
            server: connection.server().to_string(),
            detail: format!("server keeps refusing {}", requests[index].describe()),
        });
    }
    Ok(replies
        .into_iter()
        .map(|reply| reply.unwrap_or(Value::Nil))
        .collect())
}

/// Runs one request to completion (see `run`): the hot path, which
/// allocates nothing but the reply.
pub fn run_one(
    connection: &mut Link,
    dialect: &Dialect,
    request: Request<'_>,
    interrupt: &Interrupt,
) -> Result<Value> {
    for _ in 0..3 {
        let ticket = send(
            connection,
            dialect,
            std::slice::from_ref(&request),
            interrupt,
        )?;
        let deadline = Instant::now() + connection.read_timeout();
        if let Received::Reply(value) =
            receive_single(connection, dialect, ticket, &request, deadline, interrupt)?
        {
            return Ok(value);
        }
    }
    Err(Error::Command {
        server: connection.server().to_string(),
        detail: format!("server keeps refusing {}", request.describe()),
    })
}

/// Reads one request's reply: its acknowledgements first (the first error
/// among them stands for EXEC's reply, which then only says EXECABORT).
fn receive_one(replies: &mut Replies<'_>, queued: usize) -> Result<Value> {
    let mut refused = None;
    for _ in 0..queued {
        if let Some(value) = replies.acknowledgement()? {
            if refused.is_none() && value.as_error().is_some() {
                refused = Some(value);
            }
        }
    }
    let value = replies.reply()?;
    Ok(match refused {
        Some(error) if value.as_error().is_some() || value == Value::Nil => error,
        _ => value,
    })
}

fn classify(
    connection: &mut Link,
    dialect: &Dialect,
    request: &Request<'_>,
    value: Value,
) -> Received {
    let Some(error) = value.as_error() else {
        return Received::Reply(value);
    };
    if error.is_noscript() {
        if let Some(script) = request.script() {
            connection.loads.due.push(script);
            return Received::Resend;
        }
    }
    if let Request::Lock { command, .. } = request {
        // Also when the dialect already says so: a pipeline may hold
        // commands encoded before another reply taught us the server is old.
        if lock::needs_acquire_script(command, error) {
            dialect.learn_no_set_get();
            return Received::Resend;
        }
    }
    Received::Reply(value)
}

/// The negative control of the redirect tests: with `WITHOUT_TICKETS` set
/// on a thread, a ticket reads the oldest pipeline its connection owes,
/// whichever it is (the executor before tickets).
#[cfg(test)]
pub(crate) mod testing {
    thread_local! {
        pub(crate) static WITHOUT_TICKETS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
}
