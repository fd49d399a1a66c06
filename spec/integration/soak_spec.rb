# frozen_string_literal: true

require_relative "../support/interval_log"

# Minutes of real operation: 8 worker processes with dynamic phases take and
# release unique locks while an operator walks the fleet 0 -> 3 -> 0 twice
# (advances, backfills, rollbacks through the reverse gate) and faults land
# in between: a SIGSTOPped worker, CLIENT PAUSE on the source, SCRIPT FLUSH
# on both servers, a destination killed and restarted (with persistence).
#
# Each worker records every interval in which it believed it held a lock:
# from acquire's true to the start of its release, cut at acquire's start +
# TTL (have_lock?'s own rule). Intervals of one key, from all processes, must
# never overlap. One hold in four is a place in a semaphore of 2 beside the
# locks: never more than 2 of its intervals at once. CLOCK_MONOTONIC is one
# clock for every process of the machine.
module Soak
  WORKERS = 8
  KEYS = 4
  TTL = 3.0
  SEMAPHORE = "sem:0"
  LIMIT = 2
  # Seconds the fleet works in each phase before the next move (SOAK_DWELL=30 for a longer soak).
  DWELL = Float(ENV.fetch("SOAK_DWELL", "4"))
end

RSpec.describe "soak: a fleet walking the phases under faults", :soak do
  before(:all) do
    @source = RedisServer.start("soak-source")
    @destination = RedisServer.start("soak-destination", settings: %w[--appendonly yes --appendfsync always])
  end

  after(:all) do
    [@source, @destination].each(&:cleanup)
  end

  def cli(*args)
    locking_cli(*args, source: @source.url, destination: @destination.url, prefix: "soak:")
  end

  # Runs an operator step until it succeeds (a fault may refuse it for a while).
  def step(*args, within: 30)
    deadline = monotonic + within
    log = []
    loop do
      status, out, err = cli(*args)
      return out if status.zero?

      log << "#{args.join(' ')} -> #{status}: #{out.lines.last(3).join(' ')} #{err}"
      raise "operator step never passed: #{log.last(3).join("\n")}" if monotonic > deadline

      yield if block_given?
      sleep 0.2
    end
  end

  def start_workers(stop_key)
    source_url = @source.url
    destination_url = @destination.url
    witness_url = witness_server.url
    Soak::WORKERS.times.map do
      fork do
        Locking.reset_configuration!
        Locking.configure do |c|
          c.source = source_url
          c.destination = destination_url
          c.key_prefix = "soak:"
          c.phase = :dynamic
          c.phase_cache_ttl = 0.05
          c.timeout = 1.0
        end
        witness = Redis.new(url: witness_url)
        IntervalLog.work(witness, batch: 200, name: "soak worker", stop: stop_key) do |log|
          lock = if rand(4).zero?
                   Locking::Semaphore.new(Soak::SEMAPHORE, limit: Soak::LIMIT)
                 else
                   Locking.new("job:#{rand(Soak::KEYS)}")
                 end
          started = monotonic
          next unless IntervalLog.try(log) { lock.acquire(Soak::TTL) }

          from = monotonic
          witness.incr("phase:#{Locking.client.phase}")
          sleep(rand * 0.003)
          key = lock.is_a?(Locking::Semaphore) ? Soak::SEMAPHORE : lock.lock_key
          log.record(key, "#{Process.pid}:#{lock.token}", from, [monotonic, started + Soak::TTL].min)
          IntervalLog.try(log) { lock.release }
        end
      end
    end
  end

  # The faults, one after another, each at a different point of the walk.
  def fault(number, workers)
    case number % 4
    when 0
      victim = workers.sample
      Process.kill(:STOP, victim)
      sleep 0.3
      Process.kill(:CONT, victim)
    when 1 then @source.redis.call("CLIENT", "PAUSE", "300")
    when 2 then [@source, @destination].each { |server| server.redis.script(:flush) }
    when 3 then @destination.restart
    end
  end

  it "never has two holders of one key" do
    witness = witness_server.redis
    step("phase", "set", "0", "--init")
    workers = start_workers("soak-stop")
    started = monotonic
    faults = 0
    moves = 0
    begin
      2.times do
        [%w[phase advance], %w[phase advance], %w[phase advance],
         %w[phase set 2], %w[phase set 1], %w[phase set 0]].each do |move|
          fault(faults, workers)
          faults += 1
          sleep Soak::DWELL # the fleet works in this phase for a while
          if move == %w[phase advance] && @destination.redis.get("{locking-control}:soak:phase") == "1"
            step(*move, "--wait", "5") { step("backfill") }
          else
            step(*move, "--wait", "5")
          end
          moves += 1
        end
      end
      sleep 1
    ensure
      witness.set("soak-stop", "1")
      workers.each { |pid| Process.kill(:CONT, pid) rescue nil }
      statuses = workers.map { |pid| Process.wait2(pid).last }
    end

    all = IntervalLog.read(witness)
    places, intervals = all.partition { |key, *| key == Soak::SEMAPHORE }
    phases = %w[source dual drain destination].to_h { |p| [p, witness.get("phase:#{p}").to_i] }
    puts format("\n  soak: %d holds by %d processes in %.0fs, %d moves (0->3->0 twice), %d faults, " \
                "%d operation errors during faults, holds per phase %s, 0 overlaps required; " \
                "semaphore of %d: %d holds, at most %d at once",
                intervals.size, Soak::WORKERS, monotonic - started, moves, faults, witness.get("errors").to_i, phases,
                Soak::LIMIT, places.size, IntervalLog.most_at_once(places).fetch(Soak::SEMAPHORE, 0))
    expect(statuses).to all(be_success)
    expect(moves).to eq(12)
    expect(intervals.size).to be > 1_000
    expect(phases.values).to all(be > 0)
    expect(IntervalLog.overlaps(intervals)).to eq(0)
    expect(places.size).to be > 200
    expect(IntervalLog.most_at_once(places).fetch(Soak::SEMAPHORE)).to be_between(1, Soak::LIMIT)
  end
end
