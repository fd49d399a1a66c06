# frozen_string_literal: true

require_relative "lagging_proxy"

# A real Sentinel set: a master, a replica, and three `redis-server
# --sentinel` processes watching them, on free loopback ports. Start it once
# per spec file: a failover takes seconds.
#
# The replica replicates through a LaggingProxy (`REPLICATION_LAG_MS`): the
# master's host is in another zone. Clients and sentinels reach every server
# directly. Killing the master kills its link too, with what was in flight.
# (A sentinel re-points a replica whose master address differs from the one
# it monitors only after failover-timeout, so it leaves the proxied link be.)
class SentinelSet
  MASTER_NAME = "locksmaster"
  DOWN_AFTER_MS = 1000
  REPLICATION_LAG_MS = 2

  attr_reader :master, :replica, :sentinel_ports, :servers

  def initialize
    @links = {}
    @master = RedisServer.start("sentinel-master")
    @replica = RedisServer.start("sentinel-replica", settings: ["--replicaof", "127.0.0.1", link_to(@master).port.to_s])
    @servers = [@master, @replica]
    @sentinels = []
    @sentinel_ports = []
    3.times { |index| start_sentinel(index) }
    wait_for("the replica to sync") { in_sync?(@master) }
    wait_for("every sentinel to see the replica and the other sentinels") do
      @sentinel_ports.all? do |port|
        sentinel(port) do |redis|
          info = redis.call("SENTINEL", "master", MASTER_NAME).each_slice(2).to_h
          info["num-slaves"].to_i >= 1 && info["num-other-sentinels"].to_i >= 2
        end
      end
    end
  end

  # The settings Hash a user writes (redis-rb's vocabulary).
  def settings(**more)
    { name: MASTER_NAME, sentinels: @sentinel_ports.map { |port| { host: "127.0.0.1", port: port } }, role: :master }
      .merge(more)
  end

  def url
    "redis+sentinel://#{@sentinel_ports.map { |port| "127.0.0.1:#{port}" }.join(',')}/#{MASTER_NAME}"
  end

  # The server the sentinels name as master now.
  def current_master
    host, port = sentinel(@sentinel_ports.first) { |r| r.call("SENTINEL", "get-master-addr-by-name", MASTER_NAME) }
    raise "sentinels name #{host}" unless host == "127.0.0.1"

    @servers.find { |server| server.port == Integer(port) }
  end

  # SIGKILLs the current master, and its replication link with what is in flight; returns it (dead).
  def kill_master
    victim = current_master
    Process.kill(:KILL, victim.pid)
    @links.delete(victim)&.close
    Process.wait(victim.pid)
    victim
  end

  # Waits until the sentinels name a master other than `old` and it reports itself as one.
  #
  # A sentinel that found a just-promoted master "down" for a moment (no
  # PONG within down-after-milliseconds, on a busy machine) starts a failover
  # that aborts, and that delays its next one by 2 x failover-timeout (six
  # minutes here): a master killed in that window is never failed over. Past
  # FORCE_AFTER seconds the failover is asked for (SENTINEL FAILOVER ignores
  # that delay), once a second until a sentinel accepts; not for a
  # switch-over (`force_after: nil`), which asked for it already.
  FORCE_AFTER = 10

  def wait_for_failover(old, timeout: 60, force_after: FORCE_AFTER)
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    asked_at = nil
    wait_for("a failover away from #{old.port}", timeout: timeout) do
      now = current_master
      done = now && now != old && now.redis.call("ROLE").first == "master"
      clock = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      if !done && force_after && clock - started > force_after && (asked_at.nil? || clock - asked_at > 1)
        asked_at = clock
        sentinel(@sentinel_ports.first) { |redis| redis.call("SENTINEL", "FAILOVER", MASTER_NAME) }
      end
      done
    end
  end

  # Starts `server` again on its port, empty, as a replica of the master
  # through the master's lagging link, as an operator brings an old master
  # back. (Left alone, the sentinels would convert it themselves after some
  # seconds, unless a sentinel starved of CPU is in TILT mode: then they
  # wait. Doing it here keeps the spec from depending on that.)
  #
  # It starts as a replica (`--replicaof`), never a master for a moment: a
  # sentinel that saw it as a master would re-point it at the master's own
  # address some seconds later, restarting its sync in the middle of the
  # next example.
  #
  # First every sentinel must name the new master and see it answer: a
  # sentinel that learnt of the switch late, on a busy machine, can still
  # find the new master "down" a second later, and would then fail over to
  # this server while it is empty and not yet in sync.
  def bring_back(server)
    master = current_master
    wait_for_agreement(master)
    server.instance_variable_set(:@pid, nil)
    server.instance_variable_set(:@settings, ["--replicaof", "127.0.0.1", link_to(master).port.to_s])
    server.restart
    wait_for("#{server.port} to replicate the master", timeout: 60) do
      server.redis.call("ROLE").first == "slave" && in_sync?(master)
    end
  end

  # Every sentinel names `master` as the master and sees it up (no s_down
  # or o_down flag, a PONG within the last 500 ms).
  def wait_for_agreement(master)
    wait_for("every sentinel to see #{master.port} up as the master", timeout: 60) do
      @sentinel_ports.all? do |port|
        sentinel(port) do |redis|
          info = redis.call("SENTINEL", "master", MASTER_NAME).each_slice(2).to_h
          info["port"].to_i == master.port && info["flags"] == "master" && info["last-ok-ping-reply"].to_i < 500
        end
      end
    end
  end

  # SENTINEL FAILOVER: a switch-over with both alive (a maintenance, an
  # upgrade). The sentinels promote the replica and demote the master; the
  # demoted one is then pointed at the new master's lagging link. Returns
  # [old master, new master].
  #
  # A sentinel refuses (NOGOODSLAVE) while its last INFO of the replica is
  # from before the replica synced: a replica just brought back reads as
  # "link down" until the next INFO, up to 10 s later (6.2 counts from
  # 1970). It is asked again until it accepts.
  def switch_over
    old = current_master
    refusals = []
    wait_for("a sentinel to accept SENTINEL FAILOVER (#{refusals.last(1).join})", timeout: 60) do
      sentinel(@sentinel_ports.first) do |redis|
        redis.call("SENTINEL", "FAILOVER", MASTER_NAME) == "OK"
      rescue Redis::CommandError => e
        refusals << e.message
        sleep 0.2
        false
      end
    end
    wait_for_failover(old, force_after: nil)
    master = current_master
    wait_for("#{old.port} to be demoted", timeout: 60) { old.redis.call("ROLE").first == "slave" }
    old.redis.call("REPLICAOF", "127.0.0.1", link_to(master).port.to_s)
    wait_for("#{old.port} to replicate the new master", timeout: 60) { in_sync?(master) }
    [old, master]
  end

  def cleanup
    @sentinels.each do |pid|
      Process.kill(:KILL, pid)
      Process.wait(pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end
    @servers.each(&:cleanup)
    @links.each_value(&:close)
    FileUtils.rm_rf(@dir) if @dir
  end

  private

  def link_to(master)
    @links[master] ||= LaggingProxy.new(master.port, lag_ms: REPLICATION_LAG_MS)
  end

  def start_sentinel(index)
    @dir ||= Dir.mktmpdir("locking-sentinels-")
    port = RedisServer.free_port
    config = File.join(@dir, "sentinel-#{index}.conf")
    File.write(config, <<~CONF)
      port #{port}
      bind 127.0.0.1
      dir #{@dir}
      sentinel monitor #{MASTER_NAME} 127.0.0.1 #{@master.port} 2
      sentinel down-after-milliseconds #{MASTER_NAME} #{DOWN_AFTER_MS}
      sentinel failover-timeout #{MASTER_NAME} 180000
      sentinel parallel-syncs #{MASTER_NAME} 1
    CONF
    @sentinels << Process.spawn(RedisServer::BINARY, config, "--sentinel",
                                out: File.join(@dir, "sentinel-#{index}.log"), err: %i[child out])
    @sentinel_ports << port
    wait_for("sentinel #{port} to answer") { sentinel(port) { |r| r.ping == "PONG" } }
  end

  def sentinel(port)
    redis = Redis.new(host: "127.0.0.1", port: port, timeout: 1)
    yield redis
  rescue Redis::BaseError, Errno::ECONNREFUSED
    nil
  ensure
    redis&.close
  end

  def in_sync?(master)
    role = master.redis.call("ROLE")
    role.first == "master" && role[2].any? && role[2].all? { |(_, _, offset)| offset.to_i == role[1].to_i }
  rescue Redis::BaseError
    false
  end

  def wait_for(what, timeout: 30)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    until (result = yield)
      if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        raise "timed out waiting for #{what}; the sentinels said:\n#{sentinel_logs}"
      end

      sleep 0.05
    end
    result
  end

  # The last lines of each sentinel's log (a failing wait shows them: TILT mode, votes, conversions).
  def sentinel_logs
    Dir[File.join(@dir, "sentinel-*.log")].map do |log|
      "#{File.basename(log)}:\n#{File.readlines(log).last(25).join}"
    end.join("\n")
  end
end
