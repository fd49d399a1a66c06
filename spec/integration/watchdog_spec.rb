# frozen_string_literal: true

# The watchdog works on what its phase needs, and only that: a hung server
# the phase does not use never delays a renewal; min_replicas_acked applies
# to renewals too; a lock nobody references is renewed no more; auto_renew:
# SECONDS renews for at most that long.
RSpec.describe "the watchdog (auto_renew)" do
  after do
    Locking.logger = nil
    Locking.reset_configuration!
  end

  {
    destination: [:source_server, :destination_server, "phase 3, the source hung"],
    source: [:destination_server, :source_server, "phase 0, the destination hung"]
  }.each do |phase, (unused, used, title)|
    it "never waits on the server its phase does not use (#{title})" do
      configure_both(phase, timeout: 0.3)
      lock = Locking.new("hung")
      expect(lock.acquire(1.0, auto_renew: true)).to be(true)
      before = Locking.stats
      public_send(unused).freeze
      begin
        # Six renewals (two TTLs) with the unused server frozen throughout.
        expect(wait_for(4) { Locking.stats[:renewed] >= before[:renewed] + 6 }).to be(true)
        stats = Locking.stats
        expect(stats[:failed]).to eq(before[:failed])
        expect(stats[:lag_max_ms]).to be < 300 # no renewal waited out the hung server's timeout
        expect(lock.have_lock?).to be(true)
        expect(public_send(used).redis.get("locking:hung")).to eq(lock.token)
      ensure
        public_send(unused).thaw
      end
      expect(lock.release).to be(true)
      expect(public_send(used).redis.exists("locking:hung")).to eq(0)
    end
  end

  it "counts a renewal min_replicas_acked does not confirm as failed, and loses the lock by its deadline" do
    replica = RedisServer.start("watchdog-replica", settings: ["--replicaof", "127.0.0.1", source_server.port.to_s])
    begin
      linked = wait_for(10) { replica.redis.info("replication")["master_link_status"] == "up" }
      expect(linked).to be(true)
      configure_single(timeout: 0.6, min_replicas_acked: 1)
      lock = Locking.new("replicated")
      # A WAIT that timed out on a busy machine: the lock is written, so asking again answers "mine".
      acquired = 3.times.find do
        break lock.acquire(1.5, auto_renew: true)
      rescue Locking::NotReplicatedError
        nil
      end
      expect(acquired).to be(true)
      expect(wait_for(3) { Locking.stats[:renewed] >= 2 }).to be(true)
      replica.freeze
      expect(wait_for(4) { lock.lost? }).to be(true)
      expect(lock.have_lock?).to be(false)
      expect(Locking.stats[:failed]).to be >= 1
      expect(Locking.stats[:last_error]).to match(/only 0 of the 1 replicas/)
    ensure
      replica.cleanup
    end
  end

  it "stops renewing a lock whose Locking object was garbage collected, and names its key in a warning" do
    log = StringIO.new
    Locking.logger = Logger.new(log)
    Thread.new { Locking.new("forgotten").acquire(0.5, auto_renew: true) }.join
    expect(Locking.stats[:held]).to eq(1)
    dropped = wait_for(5) do
      GC.start(full_mark: true, immediate_sweep: true)
      Locking.stats[:held].zero?
    end
    expect(dropped).to be(true)
    expect(wait_for(1) { source.exists("locking:forgotten").zero? }).to be(true)
    Locking.new("other").locked? # warnings are given on the next operation
    expect(log.string).to match(/"forgotten" was garbage collected while held/)
  end

  it "renews for at most auto_renew: SECONDS, then lets the TTL run out" do
    lock = Locking.new("bounded")
    started = monotonic
    expect(lock.acquire(0.3, auto_renew: 1.0)).to be(true)
    expect(wait_for(3) { source.exists("locking:bounded").zero? }).to be(true)
    expect(monotonic - started).to be_between(1.0, 1.5)
    expect(lock.have_lock?).to be(false)
    expect(lock.release).to be(false)
  end

  it "rejects an auto_renew: that is neither true, false nor a positive number of seconds" do
    lock = Locking.new("bad")
    expect { lock.acquire(1, auto_renew: -1) }.to raise_error(ArgumentError, /auto_renew must be .* got -1/)
    expect { lock.acquire(1, auto_renew: "yes") }.to raise_error(ArgumentError, /got "yes"/)
    expect(source.exists("locking:bad")).to eq(0)
  end

  it "warns when a TTL leaves no room for a slow renewal (at most 2 x timeout + 1%), and not above it" do
    messages = []
    allow(Locking).to receive(:server_warning) { |message| messages << message }
    configure_single(timeout: 0.9)
    short = Locking.new("short")
    expect(short.acquire(1.234, auto_renew: true)).to be(true)
    expect(messages.join("\n")).to include("a TTL of 1234 ms and a timeout of 900 ms", "above 2 x timeout + 1% (1821 ms)")
    messages.clear
    long = Locking.new("long")
    expect(long.acquire(1.9, auto_renew: true)).to be(true)
    expect(messages).to be_empty
    expect([short, long].map(&:release)).to eq([true, true])
  end
end
