//! One Redis process of a configuration (a standalone server, a Sentinel
//! setting's current master, or one master of a cluster): how to reach it,
//! its idle connections, what was learnt of it, and how each protocol
//! command is run on it. Both `server` and `cluster` hold nodes; a node
//! knows neither.
//!
//! A Sentinel setting's node has no configured address: it asks the
//! sentinels (`SENTINEL get-master-addr-by-name`) and checks with `ROLE`. A
//! broken connection (or a READONLY reply, from a master demoted to replica)
//! makes the node forget the address and drop its idle connections; the next
//! connection asks the sentinels again. The scripts the new master lacks come
//! back through the executor's NOSCRIPT path.

use crate::error::{Error, Result};
use crate::protocol::{Command, Reply};
use crate::wire::codec::{lock, Value};
use crate::wire::connection::{Connection, Interrupt, ServerConfig};
use crate::wire::pipeline::{self, Dialect, Link, Received, Request};
use crate::wire::pool::Pool;
use crate::wire::transport::{self, Address};
use crate::wire::url::Sentinel;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// One Redis process: where to reach it, its idle connections, and what we
/// learnt of it.
pub struct Node {
    pub config: ServerConfig,
    pub pool: Pool,
    /// Learnt from replies: `SET .. NX GET` or the Lua acquire (Redis 6).
    pub dialect: Dialect,
    /// What to do about a `maxmemory-policy` that may evict lock keys.
    pub eviction: EvictionCheck,
    eviction_checked: AtomicBool,
    eviction_warning: OnceLock<String>,
    warning_pending: AtomicBool,
    /// Best-effort cleanups are skipped until this many ms after `created`.
    skip_cleanup_until_ms: AtomicU64,
    created: Instant,
    /// With Sentinel: the master the sentinels last named, until a failure.
    master: Mutex<Option<Address>>,
    /// With Sentinel: how many times a master was looked up (for stats).
    pub discoveries: AtomicU64,
}

/// How long a server that failed a best-effort cleanup is left alone.
pub const CLEANUP_BACKOFF_MS: u64 = 5_000;

/// A server allowed to evict keys can evict a held lock, and a second job
/// then runs: only `noeviction` is safe for locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionCheck {
    Off,
    /// Checked at the first connection; a warning reaches the caller once.
    Warn,
    /// Checked at every new connection; an evicting server is an error.
    Strict,
}

impl Node {
    pub fn new(config: ServerConfig, pool_size: usize, eviction: EvictionCheck) -> Node {
        Node {
            config,
            pool: Pool::new(pool_size),
            dialect: Dialect::default(),
            eviction,
            eviction_checked: AtomicBool::new(false),
            eviction_warning: OnceLock::new(),
            warning_pending: AtomicBool::new(false),
            skip_cleanup_until_ms: AtomicU64::new(0),
            created: Instant::now(),
            master: Mutex::new(None),
            discoveries: AtomicU64::new(0),
        }
    }

    /// Called when a connection to this node broke (or met READONLY): with
    /// Sentinel, the master is looked up again and idle connections to the
    /// old one are dropped. Nothing for a configured address.
    pub fn connection_failed(&self) {
        if self.config.sentinel.is_some() {
            *self.master.lock().unwrap_or_else(|p| p.into_inner()) = None;
            self.pool.clear();
        }
    }

    /// The master's address, asked of the sentinels when not known.
    fn master(&self, sentinel: &Sentinel, interrupt: &Interrupt) -> Result<Address> {
        if let Some(address) = self
            .master
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(address);
        }
        self.discoveries.fetch_add(1, Ordering::Relaxed);
        let mut unreachable = Vec::new();
        let mut unknown = 0;
        for address in &sentinel.sentinels {
            match self.ask_sentinel(sentinel, address, interrupt) {
                Ok(Some(master)) => {
                    *self.master.lock().unwrap_or_else(|p| p.into_inner()) = Some(master.clone());
                    return Ok(master);
                }
                Ok(None) => unknown += 1,
                Err(error @ Error::Interrupted { .. }) => return Err(error),
                Err(error) => unreachable.push(format!(
                    "{}: {}",
                    transport::describe(address),
                    error.detail()
                )),
            }
        }
        Err(Error::Connection {
            server: self.name().to_string(),
            detail: if unknown > 0 {
                format!(
                    "no sentinel knows a master named {:?} ({unknown} of {} answered; check the name)",
                    sentinel.master,
                    sentinel.sentinels.len()
                )
            } else {
                format!("no sentinel reachable ({})", unreachable.join("; "))
            },
        })
    }

    fn ask_sentinel(
        &self,
        sentinel: &Sentinel,
        address: &Address,
        interrupt: &Interrupt,
    ) -> Result<Option<Address>> {
        let mut connection = Link::new(Connection::open_sentinel(
            &self.config,
            sentinel,
            address,
            interrupt,
        )?);
        let request = Request::Plain(&[
            "SENTINEL".into(),
            "get-master-addr-by-name".into(),
            sentinel.master.as_str().into(),
        ]);
        match pipeline::run_one(&mut connection, &self.dialect, request, interrupt)? {
            Value::Array(items) => match items.as_slice() {
                [Value::BulkString(host), Value::BulkString(port)] => {
                    let host = String::from_utf8_lossy(host).into_owned();
                    let port = String::from_utf8_lossy(port).parse::<u16>().map_err(|_| {
                        Error::Command {
                            server: transport::describe(address),
                            detail: "sentinel answered a bad port".into(),
                        }
                    })?;
                    Ok(Some(Address::Tcp(host, port)))
                }
                _ => Ok(None),
            },
            Value::Nil => Ok(None),
            Value::ServerError(error) => Err(Error::Command {
                server: transport::describe(address),
                detail: format!("SENTINEL get-master-addr-by-name: {}", error.0),
            }),
            _ => Ok(None),
        }
    }

    /// Checks that the server the sentinels named is a master (not a
    /// replica still being promoted, or a demoted old master).
    fn check_role(&self, connection: &mut Link, interrupt: &Interrupt) -> Result<()> {
        let role = match self.run(connection, Request::Plain(&["ROLE".into()]), interrupt)? {
            Value::Array(items) => match items.first() {
                Some(Value::BulkString(role)) => String::from_utf8_lossy(role).into_owned(),
                _ => String::new(),
            },
            _ => String::new(),
        };
        if role == "master" {
            return Ok(());
        }
        Err(Error::Connection {
            server: connection.server().to_string(),
            detail: format!(
                "the sentinels named this server as the master, but its ROLE is {role:?} (a failover in progress?)"
            ),
        })
    }

    /// Whether best-effort cleanups skip this server for now (it just failed one).
    pub fn skips_cleanup(&self) -> bool {
        let now = self.created.elapsed().as_millis() as u64;
        now < self.skip_cleanup_until_ms.load(Ordering::Acquire)
    }

    /// Records a failed best-effort cleanup: skip this server for a while.
    pub fn back_off_cleanup(&self) {
        let now = self.created.elapsed().as_millis() as u64;
        self.skip_cleanup_until_ms
            .store(now + CLEANUP_BACKOFF_MS, Ordering::Release);
    }

    /// The eviction warning, once (then `None`).
    pub fn take_warning(&self) -> Option<String> {
        if self.warning_pending.swap(false, Ordering::AcqRel) {
            self.eviction_warning.get().cloned()
        } else {
            None
        }
    }

    fn check_eviction(&self, connection: &mut Link, interrupt: &Interrupt) -> Result<()> {
        let strict = match self.eviction {
            EvictionCheck::Off => return Ok(()),
            EvictionCheck::Warn if self.eviction_checked.swap(true, Ordering::AcqRel) => {
                return Ok(())
            }
            EvictionCheck::Warn => false,
            EvictionCheck::Strict => true,
        };
        let request = Request::Plain(&["CONFIG".into(), "GET".into(), "maxmemory-policy".into()]);
        let policy = match self.run(connection, request, interrupt)? {
            Value::Array(items) => match items.as_slice() {
                [_, Value::BulkString(policy)] => String::from_utf8_lossy(policy).into_owned(),
                _ => return Ok(()),
            },
            // CONFIG is often disabled on managed Redis: nothing to learn.
            _ => return Ok(()),
        };
        if policy == "noeviction" {
            return Ok(());
        }
        let message = format!(
            "{}: maxmemory-policy is {policy}: under memory pressure Redis may evict a held lock, \
             and a second job then runs; set maxmemory-policy noeviction on a locks Redis",
            self.name()
        );
        if strict {
            return Err(Error::Command {
                server: self.name().to_string(),
                detail: format!(
                    "maxmemory-policy is {policy}, which may evict locks (eviction_policy_check is :raise)"
                ),
            });
        }
        if self.eviction_warning.set(message).is_ok() {
            self.warning_pending.store(true, Ordering::Release);
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// A new connection, checked as configured.
    pub fn connect(&self, interrupt: &Interrupt) -> Result<Link> {
        let mut connection = match &self.config.sentinel {
            None => Link::new(Connection::open(&self.config, interrupt)?),
            Some(sentinel) => {
                let address = self.master(sentinel, interrupt)?;
                let opened =
                    Connection::open_to(&self.config, &address, interrupt).and_then(|connection| {
                        let mut connection = Link::new(connection);
                        self.check_role(&mut connection, interrupt)?;
                        Ok(connection)
                    });
                match opened {
                    Ok(connection) => connection,
                    Err(error) => {
                        self.connection_failed();
                        return Err(error);
                    }
                }
            }
        };
        self.check_eviction(&mut connection, interrupt)?;
        Ok(connection)
    }

    /// Runs one request to completion through the executor.
    pub fn run(
        &self,
        connection: &mut Link,
        request: Request<'_>,
        interrupt: &Interrupt,
    ) -> Result<Value> {
        pipeline::run_one(connection, &self.dialect, request, interrupt)
    }

    /// First half of a command whose reply is read later (to ask two servers at once).
    pub fn send(
        &self,
        connection: &mut Link,
        key: &[u8],
        command: &Command,
        interrupt: &Interrupt,
    ) -> Result<pipeline::Ticket> {
        let request = [Request::Lock { key, command }];
        pipeline::send(connection, &self.dialect, &request, interrupt)
    }

    /// Second half: reads the reply by `deadline`; a reply that asks for a
    /// resend (NOSCRIPT, an old server) is resent by the executor. The
    /// reply is left undecoded (it may be a cluster's redirect).
    pub fn finish(
        &self,
        connection: &mut Link,
        ticket: pipeline::Ticket,
        key: &[u8],
        command: &Command,
        deadline: Instant,
        interrupt: &Interrupt,
    ) -> Result<Value> {
        let request = Request::Lock { key, command };
        let received = pipeline::receive_single(
            connection,
            &self.dialect,
            ticket,
            &request,
            deadline,
            interrupt,
        )?;
        match received {
            Received::Reply(value) => Ok(value),
            Received::Resend => self.run(connection, request, interrupt),
        }
    }

    /// A protocol command's reply, or the server's refusal as an error.
    pub fn decode(&self, command: &Command, value: Value) -> Result<Reply> {
        lock::decode(command, value).map_err(|detail| Error::Command {
            server: self.name().to_string(),
            detail,
        })
    }
}
