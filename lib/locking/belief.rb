# frozen_string_literal: true

require "monitor"

class Locking
  # What one holder (a Locking or a Semaphore object) believes of its lock:
  # a deadline on Locking.monotonic (Client.clock, or the test clock under
  # Locking::Testing), from the send of its last confirmed acquire
  # or renewal (DESIGN "What a holder believes"). Threads may share one
  # object, so each write is numbered when it is sent, and only the answer
  # to the latest one sent moves the deadline: an older reply that comes
  # late (a renew racing another renew, or a release) never revives it.
  # Each write runs alone per object (#exclusive), so the order writes are
  # numbered in is the order Redis applies them.
  class Belief
    # Makes the methods `names` of `holder_class` (its writes: acquire,
    # renew, release, ...) run one at a time per object, in #exclusive.
    def self.exclusive(holder_class, *names)
      holder_class.prepend(Module.new do
        names.each do |name|
          define_method(name) { |*args, **options, &block| @belief.exclusive { super(*args, **options, &block) } }
        end
      end)
    end

    def initialize
      @writes = Monitor.new
      @mutex = Mutex.new
      @until = nil
      @sent = 0
    end

    # Before an acquire or renewal of `ttl_ms` is sent at `started`: it may
    # shorten the lock before its reply comes (or its timeout hides whether
    # it ran), so the deadline is capped at what it asks
    # (belief::renewal_sent). Returns its number, for #answered.
    def sending(started, ttl_ms)
      @mutex.synchronize do
        @until = Client.renewal_sent(@until, started, ttl_ms) if @until
        @sent += 1
      end
    end

    # The answer to write number `sent`: held (from its send) or not. Ignored
    # when another write or a release was sent after it: that one decides.
    def answered(sent, held, started, ttl_ms)
      @mutex.synchronize do
        next unless sent == @sent

        @until = held ? started + Client.valid_for(ttl_ms) : nil
      end
      held
    end

    # Before a release is sent, or when the holder gives up its belief: not
    # held from now on, whatever an answer in flight says.
    def forget
      @mutex.synchronize do
        @sent += 1
        @until = nil
      end
    end

    # Believed until `deadline` (seconds on Locking.monotonic; what a renewer that
    # stopped confirmed), from now on.
    def until!(deadline)
      @mutex.synchronize do
        @sent += 1
        @until = deadline
      end
    end

    # Runs one write of this holder while no other thread runs one (a
    # thread may nest them: release stops the renewer); have_lock? and
    # lost? never wait for it.
    def exclusive(&) = @writes.synchronize(&)

    # @return [Float, nil] the deadline (nil: not held)
    def deadline = @until

    def holds?
      deadline = @until
      !deadline.nil? && Locking.send(:monotonic) < deadline
    end
  end
end
