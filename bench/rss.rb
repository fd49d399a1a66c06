# frozen_string_literal: true

# Resident memory before and after 1,000,000 acquire+release cycles through
# the Ruby API, on 8 threads (the GVL released on every round trip).
#
#   bundle exec ruby -Ilib bench/rss.rb [--cycles N] [--json FILE]
require_relative "support"

options = Bench.options(cycles: 1_000_000, threads: 8) do |o, chosen|
  o.on("--cycles N", Integer, "acquire+release cycles (default 1,000,000)") { |v| chosen[:cycles] = v }
  o.on("--json FILE", "write the row as JSON (for bench/all.rb)") { |v| chosen[:json] = v }
end

server, = Bench.start_servers("bench-rss")
Locking.configure do |c|
  c.source = server.url
  c.phase = :source
end

def rss_kib = File.read("/proc/self/status")[/VmRSS:\s+(\d+)/, 1].to_i

run = lambda do |per_thread, threads|
  threads.times.map do |t|
    Thread.new do
      per_thread.times do |i|
        lock = Locking.new("rss:#{t}:#{i % 64}")
        lock.acquire(10) && lock.release
      end
    end
  end.each(&:join)
end
run.(5_000, options[:threads]) # warm up: pools, scripts, Ruby's heap
GC.start
before = rss_kib
started = Bench.monotonic
run.(options[:cycles] / options[:threads], options[:threads])
GC.start
after = rss_kib
elapsed = Bench.monotonic - started
left = server.redis.keys("locking:rss:*").size # every cycle released its lock
puts format("RSS %d KiB -> %d KiB (%+d KiB) over %d cycles on %d threads in %.0fs; %d lock keys left",
            before, after, after - before, options[:cycles], options[:threads], elapsed, left)
if options[:json]
  Bench.emit([Bench.row(name: "RSS growth over #{options[:cycles]} acquire+release cycles (#{options[:threads]} threads)",
                        unit: "KiB", lower_is_better: true, locking: after - before, references: {}, left: left,
                        note: format("%d KiB -> %d KiB in %.0fs", before, after, elapsed),
                        goal: "< 10 MiB", met: after - before < 10 * 1024 && left.zero?)],
             options[:json])
end
