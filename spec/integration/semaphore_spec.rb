# frozen_string_literal: true

require "open3"

RSpec.describe Locking::Semaphore do
  include PhaseHelpers

  let(:redis) { source_server.redis }
  let(:key) { "locking:exports" }

  def places(server = source_server)
    server.redis.zrange(key, 0, -1, with_scores: true).to_h
  end

  def server_ms(server = source_server)
    seconds, micros = server.redis.time
    (seconds * 1000) + (micros / 1000)
  end

  describe "#acquire" do
    it "keeps one sorted set at key_prefix + key: each token's place, scored by its expiry in server ms" do
      before = server_ms
      expect(described_class.new("exports", limit: 3, token: "a").acquire(30)).to be(true)
      expect(described_class.new("exports", limit: 3, token: "b").acquire(10)).to be(true)

      expect(redis.keys("*")).to eq([key])
      expect(redis.type(key)).to eq("zset")
      expect(places.keys).to contain_exactly("a", "b")
      expect(places["a"]).to be_between(before + 29_000, server_ms + 30_000)
      expect(places["b"]).to be_between(before + 9_000, server_ms + 10_000)
      # The key goes with its latest place.
      expect(redis.pttl(key)).to be_between(29_000, 30_000)
    end

    it "refuses a holder beyond the limit and leaves the places as they were" do
      3.times { |i| expect(described_class.new("exports", limit: 3, token: "t#{i}").acquire(10)).to be(true) }
      before = places

      fourth = described_class.new("exports", limit: 3, token: "t3")
      expect(fourth.acquire(10)).to be(false)

      expect(fourth.have_lock?).to be(false)
      expect(places).to eq(before)
    end

    it "gives a token its own place again with its TTL reset, never a second place" do
      expect(described_class.new("exports", limit: 2, token: "mine").acquire(10)).to be(true)
      redis.zadd(key, server_ms + 1_000, "mine", xx: true)

      again = described_class.new("exports", limit: 2, token: "mine")
      expect(again.acquire(10)).to be(true)

      expect(places.keys).to eq(["mine"])
      expect(places["mine"]).to be > server_ms + 9_000
      expect(again.have_lock?).to be(true)
    end

    it "counts an expired place as free, and drops it" do
      expect(described_class.new("exports", limit: 1, token: "old").acquire(0.05)).to be(true)
      sleep 0.1

      expect(described_class.new("exports", limit: 1, token: "new").acquire(10)).to be(true)
      expect(places.keys).to eq(["new"])
    end

    it "raises AlreadyAcquireLockError on a double acquire by one object" do
      semaphore = described_class.new("exports", limit: 2, token: "t")
      semaphore.acquire(10)
      expect { semaphore.acquire(10) }.to raise_error(Locking::AlreadyAcquireLockError, /already held/)
      expect(places.keys).to eq(["t"])
    end
  end

  describe "#release" do
    it "gives back only its own place, and the set goes with the last one" do
      a = described_class.new("exports", limit: 2, token: "a")
      b = described_class.new("exports", limit: 2, token: "b")
      a.acquire(10)
      b.acquire(10)

      expect(a.release).to be(true)
      expect(a.have_lock?).to be(false)
      expect(places.keys).to eq(["b"])
      expect(a.release).to be(false)

      expect(b.release).to be(true)
      expect(redis.exists?(key)).to be(false)
    end
  end

  describe "#renew" do
    it "resets the TTL of a live place" do
      semaphore = described_class.new("exports", limit: 2, token: "a")
      semaphore.acquire(1)

      expect(semaphore.renew(20)).to be(true)

      expect(places["a"]).to be > server_ms + 19_000
      expect(redis.pttl(key)).to be > 19_000
      expect(semaphore.lost?).to be(false)
    end

    it "never revives an expired place, which another holder may have taken" do
      semaphore = described_class.new("exports", limit: 1, token: "old")
      semaphore.acquire(0.05)
      sleep 0.1
      described_class.new("exports", limit: 1, token: "new").acquire(10)

      expect(semaphore.renew(10)).to be(false)

      expect(semaphore.lost?).to be(true)
      expect(semaphore.have_lock?).to be(false)
      expect(places.keys).to eq(["new"])
    end
  end

  describe "#holders" do
    it "counts live places only" do
      described_class.new("exports", limit: 5, token: "a").acquire(10)
      described_class.new("exports", limit: 5, token: "b").acquire(10)
      redis.zadd(key, server_ms - 1, "expired")

      expect(described_class.new("exports", limit: 5).holders).to eq(2)
      expect(described_class.new("other", limit: 5).holders).to eq(0)
    end
  end

  describe "#with_lock" do
    it "holds a place while the block runs and gives it back after" do
      semaphore = described_class.new("exports", limit: 2, token: "w")
      inside = semaphore.with_lock(10) { places.keys }

      expect(inside).to eq(["w"])
      expect(redis.exists?(key)).to be(false)
    end

    it "raises NotAcquiredError when every place stayed taken for all of wait" do
      described_class.new("exports", limit: 1, token: "holder").acquire(10)

      expect { described_class.new("exports", limit: 1).with_lock(10, wait: 0.1) { nil } }
        .to raise_error(Locking::NotAcquiredError, /all 1 places taken/)
      expect(places.keys).to eq(["holder"])
    end
  end

  describe "validation" do
    it "names the bad value" do
      [0, -1, 1.5, "3", nil, Locking::Semaphore::MAX_LIMIT + 1].each do |limit|
        expect { described_class.new("exports", limit: limit) }
          .to raise_error(ArgumentError, /limit must be an Integer from 1 to \d+, got #{Regexp.escape(limit.inspect)}/)
      end
      expect { described_class.new("", limit: 1) }.to raise_error(ArgumentError, /semaphore key must not be empty/)
      expect { described_class.new("exports", limit: 1).acquire(0) }.to raise_error(ArgumentError, /got 0/)
      expect { described_class.new("exports", limit: 1).acquire(10, auto_renew: "yes") }
        .to raise_error(ArgumentError, /auto_renew must be true, false or a positive number of seconds, got "yes"/)
      expect(redis.keys("*")).to be_empty
    end
  end

  describe "across the phases" do
    it "keeps places on the destination only in phase 3, once the source is no longer configured" do
      configure_both(:destination, source: nil)
      expect(described_class.new("exports", limit: 2, token: "d").acquire(10)).to be(true)

      expect(places(destination_server).keys).to eq(["d"])
      expect(redis.keys("*")).to be_empty
      expect(described_class.new("exports", limit: 2).holders).to eq(1)
    end
  end

  it "gives the same answers with GC.stress on, for binary keys and tokens" do
    exercise = lambda do
      name = "gc:#{rand(1_000_000)}".b + "\xFF".b
      mine = described_class.new(name, limit: 1, token: "t\x00oken".b)
      other = described_class.new(name, limit: 1)
      [mine.acquire(5), other.acquire(5), mine.holders, mine.renew(5), mine.release, mine.holders]
    end
    under_gc_stress do
      3.times { expect(exercise.call).to eq([true, false, 1, true, true, 0]) }
    end
    expect(redis.keys("*")).to eq([])
  end

  # In a child Ruby: requiring locking/testing turns memory mode on for the whole process.
  it "says Locking::Testing's memory mode does not support semaphores yet" do
    script = <<~RUBY
      require "locking/testing"
      begin
        Locking::Semaphore.new("exports", limit: 1).acquire(1)
      rescue Locking::Error => e
        puts "\#{e.class}: \#{e.message}"
      end
    RUBY
    out, status = Open3.capture2e(RbConfig.ruby, "-I", File.expand_path("../../lib", __dir__), "-e", script)

    expect(status).to be_success
    expect(out).to eq("Locking::Error: semaphores are not yet supported by Locking::Testing's memory mode\n")
  end

  # 4 processes x 3 threads on one semaphore of 3: each insider counts itself
  # in and out on a witness server; the count never exceeds 3.
  it "never lets more than the limit in at once (occupancy witness, forked processes x threads)" do
    witness_url = witness_server.url
    children = Array.new(4) do
      Forked.new do
        witness = Redis.new(url: witness_url)
        mutex = Mutex.new
        seen = 0
        threads = Array.new(3) do
          Thread.new do
            deadline = monotonic + 20
            25.times do
              break if monotonic > deadline

              described_class.new("occupied", limit: 3).with_lock(5, wait: 10) do
                inside = mutex.synchronize { witness.incr("insiders") }
                mutex.synchronize { seen = [seen, inside].max }
                sleep(rand * 0.004)
                mutex.synchronize { witness.decr("insiders") }
              end
            end
          end
        end
        threads.each(&:join)
        seen
      end
    end

    most = children.map(&:result).max

    expect(most).to eq(3)
    expect(witness_server.redis.get("insiders")).to eq("0")
    expect(redis.exists?("locking:occupied")).to be(false)
  end
end
