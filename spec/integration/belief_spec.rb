# frozen_string_literal: true

require_relative "../support/holding_proxy"
require_relative "../support/lagging_proxy"
require_relative "../support/reply_delaying_proxy"

# What a holder believes: have_lock? must never outlive the lock in Redis.
# Each holder is a real process that reports, over a pipe, each moment its
# have_lock? said true; the spec measures when Redis let the key go (by PTTL,
# read straight from the server) and checks that the last true came before.
RSpec.describe "have_lock? and lost? against what Redis holds" do
  let(:redis) { source_server.redis }

  # The clock the core's deadlines use (the same in every process).
  def self.clock = Process.clock_gettime(Process::CLOCK_BOOTTIME)
  def clock = self.class.clock

  # A holder's reports: "T <clock>" while have_lock? is true (at most every
  # 2 ms), then "F <clock>" once it turned false; "held" once acquired.
  def report_belief(lock, writer)
    reported = 0.0
    loop do
      now = clock
      unless lock.have_lock?
        writer.puts("F #{now}")
        break
      end
      if now - reported >= 0.002
        writer.puts("T #{now}")
        reported = now
      end
      sleep 0.001
    end
  end

  # Reads a holder's reports in a thread: #last_true, #turned_false, #lines.
  class BeliefLog
    attr_reader :lines

    def initialize(reader)
      @lines = Queue.new
      @thread = Thread.new { reader.each_line { |line| @lines << line.chomp } }
      @seen = []
    end

    def drain
      @seen << @lines.pop(true) until @lines.empty?
      @seen
    rescue ThreadError
      @seen
    end

    def wait_for(line, seconds = 5)
      deadline = clock + seconds
      until drain.any? { |seen| seen.start_with?(line) }
        return false if clock > deadline

        sleep 0.005
      end
      true
    end

    def clock = Process.clock_gettime(Process::CLOCK_BOOTTIME)
    def last_true = drain.filter_map { |line| line[2..].to_f if line.start_with?("T ") }.max
    def turned_false = drain.find { |line| line.start_with?("F ") }&.then { |line| line[2..].to_f }
  end

  def spawn_holder(url:, ttl:, timeout:, &after_acquire)
    reader, writer = IO.pipe
    pid = fork do
      reader.close
      Locking.reset_configuration!
      Locking.configure do |c|
        c.source = url
        c.timeout = timeout
      end
      lock = Locking.new("belief")
      exit!(1) unless lock.acquire(ttl, auto_renew: true)
      writer.sync = true
      writer.puts("held")
      after_acquire ? after_acquire.call(lock, writer) : report_belief(lock, writer)
      exit!(0)
    end
    writer.close
    [pid, BeliefLog.new(reader)]
  end

  # Polls the key's PTTL on the server until it is gone; returns the latest
  # moment Redis can have let it go by our clock (each alive reading at t
  # with p ms left means it lives until at least t + p).
  def wait_until_expired(key = "locking:belief", seconds: 10)
    alive_until = 0.0
    deadline = clock + seconds
    loop do
      before = clock
      pttl = redis.pttl(key)
      return alive_until if pttl == -2

      alive_until = [alive_until, before + (pttl / 1000.0)].max if pttl.positive?
      raise "#{key} still held after #{seconds} s" if clock > deadline

      sleep 0.001
    end
  end

  def take_over
    expect(redis.set("locking:belief", "other", nx: true, px: 10_000)).to be(true)
  end

  after do
    Array(@pids).each do |pid|
      Process.kill(:KILL, pid)
      Process.wait(pid)
    rescue Errno::ESRCH, Errno::ECHILD # gone already, or a grandchild
      nil
    end
    @proxy&.close
  end

  it "turns have_lock? false before Redis lets an auto-renewed lock go when its holder is cut off (a partition)" do
    @proxy = HoldingProxy.new(source_server.port)
    pid, log = spawn_holder(url: @proxy.url, ttl: 1.5, timeout: 0.5)
    @pids = [pid]
    expect(log.wait_for("held")).to be(true)
    expect(log.wait_for("T ")).to be(true)
    cut_at = clock
    @proxy.hold! # every request from now on is blackholed
    expired_by = wait_until_expired
    take_over
    expect(log.wait_for("F ", 3)).to be(true)
    expect(log.last_true).to be < expired_by
    # Lost within one TTL of the partition, never later (README: "What a holder believes").
    expect(log.turned_false - cut_at).to be <= 1.5
    puts "\n  partition -> have_lock? false: #{((log.turned_false - cut_at) * 1000).round} ms " \
         "(TTL 1500 ms, timeout 500 ms); key gone #{((expired_by - log.last_true) * 1000).round} ms after the last true"
    expect(redis.get("locking:belief")).to eq("other")
  end

  it "answers false on waking from a stop past its TTL, before any renewal returns" do
    # Replies 100 ms late: a woken holder's renewal takes that long to say the lock is gone.
    @proxy = LaggingProxy.new(source_server.port, lag_ms: 100)
    pid, log = spawn_holder(url: @proxy.url, ttl: 1.0, timeout: 0.3)
    @pids = [pid]
    expect(log.wait_for("held")).to be(true)
    expect(log.wait_for("T ")).to be(true)
    Process.kill(:STOP, pid)
    expired_by = wait_until_expired
    take_over
    Process.kill(:CONT, pid)
    expect(log.wait_for("F ", 3)).to be(true)
    expect(log.last_true).to be < expired_by
    expect(redis.get("locking:belief")).to eq("other")
  end

  it "runs a forked child's view of an auto-renewed lock out with the lock once its parent is gone" do
    reader, writer = IO.pipe
    holder = fork do
      reader.close
      Locking.reset_configuration!
      Locking.configure do |c|
        c.source = source_server.url
        c.timeout = 0.3
      end
      lock = Locking.new("belief")
      exit!(1) unless lock.acquire(1.0, auto_renew: true)
      writer.sync = true
      child = fork do
        report_belief(lock, writer)
        exit!(0)
      end
      writer.puts("child #{child}")
      sleep
    end
    writer.close
    log = BeliefLog.new(reader)
    expect(log.wait_for("child")).to be(true)
    @pids = [holder, log.drain.find { |line| line.start_with?("child") }.split.last.to_i]
    expect(log.wait_for("T ")).to be(true)
    renewed = Timeout.timeout(3) { sleep 0.01 until redis.pttl("locking:belief") > 900 } # the parent renewed it
    expect(renewed).to be_nil
    Process.kill(:KILL, holder)
    expired_by = wait_until_expired
    take_over
    expect(log.wait_for("F ", 3)).to be(true)
    expect(log.last_true).to be < expired_by
  end

  context "with an explicit renew that shortens the lock" do
    let(:lock) { Locking.new("k-short") }

    before do
      @proxy = ReplyDelayingProxy.new(source_server.port, delay: 0)
      configure_single(@proxy, timeout: 1.0)
      expect(lock.acquire(60)).to be(true)
      expect(lock.renew(60)).to be(true) # the renewal's script is loaded: the late one runs at once
      @proxy.arm! # replies to lock commands are late from now on
    end

    it "believes it no longer than it asks while its reply is late" do
      @proxy.delay = 3
      configure_single(@proxy, timeout: 5.0)
      renewal = Thread.new { lock.renew(0.2) }
      wait_until_expired("locking:k-short")
      expect(renewal).to be_alive # the reply has not come: the old belief (60 s) must not stand meanwhile
      expect(lock.have_lock?).to be(false)
      expect(renewal.value).to be(true) # it ran while held
      expect(lock.have_lock?).to be(false)
      expect(redis.exists("locking:k-short")).to eq(0)
    end

    it "believes it no longer than it asks after its reply timed out" do
      @proxy.delay = 4
      expect { lock.renew(0.2) }.to raise_error(Locking::ConnectionError)
      wait_until_expired("locking:k-short")
      expect(lock.have_lock?).to be(false)
    end

    it "renews on with the new TTL when the lock was auto-renewed" do
      @proxy.delay = 0
      configure_single(@proxy, timeout: 0.3)
      lock.release
      expect(lock.acquire(30, auto_renew: true)).to be(true)
      expect(lock.renew(1.0)).to be(true)
      expect(redis.pttl("locking:k-short")).to be_between(1, 1000)
      # Three TTLs later the renewer has kept it, at the new TTL, and the holder believes it.
      renewed_at = monotonic
      expect(wait_for(6) { monotonic - renewed_at > 3.0 && redis.pttl("locking:k-short").between?(1, 1000) })
        .to be(true)
      expect(lock.have_lock?).to be(true)
      expect(lock.release).to be(true)
    end
  end

  context "with writes whose answers come late" do
    it "believes an auto_renew shorter than what the lock had left no longer than its TTL" do
      lock = Locking.new("short-renewer")
      expect(lock.acquire(10)).to be(true)
      lock.auto_renew(0.3, renew_for: 0.5) # renews at 0.3 s for half a second, then lets it go
      wait_until_expired("locking:short-renewer")
      expect(lock.have_lock?).to be(false)
      expect(lock.lost?).to be(true)
    end

    it "believes nothing from a release's send, even when its reply times out" do
      proxy = ReplyDelayingProxy.new(source_server.port, delay: 0)
      configure_single(proxy, timeout: 0.5)
      lock = Locking.new("k-release")
      expect(lock.acquire(10)).to be(true)
      # The release's script loaded first: a NOSCRIPT answer, late too, would leave the key (nothing
      # ran, the holder believes nothing either) and this example could not see the release run.
      warm = Locking.new("k-warm")
      expect([warm.acquire(10), warm.release]).to eq([true, true])
      proxy.delay = 2
      proxy.arm!
      expect { lock.release }.to raise_error(Locking::ConnectionError)
      expect(lock.have_lock?).to be(false)
      expect(wait_for { redis.exists("locking:k-release").zero? }).to be(true) # it ran
    ensure
      proxy&.close
    end

    it "keeps lost? true once the renewer found the lock gone, after stop_renewing too" do
      lock = Locking.new("vanished")
      expect(lock.acquire(1.0, auto_renew: true)).to be(true)
      redis.del("locking:vanished")
      expect(wait_for(5) { lock.lost? }).to be(true)
      lock.stop_renewing
      expect([lock.lost?, lock.have_lock?]).to eq([true, false])
      lock.release
      expect(lock.lost?).to be(false)
    end
  end
end
