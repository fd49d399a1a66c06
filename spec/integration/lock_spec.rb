# frozen_string_literal: true

RSpec.describe Locking do
  let(:redis) { source_server.redis }

  describe "#acquire" do
    it "stores the token under key_prefix + key with the TTL in milliseconds" do
      lock = Locking.new("ImportJob:42", token: "token-a")

      expect(lock.acquire(30)).to be(true)

      expect(redis.keys("*")).to eq(["locking:ImportJob:42"])
      expect(redis.get("locking:ImportJob:42")).to eq("token-a")
      expect(redis.pttl("locking:ImportJob:42")).to be_between(29_000, 30_000)
    end

    it "takes Float seconds with millisecond precision" do
      Locking.new("float", token: "t").acquire(1.5)
      expect(redis.pttl("locking:float")).to be_between(1_400, 1_500)

      Locking.new("tiny", token: "t").acquire(0.25)
      expect(redis.pttl("locking:tiny")).to be_between(150, 250)
    end

    it "refuses a second holder and leaves the first one's lock as it was" do
      first = Locking.new("job", token: "first")
      second = Locking.new("job", token: "second")

      expect(first.acquire(10)).to be(true)
      expect(second.acquire(10)).to be(false)

      expect(second.have_lock?).to be(false)
      expect(redis.get("locking:job")).to eq("first")
      expect(redis.pttl("locking:job")).to be_between(9_000, 10_000)
    end

    # A retry whose first attempt landed (its reply was lost, or it timed
    # out) answers "already mine". have_lock? then counts the full TTL from
    # the retry, so Redis must keep the key that long too.
    it "reports success to a retry with the same token and resets the TTL to the one asked for" do
      expect(Locking.new("job", token: "mine").acquire(10)).to be(true)
      redis.pexpire("locking:job", 1_000)

      retry_lock = Locking.new("job", token: "mine")
      expect(retry_lock.acquire(10)).to be(true)

      expect(redis.get("locking:job")).to eq("mine")
      expect(redis.pttl("locking:job")).to be_between(9_000, 10_000)
      expect(retry_lock.have_lock?).to be(true)
    end

    it "raises AlreadyAcquireLockError on a double acquire and changes nothing" do
      lock = Locking.new("job", token: "t")
      lock.acquire(10)
      redis.pexpire("locking:job", 4_000)

      expect { lock.acquire(10) }.to raise_error(Locking::AlreadyAcquireLockError, /already held/)

      expect(redis.get("locking:job")).to eq("t")
      expect(redis.pttl("locking:job")).to be <= 4_000
    end

    it "can take the lock again once it expired" do
      lock = Locking.new("job", token: "t")
      expect(lock.acquire(0.05)).to be(true)
      sleep 0.1

      expect(lock.have_lock?).to be(false)
      expect(redis.exists?("locking:job")).to be(false)
      expect(lock.acquire(10)).to be(true)
      expect(redis.get("locking:job")).to eq("t")
    end

    it "generates a UUID token by default, different for each lock" do
      a = Locking.new("a")
      b = Locking.new("a")
      expect(a.token).to match(/\A\h{8}-\h{4}-4\h{3}-[89ab]\h{3}-\h{12}\z/)
      expect(a.token).not_to eq(b.token)
    end

    it "works with binary keys and tokens, byte for byte" do
      key = "job:\xFF\x00\xFE".b
      token = "\x00\x01tok\xC3".b
      lock = Locking.new(key, token: token)

      expect(lock.acquire(10)).to be(true)

      stored = redis.keys("*")
      expect(stored.map(&:b)).to eq(["locking:".b + key])
      expect(redis.get("locking:".b + key).b).to eq(token)
      expect(Locking.new(key, token: "other").locked?).to be(true)
      expect(lock.release).to be(true)
      expect(redis.dbsize).to eq(0)
    end

    it "keeps a lock the caller did not know to hold no longer than its TTL" do
      lock = Locking.new("job", token: "t")
      lock.acquire(0.2)
      expect(redis.pttl("locking:job")).to be_between(1, 200)
    end
  end

  describe "#release" do
    it "deletes the key and leaves nothing behind" do
      lock = Locking.new("job", token: "t")
      lock.acquire(10)

      expect(lock.release).to be(true)

      expect(lock.have_lock?).to be(false)
      expect(redis.dbsize).to eq(0)
    end

    it "leaves a lock held by another token in place" do
      holder = Locking.new("job", token: "holder")
      holder.acquire(10)

      expect(Locking.new("job", token: "intruder").release).to be(false)

      expect(redis.get("locking:job")).to eq("holder")
      expect(redis.pttl("locking:job")).to be > 9_000
    end

    it "does not delete a lock that expired and was taken by someone else" do
      old = Locking.new("job", token: "old")
      old.acquire(0.05)
      sleep 0.1
      fresh = Locking.new("job", token: "fresh")
      expect(fresh.acquire(10)).to be(true)

      expect(old.release).to be(false)

      expect(redis.get("locking:job")).to eq("fresh")
    end

    it "works from another Locking built with the same key and token (enqueue here, release in a worker)" do
      Locking.new("job", token: "shared").acquire(10)

      expect(Locking.new("job", token: "shared").release).to be(true)

      expect(redis.dbsize).to eq(0)
    end

    it "returns false when there is nothing to release" do
      expect(Locking.new("job").release).to be(false)
      expect(redis.dbsize).to eq(0)
    end
  end

  describe "#locked?" do
    it "sees a lock held by anyone and asks Redis each time" do
      observer = Locking.new("job")
      expect(observer.locked?).to be(false)

      redis.set("locking:job", "someone-else", px: 10_000)
      expect(observer.locked?).to be(true)

      redis.del("locking:job")
      expect(observer.locked?).to be(false)
    end

    it "is true for a holder and false after its release" do
      lock = Locking.new("job")
      lock.acquire(10)
      expect(Locking.new("job").locked?).to be(true)
      lock.release
      expect(Locking.new("job").locked?).to be(false)
    end
  end

  describe "#have_lock?" do
    it "is local state that makes no Redis call" do
      lock = Locking.new("job")
      lock.acquire(10)
      source_server.frozen do
        started = monotonic
        expect(lock.have_lock?).to be(true)
        expect(monotonic - started).to be < 0.1
      end
    end

    it "stays false after a refused acquire" do
      Locking.new("job").acquire(10)
      lock = Locking.new("job")
      lock.acquire(10)
      expect(lock.have_lock?).to be(false)
    end
  end

  describe "#ttl" do
    it "reads the seconds left on this token's lock" do
      lock = Locking.new("job", token: "t")
      lock.acquire(20)
      expect(lock.ttl).to be_between(19.0, 20.0)
    end

    it "is nil when this token does not hold the lock, and infinite without expiry" do
      redis.set("locking:job", "other")
      expect(Locking.new("job", token: "t").ttl).to be_nil
      expect(Locking.new("job", token: "other").ttl).to eq(Float::INFINITY)
    end
  end

  describe "#renew" do
    it "resets the TTL of a lock this token holds" do
      lock = Locking.new("job", token: "t")
      lock.acquire(1)

      expect(lock.renew(30)).to be(true)

      expect(redis.pttl("locking:job")).to be_between(29_000, 30_000)
      expect(redis.get("locking:job")).to eq("t")
    end

    it "returns false and touches nothing when the lock was lost" do
      redis.set("locking:job", "other", px: 5_000)
      lock = Locking.new("job", token: "t")

      expect(lock.renew(30)).to be(false)

      expect(redis.pttl("locking:job")).to be <= 5_000
      expect(lock.have_lock?).to be(false)
    end
  end

  describe ".with_lock" do
    it "yields the held lock, returns the block's value and releases" do
      result = Locking.with_lock("job", ttl: 10) do |lock|
        expect(redis.get("locking:job")).to eq(lock.token)
        :done
      end

      expect(result).to eq(:done)
      expect(redis.dbsize).to eq(0)
    end

    it "releases when the block raises, and lets the error through" do
      expect { Locking.with_lock("job", ttl: 10) { raise "boom" } }.to raise_error(RuntimeError, "boom")
      expect(redis.dbsize).to eq(0)
    end

    it "raises NotAcquiredError without running the block when the lock stays taken" do
      redis.set("locking:job", "other", px: 10_000)
      ran = false

      started = monotonic
      expect { Locking.with_lock("job", ttl: 10, wait: 0.2) { ran = true } }
        .to raise_error(Locking::NotAcquiredError, /"job"/)

      expect(monotonic - started).to be_between(0.15, 1.0)
      expect(ran).to be(false)
      expect(redis.get("locking:job")).to eq("other")
    end

    it "waits, retrying with jitter, until the holder lets go" do
      holder = Locking.new("job")
      holder.acquire(10)
      releaser = Thread.new do
        sleep 0.2
        holder.release
      end

      value = Locking.with_lock("job", ttl: 10, wait: 3) { |lock| redis.get("locking:job") == lock.token }

      releaser.join
      expect(value).to be(true)
      expect(redis.dbsize).to eq(0)
    end
  end

  describe "configuration" do
    it "uses the configured key_prefix" do
      configure_single(key_prefix: "app:locks:")
      Locking.new("job", token: "t").acquire(10)
      expect(redis.keys("*")).to eq(["app:locks:job"])
    end

    it "works with an empty key_prefix" do
      configure_single(key_prefix: "")
      Locking.new("job", token: "t").acquire(10)
      expect(redis.keys("*")).to eq(["job"])
    end

    it "selects the database from the URL" do
      Locking.configure { |c| c.source = source_server.url(3) }
      Locking.new("job", token: "t").acquire(10)
      expect(redis.dbsize).to eq(0)
      expect(Redis.new(url: source_server.url(3)).get("locking:job")).to eq("t")
    end

    it "runs phase :destination against the destination alone" do
      Locking.reset_configuration!
      Locking.configure do |c|
        c.source = nil
        c.destination = destination_server.url
        c.phase = :destination
      end
      lock = Locking.new("job", token: "t")

      expect(lock.acquire(10)).to be(true)
      expect(destination_server.redis.get("locking:job")).to eq("t")
      expect(redis.dbsize).to eq(0)
      expect(lock.release).to be(true)
      expect(destination_server.redis.dbsize).to eq(0)
    end

    it "reads settings from the environment" do
      config = Locking::Configuration.new(
        "REDIS_URL" => "redis://10.0.0.1:6379/1",
        "LOCKING_DESTINATION_URL" => "redis://10.0.0.2:6379/0",
        "LOCKING_PHASE" => "2"
      )
      expect(config.source).to eq("redis://10.0.0.1:6379/1")
      expect(config.destination).to eq("redis://10.0.0.2:6379/0")
      expect(config.phase).to eq(:drain)

      config = Locking::Configuration.new("LOCKING_SOURCE_URL" => "redis://a:1/0", "REDIS_URL" => "redis://b:1/0")
      expect(config.source).to eq("redis://a:1/0")
      expect(Locking::Configuration.new({}).source).to eq(Locking::Configuration::DEFAULT_SOURCE)
    end

    it "changes the phase at runtime while keeping pooled connections" do
      Locking.configure { |c| c.destination = destination_server.url }
      Locking.new("warm").locked?
      client = Locking.client

      Locking.configure { |c| c.phase = :destination }

      expect(Locking.client).to be(client)
      expect(client.phase).to eq(:destination)
      Locking.new("job", token: "t").acquire(10)
      expect(destination_server.redis.get("locking:job")).to eq("t")
    end

    it "keeps the old settings when a new one is invalid" do
      old = Locking.client
      expect { Locking.configure { |c| c.source = "redis://[::1" } }.to raise_error(ArgumentError, /invalid Redis URL/)
      expect(Locking.client).to be(old)
      expect(Locking.configuration.source).to eq(source_server.url)
    end
  end
end
