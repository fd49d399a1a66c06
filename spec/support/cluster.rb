# frozen_string_literal: true

require "open3"
require_relative "redis_server"

# A real Redis Cluster: N masters (and optional replicas per master), each a
# `redis-server --cluster-enabled yes` on free loopback ports, joined by
# `redis-cli --cluster create`. Start it once per spec file.
#
# `full_coverage: false` sets `cluster-require-full-coverage no`: with a
# master lost and no replica, the other masters keep serving their slots
# (Redis's default stops the whole cluster).
class RedisCluster
  NODE_TIMEOUT_MS = 1000
  CLI = ENV.fetch("REDIS_CLI", "redis-cli")

  # Redis 7 takes the cluster bus port as a setting; 6.2 always uses port + 10000
  # (a node whose bus port is taken fails to start, and RedisServer tries another port).
  def self.bus_port_setting?
    return @bus_port_setting unless @bus_port_setting.nil?

    @bus_port_setting = `#{RedisServer::BINARY} --version`[/v=(\d+)/, 1].to_i >= 7
  end

  attr_reader :nodes

  # `password`: every node requires it (requirepass, and masterauth for replicas).
  # `tls`: a TestCertificates; every node then serves clients and its bus over
  # TLS (a plaintext port stays open for the helper's own looks) and announces
  # its TLS port, so clients are sent there. Masters only.
  def initialize(masters: 3, replicas: 0, name: "cluster", full_coverage: true, password: nil, tls: nil)
    @replicas = replicas
    @password = password
    @tls = tls
    @tls_ports = {}
    @nodes = Array.new(masters * (1 + replicas)) do |index|
      tls_port = RedisServer.free_port if tls
      settings = settings_for(full_coverage) + (tls ? tls_settings(tls, tls_port) : [])
      RedisServer.start("#{name}-#{index}", settings: settings, max_port: max_port, password: password)
                 .tap { |node| @tls_ports[node] = tls_port if tls }
    end
    if tls
      raise ArgumentError, "a TLS cluster here has no replicas" if replicas.positive?

      join_by_hand
    elsif masters == 1 && replicas.zero?
      # redis-cli --cluster create wants 3 masters; one node takes every slot itself.
      @nodes.first.redis.call("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
    else
      addresses = @nodes.map { |node| "127.0.0.1:#{node.port}" }
      cli!("--cluster", "create", *addresses, "--cluster-replicas", replicas.to_s, "--cluster-yes")
    end
    wait_until_settled
    wait_for("replicas to sync") { replicas_in_sync? } if replicas.positive?
  rescue StandardError
    cleanup # nodes already started do not outlive a failed start
    raise
  end

  # The form a user writes (one seed is enough; two given).
  def settings(**more)
    seeds = @nodes.first(2).map { |node| "#{@tls ? 'rediss' : 'redis'}://127.0.0.1:#{client_port(node)}" }
    tls = @tls ? { ssl_params: { ca_file: @tls.path("ca.crt") } } : {}
    { cluster: seeds, **tls }.merge(more)
  end

  def url
    hosts = @nodes.first(2).map { |node| "127.0.0.1:#{client_port(node)}" }.join(",")
    @tls ? "rediss+cluster://#{hosts}?ca_file=#{@tls.path('ca.crt')}" : "redis+cluster://#{hosts}"
  end

  # The port clients are sent to (the TLS one in a TLS cluster).
  def client_port(node) = @tls_ports.fetch(node, node.port)

  def live_nodes
    @nodes.select(&:pid)
  end

  # The nodes that are masters now, in slot order.
  def masters
    slots = any_node.call("CLUSTER", "SLOTS").sort_by(&:first)
    slots.map { |(_, _, (_, port))| node_at(port) }.uniq
  end

  # The node at `port`: its plaintext port or its TLS port (Redis names the
  # one that matches the asking connection).
  def node_at(port)
    @nodes.find { |node| [node.port, client_port(node)].include?(Integer(port)) }
  end

  def node_id(node)
    node.redis.call("CLUSTER", "MYID")
  end

  # CRC16/XMODEM of the key or its hash tag, mod 16384: written here from
  # the cluster spec, apart from the core's, and checked against
  # CLUSTER KEYSLOT by the spec.
  def self.slot(key)
    key = key.b
    if (open = key.index("{")) && (close = key.index("}", open + 1)) && close > open + 1
      key = key[(open + 1)...close]
    end
    crc = 0
    key.each_byte do |byte|
      crc ^= byte << 8
      8.times { crc = crc.nobits?(0x8000) ? (crc << 1) & 0xffff : ((crc << 1) ^ 0x1021) & 0xffff }
    end
    crc % 16_384
  end

  def slot_of(key)
    any_node.call("CLUSTER", "KEYSLOT", key)
  end

  # { slot range => node } now.
  def slot_map
    any_node.call("CLUSTER", "SLOTS").to_h { |(first, last, (_, port))| [(first..last), node_at(port)] }
  end

  # The master serving `key`'s slot now (`map`: a slot_map read before).
  def node_for(key, map = slot_map)
    slot = self.class.slot(key)
    map.each { |range, node| return node if range.cover?(slot) }
    raise "no node serves slot #{slot}"
  end

  # The value of `key` on the node that holds it, and its PTTL.
  def get(key) = node_for(key).redis.get(key)
  def pttl(key) = node_for(key).redis.pttl(key)

  # Keys under `pattern` on each master: { node => [keys] }.
  def keys_by_master(pattern = "*")
    masters.to_h { |node| [node, node.redis.keys(pattern)] }
  end

  def flushall
    masters.each { |node| node.redis.flushall }
  end

  # Sets each key on its own master (a source cluster's locks).
  def load(pairs, ttl_ms: 600_000)
    map = slot_map
    pairs.group_by { |key, _| node_for(key, map) }.each do |node, mine|
      node.bulk_load(mine.map { |key, value| ["SET", key, value, "PX", ttl_ms.to_s] })
    end
  end

  # Dynamic phases in phase 3 with this cluster as the destination (and the standalone test source), set up
  # through `spec`'s helpers: the phase set, Locking configured, the control keys read once. Returns the node
  # that holds them.
  def dynamic_in_phase_destination(spec, timeout:, phase_cache_ttl: 0.2)
    source = TestServers.get(:source).url
    spec.configure_both(:destination, source: source, destination: url, timeout: 1.0)
    raise "phase set 3 --init failed" unless spec.locking_cli("phase", "set", "3", "--init", source: source,
                                                                                             destination: url)[0].zero?

    spec.configure_both(:dynamic, source: source, destination: url, timeout: timeout, phase_cache_ttl: phase_cache_ttl)
    raise "a fresh key reads as locked" if Locking.new("warm").locked?

    control = node_at(Locking.client.cluster_stats(:destination)[:control_master].split(":").last)
    wait_for_replicas_of(control)
    control
  end

  # Waits until `master` lists its replicas (`expected`: this cluster's replicas per master; one that rejoined
  # after a failover is listed once its sync is done) and each has its writes so far (a failover then loses none).
  def wait_for_replicas_of(master, expected: @replicas)
    wait_for("#{expected} replica(s) of #{master.port} to have its writes") do
      master.redis.call("ROLE")[2].size >= expected && master.redis.call("WAIT", expected, 100) >= expected
    end
  end

  # `redis-cli --cluster reshard`, started in the background: [pid, log].
  def reshard_in_background(from:, to:, slots:)
    log = File.join(@nodes.first.dir, "reshard-#{Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond)}.log")
    pid = Process.spawn(CLI, *auth, "--cluster", "reshard", "127.0.0.1:#{masters.first.port}",
                        "--cluster-from", node_id(from), "--cluster-to", node_id(to),
                        "--cluster-slots", slots.to_s, "--cluster-yes", "--cluster-pipeline", "100",
                        out: log, err: %i[child out])
    [pid, log]
  end

  def reshard(from:, to:, slots:)
    pid, log = reshard_in_background(from: from, to: to, slots: slots)
    _, status = Process.wait2(pid)
    raise "reshard failed:\n#{File.read(log)[-2000..]}" unless status.success?

    wait_until_settled(timeout: 20)
  rescue RuntimeError => e
    raise unless e.message.include?("to settle")

    # redis-cli said the reshard succeeded, yet the cluster did not settle (seen once in a full bin/test run):
    # what `--cluster check` says goes into the log of the run, `--cluster fix` closes what the reshard left
    # open, and the cluster must settle after that.
    warn "the cluster did not settle after a reshard; redis-cli --cluster check said:\n#{last_check}\n" \
         "reshard log:\n#{File.read(log)[-1500..]}"
    Open3.capture2e(CLI, *auth, "--cluster", "fix", "127.0.0.1:#{live_nodes.first.port}", "--cluster-yes")
    wait_until_settled
  end

  # Waits until every live node says the cluster is ok and all agree
  # (`redis-cli --cluster check`), with no slot open.
  def wait_until_settled(timeout: 60)
    wait_for("the cluster to settle", timeout: timeout) do
      infos = live_nodes.map { |node| node.redis.call("CLUSTER", "INFO") }
      infos.all? { |info| info.include?("cluster_state:ok") } &&
        (@tls ? infos.all? { |info| info.include?("cluster_known_nodes:#{live_nodes.size}\r") } : check_passes?)
    end
  end

  # SIGKILLs `node`; it stays dead.
  def kill(node)
    node.stop
  end

  # Waits until a replica has taken over `dead`'s slots (cluster-node-timeout
  # plus an election) and the cluster is ok again.
  def wait_for_failover(dead, timeout: 60)
    wait_for("a replica to take over from #{dead.port}", timeout: timeout) do
      live_nodes.all? do |node|
        info = node.redis.call("CLUSTER", "INFO")
        info.include?("cluster_state:ok") && !masters.include?(dead)
      rescue Redis::BaseError
        false
      end
    end
  end

  # Restarts a killed node on its port with its nodes.conf (no data): it
  # rejoins as a replica of the master that took its slots over.
  def bring_back(node)
    node.restart
    wait_for("#{node.port} to rejoin as a replica in sync") do
      role = node.redis.call("ROLE")
      role.first == "slave" && role[3] == "connected" && check_passes?
    end
  end

  def cleanup
    (@nodes || []).each(&:cleanup)
  end

  def wait_for(what, timeout: 60)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    until begin
      yield
    rescue Redis::BaseError
      false
    end
      raise "timed out waiting for #{what}" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep 0.05
    end
  end

  private

  def tls_settings(certs, tls_port)
    ["--tls-port", tls_port.to_s, "--tls-cluster", "yes", "--tls-replication", "yes",
     "--tls-cert-file", certs.path("node.crt"), "--tls-key-file", certs.path("node.key"),
     "--tls-ca-cert-file", certs.path("ca.crt"), "--tls-auth-clients", "no",
     "--cluster-announce-port", tls_port.to_s]
  end

  # redis-cli --cluster create would MEET each node at its announced (TLS)
  # port + 10000: here each node takes its share of the slots, and the first
  # meets the others at their bus ports.
  def join_by_hand
    share = 16_384 / @nodes.size
    @nodes.each_with_index do |node, index|
      last = index == @nodes.size - 1 ? 16_383 : ((index + 1) * share) - 1
      node.redis.call("CLUSTER", "ADDSLOTSRANGE", index * share, last)
    end
    @nodes.drop(1).each do |node|
      bus = node.redis.call("CONFIG", "GET", "cluster-port").last
      @nodes.first.redis.call("CLUSTER", "MEET", "127.0.0.1", client_port(node), bus)
    end
  end

  # A 6.2 node also binds port + 10000.
  def max_port = self.class.bus_port_setting? ? nil : 55_535

  def settings_for(full_coverage)
    ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
     "--cluster-node-timeout", NODE_TIMEOUT_MS.to_s,
     *(self.class.bus_port_setting? ? ["--cluster-port", RedisServer.free_port.to_s] : []),
     "--cluster-require-full-coverage", full_coverage ? "yes" : "no",
     "--maxmemory-policy", "noeviction"]
  end

  def any_node
    live_nodes.each do |node|
      return node.redis if node.redis.call("CLUSTER", "INFO").include?("cluster_state:ok")
    rescue Redis::BaseError
      next
    end
    live_nodes.first.redis
  end

  def auth = @password ? ["-a", @password, "--no-auth-warning"] : []

  def check_passes?
    node = live_nodes.first
    output, status = Open3.capture2e(CLI, *auth, "--cluster", "check", "127.0.0.1:#{node.port}")
    @last_check = output
    status.success? && !output.include?("[WARNING]") && output.include?("All 16384 slots covered")
  end

  def last_check = @last_check.to_s[-3000..] || @last_check.to_s

  def replicas_in_sync?
    live_nodes.all? do |node|
      role = node.redis.call("ROLE")
      role.first == "master" || role[3] == "connected"
    end
  end

  def cli!(*args)
    output, status = Open3.capture2e(CLI, *auth, *args)
    raise "redis-cli #{args.first(2).join(' ')} failed:\n#{output}" unless status.success?

    output
  end
end

# A cluster standing in where specs expect a RedisServer (`url`, `redis`):
# `redis` sends each keyed command to the master of its key, and the
# keyspace-wide ones (keys, flushall, dbsize) to every master.
class ClusterAsServer
  attr_reader :cluster

  def initialize(cluster)
    @cluster = cluster
  end

  def url(_db = 0) = @cluster.url
  def redis = @redis ||= Keyed.new(@cluster)
  def thaw = nil

  # The subset of redis-rb the specs use, routed as a cluster client would.
  class Keyed
    def initialize(cluster)
      @cluster = cluster
    end

    def keys(pattern = "*") = @cluster.masters.flat_map { |node| node.redis.keys(pattern) }
    def dbsize = @cluster.masters.sum { |node| node.redis.dbsize }
    def flushall = @cluster.flushall
    def flushdb = @cluster.flushall

    def del(*keys) = keys.flatten.sum { |key| @cluster.node_for(key).redis.del(key) }

    def method_missing(name, key, *args, **options, &)
      @cluster.node_for(key).redis.public_send(name, key, *args, **options, &)
    end

    def respond_to_missing?(name, include_private = false) = Redis.method_defined?(name) || super
  end
end

# One cluster of 3 masters for a whole spec file, emptied before each example:
# `cluster` is it, and `prefixed(key)` a lock key under the default prefix.
RSpec.shared_context "a cluster of 3 masters" do |name|
  before(:all) { @cluster = RedisCluster.new(masters: 3, name: name) }
  after(:all) { @cluster&.cleanup }

  before { @cluster.flushall }

  attr_reader :cluster

  def prefixed(key) = "locking:#{key}"
end
