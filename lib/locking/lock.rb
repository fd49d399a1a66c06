# frozen_string_literal: true

# A unique-job lock in Redis, a drop-in for the monolith's Locking class.
#
#   lock = Locking.new("ImportJob:42")
#   if lock.acquire(30)      # seconds, Integer or Float
#     begin
#       import!
#     ensure
#       lock.release         # deletes the key only while it holds our token
#     end
#   end
#
# Where the lock lives (source, destination or both) follows the configured
# phase; see Locking.configure and the README.
class Locking
  # auto_renew, stop_renewing, renew, lost?, have_lock? (shared with Semaphore).
  include Renewing

  # Milliseconds; the most Redis accepts for PX (defined by the core, as Client::MAX_TTL_MS).
  MAX_TTL_MS = Client::MAX_TTL_MS

  # The key as given (Redis stores key_prefix + lock_key).
  attr_reader :lock_key
  # The value stored in Redis while this lock is held; release checks it.
  attr_reader :token

  # @param lock_key [String] non-empty; any bytes
  # @param token [String] what this holder stores; give the same token to
  #   another Locking (another process, a later job) to let it release the lock.
  def initialize(lock_key, token: Client.generate_token)
    @lock_key = Locking.send(:check_string, lock_key, "lock key")
    @token = Locking.send(:check_string, token, "token")
    @belief = Belief.new
    @lost = false
  end

  # Takes the lock for `seconds` (Integer or Float, millisecond precision).
  #
  # With `auto_renew: true` the lock is renewed from a native thread (about
  # every `seconds / 3`, sooner when `timeout` is a large part of it) until
  # #release, so it lives as long as its holder: `seconds` is then only how
  # long it outlives a holder that died. `auto_renew: 3600` (or `2.hours`)
  # renews for at most that long, then lets the TTL run out.
  #
  # #have_lock? is true until the send time of the last confirmed acquire or
  # renewal, plus `seconds`, less the clock drift allowed (1% + 2 ms): never
  # longer than Redis keeps the lock. #lost? is true from then on.
  # @return [Boolean] true when taken (or already held with this token in Redis).
  # @raise [AlreadyAcquireLockError] when this object already holds it.
  def acquire(seconds, auto_renew: false)
    if have_lock?
      raise AlreadyAcquireLockError, "lock #{lock_key.inspect} is already held by this Locking; release it first"
    end

    ttl_ms = Locking.send(:ttl_ms, seconds)
    renew_for = Locking.send(:renew_for, auto_renew)
    started = Locking.send(:monotonic)
    client = Locking.client
    sent = @belief.sending(started, ttl_ms)
    acquired = @belief.answered(sent, client.acquire(lock_key, token, ttl_ms), started, ttl_ms)
    if acquired
      @lost = false
      start_renewing(client, ttl_ms, renew_for) if auto_renew
    end
    acquired
  end

  # Deletes the lock wherever the phase keeps it, but only where it still
  # holds this token: a lock that expired and was taken by another job is
  # left alone. Works from any Locking built with the same key and token.
  # Stops its renewal first (after a renewal in flight, so none follows).
  # @return [Boolean] true when something was deleted.
  def release
    stop_renewing
    @belief.forget # from the send: the lock may be gone before the reply comes
    @lost = @lost_reported = false
    Locking.client.release(lock_key, token)
  end

  # @return [Boolean] whether anyone holds this key, asking Redis. Raises
  #   Locking::ConnectionError rather than answering false when Redis is down.
  def locked?
    Locking.client.locked?(lock_key)
  end

  # @return [Float, nil] seconds left on this token's lock in Redis;
  #   Float::INFINITY when it has no TTL; nil when this token does not hold it.
  def ttl
    ms = Locking.client.ttl_ms(lock_key, token)
    return nil if ms.nil?
    return Float::INFINITY if ms.negative?

    ms / 1000.0
  end

  def inspect
    "#<Locking #{lock_key.inspect} token=#{token.inspect} have_lock=#{have_lock?}#{' auto_renew' if @renewal}>"
  end

  Belief.exclusive(self, :acquire, :auto_renew, :release, :stop_renewing, :renew)

  private

  def renew_once(ttl_ms)
    started = Locking.send(:monotonic)
    sent = @belief.sending(started, ttl_ms)
    @belief.answered(sent, Locking.client.renew(lock_key, token, ttl_ms), started, ttl_ms)
  end

  # For Renewing: what the renewer renews (a lock: no limit).
  def renewed_key = [lock_key, nil]

  def lost_payload = { lock_key: lock_key, token: token }

  class << self
    # Acquires, yields the lock, and releases it in all cases.
    #
    #   Locking.with_lock("report:#{id}", ttl: 60, wait: 5) { build_report }
    #
    # @param ttl [Numeric] seconds the lock lives if the process dies
    # @param wait [Numeric] seconds to keep retrying (with jitter) while taken
    # @param auto_renew [Boolean, Numeric] renew the lock while the block runs
    #   (then `ttl` only bounds how long it outlives a process that died); a
    #   number of seconds renews it for at most that long
    # @return the block's value
    # @raise [NotAcquiredError] when the lock stayed taken for all of `wait`
    def with_lock(lock_key, ttl:, wait: 0, token: Client.generate_token, auto_renew: false)
      unless wait.is_a?(Numeric) && wait.real? && wait.to_f.finite? && wait >= 0
        raise ArgumentError, "wait must be a non-negative number of seconds, got #{wait.inspect}"
      end

      lock = new(lock_key, token: token)
      deadline = monotonic + wait
      attempt = 0
      until lock.acquire(ttl, auto_renew: auto_renew)
        remaining = deadline - monotonic
        if remaining <= 0
          raise NotAcquiredError, "lock #{lock_key.inspect} is held by someone else (waited #{wait}s)"
        end

        attempt += 1
        sleep([retry_delay(attempt), remaining].min)
      end
      run_holding(lock) { yield lock }
    end

    private

    # Releases on every way out of the block, but only in the process that
    # acquired: a child forked inside the block that ends with `exit` unwinds
    # this too, and must not free its parent's lock (nor does it renew it:
    # the renewer is per process).
    def run_holding(lock)
      owner = Process.pid
      result = yield
    rescue Exception # rubocop:disable Lint/RescueException -- release on any exit, then re-raise
      begin
        lock.release if Process.pid == owner
      rescue Locking::Error
        nil # the block's error matters more; the lock expires with its TTL
      end
      raise
    else
      lock.release if Process.pid == owner
      result
    end

    # Exponential backoff from 10ms to 500ms, with full jitter.
    def retry_delay(attempt)
      (rand * [0.01 * (2**[attempt, 6].min), 0.5].min) + 0.001
    end

    def check_string(value, what)
      raise ArgumentError, "#{what} must not be nil" if value.nil?
      raise TypeError, "#{what} must be a String, got #{value.class}: #{value.inspect}" unless value.is_a?(String)
      raise ArgumentError, "#{what} must not be empty" if value.empty?

      value.frozen? ? value : value.dup.freeze
    end

    def ttl_ms(seconds)
      unless seconds.is_a?(Integer) || seconds.is_a?(Float) || seconds.is_a?(Rational)
        raise TypeError, "TTL must be a number of seconds (Integer or Float), got #{seconds.class}: #{seconds.inspect}"
      end
      unless seconds.to_f.finite? && seconds.positive?
        raise ArgumentError, "TTL must be a positive, finite number of seconds, got #{seconds.inspect}"
      end

      ms = (seconds * 1000).round
      if ms < 1
        raise ArgumentError, "TTL must be at least 0.001 seconds, got #{seconds.inspect}"
      elsif ms > MAX_TTL_MS
        raise ArgumentError, "TTL of #{seconds.inspect} seconds is too large"
      end

      ms
    end

    # auto_renew: true (until released), false/nil (not renewed), or a
    # number of seconds to renew for at most. Returns nil or the seconds.
    def renew_for(auto_renew)
      return nil if auto_renew == true || !auto_renew
      if auto_renew.is_a?(Numeric) && auto_renew.real? && auto_renew.to_f.finite? && auto_renew.positive?
        return auto_renew.to_f
      end

      raise ArgumentError, "auto_renew must be true, false or a positive number of seconds, got #{auto_renew.inspect}"
    end

    # The core's clock for deadlines (CLOCK_BOOTTIME on Linux: it keeps
    # counting while the machine sleeps), in seconds.
    def monotonic
      Client.clock
    end
  end
end
