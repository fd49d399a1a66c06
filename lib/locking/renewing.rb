# frozen_string_literal: true

class Locking
  # What a Locking and a Locking::Semaphore share for `auto_renew`: the
  # native renewer (Client#auto_renew, one thread per process and client)
  # keeps the lock or place, and #have_lock? and #lost? read the deadline it
  # confirmed (DESIGN "What a holder believes"). The includer has a @belief
  # and a @lost, and defines:
  # - renewed_key: [key, limit] (limit nil for a lock), what the renewer renews;
  # - renew_once(ttl_ms): one renewal, believed from its send;
  # - lost_payload: the "lost.locking" notification's payload.
  module Renewing
    # Renews this object's lock (or place) from the native renewer until
    # #release (see #acquire's auto_renew:), for one taken elsewhere with this
    # token (a job's enqueue-time lock). Unless this object just acquired or
    # renewed it, it is renewed once now, and renewed on only if that
    # renewal held.
    # @param renew_for [Numeric, nil] renew for at most this many seconds
    def auto_renew(seconds, renew_for: nil)
      ttl_ms = Locking.send(:ttl_ms, seconds)
      renew_for = Locking.send(:renew_for, renew_for || true)
      stop_renewing
      return self unless have_lock? || renew(seconds)

      start_renewing(Locking.client, ttl_ms, renew_for)
      self
    end

    # Stops renewing without releasing (the lock then expires with its TTL).
    def stop_renewing
      renewal = @renewal
      if renewal
        # Believed held as long as the last renewal confirmed, not a moment
        # more; the renewal answers have_lock? until then.
        @belief.until!(Locking.send(:monotonic) + renewal.stop)
        @lost ||= renewal.lost? # once lost, lost until #acquire or #release
        @renewal = nil
      end
      @renewing_client = nil
      nil
    end

    # @return [Boolean] whether it is lost: a renewal (the renewer's, or a
    #   #renew) found it gone (expired, deleted) or held by another token, or
    #   no renewal was confirmed in time (the deadline #have_lock? keeps
    #   passed), whether or not one is still in flight. Once true, true
    #   until #acquire or #release. Reported once as a "lost.locking"
    #   ActiveSupport notification, when loaded.
    def lost?(report: true)
      lost_with(@renewal, report)
    end

    # Resets the TTL of what this token holds. While auto-renewed, the
    # renewer is stopped first and, if this renewal holds, goes on with the
    # new TTL (within what is left of auto_renew: SECONDS).
    # @return [Boolean] false when it was lost (expired or taken).
    def renew(seconds)
      ttl_ms = Locking.send(:ttl_ms, seconds)
      client = @renewing_client
      renew_until = @renew_until
      return renew_once(ttl_ms) unless @renewal

      stop_renewing
      renewed = renew_once(ttl_ms)
      @lost ||= !renewed
      left = renew_until && (renew_until - Locking.send(:monotonic))
      start_renewing(client, ttl_ms, left) if renewed && (left.nil? || left.positive?)
      renewed
    end

    # @return [Boolean] whether this object holds it (local state: no Redis
    #   call): true until the send time of its last confirmed acquire or
    #   renewal, plus the TTL, less the drift allowed, so never while Redis
    #   may have let it go. With auto_renew, the renewer moves that
    #   deadline; a renewal in flight does not. In a forked child, nothing
    #   renews it.
    def have_lock?
      renewal = @renewal
      return !lost_with(renewal, true) if renewal # the renewal's deadline passed, or it was found gone

      @belief.holds?
    end

    private

    def lost_with(renewal, report)
      lost = @lost || renewal&.lost? || false
      report_lost if lost && report && !@lost_reported
      lost
    end

    # After an acquire (or renewal) for `ttl_ms` confirmed: the renewer takes over.
    def start_renewing(client, ttl_ms, renew_for)
      now = Locking.send(:monotonic)
      # The renewer's first renewal may shorten a lock that had longer left:
      # from now it is believed no longer than this TTL gives.
      valid_for = [@belief.deadline.to_f - now, Client.valid_for(ttl_ms)].min
      @renew_until = renew_for && (now + renew_for)
      key, limit = renewed_key
      @renewal = client.auto_renew(key, token, ttl_ms, valid_for, renew_for, limit: limit)
      @renewing_client = client # the renewer lives as long as its client: keep it while renewing
      @lost_reported = false
    end

    def report_lost
      @lost_reported = true
      return unless defined?(ActiveSupport::Notifications)

      ActiveSupport::Notifications.instrument("lost.locking", lost_payload)
    end
  end
end
