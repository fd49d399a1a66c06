# frozen_string_literal: true

require_relative "../support/sentinel"

# Sentinel with real processes: three `redis-server --sentinel`, a master
# and a replica, started once for this file. Each failover example kills the
# master with SIGKILL, waits for the sentinels to promote the replica, and
# brings the old master back as the new replica, so the set is whole again
# for the next example.
RSpec.describe "Redis Sentinel" do
  before(:all) { @set = SentinelSet.new }
  after(:all) { @set&.cleanup }

  let(:set) { @set }

  before { set.current_master.redis.flushall }

  after { Locking.reset_configuration! }

  def configure(source, **more)
    Locking.reset_configuration!
    Locking.configure do |c|
      c.source = source
      c.phase = :source
      c.timeout = 1.0
      more.each { |name, value| c.public_send(:"#{name}=", value) }
    end
  end

  def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  it "finds the master through the sentinels, in each settings form, and writes the lock there" do
    redis_object = Redis.new(url: "redis://#{SentinelSet::MASTER_NAME}", role: :master,
                             sentinels: set.sentinel_ports.map { |port| { host: "127.0.0.1", port: port } })
    [set.settings, set.url, redis_object].each do |form|
      configure(form)
      lock = Locking.new("job")
      expect(lock.acquire(30)).to be(true)
      expect(set.current_master.redis.get("locking:job")).to eq(lock.token)
      expect(lock.release).to be(true)
      expect(set.current_master.redis.exists("locking:job")).to eq(0)
    end
  end

  it "says so when no sentinel knows the master's name, and when no sentinel answers" do
    configure(set.settings(name: "nosuchmaster"))
    expect { Locking.new("job").acquire(5) }
      .to raise_error(Locking::ConnectionError, /no sentinel knows a master named "nosuchmaster"/)
    dead = [RedisServer.free_port, RedisServer.free_port]
    configure({ name: "x", sentinels: dead.map { |port| "redis://127.0.0.1:#{port}" } })
    expect { Locking.new("job").acquire(5) }
      .to raise_error(Locking::ConnectionError, /no sentinel reachable \(127.0.0.1:#{dead[0]}: .*127.0.0.1:#{dead[1]}/)
  end

  it "runs the operator's status through the sentinels" do
    configure(set.url)
    Locking.new("held").acquire(60)
    status, out, = locking_cli("status", source: set.url, destination: nil)
    expect(status).to eq(0)
    expect(out).to match(%r{redis\+sentinel://.*/locksmaster/0 +1 lock keys})
  end

  it "reads Sentinel settings from a YAML file (exe/locking --config)" do
    configure(set.url)
    Locking.new("held").acquire(60)
    file = File.join(Dir.mktmpdir("locking-yaml-"), "locking.yml")
    File.write(file, <<~YAML)
      source:
        name: #{SentinelSet::MASTER_NAME}
        role: master
        sentinels:
      #{set.sentinel_ports.map { |port| "    - host: 127.0.0.1\n      port: #{port}" }.join("\n")}
    YAML
    out = StringIO.new
    status = Locking::CLI.new(["status", "--config", file, "--no-progress"], out: out, err: StringIO.new).run
    expect(status).to eq(0)
    expect(out.string).to match(%r{source +redis\+sentinel://127.0.0.1:\d+,127.0.0.1:\d+,127.0.0.1:\d+/locksmaster/0 +1 lock keys})
  ensure
    FileUtils.rm_rf(File.dirname(file)) if file
  end

  # Acquires distinct locks from 4 threads until exactly `count` are held,
  # and SIGKILLs the master (with its replication link) the moment the last
  # one returns. Returns the keys held, and the killed master.
  def hold_then_kill(count)
    held = []
    mutex = Mutex.new
    reserved = 0
    threads = Array.new(4) do |t|
      Thread.new do
        index = 0
        while mutex.synchronize { reserved < count && (reserved += 1) }
          key = "held-#{t}-#{index += 1}"
          if Locking.new(key).acquire(120)
            mutex.synchronize { held << key }
          else
            mutex.synchronize { reserved -= 1 }
          end
        end
      end
    end
    threads.each { |thread| expect(thread.join(60)).to be_truthy }
    [held, set.kill_master]
  end

  # Tries acquires (a new key each time) until one succeeds: [seconds since `from`, failed attempts].
  def first_success_after(from)
    failures = 0
    loop do
      # Each attempt uses a key nobody holds: false would be a wrong answer.
      raise "an acquire found its new key held" unless Locking.new("after-failover-#{failures}").acquire(30)

      return [now - from, failures]
    rescue Locking::ConnectionError, Locking::CommandError
      failures += 1
      raise "no success within 60 s of the kill (#{failures} failed attempts)" if now > from + 60

      sleep 0.02
    end
  end

  def lost(held)
    master = set.current_master.redis
    held.each_slice(500).sum { |keys| keys.size - master.exists(*keys.map { |k| "locking:#{k}" }) }
  end

  it "follows a failover after kill -9 of the master, with no restart, and measures the locks lost (no WAIT)" do
    configure(set.settings)
    before_failover = Locking.new("before")
    expect(before_failover.acquire(120)).to be(true)
    held, old = hold_then_kill(1000)
    seconds, failures = first_success_after(now)
    set.wait_for_failover(old)
    puts "\n  Sentinel failover (kill -9; replica #{SentinelSet::REPLICATION_LAG_MS} ms behind): first successful acquire " \
         "#{seconds.round(2)} s after the kill (#{failures} failed attempts meanwhile); locks lost without " \
         "min_replicas_acked: #{lost(held)} of #{held.size} held"
    expect(set.current_master).not_to eq(old)
    # A release runs a script the new master has never seen: NOSCRIPT, then loaded.
    expect(before_failover.release).to be(true)
    expect(set.current_master.redis.exists("locking:before")).to eq(0)
    expect(seconds).to be < 30
  ensure
    set.bring_back(old) if old
  end

  it "follows a switch-over (SENTINEL FAILOVER, both servers alive): the old master's connections are let go" do
    configure(set.settings)
    held = Locking.new("held-across")
    expect(held.acquire(120)).to be(true)
    3.times { |i| Locking.new("warm-#{i}").tap { |lock| lock.acquire(5) && lock.release } } # pooled connections
    old, master = set.switch_over
    expect(master).not_to eq(old)
    seconds, failures = first_success_after(now)
    # The lock taken before is on the new master, and its token-checked release runs there.
    expect(held.release).to be(true)
    expect(master.redis.exists("locking:held-across")).to eq(0)
    expect(old.redis.call("ROLE").first).to eq("slave")
    puts "\n  Sentinel switch-over: first successful acquire after it #{seconds.round(3)} s (#{failures} failed attempts)"
  end

  it "loses no lock across a failover with min_replicas_acked: 1 (WAIT after each acquire)" do
    configure(set.settings, min_replicas_acked: 1)
    held, old = hold_then_kill(1000)
    set.wait_for_failover(old)
    lost_count = lost(held)
    puts "\n  Sentinel failover (kill -9; replica #{SentinelSet::REPLICATION_LAG_MS} ms behind) with min_replicas_acked: 1: " \
         "locks lost #{lost_count} of #{held.size} held"
    expect(lost_count).to eq(0)
    # With no replica left to acknowledge, an acquire says so (and the lock stays written).
    lock = Locking.new("unreplicated")
    expect { lock.acquire(30) }.to raise_error(Locking::NotReplicatedError)
    expect(set.current_master.redis.get("locking:unreplicated")).to eq(lock.token)
  ensure
    set.bring_back(old) if old
  end

  it "raises NotReplicatedError when too few replicas acknowledge, leaving the lock written" do
    configure(source_server.url, min_replicas_acked: 1)
    Locking.configure { |c| c.timeout = 0.5 }
    source_server.redis.flushall
    lock = Locking.new("job")
    expect { lock.acquire(30) }.to raise_error(Locking::NotReplicatedError, /only 0 of the 1 replicas/)
    expect(source_server.redis.get("locking:job")).to eq(lock.token)
    source_server.redis.flushall
  end
end
