# frozen_string_literal: true

require_relative "../support/cluster"
require_relative "../support/tls"

# A real Redis Cluster (3 masters, redis-cli --cluster create) as the
# destination and as the source. Started once for the file; the specs that
# kill a master start a cluster of their own.
RSpec.describe "Redis Cluster" do
  include_context "a cluster of 3 masters", "cluster"

  # A client as the operator tools use it (phase 1, both servers).
  def operator_client(source:, destination:)
    Locking::Client.build(Locking::Configuration.new({}).tap do |c|
      c.source = source
      c.destination = destination
      c.phase = :dual
    end)
  end

  def configure(phase:, destination: @cluster.settings, **settings)
    configure_both(phase, destination: destination, **settings)
  end

  context "as the destination" do
    def destination_server = @destination_server ||= ClusterAsServer.new(@cluster)

    it "hashes keys to slots as Redis does (CLUSTER KEYSLOT), hash tags included" do
      keys = ["foo", "{user1000}.following", "a{}b", "x{{y}}z", "locking:job:1", "\xFF\x00binary".b] +
             Array.new(200) { Random.bytes(rand(1..40)) }
      keys.each { |key| expect(RedisCluster.slot(key)).to eq(cluster.slot_of(key)), key.inspect }
    end

    it "spreads locks over every master, each on the master of its hash slot" do
      configure(phase: :destination)
      locks = Array.new(300) { |i| Locking.new("job:#{i}", token: "token-#{i}") }
      expect(locks.map { |lock| lock.acquire(30) }).to all(be(true))

      by_master = cluster.keys_by_master("locking:*")
      expect(by_master.size).to eq(3)
      expect(by_master.values.map(&:size)).to all(be > 50)
      by_master.each do |node, keys|
        keys.each { |key| expect(cluster.node_for(key)).to eq(node) } # no key on another master
      end
      locks.each_with_index do |_, i|
        node = cluster.node_for(prefixed("job:#{i}"))
        expect(node.redis.get(prefixed("job:#{i}"))).to eq("token-#{i}")
        expect(node.redis.pttl(prefixed("job:#{i}"))).to be_between(29_000, 30_000)
      end
      expect(source_server.redis.keys("locking:*")).to eq([])

      expect(locks.map(&:locked?)).to all(be(true))
      expect(Locking.new("job:7", token: "other").acquire(30)).to be(false)
      expect(locks.map(&:release)).to all(be(true))
      expect(cluster.keys_by_master("locking:*").values.flatten).to eq([])
    end

    it "keeps the control keys on one master (one hash tag) and reads the phase from it" do
      configure(phase: :dynamic)
      status, = locking_cli("phase", "set", "1", "--init", destination: cluster.url)
      expect(status).to eq(0)
      control = cluster.keys_by_master("{locking-control}*").reject { |_, keys| keys.empty? }
      expect(control.size).to eq(1)
      expect(Locking.new("job:a").acquire(10)).to be(true)
      expect(source_server.redis.get("locking:job:a")).not_to be_nil # phase 1: both servers
      expect(cluster.get("locking:job:a")).to eq(source_server.redis.get("locking:job:a"))
    end

    it "warns about a key_prefix with a hash tag, which would pin every lock to one slot" do
      messages = []
      allow(Locking).to receive(:server_warning) { |message| messages << message }
      configure(phase: :destination, key_prefix: "{locks}:")
      expect(Locking.new("job:1").acquire(10)).to be(true)
      expect(messages.join("\n")).to include("hash tag {locks}", "one master")
      expect(cluster.keys_by_master("{locks}:*").values.reject(&:empty?).size).to eq(1)
    end

    it "renews auto_renew locks on every master, in one pipeline per master" do
      configure(phase: :dual)
      locks = Array.new(300) { |i| Locking.new("renewed:#{i}") }
      locks.each { |lock| expect(lock.acquire(0.5, auto_renew: true)).to be(true) }
      # Three TTLs later, every lock is still held on both servers: renewed, not re-taken.
      deadline = monotonic + 10
      sleep 0.05 until Locking.stats[:renewed] >= 900 || monotonic > deadline
      expect(Locking.stats[:renewed]).to be >= 900
      expect(Locking.stats[:lost]).to eq(0)
      locks.each do |lock|
        key = prefixed(lock.lock_key)
        expect(cluster.get(key)).to eq(lock.token)
        expect(source_server.redis.get(key)).to eq(lock.token)
        expect(cluster.pttl(key)).to be_between(1, 500)
      end
      expect(locks.map(&:release)).to all(be(true))
      expect(cluster.keys_by_master("locking:*").values.flatten).to eq([])
    end

    it "pages the dashboard's lock list through every master" do
      configure(phase: :destination)
      Array.new(250) { |i| Locking.new("listed:#{i}").acquire(30) }
      cursor = 0
      listed = []
      pages = 0
      loop do
        cursor, page = Locking.client.lock_page(:destination, cursor, "listed:*", 40)
        listed.concat(page.map(&:first))
        pages += 1
        break if cursor.zero? || pages > 100
      end
      expect(listed.sort).to eq(Array.new(250) { |i| "listed:#{i}" }.sort)
    end

    it "reads a cluster from config/locking.yml's form (cluster: seeds; an unset password is none) and the environment" do
      configure(phase: :destination)
      Locking.new("yaml:1").acquire(60)
      Dir.mktmpdir do |dir|
        path = File.join(dir, "locking.yml")
        File.write(path, <<~YAML)
          production:
            source: #{source_server.url}
            destination:
              cluster:
                - 127.0.0.1:#{cluster.nodes.first.port}
              password: <%= ENV["LOCKING_TEST_UNSET_PASSWORD"] %>
            phase: destination
        YAML
        out = StringIO.new
        status = Locking::CLI.new(["status", "--config", path], out: out, err: out).run
        expect(status).to eq(0), out.string
        expect(out.string).to match(%r{destination\s+redis\+cluster://127\.0\.0\.1:#{cluster.nodes.first.port}\s+1 lock keys})
      end
      env = { "LOCKING_SOURCE_URL" => source_server.url, "LOCKING_DESTINATION_URL" => cluster.url,
              "LOCKING_PHASE" => "destination" }
      expect(Locking::Configuration.new(env).destination).to eq(cluster.url)
    end

    context "in each phase, with a standalone source" do
      include_examples "the phase truth table"
    end

    context "with adjacent phases side by side" do
      include_examples "adjacent phases under contention"
    end

    it "backfills a standalone source into the cluster; gate and status walk every master" do
      pairs = Array.new(5_000) { |i| [prefixed("bulk:#{i}"), "t#{i}"] }
      source_server.bulk_load(pairs.map { |key, token| ["SET", key, token, "PX", "600000"] })
      status, out, = locking_cli("gate", destination: cluster.url)
      expect(status).to eq(1)
      expect(out).to include("source-only locks: 5,000")

      status, out, = locking_cli("backfill", destination: cluster.url)
      expect(status).to eq(0), out
      expect(out).to match(/done: 5,000 scanned, 5,000 copied/)
      by_master = cluster.keys_by_master("locking:*")
      expect(by_master.values.map(&:size).sum).to eq(5_000)
      expect(by_master.values.map(&:size)).to all(be > 1_000)
      pairs.sample(200).each do |key, token|
        expect(cluster.get(key)).to eq(token)
        expect(cluster.pttl(key)).to be_within(5_000).of(source_server.redis.pttl(key))
      end

      status, out, = locking_cli("gate", destination: cluster.url)
      expect(status).to eq(0), out
      expect(out).to include("source-only locks: 0", "OPEN")
      status, out, = locking_cli("status", destination: cluster.url)
      expect(status).to eq(0)
      expect(out).to match(/destination\s+#{Regexp.escape(cluster.url)}\s+5,000 lock keys/)
    end
  end

  context "as the source (the jobs Redis is a cluster)" do
    def source_server = @source_server ||= ClusterAsServer.new(@cluster)
    def destination_server = TestServers.get(:destination)

    it "backfills every master's locks into a standalone destination, resumable; gate and status agree" do
      pairs = Array.new(6_000) { |i| [prefixed("src:#{i}"), "t#{i}"] }
      cluster.load(pairs)
      expect(cluster.keys_by_master("locking:*").values.map(&:size)).to all(be > 1_000)

      status, out, = locking_cli("status", source: cluster.url)
      expect(status).to eq(0)
      expect(out).to match(/source\s+#{Regexp.escape(cluster.url)}\s+6,000 lock keys/)

      # One batch, then the rest from the saved position (a position names a master and its cursor).
      tool = operator_client(source: cluster.url, destination: destination_server.url)
      first = tool.backfill_batch(0, count: 500, pages: 2)
      expect(first[:cursor]).not_to eq(0)
      expect(first[:copied]).to be_between(1, 5_000) # COUNT is a hint
      rest = 0
      cursor = first[:cursor]
      until cursor.zero?
        report = tool.backfill_batch(cursor, count: 500, pages: 4)
        expect(report[:failed]).to eq(0)
        expect(report[:restarted]).to eq(0)
        rest += report[:copied]
        cursor = report[:cursor]
      end
      expect(first[:copied] + rest).to eq(6_000)
      expect(destination_server.redis.keys("locking:*").size).to eq(6_000)
      pairs.sample(200).each { |key, token| expect(destination_server.redis.get(key)).to eq(token) }

      status, out, = locking_cli("gate", source: cluster.url)
      expect(status).to eq(0), out
      expect(out).to include("source-only locks: 0")
    end

    it "refuses the gate while a slot of the source is being migrated, and says why" do
      cluster.load([[prefixed("left"), "t"]])
      expect(locking_cli("backfill", source: cluster.url).first).to eq(0)
      from, to = cluster.masters.first(2)
      slot = cluster.slot_map.find { |_, node| node == from }.first.first
      to.redis.call("CLUSTER", "SETSLOT", slot, "IMPORTING", cluster.node_id(from))
      from.redis.call("CLUSTER", "SETSLOT", slot, "MIGRATING", cluster.node_id(to))
      begin
        status, out, err = locking_cli("gate", source: cluster.url)
        expect(status).not_to eq(0)
        expect(out + err).to include("slots are being moved", "run it again once the cluster is settled")
      ensure
        [from, to].each { |node| node.redis.call("CLUSTER", "SETSLOT", slot, "STABLE") }
      end
      status, out, = locking_cli("gate", source: cluster.url)
      expect(status).to eq(0), out
    end

    it "starts a backfill walk over when the source's slots moved since its saved position" do
      cluster.load(Array.new(3_000) { |i| [prefixed("moved:#{i}"), "t#{i}"] })
      tool = operator_client(source: cluster.url, destination: destination_server.url)
      first = tool.backfill_batch(0, count: 200, pages: 1)
      masters = cluster.masters
      cluster.reshard(from: masters[0], to: masters[1], slots: 100)
      second = tool.backfill_batch(first[:cursor], count: 200, pages: 1)
      expect(second[:restarted]).to eq(1)
      cursor = second[:cursor]
      cursor = tool.backfill_batch(cursor, count: 1_000, pages: 8)[:cursor] until cursor.zero?
      expect(destination_server.redis.keys("locking:*").size).to eq(3_000)
    ensure
      cluster.reshard(from: masters[1], to: masters[0], slots: 100) if masters
    end
  end

  context "with a password on every node (requirepass)" do
    before(:all) { @guarded = RedisCluster.new(masters: 3, name: "auth", password: "s3cret-pw") }
    after(:all) { @guarded&.cleanup }

    it "authenticates to every master with the setting's password, and says so when it is missing" do
      seed = ["redis://127.0.0.1:#{@guarded.nodes.first.port}"]
      configure(phase: :destination, destination: { cluster: seed, password: "s3cret-pw" })
      locks = Array.new(60) { |i| Locking.new("auth:#{i}", token: "t#{i}") }
      expect(locks.map { |lock| lock.acquire(30) }).to all(be(true))
      expect(@guarded.keys_by_master("locking:*").values.map(&:size)).to all(be > 5)
      expect(locks.map(&:release)).to all(be(true))

      configure(phase: :destination, destination: { cluster: seed })
      expect { Locking.new("auth:x").acquire(5) }
        .to raise_error(Locking::Error, /NOAUTH/)
      expect(Locking.redact(Locking.configuration.destination)).not_to include("s3cret")
    end
  end

  context "over TLS (rediss+cluster://, certificates made at test time)" do
    before(:all) do
      if RedisCluster.bus_port_setting? && RedisServer.tls? # Redis 7 (PyPI's 6.2 and Valkey 8.1 have no TLS)
        @certs = TestCertificates.new
        @secure = RedisCluster.new(masters: 3, name: "tls", tls: @certs)
      end
    end
    after(:all) do
      @secure&.cleanup
      @certs&.cleanup
    end

    before { skip "this redis-server has no TLS" unless @secure }

    it "checks every node's certificate and sends every lock to its master over TLS" do
      configure(phase: :destination, destination: @secure.settings)
      locks = Array.new(60) { |i| Locking.new("tls:#{i}", token: "t#{i}") }
      expect(locks.map { |lock| lock.acquire(30) }).to all(be(true))
      expect(@secure.keys_by_master("locking:*").values.map(&:size)).to all(be > 5)
      expect(Locking.client.cluster_stats(:destination)[:masters]).to eq(3)
      expect(locks.map(&:release)).to all(be(true))

      configure(phase: :destination, destination: @secure.settings(ssl_params: { ca_file: @certs.path("rogue-ca.crt") }))
      expect { Locking.new("tls:x").acquire(5) }.to raise_error(Locking::ConnectionError, /certificate|CA/)
    end
  end

  it "refuses a standalone server given as a cluster, and says so" do
    configure(phase: :destination, destination: "redis+cluster://127.0.0.1:#{destination_server.port}")
    expect { Locking.new("job").acquire(5) }
      .to raise_error(Locking::ConnectionError, %r{not a cluster node; a standalone server takes a redis:// URL})
  end

  it "follows MOVED and ASK while 1,500 slots move: 4 threads, 0 wrong answers, 0 errors" do
    configure(phase: :destination)
    # Keys in every slot, so that slots take a while to migrate (ASK while they do).
    cluster.load(Array.new(30_000) { |i| ["filler:#{i}", "x"] })
    masters = cluster.masters
    stop = false
    counts = Array.new(4) { Hash.new(0) }
    threads = Array.new(4) do |t|
      Thread.new do
        i = 0
        until stop || i >= 200_000
          lock = Locking.new("reshard:#{t}:#{i % 500}", token: "token-#{t}-#{i}")
          i += 1
          begin
            answers = [lock.acquire(30), lock.locked?, lock.release, lock.locked?]
            if answers == [true, true, true, false]
              counts[t][:right] += 1
            else
              counts[t][:wrong] += 1
              warn "thread #{t}: #{answers.inspect}"
            end
          rescue Locking::Error => e
            counts[t][:errors] += 1
            warn "thread #{t}: #{e.class}: #{e.message}" if counts[t][:errors] < 5
          end
        end
      end
    end
    started = monotonic
    cluster.reshard(from: masters[0], to: masters[1], slots: 1_500)
    seconds = monotonic - started
    stop = true
    threads.each(&:join)
    total = counts.each_with_object(Hash.new(0)) { |c, sum| c.each { |k, v| sum[k] += v } }
    stats = Locking.client.cluster_stats(:destination)
    puts "\n  Resharding 1,500 slots (#{format('%.1f', seconds)} s) under 4 threads: #{total[:right]} right, " \
         "#{total[:wrong]} wrong, #{total[:errors]} errors; MOVED #{stats[:moved]}, ASK #{stats[:asked]}, " \
         "slot map read #{stats[:refreshes]} times"
    expect(total[:wrong]).to eq(0)
    expect(total[:errors]).to eq(0)
    expect(total[:right]).to be > 100
    expect(stats[:moved]).to be > 0
    expect(cluster.keys_by_master("locking:*").values.flatten).to eq([])
  ensure
    stop = true
    threads&.each(&:join)
    cluster.reshard(from: masters[1], to: masters[0], slots: 1_500) if masters
  end

  context "when a master without a replica is SIGKILLed" do
    before(:all) { @lossy = RedisCluster.new(masters: 3, name: "lossy", full_coverage: false) }
    after(:all) { @lossy&.cleanup }

    it "fails only the operations on its slots, and never answers wrong" do
      configure(phase: :destination, destination: @lossy.url, timeout: 1.0)
      held = Array.new(300) { |i| Locking.new("held:#{i}", token: "t#{i}") }
      expect(held.map { |lock| lock.acquire(60) }).to all(be(true))
      victim = @lossy.masters.last
      on_victim = ->(name) { @lossy.node_for(prefixed(name)) == victim }
      victims_keys = held.each_index.select { |i| on_victim.("held:#{i}") }
      expect(victims_keys.size).to be > 50
      @lossy.kill(victim)

      answers = Hash.new(0)
      held.each_with_index do |lock, i|
        result = begin
          lock.locked?
        rescue Locking::Error => e
          e.class
        end
        expected = victims_keys.include?(i) ? :error : true
        outcome = result.is_a?(Class) ? :error : result
        answers[outcome == expected ? :as_expected : :wrong] += 1
        warn "held:#{i}: #{result.inspect}" unless outcome == expected
      end
      fresh = Array.new(300) { |i| Locking.new("fresh:#{i}") }
      fresh.each_with_index do |lock, i|
        result = begin
          lock.acquire(10)
        rescue Locking::Error
          :error
        end
        expected = on_victim.("fresh:#{i}") ? :error : true
        answers[result == expected ? :as_expected : :wrong] += 1
      end
      puts "\n  A master SIGKILLed (no replica): #{answers[:as_expected]} of 600 operations as expected " \
           "(errors exactly on its slots), #{answers[:wrong]} wrong"
      expect(answers[:wrong]).to eq(0)

      # With Redis's default (full coverage), the survivors answer CLUSTERDOWN for every slot: each
      # operation retries within its timeout, then raises; none answers wrong.
      survivors = @lossy.live_nodes
      survivors.each { |node| node.redis.call("CONFIG", "SET", "cluster-require-full-coverage", "yes") }
      @lossy.wait_for("the cluster to go down") do
        survivors.all? { |node| node.redis.call("CLUSTER", "INFO").include?("cluster_state:fail") }
      end
      healthy = held.each_index.reject { |i| victims_keys.include?(i) }.first(5)
      started = monotonic
      healthy.each do |i|
        expect { held[i].locked? }.to raise_error(Locking::CommandError, /CLUSTERDOWN/)
      end
      expect(monotonic - started).to be_between(5 * 0.5, 5 * 3.0) # each retried for about its timeout (1 s)
      expect(Locking.client.cluster_stats(:destination)[:retried]).to be > 5
    end
  end
end
