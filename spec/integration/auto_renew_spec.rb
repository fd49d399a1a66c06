# frozen_string_literal: true

require "active_support/notifications"
require "active_job"

# The watchdog (auto_renew): locks that live as long as their holder, on
# real servers, checked by what Redis holds.
RSpec.describe "auto_renew (the native renewer)" do
  def configure(phase = :source, **more) = configure_both(phase, **more)

  before { configure }

  after { Locking.reset_configuration! }

  it "keeps a lock 10 times past its TTL while the only Ruby thread spins, holding the GVL" do
    lock = Locking.new("spin")
    expect(lock.acquire(0.3, auto_renew: true)).to be(true)
    started = monotonic
    spins = 0
    spins += 1 while monotonic - started < 3.0 # no sleep, no IO: the GVL is never given up
    expect(source.get("locking:spin")).to eq(lock.token)
    expect(source.pttl("locking:spin")).to be_between(1, 300)
    expect(lock.have_lock?).to be(true)
    expect(lock.lost?).to be(false)
    expect(Locking.stats[:renewed]).to be >= 9
    expect(lock.release).to be(true)
    expect(source.exists("locking:spin")).to eq(0)
    # Released: no renewal brings it back.
    sleep 0.3
    expect(source.exists("locking:spin")).to eq(0)
    expect(Locking.stats[:held]).to eq(0)
  end

  it "frees a SIGKILLed holder's lock within its TTL" do
    reader, writer = IO.pipe
    pid = fork do
      reader.close
      Locking.reset_configuration!
      Locking.configure { |c| c.source = source_server.url }
      lock = Locking.new("killed") # referenced while it sleeps: a collected one is renewed no more
      lock.acquire(1.0, auto_renew: true)
      writer.puts("held")
      sleep 60
      exit!(0)
    end
    writer.close
    expect(reader.gets).to eq("held\n")
    # Renewed past its TTL while the holder lives.
    sleep 1.5
    expect(source.exists("locking:killed")).to eq(1)
    Process.kill(:KILL, pid)
    killed_at = monotonic
    Process.wait(pid)
    freed = wait_for(3) { source.exists("locking:killed").zero? }
    expect(freed).to be(true)
    expect(monotonic - killed_at).to be <= 1.1
  end

  it "leaves an auto-renewed lock to expire within its TTL when its process exits normally, and exits at once" do
    pid = fork do
      Locking.reset_configuration!
      Locking.configure { |c| c.source = source_server.url }
      lock = Locking.new("exiting")
      lock.acquire(0.8, auto_renew: true)
      sleep 1.0 # renewed past its TTL
      exit(0) # at_exit handlers run; the renewer thread does not hold the exit up
    end
    exited = Timeout.timeout(5) { Process.wait2(pid).last }
    exited_at = monotonic
    expect(exited.exitstatus).to eq(0)
    expect(source.exists("locking:exiting")).to eq(1)
    expect(wait_for(3) { source.exists("locking:exiting").zero? }).to be(true)
    expect(monotonic - exited_at).to be <= 0.9
  end

  it "marks the lock lost when it was deleted and taken by another token, and never touches that key" do
    lock = Locking.new("taken")
    expect(lock.acquire(0.6, auto_renew: true)).to be(true)
    source.del("locking:taken")
    source.set("locking:taken", "someone-else", px: 5_000)
    expect(wait_for(2) { lock.lost? }).to be(true)
    expect(lock.have_lock?).to be(false)
    expect(source.get("locking:taken")).to eq("someone-else")
    # Never extended: its TTL only ran down.
    sleep 0.5
    expect(source.pttl("locking:taken")).to be < 4_600
    expect(lock.release).to be(false)
    expect(source.get("locking:taken")).to eq("someone-else")
  end

  it "reports a lost lock once as lost.locking" do
    events = []
    subscriber = ActiveSupport::Notifications.subscribe("lost.locking") { |*, payload| events << payload }
    lock = Locking.new("reported")
    lock.acquire(0.3, auto_renew: true)
    source.del("locking:reported")
    wait_for(2) { lock.lost? }
    lock.lost?
    lock.have_lock?
    expect(events).to eq([{ lock_key: "reported", token: lock.token }])
  ensure
    ActiveSupport::Notifications.unsubscribe(subscriber)
  end

  it "renews 10,000 locks in one process on time, in a few batches" do
    locks = Array.new(10_000) { |i| Locking.new("many-#{i}") }
    locks.each { |lock| expect(lock.acquire(2.0, auto_renew: true)).to be(true) }
    before = Locking.stats
    sleep 6.5 # 3 TTLs: about 9 periods
    after = Locking.stats
    keys = locks.map { |lock| "locking:#{lock.lock_key}" }
    present = keys.each_slice(1000).sum { |slice| source.exists(*slice) }
    expect(present).to eq(10_000)
    ttls = keys.first(200).map { |key| source.pttl(key) }
    expect(ttls.min).to be > 500 # renewed within the last ~2/3 of a period
    renewed = after[:renewed] - before[:renewed]
    batches = after[:batches] - before[:batches]
    expect(renewed).to be >= 10_000 * 8
    expect(batches).to be <= renewed / 1000
    cpu_us = (after[:cpu_ms] - before[:cpu_ms]) * 1000 / renewed
    puts "\n  10,000 auto-renewed locks (TTL 2 s) for 6.5 s: #{renewed} renewals in #{batches} batches; " \
         "lag p50 #{after[:lag_p50_ms]} ms, p99 #{after[:lag_p99_ms]} ms, max #{after[:lag_max_ms]} ms; " \
         "renewer CPU #{cpu_us.round(2)} µs per renewal"
    expect(after[:failed]).to eq(before[:failed])
    locks.each(&:release)
    expect(source.dbsize).to eq(0)
  end

  it "renews nothing of its parent's in a forked child, and the parent's renewals go on" do
    lock = Locking.new("parent")
    expect(lock.acquire(0.5, auto_renew: true)).to be(true)
    child = Forked.new do
      lock = Locking.new("child")
      held_at_start = Locking.stats[:held]
      lock.acquire(0.5, auto_renew: true)
      sleep 1.2
      [held_at_start, Locking.stats[:held], lock.have_lock?, lock.release]
    end
    expect(child.result).to eq([0, 1, true, true])
    sleep 0.8 # the parent's lock outlives its TTL again
    expect(source.get("locking:parent")).to eq(lock.token)
    expect(Locking.stats[:held]).to eq(1)
    expect(lock.release).to be(true)
  end

  it "renews both copies in phase 1 (dual)" do
    configure(:dual)
    lock = Locking.new("dual")
    expect(lock.acquire(0.4, auto_renew: true)).to be(true)
    sleep 1.5
    expect([source.get("locking:dual"), destination.get("locking:dual")]).to eq([lock.token, lock.token])
    expect([source.pttl("locking:dual"), destination.pttl("locking:dual")]).to all(be_between(1, 400))
    expect(lock.release).to be(true)
    expect([source.exists("locking:dual"), destination.exists("locking:dual")]).to eq([0, 0])
    sleep 0.5 # no renewal after the release brings a copy back
    expect([source.exists("locking:dual"), destination.exists("locking:dual")]).to eq([0, 0])
  end

  it "follows dynamic phase changes while renewing: the copy appears, the gate passes, the lock stays held" do
    configure(:dynamic, phase_cache_ttl: 0.05)
    expect(locking_cli("phase", "set", "0", "--init")[0]).to eq(0)
    lock = Locking.new("moving")
    expect(lock.acquire(0.9, auto_renew: true)).to be(true)
    expect(destination.exists("locking:moving")).to eq(0)
    expect(wait_for { fleet_phases.any? }).to be_truthy
    expect(locking_cli("phase", "advance", "--wait", "5")[0]).to eq(0) # 0 -> 1
    # A renewal in phase 1 mirrors the lock onto the destination.
    expect(wait_for(3) { destination.get("locking:moving") == lock.token }).to be(true)
    status, out, = locking_cli("phase", "advance", "--wait", "5") # 1 -> 2: nothing source-only
    expect(status).to eq(0), out
    expect(locking_cli("phase", "advance", "--wait", "5")[0]).to eq(0) # 2 -> 3
    sleep 2 # more than 2 TTLs in phase 3
    expect(destination.get("locking:moving")).to eq(lock.token)
    expect(destination.pttl("locking:moving")).to be_between(1, 900)
    expect(lock.lost?).to be(false)
    expect(lock.release).to be(true)
    expect(destination.exists("locking:moving")).to eq(0)
  end

  it "with_lock(auto_renew: true) holds the lock through a block longer than its TTL" do
    seen = []
    Locking.with_lock("block", ttl: 0.3, auto_renew: true) do |lock|
      4.times do
        sleep 0.25
        seen << source.get("locking:block")
      end
      expect(lock.have_lock?).to be(true)
    end
    expect(seen.uniq.size).to eq(1)
    expect(seen.first).not_to be_nil
    expect(source.exists("locking:block")).to eq(0)
  end

  it "takes auto_renew in unique_lock where the lock lives through perform, with :while_executing's default on" do
    job = lambda do |strategy, **options|
      Class.new(ActiveJob::Base) { include Locking::UniqueJob }.tap { |klass| klass.unique_lock(strategy, ttl: 5, **options) }
    end
    expect(job.(:while_executing).locking_options[:auto_renew]).to be(true)
    expect(job.(:while_executing, auto_renew: false).locking_options[:auto_renew]).to be(false)
    expect(job.(:until_executed).locking_options[:auto_renew]).to be(false)
    expect(job.(:until_executed, auto_renew: true).locking_options[:auto_renew]).to be(true)
    expect { job.(:until_executing, auto_renew: true) }.to raise_error(ArgumentError, /does not live through perform/)
    expect { job.(:until_expired, auto_renew: true) }.to raise_error(ArgumentError, /does not live through perform/)
    expect { job.(:until_executed, auto_renew: "yes") }.to raise_error(ArgumentError, /true, false or a positive/)
    expect(job.(:until_executed, auto_renew: 7200).locking_options[:auto_renew]).to eq(7200.0)
    expect { job.(:until_executed, auto_renew: -1) }.to raise_error(ArgumentError, /got -1/)
  end
end
