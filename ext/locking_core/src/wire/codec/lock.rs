//! How each protocol command (`protocol::Command`) is written, and how its
//! reply is read into a `protocol::Reply`. Whether a server needs the Lua
//! acquire (older than Redis 7) is the caller's to say (`set_get`).

use super::scripts::{self, Script};
use super::semaphore;
use super::{write_arg, write_command, write_header_of, Arg, Value};
use crate::protocol::{AcquireReply, Command, Entry, Reply, TokenTtl};

/// Appends `command` on `key`. `set_get`: the server knows `SET .. NX GET`.
pub fn encode(out: &mut Vec<u8>, key: &[u8], command: &Command, set_get: bool) {
    match command {
        Command::Acquire { token, ttl_ms } if set_get => {
            write_set_nx_get(out, key, token, Some(*ttl_ms))
        }
        Command::Acquire { token, ttl_ms } => {
            write_evalsha(out, &scripts::ACQUIRE, key, token, Some(*ttl_ms))
        }
        Command::Mirror { value, ttl_ms } if set_get => write_set_nx_get(out, key, value, *ttl_ms),
        Command::Mirror { value, ttl_ms } => {
            write_evalsha(out, &scripts::ACQUIRE, key, value, *ttl_ms)
        }
        Command::CompareAndDelete { token } => {
            write_evalsha(out, &scripts::COMPARE_AND_DELETE, key, token, None)
        }
        Command::CompareAndExtend { token, ttl_ms } => {
            write_evalsha(out, &scripts::COMPARE_AND_EXTEND, key, token, Some(*ttl_ms))
        }
        Command::Exists => write_command(out, &["EXISTS".into(), key.into()]),
        Command::TokenTtl { token } => write_evalsha(out, &scripts::TOKEN_TTL, key, token, None),
        Command::ReadWithTtl => {
            // MULTI/EXEC makes the reads atomic, at a fraction of a Lua
            // call's cost (it runs for every key of a backfill, twice);
            // TIME before and after bound when PTTL was measured.
            write_command(out, &["MULTI".into()]);
            write_command(out, &["TIME".into()]);
            write_command(out, &["GET".into(), key.into()]);
            write_command(out, &["PTTL".into(), key.into()]);
            write_command(out, &["TIME".into()]);
            write_command(out, &["EXEC".into()]);
        }
        Command::ExtendIfGreater { token, ttl_ms } => {
            write_evalsha(out, &scripts::EXTEND_IF_GREATER, key, token, Some(*ttl_ms))
        }
        semaphore_command => {
            semaphore::encode(out, key, semaphore_command);
        }
    }
}

/// Commands queued inside a MULTI by `encode`, whose QUEUED precede the
/// reply (EXEC's).
pub fn queued(command: &Command) -> usize {
    match command {
        Command::ReadWithTtl => 5, // MULTI's OK, TIME, GET, PTTL, TIME
        _ => 0,
    }
}

/// The script a command runs, on a server that knows `SET .. NX GET` or not.
pub fn script_of(command: &Command, set_get: bool) -> Option<&'static Script> {
    match command {
        Command::Acquire { .. } | Command::Mirror { .. } if set_get => None,
        // The mirror runs the acquire script on servers without SET .. NX GET.
        Command::Acquire { .. } | Command::Mirror { .. } => Some(&scripts::ACQUIRE),
        Command::CompareAndDelete { .. } => Some(&scripts::COMPARE_AND_DELETE),
        Command::CompareAndExtend { .. } => Some(&scripts::COMPARE_AND_EXTEND),
        Command::TokenTtl { .. } => Some(&scripts::TOKEN_TTL),
        Command::ExtendIfGreater { .. } => Some(&scripts::EXTEND_IF_GREATER),
        Command::Exists | Command::ReadWithTtl => None,
        semaphore_command => semaphore::script_of(semaphore_command),
    }
}

/// Whether an error reply means "this server is older than Redis 7": a
/// syntax error to `SET .. NX GET`.
pub fn needs_acquire_script(command: &Command, error: &super::ErrorReply) -> bool {
    matches!(command, Command::Acquire { .. } | Command::Mirror { .. }) && error.is_syntax_error()
}

/// Reads the reply to `command`; a refusal is described in words (the
/// caller names the server).
pub fn decode(command: &Command, value: Value) -> Result<Reply, String> {
    if let Some(error) = value.as_error() {
        return Err(format!("{} failed: {error}", name(command)));
    }
    let reply = match (command, value) {
        (Command::Acquire { .. } | Command::Mirror { .. }, Value::Nil) => {
            Reply::Acquire(AcquireReply::Set)
        }
        (
            Command::Acquire { token, .. } | Command::Mirror { value: token, .. },
            Value::BulkString(current),
        ) => Reply::Acquire(if current == *token {
            AcquireReply::AlreadyMine
        } else {
            AcquireReply::Taken
        }),
        (
            Command::CompareAndDelete { .. }
            | Command::CompareAndExtend { .. }
            | Command::ExtendIfGreater { .. }
            | Command::Exists,
            Value::Int(n),
        ) => Reply::Flag(n > 0),
        (Command::ReadWithTtl, Value::Array(items)) => match items.as_slice() {
            [after, Value::BulkString(value), Value::Int(pttl), before] if *pttl != -2 => {
                match (server_time_ms(after), server_time_ms(before)) {
                    (Some(after), Some(before)) => Reply::Entry(Some(Entry::read_between(
                        value.clone(),
                        *pttl,
                        after,
                        before,
                    ))),
                    _ => return Err(format!("unexpected reply to TIME: {after:?}, {before:?}")),
                }
            }
            // Absent, or not a string (GET's WRONGTYPE inside EXEC): never a lock.
            [_, Value::Nil, _, _] | [_, Value::ServerError(_), _, _] => Reply::Entry(None),
            other => return Err(format!("unexpected reply to read with ttl: {other:?}")),
        },
        (Command::TokenTtl { .. }, Value::Int(n)) => Reply::Ttl(match n {
            -1 => TokenTtl::Forever,
            n if n >= 0 => TokenTtl::Millis(n as u64),
            _ => TokenTtl::NotHeld,
        }),
        (command, other) => match semaphore::decode(command, &other) {
            Some(reply) => reply,
            None => return Err(format!("unexpected reply to {}: {other:?}", name(command))),
        },
    };
    Ok(reply)
}

/// Appends one transaction that reads every key's value and TTL at once:
/// the server's TIME, MGET, each key's PTTL, TIME again (a page of a
/// backfill; the two TIMEs bound when each PTTL was measured).
pub fn encode_reads(out: &mut Vec<u8>, keys: &[&[u8]]) {
    write_command(out, &["MULTI".into()]);
    write_command(out, &["TIME".into()]);
    write_header_of(out, keys.len() + 1);
    write_arg(out, "MGET".into());
    for key in keys {
        write_arg(out, (*key).into());
    }
    for key in keys {
        write_command(out, &["PTTL".into(), (*key).into()]);
    }
    write_command(out, &["TIME".into()]);
    write_command(out, &["EXEC".into()]);
}

/// Acknowledgements before EXEC's reply to `encode_reads` of `count` keys:
/// MULTI's OK, then QUEUED for TIME, MGET, each PTTL and TIME.
pub fn queued_reads(count: usize) -> usize {
    count + 4
}

/// Reads EXEC's reply to `encode_reads` of `count` keys: each key's entry
/// (`None`: absent, or not a string).
pub fn decode_reads(count: usize, exec: Value) -> Result<Vec<Option<Entry>>, String> {
    if let Some(error) = exec.as_error() {
        return Err(format!("reading a page of keys failed: {error}"));
    }
    let Value::Array(mut results) = exec else {
        return Err(format!("reading a page of keys failed: {exec:?}"));
    };
    if results.len() != count + 3 {
        return Err(format!("EXEC returned {} results", results.len()));
    }
    let time = |value: Option<Value>| {
        value
            .as_ref()
            .and_then(server_time_ms)
            .ok_or_else(|| "TIME returned no time".to_string())
    };
    let before_ms = time(results.pop())?;
    let after_ms = time(Some(results.remove(0)))?;
    let pttls = results.split_off(1);
    let values = match results.pop() {
        Some(Value::Array(values)) if values.len() == count => values,
        other => return Err(format!("MGET returned {other:?}")),
    };
    Ok(values
        .into_iter()
        .zip(pttls)
        .map(|(value, pttl)| match (value, pttl) {
            // MGET answers nil for keys that are not strings: never locks.
            (Value::BulkString(value), Value::Int(pttl)) if pttl != -2 => {
                Some(Entry::read_between(value, pttl, after_ms, before_ms))
            }
            _ => None,
        })
        .collect())
}

/// TIME's reply ([seconds, microseconds]) in milliseconds.
pub fn server_time_ms(value: &Value) -> Option<u64> {
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

/// A command's name in messages.
pub fn name(command: &Command) -> &'static str {
    match command {
        Command::Acquire { .. } => "acquire",
        Command::CompareAndDelete { .. } => "compare-and-delete",
        Command::CompareAndExtend { .. } => "compare-and-extend",
        Command::Exists => "exists",
        Command::TokenTtl { .. } => "token ttl",
        Command::ReadWithTtl => "read with ttl",
        Command::Mirror { .. } => "mirror",
        Command::ExtendIfGreater { .. } => "extend if greater",
        semaphore_command => semaphore::name(semaphore_command).unwrap_or("semaphore"),
    }
}

/// `SET key value NX GET [PX ttl_ms]`: set unless present, answering what was there.
fn write_set_nx_get(out: &mut Vec<u8>, key: &[u8], value: &[u8], ttl_ms: Option<u64>) {
    let args: [Arg; 7] = [
        "SET".into(),
        key.into(),
        value.into(),
        "NX".into(),
        "GET".into(),
        "PX".into(),
        0.into(),
    ];
    write_with_ttl(out, args, ttl_ms, 2);
}

/// `EVALSHA sha 1 key token [ttl_ms]`: every lock script takes one key, the
/// token, and for some a TTL.
fn write_evalsha(
    out: &mut Vec<u8>,
    script: &Script,
    key: &[u8],
    token: &[u8],
    ttl_ms: Option<u64>,
) {
    let args: [Arg; 6] = [
        "EVALSHA".into(),
        script.sha.as_str().into(),
        "1".into(),
        key.into(),
        token.into(),
        0.into(),
    ];
    write_with_ttl(out, args, ttl_ms, 1);
}

/// Writes `args`, whose last slot holds the TTL: with `ttl_ms` there, or
/// without the last `ttl_slots` arguments (the TTL and its option name)
/// when there is none. An array, not a Vec: nothing is allocated.
fn write_with_ttl<const N: usize>(
    out: &mut Vec<u8>,
    mut args: [Arg<'_>; N],
    ttl_ms: Option<u64>,
    ttl_slots: usize,
) {
    match ttl_ms {
        Some(ttl_ms) => {
            args[N - 1] = ttl_ms.into();
            write_command(out, &args);
        }
        None => write_command(out, &args[..N - ttl_slots]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(command: &Command) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, b"k", command, true);
        out
    }

    #[test]
    fn commands_are_written_as_the_redis_crate_writes_them() {
        let theirs = |cmd: &mut redis::Cmd| cmd.get_packed_command();
        let cad = &scripts::COMPARE_AND_DELETE.sha;
        let extend = &scripts::EXTEND_IF_GREATER.sha;
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
        let mut old_server = Vec::new();
        let acquire = Command::Acquire {
            token: b"t".to_vec(),
            ttl_ms: 5,
        };
        encode(&mut old_server, b"k", &acquire, false);
        assert_eq!(
            old_server,
            theirs(
                redis::cmd("EVALSHA")
                    .arg(&scripts::ACQUIRE.sha)
                    .arg(1)
                    .arg("k")
                    .arg("t")
                    .arg(5)
            )
        );
        assert_eq!(script_of(&acquire, true).map(|s| s.name), None);
        assert_eq!(script_of(&acquire, false).map(|s| s.name), Some("acquire"));
    }

    #[test]
    fn a_page_of_reads_decodes_each_key() {
        let time = |ms: u64| {
            Value::Array(vec![
                Value::BulkString((ms / 1000).to_string().into_bytes()),
                Value::BulkString(((ms % 1000) * 1000).to_string().into_bytes()),
            ])
        };
        let exec = Value::Array(vec![
            time(100_002),
            Value::Array(vec![Value::BulkString(b"a".to_vec()), Value::Nil]),
            Value::Int(1500),
            Value::Int(-2),
            time(100_009),
        ]);
        let entries = decode_reads(2, exec).unwrap();
        let entry = entries[0].as_ref().unwrap();
        assert_eq!(
            (entry.expires_at_ms, entry.expires_by_ms),
            (Some(101_502), Some(101_509))
        );
        assert_eq!(entries[1], None);
        assert!(decode_reads(3, Value::Array(vec![])).is_err());
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
            if let Ok(Some((value, _))) = super::super::parse(&bytes) {
                for command in commands() {
                    let _ = decode(&command, value.clone());
                }
                let _ = decode_reads(1, value);
            }
        }

        #[test]
        fn well_formed_replies_of_any_shape_decode_without_panicking(
            kind in 0u8..6, number in any::<i64>(), text in proptest::collection::vec(any::<u8>(), 0..16)
        ) {
            let value = match kind {
                0 => Value::Int(number),
                1 => Value::BulkString(text.clone()),
                2 => Value::Nil,
                3 => Value::Array(vec![Value::BulkString(text.clone()), Value::Int(number)]),
                4 => Value::Array(vec![Value::Int(number)]),
                _ => Value::SimpleString(String::from_utf8_lossy(&text).into_owned()),
            };
            for command in commands() {
                let _ = decode(&command, value.clone());
            }
        }
    }
}
