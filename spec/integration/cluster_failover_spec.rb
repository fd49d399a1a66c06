# frozen_string_literal: true

require_relative "../support/cluster"

# A real cluster with a replica per master (cluster-node-timeout 1 s): a
# master is SIGKILLed while 1,000 locks are held, its replica takes over, and
# operations on its slots resume. Measured: seconds until the first
# successful acquire on its slots, and locks lost, without and with
# min_replicas_acked (WAIT). The killed master comes back as a replica.
RSpec.describe "Redis Cluster failover" do
  before(:all) { @cluster = RedisCluster.new(masters: 3, replicas: 1, name: "failover") }
  after(:all) { @cluster&.cleanup }

  before { @cluster.flushall }

  def configure(**settings)
    configure_both(:destination, destination: @cluster.url, timeout: 1.0, **settings)
  end

  # A master with a replica (a killed master comes back as its successor's).
  def victim
    @cluster.masters.find do |master|
      @cluster.live_nodes.any? do |node|
        role = node.redis.call("ROLE")
        role.first == "slave" && Integer(role[2]) == master.port
      end
    end
  end

  # Acquires `lock`. With min_replicas_acked, a WAIT that timed out on this
  # busy machine (500 ms) left the lock written but unconfirmed: asked again
  # with the same token, the acquire answers "already mine" and WAITs again,
  # until the replica has it. Only confirmed locks are counted as held.
  def hold(lock)
    5.times do
      return lock.acquire(120)
    rescue Locking::NotReplicatedError
      @unconfirmed += 1
    end
    false
  end

  def fail_over(min_replicas_acked:)
    @unconfirmed = 0
    configure(min_replicas_acked: min_replicas_acked)
    master = victim
    held = Array.new(1_000) { |i| Locking.new("held:#{min_replicas_acked}:#{i}", token: "t#{i}") }
    expect(held.map { |lock| hold(lock) }).to all(be(true))
    map = @cluster.slot_map
    on_victim = held.each_index.select { |i| @cluster.node_for("locking:held:#{min_replicas_acked}:#{i}", map) == master }
    expect(on_victim.size).to be > 200
    # A phase-3 release also cleans the source, whose connection then idles in the pool and is
    # taken by the next lease: an acquire WAITs only on the server it wrote (the source has no replica).
    extra = Locking.new("extra:#{min_replicas_acked}")
    expect([extra.acquire(5), extra.release, Locking.new("extra:#{min_replicas_acked}").acquire(5)]).to eq([true] * 3)

    killed_at = monotonic
    @cluster.kill(master)
    probe = held[on_victim.first]
    failed = 0
    recovered = nil
    until recovered || monotonic - killed_at > 30
      begin
        probe.locked? # the old master is dead: an answer comes from the promoted replica
        recovered = monotonic - killed_at
      rescue Locking::Error
        failed += 1
        sleep 0.01
      end
    end
    expect(recovered).not_to be_nil
    @cluster.wait_for_failover(master)
    lost = on_victim.count { |i| !held[i].locked? }
    stats = Locking.client.cluster_stats(:destination)
    puts "\n  Cluster failover (kill -9 of a master, cluster-node-timeout #{RedisCluster::NODE_TIMEOUT_MS} ms" \
         "#{', min_replicas_acked: 1' if min_replicas_acked.positive?}): first operation on its slots " \
         "#{format('%.1f', recovered)} s after the kill (#{failed} failed attempts meanwhile); locks lost " \
         "#{lost} of #{on_victim.size} held on it; slot map read #{stats[:refreshes]} times" \
         "#{"; #{@unconfirmed} WAITs timed out while taking the locks (asked again)" if @unconfirmed.positive?}"
    # Every other lock is intact, and every lock answers and releases on the new map.
    (held.each_index.to_a - on_victim).each { |i| expect(held[i].locked?).to be(true) }
    expect(held.each_with_index.count { |lock, i| lock.release || on_victim.include?(i) }).to eq(1_000)
    lost
  ensure
    @cluster.bring_back(master) if master && master.pid.nil?
  end

  # With dynamic phases every process reads the phase and writes its heartbeat on the master of the control keys.
  # While that master fails over, a process goes on in its cached phase (its last heartbeat still tells the fleet
  # where it acts), so the other masters' slots never notice.
  it "goes on in the cached phase while the master of the control keys fails over: 0 failures elsewhere" do
    # cluster-require-full-coverage yes (Redis's default): between the master's failure and its replica's
    # promotion every slot answers CLUSTERDOWN, which an operation retries within its timeout.
    control = @cluster.dynamic_in_phase_destination(self, timeout: 3.0)
    status, out, = locking_cli("status", source: source_server.url, destination: @cluster.url)
    expect(status).to eq(0)
    expect(out).to include("control keys ({locking-control}) are on master 127.0.0.1:#{control.port}")
    map = @cluster.slot_map
    elsewhere = Array.new(400) { |i| "elsewhere:#{i}" }.reject { |key| @cluster.node_for("locking:#{key}", map) == control }
    killed_at = monotonic
    @cluster.kill(control)
    done = failed = 0
    errors = []
    promoted_at = nil
    failover = Thread.new do
      @cluster.wait_for_failover(control)
      promoted_at = monotonic
    end
    until promoted_at && monotonic - promoted_at > 1
      elsewhere.sample(20).each do |key|
        lock = Locking.new(key)
        [lock.acquire(5), lock.release].each { |result| raise "#{key}: #{result}" unless result }
        done += 1
      rescue Locking::Error => e
        failed += 1
        errors << e.message if errors.size < 3
      end
    end
    failover.join
    puts "\n  The master of the control keys SIGKILLed, its replica promoted after " \
         "#{format('%.1f', promoted_at - killed_at)} s: #{done} acquire+release on the other masters' " \
         "slots meanwhile, #{failed} failed"
    expect(failed).to eq(0), errors.inspect
    # The phase is read from the promoted replica again.
    expect(Locking.new("after").acquire(5)).to be(true)
  ensure
    @cluster.bring_back(control) if control && control.pid.nil?
  end

  # A move that only the control master holds is lost if its replica is promoted before it has it: `phase set`
  # WAITs for that master's replicas, and warns (keeping the move) when they do not acknowledge it in time.
  it "waits for the control master's replica to have a phase move, and warns when it does not answer" do
    control = @cluster.dynamic_in_phase_destination(self, timeout: 3.0)
    move = lambda do
      @cluster.flushall
      status, out, err = locking_cli("phase", "set", "3", "--init", "--json", source: source_server.url,
                                                                              destination: @cluster.url)
      [status, JSON.parse(out), err]
    end
    status, result, err = move.call
    expect([status, result["moved"], result["replicated"], err]).to eq([0, true, { "acknowledged" => 1, "replicas" => 1 }, ""])

    replica = @cluster.live_nodes.find { |node| node.redis.call("ROLE").values_at(0, 2) == ["slave", control.port] }
    replica.freeze
    begin
      status, result, err = move.call
    ensure
      replica.thaw
    end
    expect([status, result["moved"], result["replicated"]]).to eq([0, true, { "acknowledged" => 0, "replicas" => 1 }])
    expect(err).to include("only 0 of the 1 replicas of the control keys' master acknowledged the move in time")
    expect(control.redis.get("{locking-control}:locking:phase")).to eq("3")
    @cluster.wait_for_replicas_of(control)
  end

  it "resumes on the promoted replica (without WAIT: some writes may not have reached it)" do
    fail_over(min_replicas_acked: 0)
  end

  it "loses no lock with min_replicas_acked: 1 (each acquire WAITs for the replica)" do
    expect(fail_over(min_replicas_acked: 1)).to eq(0)
  end
end
