# frozen_string_literal: true

# Backfill throughput: locking's pipelined backfill (the per-key protocol of
# DESIGN §3: atomic read, SET NX, re-read, clean-up) against a plain
# pipelined mirror written in Ruby on redis-rb (SCAN, GET + PTTL, SET NX PX:
# no re-check, so it does less), measured in the same run, alternating, on a
# source holding N lock keys among N other keys.
#
#   bundle exec ruby -Ilib bench/backfill.rb [--keys N] [--rounds R]
require "optparse"
require "locking"
require_relative "../spec/support/redis_server"

options = { keys: 1_000_000, rounds: 3, batch: 1000 }
OptionParser.new do |o|
  o.on("--keys N", Integer, "lock keys on the source (default 1,000,000; as many other keys)") { |v| options[:keys] = v }
  o.on("--rounds N", Integer, "alternating rounds of each (default 3; medians reported)") { |v| options[:rounds] = v }
  o.on("--batch N", Integer, "keys per batch for both (default 1000)") { |v| options[:batch] = v }
end.parse!

PREFIX = "locking:"
source = RedisServer.start("bench-source")
destination = RedisServer.start("bench-destination")
at_exit do
  source.cleanup
  destination.cleanup
end

def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

n = options[:keys]
puts "loading #{n} lock keys and #{n} other keys (lists, hashes, strings) onto the source..."
t = monotonic
source.bulk_load(Enumerator.new do |y|
  n.times { |i| y << ["SET", "#{PREFIX}job:#{i}", "token-#{i}-#{'x' * 20}", "PX", (3_600_000 + i % 1000).to_s] }
  (n / 2).times { |i| y << ["RPUSH", "queue:#{i}", "{\"job\":#{i}}"] }
  (n / 4).times { |i| y << ["HSET", "stats:#{i}", "processed", i.to_s] }
  (n - (n / 2) - (n / 4)).times { |i| y << ["SET", "cache:#{i}", "v#{i}"] }
end)
puts "source: #{source.redis.dbsize} keys (#{(monotonic - t).round(1)}s)"

Locking.configure do |c|
  c.source = source.url
  c.destination = destination.url
  c.phase = :dual
  c.timeout = 10
end

def rust_backfill(batch)
  client = Locking.client
  cursor = 0
  copied = 0
  loop do
    report = client.backfill_batch(cursor, count: batch)
    copied += report[:copied]
    cursor = report[:cursor]
    break if cursor.zero?
  end
  copied
end

def ruby_mirror(source, destination, batch)
  cursor = "0"
  copied = 0
  loop do
    cursor, keys = source.scan(cursor, match: "#{PREFIX}*", count: batch, type: "string")
    unless keys.empty?
      replies = source.pipelined { |p| keys.each { |k| p.get(k); p.pttl(k) } }
      results = destination.pipelined do |p|
        keys.each_with_index do |key, i|
          value = replies[2 * i]
          ttl = replies[2 * i + 1]
          next unless value

          ttl.positive? ? p.set(key, value, nx: true, px: ttl) : p.set(key, value, nx: true)
        end
      end
      copied += results.count(true)
    end
    break if cursor == "0"
  end
  copied
end

src = Redis.new(url: source.url, timeout: 30)
dst = Redis.new(url: destination.url, timeout: 30)
rates = { rust: [], ruby: [] }
options[:rounds].times do |round|
  %i[rust ruby].each do |kind|
    dst.flushall
    GC.start
    t = monotonic
    copied = kind == :rust ? rust_backfill(options[:batch]) : ruby_mirror(src, dst, options[:batch])
    elapsed = monotonic - t
    raise "#{kind} copied #{copied} of #{n}" unless copied == n && dst.dbsize == n

    rates[kind] << n / elapsed
    puts format("round %d  %-5s %10.0f keys/s  (%.2fs)", round + 1, kind, n / elapsed, elapsed)
  end
end

median = ->(values) { values.sort[values.size / 2] }
rust = median.(rates[:rust])
ruby = median.(rates[:ruby])
puts
puts "backfill of #{n} lock keys among #{n} other keys, batch #{options[:batch]}, #{Time.now.utc.strftime('%Y-%m-%d')}, " \
     "#{`nproc`.strip} cores, #{RUBY_DESCRIPTION.split(' [').first}, #{`redis-server --version`[/v=\S+/]}"
puts format("| %-45s | %12s |", "implementation", "keys/s (median)")
puts format("| %-45s | %12.0f |", "locking backfill (Rust, full protocol)", rust)
puts format("| %-45s | %12.0f |", "plain pipelined mirror (Ruby, redis-rb)", ruby)
puts format("ratio: %.1fx the Ruby mirror", rust / ruby)
