# frozen_string_literal: true

# What `locking gate` costs: the gate's walk over N locks present on both
# servers with the same token and TTL (the common case: every copy is read on
# both servers, with what it has left, and compared), in medians of 3 rounds.
# Run it with a baseline build's lib to compare builds in one sitting:
#
#   bundle exec ruby -Ilib bench/gate.rb [--keys N]
#   bundle exec ruby -I target/baseline/REV/lib bench/gate.rb   # after bin/bench --baseline REV
require "stringio"
require "locking/cli"
require_relative "support"

options = Bench.options(keys: [300_000, "locks on both servers"])
source, destination = Bench.start_servers("gate-source", "gate-destination")
[source, destination].each do |server|
  server.bulk_load(Enumerator.new do |y|
    options[:keys].times { |i| y << ["SET", "locking:job:#{i}", "token-#{i}", "PX", "3600000"] }
  end)
end
times = Array.new(3) do
  out = StringIO.new
  started = Bench.monotonic
  status = Locking::CLI.new(["gate", "--source", source.url, "--destination", destination.url, "--prefix", "locking:",
                             "--no-progress"], out: out, err: $stderr).run
  raise "gate exited #{status}:\n#{out.string}" unless status.zero?

  Bench.monotonic - started
end
median = Bench.median(times)
puts format("gate over %d locks on both servers: %.2f s (median of 3), %.1f µs per key", options[:keys], median,
            median * 1e6 / options[:keys])
