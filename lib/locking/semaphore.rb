# frozen_string_literal: true

class Locking
  # At most `limit` holders of one key at once: a lock with `limit` places.
  #
  #   semaphore = Locking::Semaphore.new("exports", limit: 3)
  #   if semaphore.acquire(60)    # seconds, as Locking#acquire
  #     begin
  #       export!
  #     ensure
  #       semaphore.release
  #     end
  #   end
  #
  #   Locking::Semaphore.new("exports", limit: 3).with_lock(60, wait: 5) { export! }
  #
  # Each holder (token) has one place with its own TTL; an expired place is
  # free. The places live in one sorted set at the key (one hash slot, so a
  # cluster serves it), and each operation is one round trip per server the
  # phase writes, whatever the limit. Every phase of a migration keeps the
  # limit (the gates count places on one server only). See the README's
  # "Semaphores" and docs/DESIGN.md.
  #
  # The native methods (_acquire, ...) are defined in ext/locking/src/semaphore.rs.
  class Semaphore
    include Renewing

    # The key as given (Redis stores key_prefix + key).
    attr_reader :key
    # How many holders at most.
    attr_reader :limit
    # What this holder stores for its place; give the same token to another
    # Semaphore (another process) to let it renew or release the place.
    attr_reader :token

    # @param key [String] non-empty; any bytes. Not the key of a lock.
    # @param limit [Integer] 1..MAX_LIMIT
    # @param token [String, nil] this holder's token (nil: a new random one)
    def initialize(key, limit:, token: nil)
      @key = Locking.send(:check_string, key, "semaphore key")
      unless limit.is_a?(Integer) && limit.between?(1, MAX_LIMIT)
        raise ArgumentError, "limit must be an Integer from 1 to #{MAX_LIMIT}, got #{limit.inspect}"
      end

      @limit = limit
      @token = Locking.send(:check_string, token.nil? ? Client.generate_token : token, "token")
      @belief = Belief.new
      @lost = false
    end

    # Takes a place for `seconds` (Integer or Float, millisecond precision)
    # unless `limit` places are live. A token that already holds a place
    # (another Semaphore with this token) gets it again, its TTL reset.
    #
    # With `auto_renew: true` the place is renewed from the native renewer
    # (as Locking#acquire's: about every `seconds / 3`) until #release;
    # `auto_renew: 3600` renews it for at most that long.
    #
    # #have_lock? is then true until the send time of this acquire (or of the
    # last confirmed renewal) plus `seconds`, less the clock drift allowed, as
    # for Locking: never longer than Redis keeps the place.
    # @return [Boolean] true when this token holds a place
    # @raise [AlreadyAcquireLockError] when this object already holds one
    def acquire(seconds, auto_renew: false)
      if have_lock?
        raise AlreadyAcquireLockError, "semaphore #{key.inspect} is already held by this Semaphore; release it first"
      end

      ttl_ms = Locking.send(:ttl_ms, seconds)
      renew_for = Locking.send(:renew_for, auto_renew)
      started = Locking.send(:monotonic)
      client = native_client
      sent = @belief.sending(started, ttl_ms)
      acquired = @belief.answered(sent, _acquire(client, key, token, limit, ttl_ms), started, ttl_ms)
      if acquired
        @lost = false
        start_renewing(client, ttl_ms, renew_for) if auto_renew
      end
      acquired
    end

    # Gives this token's place back, wherever it is live. Stops its renewal
    # first (after a renewal in flight, so none follows).
    # @return [Boolean] true when a live place was given back
    def release
      stop_renewing
      @belief.forget # from the send: the place may be gone before the reply comes
      @lost = @lost_reported = false
      _release(native_client, key, token)
    end

    # #renew(seconds), #auto_renew(seconds, renew_for:), #stop_renewing,
    # #have_lock? and #lost? are Locking's (Locking::Renewing). An expired
    # place is not renewed (it may already be someone else's): #renew is
    # false, and #lost? true until #acquire or #release.

    # @return [Integer] the live places now (every holder's, asking Redis).
    def holders
      _holders(native_client, key)
    end

    # Acquires (retrying with jitter for up to `wait` seconds while full;
    # auto_renew: as #acquire's), yields, and releases in all cases.
    # @return the block's value
    # @raise [NotAcquiredError] when the semaphore stayed full for all of `wait`
    def with_lock(seconds, wait: 0, auto_renew: false)
      unless wait.is_a?(Numeric) && wait.real? && wait.to_f.finite? && wait >= 0
        raise ArgumentError, "wait must be a non-negative number of seconds, got #{wait.inspect}"
      end

      deadline = Locking.send(:monotonic) + wait
      attempt = 0
      until acquire(seconds, auto_renew: auto_renew)
        remaining = deadline - Locking.send(:monotonic)
        if remaining <= 0
          raise NotAcquiredError, "semaphore #{key.inspect} has all #{limit} places taken (waited #{wait}s)"
        end

        attempt += 1
        sleep([Locking.send(:retry_delay, attempt), remaining].min)
      end
      Locking.send(:run_holding, self) { yield self }
    end

    def inspect
      "#<Locking::Semaphore #{key.inspect} limit=#{limit} token=#{token.inspect} have_lock=#{have_lock?}" \
        "#{' auto_renew' if @renewal}>"
    end

    Belief.exclusive(self, :acquire, :auto_renew, :release, :stop_renewing, :renew)

    private

    def renew_once(ttl_ms)
      started = Locking.send(:monotonic)
      sent = @belief.sending(started, ttl_ms) # believed no longer than it asks, from its send
      renewed = @belief.answered(sent, _renew(native_client, key, token, limit, ttl_ms), started, ttl_ms)
      @lost ||= !renewed
      renewed
    end

    # For Renewing: the renewer renews this token's place among `limit`.
    def renewed_key = [key, limit]

    def lost_payload = { lock_key: key, token: token, limit: limit }

    def native_client
      client = Locking.client
      return client if client.is_a?(Client)

      raise Error, "semaphores are not yet supported by Locking::Testing's memory mode"
    end
  end
end
