//! Semaphores as the operator tools see them (DESIGN "Semaphores"): listing
//! their live places (`locking status`, the dashboard, `Locking.lock_info`)
//! and the unlock that deletes a lock or a whole semaphore, and nothing
//! else. Which sorted sets under the prefix are semaphores is decided by one
//! script, `operator_key.lua`, so a sorted set of other data is neither
//! counted, listed nor deleted.

use crate::error::{Error, Result};
use crate::operate::bulk::KeyType;
use crate::operate::operator::Operator;
use crate::protocol::Target;
use crate::wire::codec::{scripts, Arg, Value};
use crate::wire::connection::Interrupt;
use crate::wire::pipeline::Request;

/// A semaphore's live places: (token, ms left by its server's clock).
pub type Places = Vec<(Vec<u8>, u64)>;

/// One semaphore on one server, as the operator tools show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SemaphoreView {
    /// The key after the prefix.
    pub key: Vec<u8>,
    /// Its live places (none when every place has expired and the key has
    /// not yet).
    pub places: Places,
}

/// What an operator's unlock deleted, over every configured server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unlocked {
    /// Lock keys (strings) deleted.
    pub locks: u64,
    /// Semaphore keys deleted (each with all its places).
    pub semaphores: u64,
}

impl Operator<'_> {
    /// For each of `keys` (full Redis keys) on `target`: its live places if
    /// it is a semaphore, `None` if it is anything else or missing.
    pub(crate) fn semaphore_views(
        &mut self,
        target: Target,
        keys: &[Vec<u8>],
        interrupt: &Interrupt,
    ) -> Result<Vec<Option<Places>>> {
        let key_lists: Vec<[&[u8]; 1]> = keys.iter().map(|key| [key.as_slice()]).collect();
        let view: [Arg<'_>; 1] = ["view".into()];
        let requests: Vec<Request<'_>> = key_lists
            .iter()
            .map(|key| Request::Script {
                script: &scripts::OPERATOR_KEY,
                keys: key,
                args: &view,
            })
            .collect();
        let replies = self.each_request(target, keys, &requests, interrupt)?;
        replies
            .into_iter()
            .map(|reply| match reply {
                Value::Nil => Ok(None),
                Value::Array(pairs) => Ok(Some(places_of(pairs)?)),
                Value::ServerError(error) => Err(Error::Command {
                    server: self.client().server_name(target).unwrap_or("?").to_string(),
                    detail: format!("reading a semaphore: {error}"),
                }),
                other => Err(Error::Internal(format!(
                    "unexpected reply to the operator key script: {other:?}"
                ))),
            })
            .collect()
    }

    /// One SCAN page of the semaphores on `target` whose key (after the
    /// prefix) matches `glob`, as `lock_page` walks locks: the next cursor
    /// (0: done) and each semaphore with its live places. A `glob` that
    /// names one key is looked up directly. Sorted sets that are not
    /// semaphores are left out.
    pub fn semaphore_page(
        &mut self,
        target: Target,
        cursor: u64,
        glob: &[u8],
        count: usize,
        interrupt: &Interrupt,
    ) -> Result<(u64, Vec<SemaphoreView>)> {
        let page = self.glob_page(target, cursor, glob, count, KeyType::Zsets, interrupt)?;
        if page.keys.is_empty() {
            return Ok((page.cursor, Vec::new()));
        }
        let prefix_len = self.client().key_prefix().len();
        let views = self.semaphore_views(target, &page.keys, interrupt)?;
        let semaphores = page
            .keys
            .into_iter()
            .zip(views)
            .filter_map(|(key, view)| {
                view.map(|places| SemaphoreView {
                    key: key[prefix_len.min(key.len())..].to_vec(),
                    places,
                })
            })
            .collect();
        Ok((page.cursor, semaphores))
    }

    /// The operator's unlock of `key` (after the prefix) on every configured
    /// server, whoever holds it: deletes it where it is a lock or a
    /// semaphore (all its places), and leaves any other data there, deciding
    /// on the server (`operator_key.lua`) so nothing else is deleted even
    /// when the key changed since it was listed.
    pub fn unlock_key(&mut self, key: &[u8], interrupt: &Interrupt) -> Result<Unlocked> {
        self.check_prefix()?;
        if key.is_empty() {
            return Err(Error::InvalidArgument(
                "the key to unlock must not be empty".into(),
            ));
        }
        let full_key = [self.client().key_prefix(), key].concat();
        let keys = [full_key.as_slice()];
        let unlock: [Arg<'_>; 1] = ["unlock".into()];
        let request = [Request::Script {
            script: &scripts::OPERATOR_KEY,
            keys: &keys,
            args: &unlock,
        }];
        let mut unlocked = Unlocked::default();
        for target in self.configured_targets() {
            let reply = self
                .each_request(target, std::slice::from_ref(&full_key), &request, interrupt)?
                .pop()
                .unwrap_or(Value::Nil);
            match self.refused(target, reply)? {
                Value::Int(1) => unlocked.locks += 1,
                Value::Int(2) => unlocked.semaphores += 1,
                Value::Int(0) => {}
                other => {
                    return Err(Error::Internal(format!(
                        "unexpected reply to the operator unlock script: {other:?}"
                    )))
                }
            }
        }
        Ok(unlocked)
    }
}

/// The script's token, ms left, ... reply as places.
fn places_of(pairs: Vec<Value>) -> Result<Places> {
    crate::wire::codec::semaphore::places(&pairs).ok_or_else(|| {
        Error::Internal(format!(
            "unexpected places in the operator key script's reply: {pairs:?}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::places_of;
    use crate::wire::codec::Value;

    #[test]
    fn places_are_read_in_pairs_and_a_broken_reply_is_refused() {
        let reply = vec![
            Value::BulkString(b"a".to_vec()),
            Value::Int(1500),
            Value::BulkString(b"b".to_vec()),
            Value::Int(-3),
        ];
        assert_eq!(
            places_of(reply).unwrap(),
            vec![(b"a".to_vec(), 1500), (b"b".to_vec(), 0)]
        );
        assert!(places_of(vec![Value::BulkString(b"a".to_vec())]).is_err());
        assert!(places_of(vec![Value::Int(1), Value::Int(2)]).is_err());
        assert_eq!(places_of(Vec::new()).unwrap(), Vec::new());
    }
}
