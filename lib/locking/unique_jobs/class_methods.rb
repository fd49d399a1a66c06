# frozen_string_literal: true

class Locking
  module UniqueJobs
    # The class methods of a Locking::UniqueJob job (unique_lock, lock_key_for,
    # unlock!, unlock_all!), extended by the concern rather than defined in
    # it, so that no constant of the gem's is seen from a job's code.
    module ClassMethods
      # Declares the job unique. Any option may also be set for every job in
      # Locking.configure's `unique_job_defaults`; the class's own win.
      #
      # @param strategy [Symbol] see Locking::UniqueJob
      # @param ttl [Numeric, ActiveSupport::Duration, Proc] lock lifetime if nobody releases it; for the
      #   enqueue strategies it must cover the wait in the queue plus the run (a scheduled job's delay,
      #   set(wait:) or wait_until:, is added to it at enqueue). A Proc is called with the job's
      #   arguments, as key: is, and returns the seconds.
      # @param on_conflict [:drop, :raise, :log, Proc] the same job already holds the lock:
      #   :drop (perform_later returns false, nothing enqueued), :raise (Locking::DuplicateJobError),
      #   :log (drop and log a warning), or a Proc called with the job (then dropped)
      # @param on_perform_conflict [:drop, :raise, :retry, Proc] perform cannot own its lock: another
      #   run holds the runtime lock (:while_executing, :until_and_while_executing), or another token
      #   holds the enqueue lock when perform starts (:until_executed, :until_and_while_executing).
      #   :drop (default: skip this run, log a warning), :raise, :retry (retry_job(wait: retry_wait)),
      #   or a Proc called with the job (then skipped)
      # @param wait [Numeric] for the runtime lock: seconds a perform retries (with jitter) for a lock
      #   another run holds before on_perform_conflict applies (default 0)
      # @param key [Proc, nil] builds the key from the job's arguments (default: a digest of them)
      # @param key_scope [:class, :global] :class (default) puts the class name before the key;
      #   :global uses the key: Proc's key as given, so that job classes can share one lock
      # @param on_redis_error [:raise, :allow, :deny, Proc] Redis unreachable: raise (default), run or
      #   enqueue as if the lock were free, or treat it as taken. A Proc is called with the job and the
      #   error and returns :allow or :deny; anything else raises.
      # @param on_failure [:release, :keep] perform raised and the job is not retried by
      #   retry_on: free the lock (default) or keep it until its TTL
      # @param on_release_error [:warn, :raise, Proc] releasing the lock failed (a server down or
      #   timing out). :warn (default): log a warning, emit release_error.locking and let the TTL
      #   free the lock: the job's work is done, and failing it would only run it again. :raise
      #   re-raises (the job fails). A Proc is called with the job and the error (then as :warn).
      # @param auto_renew [Boolean, Numeric, nil] renew the lock from a native thread while perform runs, so
      #   that a long run keeps it and a dead worker's lock expires within `ttl`. For
      #   :until_executed the enqueue-time `ttl` then only has to cover the wait in the queue (the
      #   lock is renewed to `ttl` when perform starts). Default: true for the runtime locks
      #   (:while_executing, :until_and_while_executing: renewed, the lock lives exactly as long as
      #   the run, and `ttl` is just how long a crashed worker blocks the next run), false for
      #   :until_executed (opt in: its `ttl` was written for the queue wait plus the run). Not for
      #   :until_executing and :until_expired, whose locks do not live through perform. A number of
      #   seconds (2.hours) renews for at most that long, then lets the TTL run out. With limit: N > 1
      #   it renews the job's place the same way.
      # @param limit [Integer] how many jobs with one key may hold it at once (1..Semaphore::MAX_LIMIT,
      #   default 1: the lock). With N > 1 each strategy holds a place in a Locking::Semaphore at the
      #   same key (the runtime lock too: N running), and on_conflict / on_perform_conflict / wait:
      #   apply to the N+1st. Its places keep the limit through a migration (README, "Semaphores").
      # @raise [ArgumentError] naming any bad option or value
      def unique_lock(strategy, **options)
        UniqueJobs::Options.resolve(strategy, options, Locking.configuration.unique_job_defaults)
        self.locking_declaration = { strategy: strategy, options: options.dup.freeze }.freeze
        UniqueJobs::Registry.add(self)
      end

      # The options this class runs with: its unique_lock's over the
      # configured defaults (read again when the defaults change).
      # @return [Hash, nil] nil without unique_lock
      def locking_options
        declaration = locking_declaration or return nil
        defaults = Locking.configuration.unique_job_defaults
        cached = @locking_resolved
        return cached[2] if cached && cached[0].equal?(declaration) && cached[1].equal?(defaults)

        options = UniqueJobs::Options.resolve(declaration[:strategy], declaration[:options], defaults)
        @locking_resolved = [declaration, defaults, options]
        options
      end

      # The lock key for these arguments: "JobClass:<digest of the arguments>",
      # or with key_scope: :global the key: Proc's key as given.
      def lock_key_for(*arguments)
        options = locking_options or raise ArgumentError, "#{name} has no unique_lock"
        suffix = if options[:key]
                   options[:key].call(*arguments).to_s
                 else
                   Digest::SHA256.hexdigest(JSON.generate(UniqueJob.canonical(ActiveJob::Arguments.serialize(arguments))))
                 end
        raise ArgumentError, "the key Proc of #{name} returned an empty key" if suffix.empty?

        options[:key_scope] == :global ? suffix : "#{name}:#{suffix}"
      end

      # Frees the lock of the job with these arguments, whoever holds it
      # (with limit: every place of its key).
      # @return [Boolean] whether a lock was deleted
      def unlock!(*arguments)
        key = lock_key_for(*arguments)
        deleted = Locking.client.force_delete(key).positive?
        deleted |= Locking.client.force_delete("#{key}:run").positive? if locking_options[:strategy_class].runtime_lock?
        UniqueJob.instrument(:unlock, job_class: name, lock_key: key, deleted: deleted)
        deleted
      end

      # Frees every lock of this job class, and with limit: every place of
      # its keys (SCAN, never KEYS). A class with
      # key_scope: :global has no keys of its own to find: free those with
      # unlock!(*arguments).
      # @return [Integer] locks deleted
      def unlock_all!
        deleted = Locking.client.delete_matching("#{name}:")
        UniqueJob.instrument(:unlock, job_class: name, lock_key: "#{name}:*", deleted: deleted)
        deleted
      end
    end
  end
end
