//! Semaphore places for the gates (DESIGN "Semaphores"): which live places
//! on one server have no live place for their token on the other. A place
//! is live by its own server's clock (`semaphore_places.lua`), and the rule
//! that makes it count is the explorer's (`protocol::place_one_sided`).

use crate::error::{Error, Result};
use crate::operate::operator::Operator;
use crate::protocol::{place_one_sided, Target};
use crate::wire::codec::{scripts, Value};
use crate::wire::connection::Interrupt;
use crate::wire::pipeline::Request;

impl Operator<'_> {
    /// For each of `keys` (semaphores), the tokens of its live places on
    /// `target`; none where the key is missing or is not a semaphore.
    pub(crate) fn live_places(
        &mut self,
        target: Target,
        keys: &[Vec<u8>],
        interrupt: &Interrupt,
    ) -> Result<Vec<Vec<Vec<u8>>>> {
        let key_lists: Vec<[&[u8]; 1]> = keys.iter().map(|key| [key.as_slice()]).collect();
        let requests: Vec<Request<'_>> = key_lists
            .iter()
            .map(|key| Request::Script {
                script: &scripts::SEMAPHORE_PLACES,
                keys: key,
                args: &[],
            })
            .collect();
        let replies = self.each_request(target, keys, &requests, interrupt)?;
        replies
            .into_iter()
            .map(|reply| match reply {
                Value::Array(tokens) => Ok(tokens
                    .into_iter()
                    .filter_map(|token| match token {
                        Value::BulkString(bytes) => Some(bytes),
                        _ => None,
                    })
                    .collect()),
                // A key that is a lock (the walk saw a sorted set, then it
                // expired and a lock took the key): no places.
                Value::ServerError(error) if error.to_string().contains("WRONGTYPE") => {
                    Ok(Vec::new())
                }
                Value::ServerError(error) => Err(Error::Command {
                    server: self.client().server_name(target).unwrap_or("?").to_string(),
                    detail: format!("reading a semaphore's places: {error}"),
                }),
                other => Err(Error::Internal(format!(
                    "unexpected reply to the semaphore places script: {other:?}"
                ))),
            })
            .collect()
    }

    /// The (key, token) of each live place on `side` among `keys` whose
    /// token has no live place at the same key on the other server.
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
        let here = self.live_places(side, &keys, interrupt)?;
        let there = self.live_places(other, &keys, interrupt)?;
        let mut one_sided = Vec::new();
        for ((key, here), there) in keys.into_iter().zip(here).zip(there) {
            for token in here {
                if place_one_sided(true, there.contains(&token)) {
                    one_sided.push((key.clone(), token));
                }
            }
        }
        Ok(one_sided)
    }
}
