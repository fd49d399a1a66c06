# frozen_string_literal: true

require_relative "../support/reply_dropping_proxy"

# Faults as production brings them: lost replies, killed and paused holders,
# a destination that dies in phase 1, fork storms, interrupts mid-call.
RSpec.describe "faults" do
  let(:redis) { source_server.redis }

  describe "a lost reply" do
    around do |example|
      @proxy = ReplyDroppingProxy.new(source_server.port)
      example.run
    ensure
      @proxy.close
    end

    before { Locking.configure { |c| c.source = @proxy.url } }

    it "on a new connection: acquire raises and undoes its write; a retry with the same token finds one owner" do
      @proxy.drop_next_reply!
      lock = Locking.new("job", token: "mine")
      expect { lock.acquire(30) }.to raise_error(Locking::ConnectionError, /connection lost/)
      # The SET ran; the rollback (on another new connection) removed it again.
      expect(redis.exists?("locking:job")).to be(false)

      expect(Locking.new("job", token: "mine").acquire(30)).to be(true)
      expect(Locking.new("job", token: "other").acquire(30)).to be(false)
      expect(redis.get("locking:job")).to eq("mine")
    end

    it "on a pooled connection: acquire is retried once on a new one, and reports the one owner" do
      Locking.new("warm").locked? # a pooled connection
      @proxy.drop_next_reply!
      lock = Locking.new("job", token: "mine")
      expect(lock.acquire(30)).to be(true) # the retry found its own token
      expect(redis.get("locking:job")).to eq("mine")
      expect(Locking.new("job", token: "other").acquire(30)).to be(false)
    end

    it "never lets a retried release delete a lock someone else took since" do
      lock = Locking.new("job", token: "mine")
      lock.acquire(30)
      @proxy.drop_next_reply!
      lock.release # the reply is lost; retried on a new connection (it may report false)
      expect(redis.exists?("locking:job")).to be(false) # the release did run

      expect(Locking.new("job", token: "theirs").acquire(30)).to be(true)
      expect(lock.release).to be(false) # the caller's retry
      expect(redis.get("locking:job")).to eq("theirs")
    end
  end

  def fork_holder(ttl)
    reader, writer = IO.pipe
    pid = fork do
      reader.close
      lock = Locking.new("job", token: "holder")
      writer.puts(lock.acquire(ttl) ? "held" : "refused")
      writer.close
      sleep 30
      exit!(0)
    end
    writer.close
    expect(reader.gets.chomp).to eq("held")
    pid
  end

  it "keeps a SIGKILLed holder's lock until its TTL, then lets the next job take it" do
    pid = fork_holder(0.6)
    Process.kill(:KILL, pid)
    Process.wait(pid)

    expect(Locking.new("job").acquire(5)).to be(false)
    expect(redis.get("locking:job")).to eq("holder")
    sleep 0.7
    taker = Locking.new("job", token: "next")
    expect(taker.acquire(5)).to be(true)
    expect(redis.get("locking:job")).to eq("next")
  end

  it "lets a holder paused past its TTL (SIGSTOP) find, on waking, that it lost the lock" do
    reader, writer = IO.pipe
    go_reader, go_writer = IO.pipe
    pid = fork do
      reader.close
      go_writer.close
      lock = Locking.new("job", token: "paused")
      writer.puts(lock.acquire(0.4))
      go_reader.gets # resumes here after SIGCONT
      writer.puts([lock.renew(10), lock.release].inspect)
      exit!(0)
    end
    writer.close
    go_reader.close
    expect(reader.gets.chomp).to eq("true")

    Process.kill(:STOP, pid)
    sleep 0.5
    expect(Locking.new("job", token: "new-holder").acquire(30)).to be(true)
    Process.kill(:CONT, pid)
    go_writer.puts("go")

    expect(reader.gets.chomp).to eq("[false, false]")
    Process.wait(pid)
    expect(redis.get("locking:job")).to eq("new-holder")
    expect(redis.pttl("locking:job")).to be > 25_000
  end

  it "fails a phase-1 acquire with a typed error when the destination is down, leaving nothing on the source" do
    down = RedisServer.start("down-destination")
    configure_both(:dual, destination: down.url, timeout: 0.5)
    down.stop

    expect { Locking.new("job").acquire(30) }.to raise_error(Locking::ConnectionError, /#{down.url}/)
    expect(redis.keys("*")).to eq([])
  ensure
    down&.cleanup
  end

  it "survives a fork storm: 50 children working while the parent works, every reply right" do
    Locking.new("warm").locked?
    pids = 50.times.map do |n|
      fork do
        ok = 10.times.all? do |i|
          lock = Locking.new("storm:#{n}:#{i}", token: "t#{n}")
          lock.acquire(10) && Locking.new("storm:#{n}:#{i}").locked? && lock.ttl.to_f.positive? && lock.release
        end
        exit!(ok ? 0 : 1)
      end
    end
    parent_ok = 100.times.all? do |i|
      lock = Locking.new("parent:#{i}")
      lock.acquire(10) && lock.release
    end
    statuses = Timeout.timeout(60) { pids.map { |pid| Process.wait2(pid).last } }

    expect(parent_ok).to be(true)
    expect(statuses.count(&:success?)).to eq(50)
    expect(redis.keys("locking:*")).to eq([])
  end

  it "never leaves a key without a TTL when Timeout or Thread#raise interrupts acquire" do
    server = RedisServer.start("interrupted")
    Locking.configure do |c|
      c.source = server.url
      c.timeout = 5
    end
    Locking.new("warm").locked?
    interrupted = 0
    server.frozen do
      expect { Timeout.timeout(0.2) { Locking.new("job:a", token: "a").acquire(30) } }.to raise_error(Timeout::Error)
      thread = Thread.new { Locking.new("job:b", token: "b").acquire(30) }
      thread.report_on_exception = false
      sleep 0.2
      thread.raise(RuntimeError, "stop")
      expect { thread.join }.to raise_error(RuntimeError, "stop")
      interrupted += 2
    end
    expect(interrupted).to eq(2)
    # The commands may still have run when the server woke up; any key they
    # left carries the TTL it was sent with.
    %w[locking:job:a locking:job:b].each do |key|
      ttl = server.redis.pttl(key)
      expect(ttl == -2 || ttl.between?(1, 30_000)).to be(true), "#{key}: pttl #{ttl}"
    end
    expect(Locking.new("after", token: "t").acquire(5)).to be(true)
  ensure
    server&.cleanup
  end
end

RSpec.describe "a server that may evict locks" do
  around do |example|
    @server = RedisServer.new("evicting")
    @server.start
    @server.redis.config(:set, "maxmemory-policy", "allkeys-lru")
    example.run
  ensure
    @server.cleanup
    Locking.logger = nil
  end

  it "warns once, at the first connection, naming the server and the policy" do
    log = StringIO.new
    Locking.logger = Logger.new(log)
    Locking.configure { |c| c.source = @server.url }
    3.times { Locking.new("job").locked? }
    warnings = log.string.lines.grep(/maxmemory-policy/)
    expect(warnings.size).to eq(1)
    expect(warnings.first).to include(@server.url, "allkeys-lru", "noeviction")
  end

  it "refuses to use it with eviction_policy_check = :raise" do
    Locking.configure do |c|
      c.source = @server.url
      c.eviction_policy_check = :raise
    end
    expect { Locking.new("job").acquire(5) }.to raise_error(Locking::CommandError, /allkeys-lru/)
    expect(@server.redis.dbsize).to eq(0)
  end

  it "is quiet with noeviction" do
    @server.redis.config(:set, "maxmemory-policy", "noeviction")
    log = StringIO.new
    Locking.logger = Logger.new(log)
    Locking.configure { |c| c.source = @server.url }
    Locking.new("job").locked?
    expect(log.string).to eq("")
  end
end

RSpec.describe "a paused server (CLIENT PAUSE)" do
  around do |example|
    @server = RedisServer.start("paused")
    example.run
  ensure
    @server.cleanup
  end

  it "times out a write during the pause, and afterwards there is exactly one owner or none" do
    Locking.configure do |c|
      c.source = @server.url
      c.timeout = 0.3
    end
    Locking.new("warm").locked?
    @server.redis.call("CLIENT", "PAUSE", "700", "WRITE")
    lock = Locking.new("job", token: "during-pause")
    started = monotonic
    expect { lock.acquire(30) }.to raise_error(Locking::TimeoutError)
    expect(monotonic - started).to be < 0.8
    expect(lock.have_lock?).to be(false)

    sleep 0.8 # the pause ends; the queued SET may run now
    value = @server.redis.get("locking:job")
    expect([nil, "during-pause"]).to include(value)
    expect(@server.redis.pttl("locking:job")).to be_between(1, 30_000) if value
    other = Locking.new("job", token: "after")
    expect(other.acquire(30)).to be(value.nil?)
    expect(@server.redis.get("locking:job")).to eq(value || "after")
  end
end
