# frozen_string_literal: true

require "locking"

class Locking
  # Test support for the apps that use locking: no Redis server, no lock left
  # over from an earlier test.
  #
  #   # spec/rails_helper.rb (or test/test_helper.rb)
  #   require "locking/testing"          # mode :memory from here on
  #   Locking::Testing.mode = :memory    # or :bypass, :refuse, :real
  #
  # Modes:
  # - :memory  locks live in this process, with Redis's semantics: tokens,
  #            TTLs on a clock the test moves (Locking::Testing.travel), phases,
  #            locked? (the same protocol code as on Redis, over an in-memory model)
  # - :bypass  every acquire succeeds and nothing is stored
  # - :refuse  every acquire fails (to test conflict paths); locked? is true
  # - :real    the configured Redis servers, as in production
  module Testing
    MODES = %i[memory bypass refuse real].freeze

    # An auto-renewed lock in memory: no thread. It keeps the TTL asked for
    # and is renewed on the test clock (Testing.travel) while its holder
    # runs, about every third of its TTL, for at most `renew_for` seconds;
    # after #stop (release, stop_renewing, a failed perform) it expires by
    # its TTL, as in Redis. lost? asks the memory store whether this token
    # still holds it.
    class Renewal
      def initialize(client, key, token, ttl_ms, renew_until_ms)
        @client = client
        @key = key
        @token = token
        @ttl_ms = ttl_ms
        @renew_until_ms = renew_until_ms
        @lost = false
      end

      def lost? = @lost ||= @client.ttl_ms(@key, @token).nil?
      def held? = !lost?

      # Seconds believed left, less the drift allowed, as the native renewer
      # counts them (the memory's clock is in whole milliseconds).
      def remaining
        ms = lost? ? nil : @client.ttl_ms(@key, @token)
        ms.nil? ? 0.0 : Client.valid_for(ms)
      end

      def stop
        @client.stop_renewing(self)
        remaining
      end

      # The renewer's period on the test clock.
      def interval_ms = [@ttl_ms / 3, 1].max

      # Renews on the test clock at `now_ms`; false once it is no longer renewed.
      def renew_at(now_ms)
        return false if lost? || (@renew_until_ms && now_ms >= @renew_until_ms)

        @lost = !@client.renew(@key, @token, @ttl_ms)
        !@lost
      end
    end

    # An auto-renewed lock in bypass mode: never lost; once stopped, held
    # for its TTL more (on the test clock, as have_lock? counts it).
    class KeptRenewal
      def initialize(ttl_ms)
        @ttl = ttl_ms / 1000.0
      end

      def lost? = false
      def held? = true
      def remaining = @ttl
      def stop = remaining
    end

    # Locking.stats in a test mode: no renewer.
    RENEWER_STATS = { held: 0, renewed: 0, failed: 0, lost: 0, batches: 0, lag_p50_ms: 0.0, lag_p99_ms: 0.0,
                      lag_max_ms: 0.0, cpu_ms: 0.0, last_error: nil }.freeze

    # Locks in memory, behind the interface Locking and Locking::UniqueJob
    # use (Locking::Client's).
    class MemoryClient
      def initialize
        @memory = Memory.new
        @phase = :source
      end

      attr_reader :memory

      def acquire(key, token, ttl_ms)
        @memory._acquire(key, token, ttl_ms).tap { |acquired| Testing.record(key) if acquired }
      end

      def release(key, token) = @memory._release(key, token)
      def locked?(key) = @memory._locked(key)
      def renew(key, token, ttl_ms) = @memory._renew(key, token, ttl_ms)
      def ttl_ms(key, token) = @memory._ttl(key, token)
      def force_delete(key) = @memory._force_delete(key)
      def delete_matching(start) = @memory._delete_matching(start)
      def phase = Configuration::PHASES.fetch(@memory._phase)

      def phase=(phase)
        @memory._set_phase(Configuration.phase_index(phase))
      end

      def auto_renew(key, token, ttl_ms, _valid_for, renew_for = nil, **_semaphore)
        renew_until = renew_for && (@memory._now_ms + (renew_for * 1000).round)
        Renewal.new(self, key, token, ttl_ms, renew_until).tap { |renewal| renewals << renewal }
      end

      def stop_renewing(renewal) = renewals.delete(renewal)

      # Moves the clock `ms` forward, renewing the auto-renewed locks on the
      # way, each about every third of its TTL.
      def advance(ms)
        until ms.zero?
          step = [ms, *renewals.map(&:interval_ms)].min
          @memory._travel(step)
          ms -= step
          now = @memory._now_ms
          renewals.select! { |renewal| renewal.renew_at(now) }
        end
      end

      def renewals = (@renewals ||= [])

      def renewer_stats = RENEWER_STATS
    end

    # Every acquire succeeds; nothing is stored.
    class BypassClient
      def acquire(key, _token, _ttl_ms)
        Testing.record(key)
        true
      end

      def release(_key, _token) = true
      def locked?(_key) = false
      def renew(_key, _token, _ttl_ms) = true
      def ttl_ms(_key, _token) = nil
      def force_delete(_key) = 0
      def delete_matching(_start) = 0
      def phase = :source
      def phase=(_phase); end
      def auto_renew(_key, _token, ttl_ms, _valid_for, _renew_for = nil, **_semaphore) = KeptRenewal.new(ttl_ms)
      def renewer_stats = RENEWER_STATS
    end

    # Every acquire fails: someone else always holds the lock.
    class RefuseClient < BypassClient
      def acquire(_key, _token, _ttl_ms) = false
      def release(_key, _token) = false
      def locked?(_key) = true
      def renew(_key, _token, _ttl_ms) = false
    end

    # Locking.client and Locking's clock follow the mode.
    module Switch
      def client
        Testing.client || super
      end

      private

      def monotonic
        super + Testing.offset
      end
    end

    @mode = :real
    @memory_client = nil
    @offset = 0.0
    @acquired = []

    class << self
      attr_reader :mode

      # Seconds the test clock is ahead of the real one (:memory).
      attr_reader :offset

      def mode=(mode)
        @mode = Locking.choice!("Locking::Testing.mode", mode, MODES)
      end

      # Runs the block in another mode, then restores the previous one.
      def with_mode(mode)
        previous = @mode
        self.mode = mode
        yield
      ensure
        @mode = previous
      end

      # The client for the mode; nil for :real (Locking's own).
      def client
        case @mode
        when :memory then memory_client
        when :bypass then (@bypass ||= BypassClient.new)
        when :refuse then (@refuse ||= RefuseClient.new)
        end
      end

      def memory_client
        @memory_client ||= MemoryClient.new
      end

      # Moves the :memory clock forward: locks whose TTL runs out expire, and
      # have_lock? counts the time too.
      def travel(seconds)
        unless seconds.is_a?(Numeric) && seconds.real? && seconds.to_f.finite? && seconds >= 0
          raise ArgumentError, "travel takes a non-negative number of seconds, got #{seconds.inspect}"
        end

        memory_client.advance((seconds * 1000).round)
        @offset += seconds.to_f
        nil
      end

      # Clears the :memory locks and the record of acquisitions.
      def reset!
        memory_client.renewals.clear
        memory_client.memory._reset
        @acquired.clear
        nil
      end

      # Lock keys held in memory now (:memory).
      def locks
        memory_client.memory._keys
      end

      # Lock keys acquired since the last reset! (:memory and :bypass), oldest first.
      def acquired
        @acquired.dup
      end

      def record(key)
        @acquired << key
      end
    end
  end

  singleton_class.prepend(Testing::Switch)
end

Locking::Testing.mode = :memory
