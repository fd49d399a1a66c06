//! `Locking::Testing::Memory`: the in-process backend of `Locking::Testing`
//! (lib/locking/testing.rb), over `locking_core::protocol::memory`. Nothing here blocks,
//! so the GVL stays held.

use crate::error::RubyError;
use locking_core::protocol::memory::MemoryBackend;
use locking_core::{Phase, TokenTtl};
use magnus::{function, method, prelude::*, Error, RString, Ruby};
use std::sync::Mutex;

#[magnus::wrap(class = "Locking::Testing::Memory", free_immediately, size)]
pub struct RbMemory(Mutex<MemoryBackend>);

fn bytes(string: RString) -> Vec<u8> {
    // SAFETY: copied before any other Ruby call can run.
    unsafe { string.as_slice() }.to_vec()
}

impl RbMemory {
    fn new() -> RbMemory {
        RbMemory(Mutex::new(MemoryBackend::new()))
    }

    fn with<T>(&self, f: impl FnOnce(&mut MemoryBackend) -> T) -> T {
        let mut memory = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut memory)
    }

    fn acquire(&self, key: RString, token: RString, ttl_ms: u64) -> Result<bool, Error> {
        let (key, token) = (bytes(key), bytes(token));
        Ok(self
            .with(|m| m.acquire(&key, &token, ttl_ms))
            .map_err(RubyError)?)
    }

    fn release(&self, key: RString, token: RString) -> Result<bool, Error> {
        let (key, token) = (bytes(key), bytes(token));
        Ok(self.with(|m| m.release(&key, &token)).map_err(RubyError)?)
    }

    fn locked(&self, key: RString) -> Result<bool, Error> {
        let key = bytes(key);
        Ok(self.with(|m| m.locked(&key)).map_err(RubyError)?)
    }

    fn renew(&self, key: RString, token: RString, ttl_ms: u64) -> Result<bool, Error> {
        let (key, token) = (bytes(key), bytes(token));
        Ok(self
            .with(|m| m.renew(&key, &token, ttl_ms))
            .map_err(RubyError)?)
    }

    /// Milliseconds left; -1 without expiry; nil when the token does not hold it.
    fn ttl(&self, key: RString, token: RString) -> Result<Option<i64>, Error> {
        let (key, token) = (bytes(key), bytes(token));
        let ttl = self.with(|m| m.ttl(&key, &token)).map_err(RubyError)?;
        Ok(match ttl {
            TokenTtl::NotHeld => None,
            TokenTtl::Forever => Some(-1),
            TokenTtl::Millis(ms) => Some(i64::try_from(ms).unwrap_or(i64::MAX)),
        })
    }

    fn force_delete(&self, key: RString) -> u64 {
        let key = bytes(key);
        self.with(|m| m.force_delete(&key))
    }

    fn delete_matching(&self, start: RString) -> u64 {
        let start = bytes(start);
        self.with(|m| m.delete_matching(&start))
    }

    fn travel(&self, ms: u64) {
        self.with(|m| m.travel(ms));
    }

    fn now_ms(&self) -> u64 {
        self.with(|m| m.now_ms())
    }

    fn reset(&self) {
        self.with(MemoryBackend::reset);
    }

    fn set_phase(&self, index: i64) -> Result<(), Error> {
        let phase = Phase::from_index(index).map_err(RubyError)?;
        self.with(|m| m.set_phase(phase));
        Ok(())
    }

    fn phase(&self) -> u8 {
        self.with(|m| m.phase().index())
    }

    fn keys(ruby: &Ruby, rb_self: &Self) -> Result<magnus::RArray, Error> {
        let array = ruby.ary_new();
        for key in rb_self.with(|m| m.keys()) {
            array.push(ruby.str_from_slice(&key))?;
        }
        Ok(array)
    }
}

pub fn init(ruby: &Ruby) -> Result<(), Error> {
    let locking = ruby.define_class("Locking", ruby.class_object())?;
    let testing = locking.define_module("Testing")?;
    let class = testing.define_class("Memory", ruby.class_object())?;
    class.define_singleton_method("new", function!(RbMemory::new, 0))?;
    class.define_method("_acquire", method!(RbMemory::acquire, 3))?;
    class.define_method("_release", method!(RbMemory::release, 2))?;
    class.define_method("_locked", method!(RbMemory::locked, 1))?;
    class.define_method("_renew", method!(RbMemory::renew, 3))?;
    class.define_method("_ttl", method!(RbMemory::ttl, 2))?;
    class.define_method("_force_delete", method!(RbMemory::force_delete, 1))?;
    class.define_method("_delete_matching", method!(RbMemory::delete_matching, 1))?;
    class.define_method("_travel", method!(RbMemory::travel, 1))?;
    class.define_method("_now_ms", method!(RbMemory::now_ms, 0))?;
    class.define_method("_reset", method!(RbMemory::reset, 0))?;
    class.define_method("_set_phase", method!(RbMemory::set_phase, 1))?;
    class.define_method("_phase", method!(RbMemory::phase, 0))?;
    class.define_method("_keys", method!(RbMemory::keys, 0))?;
    Ok(())
}
