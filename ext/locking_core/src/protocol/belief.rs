//! What a holder may believe about its lock, as deadlines computed from send
//! times (redlock's validity time), never as a flag that a late reply flips.
//!
//! The invariant: while a holder says it has the lock (`have_lock?`), Redis
//! keeps the lock for its token on the servers its phase reads. Redis counts
//! a TTL from when it ran the command, which is after we sent it, so a lock
//! confirmed by a command *sent* at `s` with TTL `t` lives at least until
//! `s + t` on the server's clock. Our clock and the server's may run at
//! different rates: we allow `drift_ms(t)` for that (1% of the TTL, plus
//! 2 ms for the millisecond rounding of PX and of the server's expiry
//! checks). The holder believes the lock until `valid_until(s, t)`, and no
//! reply, however late, moves that deadline back from the past.
//!
//! Times here are microseconds on one clock (`now_us`: CLOCK_BOOTTIME on
//! Linux, which keeps counting while the machine sleeps, so a suspended VM
//! wakes with its deadlines past). The functions are pure, so the explorer
//! and the tests call the product's own rules.

/// The drift allowed between our clock and a server's over a TTL: 1% of it,
/// plus 2 ms of rounding.
pub fn drift_ms(ttl_ms: u64) -> u64 {
    ttl_ms / 100 + 2
}

/// How long a lock confirmed for `ttl_ms` may be believed after the send
/// that confirmed it.
pub fn valid_for_ms(ttl_ms: u64) -> u64 {
    ttl_ms.saturating_sub(drift_ms(ttl_ms))
}

/// The deadline of a lock confirmed by a command sent at `sent_us`.
pub fn valid_until(sent_us: u64, ttl_ms: u64) -> u64 {
    sent_us.saturating_add(valid_for_ms(ttl_ms).saturating_mul(1000))
}

/// Whether a belief with this deadline still holds at `now_us`.
pub fn holds(valid_until_us: u64, now_us: u64) -> bool {
    now_us < valid_until_us
}

/// The deadline after a renewal of `ttl_ms` sent at `sent_us` came back
/// confirmed at `now_us`, or None when it does not count and the lock is
/// lost: it was sent after the belief ran out (the lock may have been free
/// for a while, and another holder may have come and gone), or it came back
/// too late (the holder already said "lost", which is for good).
pub fn after_renewal(valid_until_us: u64, sent_us: u64, now_us: u64, ttl_ms: u64) -> Option<u64> {
    (holds(valid_until_us, sent_us) && holds(valid_until_us, now_us))
        .then(|| valid_until(sent_us, ttl_ms).max(valid_until_us))
}

/// The deadline while a renewal of `ttl_ms` sent at `sent_us` is in flight
/// (or after it failed without an answer): it may already have run and
/// shortened the lock (an explicit `renew` asking less than the lock had
/// left), so the holder believes no longer than it asks, nor than before.
pub fn renewal_sent(valid_until_us: u64, sent_us: u64, ttl_ms: u64) -> u64 {
    valid_until_us.min(valid_until(sent_us, ttl_ms))
}

/// Whether a write sent at `now_us` under a lease (or lock) believed until
/// `valid_until_us` still lands before it, if the network holds it for a
/// whole `timeout_us` (a backfill's copies under its lease).
pub fn may_send(valid_until_us: u64, now_us: u64, timeout_us: u64) -> bool {
    holds(valid_until_us, now_us.saturating_add(timeout_us))
}

/// The watchdog's period for a lock of `ttl_ms` on servers answering
/// within `timeout_ms`: a renewal sent then, slow by two timeouts (the phase
/// read and the renewal itself), still returns before the belief runs out.
/// Never more than a third of the validity (two renewals may fail in a row
/// and the lock still holds), never less than a tenth of it. Where no
/// interval can work (`renew_warning`), a third: renewing more often would
/// only load the servers.
pub fn renew_interval_ms(ttl_ms: u64, timeout_ms: u64) -> u64 {
    let valid = valid_for_ms(ttl_ms);
    match valid.saturating_sub(timeout_ms.saturating_mul(2)) {
        0 => (valid / 3).max(1),
        slow => slow.min(valid / 3).max(valid / 10).max(1),
    }
}

/// After a failed renewal, the next try comes this soon (200 ms at most),
/// while the belief lasts.
pub fn retry_after_ms(ttl_ms: u64) -> u64 {
    (renew_interval_ms(ttl_ms, 0) / 3).clamp(1, 200)
}

/// A warning for auto-renewed locks whose TTL leaves no room for a slow
/// reply: a renewal that takes `timeout` twice (the phase read, the
/// renewal) returns after the lock may have expired, so a slow server makes
/// the lock lost, not merely late.
pub fn renew_warning(ttl_ms: u64, timeout_ms: u64) -> Option<String> {
    let valid = valid_for_ms(ttl_ms);
    (valid <= timeout_ms.saturating_mul(2)).then(|| {
        format!(
            "auto_renew with a TTL of {ttl_ms} ms and a timeout of {timeout_ms} ms: a renewal that waits out the \
             timeout returns after the lock may have expired (believed for {valid} ms after each renewal is sent), \
             so one slow reply loses the lock; use a TTL above 2 x timeout + 1% ({} ms)",
            timeout_ms.saturating_mul(2) * 101 / 100 + 3
        )
    })
}

/// The life of a process's heartbeat (dynamic phases) that reads the phase
/// every `cache_ms` and waits up to `timeout_ms` for a reply: at least 10 s,
/// and long enough that an operation begun on a fresh read, slow by a
/// timeout, still sends within `heartbeat_lapse_ms`.
pub fn heartbeat_ttl_ms(cache_ms: u64, timeout_ms: u64) -> u64 {
    cache_ms
        .saturating_add(timeout_ms)
        .saturating_mul(4)
        .max(10_000)
}

/// How old (from the local time its reply came in) a heartbeat may be for
/// this process still to send a command. The command may be held by the
/// network for up to `timeout_ms` before it runs, the heartbeat was written
/// up to `timeout_ms` before its reply came in, the operator needs one
/// phase cache to act on the fleet, and the server's clock may drift: past
/// this, a command could land after the heartbeat that covers it expired,
/// when the fleet may have moved two phases on.
pub fn heartbeat_lapse_ms(heartbeat_ttl_ms: u64, cache_ms: u64, timeout_ms: u64) -> u64 {
    crate::protocol::fleet::lapse_ms(
        heartbeat_ttl_ms,
        cache_ms,
        timeout_ms,
        drift_ms(heartbeat_ttl_ms),
    )
}

/// Now, in microseconds, on the clock the deadlines use (CLOCK_BOOTTIME on
/// Linux, CLOCK_MONOTONIC elsewhere): the same clock in every process of the
/// machine, so a forked child reads its parent's deadlines as they are.
pub fn now_us() -> u64 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const CLOCK: libc::clockid_t = libc::CLOCK_BOOTTIME;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; both clocks exist where selected.
    if unsafe { libc::clock_gettime(CLOCK, &mut now) } != 0 {
        return 0;
    }
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_in_flight_caps_the_belief_at_what_it_asks() {
        let long = valid_until(0, 60_000);
        assert_eq!(renewal_sent(long, 1_000, 100), valid_until(1_000, 100));
        assert_eq!(renewal_sent(5_000, 1_000, 60_000), 5_000);
    }

    #[test]
    fn a_belief_ends_before_the_server_can_expire_the_lock() {
        // Sent at 1 s with a 30 s TTL: believed until 30.698 s (drift 302 ms).
        assert_eq!(valid_until(1_000_000, 30_000), 30_698_000);
        assert!(holds(valid_until(0, 1000), 987_999));
        assert!(!holds(valid_until(0, 1000), 988_000));
        // A TTL shorter than the drift is never believed.
        assert_eq!(valid_for_ms(2), 0);
        assert!(!holds(valid_until(5, 2), 5));
    }

    #[test]
    fn the_renew_interval_leaves_room_for_two_slow_replies() {
        // 30 s, timeout 1 s: a third of the validity.
        assert_eq!(renew_interval_ms(30_000, 1000), 9_899);
        // 3 s, timeout 1 s: validity 2,968 ms less two timeouts.
        assert_eq!(renew_interval_ms(3_000, 1000), 968);
        // 2.5 s, timeout 1 s: room for two slow replies, 473 ms after a send.
        assert_eq!(renew_interval_ms(2_500, 1000), 473);
        // 0.3 s, timeout 1 s: cannot work; a third of the validity, and a warning.
        assert_eq!(renew_interval_ms(300, 1000), 98);
        assert!(renew_warning(300, 1000).is_some());
        assert!(renew_warning(3_000, 1000).is_none());
        assert!(renew_warning(2_000, 1000).is_some());
        assert_eq!(retry_after_ms(30_000), 200);
        assert_eq!(retry_after_ms(300), 32);
        assert_eq!(retry_after_ms(1), 1);
    }

    #[test]
    fn an_operation_sends_nothing_its_heartbeat_would_not_cover() {
        for (cache, timeout) in [(1000, 1000), (100, 20_000), (5000, 5000), (1, 86_400_000)] {
            let ttl = heartbeat_ttl_ms(cache, timeout);
            let lapse = heartbeat_lapse_ms(ttl, cache, timeout);
            // A command sent at the lapse, written by a heartbeat a timeout
            // before its reply, held a timeout by the network, lands a
            // phase cache before the heartbeat expires, drift allowed.
            assert!(lapse + 2 * timeout + cache + drift_ms(ttl) <= ttl);
            // And a process that reads every cache is never cut off by it.
            assert!(lapse >= cache + timeout, "{cache} {timeout}: {lapse}");
        }
        assert_eq!(heartbeat_ttl_ms(1000, 1000), 10_000);
    }
}
