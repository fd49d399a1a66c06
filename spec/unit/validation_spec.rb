# frozen_string_literal: true

# Bad input gets a clear exception naming the bad value, and nothing reaches Redis.
RSpec.describe "input validation" do
  let(:redis) { source_server.redis }

  after { expect(redis.dbsize).to eq(0) }

  describe "lock keys and tokens" do
    it "rejects nil and empty keys with ArgumentError" do
      expect { Locking.new(nil) }.to raise_error(ArgumentError, "lock key must not be nil")
      expect { Locking.new("") }.to raise_error(ArgumentError, "lock key must not be empty")
    end

    it "rejects non-String keys with TypeError naming the value" do
      expect { Locking.new(42) }.to raise_error(TypeError, /lock key must be a String, got Integer: 42/)
      expect { Locking.new(:job) }.to raise_error(TypeError, /got Symbol: :job/)
      expect { Locking.new(Object.new) }.to raise_error(TypeError, /got Object/)
    end

    it "rejects bad tokens the same way" do
      expect { Locking.new("k", token: nil) }.to raise_error(ArgumentError, /token must not be nil/)
      expect { Locking.new("k", token: "") }.to raise_error(ArgumentError, /token must not be empty/)
      expect { Locking.new("k", token: 7) }.to raise_error(TypeError, /token must be a String/)
    end

    it "works with a 1 MiB key and token, and with invalid UTF-8" do
      big = "k" * (1 << 20)
      lock = Locking.new(big, token: "t" * (1 << 20))
      expect(lock.acquire(10)).to be(true)
      expect(redis.strlen("locking:#{big}")).to eq(1 << 20)
      expect(lock.release).to be(true)

      invalid = "job:\xC3\x28".dup.force_encoding(Encoding::UTF_8)
      expect(invalid.valid_encoding?).to be(false)
      lock = Locking.new(invalid, token: invalid)
      expect(lock.acquire(10)).to be(true)
      expect(lock.release).to be(true)
    end

    it "copies the key so later changes to the caller's String do not move the lock" do
      key = +"job"
      lock = Locking.new(key, token: "t")
      key << "-changed"
      lock.acquire(10)
      expect(redis.keys("*")).to eq(["locking:job"])
      lock.release
    end
  end

  describe "TTLs" do
    let(:lock) { Locking.new("job") }

    [0, 0.0, -1, -0.5, 0.0001].each do |ttl|
      it "rejects #{ttl.inspect} with ArgumentError" do
        expect { lock.acquire(ttl) }.to raise_error(ArgumentError, /TTL must be/)
        expect(lock.have_lock?).to be(false)
      end
    end

    [Float::NAN, Float::INFINITY, -Float::INFINITY].each do |ttl|
      it "rejects #{ttl} with ArgumentError" do
        expect { lock.acquire(ttl) }.to raise_error(ArgumentError, /positive, finite/)
      end
    end

    ["10", nil, :ten, Object.new, Complex(1, 1)].each do |ttl|
      it "rejects #{ttl.inspect} with TypeError" do
        expect { lock.acquire(ttl) }.to raise_error(TypeError, /TTL must be a number of seconds/)
      end
    end

    it "rejects a TTL too large for Redis" do
      expect { lock.acquire(10**20) }.to raise_error(ArgumentError, /too large/)
    end

    it "checks renew's TTL too" do
      expect { lock.renew(0) }.to raise_error(ArgumentError)
      expect { lock.renew("5") }.to raise_error(TypeError)
    end

    it "checks with_lock's arguments before touching Redis" do
      expect { Locking.with_lock("job", ttl: -1) { raise "not run" } }.to raise_error(ArgumentError)
      expect { Locking.with_lock("job", ttl: 1, wait: -1) { raise "not run" } }.to raise_error(ArgumentError, /wait/)
      expect { Locking.with_lock(nil, ttl: 1) { raise "not run" } }.to raise_error(ArgumentError)
    end
  end

  describe "configuration" do
    def configure(&)
      Locking.configure(&)
    end

    it "rejects an unknown phase and names it" do
      expect { configure { |c| c.phase = :both } }.to raise_error(ArgumentError, /unknown phase :both/)
      expect { configure { |c| c.phase = 4 } }.to raise_error(ArgumentError, /unknown phase 4/)
      expect { configure { |c| c.phase = nil } }.to raise_error(ArgumentError, /unknown phase nil/)
      expect(Locking.configuration.phase).to eq(:source)
    end

    it "rejects a phase whose servers are not configured" do
      expect { configure { |c| c.phase = :dual } }.to raise_error(ArgumentError, /needs a destination/)
      expect { configure { |c| c.source = nil } }.to raise_error(ArgumentError, /needs a source/)
    end

    ["nonsense", "http://127.0.0.1:6379", "redis://[::1", "", "redis://:6379"].each do |url|
      it "rejects the malformed URL #{url.inspect}" do
        expect { configure { |c| c.source = url } }.to raise_error(ArgumentError, /Redis URL/)
      end
    end

    it "rejects TLS settings it cannot use, clearly" do
      expect { configure { |c| c.source = "rediss://127.0.0.1:6379?ca_file=/nonexistent/ca.pem" } }
        .to raise_error(ArgumentError, %r{cannot read the TLS ca_file /nonexistent/ca.pem})
      expect { configure { |c| c.source = "redis://127.0.0.1:6379?cert=/c.pem" } }.to raise_error(ArgumentError, /TLS is off/)
      expect { configure { |c| c.source = "unix:///tmp/r.sock?ssl=true" } }.to raise_error(ArgumentError, /unix socket/)
    end

    it "never shows a password from a bad URL" do
      expect { configure { |c| c.source = "redis://:hunter2@[::1" } }
        .to raise_error(ArgumentError) { |e| expect(e.message).not_to include("hunter2") }
    end

    it "rejects bad timeouts, pool sizes and prefixes" do
      expect { configure { |c| c.timeout = 0 } }.to raise_error(ArgumentError, /timeout/)
      expect { configure { |c| c.timeout = Float::NAN } }.to raise_error(ArgumentError, /timeout/)
      expect { configure { |c| c.timeout = "1" } }.to raise_error(ArgumentError, /timeout/)
      expect { configure { |c| c.pool_size = 0 } }.to raise_error(ArgumentError, /pool_size/)
      expect { configure { |c| c.pool_size = 1.5 } }.to raise_error(ArgumentError, /pool_size/)
      expect { configure { |c| c.key_prefix = nil } }.to raise_error(TypeError, /key_prefix/)
      expect { configure { |c| c.source = 6379 } }.to raise_error(TypeError, /source/)
    end
  end

  describe "the native boundary" do
    it "raises TypeError, not a crash, when the private natives get wrong types" do
      client = Locking.client
      expect { client.send(:_acquire, nil, "t", 10) }.to raise_error(TypeError)
      expect { client.send(:_acquire, "k", "t", -5) }.to raise_error(RangeError)
      expect { client.send(:_acquire, "k", "t", 0) }.to raise_error(ArgumentError, /at least 1 millisecond/)
      expect { client.send(:_release, "", "t") }.to raise_error(ArgumentError, /empty/)
      expect { client.send(:_set_phase, 9) }.to raise_error(ArgumentError, /unknown phase/)
      expect { Locking::Client._new("redis://x:1", nil, 0, "p", -1.0, 1, nil, "h", 1, 0) }.to raise_error(ArgumentError, /timeout/)
      expect { Locking::Client._new("redis://x:1", "redis://y:1", 0, "p", 1.0, 1, -2.0, "h", 1, 0) }
        .to raise_error(ArgumentError, /phase_cache_ttl/)
    end
  end
end
