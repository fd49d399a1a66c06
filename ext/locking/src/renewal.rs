//! `Locking::Client::Renewal`: one auto-renewed lock or semaphore place (locking_core::operate::renew),
//! with what the holder believes of it; and the natives that start one and
//! share the core's belief rules with Ruby (`Client.valid_for`,
//! `Client.renewal_sent`, `Client.clock`).

use crate::client::{bytes, RbClient};
use crate::error::{panic_error, RubyError};
use crate::nogvl::{without_gvl, Outcome};
use locking_core::operate::renew::{self, Renewal};
use locking_core::protocol::belief;
use locking_core::Interrupt;
use magnus::{function, method, prelude::*, RString, Ruby};
use std::time::Duration;

#[magnus::wrap(class = "Locking::Client::Renewal", free_immediately, size)]
pub struct RbRenewal {
    renewal: Renewal,
}

impl RbRenewal {
    fn lost(&self) -> bool {
        self.renewal.lost()
    }

    fn held(&self) -> bool {
        self.renewal.held()
    }

    /// Seconds the lock is still believed held (0.0 once lost).
    fn remaining(&self) -> f64 {
        self.renewal.remaining().as_secs_f64()
    }

    /// Stops renewing; waits (without the GVL) for a renewal in flight.
    /// Returns the seconds the lock is still believed held after it.
    fn stop(ruby: &Ruby, rb_self: &Self) -> Result<f64, magnus::Error> {
        let interrupt = Interrupt::new();
        match without_gvl(&interrupt, || rb_self.renewal.stop()) {
            Outcome::Finished(()) => Ok(rb_self.remaining()),
            Outcome::Interrupted(jump) => Err(jump),
            Outcome::Panicked(message) => Err(panic_error(ruby, &message)),
        }
    }
}

/// `Client#_auto_renew`: starts renewing a lock this token holds
/// (`acquire(seconds, auto_renew: true)`), or its place in a semaphore of
/// `limit` (nil: a lock), believed held for `valid_for` more seconds (what
/// the confirming command's send left), renewed for at most `renew_for`
/// seconds (nil: until stopped).
#[allow(clippy::too_many_arguments)]
fn auto_renew(
    ruby: &Ruby,
    rb_self: &RbClient,
    key: RString,
    token: RString,
    ttl_ms: u64,
    valid_for: f64,
    renew_for: Option<f64>,
    limit: Option<u64>,
) -> Result<RbRenewal, magnus::Error> {
    let kind = match limit {
        None => renew::Renewed::Lock,
        Some(limit) => {
            locking_core::protocol::semaphore::check_limit(limit).map_err(RubyError)?;
            renew::Renewed::Place { limit }
        }
    };
    if ttl_ms == 0 || ttl_ms > locking_core::MAX_TTL_MS {
        return Err(RubyError(locking_core::Error::InvalidArgument(format!(
            "TTL of {ttl_ms} ms is out of range"
        )))
        .into());
    }
    let seconds = |value: f64| Duration::try_from_secs_f64(value.max(0.0)).unwrap_or(Duration::MAX);
    let valid_until_us = belief::now_us().saturating_add(seconds(valid_for).as_micros() as u64);
    let renewal = renew::start(
        &rb_self.client,
        &rb_self.renewals,
        renew::Held {
            key: &bytes(key),
            token: &bytes(token),
            ttl_ms,
            kind,
            valid_until_us,
            renew_for: renew_for.map(seconds),
        },
    );
    rb_self.give_warnings(ruby);
    Ok(RbRenewal { renewal })
}

/// Seconds a lock confirmed for `ttl_ms` is believed held after the send
/// that confirmed it (`belief::valid_for_ms`).
fn valid_for(ttl_ms: u64) -> f64 {
    belief::valid_for_ms(ttl_ms) as f64 / 1000.0
}

/// What a holder believes while a renewal of `ttl_ms` sent at `started`
/// is in flight, from `held_until` before it (`belief::renewal_sent`); all
/// in seconds on `clock`.
fn renewal_sent(held_until: f64, started: f64, ttl_ms: u64) -> f64 {
    let us = |seconds: f64| (seconds * 1e6) as u64; // saturating: NaN and below 0 are 0
    belief::renewal_sent(us(held_until), us(started), ttl_ms) as f64 / 1e6
}

/// Now on the clock the deadlines use (`belief::now_us`), in seconds.
fn clock() -> f64 {
    belief::now_us() as f64 / 1e6
}

/// After `client::init`: Locking::Client exists.
pub fn init(ruby: &Ruby) -> Result<(), magnus::Error> {
    let client = ruby
        .class_object()
        .const_get::<_, magnus::RClass>("Locking")?
        .const_get::<_, magnus::RClass>("Client")?;
    client.define_private_method("_auto_renew", method!(auto_renew, 6))?;
    client.define_singleton_method("valid_for", function!(valid_for, 1))?;
    client.define_singleton_method("clock", function!(clock, 0))?;
    client.define_singleton_method("renewal_sent", function!(renewal_sent, 3))?;
    let renewal = client.define_class("Renewal", ruby.class_object())?;
    renewal.define_method("lost?", method!(RbRenewal::lost, 0))?;
    renewal.define_method("held?", method!(RbRenewal::held, 0))?;
    renewal.define_method("remaining", method!(RbRenewal::remaining, 0))?;
    renewal.define_method("stop", method!(RbRenewal::stop, 0))?;
    Ok(())
}
