# frozen_string_literal: true

require "json"
require "digest"
require "active_support/concern"
require "active_support/notifications"
require "active_job"
require_relative "log_subscriber"
require_relative "unique_job/strategies"

class Locking
  # Unique jobs for ActiveJob, on any adapter.
  #
  #   class ImportJob < ApplicationJob
  #     include Locking::UniqueJob
  #     unique_lock :until_executed, ttl: 1.hour, on_conflict: :drop
  #
  #     def perform(account_id) = ...
  #   end
  #
  #   ImportJob.perform_later(42)  # => the job
  #   ImportJob.perform_later(42)  # => false: the same job is already waiting
  #
  # Strategies:
  # - :until_executing  lock at enqueue, free when perform starts
  # - :until_executed   lock at enqueue, free when perform ends (the monolith's behaviour)
  # - :while_executing  lock only around perform
  # - :until_expired    lock at enqueue, free by TTL only
  #
  # The lock key is derived once, at enqueue, from the job class and its
  # serialized arguments (symbol or string keys, hash order: same key), and
  # travels in the job's data with a token unique to this enqueue, so the
  # worker releases exactly the lock that was taken, in any process and phase.
  module UniqueJob
    extend ActiveSupport::Concern

    STRATEGIES = STRATEGY_CLASSES.keys.freeze
    ON_CONFLICT = %i[drop raise log].freeze
    ON_PERFORM_CONFLICT = %i[drop raise retry].freeze
    ON_REDIS_ERROR = %i[raise allow deny].freeze
    ON_FAILURE = %i[release keep].freeze
    ON_RELEASE_ERROR = %i[warn raise].freeze
    DATA_KEY = "locking"

    included do
      class_attribute :locking_options, instance_writer: false, default: nil
      around_enqueue :locking_around_enqueue
      around_perform :locking_around_perform
    end

    class_methods do
      # Declares the job unique.
      #
      # @param strategy [Symbol] see Locking::UniqueJob
      # @param ttl [Numeric, ActiveSupport::Duration] lock lifetime if nobody releases it; for the
      #   enqueue strategies it must cover the wait in the queue plus the run
      # @param on_conflict [:drop, :raise, :log, Proc] the same job already holds the lock:
      #   :drop (perform_later returns false, nothing enqueued), :raise (Locking::DuplicateJobError),
      #   :log (drop and log a warning), or a Proc called with the job (then dropped)
      # @param on_perform_conflict [:drop, :raise, :retry] for :while_executing, when another run
      #   holds the lock at perform time: skip this run, raise, or retry_job(wait: retry_wait)
      # @param key [Proc, nil] builds the key from the job's arguments (default: a digest of them)
      # @param on_redis_error [:raise, :allow, :deny] Redis unreachable: raise (default), run or
      #   enqueue as if the lock were free, or treat it as taken
      # @param on_failure [:release, :keep] perform raised and the job is not retried by
      #   retry_on: free the lock (default) or keep it until its TTL
      # @param on_release_error [:warn, :raise, Proc] releasing the lock failed (a server down or
      #   timing out). :warn (default): log a warning, emit release_error.locking and let the TTL
      #   free the lock: the job's work is done, and failing it would only run it again. :raise
      #   re-raises (the job fails). A Proc is called with the job and the error (then as :warn).
      # @param auto_renew [Boolean, Numeric, nil] renew the lock from a native thread while perform runs, so
      #   that a long run keeps it and a dead worker's lock expires within `ttl`. For
      #   :until_executed the enqueue-time `ttl` then only has to cover the wait in the queue (the
      #   lock is renewed to `ttl` when perform starts). Default: true for :while_executing (its lock
      #   exists only while perform runs: renewed, it lives exactly as long as the run, and `ttl` is
      #   just how long a crashed worker blocks the next run), false for :until_executed (opt in:
      #   its `ttl` was written for the queue wait plus the run). Not for :until_executing and
      #   :until_expired, whose locks do not live through perform. A number of seconds (2.hours)
      #   renews for at most that long, then lets the TTL run out.
      def unique_lock(strategy, ttl:, on_conflict: :drop, on_perform_conflict: :drop, key: nil,
                      on_redis_error: :raise, on_failure: :release, on_release_error: :warn, retry_wait: 5,
                      auto_renew: nil)
        check_choice(strategy, STRATEGIES, "strategy")
        check_choice(on_conflict, ON_CONFLICT, "on_conflict") unless on_conflict.respond_to?(:call)
        check_choice(on_perform_conflict, ON_PERFORM_CONFLICT, "on_perform_conflict")
        check_choice(on_redis_error, ON_REDIS_ERROR, "on_redis_error")
        check_choice(on_failure, ON_FAILURE, "on_failure")
        unless on_release_error.respond_to?(:call)
          check_choice(on_release_error, ON_RELEASE_ERROR, "on_release_error")
        end
        raise ArgumentError, "key: must be a Proc, got #{key.inspect}" unless key.nil? || key.respond_to?(:call)

        seconds = ttl.to_f
        unless seconds.finite? && seconds.positive?
          raise ArgumentError, "ttl: must be a positive duration, got #{ttl.inspect}"
        end

        auto_renew = strategy == :while_executing if auto_renew.nil?
        unless [true, false].include?(auto_renew) ||
               (auto_renew.is_a?(Numeric) && auto_renew.to_f.finite? && auto_renew.to_f.positive?)
          raise ArgumentError, "auto_renew: must be true, false or a positive number of seconds, " \
                               "got #{auto_renew.inspect}"
        end
        auto_renew = auto_renew.to_f unless [true, false].include?(auto_renew)

        if auto_renew && %i[until_executing until_expired].include?(strategy)
          raise ArgumentError, "auto_renew: is for :until_executed and :while_executing (a #{strategy.inspect} lock " \
                               "does not live through perform)"
        end

        self.locking_options = {
          strategy: strategy, strategy_class: STRATEGY_CLASSES.fetch(strategy).new, ttl: seconds,
          on_conflict: on_conflict, on_perform_conflict: on_perform_conflict,
          key: key, on_redis_error: on_redis_error, on_failure: on_failure, on_release_error: on_release_error,
          retry_wait: retry_wait, auto_renew: auto_renew
        }.freeze
      end

      # The lock key for these arguments: "JobClass:<digest of the arguments>".
      def lock_key_for(*arguments)
        options = locking_options or raise ArgumentError, "#{name} has no unique_lock"
        suffix = if options[:key]
                   options[:key].call(*arguments).to_s
                 else
                   Digest::SHA256.hexdigest(JSON.generate(UniqueJob.canonical(ActiveJob::Arguments.serialize(arguments))))
                 end
        raise ArgumentError, "the key Proc of #{name} returned an empty key" if suffix.empty?

        "#{name}:#{suffix}"
      end

      # Frees the lock of the job with these arguments, whoever holds it.
      # @return [Boolean] whether a lock was deleted
      def unlock!(*arguments)
        key = lock_key_for(*arguments)
        deleted = Locking.client.force_delete(key).positive?
        UniqueJob.instrument(:unlock, job_class: name, lock_key: key, deleted: deleted)
        deleted
      end

      # Frees every lock of this job class (SCAN, never KEYS).
      # @return [Integer] locks deleted
      def unlock_all!
        deleted = Locking.client.delete_matching("#{name}:")
        UniqueJob.instrument(:unlock, job_class: name, lock_key: "#{name}:*", deleted: deleted)
        deleted
      end

      private

      def check_choice(value, choices, name)
        return if choices.include?(value)

        raise ArgumentError, "unknown #{name} #{value.inspect} (expected #{choices.map(&:inspect).join(', ')})"
      end
    end

    # The lock key and token this job carries (nil before enqueue or without a lock).
    attr_reader :lock_key, :lock_token

    def serialize
      data = super
      data[DATA_KEY] = { "key" => @lock_key, "token" => @lock_token } if @lock_token
      data
    end

    def deserialize(job_data)
      super
      lock = job_data[DATA_KEY]
      return unless lock

      @lock_key = lock["key"]
      @lock_token = lock["token"]
    end

    # perform_now wraps the whole run, including retry_on/discard_on handling,
    # so this is where we know how the run ended.
    def perform_now
      outcome = :failed
      @locking_retrying = false
      # A child forked inside perform that exits unwinds this method too; only
      # the process that performs the job releases its lock.
      @locking_performer = Process.pid
      result = super
      outcome = @locking_retrying ? :retrying : :done
      result
    ensure
      locking_after_run(outcome) if locking_options
    end

    def retry_job(options = {})
      @locking_retrying = true
      super
    end

    # Normalizes serialized arguments so that equal arguments give one key:
    # hash keys sorted and stringified (ActiveJob's symbol-key markers dropped).
    def self.canonical(value)
      case value
      when Hash
        value.except("_aj_symbol_keys", "_aj_ruby2_keywords")
             .map { |k, v| [k.to_s, canonical(v)] }
             .sort_by(&:first)
             .to_h
      when Array then value.map { |v| canonical(v) }
      else value
      end
    end

    def self.instrument(event, payload, &)
      ActiveSupport::Notifications.instrument("#{event}.locking", payload, &)
    end

    def locking_lock
      Locking.new(@lock_key, token: @lock_token)
    end

    def locking_payload(extra = {})
      { job_class: self.class.name, job_id: job_id, lock_key: @lock_key, strategy: locking_options[:strategy] }
        .merge(extra)
    end

    # Runs a Redis call under the job's on_redis_error policy.
    def locking_redis(on_error_result)
      yield
    rescue Locking::ConnectionError, Locking::CommandError => e
      UniqueJob.instrument(:error, locking_payload(error: e))
      case locking_options[:on_redis_error]
      when :raise then raise
      when :allow then on_error_result == :lock ? true : nil
      when :deny then on_error_result == :lock ? false : nil
      end
    end

    def locking_around_enqueue
      options = locking_options
      return yield if options.nil? || !options[:strategy_class].lock_at_enqueue?

      if @lock_token
        # A retry (retry_on) of a job that holds its lock: keep it, no gap.
        renewed = locking_redis(:lock) { locking_lock.renew(options[:ttl]) || locking_lock.acquire(options[:ttl]) }
        @lock_released = false
        UniqueJob.instrument(:renew, locking_payload(renewed: renewed))
        return yield
      end

      @lock_key = self.class.lock_key_for(*arguments)
      @lock_token = Locking::Client.generate_token
      acquired = locking_redis(:lock) { locking_lock.acquire(options[:ttl]) }
      unless acquired
        UniqueJob.instrument(:conflict, locking_payload(at: :enqueue))
        @lock_token = nil
        locking_enqueue_halted
        return locking_enqueue_conflict(options[:on_conflict])
      end

      UniqueJob.instrument(:acquire, locking_payload(at: :enqueue))
      enqueued = false
      begin
        result = yield
        enqueued = true
        result
      ensure
        locking_release(:enqueue_failed) unless enqueued
      end
    end

    # Tells ActiveJob the enqueue was halted, as a before_enqueue callback
    # that throws :abort does, so its log says "Failed enqueuing" rather than
    # "Enqueued" for a duplicate that was dropped.
    def locking_enqueue_halted
      halted_callback_hook(:locking_around_enqueue, :enqueue) if respond_to?(:halted_callback_hook, true)
    rescue ArgumentError
      nil # a Rails whose hook takes other arguments: only the log line differs
    end

    def locking_enqueue_conflict(policy)
      case policy
      when :drop then nil
      when :raise
        raise DuplicateJobError, "#{self.class.name} is already enqueued or running (lock #{@lock_key.inspect})"
      when :log
        logger&.warn("[locking] #{self.class.name} not enqueued: the same job holds lock #{@lock_key.inspect}")
      else policy.call(self)
      end
      nil
    end

    def locking_around_perform(&)
      locking_options[:strategy_class].around_perform(self, &)
    end

    public

    # @api private: for the strategies (Locking::UniqueJob::Strategy).
    # Takes the lock for this run (:while_executing), runs the block, frees it.
    def locking_while_executing
      options = locking_options
      @lock_key = self.class.lock_key_for(*arguments)
      @lock_token = Locking::Client.generate_token
      lock = locking_lock
      acquired = locking_redis(:lock) { lock.acquire(options[:ttl], auto_renew: options[:auto_renew]) }
      unless acquired
        @lock_token = nil
        UniqueJob.instrument(:conflict, locking_payload(at: :perform))
        case options[:on_perform_conflict]
        when :drop then return
        when :raise
          raise DuplicateJobError, "#{self.class.name} is already running (lock #{@lock_key.inspect})"
        when :retry then return retry_job(wait: options[:retry_wait])
        end
      end
      UniqueJob.instrument(:acquire, locking_payload(at: :perform))
      begin
        yield
      ensure
        locking_stop_renewing(lock)
        # The retry of a :while_executing job takes its lock again when it runs.
        locking_release(:performed)
        @lock_token = nil
      end
    end

    # @api private: for the strategies. Runs the block with the job's
    # enqueue-time lock renewed (auto_renew): first renewed to `ttl` now, as
    # the queue wait used some of it, then from the native renewer.
    def locking_renewing
      options = locking_options
      return yield unless options[:auto_renew] && @lock_token

      lock = locking_lock
      renewed = locking_redis(:renew) { lock.renew(options[:ttl]) }
      if renewed
        lock.auto_renew(options[:ttl], renew_for: (options[:auto_renew] unless options[:auto_renew] == true))
      elsif renewed == false
        UniqueJob.instrument(:lost, locking_payload(at: :perform_started))
      end
      begin
        yield
      ensure
        locking_stop_renewing(lock)
      end
    end

    # @api private: for the strategies. Frees the job's lock, once, in the
    # process that performs the job, under its on_release_error policy.
    def locking_release(reason)
      return unless @lock_token
      return if @locking_performer && @locking_performer != Process.pid

      begin
        released = locking_lock.release
      rescue Locking::Error => e
        @lock_released = true
        return locking_release_error(reason, e)
      end
      @lock_released = true
      UniqueJob.instrument(:release, locking_payload(reason: reason, released: released))
      released
    end

    private

    # Stops a lock's renewal (it is released, or kept to its TTL, next), and
    # reports a lock a renewal found gone or taken while perform ran.
    def locking_stop_renewing(lock)
      lost = lock.lost?(report: false) # reported here, with the job
      lock.stop_renewing
      UniqueJob.instrument(:lost, locking_payload(at: :perform)) if lost
    end

    def locking_after_run(outcome)
      return if @lock_token.nil? || @lock_released

      locking_options[:strategy_class].after_run(self, outcome)
    end

    # A release that failed leaves the lock to its TTL. That only delays the
    # next run of the same job; failing this one (whose work may be done)
    # would make the queue run it again, which is what the lock prevents.
    def locking_release_error(reason, error)
      UniqueJob.instrument(:release_error, locking_payload(reason: reason, error: error))
      policy = locking_options[:on_release_error]
      # After a failed enqueue, that failure is the one to report.
      raise error if policy == :raise && reason != :enqueue_failed

      policy.call(self, error) if policy.respond_to?(:call)
      nil
    end
  end
end
