# frozen_string_literal: true

class Locking
  module UniqueJob
    # What a strategy decides, one small class each over this base: whether
    # the lock is taken at enqueue, what happens around perform, and what
    # happens once the run has ended. The job does the Redis work
    # (UniqueJob#locking_acquire_for_perform, #locking_release); a strategy
    # only says when.
    class Strategy
      # Whether the lock is taken when the job is enqueued.
      def lock_at_enqueue? = true

      # Wraps perform (the block).
      def around_perform(_job) = yield

      # After perform_now, with how the run ended: :done, :retrying (retry_on
      # will enqueue it again) or :failed.
      def after_run(_job, _outcome) = nil

      # Whether a failed run frees the lock (unique_lock on_failure: :release).
      def self.release_on_failure?(job) = job.locking_options[:on_failure] == :release
    end

    # Locked at enqueue, freed when perform starts.
    class UntilExecuting < Strategy
      def around_perform(job)
        job.locking_release(:perform_started)
        yield
      end

      # perform never started (the job failed before it): free the lock.
      def after_run(job, outcome)
        job.locking_release(:failed) if outcome == :failed && Strategy.release_on_failure?(job)
      end
    end

    # Locked at enqueue, freed when perform ends (the monolith's behaviour).
    # With auto_renew, renewed while perform runs.
    class UntilExecuted < Strategy
      def around_perform(job, &)
        job.locking_renewing(&)
      end

      def after_run(job, outcome)
        return if outcome == :retrying # the retry keeps the lock, with no gap
        return if outcome == :failed && !Strategy.release_on_failure?(job)

        job.locking_release(outcome == :done ? :performed : :failed)
      end
    end

    # Locked only around perform; conflicts are settled at perform time.
    class WhileExecuting < Strategy
      def lock_at_enqueue? = false

      def around_perform(job, &)
        job.locking_while_executing(&)
      end
    end

    # Locked at enqueue, freed by its TTL only.
    class UntilExpired < Strategy
    end

    STRATEGY_CLASSES = {
      until_executing: UntilExecuting,
      until_executed: UntilExecuted,
      while_executing: WhileExecuting,
      until_expired: UntilExpired
    }.freeze
  end
end
