# frozen_string_literal: true

require_relative "strategies"

class Locking
  module UniqueJobs
    # The options of `unique_lock` and of `Locking.configuration.unique_job_defaults`:
    # each one checked on its own (an ArgumentError naming the bad value),
    # then a class's own options merged over the defaults.
    module Options
      STRATEGIES = STRATEGY_CLASSES.keys.freeze
      ON_CONFLICT = %i[drop raise log].freeze
      ON_PERFORM_CONFLICT = %i[drop raise retry].freeze
      ON_REDIS_ERROR = %i[raise allow deny].freeze
      ON_FAILURE = %i[release keep].freeze
      ON_RELEASE_ERROR = %i[warn raise].freeze
      KEY_SCOPES = %i[class global].freeze
      DEFAULTS = {
        on_conflict: :drop, on_perform_conflict: :drop, key: nil, key_scope: :class, on_redis_error: :raise,
        on_failure: :release, on_release_error: :warn, retry_wait: 5, auto_renew: nil, wait: 0, limit: 1
      }.freeze
      NAMES = (DEFAULTS.keys + [:ttl]).freeze
      CHOICES = %i[on_conflict on_perform_conflict on_redis_error on_failure on_release_error key_scope].freeze

      module_function

      # Checks a defaults Hash (Locking.configure's unique_job_defaults).
      # @return [Hash] a frozen copy
      def check_defaults(defaults)
        raise ArgumentError, "unique_job_defaults must be a Hash, got #{defaults.inspect}" unless defaults.is_a?(Hash)

        # config/locking.yml gives strings: `on_conflict: log` is :log.
        defaults = defaults.to_h do |name, value|
          name = name.to_sym if name.is_a?(String)
          [name, value.is_a?(String) && CHOICES.include?(name) ? value.to_sym : value]
        end
        defaults.each { |name, value| check(name, value) }
        defaults.freeze
      end

      # The options a class runs with: its own (checked by `unique_lock`)
      # over the configured defaults over DEFAULTS.
      # @return [Hash] frozen, with :strategy_class
      def resolve(strategy, own, defaults)
        check_choice(strategy, STRATEGIES, "strategy")
        own.each { |name, value| check(name, value) }
        options = DEFAULTS.merge(defaults || {}).merge(own)
        strategy_class = STRATEGY_CLASSES.fetch(strategy)
        check_combination(strategy, strategy_class, own, options)
        options[:auto_renew] = strategy_class.new.runtime_lock? if options[:auto_renew].nil?
        options[:auto_renew] = false unless strategy_class.new.held_through_perform?
        options[:auto_renew] = options[:auto_renew].to_f if options[:auto_renew].is_a?(Numeric)
        options[:ttl] = options[:ttl].to_f unless options[:ttl].respond_to?(:call)
        options.merge(strategy: strategy, strategy_class: strategy_class.new).freeze
      end

      def check(name, value)
        raise ArgumentError, "unknown unique_lock option #{name.inspect} (expected one of #{NAMES.join(', ')})" \
          unless NAMES.include?(name)

        send(:"check_#{name}", value)
      end

      def check_ttl(value)
        return if value.respond_to?(:call)

        check_seconds(value, "ttl", zero: false)
      end

      # A ttl: Proc's result, when it is called.
      def ttl_seconds(value, job_class)
        check_seconds(value, "the ttl Proc of #{job_class}", zero: false, what: "returned")
        value.to_f
      end

      def check_on_conflict(value) = value.respond_to?(:call) || check_choice(value, ON_CONFLICT, "on_conflict")

      def check_on_perform_conflict(value)
        value.respond_to?(:call) || check_choice(value, ON_PERFORM_CONFLICT, "on_perform_conflict")
      end

      def check_on_redis_error(value)
        value.respond_to?(:call) || check_choice(value, ON_REDIS_ERROR, "on_redis_error")
      end

      def check_on_failure(value) = check_choice(value, ON_FAILURE, "on_failure")

      def check_on_release_error(value)
        value.respond_to?(:call) || check_choice(value, ON_RELEASE_ERROR, "on_release_error")
      end

      def check_key(value)
        return if value.nil? || value.respond_to?(:call)

        raise ArgumentError, "key: must be a Proc, got #{value.inspect}"
      end

      def check_key_scope(value) = check_choice(value, KEY_SCOPES, "key_scope")
      def check_retry_wait(value) = check_seconds(value, "retry_wait", zero: true)
      def check_wait(value) = check_seconds(value, "wait", zero: true)

      # limit: N > 1 holds a place in a Locking::Semaphore rather than the lock.
      def check_limit(value)
        return if value.is_a?(Integer) && value.between?(1, Semaphore::MAX_LIMIT)

        raise ArgumentError, "limit: must be an Integer from 1 to #{Semaphore::MAX_LIMIT}, got #{value.inspect}"
      end

      def check_auto_renew(value)
        return if [true, false, nil].include?(value)
        return if value.is_a?(Numeric) && value.real? && value.to_f.finite? && value.to_f.positive?

        raise ArgumentError, "auto_renew: must be true, false or a positive number of seconds, got #{value.inspect}"
      end

      # Checks that need the strategy; a default that does not apply to a
      # strategy (wait:, auto_renew:) is ignored, the class's own is refused.
      def check_combination(strategy, strategy_class, own, options)
        raise ArgumentError, "#{strategy.inspect} needs ttl: (in unique_lock or unique_job_defaults)" \
          unless options.key?(:ttl)
        if options[:key_scope] == :global && options[:key].nil?
          raise ArgumentError, "key_scope: :global needs a key: Proc (the key is used as given)"
        end

        if own[:auto_renew] && !strategy_class.new.held_through_perform?
          raise ArgumentError, "auto_renew: #{own[:auto_renew].inspect} is not for #{strategy.inspect} " \
                               "(its lock does not live through perform)"
        end
        return unless own[:wait]&.positive? && !strategy_class.new.runtime_lock?

        raise ArgumentError, "wait: #{own[:wait].inspect} is for :while_executing and :until_and_while_executing, " \
                             "not #{strategy.inspect}"
      end

      def check_seconds(value, name, zero:, what: "got")
        if value.is_a?(Numeric) && value.real? && value.to_f.finite? && (zero ? value >= 0 : value.positive?)
          return
        end

        raise ArgumentError, "#{name} must be a #{zero ? 'non-negative' : 'positive'} number of seconds, " \
                             "#{what} #{value.inspect}"
      end

      def check_choice(value, choices, name)
        return true if choices.include?(value)

        raise ArgumentError, "unknown #{name} #{value.inspect} (expected #{choices.map(&:inspect).join(', ')})"
      end
    end
  end
end
