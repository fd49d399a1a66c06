# frozen_string_literal: true

require "locking/testing"

class Locking
  module Testing
    # Minitest assertions (`require "locking/minitest"`, then
    # `include Locking::Testing::Assertions` in a test case). Each test of
    # that case starts and ends with no lock in memory, as the RSpec
    # `:locking` tag does.
    module Assertions
      def before_setup
        Locking::Testing.reset!
        super
      end

      def after_teardown
        super
      ensure
        Locking::Testing.reset!
      end

      def assert_unique_lock(job_class, strategy, ttl: nil)
        options = job_class.respond_to?(:locking_options) && job_class.locking_options
        assert options, "expected #{job_class} to declare a unique_lock"
        assert_equal strategy, options[:strategy], "unique_lock strategy of #{job_class}"
        assert_equal ttl.to_f, options[:ttl], "unique_lock ttl of #{job_class}" if ttl
      end

      def assert_acquires_lock(key)
        before = Testing.acquired.size
        yield
        acquired = Testing.acquired.drop(before)
        assert acquired.any? { |k| key === k }, # rubocop:disable Style/CaseEquality -- a String or a Regexp
               "expected the block to acquire lock #{key.inspect}, it acquired #{acquired.inspect}"
      end

      def assert_locked(key)
        assert Locking.new(key).locked?, "expected lock #{key.inspect} to be held"
      end

      def refute_locked(key)
        refute Locking.new(key).locked?, "expected lock #{key.inspect} to be free"
      end
    end
  end
end
