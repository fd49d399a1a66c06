# frozen_string_literal: true

# Per-operation speed of locking against (a) a pure-Ruby reference on
# redis-rb doing the same commands (bench/reference_locking.rb) and (b) the
# floor: bare PING round trips from a Rust loop, for the same number of
# commands. All measured in this run, interleaved, medians of --rounds.
#
#   bundle exec ruby -Ilib bench/ops.rb [--ops N] [--rounds R]
require "optparse"
require "open3"
require "locking"
require_relative "../spec/support/redis_server"
require_relative "reference_locking"

options = { ops: 3000, rounds: 5, threads: 8 }
OptionParser.new do |o|
  o.on("--ops N", Integer, "operations per measurement (default 3000)") { |v| options[:ops] = v }
  o.on("--rounds N", Integer, "interleaved rounds; medians reported (default 5)") { |v| options[:rounds] = v }
end.parse!

root = File.expand_path("..", __dir__)
out, status = Open3.capture2e("cargo", "build", "--release", "--locked", "-p", "locking_core", "--example", "ping_floor",
                              chdir: root)
abort out unless status.success?
FLOOR = File.join(root, "target", "release", "examples", "ping_floor")

source = RedisServer.start("bench-ops-source")
destination = RedisServer.start("bench-ops-destination")
at_exit do
  source.cleanup
  destination.cleanup
end
Locking.configure do |c|
  c.source = source.url
  c.destination = destination.url
  c.phase = :destination
end
servers = [Redis.new(url: source.url), Redis.new(url: destination.url)]
reference = ReferenceLocking.new(servers)
# Which servers the reference touches per phase (the protocol's table).
ACQUIRE_ON = { source: [0], dual: [0, 1], drain: [1], destination: [1] }.freeze
RELEASE_ON = { source: [0, 1], dual: [0, 1], drain: [1, 0], destination: [1, 0] }.freeze
LOOK_ON = { source: [0], dual: [0, 1], drain: [1, 0], destination: [1] }.freeze

def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

def time_per_op(count)
  started = monotonic
  count.times { |i| yield i }
  (monotonic - started) * 1e6 / count
end

def floor_us(server, count)
  `#{FLOOR} 127.0.0.1:#{server.port} #{count}`.to_f
end

def median(values) = values.sort[values.size / 2]

results = []
cases = []
%i[source dual drain destination].each do |phase|
  cases << ["acquire+release, phase #{Locking::Configuration::PHASES.index(phase)} (#{phase})", phase, :cycle]
end
cases << ["locked? hit, phase 1 (dual, both at once)", :dual, :hit]
cases << ["locked? miss, phase 1 (dual, both at once)", :dual, :miss]
cases << ["locked? miss, phase 2 (drain, both at once)", :drain, :miss]
cases << ["locked? miss, phase 3 (destination)", :destination, :miss]
cases << ["acquire only, phase 1 (dual: two writes)", :dual, :acquire]

# Commands on the wire per operation for the floor (one server's round trips;
# "at once" pairs count as one round trip of wall time).
ROUND_TRIPS = {
  cycle: { source: 3, dual: 4, drain: 2, destination: 2 },
  hit: Hash.new(1), miss: Hash.new(1), acquire: { dual: 2 }
}.freeze

n = options[:ops]
cases.each do |label, phase, kind|
  Locking.configure { |c| c.phase = phase }
  measurements = { locking: [], ruby: [], floor: [] }
  options[:rounds].times do
    servers.each(&:flushdb)
    servers[0].set("locking:held", "someone", px: 600_000) if kind == :hit
    measurements[:locking] << case kind
                              when :cycle
                                time_per_op(n) { |i| l = Locking.new("k#{i}"); l.acquire(10) && l.release }
                              when :hit then time_per_op(n) { Locking.new("held").locked? }
                              when :miss then time_per_op(n) { |i| Locking.new("m#{i}").locked? }
                              when :acquire then time_per_op(n) { |i| Locking.new("a#{i}").acquire(10) }
                              end
    servers.each(&:flushdb)
    servers[0].set("locking:held", "someone", px: 600_000) if kind == :hit
    measurements[:ruby] << case kind
                           when :cycle
                             time_per_op(n) do |i|
                               t = SecureRandom.uuid
                               reference.acquire("k#{i}", t, 10, ACQUIRE_ON[phase]) && reference.release("k#{i}", t, RELEASE_ON[phase])
                             end
                           when :hit then time_per_op(n) { reference.locked?("held", LOOK_ON[phase]) }
                           when :miss then time_per_op(n) { |i| reference.locked?("m#{i}", LOOK_ON[phase]) }
                           when :acquire
                             time_per_op(n) { |i| reference.acquire("a#{i}", SecureRandom.uuid, 10, ACQUIRE_ON[phase]) }
                           end
    measurements[:floor] << floor_us(destination, n) * ROUND_TRIPS[kind][phase]
  end
  results << [label, median(measurements[:locking]), median(measurements[:ruby]), median(measurements[:floor]),
              ROUND_TRIPS[kind][phase]]
end

# 8 threads in one process, acquire+release in phase 3.
Locking.configure { |c| c.phase = :destination }
threaded = { locking: [], ruby: [], single: [] }
options[:rounds].times do
  servers.each(&:flushdb)
  per_thread = n
  started = monotonic
  options[:threads].times.map do |t|
    Thread.new { per_thread.times { |i| l = Locking.new("t#{t}:#{i}"); l.acquire(10) && l.release } }
  end.each(&:join)
  threaded[:locking] << options[:threads] * per_thread / (monotonic - started)
  started = monotonic
  per_thread.times { |i| l = Locking.new("s#{i}"); l.acquire(10) && l.release }
  threaded[:single] << per_thread / (monotonic - started)
  servers.each(&:flushdb)
  started = monotonic
  options[:threads].times.map do |t|
    Thread.new do
      own = ReferenceLocking.new([Redis.new(url: source.url), Redis.new(url: destination.url)])
      per_thread.times { |i| x = SecureRandom.uuid; own.acquire("r#{t}:#{i}", x, 10, [1]) && own.release("r#{t}:#{i}", x, [1, 0]) }
    end
  end.each(&:join)
  threaded[:ruby] << options[:threads] * per_thread / (monotonic - started)
end

puts
puts "locking vs a pure-Ruby reference (redis-rb #{Redis::VERSION}) and the round-trip floor; " \
     "#{Time.now.utc.strftime('%Y-%m-%d')}, #{`nproc`.strip} cores, #{RUBY_DESCRIPTION.split(' [').first}, " \
     "redis #{`redis-server --version`[/v=(\S+)/, 1]}, medians of #{options[:rounds]} interleaved rounds of #{n} ops"
puts
puts "| operation | locking µs/op | Ruby µs/op | speed-up | floor µs/op (round trips) | locking over floor, µs per round trip |"
puts "|---|---|---|---|---|---|"
results.each do |label, ours, ruby, floor, trips|
  puts format("| %s | %.1f | %.1f | %.2fx | %.1f (%d) | %.1f |", label, ours, ruby, ruby / ours, floor, trips, (ours - floor) / trips)
end
puts format("| %d threads, acquire+release, phase 3 | %.0f ops/s | %.0f ops/s (a client per thread) | %.2fx | | %.1fx one thread (%.0f ops/s) |",
            options[:threads], median(threaded[:locking]), median(threaded[:ruby]),
            median(threaded[:locking]) / median(threaded[:ruby]),
            median(threaded[:locking]) / median(threaded[:single]), median(threaded[:single]))
