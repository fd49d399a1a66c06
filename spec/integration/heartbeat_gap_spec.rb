# frozen_string_literal: true

require_relative "../support/loopback_proxy"

# A heartbeat is written when the destination runs it, which may be a whole
# `timeout` before its reply comes in. A process whose control master then
# becomes unreachable goes on in its cached phase only while that heartbeat
# (counted from the reply, less two timeouts, a phase cache and the drift)
# still tells the fleet where it acts. Found by an adversarial run: with the
# lapse counted from the reply with one phase cache of margin, a worker went
# on in phase 0 after its heartbeat had gone, and took a lock that a phase-3
# process held.
RSpec.describe "A heartbeat whose reply came late, then the control master gone" do
  # Holds the reply to the next heartbeat (the request naming the fleet key)
  # for `delay` seconds once armed, then refuses everything: the control
  # master as the worker sees it, slow and then dead.
  class LateThenDeadProxy < LoopbackProxy
    attr_reader :heartbeat_sent_at, :died_at

    def initialize(port, delay:)
      @delay = delay
      @armed = false
      @marked = {}
      super(port)
    end

    def arm! = (@armed = true)

    private

    def forward_request(data, upstream, _client)
      if @armed && @heartbeat_sent_at.nil? && data.include?("fleet")
        @heartbeat_sent_at = monotonic
        @marked[upstream] = true
      end
      upstream.write(data)
    end

    def forward_reply(data, client, upstream)
      if @marked.delete(upstream)
        sleep @delay
        client.write(data)
        @died_at = monotonic
        Thread.new { close_everything }
      elsif @died_at.nil?
        client.write(data)
      end
    end

    def close_everything
      close
      @lock.synchronize { @sockets.each { |socket| socket.close rescue nil } }
    end

    def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  def wait_for(what, seconds: 30)
    deadline = monotonic + seconds
    until yield
      raise "timed out waiting for #{what}" if monotonic > deadline

      sleep 0.02
    end
  end

  it "stops a worker in its cached phase before its heartbeat is gone from the fleet (timeout 2 s, reply 1.9 s late)" do
    timeout = 2.0
    configure_both(:source)
    expect(locking_cli("phase", "set", "0", "--init")[0]).to eq(0)
    proxy = LateThenDeadProxy.new(destination_server.port, delay: 1.9)
    source_url = source_server.url
    witness_url = witness_server.url
    witness = witness_server.redis
    witness.del("log", "stop")
    worker = fork do
      Locking.reset_configuration!
      Locking.configure do |c|
        c.source = source_url
        c.destination = proxy.url
        c.phase = :dynamic
        c.phase_cache_ttl = 1.0
        c.timeout = timeout
      end
      log = Redis.new(url: witness_url)
      3_000.times do
        break if log.exists?("stop")

        lock = Locking.new("job", token: "W")
        began = Time.now.to_f
        begin
          got = lock.acquire(60)
          log.rpush("log", JSON.generate([began, got]))
          lock.release if got
        rescue Locking::Error => e
          log.rpush("log", JSON.generate([began, e.class.name]))
          break if e.is_a?(Locking::PhaseError)
        end
        sleep 0.02
      end
      exit!(0)
    end
    wait_for("the worker's first locks") { witness.llen("log") > 5 }
    proxy.arm!
    wait_for("the late heartbeat reply") { proxy.died_at }
    # The operator, on the destination itself, waits until the worker's heartbeat is gone, moves the
    # fleet as far as the rules let it, and a phase-3 process takes the lock.
    wait_for("the worker's heartbeat to leave the fleet") { fleet_members.empty? }
    3.times { locking_cli("phase", "advance") }
    configure_both(:destination, timeout: timeout)
    taker = Locking.new("job", token: "Q")
    wait_for("the phase-3 process to take the lock", seconds: 10) { taker.acquire(60) }
    taken_at = Time.now.to_f
    expect(Process.wait2(worker, 0)&.last).to be_success # it stopped by itself, with a PhaseError
    entries = witness.lrange("log", 0, -1).map { |line| JSON.parse(line) }
    expect(entries.last.last).to eq("Locking::PhaseError")
    expect(entries.select { |began, got| got == true && began > taken_at }).to eq([])
    expect(destination_server.redis.get("locking:job")).to eq("Q")
  ensure
    witness_server.redis.set("stop", "1")
    if worker
      begin
        Process.kill(:KILL, worker)
        Process.wait(worker)
      rescue Errno::ESRCH, Errno::ECHILD
        nil # it ended by itself, and was waited for
      end
    end
    proxy&.close
  end
end
