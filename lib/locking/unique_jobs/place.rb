# frozen_string_literal: true

class Locking
  module UniqueJobs
    # A limited job's hold (unique_lock ..., limit: N > 1): its place in a
    # Locking::Semaphore at the job's lock key, answering the few calls
    # Locking::UniqueJob makes of its lock, so that every strategy and policy
    # runs unchanged over either. A job with limit 1 keeps its Locking lock.
    class Place < Semaphore
      # @param renew_to [#call] the job's TTL in seconds, for #ttl
      def initialize(key, limit:, token: nil, renew_to: nil)
        super(key, limit: limit, token: token)
        @renew_to = renew_to
      end

      def lock_key = key

      # As Locking#ttl answers whether a token holds its lock: the seconds
      # this token's place has left, nil when it holds no live place. A
      # sorted set keeps no per-member TTL to read, so a live place is
      # renewed to the job's TTL (its run starts now) and that is the answer.
      def ttl
        seconds = @renew_to.call
        renew(seconds) ? seconds : nil
      end
    end
  end
end
