# frozen_string_literal: true

require "json"
require "digest"
require "active_support/concern"
require "active_support/notifications"
require "active_job"
require_relative "log_subscriber"
require_relative "unique_jobs/options"
require_relative "unique_jobs/registry"
require_relative "unique_jobs/class_methods"
require_relative "unique_jobs/place"

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
  # - :until_executing            lock at enqueue, free when perform starts
  # - :until_executed             lock at enqueue, free when perform ends (the monolith's behaviour)
  # - :while_executing            lock only around perform
  # - :until_and_while_executing  lock at enqueue, free when perform starts; a runtime lock while it runs
  # - :until_expired              lock at enqueue, free by TTL only
  #
  # With limit: N (> 1) each strategy holds a place in a Locking::Semaphore
  # at the same key instead of the lock: N jobs with one key at once, and
  # the policies apply to the N+1st (see UniqueJobs::ClassMethods#unique_lock).
  #
  # The lock key is derived once, at enqueue, from the job class and its
  # serialized arguments (symbol or string keys, hash order: same key), and
  # travels in the job's data with a token unique to this enqueue, so the
  # worker releases exactly the lock that was taken, in any process and phase.
  #
  # This module holds no constants: it is included in every unique job, and
  # a constant here would be what a job's own code finds for that name. The
  # strategies and option tables live in Locking::UniqueJobs.
  module UniqueJob
    extend ActiveSupport::Concern

    included do
      class_attribute :locking_declaration, instance_writer: false, default: nil
      around_enqueue :locking_around_enqueue
      around_perform :locking_around_perform
      extend UniqueJobs::ClassMethods
    end

    # Frees every unique-job lock of every job class that declared
    # unique_lock (see unlock_all! for key_scope: :global).
    # @return [Integer] locks deleted
    def self.unlock_all!
      UniqueJobs::Registry.job_classes.sum(&:unlock_all!)
    end

    # The lock key and token this job carries (nil before enqueue or without a lock).
    attr_reader :lock_key, :lock_token

    # How many places its key has (limit: N > 1), or nil: it holds the lock.
    attr_reader :lock_limit

    def locking_options = self.class.locking_options

    def serialize
      data = super
      if @lock_token
        data[UniqueJobs::DATA_KEY] = { "key" => @lock_key, "token" => @lock_token }
        data[UniqueJobs::DATA_KEY]["limit"] = @lock_limit if @lock_limit
      end
      data
    end

    def deserialize(job_data)
      super
      lock = job_data[UniqueJobs::DATA_KEY]
      return unless lock

      @lock_key = lock["key"]
      @lock_token = lock["token"]
      @lock_limit = lock["limit"]
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

    private

    # The job's lock, or with a limit its place (the limit it was enqueued with).
    def locking_lock
      return Locking.new(@lock_key, token: @lock_token) unless @lock_limit

      UniqueJobs::Place.new(@lock_key, limit: @lock_limit, token: @lock_token, renew_to: -> { locking_ttl })
    end

    # The limit (> 1) a new hold of this job takes, or nil for the lock.
    def locking_new_limit
      limit = locking_options[:limit]
      limit > 1 ? limit : nil
    end

    def locking_payload(extra = {})
      { job_class: self.class.name, job_id: job_id, lock_key: @lock_key, strategy: locking_options[:strategy] }
        .merge(extra)
    end

    # The lock's TTL in seconds (a ttl: Proc is called with the arguments).
    def locking_ttl
      ttl = locking_options[:ttl]
      return ttl unless ttl.respond_to?(:call)

      UniqueJobs::Options.ttl_seconds(ttl.call(*arguments), self.class.name)
    end

    # At enqueue, a scheduled job's lock must outlive its delay: the delay plus ttl.
    def locking_enqueue_ttl
      delay = scheduled_at ? scheduled_at.to_f - Time.now.to_f : 0
      locking_ttl + [delay, 0].max
    end

    # Runs a Redis call under the job's on_redis_error policy.
    def locking_redis(on_error_result)
      yield
    rescue Locking::ConnectionError, Locking::CommandError => e
      UniqueJob.instrument(:error, locking_payload(error: e))
      policy = locking_options[:on_redis_error]
      policy = policy.call(self, e) if policy.respond_to?(:call)
      case policy
      when :allow then on_error_result == :lock ? true : nil
      when :deny then on_error_result == :lock ? false : nil
      else raise e
      end
    end

    def locking_around_enqueue
      options = locking_options
      return yield if options.nil? || !options[:strategy_class].lock_at_enqueue?

      ttl = locking_enqueue_ttl
      if @lock_token
        # A retry (retry_on) of a job that holds its lock: keep it, no gap.
        renewed = locking_redis(:lock) { locking_lock.renew(ttl) || locking_lock.acquire(ttl) }
        @lock_released = false
        UniqueJob.instrument(:renew, locking_payload(renewed: renewed))
        return yield
      end

      @lock_key = self.class.lock_key_for(*arguments)
      @lock_token = Locking::Client.generate_token
      @lock_limit = locking_new_limit
      acquired = locking_redis(:lock) { locking_lock.acquire(ttl) }
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

    # @api private: for the strategies (Locking::UniqueJobs::Strategy).
    # Perform starts: the job runs only if it owns its enqueue-time lock. Its
    # token still holds it: it runs. The lock is free (it expired while the
    # job waited): the job takes it again with its own token and runs.
    # Another token holds it (the same job was enqueued again meanwhile):
    # on_perform_conflict, and the lock is left to its holder.
    def locking_claim
      return yield unless @lock_token # performed without an enqueue (perform_now): no lock travelled

      lock = locking_lock
      state = locking_redis(:lock) { lock.ttl ? true : (lock.acquire(locking_ttl) && :retaken) }
      case state
      when :retaken then UniqueJob.instrument(:acquire, locking_payload(at: :perform, retaken: true))
      when false, nil
        @lock_released = true # not ours to free
        return locking_perform_conflict("#{self.class.name} is already enqueued or running: another " \
                                        "enqueue holds lock #{@lock_key.inspect}")
      end
      yield
    end

    # @api private: for the strategies. Takes the runtime lock for this run
    # (:while_executing: the job's key; with runtime: true, the key with
    # ":run", beside the enqueue lock), waiting up to wait: seconds, runs the
    # block, frees it.
    def locking_while_executing(runtime: false)
      if runtime
        key = "#{@lock_key || self.class.lock_key_for(*arguments)}:run"
        limit = locking_new_limit
        lock = limit ? UniqueJobs::Place.new(key, limit: limit, renew_to: -> { locking_ttl }) : Locking.new(key)
      else
        @lock_key = self.class.lock_key_for(*arguments)
        @lock_token = Locking::Client.generate_token
        @lock_limit = locking_new_limit
        lock = locking_lock
      end
      unless locking_acquire_waiting(lock)
        @lock_token = nil unless runtime
        return locking_perform_conflict("#{self.class.name} is already running (lock #{lock.lock_key.inspect})")
      end
      UniqueJob.instrument(:acquire, locking_payload(at: :perform, lock_key: lock.lock_key))
      begin
        yield
      ensure
        locking_stop_renewing(lock, lock.lock_key)
        if runtime
          locking_release_lock(lock, :performed)
        else
          # The retry of a :while_executing job takes its lock again when it runs.
          locking_release(:performed)
          @lock_token = nil
        end
      end
    end

    # @api private: for the strategies. Runs the block with the job's
    # enqueue-time lock renewed (auto_renew): first renewed to `ttl` now, as
    # the queue wait used some of it, then from the native renewer.
    def locking_renewing
      options = locking_options
      return yield unless options[:auto_renew] && @lock_token

      lock = locking_lock
      ttl = locking_ttl
      renewed = locking_redis(:renew) { lock.renew(ttl) }
      if renewed
        lock.auto_renew(ttl, renew_for: (options[:auto_renew] unless options[:auto_renew] == true))
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

      released = locking_release_lock(locking_lock, reason)
      @lock_released = true unless released == :elsewhere
      released
    end

    private

    # Frees a lock this job took, in the process that performs the job only.
    def locking_release_lock(lock, reason)
      return :elsewhere if @locking_performer && @locking_performer != Process.pid

      begin
        released = lock.release
      rescue Locking::Error => e
        return locking_release_error(reason, e, lock.lock_key)
      end
      UniqueJob.instrument(:release, locking_payload(reason: reason, released: released, lock_key: lock.lock_key))
      released
    end

    # Tries the runtime lock until it is taken or wait: seconds have passed,
    # sleeping a jittered, growing delay (10 ms to 0.5 s) in between.
    def locking_acquire_waiting(lock)
      options = locking_options
      deadline = Locking.send(:monotonic) + options[:wait]
      attempt = 0
      loop do
        return true if locking_redis(:lock) { lock.acquire(locking_ttl, auto_renew: options[:auto_renew]) }

        remaining = deadline - Locking.send(:monotonic)
        return false if remaining <= 0

        attempt += 1
        UniqueJob.instrument(:wait, locking_payload(lock_key: lock.lock_key, wait: options[:wait])) if attempt == 1
        sleep([(rand * [0.01 * (2**[attempt, 6].min), 0.5].min) + 0.001, remaining].min)
      end
    end

    # Perform cannot own its lock: the job's on_perform_conflict.
    def locking_perform_conflict(message)
      options = locking_options
      UniqueJob.instrument(:conflict, locking_payload(at: :perform))
      policy = options[:on_perform_conflict]
      case policy
      when :drop then logger&.warn("[locking] #{message}: job #{job_id} not performed")
      when :raise then raise DuplicateJobError, message
      when :retry then return retry_job(wait: options[:retry_wait])
      else policy.call(self)
      end
      nil
    end

    # Stops a lock's renewal (it is released, or kept to its TTL, next), and
    # reports a lock a renewal found gone or taken while perform ran.
    def locking_stop_renewing(lock, key = @lock_key)
      lost = lock.lost?(report: false) # reported here, with the job
      lock.stop_renewing
      UniqueJob.instrument(:lost, locking_payload(at: :perform, lock_key: key)) if lost
    end

    def locking_after_run(outcome)
      return if @lock_token.nil? || @lock_released

      locking_options[:strategy_class].after_run(self, outcome)
    end

    # A release that failed leaves the lock to its TTL. That only delays the
    # next run of the same job; failing this one (whose work may be done)
    # would make the queue run it again, which is what the lock prevents.
    def locking_release_error(reason, error, key)
      UniqueJob.instrument(:release_error, locking_payload(reason: reason, error: error, lock_key: key))
      policy = locking_options[:on_release_error]
      # After a failed enqueue, that failure is the one to report.
      raise error if policy == :raise && reason != :enqueue_failed

      policy.call(self, error) if policy.respond_to?(:call)
      nil
    end
  end
end
