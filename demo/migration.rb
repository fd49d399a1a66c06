# frozen_string_literal: true

# The demo behind bin/demo: a live migration of lock keys from a source Redis
# to a destination Redis while a fleet of worker processes keeps running
# unique jobs, with no restart and no deploy (dynamic phases).
#
# Each worker takes a job's lock, marks itself inside the job on an occupancy
# witness (INCR; a value above 1 is a duplicate execution), works, leaves
# (DECR) and releases. The operator part runs the real `locking` commands.
# With --cluster the destination is a Redis Cluster of 3 masters started for
# the demo (redis-cli --cluster create).
require "optparse"
require "locking"
require "locking/cli"
require_relative "../spec/support/redis_server"
require_relative "../spec/support/cluster"

$stdout.sync = true

options = { keys: 300_000, workers: 4, jobs: 20, source: nil, destination: nil, seconds: 1.5 }
OptionParser.new do |o|
  o.banner = "usage: bin/demo [options]   (bin/demo --basic: the single-server tour)"
  o.on("--source URL", "source Redis to use (default: start one)") { |v| options[:source] = v }
  o.on("--destination URL", "destination Redis to use (default: start one)") { |v| options[:destination] = v }
  o.on("--keys N", Integer, "lock keys left from phase 0 on the source (default 300,000)") { |v| options[:keys] = v }
  o.on("--workers N", Integer, "worker processes (default 4)") { |v| options[:workers] = v }
  o.on("--jobs N", Integer, "distinct unique jobs they compete for (default 20)") { |v| options[:jobs] = v }
  o.on("--seconds S", Float, "time spent in each phase (default 1.5; 15 with --web)") do |v|
    options[:seconds] = v
    options[:seconds_given] = true
  end
  o.on("--cluster", "the destination is a 3-master Redis Cluster started for the demo") { options[:cluster] = true }
  o.on("--web [PORT]", Integer, "serve the dashboard (Locking::Web) during the demo (default port 9292)") do |v|
    options[:web] = v || 9292
  end
end.parse!
options[:seconds] = 15.0 if options[:web] && !options[:seconds_given]

started_servers = []
url_for = lambda do |given, name|
  next given if given

  server = RedisServer.start("demo-#{name}")
  started_servers << server
  server.url
end
source_url = url_for.call(options[:source], "source")
abort "bin/demo: give --cluster or --destination, not both" if options[:cluster] && options[:destination]
if options[:cluster]
  cluster = RedisCluster.new(masters: 3, name: "demo-cluster")
  started_servers << cluster
  destination_url = cluster.url
else
  destination_url = url_for.call(options[:destination], "destination")
end
witness_server = RedisServer.start("demo-witness")
started_servers << witness_server
witness_url = witness_server.url
prefix = "locking-demo:"
demo_pid = Process.pid
at_exit { started_servers.each(&:cleanup) if Process.pid == demo_pid }

def step(text)
  puts
  puts "== #{text}"
end

def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

step "servers"
puts "source       #{source_url}#{' (started for the demo)' unless options[:source]}"
puts "destination  #{destination_url}#{" (a cluster of #{cluster.masters.size} masters, started for the demo)" if cluster}"
puts "witness      #{witness_url} (counts workers inside each job)"

step "loading the source: #{options[:keys]} lock keys from phase 0, and queue data"
t = monotonic
source = Redis.new(url: source_url)
# The destination as redis-rb sees it (for a cluster: each key on its master).
destination = cluster ? ClusterAsServer.new(cluster).redis : Redis.new(url: destination_url)
[source, destination].each(&:flushdb)
RedisServer.bulk_load(source_url, Enumerator.new do |y|
  options[:keys].times { |i| y << ["SET", "#{prefix}Phase0Job:#{i}", "phase0-token-#{i}", "PX", rand(120_000..179_999).to_s] }
  100.times { |q| y << ["RPUSH", "queue:q#{q}", *Array.new(1_000) { |j| "{\"job\":#{j}}" }] }
  1_000.times { |h| y << ["HSET", "stats:#{h}", "processed", h.to_s] }
end)
queue_digest = source.keys("queue:*").sort.map { |k| source.lrange(k, 0, -1).hash }.hash
puts "#{source.dbsize} keys on the source in #{(monotonic - t).round(1)}s"

configure = lambda do |c|
  c.source = source_url
  c.destination = destination_url
  c.key_prefix = prefix
end
Locking.configure(&configure)
if options[:web]
  require "webrick"
  require "rack/handler/webrick"
  require "locking/web"
  web = WEBrick::HTTPServer.new(BindAddress: "127.0.0.1", Port: options[:web], AccessLog: [],
                                Logger: WEBrick::Log.new(nil, WEBrick::BasicLog::WARN))
  web.mount("/", Rack::Handler::WEBrick, Locking::Web.app)
  Thread.new { web.start }
  step "the dashboard: http://127.0.0.1:#{options[:web]}/ (it refreshes itself; #{options[:seconds]}s per phase)"
end
cli = ->(*args) { Locking::CLI.new([*args, "--source", source_url, "--destination", destination_url, "--prefix", prefix]).run }

step "phase 0: the fleet's phase is set once, then #{options[:workers]} worker processes (phase :dynamic) run unique jobs"
puts "$ locking phase set 0 --init"
cli.call("phase", "set", "0", "--init").zero? or abort "could not set the first phase"
witness = Redis.new(url: witness_url)
witness.flushdb
workers = options[:workers].times.map do
  fork do
    Locking.reset_configuration!
    Locking.configure do |c|
      configure.call(c)
      c.phase = :dynamic
      c.phase_cache_ttl = 0.1
    end
    w = Redis.new(url: witness_url)
    until w.exists?("stop")
      job = "ImportJob:#{rand(options[:jobs])}"
      begin
        lock = Locking.new(job)
        if lock.acquire(10)
          w.incr("duplicates") if w.incr("inside:#{job}") > 1
          w.incr("runs")
          sleep(rand * 0.005)
          w.decr("inside:#{job}")
          lock.release
        else
          w.incr("refused")
        end
      rescue Locking::Error => e
        w.incr("errors")
        w.rpush("error-messages", e.message)
      end
    end
    exit!(0)
  end
end
fleet_in = lambda do |phase|
  deadline = monotonic + 10
  loop do
    # Each heartbeat gives the lowest and highest phase a process may still act in.
    phases = Locking.client.fleet.map { |m| [m[:phase], m[:highest]].map { |p| Locking::Configuration.phase_index(p) } }
    break true if phases.size == options[:workers] && phases.uniq == [[phase, phase]]
    break false if monotonic > deadline

    sleep 0.05
  end
end
fleet_in.call(0) or abort "the workers did not report phase 0"
timings = {}
mark = monotonic
sleep options[:seconds]
timings[0] = monotonic - mark

run = lambda do |*args|
  puts "$ locking #{args.join(' ')}"
  cli.call(*args)
end

step "phase 1 (dual): new locks go to both servers"
mark = monotonic
run.call("phase", "advance", "--wait", "10").zero? or abort "advance to phase 1 refused"
fleet_in.call(1) or abort "the workers did not reach phase 1"
run.call("gate")
sleep options[:seconds] / 2

step "backfill: copy the #{options[:keys]} phase-0 locks onto the destination, live"
run.call("backfill", "--progress").zero? or abort "backfill failed"
run.call("gate").zero? or abort "the gate stayed closed"
timings[1] = monotonic - mark

advance_and_run = lambda do |phase, text|
  step text
  mark = monotonic
  run.call("phase", "advance", "--wait", "10").zero? or abort "advance to phase #{phase} refused"
  fleet_in.call(phase) or abort "the workers did not reach phase #{phase}"
  sleep options[:seconds]
  timings[phase] = monotonic - mark
end
advance_and_run.call(2, "phase 2 (drain): new locks go to the destination; the source is still read and cleaned")
advance_and_run.call(3, "phase 3 (destination): the destination alone")

witness.set("stop", "1")
statuses = workers.map { |pid| Process.wait2(pid).last }
left_on_source = source.keys("#{prefix}*").size

step "finishing: the phase-0 locks left on the source, which nobody reads any more, are deleted"
run.call("cleanup-source").zero? or abort "cleanup-source refused"
run.call("status")

copied = destination.keys("#{prefix}Phase0Job:*").size
lost = options[:keys] - copied
job_keys_left = source.keys("#{prefix}ImportJob:*").size + destination.keys("#{prefix}ImportJob:*").size
duplicates = witness.get("duplicates").to_i
errors = witness.get("errors").to_i
queue_intact = source.keys("queue:*").sort.map { |k| source.lrange(k, 0, -1).hash }.hash == queue_digest

step "report"
puts format("jobs run                 %d (%d refused: already running elsewhere)", witness.get("runs").to_i, witness.get("refused").to_i)
puts format("duplicate executions     %d", duplicates)
puts format("lock errors              %d%s", errors, errors.positive? ? " (#{witness.lrange('error-messages', 0, 2).join('; ')})" : "")
puts format("phase-0 locks copied     %d of %d (lost: %d)", copied, options[:keys], lost)
puts format("job lock keys left       %d", job_keys_left)
puts format("left on the source       %d phase-0 locks after phase 3; %d after `locking cleanup-source`",
            left_on_source, source.keys("#{prefix}*").size)
puts format("queue data untouched     %s", queue_intact ? "yes" : "NO")
if cluster
  per_master = cluster.keys_by_master("#{prefix}Phase0Job:*").values.map(&:size)
  puts format("on the cluster's masters %s phase-0 locks", per_master.join(" + "))
end
timings.each { |phase, seconds| puts format("time in phase %d          %.1fs", phase, seconds) }
ok = duplicates.zero? && lost.zero? && errors.zero? && job_keys_left.zero? && queue_intact &&
     statuses.all?(&:success?) && source.keys("#{prefix}*").empty?
puts
puts ok ? "OK: migrated live, no job ran twice, no lock lost" : "FAILED"
if options[:web] && $stdin.tty?
  puts "the dashboard stays up at http://127.0.0.1:#{options[:web]}/ : press Enter to stop"
  $stdin.gets
end
exit(ok ? 0 : 1)
