# frozen_string_literal: true

require "json"
require_relative "../support/holding_proxy"
require_relative "../support/interval_log"

# Semaphore#acquire(seconds, auto_renew: true): the native renewer keeps the
# place (the semaphore's own renew, so every phase renews as its table says),
# and what each holder believes (have_lock?) never outlives its place.
RSpec.describe "Locking::Semaphore with auto_renew" do
  include PhaseHelpers

  let(:key) { "locking:exports" }
  let(:redis) { source_server.redis }

  def semaphore(token, limit: 1) = Locking::Semaphore.new("exports", limit: limit, token: token)

  # The place's ms left on `server`'s clock (nil: no live place for `token`).
  def ms_left(server, token)
    seconds, micros = server.redis.time
    score = server.redis.zscore(key, token)
    score && (score - ((seconds * 1000) + (micros / 1000))).round
  end

  def wait_until(seconds = 10)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + seconds
    until yield
      raise "not within #{seconds} s" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep 0.01
    end
  end

  before do
    Locking.reset_configuration!
    Locking.configure do |c|
      c.source = source_server.url
      c.timeout = 0.1 # a TTL of 300 ms leaves room for a renewal that times out (no warning)
    end
  end

  it "keeps the place past many TTLs, renewed in Redis, until release stops the renewer and frees it" do
    holder = semaphore("holder")
    renewed_before = Locking.stats[:renewed]
    expect(holder.acquire(0.3, auto_renew: true)).to be(true)
    expect(holder.inspect).to include("auto_renew")

    # Ten renewals of a 300 ms place: about a second, three TTLs and more.
    wait_until { Locking.stats[:renewed] >= renewed_before + 10 }
    expect(holder.have_lock?).to be(true)
    expect(holder.lost?).to be(false)
    expect(ms_left(source_server, "holder")).to be_between(1, 300)
    expect(semaphore("other").acquire(5)).to be(false) # the one place is still taken

    expect(holder.release).to be(true)
    expect(redis.exists?(key)).to be(false)
    expect(holder.have_lock?).to be(false)
    expect(Locking.stats[:held]).to eq(0)
    expect(semaphore("other").acquire(5)).to be(true)
  end

  it "turns lost? true and have_lock? false when the renewer finds the place gone, and frees nothing of another's" do
    holder = semaphore("holder")
    expect(holder.acquire(0.3, auto_renew: true)).to be(true)
    redis.zrem(key, "holder") # an operator's unlock, say
    expect(semaphore("other").acquire(30)).to be(true)

    wait_until { holder.lost?(report: false) }
    expect(holder.have_lock?).to be(false)
    expect(redis.zrange(key, 0, -1)).to eq(["other"]) # the renewer never re-took a place
    expect(holder.release).to be(false)
    expect(redis.zrange(key, 0, -1)).to eq(["other"])
  end

  it "renews for at most auto_renew: SECONDS, then lets the place's TTL run out" do
    holder = semaphore("holder")
    expect(holder.acquire(0.3, auto_renew: 0.5)).to be(true)
    wait_until { !redis.exists?(key) }
    expect(holder.have_lock?).to be(false)
  end

  it "starts renewing a place taken elsewhere with this token (Semaphore#auto_renew)" do
    expect(semaphore("job").acquire(0.3)).to be(true)
    later = semaphore("job").auto_renew(0.3)
    renewed_before = Locking.stats[:renewed]
    wait_until { Locking.stats[:renewed] >= renewed_before + 5 }
    expect(later.have_lock?).to be(true)
    expect(ms_left(source_server, "job")).to be_between(1, 300)
    later.release
    expect(redis.exists?(key)).to be(false)
  end

  it "keeps an auto-renewed place through a dynamic migration: the renewer takes it on the destination in phase 1" do
    expect(locking_cli("phase", "set", "0", "--init")[0]).to eq(0)
    configure_both(:dynamic, phase_cache_ttl: 0.05, timeout: 0.2)
    holder = semaphore("holder")
    expect(holder.acquire(0.5, auto_renew: true)).to be(true)
    expect(ms_left(destination_server, "holder")).to be_nil

    expect(locking_cli("phase", "advance", "--wait", "5")[0]).to eq(0) # 0 -> 1
    # The renewer's phase-1 renewal takes the place on the destination too, so the gate opens (the
    # place, renewed, never runs out on the source: without it, the gate would stay closed).
    wait_until { ms_left(destination_server, "holder") }
    expect(locking_cli("phase", "advance", "--wait", "5")[0]).to eq(0) # 1 -> 2, through the gate
    status, out, = locking_cli("gate", "--json")
    expect([status, JSON.parse(out)["source_only_places"]]).to eq([0, 0])
    expect(locking_cli("phase", "advance", "--wait", "5")[0]).to eq(0) # 2 -> 3

    # In phase 3 the renewer renews the destination's place; the source's runs out.
    wait_until { ms_left(source_server, "holder").nil? }
    renewed_before = Locking.stats[:renewed]
    wait_until { Locking.stats[:renewed] >= renewed_before + 3 }
    expect(holder.have_lock?).to be(true)
    expect(ms_left(destination_server, "holder")).to be_between(1, 500)
    expect(semaphore("other").acquire(5)).to be(false) # still one holder of one
    expect(holder.release).to be(true)
    expect(destination_server.redis.exists?(key)).to be(false)
  end

  # An interval checker over what holders believe: 4 processes, each through
  # its own proxy, take places of a semaphore of 2 with auto_renew and record
  # each interval in which have_lock? was true. The parent stops processes
  # (SIGSTOP) and cuts their proxies (a partition) for up to 3 TTLs at
  # random. What they believe is never more than 2 at once. The negative
  # control: the intervals from acquire to release (what a holder that
  # ignored have_lock? would believe) do exceed 2, so the faults did take
  # places from holders that were still inside their block.
  it "never lets more holders believe than the limit while holders are stopped and cut off" do
    limit = 2
    witness_url = source_server.url
    proxies = Array.new(4) { HoldingProxy.new(source_server.port) }
    stop_key = "stop-#{rand(1 << 30)}"
    witness = Redis.new(url: witness_url)
    pids = proxies.each_with_index.map do |proxy, index|
      fork do
        Locking.reset_configuration!
        Locking.configure do |c|
          c.source = proxy.url
          c.timeout = 0.15
        end
        own_witness = Redis.new(url: witness_url)
        IntervalLog.work(own_witness, batch: 20, name: "holder #{index}", stop: stop_key, within: 60) do |log|
          place = Locking::Semaphore.new("believers", limit: limit)
          from = Process.clock_gettime(Process::CLOCK_MONOTONIC)
          if IntervalLog.try(log) { place.acquire(0.4, auto_renew: true) }
            believed = from
            hold_until = from + rand(0.05..1.2)
            loop do
              now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
              break unless place.have_lock?

              believed = now
              break if now > hold_until

              sleep 0.002
            end
            log.record("believed", place.token, from, believed)
            IntervalLog.try(log) { place.release }
            log.record("inside", place.token, from, Process.clock_gettime(Process::CLOCK_MONOTONIC))
          else
            sleep rand(0.001..0.02)
          end
        end
      end
    end

    faults = 0
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 45
    loop do
      victim = rand(pids.size)
      if rand < 0.5
        Process.kill(:STOP, pids[victim])
        sleep rand(0.1..1.2)
        Process.kill(:CONT, pids[victim])
      else
        proxies[victim].hold!
        sleep rand(0.1..1.2)
        proxies[victim].let_go!
      end
      faults += 1
      sleep rand(0.1..0.4)
      next if faults < 20

      inside = IntervalLog.most_at_once(IntervalLog.read(witness)).fetch("inside", 0)
      break if inside > limit || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
    end
    witness.set(stop_key, 1)
    statuses = pids.map { |pid| Process.wait2(pid).last }
    pids = [] # reaped: never signal their numbers again

    intervals = IntervalLog.read(witness)
    most = IntervalLog.most_at_once(intervals)
    believed = intervals.count { |name, *| name == "believed" }
    puts "\n  #{faults} faults, #{believed} holds: at most #{most['believed']} believed at once " \
         "(limit #{limit}); inside their blocks, at most #{most['inside']}"
    expect(statuses).to all(be_success)
    expect(believed).to be > 20
    expect(most.fetch("believed")).to be_between(1, limit)
    expect(most.fetch("inside")).to be > limit # the negative control: the faults did take places
  ensure
    Array(pids).each do |pid|
      Process.kill(:CONT, pid)
      Process.kill(:KILL, pid)
      Process.wait(pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end
    Array(proxies).each(&:close)
  end
end
