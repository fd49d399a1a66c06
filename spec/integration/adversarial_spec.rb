# frozen_string_literal: true

require_relative "../support/holding_proxy"

# The ten holes adversarial testing found in the operating layer around the
# protocol, each reproduced on real processes and servers. Where timing
# matters a HoldingProxy keeps a request in flight until the spec lets it go:
# the spec waits for states (a request held, a heartbeat written), never for
# a length of time.
RSpec.describe "adversarial cases" do
  let(:phase_key) { "{locking-control}:locking:phase" }

  def wait_until(seconds = 5)
    deadline = monotonic + seconds
    until (result = yield)
      raise "condition not reached within #{seconds}s" if monotonic > deadline

      sleep 0.01
    end
    result
  end

  # [LOW, HIGH] phase indexes of each live heartbeat, as strings.
  def heartbeats
    fleet_members.map { |m| [m[:phase], m[:highest]].map { |p| Locking::Configuration.phase_index(p).to_s } }
  end

  def configure_dynamic(source_url: source_server.url, destination_url: destination_server.url, **settings)
    Locking.reset_configuration!
    Locking.configure do |c|
      c.source = source_url
      c.destination = destination_url
      c.phase = :dynamic
      c.phase_cache_ttl = 0.05
      c.timeout = 5.0
      settings.each { |name, value| c.public_send(:"#{name}=", value) }
    end
  end

  def tool_client(source_url: source_server.url, destination_url: destination_server.url)
    config = Locking::Configuration.new({})
    config.source = source_url
    config.destination = destination_url
    config.phase = :dual
    config.timeout = 5.0
    Locking::Client.build(config)
  end

  describe "1. an operation in flight across a dynamic phase change" do
    it "keeps the old phase in the heartbeat until the operation is done, so advance waits for it" do
      expect(locking_cli("phase", "set", "0", "--init")[0]).to eq(0)
      proxy = HoldingProxy.new(source_server.port)
      configure_dynamic(source_url: proxy.url)
      Locking.new("warm-up").locked? # connections open, phase 0 cached, heartbeat written

      proxy.hold!
      slow = Thread.new { Locking.new("job").acquire(30) } # phase 0: SET NX on the source, held
      wait_until { proxy.held? }

      expect(locking_cli("phase", "set", "1")[0]).to eq(0)
      # Other threads of the process read phase 1 (their own requests wait
      # behind the proxy too; only their heartbeats matter here).
      probes = []
      wait_until do
        probes << Thread.new { Locking.new("probe").locked? }
        sleep 0.06
        heartbeats.any? { |_low, high| high == "1" }
      end
      expect(heartbeats).to all(start_with("0", "1")) # phases 0..1: the acquire still runs in 0

      status, out, = locking_cli("phase", "advance")
      expect(status).to eq(1), out
      expect(out).to match(/phases 0\.\.1, last seen/)
      expect(destination.get(phase_key)).to eq("1")

      proxy.let_go!
      expect(slow.value).to be(true)
      probes.each(&:join)
      # Once it is done, the next read reports phase 1 alone.
      wait_until do
        Locking.new("probe").locked?
        heartbeats.all? { |low, high| low == "1" && high == "1" }
      end
    ensure
      proxy&.close
    end
  end

  describe "2. rolling back 2 -> 1 -> 0" do
    it "refuses 1 -> 0 while a lock taken in phase 2 lives on the destination only (the reverse gate)" do
      expect(locking_cli("phase", "set", "2", "--init")[0]).to eq(0)
      configure_both(:drain)
      lock = Locking.new("report")
      expect(lock.acquire(60)).to be(true)
      expect([source.get("locking:report"), destination.get("locking:report")]).to eq([nil, lock.token])

      expect(locking_cli("phase", "set", "1")[0]).to eq(0)
      status, out, = locking_cli("phase", "set", "0")
      expect(status).to eq(1)
      expect(out).to include("1 lock(s) or semaphore place(s) live on the destination only")
      expect(destination.get(phase_key)).to eq("1")
      status, out, = locking_cli("gate", "--reverse")
      expect(status).to eq(1)
      expect(out).to include("destination-only locks: 1", "CLOSED")

      lock.release
      expect(locking_cli("gate", "--reverse")[0]).to eq(0)
      expect(locking_cli("phase", "set", "0")[0]).to eq(0)
      expect(destination.get(phase_key)).to eq("0")
    end
  end

  describe "3. a retry answered 'already mine'" do
    it "resets the TTL to the one asked for, so Redis keeps the key as long as have_lock? says" do
      proxy = HoldingProxy.new(source_server.port)
      configure_single(timeout: 0.3)
      Locking.configure { |c| c.source = proxy.url }
      lock = Locking.new("import", token: "job-7")
      warm = Locking.new("warm-up") # a connection through the proxy, and the server's version learnt
      warm.acquire(1) && warm.release

      proxy.hold!
      expect { lock.acquire(2) }.to raise_error(Locking::TimeoutError)
      proxy.let_go! # the first attempt's SET lands now, with PX 2000
      wait_until { source.get("locking:import") == "job-7" && source.pttl("locking:import") < 1_500 }

      expect(lock.acquire(2)).to be(true) # the retry: "already mine"
      expect(source.pttl("locking:import")).to be > 1_900
      expect(lock.have_lock?).to be(true)
      # A second object with the same token, likewise.
      source.pexpire("locking:import", 500)
      expect(Locking.new("import", token: "job-7").acquire(2)).to be(true)
      expect(source.pttl("locking:import")).to be > 1_900
    ensure
      proxy&.close
    end
  end

  describe "4. backfill beside phase 2" do
    it "is refused by a static phase 2, by a running backfill's lease, and blocks a move into phase 2" do
      source.set("locking:a", "t", px: 60_000)
      configure_both(:drain)
      status, _, err = locking_cli("backfill")
      expect(status).to eq(1)
      expect(err).to include("backfill runs only in phases 0 and 1")
      expect(destination.exists?("locking:a")).to be(false)

      configure_both(:dual)
      expect(locking_cli("phase", "set", "1", "--init")[0]).to eq(0)
      other = tool_client
      expect(other.backfill_lease("ops-1:77", ttl: 30)).to eq("ops-1:77") # a backfill elsewhere
      status, _, err = locking_cli("backfill")
      expect(status).to eq(1)
      expect(err).to include("another backfill is running (ops-1:77)")

      source.del("locking:a")
      status, out, = locking_cli("phase", "advance")
      expect(status).to eq(1)
      expect(out).to include("a backfill is running (ops-1:77)")
      expect(destination.get(phase_key)).to eq("1")

      other.backfill_lease("ops-1:77", ttl: nil)
      expect(locking_cli("backfill")[0]).to eq(0)
      expect(destination.get("{locking-control}:locking:backfill")).to be_nil # given back
      expect(locking_cli("phase", "advance", "--allow-empty")[0]).to eq(0) # no lock anywhere, no process
    end
  end

  describe "5. a shortening renew racing a backfill" do
    it "leaves the copy with the renewed TTL, not the one the backfill read first" do
      configure_both(:source)
      lock = Locking.new("export")
      expect(lock.acquire(60)).to be(true)
      proxy = HoldingProxy.new(destination_server.port)
      backfill = tool_client(destination_url: proxy.url)

      proxy.hold!
      copying = Thread.new { backfill.backfill_key("locking:export") } # reads 60 s, its copy waits
      wait_until { proxy.held? }
      switch_phase(:dual)
      expect(lock.renew(1)).to be(true) # source, then the copy (phase 1 adds it)
      proxy.let_go!
      copying.value

      expect(source.pttl("locking:export")).to be <= 1_000
      expect(destination.get("locking:export")).to eq(lock.token).or be_nil
      expect(destination.pttl("locking:export")).to be <= 1_000
    ensure
      proxy&.close
    end
  end

  describe "6. a lost control key" do
    it "fails closed: operations refuse until the operator sets the phase again" do
      expect(locking_cli("phase", "set", "3", "--init")[0]).to eq(0)
      configure_dynamic
      expect(Locking.new("job").acquire(30)).to be(true)
      expect(destination.exists?("locking:job")).to be(true)

      destination_server.restart # no persistence: the control key is gone
      sleep 0.06 # past phase_cache_ttl: the next operation reads the phase again
      expect { Locking.new("other").acquire(30) }
        .to raise_error(Locking::PhaseError, /no phase is set.*--init/)
      expect(source.keys("locking:*")).to eq([]) # nothing fell back to the source
      status, out, = locking_cli("phase")
      expect(status).to eq(0)
      expect(out).to include("none set")

      expect(locking_cli("phase", "set", "3")[0]).to eq(1) # needs --init
      expect(locking_cli("phase", "set", "3", "--init")[0]).to eq(0)
      expect(Locking.new("other").acquire(30)).to be(true)
      expect(destination.exists?("locking:other")).to be(true)
      expect(source.keys("locking:*")).to eq([])
    end
  end

  describe "7. a fork inside with_lock" do
    # In a process of its own: the child continues on its parent's stack (fork
    # without a block) and ends with `exit`, which unwinds with_lock's ensure.
    it "does not release the parent's lock when the child exits" do
      script = <<~RUBY
        require "locking"
        require "redis"
        redis = Redis.new(url: #{source_server.url.dump})
        Locking.configure { |c| c.source = #{source_server.url.dump} }
        Locking.with_lock("nightly", ttl: 30) do |lock|
          if (pid = fork)
            Process.wait(pid)
            puts "after the child: \#{redis.get('locking:nightly') == lock.token ? 'held' : 'released'}"
            puts "another job: \#{Locking.new('nightly').acquire(30) ? 'took it' : 'refused'}"
          else
            exit 0
          end
        end
        puts "at the end: \#{redis.exists?('locking:nightly') ? 'held' : 'released'}"
      RUBY
      out, status = Open3.capture2e({ "RUBYLIB" => File.expand_path("../../lib", __dir__), "RUBYOPT" => nil },
                                    RbConfig.ruby, "-e", script)
      expect(status).to be_success, out
      expect(out.lines.map(&:chomp)).to eq(["after the child: held", "another job: refused", "at the end: released"])
    end
  end

  describe "8. bad settings" do
    it "raise ArgumentError; none crashes the process" do
      script = <<~RUBY
        require "locking"
        [
          -> { Locking.configure { |c| c.pool_size = 2**40 } },
          -> { Locking.configure { |c| c.pool_size = 2**62 } },
          -> { Locking.configure { |c| c.timeout = 1e19 } },
          -> { Locking.configure { |c| c.phase_cache_ttl = 1e19 } },
          -> { Locking::Client.send(:_new, "redis://127.0.0.1:1/0", nil, 0, "p:", 1.0, 2**40, nil, "h", 0) },
          -> { Locking::Client.send(:_new, "redis://127.0.0.1:1/0", nil, 0, "p:", 1e19, 2, nil, "h", 0) },
        ].each do |bad|
          bad.call
          puts "accepted"
        rescue ArgumentError => e
          puts "ArgumentError: \#{e.message}"
        end
      RUBY
      out, status = Open3.capture2e({ "RUBYLIB" => File.expand_path("../../lib", __dir__), "RUBYOPT" => nil },
                                    RbConfig.ruby, "-e", script)
      expect(status).to be_success, out
      lines = out.lines
      expect(lines.size).to eq(6), out
      expect(lines).to all(start_with("ArgumentError: "))
      expect(out).to include("pool_size must be", "timeout must be", "phase_cache_ttl must be")
    end
  end

  describe "9. the dynamic phase read on a stale pooled connection" do
    it "is retried on a new connection, like every other operation" do
      expect(locking_cli("phase", "set", "0", "--init")[0]).to eq(0)
      configure_dynamic(pool_size: 1)
      expect(Locking.new("job").locked?).to be(false) # one pooled connection per server
      destination_server.restart
      destination.set(phase_key, "0") # the operator's --init after the restart
      sleep 0.06 # past phase_cache_ttl: the next operation reads the phase again
      expect(Locking.new("job").acquire(10)).to be(true) # first try, no ConnectionError
    end
  end

  describe "10. a key read in its last millisecond" do
    it "is skipped by backfill as expiring, not failed" do
      configure_both(:dual)
      expect(locking_cli("phase", "set", "1", "--init")[0]).to eq(0)
      3.times do
        source_server.bulk_load(20_000.times.map { |i| ["SET", "locking:short:#{i}", "t", "PX", (1 + (i % 4)).to_s] })
        status, out, err = locking_cli("backfill", "--restart")
        expect(status).to eq(0), out + err
        expect(out).to include(" 0 failed")
      end
    end
  end
end
