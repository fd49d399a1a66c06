//! `Locking::Semaphore`'s natives: private, positional instance methods, each
//! given the `Locking::Client` to run on (lib/locking/semaphore.rb owns the
//! keyword arguments, validation and the holder's belief). Each runs without
//! the GVL through the client's lease, as the lock's natives do.

use crate::client::{bytes, RbClient};
use magnus::{method, prelude::*, RString, Ruby, Value};

fn acquire(
    ruby: &Ruby,
    _semaphore: Value,
    client: &RbClient,
    key: RString,
    token: RString,
    limit: u64,
    ttl_ms: u64,
) -> Result<bool, magnus::Error> {
    let (key, token) = (bytes(key), bytes(token));
    client.with_lease(ruby, |lease, interrupt| {
        lease.semaphore_acquire(&key, &token, limit, ttl_ms, interrupt)
    })
}

fn release(
    ruby: &Ruby,
    _semaphore: Value,
    client: &RbClient,
    key: RString,
    token: RString,
) -> Result<bool, magnus::Error> {
    let (key, token) = (bytes(key), bytes(token));
    client.with_lease(ruby, |lease, interrupt| {
        lease.semaphore_release(&key, &token, interrupt)
    })
}

fn renew(
    ruby: &Ruby,
    _semaphore: Value,
    client: &RbClient,
    key: RString,
    token: RString,
    limit: u64,
    ttl_ms: u64,
) -> Result<bool, magnus::Error> {
    let (key, token) = (bytes(key), bytes(token));
    client.with_lease(ruby, |lease, interrupt| {
        lease.semaphore_renew(&key, &token, limit, ttl_ms, interrupt)
    })
}

fn holders(
    ruby: &Ruby,
    _semaphore: Value,
    client: &RbClient,
    key: RString,
) -> Result<u64, magnus::Error> {
    let key = bytes(key);
    client.with_lease(ruby, |lease, interrupt| {
        lease.semaphore_holders(&key, interrupt)
    })
}

pub fn init(ruby: &Ruby) -> Result<(), magnus::Error> {
    let locking = ruby.define_class("Locking", ruby.class_object())?;
    let class = locking.define_class("Semaphore", ruby.class_object())?;
    class.const_set("MAX_LIMIT", locking_core::protocol::MAX_SEMAPHORE_LIMIT)?;
    class.define_private_method("_acquire", method!(acquire, 5))?;
    class.define_private_method("_release", method!(release, 3))?;
    class.define_private_method("_renew", method!(renew, 5))?;
    class.define_private_method("_holders", method!(holders, 2))?;
    Ok(())
}
