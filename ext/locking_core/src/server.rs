//! One configured Redis server: how each protocol command is spoken to it.

use crate::connection::{server_error, server_error_text, Connection, Interrupt, ServerConfig};
use crate::error::{Error, Result};
use crate::pool::Pool;
use crate::protocol::{AcquireReply, Command, Entry, Reply, TokenTtl};
use crate::scripts;
use redis::{ErrorKind, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub struct Server {
    pub config: ServerConfig,
    pub pool: Pool,
    /// `SET .. NX GET` needs Redis 7; older servers get the Lua fallback,
    /// learnt from their first syntax error.
    set_get: AtomicBool,
}

enum Decoded {
    Reply(Reply),
    /// The server lacks the script (restart, SCRIPT FLUSH): load it, resend.
    LoadScript(&'static redis::Script),
    /// The server is older than Redis 7: resend through the Lua fallback.
    UseAcquireScript,
}

impl Server {
    pub fn new(config: ServerConfig, pool_size: usize) -> Server {
        Server {
            config,
            pool: Pool::new(pool_size),
            set_get: AtomicBool::new(true),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// A connection for one operation: an idle one of this process, else new.
    pub fn connect(&self, interrupt: &Interrupt) -> Result<Connection> {
        Connection::open(&self.config, interrupt)
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
        let value = connection.receive_by(deadline, interrupt)?;
        match self.decode(command, value)? {
            Decoded::Reply(reply) => Ok(reply),
            Decoded::LoadScript(script) => {
                script.load(connection).map_err(|error| Error::Command {
                    server: self.name().to_string(),
                    detail: format!("cannot load script: {error}"),
                })?;
                self.resend(connection, key, command, interrupt)
            }
            Decoded::UseAcquireScript => {
                self.set_get.store(false, Ordering::Relaxed);
                self.resend(connection, key, command, interrupt)
            }
        }
    }

    fn resend(
        &self,
        connection: &mut Connection,
        key: &[u8],
        command: &Command,
        interrupt: &Interrupt,
    ) -> Result<Reply> {
        let value = connection.request(&self.encode(key, command), interrupt)?;
        match self.decode(command, value)? {
            Decoded::Reply(reply) => Ok(reply),
            _ => Err(Error::Command {
                server: self.name().to_string(),
                detail: format!("server keeps refusing {}", command_name(command)),
            }),
        }
    }

    fn encode(&self, key: &[u8], command: &Command) -> Vec<u8> {
        match command {
            Command::Acquire { token, ttl_ms } => {
                if self.set_get.load(Ordering::Relaxed) {
                    redis::cmd("SET")
                        .arg(key)
                        .arg(token.as_slice())
                        .arg("NX")
                        .arg("GET")
                        .arg("PX")
                        .arg(*ttl_ms)
                        .get_packed_command()
                } else {
                    evalsha(&scripts::ACQUIRE, key, token)
                        .arg(*ttl_ms)
                        .get_packed_command()
                }
            }
            Command::CompareAndDelete { token } => {
                evalsha(&scripts::COMPARE_AND_DELETE, key, token).get_packed_command()
            }
            Command::CompareAndExtend { token, ttl_ms } => {
                evalsha(&scripts::COMPARE_AND_EXTEND, key, token)
                    .arg(*ttl_ms)
                    .get_packed_command()
            }
            Command::Exists => redis::cmd("EXISTS").arg(key).get_packed_command(),
            Command::TokenTtl { token } => {
                evalsha(&scripts::TOKEN_TTL, key, token).get_packed_command()
            }
            Command::ReadWithTtl => redis::cmd("EVALSHA")
                .arg(scripts::READ_WITH_TTL.get_hash())
                .arg(1)
                .arg(key)
                .get_packed_command(),
            Command::Mirror { value, ttl_ms } => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(key).arg(value.as_slice()).arg("NX").arg("GET");
                if let Some(ttl_ms) = ttl_ms {
                    cmd.arg("PX").arg(*ttl_ms);
                }
                cmd.get_packed_command()
            }
            Command::ExtendIfGreater { token, ttl_ms } => {
                evalsha(&scripts::EXTEND_IF_GREATER, key, token)
                    .arg(*ttl_ms)
                    .get_packed_command()
            }
        }
    }

    fn decode(&self, command: &Command, value: Value) -> Result<Decoded> {
        if let Some(error) = server_error(&value) {
            if error.kind() == ErrorKind::NoScriptError {
                if let Some(script) = self.script_of(command) {
                    return Ok(Decoded::LoadScript(script));
                }
            }
            let text = server_error_text(&error);
            if matches!(command, Command::Acquire { .. })
                && self.set_get.load(Ordering::Relaxed)
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
            (Command::ReadWithTtl, Value::Nil) => Reply::Entry(None),
            (Command::ReadWithTtl, Value::Array(items)) => match items.as_slice() {
                [Value::BulkString(value), Value::Int(pttl)] => Reply::Entry(Some(Entry {
                    value: value.clone(),
                    ttl_ms: u64::try_from(*pttl).ok(),
                })),
                [Value::Nil, _] => Reply::Entry(None),
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
            Command::Acquire { .. } => Some(&scripts::ACQUIRE),
            Command::CompareAndDelete { .. } => Some(&scripts::COMPARE_AND_DELETE),
            Command::CompareAndExtend { .. } => Some(&scripts::COMPARE_AND_EXTEND),
            Command::TokenTtl { .. } => Some(&scripts::TOKEN_TTL),
            Command::ReadWithTtl => Some(&scripts::READ_WITH_TTL),
            Command::ExtendIfGreater { .. } => Some(&scripts::EXTEND_IF_GREATER),
            Command::Exists | Command::Mirror { .. } => None,
        }
    }
}

fn evalsha(script: &redis::Script, key: &[u8], token: &[u8]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(1).arg(key).arg(token);
    cmd
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
