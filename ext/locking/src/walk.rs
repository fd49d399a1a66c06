//! `Locking::Client::Walk`: a walk of a server's lock keys that Ruby steps a
//! few SCAN pages at a time (`Client#key_stats`, `#source_only`), so that
//! Ctrl-C lands between steps and memory stays bounded. Opaque to Ruby.

use locking_core::operate::bulk::OneSidedWalk;
use locking_core::operate::stats::KeyStatsWalk;
use magnus::{prelude::*, Error, Ruby};
use std::sync::Mutex;

pub enum Walk {
    Stats(KeyStatsWalk),
    OneSided(OneSidedWalk),
    /// Being stepped (outside the lock) or finished.
    Busy,
}

#[magnus::wrap(class = "Locking::Client::Walk", free_immediately, size)]
pub struct RbWalk(pub Mutex<Walk>);

impl RbWalk {
    /// Takes the walk out to step it without the GVL; `put_back` returns it.
    pub fn take(&self, ruby: &Ruby) -> Result<Walk, Error> {
        let mut state = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match std::mem::replace(&mut *state, Walk::Busy) {
            Walk::Busy => Err(Error::new(
                ruby.exception_runtime_error(),
                "this walk is finished, or being stepped by another thread",
            )),
            walk => Ok(walk),
        }
    }

    pub fn put_back(&self, walk: Walk) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = walk;
    }
}

pub fn init(ruby: &Ruby) -> Result<(), Error> {
    let locking = ruby.define_class("Locking", ruby.class_object())?;
    let client = locking.define_class("Client", ruby.class_object())?;
    client.define_class("Walk", ruby.class_object())?;
    Ok(())
}
