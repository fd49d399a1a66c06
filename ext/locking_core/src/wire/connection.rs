//! One connection to one Redis server: a transport (`transport`), a read
//! buffer, the connection prelude (AUTH, SELECT), and reads and writes
//! bounded by a deadline and by the operation's `Interrupt`. Commands are
//! written and replies read by the codec (`codec`); pipelines, NOSCRIPT and
//! the old-server fallback are the executor's (`pipeline`).

use crate::error::{Error, Result};
use crate::wire::codec::{self, Value};
use crate::wire::dial::{self, ConnectError};
use crate::wire::tls::{self, Tls};
use crate::wire::transport::{self, Address, Transport};
use crate::wire::url::Sentinel;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where and how to reach one server, parsed from its URL.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The URL without its password: used in every error message.
    pub name: String,
    /// The server (for a Sentinel setting: its first sentinel).
    pub address: Address,
    db: i64,
    username: Option<String>,
    password: Option<String>,
    /// TLS for the server (and for its sentinels), built once.
    pub tls: Option<Tls>,
    /// Whether certificates are checked (a warning when not).
    pub verifies_peer: bool,
    /// The sentinels to ask for the master, if the setting names them.
    pub sentinel: Option<Sentinel>,
    /// The seed nodes, for a Redis Cluster setting.
    pub cluster: Option<Vec<Address>>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

impl ServerConfig {
    pub fn parse(url: &str, timeout: Duration) -> Result<ServerConfig> {
        let parsed = crate::wire::url::parse(url).map_err(|why| {
            Error::InvalidArgument(format!(
                "invalid Redis URL {:?}: {why} (expected redis://[[user]:password@]host[:port][/db], \
                 rediss://..., redis+sentinel://host:port[,host:port]/master[/db], \
                 redis+cluster://host:port[,host:port] or unix:///path)",
                redact(url)
            ))
        })?;
        let tls = parsed
            .tls
            .as_ref()
            .map(Tls::new)
            .transpose()
            .map_err(|why| Error::InvalidArgument(format!("{}: {why}", parsed.name())))?;
        Ok(ServerConfig {
            name: parsed.name(),
            address: parsed.address.clone(),
            db: parsed.db,
            username: parsed.username.clone(),
            password: parsed.password.clone(),
            tls,
            verifies_peer: parsed.tls.as_ref().is_none_or(|tls| tls.verify_peer),
            sentinel: parsed.sentinel,
            cluster: parsed.cluster,
            connect_timeout: timeout,
            read_timeout: timeout,
            write_timeout: timeout,
        })
    }
}

/// A URL fit to print: the password (and the user's secret part) replaced
/// by "***", the user name kept (`redis://app:***@host:6379/0`); so are the
/// query's `password`, `pass` and `sentinel_password`.
pub fn redact(url: &str) -> String {
    let (main, query) = match url.split_once('?') {
        Some((main, query)) => (main, Some(query)),
        None => (url, None),
    };
    let mut out = match (main.find("://"), main.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &main[scheme_end + 3..at];
            let user = userinfo.split_once(':').map_or("", |(user, _)| user);
            format!("{}://{user}:***{}", &main[..scheme_end], &main[at..])
        }
        _ => main.to_string(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if matches!(name, "password" | "pass" | "sentinel_password") => {
                    format!("{name}=***")
                }
                _ => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

/// Reads or writes one socket against a deadline. A socket with a timeout
/// returns EINTR whenever a signal arrives (Ruby's timer thread sends them),
/// and retrying with the full timeout could wait forever; so each retry
/// waits only for what is left of the deadline.
struct Deadline<'a> {
    socket: &'a dyn Transport,
    interrupt: &'a Interrupt,
    deadline: Instant,
    shortened: bool,
}

impl<'a> Deadline<'a> {
    fn new(socket: &'a dyn Transport, interrupt: &'a Interrupt, timeout: Duration) -> Self {
        Deadline {
            socket,
            interrupt,
            deadline: Instant::now() + timeout,
            shortened: false,
        }
    }

    /// Whether to try again after EINTR; false once cancelled or out of time.
    fn retry(&mut self, set: fn(&dyn Transport, Duration) -> io::Result<()>) -> io::Result<bool> {
        if self.interrupt.is_cancelled() {
            return Ok(false);
        }
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(io::Error::from(io::ErrorKind::TimedOut));
        }
        set(self.socket, remaining)?;
        self.shortened = true;
        Ok(true)
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.socket.read(buf) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {
                    if !self.retry(|t, d| t.set_read_timeout(d))? {
                        return Err(error);
                    }
                }
                other => return other,
            }
        }
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.socket.write(buf) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {
                    if !self.retry(|t, d| t.set_write_timeout(d))? {
                        // Not `Interrupted`, which write_all would retry.
                        return Err(io::Error::other("interrupted"));
                    }
                }
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Lets another thread (Ruby's unblock function) abort the blocking calls of
/// one operation: it marks the operation cancelled and shuts down every socket
/// the operation uses, which wakes a read blocked on a frozen server.
#[derive(Default)]
pub struct Interrupt {
    cancelled: AtomicBool,
    sockets: Mutex<Vec<Arc<dyn Transport>>>,
}

impl Interrupt {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        let sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        for socket in sockets.iter() {
            socket.shutdown();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Registers a socket before the operation blocks on it. Checking the flag
    /// after registering closes the race with a cancel that came first.
    fn watch(&self, socket: &Arc<dyn Transport>) -> bool {
        self.sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(socket));
        if self.is_cancelled() {
            socket.shutdown();
            return false;
        }
        true
    }
}

/// The read buffer's first size, and the size above which an emptied buffer
/// (after a large SCAN or MGET page) is given back.
const INPUT_CHUNK: usize = 16 * 1024;
const MAX_IDLE_INPUT: usize = 1024 * 1024;

/// Bytes read and not yet parsed: `bytes[start..end]`. Zeroed only when it
/// grows, never per read.
struct Input {
    bytes: Vec<u8>,
    start: usize,
    end: usize,
}

impl Input {
    fn new() -> Input {
        Input {
            bytes: vec![0; INPUT_CHUNK],
            start: 0,
            end: 0,
        }
    }

    /// Parses the next reply from the buffer with `parse` (see `resp`),
    /// reading more as needed.
    fn read_with<T>(
        &mut self,
        reader: &mut Deadline<'_>,
        parse: codec::Parse<T>,
    ) -> std::result::Result<T, ReadError> {
        loop {
            if let Some((value, used)) =
                parse(&self.bytes[self.start..self.end]).map_err(ReadError::Protocol)?
            {
                self.start += used;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                    if self.bytes.len() > MAX_IDLE_INPUT {
                        self.bytes = vec![0; INPUT_CHUNK];
                    }
                }
                return Ok(value);
            }
            if self.end == self.bytes.len() {
                if self.start > 0 {
                    self.bytes.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                } else {
                    let grown = self.bytes.len() * 2;
                    self.bytes.resize(grown, 0);
                }
            }
            match reader.read(&mut self.bytes[self.end..]) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(read) => self.end += read,
                Err(error) => return Err(ReadError::Io(error)),
            }
        }
    }
}

enum ReadError {
    Io(io::Error),
    Closed,
    Protocol(codec::ProtocolError),
}

/// Who a connection logs in as, and the database it selects.
struct Login<'a> {
    username: Option<&'a str>,
    password: Option<&'a str>,
    db: i64,
}

pub struct Connection {
    socket: Arc<dyn Transport>,
    input: Input,
    /// The process that opened the socket; a forked child must not use it.
    pub pid: u32,
    /// False once a command failed midway: the reply stream is out of step.
    pub healthy: bool,
    /// Taken from the pool and not yet proven alive by a reply in this
    /// operation: the server may have dropped it while it sat idle.
    pub from_pool: bool,
    /// Whether any reply has arrived on it (a close before the first one
    /// is likely a TLS port spoken to in plain text).
    answered: bool,
    watched: bool,
    server: String,
    /// The host connected to (the name TLS checks), for messages.
    host: String,
    read_timeout: Duration,
    write_timeout: Duration,
}

impl Connection {
    /// Connects and runs the prelude: AUTH (with a user, if given), SELECT.
    pub fn open(config: &ServerConfig, interrupt: &Interrupt) -> Result<Connection> {
        Self::open_to(config, &config.address, interrupt)
    }

    /// `open`, to `address` (the master a sentinel named) instead of the
    /// configured one.
    pub fn open_to(
        config: &ServerConfig,
        address: &Address,
        interrupt: &Interrupt,
    ) -> Result<Connection> {
        let login = Login {
            username: config.username.as_deref(),
            password: config.password.as_deref(),
            db: config.db,
        };
        Self::open_as(config, address, login, interrupt)
    }

    /// A connection to a sentinel of `config`, with the sentinels' credentials.
    pub fn open_sentinel(
        config: &ServerConfig,
        sentinel: &Sentinel,
        address: &Address,
        interrupt: &Interrupt,
    ) -> Result<Connection> {
        let login = Login {
            username: sentinel.username.as_deref(),
            password: sentinel.password.as_deref(),
            db: 0,
        };
        Self::open_as(config, address, login, interrupt)
    }

    fn open_as(
        config: &ServerConfig,
        address: &Address,
        login: Login<'_>,
        interrupt: &Interrupt,
    ) -> Result<Connection> {
        let mut connection = Self::connect(config, address, interrupt)?;
        connection.prelude(login, interrupt)?;
        Ok(connection)
    }

    fn connect(
        config: &ServerConfig,
        address: &Address,
        interrupt: &Interrupt,
    ) -> Result<Connection> {
        let server = match address == &config.address {
            true => config.name.clone(),
            false => format!("{} at {}", config.name, transport::describe(address)),
        };
        if interrupt.is_cancelled() {
            return Err(Error::Interrupted { server });
        }
        let socket: Arc<dyn Transport> = Arc::from(
            dial::connect(address, config.connect_timeout, config.tls.as_ref()).map_err(
                |error| match error {
                    ConnectError::TimedOut => Error::Timeout {
                        server: server.clone(),
                        action: "connect",
                        after: config.connect_timeout,
                    },
                    ConnectError::Failed(what, error) => connection_error(&server, what, &error),
                },
            )?,
        );
        set_timeouts(&*socket, config.read_timeout, config.write_timeout)
            .map_err(|e| connection_error(&config.name, "cannot set socket timeouts", &e))?;
        let mut connection = Connection {
            socket,
            input: Input::new(),
            pid: crate::process::id(),
            healthy: true,
            from_pool: false,
            answered: false,
            watched: false,
            server,
            host: match address {
                Address::Tcp(host, _) => host.clone(),
                Address::Unix(path) => path.display().to_string(),
            },
            read_timeout: config.read_timeout,
            write_timeout: config.write_timeout,
        };
        connection.watch(interrupt)?;
        if config.tls.is_some() {
            connection.handshake(config.connect_timeout, interrupt)?;
        }
        Ok(connection)
    }

    /// AUTH (with a user, if given) and SELECT.
    fn prelude(&mut self, login: Login<'_>, interrupt: &Interrupt) -> Result<()> {
        let Login {
            username,
            password,
            db,
        } = login;
        if let Some(password) = password {
            let auth = match username {
                Some(user) => codec::command(&["AUTH".into(), user.into(), password.into()]),
                None => codec::command(&["AUTH".into(), password.into()]),
            };
            self.expect_ok("AUTH", &auth, interrupt)?;
        }
        if db != 0 {
            let select = codec::command(&["SELECT".into(), db.to_string().as_str().into()]);
            self.expect_ok("SELECT", &select, interrupt)?;
        }
        Ok(())
    }

    /// The TLS handshake, within `timeout` and open to the interrupt (which
    /// shuts the socket down under it).
    fn handshake(&mut self, timeout: Duration, interrupt: &Interrupt) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let result = loop {
            match self.socket.handshake() {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if interrupt.is_cancelled() || remaining.is_zero() {
                        break Err(error);
                    }
                    let _ = set_timeouts(&*self.socket, remaining, remaining);
                }
                other => break other,
            }
        };
        self.restore_timeouts();
        result.map_err(|error| {
            self.healthy = false;
            match tls::describe(&error, &self.host) {
                Some(detail) if !interrupt.is_cancelled() => Error::Connection {
                    server: self.server.clone(),
                    detail,
                },
                _ => self.io_error(
                    "TLS handshake (a plaintext port never answers one: use redis:// for it)",
                    timeout,
                    &error,
                    interrupt,
                ),
            }
        })
    }

    /// Registers this connection's socket with the operation's interrupt.
    pub fn watch(&mut self, interrupt: &Interrupt) -> Result<()> {
        if !self.watched {
            self.watched = true;
            if !interrupt.watch(&self.socket) {
                self.healthy = false;
                return Err(Error::Interrupted {
                    server: self.server.clone(),
                });
            }
        }
        Ok(())
    }

    /// Whether this operation has used the connection (an idle one taken
    /// with the lease, and not used, is not).
    pub fn used(&self) -> bool {
        self.watched
    }

    /// Called when the connection goes back to its pool: a later operation has
    /// its own interrupt.
    pub fn unwatch(&mut self) {
        self.watched = false;
    }

    /// The server's name (its URL without the password), for messages.
    pub fn server(&self) -> &str {
        &self.server
    }

    fn expect_ok(&mut self, what: &str, packed: &[u8], interrupt: &Interrupt) -> Result<()> {
        self.send(packed, interrupt)?;
        let deadline = Instant::now() + self.read_timeout;
        match self.receive_by(deadline, interrupt)? {
            Value::Okay => Ok(()),
            Value::ServerError(error) => Err(Error::Command {
                server: self.server.clone(),
                detail: format!("{what} failed: {error}"),
            }),
            other => Err(Error::Command {
                server: self.server.clone(),
                detail: format!("unexpected reply to {what}: {other:?}"),
            }),
        }
    }

    /// Writes `packed` (one or more encoded commands) in full.
    pub fn send(&mut self, packed: &[u8], interrupt: &Interrupt) -> Result<()> {
        let mut writer = Deadline::new(&*self.socket, interrupt, self.write_timeout);
        let result = writer.write_all(packed);
        if writer.shortened {
            self.restore_timeouts();
        }
        result.map_err(|error| {
            self.healthy = false;
            self.io_error("write", self.write_timeout, &error, interrupt)
        })
    }

    /// Reads one reply by `deadline`: replies to commands sent to several
    /// servers at once share one deadline, so the wait is one timeout, not
    /// two. A server error reply is a `Value`, not an `Err`: only transport
    /// failures are errors here.
    pub fn receive_by(&mut self, deadline: Instant, interrupt: &Interrupt) -> Result<Value> {
        let value = self.receive_with(deadline, interrupt, codec::parse)?;
        self.note_readonly(&value);
        Ok(value)
    }

    /// A READONLY reply: this server was a master and is now a replica (a
    /// failover). The connection is let go, so that the next one asks the
    /// sentinels for the new master.
    fn note_readonly(&mut self, value: &Value) {
        if let Value::ServerError(error) = value {
            if error.code() == "READONLY" {
                self.healthy = false;
            }
        }
    }

    /// Reads an acknowledgement (MULTI's OK, a QUEUED): `None` for a status
    /// line, which costs no allocation; the reply itself otherwise (an error).
    pub fn receive_acknowledgement_by(
        &mut self,
        deadline: Instant,
        interrupt: &Interrupt,
    ) -> Result<Option<Value>> {
        let value = self.receive_with(deadline, interrupt, codec::parse_acknowledgement)?;
        if let Some(value) = &value {
            self.note_readonly(value);
        }
        Ok(value)
    }

    fn receive_with<T>(
        &mut self,
        deadline: Instant,
        interrupt: &Interrupt,
        parse: codec::Parse<T>,
    ) -> Result<T> {
        let mut reader = Deadline {
            socket: &*self.socket,
            interrupt,
            deadline,
            shortened: false,
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        // Shorten the socket's timeout only when it matters (a shared deadline
        // already partly spent): a setsockopt per reply would cost more than
        // the read itself.
        if remaining + Duration::from_millis(5) < self.read_timeout {
            // A zero timeout means "block forever" to the kernel.
            let remaining = remaining.max(Duration::from_millis(1));
            if self.socket.set_read_timeout(remaining).is_err() {
                self.healthy = false;
            }
            reader.shortened = true;
        }
        let result = self.input.read_with(&mut reader, parse);
        if reader.shortened {
            self.restore_timeouts();
        }
        match result {
            Ok(value) => {
                self.from_pool = false;
                self.answered = true;
                Ok(value)
            }
            Err(error) => {
                self.healthy = false;
                Err(match error {
                    ReadError::Io(error) => {
                        self.io_error("read", self.read_timeout, &error, interrupt)
                    }
                    ReadError::Closed if interrupt.is_cancelled() => Error::Interrupted {
                        server: self.server.clone(),
                    },
                    ReadError::Closed if !self.answered => Error::Connection {
                        server: self.server.clone(),
                        detail:
                            "connection lost: closed by the server before its first reply (if it \
                                 only accepts TLS, use rediss:// or ssl: true)"
                                .into(),
                    },
                    ReadError::Closed => Error::Connection {
                        server: self.server.clone(),
                        detail: "connection lost: closed by the server".into(),
                    },
                    ReadError::Protocol(error) => Error::Connection {
                        server: self.server.clone(),
                        detail: format!("bad reply: {}", error.0),
                    },
                })
            }
        }
    }

    fn restore_timeouts(&mut self) {
        if set_timeouts(&*self.socket, self.read_timeout, self.write_timeout).is_err() {
            self.healthy = false;
        }
    }

    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    fn io_error(
        &self,
        action: &'static str,
        after: Duration,
        error: &io::Error,
        interrupt: &Interrupt,
    ) -> Error {
        if interrupt.is_cancelled() {
            return Error::Interrupted {
                server: self.server.clone(),
            };
        }
        match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout {
                server: self.server.clone(),
                action,
                after,
            },
            io::ErrorKind::ConnectionReset if !self.answered => Error::Connection {
                server: self.server.clone(),
                detail: format!(
                    "connection lost: reset by the server before its first reply ({error}); if it \
                     only accepts TLS, use rediss:// or ssl: true"
                ),
            },
            _ => match tls::describe(error, &self.host) {
                Some(detail) => Error::Connection {
                    server: self.server.clone(),
                    detail,
                },
                None => connection_error(&self.server, "connection lost", error),
            },
        }
    }
}

fn set_timeouts(socket: &dyn Transport, read: Duration, write: Duration) -> io::Result<()> {
    socket.set_read_timeout(read)?;
    socket.set_write_timeout(write)
}

fn connection_error(server: &str, what: &str, error: &io::Error) -> Error {
    Error::Connection {
        server: server.to_string(),
        detail: format!("{what}: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_names_them_without_password() {
        let config =
            ServerConfig::parse("redis://:secret@127.0.0.1:6390/2", Duration::from_secs(1))
                .unwrap();
        assert_eq!(config.name, "redis://127.0.0.1:6390/2");
        assert_eq!(config.password.as_deref(), Some("secret"));
        assert_eq!(config.db, 2);
    }

    #[test]
    fn rejects_malformed_urls() {
        for url in [
            "",
            "nonsense",
            "http://127.0.0.1",
            "redis://[::1",
            "rediss://h:1?ca_file=/nonexistent/ca.pem",
        ] {
            let error = ServerConfig::parse(url, Duration::from_secs(1)).unwrap_err();
            assert!(
                matches!(error, Error::InvalidArgument(_)),
                "{url}: {error:?}"
            );
        }
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://u:p@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:p@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact("redis://p@h"), "redis://:***@h");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(
            redact("redis+sentinel://:m@s:1/x?sentinel_password=s&ssl=true&password=p"),
            "redis+sentinel://:***@s:1/x?sentinel_password=***&ssl=true&password=***"
        );
    }
}
