# frozen_string_literal: true

require_relative "../support/cluster"

# Replies through redirects, on a real cluster whose slots move under the
# product: renewal batches (one pipeline per master, sent to all before any
# reply is read) must hand each lock its own reply while MOVED and ASK land
# in the middle of them, and backfills into and out of a cluster must not
# fail while `redis-cli --cluster reshard` runs. A slot left migrating stops
# a backfill from a cluster source by itself.
RSpec.describe "Redis Cluster redirects" do
  include_context "a cluster of 3 masters", "redirects"

  # Writes `value` into `key` as another process would (a token that is not
  # the holder's), following the cluster's redirects by hand.
  def steal(key, value)
    target = cluster.node_for(key)
    20.times do
      return target.redis.set(key, value, px: 60_000)
    rescue Redis::CommandError => e
      case e.message
      when /\AMOVED \d+ [^:]+:(\d+)/ then target = cluster.node_at(Regexp.last_match(1))
      when /\AASK \d+ [^:]+:(\d+)/
        asked = cluster.node_at(Regexp.last_match(1))
        return asked.redis.pipelined do |pipeline|
          pipeline.call("ASKING")
          pipeline.set(key, value, px: 60_000)
        end.last
      when /\ATRYAGAIN/ then sleep 0.01
      else raise
      end
    end
    raise "could not write #{key} through the redirects"
  end

  # Slots moved back and forth between masters, a reshard at a time, until
  # `rounds` are done: [thread, rounds done].
  def reshard_steps(rounds:, slots:)
    done = []
    thread = Thread.new do
      masters = cluster.masters
      rounds.times do |round|
        from, to = masters.rotate(round).first(2)
        cluster.reshard(from: from, to: to, slots: slots)
        done << round
      end
    end
    [thread, done]
  end

  it "hands every renewal its own reply while slots move: renewed means held by its token, lost means not" do
    configure_both(:destination, destination: cluster.url, timeout: 1.0)
    cluster.load(Array.new(20_000) { |i| ["filler:#{i}", "x"] })
    locks = Array.new(1_200) { |i| Locking.new("renewed:#{i}", token: "t#{i}") }
    # A TTL above 2 x timeout, as the product asks: a renewal that waits out its timeout still lands in time.
    expect(locks.map { |lock| lock.acquire(3.0, auto_renew: true) }).to all(be(true))
    # Before each reshard, the thief takes some locks: the renewal batches that meet the moving slots then
    # carry refusals (0) among the renewals (1), so a reply handed to the wrong lock shows.
    stolen = []
    masters = cluster.masters
    5.times do |round|
      (locks - stolen).sample(60).each do |lock|
        steal(prefixed(lock.lock_key), "thief")
        stolen << lock
      end
      from, to = masters.rotate(round).first(2)
      cluster.reshard(from: from, to: to, slots: 800)
    end

    # Wait for the state: the renewer has seen every theft.
    deadline = monotonic + 15
    sleep 0.05 until stolen.all?(&:lost?) || monotonic > deadline
    map = cluster.slot_map
    believed = lambda do |lock|
      key = prefixed(lock.lock_key)
      [lock.lost?, lock.have_lock?, cluster.node_for(key, map).redis.get(key)]
    end
    stolen.each { |lock| expect(believed.(lock)).to eq([true, false, "thief"]), lock.lock_key }
    # A lock of ours may still expire when a loaded machine delays its renewals past the TTL: then it must be
    # reported lost and be gone. A reply handed to the wrong lock shows as lost while Redis holds its token.
    kept = (locks - stolen).count do |lock|
      lost, held, value = believed.(lock)
      expect([held, value]).to eq(lost ? [false, nil] : [true, lock.token]), "#{lock.lock_key}: lost? #{lost}"
      !lost
    end
    expect(kept).to be >= (locks - stolen).size * 0.9
    puts "\n  Renewals through 5 reshards: #{stolen.size} stolen locks all reported lost; " \
         "#{kept} of #{(locks - stolen).size} of ours kept (the rest reported lost and gone)"
    stats = Locking.client.cluster_stats(:destination)
    expect(stats[:moved] + stats[:asked]).to be > 0
    expect(Locking.stats[:last_error].to_s).not_to include("unexpected reply")
    expect((locks - stolen).reject(&:lost?).map(&:release)).to all(be(true))
  end

  context "with a standalone server on the other side" do
    def other = TestServers.get(:destination)

    before { other.redis.flushdb }

    it "backfills a standalone source into the cluster while 1,000 slots move: 0 failed" do
      source = TestServers.get(:source)
      source.redis.flushdb
      source.redis.pipelined do |pipeline|
        20_000.times { |i| pipeline.set(prefixed("in:#{i}"), "t#{i}", px: 600_000) }
      end
      cluster.load(Array.new(20_000) { |i| ["filler:#{i}", "x"] })
      thread, = reshard_steps(rounds: 2, slots: 500)
      status, out, err = locking_cli("backfill", "--batch", "500", source: source.url, destination: cluster.url)
      thread.join
      expect(status).to eq(0), out + err
      expect(out).to include("20,000 copied").and include(" 0 failed")
      expect(cluster.keys_by_master("locking:in:*").values.sum(&:size)).to eq(20_000)
      expect(cluster.get(prefixed("in:123"))).to eq("t123")
    end

    it "backfills out of the cluster while 1,000 slots move: 0 failed, every lock copied" do
      pairs = Array.new(20_000) { |i| [prefixed("out:#{i}"), "t#{i}"] }
      cluster.load(pairs)
      thread, = reshard_steps(rounds: 2, slots: 500)
      status, out, err = locking_cli("backfill", "--batch", "500", source: cluster.url, destination: other.url)
      thread.join
      expect(status).to eq(0), out + err
      expect(out).to include(" 0 failed")
      expect(other.redis.keys("locking:out:*").size).to eq(20_000)
      pairs.sample(100).each { |key, token| expect(other.redis.get(key)).to eq(token) }
    end

    it "stops a backfill from a cluster source whose slot stays migrating, names it, and gives up its lease" do
      cluster.load(Array.new(20) { |i| [prefixed("stuck:#{i}"), "t#{i}"] })
      from, to = cluster.masters.first(2)
      slot = cluster.slot_map.find { |_, node| node == from }.first.first
      to.redis.call("CLUSTER", "SETSLOT", slot, "IMPORTING", cluster.node_id(from))
      from.redis.call("CLUSTER", "SETSLOT", slot, "MIGRATING", cluster.node_id(to))
      begin
        status, out, err = locking_cli("backfill", source: cluster.url, destination: other.url)
        expect(status).to eq(3)
        expect(out + err).to include("stayed unsettled through 12 restarts", "[#{slot}->-", "redis-cli --cluster fix")
        expect(out.scan("starts over").size).to eq(12)
        # The lease is given up: a new backfill may start at once.
        expect(other.redis.exists?("{locking-control}locking:backfill")).to be(false)
      ensure
        [from, to].each { |node| node.redis.call("CLUSTER", "SETSLOT", slot, "STABLE") }
      end
      status, out, err = locking_cli("backfill", source: cluster.url, destination: other.url)
      expect(status).to eq(0), out + err
      expect(other.redis.keys("locking:stuck:*").size).to eq(20)
    end
  end

  # Without a replica the control keys are gone with their master: a process goes on in its cached phase while its
  # last heartbeat lives (max(10 s, 4 x (phase_cache_ttl + timeout)), less one phase cache, two timeouts and the
  # drift bound: 7.7 s here), then refuses. (With
  # cluster-require-full-coverage yes, Redis itself answers CLUSTERDOWN on every slot once a master is lost.)
  context "when the master of the control keys dies without a replica" do
    before(:all) { @lonely = RedisCluster.new(masters: 3, name: "control-down", full_coverage: false) }
    after(:all) { @lonely&.cleanup }

    it "goes on in the cached phase on the other masters' slots until its heartbeat lapses, then refuses" do
      control = @lonely.dynamic_in_phase_destination(self, timeout: 1.0)
      map = @lonely.slot_map
      elsewhere = Array.new(200) { |i| "elsewhere:#{i}" }.reject { |key| @lonely.node_for("locking:#{key}", map) == control }
      killed_at = monotonic
      @lonely.kill(control)
      done = 0
      refused = nil
      until refused || monotonic - killed_at > 20
        lock = Locking.new(elsewhere.sample)
        begin
          expect([lock.acquire(5), lock.release]).to eq([true, true])
          done += 1
        rescue Locking::PhaseError => e
          refused = e
        end
      end
      worked = monotonic - killed_at
      puts "\n  The master of the control keys SIGKILLed, no replica: #{done} acquire+release on the other " \
           "masters' slots for #{format('%.1f', worked)} s, then refused"
      expect(refused&.message).to include("heartbeat")
      expect(worked).to be_between(6.9, 8.4)
      expect(done).to be > 100
    end
  end
end
