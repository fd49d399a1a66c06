# frozen_string_literal: true

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "locking"
require "etc"
require "fileutils"
require "json"
require "logger"
require "open3"
require "rbconfig"
require "socket"
require "stringio"
require "tmpdir"
require "timeout"
require_relative "support/redis_server"
require_relative "support/phases"
require_relative "support/phase_examples"
require_relative "support/cli"
require_relative "support/forked"

# Servers shared by the whole run: source, destination, and a third one for
# occupancy witnesses. Started on first use, stopped at exit.
module TestServers
  NAMES = %i[source destination witness].freeze

  def self.get(name)
    @servers ||= {}
    @servers[name] ||= RedisServer.start(name.to_s)
  end

  def self.started
    (@servers || {}).values
  end

  def self.stop_all
    started.each(&:cleanup)
  end
end

module ServerHelpers
  def source_server = TestServers.get(:source)
  def destination_server = TestServers.get(:destination)
  def witness_server = TestServers.get(:witness)

  # The servers' own clients (a spec's `let(:source)` or `let(:destination)` wins over these).
  def source = source_server.redis
  def destination = destination_server.redis

  # Everything a server holds, as {key => [type, value, pttl]}.
  def contents(server)
    server.redis.keys("*").sort.to_h do |key|
      type = server.redis.type(key)
      value = type == "string" ? server.redis.get(key) : nil
      [key, [type, value, server.redis.pttl(key)]]
    end
  end

  def configure_single(server = source_server, **settings)
    Locking.reset_configuration!
    Locking.configure do |c|
      c.source = server.url
      c.timeout = 1.0
      settings.each { |name, value| c.public_send(:"#{name}=", value) }
    end
  end

  def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  # Runs the block with GC.stress on (a collection at every allocation), for
  # the native boundary's second pass.
  def under_gc_stress
    GC.stress = true
    yield
  ensure
    GC.stress = false
  end

  # Polls the block until it returns something truthy, for at most `seconds`;
  # returns what it returned last (falsy if the state never came).
  def wait_for(seconds = 5, every: 0.01)
    deadline = monotonic + seconds
    sleep every until (result = yield) || monotonic > deadline
    result
  end
end

RSpec.configure do |config|
  config.disable_monkey_patching!
  config.expect_with(:rspec) { |c| c.syntax = :expect }
  config.order = :random
  Kernel.srand config.seed
  config.include ServerHelpers

  config.before do
    TestServers.started.each do |server|
      server.thaw
      server.redis.flushall
    end
    configure_single
  end

  config.after(:suite) { TestServers.stop_all }
end
