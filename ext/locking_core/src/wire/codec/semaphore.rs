//! How the semaphore commands (`protocol::Command::Semaphore*`) are written,
//! and their replies read. `codec::lock` hands them here; each is one
//! `EVALSHA` of its script, with the semaphore's key.

use super::scripts::{self, Script};
use super::{write_command, Arg, Value};
use crate::protocol::{AcquireReply, Command, Reply};

/// Appends `command` on `key`; false when it is not a semaphore command.
pub fn encode(out: &mut Vec<u8>, key: &[u8], command: &Command) -> bool {
    let Some(script) = script_of(command) else {
        return false;
    };
    let mut args: Vec<Arg> = vec![
        "EVALSHA".into(),
        script.sha.as_str().into(),
        "1".into(),
        key.into(),
    ];
    match command {
        Command::SemaphoreAcquire {
            token,
            ttl_ms,
            limit,
        } => args.extend::<[Arg; 3]>([token.as_slice().into(), (*ttl_ms).into(), (*limit).into()]),
        Command::SemaphoreRenew { token, ttl_ms } => {
            args.extend::<[Arg; 2]>([token.as_slice().into(), (*ttl_ms).into()])
        }
        Command::SemaphoreRelease { token } => args.push(token.as_slice().into()),
        Command::SemaphorePlaces => args.push("view".into()),
        Command::SemaphoreCopy { places, rule } => {
            args.push(rule.name().into());
            for (token, ms_left) in places {
                args.extend::<[Arg; 2]>([token.as_slice().into(), (*ms_left).into()]);
            }
        }
        _ => {}
    }
    write_command(out, &args);
    true
}

/// The script a semaphore command runs; `None` for any other command.
pub fn script_of(command: &Command) -> Option<&'static Script> {
    match command {
        Command::SemaphoreAcquire { .. } => Some(&scripts::SEMAPHORE_ACQUIRE),
        Command::SemaphoreRelease { .. } => Some(&scripts::SEMAPHORE_RELEASE),
        Command::SemaphoreRenew { .. } => Some(&scripts::SEMAPHORE_RENEW),
        Command::SemaphoreHolders => Some(&scripts::SEMAPHORE_HOLDERS),
        // The operator tools' one rule for which sorted sets are semaphores.
        Command::SemaphorePlaces => Some(&scripts::OPERATOR_KEY),
        Command::SemaphoreCopy { .. } => Some(&scripts::SEMAPHORE_COPY),
        _ => None,
    }
}

/// Reads a semaphore command's reply (an integer from each script, and
/// token, ms left, ... from the places' read).
pub fn decode(command: &Command, value: &Value) -> Option<Reply> {
    match (command, value) {
        (Command::SemaphorePlaces, Value::Array(items)) => return places(items).map(Reply::Places),
        // Not a semaphore (another type, a plain sorted set, or no key): no places.
        (Command::SemaphorePlaces, Value::Nil) => return Some(Reply::Places(Vec::new())),
        _ => {}
    }
    let Value::Int(n) = value else {
        return None;
    };
    match command {
        Command::SemaphoreAcquire { .. } => Some(Reply::Acquire(match n {
            1 => AcquireReply::Set,
            2 => AcquireReply::AlreadyMine,
            0 => AcquireReply::Taken,
            _ => return None,
        })),
        Command::SemaphoreRelease { .. } | Command::SemaphoreRenew { .. } => {
            Some(Reply::Flag(*n > 0))
        }
        Command::SemaphoreHolders => u64::try_from(*n).ok().map(Reply::Count),
        Command::SemaphoreCopy { .. } if *n == -1 => Some(Reply::Flag(false)),
        Command::SemaphoreCopy { .. } => u64::try_from(*n).ok().map(Reply::Count),
        _ => None,
    }
}

/// token, ms left, token, ms left, ... as pairs (a negative ms left, which
/// the scripts never give, as 0); `None` if malformed.
pub fn places(items: &[Value]) -> Option<Vec<(Vec<u8>, u64)>> {
    if !items.len().is_multiple_of(2) {
        return None;
    }
    items
        .chunks(2)
        .map(|pair| match pair {
            [Value::BulkString(token), Value::Int(ms)] => {
                Some((token.clone(), (*ms).max(0) as u64))
            }
            _ => None,
        })
        .collect()
}

/// A semaphore command's name in messages.
pub fn name(command: &Command) -> Option<&'static str> {
    match command {
        Command::SemaphoreAcquire { .. } => Some("semaphore acquire"),
        Command::SemaphoreRelease { .. } => Some("semaphore release"),
        Command::SemaphoreRenew { .. } => Some("semaphore renew"),
        Command::SemaphoreHolders => Some("semaphore holders"),
        Command::SemaphorePlaces => Some("semaphore places"),
        Command::SemaphoreCopy { .. } => Some("semaphore copy"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_written_as_the_redis_crate_writes_them() {
        let mut out = Vec::new();
        let acquire = Command::SemaphoreAcquire {
            token: b"t".to_vec(),
            ttl_ms: 5,
            limit: 3,
        };
        assert!(encode(&mut out, b"k", &acquire));
        let sha = &scripts::SEMAPHORE_ACQUIRE.sha;
        let theirs = redis::cmd("EVALSHA")
            .arg(sha)
            .arg(1)
            .arg("k")
            .arg("t")
            .arg(5)
            .arg(3)
            .get_packed_command();
        assert_eq!(out, theirs);
        let mut out = Vec::new();
        assert!(encode(&mut out, b"k", &Command::SemaphoreHolders));
        let sha = &scripts::SEMAPHORE_HOLDERS.sha;
        let theirs = redis::cmd("EVALSHA")
            .arg(sha)
            .arg(1)
            .arg("k")
            .get_packed_command();
        assert_eq!(out, theirs);
        assert!(!encode(&mut out, b"k", &Command::Exists));
    }

    #[test]
    fn replies_outside_the_scripts_answers_are_refused() {
        let acquire = Command::SemaphoreAcquire {
            token: b"t".to_vec(),
            ttl_ms: 5,
            limit: 3,
        };
        assert_eq!(
            decode(&acquire, &Value::Int(2)),
            Some(Reply::Acquire(AcquireReply::AlreadyMine))
        );
        assert_eq!(decode(&acquire, &Value::Int(7)), None);
        assert_eq!(decode(&Command::SemaphoreHolders, &Value::Int(-1)), None);
        assert_eq!(decode(&acquire, &Value::Nil), None);
    }
}
