//! What each server holds of a key, for the gates: a lock's value and TTL
//! (`lock_copies`), and semaphore places (DESIGN "Semaphores"): which live places
//! on one server the other does not cover (no live place for the token, or
//! one that may end sooner). Each server says what each place has left by
//! its own clock (`operator_key.lua`), and the rule that makes a place
//! count is the explorer's (`protocol::copy_one_sided`).

use crate::error::{Error, Result};
use crate::operate::operator::Operator;
use crate::protocol::{copy_one_sided, Target};
use crate::wire::codec::{scripts, Value};
use crate::wire::connection::Interrupt;
use crate::wire::pipeline::Request;
use std::collections::HashMap;
use std::time::Instant;

/// What one server holds at a key, as the gates' walk reads it.
pub(crate) enum KeyCopy {
    /// A lock: its value, and the ms it has left (`u64::MAX`: no TTL).
    Lock(Vec<u8>, u64),
    /// A key of another type (a semaphore).
    Other,
    Missing,
}

/// Semaphores read on both servers back to back, per group.
const PLACES_GROUP: usize = 50;

impl Operator<'_> {
    /// For each of `keys` (semaphores), its live places on `target`: (token,
    /// ms left); none where the key is missing or is not a semaphore (by the
    /// operator tools' one rule, `operator_key.lua`).
    #[allow(clippy::type_complexity)]
    pub(crate) fn live_places(
        &mut self,
        target: Target,
        keys: &[Vec<u8>],
        interrupt: &Interrupt,
    ) -> Result<Vec<Vec<(Vec<u8>, u64)>>> {
        let views = self.semaphore_views(target, keys, interrupt)?;
        Ok(views.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// The (key, token) of each live place on `side` among `keys` that the
    /// other server does not cover. Keys go in small groups, each read on
    /// both servers back to back, so that the time between the two reads
    /// (the rule's uncertainty) stays a few round trips.
    pub(crate) fn places_only_among(
        &mut self,
        side: Target,
        keys: Vec<Vec<u8>>,
        interrupt: &Interrupt,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let other = match side {
            Target::Source => Target::Destination,
            Target::Destination => Target::Source,
        };
        let mut one_sided = Vec::new();
        for group in keys.chunks(PLACES_GROUP) {
            let started = Instant::now();
            let here = self.live_places(side, group, interrupt)?;
            let there = self.live_places(other, group, interrupt)?;
            let uncertainty_ms = started.elapsed().as_millis() as u64 + 1;
            for ((key, here), there) in group.iter().zip(here).zip(there) {
                // By token: a semaphore may have up to a million places.
                let there: HashMap<Vec<u8>, u64> = there.into_iter().collect();
                for (token, left) in here {
                    let there_left = there.get(&token).copied();
                    if copy_one_sided(Some(left), there_left, uncertainty_ms) {
                        one_sided.push((key.clone(), token));
                    }
                }
            }
        }
        Ok(one_sided)
    }

    /// What `target` holds at each of `keys`, for the gates.
    pub(crate) fn lock_copies(
        &mut self,
        target: Target,
        keys: &[Vec<u8>],
        interrupt: &Interrupt,
    ) -> Result<Vec<KeyCopy>> {
        let key_lists: Vec<[&[u8]; 1]> = keys.iter().map(|key| [key.as_slice()]).collect();
        let requests: Vec<Request<'_>> = key_lists
            .iter()
            .map(|key| Request::Script {
                script: &scripts::LOCK_COPY,
                keys: key,
                args: &[],
            })
            .collect();
        let replies = self.each_request(target, keys, &requests, interrupt)?;
        replies
            .into_iter()
            .map(|reply| match reply {
                Value::Array(parts) => {
                    let mut parts = parts.into_iter();
                    match (parts.next(), parts.next(), parts.next()) {
                        (
                            Some(Value::BulkString(kind)),
                            Some(Value::BulkString(value)),
                            Some(Value::Int(left)),
                        ) if kind == b"string" => {
                            // No TTL (-1): a copy that never ends.
                            let left = u64::try_from(left).unwrap_or(u64::MAX);
                            Ok(KeyCopy::Lock(value, left))
                        }
                        (Some(Value::BulkString(kind)), None, None) if kind == b"none" => {
                            Ok(KeyCopy::Missing)
                        }
                        (Some(Value::BulkString(_)), None, None) => Ok(KeyCopy::Other),
                        // Expired between its GET and its PTTL.
                        (Some(Value::BulkString(_)), _, _) => Ok(KeyCopy::Missing),
                        other => Err(Error::Internal(format!(
                            "unexpected reply to the lock copy script: {other:?}"
                        ))),
                    }
                }
                Value::ServerError(error) => Err(Error::Command {
                    server: self.client().server_name(target).unwrap_or("?").to_string(),
                    detail: format!("reading a lock for the gate: {error}"),
                }),
                other => Err(Error::Internal(format!(
                    "unexpected reply to the lock copy script: {other:?}"
                ))),
            })
            .collect()
    }
}
