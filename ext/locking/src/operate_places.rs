//! `Locking::Client`'s natives for semaphores in the operator tools
//! (`locking unlock`, `status`, the dashboard, `Locking.lock_info`): private
//! and positional, as client.rs's. Each runs without the GVL through an
//! operator session (`RbClient::with_operator`).

use crate::client::{bytes, target_of, RbClient};
use magnus::{method, prelude::*, RArray, RString, Ruby};

/// One page of the semaphores on a server (0 source, 1 destination) whose
/// key matches `glob`: [next cursor, [[key, [[token, ms left], ...]], ...]].
fn semaphore_page(
    ruby: &Ruby,
    rb_self: &RbClient,
    server: u8,
    cursor: u64,
    glob: RString,
    count: usize,
) -> Result<(u64, RArray), magnus::Error> {
    let target = target_of(server)?;
    let glob = bytes(glob);
    let (next, semaphores) = rb_self.with_operator(ruby, |operator, interrupt| {
        operator.semaphore_page(target, cursor, &glob, count, interrupt)
    })?;
    let array = ruby.ary_new_capa(semaphores.len());
    for semaphore in semaphores {
        let places = ruby.ary_new_capa(semaphore.places.len());
        for (token, left) in semaphore.places {
            places.push((ruby.str_from_slice(&token), left))?;
        }
        array.push((ruby.str_from_slice(&semaphore.key), places))?;
    }
    Ok((next, array))
}

/// Deletes a lock or a whole semaphore on every configured server, whoever
/// holds it, and nothing else: [lock keys deleted, semaphore keys deleted].
fn unlock_key(ruby: &Ruby, rb_self: &RbClient, key: RString) -> Result<(u64, u64), magnus::Error> {
    let key = bytes(key);
    let unlocked = rb_self.with_operator(ruby, |operator, interrupt| {
        operator.unlock_key(&key, interrupt)
    })?;
    Ok((unlocked.locks, unlocked.semaphores))
}

pub fn init(ruby: &Ruby) -> Result<(), magnus::Error> {
    let locking = ruby.define_class("Locking", ruby.class_object())?;
    let class = locking.define_class("Client", ruby.class_object())?;
    class.define_private_method("_semaphore_page", method!(semaphore_page, 4))?;
    class.define_private_method("_unlock_key", method!(unlock_key, 1))?;
    Ok(())
}
