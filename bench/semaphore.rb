# frozen_string_literal: true

# A semaphore's acquire+release against a lock's, in the same run,
# interleaved, medians of --rounds: limits 1, 10 and 1,000, one thread and
# --threads threads. A semaphore of limit N is measured full but for the
# place it takes (N - 1 other holders with long TTLs), the case where its
# scripts do the most (ZCARD against the limit, the latest place for the key's
# expiry); the lock takes and frees one key. One server (phase 0), each
# thread on keys of its own. Goal: a semaphore within 1.5x of a lock per
# operation. A ratio, never a timed test. With --network US the server sits
# behind a delaying proxy (US µs each way), where round trips weigh more
# than what the server does per command.
#
#   bundle exec ruby -Ilib bench/semaphore.rb [--ops N] [--rounds R] [--threads T] [--network US] [--json FILE]
require_relative "support"

options = Bench.options(ops: [3000, "acquire+release cycles per thread per measurement"],
                        rounds: [5, "interleaved rounds; medians reported"],
                        threads: [8, "threads of the threaded rows"], json: [nil], label: [""],
                        network: [nil]) do |parser, given|
  parser.on("--json FILE", "write the rows as JSON (for bench/all.rb)") { |v| given[:json] = v }
  parser.on("--network US", Integer, "the server behind a proxy adding US µs each way") { |v| given[:network] = v }
  parser.on("--label TEXT", "put TEXT before each case's name") { |v| given[:label] = v }
end
LIMITS = [1, 10, 1000].freeze
GOAL = 1.5

server = Bench.start_servers("bench-semaphore").first
redis = server.redis
Locking.configure { |c| c.source = (options[:network] ? Bench.delayed([server], options[:network]).first : server).url }

# The N - 1 holders a semaphore of limit N is measured beside, on each thread's key.
def fill(redis, key, limit)
  return if limit == 1

  seconds, = redis.time
  redis.zadd("locking:#{key}", Array.new(limit - 1) { |i| [(seconds + 3600) * 1000, "other-#{i}"] })
  redis.expire("locking:#{key}", 3600)
end

# One thread's cycles on its keys: the lock's, or a semaphore's of `limit`.
def cycles(count, thread, limit)
  if limit
    key = "semaphore-#{limit}:#{thread}"
    count.times do
      place = Locking::Semaphore.new(key, limit: limit)
      (place.acquire(10) && place.release) or raise "semaphore #{key} refused a place"
    end
  else
    count.times do
      lock = Locking.new("lock:#{thread}")
      (lock.acquire(10) && lock.release) or raise "lock:#{thread} was taken"
    end
  end
end

# Seconds per cycle (per thread) for `threads` threads at once.
def seconds_per_cycle(count, threads, limit)
  started = Bench.monotonic
  Array.new(threads) { |t| Thread.new { cycles(count, t, limit) } }.each(&:join)
  (Bench.monotonic - started) / (count * threads)
end

n = options[:ops]
rows = []
[1, options[:threads]].each do |threads|
  measured = Hash.new { |h, k| h[k] = [] }
  options[:rounds].times do
    redis.flushdb
    threads.times { |t| LIMITS.each { |limit| fill(redis, "semaphore-#{limit}:#{t}", limit) } }
    measured[:lock] << seconds_per_cycle(n, threads, nil)
    LIMITS.each { |limit| measured[limit] << seconds_per_cycle(n, threads, limit) }
  end
  lock = Bench.median(measured[:lock]) * 1e6
  LIMITS.each do |limit|
    ours = Bench.median(measured[limit]) * 1e6
    ratio = ours / lock
    rows << Bench.row(name: "#{options[:label]}semaphore of limit #{limit} (#{limit - 1} others held) vs a lock, " \
                            "acquire+release, #{threads == 1 ? 'one thread' : "#{threads} threads"}",
                      unit: "µs/op", lower_is_better: true, locking: ours, references: { "lock" => lock },
                      note: format("%.2fx a lock's %.1f µs/op", ratio, lock),
                      goal: "<= #{GOAL}x a lock", met: ratio <= GOAL)
  end
end

Bench.emit(rows, options[:json])
