//! One configured Redis server: how each protocol command is spoken to it.

use crate::connection::{server_error, server_error_text, Connection, Interrupt, ServerConfig};
use crate::error::{Error, Result};
use crate::pool::Pool;
use crate::protocol::{AcquireReply, Command, Entry, Reply, TokenTtl};
use crate::resp::{self, Arg};
use crate::scripts;
use redis::{ErrorKind, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

pub struct Server {
    pub config: ServerConfig,
    pub pool: Pool,
    /// `SET .. NX GET` needs Redis 7; older servers get the Lua fallback,
    /// learnt from their first syntax error.
    set_get: AtomicBool,
    /// What to do about a `maxmemory-policy` that may evict lock keys.
    pub eviction: EvictionCheck,
    eviction_checked: AtomicBool,
    eviction_warning: OnceLock<String>,
    warning_pending: AtomicBool,
    /// Best-effort cleanups are skipped until this many ms after `created`.
    skip_cleanup_until_ms: AtomicU64,
    created: Instant,
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

pub(crate) enum Decoded {
    Reply(Reply),
    /// The server lacks the script (restart, SCRIPT FLUSH): load it, resend.
    LoadScript(&'static redis::Script),
    /// The server is older than Redis 7: resend through the Lua fallback.
    UseAcquireScript,
}

impl Server {
    pub fn new(config: ServerConfig, pool_size: usize, eviction: EvictionCheck) -> Server {
        Server {
            config,
            pool: Pool::new(pool_size),
            set_get: AtomicBool::new(true),
            eviction,
            eviction_checked: AtomicBool::new(false),
            eviction_warning: OnceLock::new(),
            warning_pending: AtomicBool::new(false),
            skip_cleanup_until_ms: AtomicU64::new(0),
            created: Instant::now(),
        }
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

    fn check_eviction(&self, connection: &mut Connection, interrupt: &Interrupt) -> Result<()> {
        let strict = match self.eviction {
            EvictionCheck::Off => return Ok(()),
            EvictionCheck::Warn if self.eviction_checked.swap(true, Ordering::AcqRel) => {
                return Ok(())
            }
            EvictionCheck::Warn => false,
            EvictionCheck::Strict => true,
        };
        let packed = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .get_packed_command();
        let policy = match connection.request(&packed, interrupt)? {
            Value::Array(items) => match items.as_slice() {
                [_, Value::BulkString(policy)] => String::from_utf8_lossy(policy).into_owned(),
                _ => return Ok(()),
            },
            Value::Map(items) => match items.first() {
                Some((_, Value::BulkString(policy))) => {
                    String::from_utf8_lossy(policy).into_owned()
                }
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

    /// A connection for one operation: an idle one of this process, else new.
    pub fn connect(&self, interrupt: &Interrupt) -> Result<Connection> {
        let mut connection = Connection::open(&self.config, interrupt)?;
        self.check_eviction(&mut connection, interrupt)?;
        Ok(connection)
    }

    /// Runs one command to completion on `connection`.
    pub fn execute(
        &self,
        connection: &mut Connection,
        key: &[u8],
        command: &Command,
        interrupt: &Interrupt,
    ) -> Result<Reply> {
        self.send(connection, key, command, interrupt)?;
        let deadline = Instant::now() + connection.read_timeout();
        self.finish(connection, key, command, deadline, interrupt)
    }

    /// First half of a command whose reply is read later (to ask two servers at once).
    pub fn send(
        &self,
        connection: &mut Connection,
        key: &[u8],
        command: &Command,
        interrupt: &Interrupt,
    ) -> Result<()> {
        connection.send(&self.encode(key, command), interrupt)
    }

    /// Second half: reads the reply, and handles NOSCRIPT or an old server by
    /// resending on the same connection.
    pub fn finish(
        &self,
        connection: &mut Connection,
        key: &[u8],
        command: &Command,
        deadline: Instant,
        interrupt: &Interrupt,
    ) -> Result<Reply> {
        let value = receive_reply(connection, command, deadline, interrupt)?;
        let decoded = self.decode(command, value)?;
        self.retry(connection, key, command, decoded, interrupt)
    }

    fn encode(&self, key: &[u8], command: &Command) -> Vec<u8> {
        let mut packed = Vec::new();
        self.encode_into(key, command, &mut packed);
        packed
    }

    fn encode_into(&self, key: &[u8], command: &Command, packed: &mut Vec<u8>) {
        match command {
            Command::Acquire { token, ttl_ms } => {
                if self.set_get.load(Ordering::Relaxed) {
                    write_set_nx_get(packed, key, token, Some(*ttl_ms));
                } else {
                    write_evalsha(packed, &scripts::ACQUIRE, key, token, Some(*ttl_ms));
                }
            }
            Command::CompareAndDelete { token } => {
                write_evalsha(packed, &scripts::COMPARE_AND_DELETE, key, token, None)
            }
            Command::CompareAndExtend { token, ttl_ms } => write_evalsha(
                packed,
                &scripts::COMPARE_AND_EXTEND,
                key,
                token,
                Some(*ttl_ms),
            ),
            Command::Exists => resp::write_command(packed, &["EXISTS".into(), key.into()]),
            Command::TokenTtl { token } => {
                write_evalsha(packed, &scripts::TOKEN_TTL, key, token, None)
            }
            Command::ReadWithTtl => {
                // MULTI/EXEC makes the two reads atomic, at a fraction of a
                // Lua call's cost (it runs for every key of a backfill, twice).
                resp::write_command(packed, &["MULTI".into()]);
                resp::write_command(packed, &["GET".into(), key.into()]);
                resp::write_command(packed, &["PTTL".into(), key.into()]);
                resp::write_command(packed, &["TIME".into()]);
                resp::write_command(packed, &["EXEC".into()]);
            }
            Command::Mirror { value, ttl_ms } => {
                if self.set_get.load(Ordering::Relaxed) {
                    write_set_nx_get(packed, key, value, *ttl_ms)
                } else {
                    write_evalsha(packed, &scripts::ACQUIRE, key, value, *ttl_ms)
                }
            }
            Command::ExtendIfGreater { token, ttl_ms } => write_evalsha(
                packed,
                &scripts::EXTEND_IF_GREATER,
                key,
                token,
                Some(*ttl_ms),
            ),
        }
    }

    /// Sends many commands in one write (a pipeline). `packed` is scratch
    /// space, kept by the caller across rounds so that a large buffer is not
    /// allocated and freed for every page.
    pub fn pipeline_send(
        &self,
        connection: &mut Connection,
        commands: &[(&[u8], &Command)],
        packed: &mut Vec<u8>,
        interrupt: &Interrupt,
    ) -> Result<()> {
        packed.clear();
        if all_reads(commands) {
            // One transaction per chunk of keys: MGET, then each key's PTTL.
            // Every key's value and TTL are still read atomically (the whole
            // chunk is), for a fraction of a transaction per key; a chunk is
            // small enough that the server is not held for long.
            for chunk in commands.chunks(READS_PER_TRANSACTION) {
                resp::write_command(packed, &["MULTI".into()]);
                resp::write_header_of(packed, chunk.len() + 1);
                resp::write_arg(packed, "MGET".into());
                for (key, _) in chunk {
                    resp::write_arg(packed, (*key).into());
                }
                for (key, _) in chunk {
                    resp::write_command(packed, &["PTTL".into(), (*key).into()]);
                }
                resp::write_command(packed, &["TIME".into()]);
                resp::write_command(packed, &["EXEC".into()]);
            }
        } else {
            for (key, command) in commands {
                self.encode_into(key, command, packed);
            }
        }
        connection.send(packed, interrupt)
    }

    /// Replies to one chunk of reads sent as one MULTI (see `pipeline_send`).
    fn finish_reads(
        &self,
        connection: &mut Connection,
        count: usize,
        interrupt: &Interrupt,
    ) -> Result<Vec<Result<Reply>>> {
        let mut refused = None;
        for _ in 0..count + 3 {
            // MULTI's OK, then QUEUED for MGET, each PTTL and TIME.
            if let Some(value) = connection.receive_acknowledgement(interrupt)? {
                if refused.is_none() {
                    refused = Some(
                        server_error(&value)
                            .map_or_else(|| format!("{value:?}"), |e| server_error_text(&e)),
                    );
                }
            }
        }
        let exec = connection.receive(interrupt)?;
        let bad = |detail: String| Error::Command {
            server: self.name().to_string(),
            detail,
        };
        let Value::Array(mut results) = exec else {
            return Err(bad(format!(
                "reading a page of keys failed: {}",
                refused.unwrap_or_else(|| format!("{exec:?}"))
            )));
        };
        if results.len() != count + 2 {
            return Err(bad(format!("EXEC returned {} results", results.len())));
        }
        let now_ms = results
            .pop()
            .and_then(server_time_ms)
            .ok_or_else(|| bad("TIME returned no time".into()))?;
        let pttls = results.split_off(1);
        let values = match results.pop() {
            Some(Value::Array(values)) if values.len() == count => values,
            other => return Err(bad(format!("MGET returned {other:?}"))),
        };
        Ok(values
            .into_iter()
            .zip(pttls)
            .map(|(value, pttl)| match (value, pttl) {
                // MGET answers nil for keys that are not strings: never locks.
                (Value::BulkString(value), Value::Int(pttl)) if pttl != -2 => {
                    Ok(Reply::Entry(Some(Entry::read_at(value, pttl, now_ms))))
                }
                _ => Ok(Reply::Entry(None)),
            })
            .collect())
    }

    /// Reads and decodes a pipeline's replies, resending nothing: a reply
    /// that asks for a resend (NOSCRIPT) comes back as such, for a caller
    /// with later pipelines in flight on the same connection to schedule.
    pub(crate) fn pipeline_decode(
        &self,
        connection: &mut Connection,
        commands: &[(&[u8], &Command)],
        interrupt: &Interrupt,
    ) -> Result<Vec<Result<Decoded>>> {
        if all_reads(commands) {
            let mut replies = Vec::with_capacity(commands.len());
            for chunk in commands.chunks(READS_PER_TRANSACTION) {
                let chunk = self.finish_reads(connection, chunk.len(), interrupt)?;
                replies.extend(chunk.into_iter().map(|reply| reply.map(Decoded::Reply)));
            }
            return Ok(replies);
        }
        let mut replies = Vec::with_capacity(commands.len());
        for (_, command) in commands {
            let deadline = Instant::now() + connection.read_timeout();
            let value = receive_reply(connection, command, deadline, interrupt)?;
            replies.push(self.decode(command, value));
        }
        Ok(replies)
    }

    /// Answers what a reply asked for, then sends the command again: a
    /// script to load (NOSCRIPT), or the Lua acquire on an old server, which
    /// may itself need loading first. At most twice.
    fn retry(
        &self,
        connection: &mut Connection,
        key: &[u8],
        command: &Command,
        mut decoded: Decoded,
        interrupt: &Interrupt,
    ) -> Result<Reply> {
        for _ in 0..2 {
            match decoded {
                Decoded::Reply(reply) => return Ok(reply),
                Decoded::LoadScript(script) => {
                    script.load(connection).map_err(|error| Error::Command {
                        server: self.name().to_string(),
                        detail: format!("cannot load script: {error}"),
                    })?;
                }
                Decoded::UseAcquireScript => self.use_acquire_script(),
            }
            connection.send(&self.encode(key, command), interrupt)?;
            let deadline = Instant::now() + connection.read_timeout();
            let value = receive_reply(connection, command, deadline, interrupt)?;
            decoded = self.decode(command, value)?;
        }
        match decoded {
            Decoded::Reply(reply) => Ok(reply),
            _ => Err(Error::Command {
                server: self.name().to_string(),
                detail: format!("server keeps refusing {}", command_name(command)),
            }),
        }
    }

    /// From now on, acquire (and mirror) with the Lua script: this server is
    /// older than Redis 7 (its `SET .. NX GET` was a syntax error).
    pub(crate) fn use_acquire_script(&self) {
        self.set_get.store(false, Ordering::Relaxed);
    }

    pub(crate) fn decode(&self, command: &Command, value: Value) -> Result<Decoded> {
        if let Some(error) = server_error(&value) {
            if error.kind() == ErrorKind::NoScriptError {
                if let Some(script) = self.script_of(command) {
                    return Ok(Decoded::LoadScript(script));
                }
            }
            let text = server_error_text(&error);
            // Also when the flag is already down: a pipeline may hold commands
            // encoded before another reply taught us the server is old.
            if matches!(command, Command::Acquire { .. } | Command::Mirror { .. })
                && text.to_ascii_lowercase().contains("syntax error")
            {
                return Ok(Decoded::UseAcquireScript);
            }
            return Err(Error::Command {
                server: self.name().to_string(),
                detail: format!("{} failed: {text}", command_name(command)),
            });
        }
        let reply = match (command, value) {
            (Command::Acquire { .. } | Command::Mirror { .. }, Value::Nil) => {
                Reply::Acquire(AcquireReply::Set)
            }
            (
                Command::Acquire { token, .. } | Command::Mirror { value: token, .. },
                Value::BulkString(current),
            ) => {
                if current == *token {
                    Reply::Acquire(AcquireReply::AlreadyMine)
                } else {
                    Reply::Acquire(AcquireReply::Taken)
                }
            }
            (
                Command::CompareAndDelete { .. }
                | Command::CompareAndExtend { .. }
                | Command::ExtendIfGreater { .. }
                | Command::Exists,
                Value::Int(n),
            ) => Reply::Flag(n > 0),
            (Command::ReadWithTtl, Value::Array(items)) => match items.as_slice() {
                [Value::BulkString(value), Value::Int(pttl), time] if *pttl != -2 => {
                    match server_time_ms(time.clone()) {
                        Some(now_ms) => {
                            Reply::Entry(Some(Entry::read_at(value.clone(), *pttl, now_ms)))
                        }
                        None => {
                            return Err(Error::Command {
                                server: self.name().to_string(),
                                detail: format!("unexpected reply to TIME: {time:?}"),
                            })
                        }
                    }
                }
                // Absent, or not a string (GET's WRONGTYPE inside EXEC): never a lock.
                [Value::Nil, _, _] | [Value::ServerError(_), _, _] => Reply::Entry(None),
                other => {
                    return Err(Error::Command {
                        server: self.name().to_string(),
                        detail: format!("unexpected reply to read with ttl: {other:?}"),
                    })
                }
            },
            (Command::TokenTtl { .. }, Value::Int(n)) => Reply::Ttl(match n {
                -2 => TokenTtl::NotHeld,
                -1 => TokenTtl::Forever,
                n if n >= 0 => TokenTtl::Millis(n as u64),
                _ => TokenTtl::NotHeld,
            }),
            (command, other) => {
                return Err(Error::Command {
                    server: self.name().to_string(),
                    detail: format!("unexpected reply to {}: {other:?}", command_name(command)),
                })
            }
        };
        Ok(Decoded::Reply(reply))
    }

    fn script_of(&self, command: &Command) -> Option<&'static redis::Script> {
        match command {
            // The mirror runs the acquire script on servers without SET .. NX GET.
            Command::Acquire { .. } | Command::Mirror { .. } => Some(&scripts::ACQUIRE),
            Command::CompareAndDelete { .. } => Some(&scripts::COMPARE_AND_DELETE),
            Command::CompareAndExtend { .. } => Some(&scripts::COMPARE_AND_EXTEND),
            Command::TokenTtl { .. } => Some(&scripts::TOKEN_TTL),
            Command::ExtendIfGreater { .. } => Some(&scripts::EXTEND_IF_GREATER),
            Command::Exists | Command::ReadWithTtl => None,
        }
    }
}

/// TIME's reply ([seconds, microseconds]) in milliseconds.
pub(crate) fn server_time_ms(value: Value) -> Option<u64> {
    let Value::Array(parts) = value else {
        return None;
    };
    let number = |value: &Value| match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse::<u64>().ok(),
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    };
    match parts.as_slice() {
        [seconds, micros] => Some(number(seconds)? * 1000 + number(micros)? / 1000),
        _ => None,
    }
}

/// Keys read in one MULTI/EXEC of a pipeline of reads: the source (a busy
/// jobs Redis) runs a transaction without serving anyone else, ~1 ms here.
const READS_PER_TRANSACTION: usize = 1000;

fn all_reads(commands: &[(&[u8], &Command)]) -> bool {
    commands.len() > 1
        && commands
            .iter()
            .all(|(_, command)| matches!(command, Command::ReadWithTtl))
}

/// Reads the reply to one command; a command sent as MULTI/../EXEC first
/// reads the acknowledgements of MULTI and of each queued command.
fn receive_reply(
    connection: &mut Connection,
    command: &Command,
    deadline: Instant,
    interrupt: &Interrupt,
) -> Result<Value> {
    let acknowledgements = match command {
        Command::ReadWithTtl => 4,
        _ => 0,
    };
    let mut refused = None;
    for _ in 0..acknowledgements {
        let value = connection.receive_by(deadline, interrupt)?;
        if refused.is_none() && server_error(&value).is_some() {
            refused = Some(value);
        }
    }
    let value = connection.receive_by(deadline, interrupt)?;
    Ok(match refused {
        Some(error) if server_error(&value).is_some() || value == Value::Nil => error,
        _ => value,
    })
}

/// `SET key value NX GET [PX ttl_ms]`: set unless present, answering what was there.
fn write_set_nx_get(packed: &mut Vec<u8>, key: &[u8], value: &[u8], ttl_ms: Option<u64>) {
    let mut args: [Arg; 7] = [
        "SET".into(),
        key.into(),
        value.into(),
        "NX".into(),
        "GET".into(),
        "PX".into(),
        0.into(),
    ];
    let used = match ttl_ms {
        Some(ttl_ms) => {
            args[6] = ttl_ms.into();
            7
        }
        None => 5,
    };
    resp::write_command(packed, &args[..used]);
}

/// `EVALSHA sha 1 key token [ttl_ms]`: every script takes one key, the token,
/// and for some a TTL.
fn write_evalsha(
    packed: &mut Vec<u8>,
    script: &'static redis::Script,
    key: &[u8],
    token: &[u8],
    ttl_ms: Option<u64>,
) {
    let mut args: [Arg; 6] = [
        "EVALSHA".into(),
        script.get_hash().into(),
        "1".into(),
        key.into(),
        token.into(),
        0.into(),
    ];
    let used = match ttl_ms {
        Some(ttl_ms) => {
            args[5] = ttl_ms.into();
            6
        }
        None => 5,
    };
    resp::write_command(packed, &args[..used]);
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Acquire { .. } => "acquire",
        Command::CompareAndDelete { .. } => "compare-and-delete",
        Command::CompareAndExtend { .. } => "compare-and-extend",
        Command::Exists => "exists",
        Command::TokenTtl { .. } => "token ttl",
        Command::ReadWithTtl => "read with ttl",
        Command::Mirror { .. } => "mirror",
        Command::ExtendIfGreater { .. } => "extend if greater",
    }
}

/// One server and the connection an operation holds to it, as a `Store`.
pub struct RedisStore<'a> {
    pub server: &'a Server,
    pub connection: &'a mut Connection,
    pub interrupt: &'a Interrupt,
}

impl crate::store::Store for RedisStore<'_> {
    fn execute(&mut self, key: &[u8], command: &Command) -> Result<Reply> {
        self.server
            .execute(self.connection, key, command, self.interrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::ServerConfig;
    use proptest::prelude::*;
    use std::time::Duration;

    fn server() -> Server {
        let config = ServerConfig::parse("redis://127.0.0.1:6379/0", Duration::from_secs(1))
            .expect("a valid URL");
        Server::new(config, 1, EvictionCheck::Off)
    }

    #[test]
    fn commands_are_written_as_the_redis_crate_writes_them() {
        let server = server();
        let encoded = |command: &Command| server.encode(b"k", command);
        let theirs = |cmd: &mut redis::Cmd| cmd.get_packed_command();
        let cad = scripts::COMPARE_AND_DELETE.get_hash();
        let extend = scripts::EXTEND_IF_GREATER.get_hash();
        assert_eq!(
            encoded(&Command::Acquire {
                token: b"t".to_vec(),
                ttl_ms: 5
            }),
            theirs(
                redis::cmd("SET")
                    .arg("k")
                    .arg("t")
                    .arg("NX")
                    .arg("GET")
                    .arg("PX")
                    .arg(5)
            )
        );
        assert_eq!(
            encoded(&Command::Mirror {
                value: b"v".to_vec(),
                ttl_ms: None
            }),
            theirs(redis::cmd("SET").arg("k").arg("v").arg("NX").arg("GET"))
        );
        assert_eq!(
            encoded(&Command::CompareAndDelete {
                token: b"t".to_vec()
            }),
            theirs(redis::cmd("EVALSHA").arg(cad).arg(1).arg("k").arg("t"))
        );
        assert_eq!(
            encoded(&Command::ExtendIfGreater {
                token: b"t".to_vec(),
                ttl_ms: 7
            }),
            theirs(
                redis::cmd("EVALSHA")
                    .arg(extend)
                    .arg(1)
                    .arg("k")
                    .arg("t")
                    .arg(7)
            )
        );
    }

    fn commands() -> Vec<Command> {
        let token = b"t".to_vec();
        vec![
            Command::Acquire {
                token: token.clone(),
                ttl_ms: 5,
            },
            Command::CompareAndDelete {
                token: token.clone(),
            },
            Command::CompareAndExtend {
                token: token.clone(),
                ttl_ms: 5,
            },
            Command::Exists,
            Command::TokenTtl {
                token: token.clone(),
            },
            Command::ReadWithTtl,
            Command::Mirror {
                value: token.clone(),
                ttl_ms: Some(5),
            },
            Command::ExtendIfGreater { token, ttl_ms: 5 },
        ]
    }

    proptest! {
        // Whatever bytes a server (or a broken proxy) sends, parsing and
        // decoding them returns a value or an error, never a panic.
        #[test]
        fn any_reply_bytes_decode_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let server = server();
            if let Ok(value) = redis::parse_redis_value(&bytes) {
                for command in commands() {
                    let _ = server.decode(&command, value.clone());
                }
            }
        }

        #[test]
        fn well_formed_replies_of_any_shape_decode_without_panicking(
            kind in 0u8..6, number in any::<i64>(), text in proptest::collection::vec(any::<u8>(), 0..16)
        ) {
            let server = server();
            let value = match kind {
                0 => Value::Int(number),
                1 => Value::BulkString(text.clone()),
                2 => Value::Nil,
                3 => Value::Array(vec![Value::BulkString(text.clone()), Value::Int(number)]),
                4 => Value::Array(vec![Value::Int(number)]),
                _ => Value::SimpleString(String::from_utf8_lossy(&text).into_owned()),
            };
            for command in commands() {
                let _ = server.decode(&command, value.clone());
            }
        }

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
            let _ = crate::phase::Phase::from_index(index);
            let _ = crate::phase::Phase::from_name(&name);
        }
    }
}
