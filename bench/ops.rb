# frozen_string_literal: true

# Per-operation speed of locking against (a) a pure-Ruby reference doing the
# same commands on redis-rb (bench/reference_locking.rb), with its default
# Ruby driver and with the hiredis driver, and (b) the floor: the same
# commands written by hand to plain sockets (ext/locking_core/examples/floor.rs).
# All measured in this run, interleaved, medians of --rounds.
#
#   bundle exec ruby -Ilib bench/ops.rb [--ops N] [--rounds R] [--json FILE] [--network US]
#
# --network US puts each redis-server behind its own delaying proxy (US µs
# each way; 250 is a round trip of 0.5 ms, as inside one cloud zone): what
# counts there is how many round trips an operation waits for in sequence.
require "optparse"
require "locking"
require "hiredis"
require "redis/connection/hiredis"
require_relative "../spec/support/redis_server"
require_relative "reference_locking"
require_relative "support"

options = { ops: 3000, rounds: 5, threads: 8, label: nil }
OptionParser.new do |o|
  o.on("--ops N", Integer, "operations per measurement (default 3000)") { |v| options[:ops] = v }
  o.on("--rounds N", Integer, "interleaved rounds; medians reported (default 5)") { |v| options[:rounds] = v }
  o.on("--json FILE", "write the rows as JSON (for bench/all.rb)") { |v| options[:json] = v }
  o.on("--label TEXT", "put TEXT before each case's name (bench/all.rb: where it ran)") { |v| options[:label] = v }
  o.on("--no-threads", "skip the 8-thread case") { options[:threads] = nil }
  o.on("--network US", Integer, "each server behind a proxy adding US µs each way") { |v| options[:network] = v }
end.parse!

direct = Bench.start_servers("bench-ops-source", "bench-ops-destination")
# What the client, the references and the floor talk to: the servers, or
# the proxies in front of them.
source, destination = options[:network] ? Bench.delayed(direct, options[:network]) : direct
Locking.configure do |c|
  c.source = source.url
  c.destination = destination.url
  c.phase = :destination
end
connect = ->(driver) { [Redis.new(url: source.url, driver: driver), Redis.new(url: destination.url, driver: driver)] }
servers = connect.(:ruby)
references = { "redis-rb" => ReferenceLocking.new(servers), "hiredis" => ReferenceLocking.new(connect.(:hiredis)) }
# Which servers the reference touches per phase, in order (the protocol's table).
ACQUIRE_ON = { source: [0], dual: [0, 1], drain: [1], destination: [1] }.freeze
RELEASE_ON = { source: [0, 1], dual: [0, 1], drain: [1, 0], destination: [1, 0] }.freeze
LOOK_ON = { source: [0], dual: [0, 1], drain: [1, 0], destination: [1] }.freeze

# The floor: the commands locking sends per operation, one string per round
# trip ("++" joins commands sent to both servers at once), as MONITOR shows them.
cad = servers.map do |r|
  r.script(:load, File.read(File.join(Bench::ROOT, "ext/locking_core/src/wire/codec/lua/compare_and_delete.lua")))
end.first
token = "0b5b3f4c-7f6e-4a51-9d43-6a1d2b8e9f10"
set = ->(side) { "#{side}:SET locking:f{i} #{token} NX GET PX 10000" }
del = ->(side) { "#{side}:EVALSHA #{cad} 1 locking:f{i} #{token}" }
FLOOR = {
  %i[cycle source] => [set.("S"), del.("S"), del.("D")],
  %i[cycle dual] => [set.("S"), set.("D"), del.("S"), del.("D")],
  %i[cycle drain] => [set.("D"), "#{del.('D')} ++ #{del.('S')}"],
  %i[cycle destination] => [set.("D"), "#{del.('D')} ++ #{del.('S')}"],
  %i[hit dual] => ["S:EXISTS locking:held ++ D:EXISTS locking:held"],
  %i[miss dual] => ["S:EXISTS locking:m{i} ++ D:EXISTS locking:m{i}"],
  %i[miss drain] => ["D:EXISTS locking:m{i} ++ S:EXISTS locking:m{i}"],
  %i[miss destination] => ["D:EXISTS locking:m{i}"],
  %i[acquire dual] => [set.("S"), set.("D")],
  %i[release drain] => ["#{del.('D')} ++ #{del.('S')}"],
  %i[release destination] => ["#{del.('D')} ++ #{del.('S')}"]
}.freeze
GOALS = {
  %i[cycle destination] => [1.3, 10.0],
  %i[hit dual] => [1.7], %i[miss dual] => [1.7], %i[hit drain] => [1.7], %i[miss drain] => [1.7]
}.freeze

def time_per_op(count, &)
  started = Bench.monotonic
  count.times(&)
  (Bench.monotonic - started) * 1e6 / count
end

def phase_number(phase) = Locking::Configuration::PHASES.index(phase)

cases = %i[source dual drain destination].map { |phase| [:cycle, phase] }
cases += [%i[hit dual], %i[miss dual], %i[miss drain], %i[miss destination], %i[acquire dual]]
cases += [%i[release drain], %i[release destination]] if options[:network]
LABELS = { cycle: "acquire+release", hit: "locked? hit", miss: "locked? miss", acquire: "acquire only",
           release: "release only" }.freeze

# Round trips the reference waits for in sequence: one per server it asks.
def reference_round_trips(kind, phase)
  case kind
  when :cycle then ACQUIRE_ON[phase].size + RELEASE_ON[phase].size
  when :hit then 1 # the first server it asks holds the key
  when :miss then LOOK_ON[phase].size
  when :acquire then ACQUIRE_ON[phase].size
  when :release then RELEASE_ON[phase].size
  end
end

n = options[:ops]
rows = []
cases.each do |kind, phase|
  Locking.configure { |c| c.phase = phase }
  measured = Hash.new { |h, k| h[k] = [] }
  reset = lambda do
    servers.each(&:flushdb)
    servers[0].set("locking:held", "someone", px: 600_000) if kind == :hit
  end
  # Release only: each key acquired first, untimed.
  held = lambda do |prefix|
    Array.new(n) { |i| Locking.new("#{prefix}#{i}").tap { |l| l.acquire(60) } }
  end
  options[:rounds].times do
    reset.()
    measured[:locking] << case kind
                          when :cycle then time_per_op(n) { |i| l = Locking.new("k#{i}"); l.acquire(10) && l.release }
                          when :hit then time_per_op(n) { Locking.new("held").locked? }
                          when :miss then time_per_op(n) { |i| Locking.new("m#{i}").locked? }
                          when :acquire then time_per_op(n) { |i| Locking.new("a#{i}").acquire(10) }
                          when :release
                            locks = held.("r")
                            time_per_op(n) { |i| locks[i].release }
                          end
    references.each do |name, reference|
      reset.()
      measured[name] << case kind
                        when :cycle
                          time_per_op(n) do |i|
                            t = SecureRandom.uuid
                            reference.acquire("k#{i}", t, 10, ACQUIRE_ON[phase]) && reference.release("k#{i}", t, RELEASE_ON[phase])
                          end
                        when :hit then time_per_op(n) { reference.locked?("held", LOOK_ON[phase]) }
                        when :miss then time_per_op(n) { |i| reference.locked?("m#{i}", LOOK_ON[phase]) }
                        when :acquire
                          time_per_op(n) { |i| reference.acquire("a#{i}", SecureRandom.uuid, 10, ACQUIRE_ON[phase]) }
                        when :release
                          tokens = Array.new(n) { |i| SecureRandom.uuid.tap { |t| reference.acquire("r#{i}", t, 60, ACQUIRE_ON[phase]) } }
                          time_per_op(n) { |i| reference.release("r#{i}", tokens[i], RELEASE_ON[phase]) }
                        end
    end
    reset.()
    measured[:floor] << Bench.floor_us(n, source, destination, FLOOR[[kind, phase]])
  end
  steps = FLOOR[[kind, phase]]
  commands = steps.sum { |step| step.split(" ++ ").size }
  ours = Bench.median(measured[:locking])
  ruby = Bench.median(measured["redis-rb"])
  floor = Bench.median(measured[:floor])
  overhead = (ours - floor) / commands
  speed_goal, overhead_goal = GOALS[[kind, phase]]
  if options[:network]
    # Over a network, round trips decide: never more in sequence than the
    # reference, and 1.8x where we ask both servers at once and it asks
    # them one after the other.
    theirs = reference_round_trips(kind, phase)
    # (A cycle is two operations: its release asks both at once, its acquire one.)
    both_at_once = kind != :cycle && steps.any? { |step| step.include?(" ++ ") } && theirs > steps.size
    speed_goal = both_at_once ? 1.8 : nil
    overhead_goal = nil
  end
  goal = []
  goal << "round trips #{steps.size} <= reference's #{theirs}" if options[:network]
  goal << ">= #{speed_goal}x redis-rb" if speed_goal
  goal << "<= #{overhead_goal} µs/command over floor" if overhead_goal
  met = (!speed_goal || ruby / ours >= speed_goal) && (!overhead_goal || overhead <= overhead_goal) if speed_goal
  met = (met.nil? || met) && steps.size <= theirs if options[:network]
  rows << Bench.row(name: "#{options[:label]}#{LABELS[kind]}, phase #{phase_number(phase)} (#{phase})",
                    unit: "µs/op", lower_is_better: true,
                    locking: ours, references: references.keys.to_h { |k| [k, Bench.median(measured[k])] },
                    floor: floor, commands: commands, round_trips: steps.size, overhead: overhead,
                    goal: goal.join(", "), met: met)
end

# 8 threads in one process, acquire+release in phase 3, against one thread,
# and against the Ruby reference with a client (connection) per thread.
(Bench.emit(rows, options[:json]); exit) unless options[:threads]
Locking.configure { |c| c.phase = :destination }
threaded = Hash.new { |h, k| h[k] = [] }
threads = options[:threads]
run_threads = lambda do |&body|
  started = Bench.monotonic
  threads.times.map { |t| Thread.new { body.(t) } }.each(&:join)
  threads * n / (Bench.monotonic - started)
end
options[:rounds].times do
  servers.each(&:flushdb)
  threaded[:locking] << run_threads.() { |t| n.times { |i| l = Locking.new("t#{t}:#{i}"); l.acquire(10) && l.release } }
  started = Bench.monotonic
  n.times { |i| l = Locking.new("s#{i}"); l.acquire(10) && l.release }
  threaded[:single] << (n / (Bench.monotonic - started))
  %i[ruby hiredis].each do |driver|
    servers.each(&:flushdb)
    threaded[driver] << run_threads.() do |t|
      own = ReferenceLocking.new(connect.(driver))
      n.times { |i| x = SecureRandom.uuid; own.acquire("r#{t}:#{i}", x, 10, [1]) && own.release("r#{t}:#{i}", x, [1, 0]) }
    end
  end
end
ours = Bench.median(threaded[:locking])
single = Bench.median(threaded[:single])
ruby = Bench.median(threaded[:ruby])
rows << Bench.row(name: "#{options[:label]}#{threads} threads, acquire+release, phase 3 (a client per thread for Ruby)", unit: "ops/s",
                  locking: ours, references: { "redis-rb" => ruby, "hiredis" => Bench.median(threaded[:hiredis]) },
                  note: format("%.2fx one thread (%.0f ops/s)", ours / single, single),
                  goal: ">= 3x one thread, >= 1.5x redis-rb", met: ours / single >= 3 && ours / ruby >= 1.5)

Bench.emit(rows, options[:json])
