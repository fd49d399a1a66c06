# frozen_string_literal: true

require_relative "../support/holding_proxy"

# The wire layer: every path (hot operations, control, backfill) meets a
# script flush in the middle of its pipeline and is put right by the one
# executor, and a script load blocked on a frozen server gives way to an
# interrupt. Run on Redis 7 and 6.2 (bin/test).
RSpec.describe "the wire layer" do
  include PhaseHelpers

  # A proxy that, once armed, freezes its server (SIGSTOP) just before it
  # forwards a request that loads a script: the client is then blocked in
  # that load.
  class FreezingProxy < LoopbackProxy
    def initialize(server)
      @redis_server = server
      @froze = Queue.new
      @armed = false
      super(server.port)
    end

    def arm! = @armed = true

    # Blocks until the server was frozen in front of a script load.
    def wait_until_frozen(seconds)
      Timeout.timeout(seconds) { @froze.pop }
    end

    private

    def forward_request(data, upstream, _client)
      if @armed && data.include?("SCRIPT") && data.include?("LOAD")
        Process.kill(:STOP, @redis_server.pid)
        @froze << true
      end
      upstream.write(data)
    end
  end

  let(:proxy) { HoldingProxy.new(destination_server.port) }

  after { proxy.close }

  # How often the server answered NOSCRIPT, and ran SCRIPT LOAD.
  def noscripts(server)
    server.redis.info("errorstats").fetch("errorstat_NOSCRIPT", "count=0")[/count=(\d+)/, 1].to_i
  end

  # SCRIPT LOADs since the stats were reset. Redis 7 counts subcommands
  # apart; 6.2 counts every SCRIPT call, our one SCRIPT FLUSH included.
  def script_loads(server)
    stats = server.redis.info("commandstats")
    return calls(stats["script|load"]) if stats.key?("script|load")

    calls(stats["script"]) - 1
  end

  def calls(entry)
    entry.is_a?(Hash) ? entry["calls"].to_i : entry.to_s[/calls=(\d+)/, 1].to_i
  end

  def reset_stats(*servers)
    servers.each { |server| server.redis.call("CONFIG", "RESETSTAT") }
  end

  # Runs `work` in a thread while the destination's traffic is held back;
  # once a request is held, flushes the destination's scripts and lets the
  # request through: it meets NOSCRIPT in the middle of its pipeline.
  def flush_scripts_under(&)
    proxy.hold!
    worker = Thread.new(&)
    Timeout.timeout(10) { Thread.pass until proxy.held? || !worker.alive? }
    destination_server.redis.call("SCRIPT", "FLUSH")
    proxy.let_go!
    worker.value
  end

  def configure_through_proxy(phase)
    configure_both(phase)
    Locking.configure do |c|
      c.destination = proxy.url
      c.timeout = 5.0
      c.phase_cache_ttl = 60 if phase == :dynamic
    end
  end

  it "hot path: a release whose script is flushed in flight is loaded and resent, and the lock is gone" do
    configure_through_proxy(:dual)
    lock = Locking.new("job", token: "mine")
    expect(lock.acquire(30)).to be(true)
    reset_stats(destination_server)

    expect(flush_scripts_under { lock.release }).to be(true)

    expect(noscripts(destination_server)).to be >= 1
    expect(script_loads(destination_server)).to eq(1)
    expect(destination_server.redis.exists?("locking:job")).to be(false)
    expect(source_server.redis.exists?("locking:job")).to be(false)
  end

  it "control: a phase move whose script is flushed in flight is loaded and resent" do
    configure_through_proxy(:dual)
    expect(Locking.client.set_control_phase(nil, :source)).to eq(:source)
    reset_stats(destination_server)

    expect(flush_scripts_under { Locking.client.set_control_phase(:source, :dual) }).to eq(:dual)

    expect(noscripts(destination_server)).to be >= 1
    expect(script_loads(destination_server)).to eq(1)
    expect(destination_server.redis.get("{locking-control}:locking:phase")).to eq("1")
  end

  it "control: a dynamic operation's heartbeat script flushed in flight is loaded, and the operation runs" do
    configure_through_proxy(:dual)
    Locking.client.set_control_phase(nil, :dual)
    configure_through_proxy(:dynamic)
    reset_stats(destination_server)

    expect(flush_scripts_under { Locking.new("job", token: "t").acquire(30) }).to be(true)

    expect(noscripts(destination_server)).to be >= 1
    expect([source_server, destination_server].map { |s| s.redis.get("locking:job") }).to eq(%w[t t])
  end

  it "backfill: thousands of script calls meet one flush, load the script once, and every key is right" do
    keys = 3000
    source_server.bulk_load((1..keys).map { |i| ["SET", "locking:k#{i}", "t#{i}", "PX", "600000"] })
    # The same tokens with shorter TTLs on the destination: each key's copy
    # needs its TTL raised, a script call per key.
    destination_server.bulk_load((1..keys).map { |i| ["SET", "locking:k#{i}", "t#{i}", "PX", "100000"] })
    configure_through_proxy(:dual)
    reset_stats(destination_server)

    report = flush_scripts_under { Locking.client.backfill_batch(0, count: 1000, pages: 64) }

    expect(report).to include(failed: 0, scanned: keys, already_there: keys)
    expect(report[:errors]).to be_empty
    expect(noscripts(destination_server)).to be >= 1
    # At most one load per pipeline in flight when the scripts went (a few),
    # never one per key.
    expect(script_loads(destination_server)).to be_between(1, 20)
    ttls = destination_server.redis.pipelined { |p| (1..keys).each { |i| p.pttl("locking:k#{i}") } }
    expect(ttls.min).to be > 500_000
  end

  it "a script load blocked on a frozen (SIGSTOPped) server gives way to Thread#raise at once" do
    freezing = FreezingProxy.new(source_server)
    configure_single(source_server, timeout: 5.0)
    Locking.configure { |c| c.source = freezing.url }
    lock = Locking.new("job", token: "mine")
    expect(lock.acquire(30)).to be(true)
    source_server.redis.call("SCRIPT", "FLUSH")
    freezing.arm!

    worker = Thread.new do
      lock.release
      :finished
    rescue Interrupt
      :interrupted
    end
    freezing.wait_until_frozen(10)
    Timeout.timeout(5) { Thread.pass until worker.stop? } # blocked in the load's read
    started = monotonic
    worker.raise(Interrupt)
    expect(worker.value).to eq(:interrupted)
    expect(monotonic - started).to be < 1.0 # the timeout is 5 s
  ensure
    source_server.thaw
    freezing&.close
  end
end
