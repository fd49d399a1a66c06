# frozen_string_literal: true

require_relative "../support/holding_proxy"
require_relative "../support/cluster"
require_relative "../support/interval_log"

# The belief soak (issue 27): worker processes with dynamic phases hold
# auto-renewed locks for up to twice their TTL while the operator walks the
# fleet 0 -> 3 -> 0 and faults land in between: a partition (a worker's
# requests blackholed for longer than its TTL), a worker SIGSTOPped past its
# TTL, the unused source hung in phase 3, CLIENT PAUSE on the source, and
# forks (a worker forks, its child reads have_lock? on, the parent stops
# renewing without releasing). Each process records every interval from
# acquire's true to the last moment its have_lock? said true; intervals of
# one key, from every process, must never overlap. It runs twice: with a
# standalone destination, and with a Redis Cluster of 3 masters as the
# destination (partitions then cut the source only: a cluster's nodes
# announce their own addresses).
#
# BELIEF_SOAK_DWELL=30 for a longer soak (seconds in each phase).
module BeliefSoak
  WORKERS = 4
  KEYS = 6
  TTL = 0.8
  TIMEOUT = 0.25
  DWELL = Float(ENV.fetch("BELIEF_SOAK_DWELL", "2"))

  def self.clock = Process.clock_gettime(Process::CLOCK_BOOTTIME)
end

RSpec.describe "belief soak: have_lock? under partitions, pauses, hung servers and forks", :soak do
  let(:witness) { witness_server.redis }

  after { @cluster&.cleanup }

  def destination_url = @cluster ? @cluster.url : destination_server.url
  def cli(*args) = locking_cli(*args, prefix: "belief:", destination: destination_url)

  def control_phase
    key = "{locking-control}:belief:phase"
    @cluster ? @cluster.get(key) : destination_server.redis.get(key)
  end

  def step(*args, within: 30)
    deadline = monotonic + within
    loop do
      status, out, err = cli(*args)
      return out if status.zero?
      raise "#{args.join(' ')} never passed: #{out.lines.last(2).join} #{err}" if monotonic > deadline

      yield if block_given?
      sleep 0.2
    end
  end

  # Holds the lock, reading have_lock? every few ms, for `seconds` or until
  # it turns false; returns the last moment it said true.
  def hold(lock, seconds)
    last_true = BeliefSoak.clock
    deadline = last_true + seconds
    while BeliefSoak.clock < deadline
      now = BeliefSoak.clock
      break unless lock.have_lock?

      last_true = now
      sleep 0.003
    end
    last_true
  end

  # A child that reads an inherited lock's have_lock? until it turns false.
  def fork_reader(lock, witness_url, forked_at)
    child = fork do
      last_true = hold(lock, 10 * BeliefSoak::TTL)
      Redis.new(url: witness_url).rpush(IntervalLog::LIST, "#{lock.lock_key} #{lock.token} #{forked_at} #{last_true} child")
      exit!(0)
    end
    Process.detach(child)
  end

  def start_workers(proxies)
    witness_url = witness_server.url
    cluster_url = @cluster&.url
    proxies.map do |source_proxy, destination_proxy|
      fork do
        Locking.reset_configuration!
        Locking.configure do |c|
          c.source = source_proxy.url
          c.destination = destination_proxy ? destination_proxy.url : cluster_url
          c.key_prefix = "belief:"
          c.phase = :dynamic
          c.phase_cache_ttl = 0.05
          c.timeout = BeliefSoak::TIMEOUT
        end
        witness = Redis.new(url: witness_url)
        IntervalLog.work(witness, batch: 20, name: "belief soak worker", stop: "belief-stop") do |log|
          lock = Locking.new("job:#{rand(BeliefSoak::KEYS)}")
          next unless IntervalLog.try(log) { lock.acquire(BeliefSoak::TTL, auto_renew: true) }

          from = BeliefSoak.clock
          if rand < 0.05 # a fork: the child reads on, the parent stops renewing and walks away
            witness.incr("belief-forks")
            fork_reader(lock, witness_url, BeliefSoak.clock)
            lock.stop_renewing
            log.record(lock.lock_key, lock.token, from, BeliefSoak.clock)
            next
          end
          # Mostly short holds; one in three outlives the TTL twice over at most.
          seconds = rand < 0.67 ? rand * 0.05 : rand * 2 * BeliefSoak::TTL
          log.record(lock.lock_key, lock.token, from, hold(lock, seconds))
          IntervalLog.try(log) { lock.release }
        end
      end
    end
  end

  # One fault, lasting longer than the TTL.
  def fault(kind, workers, proxies)
    case kind
    when :partition # one worker's requests blackholed (to both servers, or to the source only)
      pair = proxies.sample.compact
      pair.each(&:hold!)
      sleep 2 * BeliefSoak::TTL
      pair.each(&:let_go!)
    when :sigstop
      victim = workers.sample
      Process.kill(:STOP, victim)
      sleep 2 * BeliefSoak::TTL
      Process.kill(:CONT, victim)
    when :hung_source # in phase 3, which reads only the destination
      source_server.freeze
      sleep 2 * BeliefSoak::TTL
      source_server.thaw
    when :client_pause then source_server.redis.call("CLIENT", "PAUSE", (2000 * BeliefSoak::TTL).round.to_s)
    end
  end

  it "counts overlapping holds (the checker itself can fail)" do
    expect(IntervalLog.overlaps([["k", "a", 0.0, 2.0], ["k", "b", 1.0, 3.0], ["j", "c", 1.5, 1.6]])).to eq(1)
    expect(IntervalLog.overlaps([["k", "a", 0.0, 1.0], ["k", "b", 1.0, 3.0], ["k", "c", 0.2, 0.5]])).to eq(1)
    expect(IntervalLog.overlaps([["k", "a", 0.0, 1.0], ["k", "b", 1.0, 3.0]])).to eq(0)
    expect(IntervalLog.overlaps([["k", "a", 0.0, 2.0], ["k", "a", 1.0, 3.0], ["k", "b", 2.5, 4.0]])).to eq(1)
  end

  { "a standalone destination" => false, "a Redis Cluster destination" => true }.each do |title, clustered|
    it "never has a holder believe a lock another holds (#{title})" do
      @cluster = RedisCluster.new(masters: 3, name: "belief-soak") if clustered
      run_soak
    end
  end

  def run_soak
    proxies = Array.new(BeliefSoak::WORKERS) do
      [HoldingProxy.new(source_server.port), (HoldingProxy.new(destination_server.port) unless @cluster)]
    end
    step("phase", "set", "0", "--init")
    workers = start_workers(proxies)
    # Each move, and the fault in the phase before it (forks happen all along).
    moves = [[%w[phase advance], :partition], [%w[phase advance], :sigstop], [%w[phase advance], :client_pause],
             [%w[phase set 2], :hung_source], [%w[phase set 1], :partition], [%w[phase set 0], :sigstop]]
    begin
      moves.each do |move, kind|
        sleep BeliefSoak::DWELL / 2
        fault(kind, workers, proxies)
        sleep BeliefSoak::DWELL / 2
        if move == %w[phase advance] && control_phase == "1"
          step(*move, "--wait", "5") { step("backfill") }
        else
          step(*move, "--wait", "5")
        end
      end
    ensure
      source_server.thaw
      proxies.flatten.compact.each(&:let_go!)
      witness.set("belief-stop", "1")
      workers.each { |pid| Process.kill(:CONT, pid) rescue nil }
      statuses = workers.map { |pid| Process.wait2(pid).last }
      proxies.flatten.compact.each(&:close)
    end
    # Every forked reader has reported (each within its lock's TTL of the fork).
    children = -> { witness.lrange(IntervalLog::LIST, 0, -1).count { |line| line.end_with?(" child") } }
    forks = witness.get("belief-forks").to_i
    expect(wait_for(20 * BeliefSoak::TTL) { children.call >= forks }).to be(true), "#{children.call} of #{forks} readers"
    intervals = IntervalLog.read(witness)
    forked = children.call
    puts format("\n  belief soak (#{@cluster ? 'cluster' : 'standalone'} destination): %d holds " \
                "(%d by forked children), %d moves, %d faults, %d operation errors, " \
                "0 overlaps required", intervals.size, forked, moves.size, moves.size, witness.get("errors").to_i)
    expect(statuses).to all(be_success)
    expect(intervals.size).to be > 100
    expect(IntervalLog.overlaps(intervals)).to eq(0)
  end
end
