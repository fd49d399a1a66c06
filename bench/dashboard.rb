# frozen_string_literal: true

# What the dashboard costs the jobs Redis: the overview's load time over a
# source of N keys (half of them locks), computed (a walk of both servers and
# the gate's count) and from the shared cache, and the PING latency of the
# source while one tab stays open (it reloads every `refresh_seconds`),
# against the same source idle and against a tab with the cache off, all in
# the same run.
#
#   bundle exec ruby -Ilib bench/dashboard.rb [--keys N] [--seconds S]
require "rack"
require "locking/web"
require_relative "support"

options = Bench.options(keys: [2_000_000, "keys on the source, half of them locks"],
                        seconds: [30, "how long each latency row watches"])

source, destination = Bench.start_servers("dashboard-source", "dashboard-destination")
locks = options[:keys] / 2
puts "loading #{locks} lock keys and #{options[:keys] - locks} other keys onto the source..."
source.bulk_load(Enumerator.new do |y|
  locks.times { |i| y << ["SET", "locking:job:#{i}", "token-#{i}", "PX", "3600000"] }
  (options[:keys] - locks).times { |i| y << ["RPUSH", "queue:#{i}", "{\"job\":#{i}}"] }
end)
Bench.configure_dual(source, destination, timeout: 30)
page = Rack::MockRequest.new(Locking::Web.app(secret: "s" * 64))

load_overview = lambda do
  started = Bench.monotonic
  response = page.get("/")
  abort "overview answered #{response.status}" unless response.status == 200
  Bench.monotonic - started
end

Locking::Web.forget_counts
computed = Array.new(3) do
  Locking::Web.forget_counts
  load_overview.call
end
cached = Array.new(20) { load_overview.call }
puts format("overview at %d keys: computed %.2f s (median of 3), from the cache %.1f ms (median of 20)",
            options[:keys], Bench.median(computed), Bench.median(cached) * 1000)

# One tab: a reload every refresh_seconds, for `seconds`.
watch = lambda do |name, tab|
  pinger = Bench::Pinger.new(source.port)
  deadline = Bench.monotonic + options[:seconds]
  loads = 0
  while Bench.monotonic < deadline
    if tab
      load_overview.call
      loads += 1
    end
    sleep [Locking::Web.refresh_seconds, deadline - Bench.monotonic].min.clamp(0, nil)
  end
  stats = pinger.stop
  puts format("%-48s %3d loads  ping p50 %.3f ms  p99 %.3f ms  worst 1 s window %.3f ms  max %.2f ms",
              name, loads, stats[:p50], stats[:p99], stats[:worst_window], stats[:max])
  [name, stats]
end

rows = []
rows << watch.call("idle (no tab)", false)
Locking::Web.forget_counts
rows << watch.call("a tab open, counts cached #{Locking::Web.counts_seconds} s (default)", true)
Locking::Web.counts_seconds = 0
rows << watch.call("a tab open, no cache (counts_seconds = 0)", true)

puts
puts "| source, #{options[:keys]} keys | ping p50 | p99 | worst 1 s window (mean) | max |"
puts "|---|---|---|---|---|"
rows.each do |name, s|
  puts format("| %s | %.3f ms | %.3f ms | %.3f ms | %.2f ms |", name, s[:p50], s[:p99], s[:worst_window], s[:max])
end
