# frozen_string_literal: true

# What a backfill does to the live source: PING latency on the source (the
# jobs Redis every worker talks to) while `locking backfill` runs, against the
# same source idle, measured in the same run. A pinger process sends one PING
# at a time over its own socket and records each round trip.
#
#   bundle exec ruby -Ilib bench/backfill_impact.rb [--keys N]
#
# Rows: idle; unthrottled at the previous default (--batch 1000) and at the
# default now (--batch 200); --rate 50000 paced per batch as before (5 pages
# of 1,000, then a pause: --pages 5 --batch 1000) and as now (one page of
# rate/200 keys at a time).
require "optparse"
require "socket"
require "stringio"
require "locking"
require "locking/cli"
require_relative "../spec/support/redis_server"
require_relative "support"

options = { keys: 300_000 }
OptionParser.new do |o|
  o.on("--keys N", Integer, "lock keys on the source (default 300,000; as many other keys)") { |v| options[:keys] = v }
end.parse!

source, destination = Bench.start_servers("impact-source", "impact-destination")
n = options[:keys]
puts "loading #{n} lock keys and #{n} other keys onto the source..."
source.bulk_load(Enumerator.new do |y|
  n.times { |i| y << ["SET", "locking:job:#{i}", "token-#{i}", "PX", "3600000"] }
  n.times { |i| y << ["RPUSH", "queue:#{i}", "{\"job\":#{i}}"] }
end)

rows = []
measure = lambda do |name, args|
  destination.redis.flushall
  pinger = Bench::Pinger.new(source.port)
  sleep 0.3
  out = StringIO.new
  started = Bench.monotonic
  status = if args
             Locking::CLI.new(["backfill", "--source", source.url, "--destination", destination.url,
                               "--no-progress", *args], out: out, err: out).run
           else
             sleep(3) && 0
           end
  elapsed = Bench.monotonic - started
  sleep 0.2
  stats = pinger.stop
  abort "#{name}: backfill failed:\n#{out.string}" unless status.zero?
  copied = args ? destination.redis.dbsize - 1 : 0 # less the audit log
  rows << [name, args ? (copied / elapsed).round : nil, stats]
  puts format("%-44s %10s keys/s  ping p50 %.3f ms  p99 %.3f ms  worst 1 s window %.3f ms  max %.2f ms",
              name, args ? (copied / elapsed).round : "-", stats[:p50], stats[:p99], stats[:worst_window], stats[:max])
end

measure.call("idle", nil)
measure.call("unthrottled, --batch 1000 (previous default)", %w[--batch 1000])
measure.call("unthrottled, --batch 200 (default)", [])
measure.call("--rate 50000, --pages 5 --batch 1000 (previous)", %w[--rate 50000 --pages 5 --batch 1000])
measure.call("--rate 50000 (default pacing)", %w[--rate 50000])
measure.call("idle", nil)

puts
puts "| backfill | keys/s | source ping p50 | p99 | worst 1 s window (mean) | max |"
puts "|---|---|---|---|---|---|"
rows.each do |name, rate, s|
  puts format("| %s | %s | %.3f ms | %.3f ms | %.3f ms | %.2f ms |", name, rate ? rate.to_s.reverse.scan(/\d{1,3}/).join(",").reverse : "-",
              s[:p50], s[:p99], s[:worst_window], s[:max])
end
