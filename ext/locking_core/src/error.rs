//! The one error type of the core. The binding maps each variant to a Ruby
//! exception class in a single `From` impl.

use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Error {
    /// The server could not be reached, or the connection broke mid-command.
    Connection { server: String, detail: String },
    /// The server did not answer within the configured timeout.
    Timeout {
        server: String,
        action: &'static str,
        after: Duration,
    },
    /// The server answered with an error reply (WRONGTYPE, OOM, NOAUTH ...).
    Command { server: String, detail: String },
    /// `min_replicas_acked`: a write reached the master, but not enough
    /// replicas acknowledged it in time.
    NotReplicated { server: String, detail: String },
    /// The calling thread was interrupted (Thread#kill, Timeout) while waiting.
    Interrupted { server: String },
    /// Bad configuration or input, caught before anything was sent.
    InvalidArgument(String),
    /// Dynamic phases: the fleet's phase cannot be used (its control key is
    /// missing, or holds something else). Operations refuse rather than guess.
    Phase(String),
    /// A broken invariant inside the library (a caught panic, a poisoned lock).
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A command that failed this way may have been applied, and the server is
    /// worth asking again on a fresh connection (the old one broke; the server
    /// did not time out, and the caller was not interrupted).
    pub fn retry_on_new_connection(&self) -> bool {
        matches!(self, Error::Connection { .. })
    }

    /// What went wrong, without the server's name.
    pub fn detail(&self) -> String {
        match self {
            Error::Connection { detail, .. }
            | Error::Command { detail, .. }
            | Error::NotReplicated { detail, .. } => detail.clone(),
            Error::Timeout { action, after, .. } => format!("{action} timed out after {after:?}"),
            Error::Interrupted { .. } => "interrupted".into(),
            Error::InvalidArgument(detail) | Error::Phase(detail) | Error::Internal(detail) => {
                detail.clone()
            }
        }
    }

    /// The same error, saying it came from reading the fleet's phase.
    pub fn reading_the_phase(self) -> Error {
        let context =
            |detail: String| format!("reading the fleet's phase (phase = :dynamic): {detail}");
        match self {
            Error::Connection { server, detail } => Error::Connection {
                server,
                detail: context(detail),
            },
            Error::Command { server, detail } => Error::Command {
                server,
                detail: context(detail),
            },
            other => other,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connection { server, detail } => write!(f, "{server}: {detail}"),
            Error::Timeout {
                server,
                action,
                after,
            } => write!(
                f,
                "{server}: {action} timed out after {}s",
                format_seconds(*after)
            ),
            Error::Command { server, detail } | Error::NotReplicated { server, detail } => {
                write!(f, "{server}: {detail}")
            }
            Error::Interrupted { server } => write!(f, "{server}: interrupted"),
            Error::InvalidArgument(message) | Error::Phase(message) => f.write_str(message),
            Error::Internal(message) => write!(f, "internal error: {message}"),
        }
    }
}

impl std::error::Error for Error {}

fn format_seconds(duration: Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds.fract() == 0.0 {
        format!("{seconds:.1}")
    } else {
        format!("{}", (seconds * 1000.0).round() / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_message_names_server_and_duration() {
        let error = Error::Timeout {
            server: "redis://127.0.0.1:6380/0".into(),
            action: "read",
            after: Duration::from_millis(1000),
        };
        assert_eq!(
            error.to_string(),
            "redis://127.0.0.1:6380/0: read timed out after 1.0s"
        );
        let error = Error::Timeout {
            server: "s".into(),
            action: "connect",
            after: Duration::from_millis(250),
        };
        assert_eq!(error.to_string(), "s: connect timed out after 0.25s");
    }
}
