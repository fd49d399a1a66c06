# frozen_string_literal: true

require "rspec/expectations"
require "locking/testing"

class Locking
  module Testing
    # RSpec matchers for apps that use locking (`require "locking/rspec"`):
    #
    #   expect(ImportJob).to have_unique_lock(:until_executed).with_ttl(60)
    #   expect { ImportJob.perform_later(1) }.to acquire_lock("ImportJob:...")
    #   expect("report:42").to be_locked
    #
    # Examples tagged `:locking` start and end with no lock in memory.
    module Matchers
      extend RSpec::Matchers::DSL

      matcher :have_unique_lock do |strategy|
        chain(:with_ttl) { |seconds| @ttl = seconds }
        match do |job_class|
          options = job_class.respond_to?(:locking_options) && job_class.locking_options
          # The TTL is stored as given (to_f), so equal settings compare equal.
          options && options[:strategy] == strategy && (@ttl.nil? || options[:ttl] == @ttl.to_f) # rubocop:disable Lint/FloatComparison
        end
        failure_message do |job_class|
          options = job_class.respond_to?(:locking_options) && job_class.locking_options
          found = options ? "unique_lock #{options[:strategy].inspect}, ttl: #{options[:ttl]}" : "no unique_lock"
          "expected #{job_class} to have unique_lock #{strategy.inspect}#{", ttl: #{@ttl}" if @ttl}, found #{found}"
        end
      end

      matcher :acquire_lock do |key|
        supports_block_expectations
        match do |block|
          before = Testing.acquired.size
          block.call
          @acquired = Testing.acquired.drop(before)
          key.nil? ? @acquired.any? : @acquired.any? { |k| key === k } # rubocop:disable Style/CaseEquality -- a String or a Regexp
        end
        failure_message { "expected the block to acquire lock #{key.inspect}, it acquired #{@acquired.inspect}" }
        failure_message_when_negated { "expected the block not to acquire lock #{key.inspect}, it did" }
      end

      matcher :be_locked do
        match { |key| Locking.new(key).locked? }
        failure_message { |key| "expected lock #{key.inspect} to be held" }
        failure_message_when_negated { |key| "expected lock #{key.inspect} to be free" }
      end
    end
  end
end

RSpec.configure do |config|
  config.include Locking::Testing::Matchers
  config.around(:each, :locking) do |example|
    Locking::Testing.reset!
    example.run
  ensure
    Locking::Testing.reset!
  end
end
