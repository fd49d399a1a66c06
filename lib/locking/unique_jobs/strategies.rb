# frozen_string_literal: true

class Locking
  # What Locking::UniqueJob needs but a job class must not see: the strategy
  # classes and the option tables live here, outside the module a job
  # includes, so that a job whose code names `Strategy` or `UntilExecuting`
  # gets its own constant, never the gem's.
  module UniqueJobs
    # What a strategy decides, one small class each over this base: whether
    # the lock is taken at enqueue, what happens around perform, and what
    # happens once the run has ended. The job does the Redis work
    # (UniqueJob#locking_claim, #locking_while_executing, #locking_release);
    # a strategy only says when.
    class Strategy
      # Whether the lock is taken when the job is enqueued.
      def lock_at_enqueue? = true

      # Whether perform holds a lock of its own while it runs (wait: applies).
      def runtime_lock? = false

      # Whether the lock lives through perform (auto_renew applies).
      def held_through_perform? = false

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
    # At perform the job must own its lock (UniqueJob#locking_claim); with
    # auto_renew it is renewed while perform runs.
    class UntilExecuted < Strategy
      def held_through_perform? = true

      def around_perform(job, &)
        job.locking_claim { job.locking_renewing(&) }
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
      def runtime_lock? = true
      def held_through_perform? = true

      def around_perform(job, &)
        job.locking_while_executing(&)
      end
    end

    # An enqueue lock taken at enqueue and freed when perform starts (once
    # the job has shown it owns it), then a runtime lock of its own (the key
    # with ":run") held while perform runs.
    class UntilAndWhileExecuting < UntilExecuting
      def runtime_lock? = true
      def held_through_perform? = true

      def around_perform(job, &)
        job.locking_claim do
          job.locking_release(:perform_started)
          job.locking_while_executing(runtime: true, &)
        end
      end
    end

    # Locked at enqueue, freed by its TTL only.
    class UntilExpired < Strategy
    end

    STRATEGY_CLASSES = {
      until_executing: UntilExecuting,
      until_executed: UntilExecuted,
      while_executing: WhileExecuting,
      until_and_while_executing: UntilAndWhileExecuting,
      until_expired: UntilExpired
    }.freeze
  end
end
