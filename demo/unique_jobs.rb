# frozen_string_literal: true

# The demo behind bin/demo: worker processes run "jobs" that share a few lock
# keys. Each job takes its lock, does some work, and releases it; an occupancy
# witness (INCR on entry, DECR on exit, in another Redis database) counts how
# many workers are inside the same job at once, which must never exceed 1.
require "optparse"
require "locking"
require_relative "../spec/support/redis_server"

$stdout.sync = true

options = { workers: 4, seconds: 3.0, jobs: 3, source: nil }
OptionParser.new do |opts|
  opts.banner = "usage: bin/demo [options]"
  opts.on("--source URL", "use this Redis instead of starting one (db 15 is used as the witness)") { |v| options[:source] = v }
  opts.on("--workers N", Integer, "worker processes (default 4)") { |v| options[:workers] = v }
  opts.on("--seconds S", Float, "how long the workers run (default 3)") { |v| options[:seconds] = v }
  opts.on("--jobs N", Integer, "distinct unique jobs they compete for (default 3)") { |v| options[:jobs] = v }
end.parse!

server = nil
source = options[:source] || begin
  server = RedisServer.start("demo")
  puts "started a redis-server on #{server.url} (stopped at the end)"
  server.url
end
witness_url = "#{source.sub(%r{/\d*\z}, '')}/15"
witness = Redis.new(url: witness_url)
witness.flushdb

Locking.configure do |c|
  c.source = source
  c.key_prefix = "locking-demo:"
end
puts "locks under #{Locking.configuration.key_prefix.inspect} on #{source}, phase #{Locking.configuration.phase}"
puts

puts "-- one process, the API --"
lock = Locking.new("ImportJob:42")
puts "acquire(30)        => #{lock.acquire(30).inspect}   (token #{lock.token})"
puts "have_lock?         => #{lock.have_lock?.inspect}"
other = Locking.new("ImportJob:42")
puts "another acquire    => #{other.acquire(30).inspect}  (refused: someone holds it)"
puts "another release    => #{other.release.inspect}  (token-checked: not its lock, left in place)"
begin
  lock.acquire(30)
rescue Locking::AlreadyAcquireLockError => e
  puts "acquire again      => #{e.class}: #{e.message}"
end
puts "locked?            => #{other.locked?.inspect}   ttl #{lock.ttl.round(2)}s"
puts "release            => #{lock.release.inspect}"
puts "locked?            => #{other.locked?.inspect}"
puts

puts "-- #{options[:workers]} worker processes, #{options[:jobs]} unique jobs, #{options[:seconds]}s --"
started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
pids = options[:workers].times.map do |n|
  fork do
    stats = Hash.new(0)
    witness = Redis.new(url: witness_url) # this process's own connection
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + options[:seconds]
    while Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline
      job = "ImportJob:#{rand(1..options[:jobs])}"
      lock = Locking.new(job)
      if lock.acquire(5)
        inside = witness.incr("inside:#{job}")
        stats[:duplicates] += 1 if inside > 1
        witness.incr("runs")
        puts format("  worker %d  %-12s acquired  (%d inside)", n, job, inside) if stats[:ran] < 3
        sleep rand(0.005..0.03) # the job's work
        witness.decr("inside:#{job}")
        lock.release
        stats[:ran] += 1
      else
        puts format("  worker %d  %-12s refused   (another worker runs it)", n, job) if stats[:refused] < 2
        stats[:refused] += 1
        sleep rand(0.001..0.01)
      end
    end
    witness.incrby("duplicates", stats[:duplicates])
    witness.incrby("refused", stats[:refused])
    exit!(stats[:duplicates].zero? ? 0 : 1)
  end
end
statuses = pids.map { |pid| Process.wait2(pid).last }
elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started

runs = witness.get("runs").to_i
duplicates = witness.get("duplicates").to_i
refused = witness.get("refused").to_i
left = Redis.new(url: source).keys("#{Locking.configuration.key_prefix}*").size
puts
puts "jobs run:             #{runs} in #{elapsed.round(1)}s"
puts "refused (duplicates prevented): #{refused}"
puts "duplicate executions: #{duplicates}"
puts "lock keys left:       #{left}"
ok = duplicates.zero? && left.zero? && runs.positive? && statuses.all?(&:success?)
puts ok ? "OK: every job ran alone, nothing left behind" : "FAILED"
witness.flushdb
server&.cleanup
exit(ok ? 0 : 1)
