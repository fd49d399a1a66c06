# frozen_string_literal: true

RSpec.describe "when Redis is unreachable or frozen" do
  # A server of its own, so that freezing it cannot slow other examples.
  before(:all) { @server = RedisServer.start("frozen") }
  after(:all) { @server.cleanup }

  let(:server) { @server }

  def configure_timeout(seconds)
    Locking.reset_configuration!
    Locking.configure do |c|
      c.source = server.url
      c.timeout = seconds
    end
  end

  # Seconds the block took, whether it returned or raised (the time to fail
  # is what these specs measure).
  def elapsed
    started = monotonic
    begin
      yield
    rescue StandardError
      nil
    end
    monotonic - started
  end

  before do
    server.thaw
    server.redis.flushall
  end

  it "raises ConnectionError naming the server when nothing listens" do
    port = RedisServer.free_port
    Locking.configure { |c| c.source = "redis://127.0.0.1:#{port}/0" }
    lock = Locking.new("job")

    expect { lock.acquire(10) }.to raise_error(Locking::ConnectionError, %r{redis://127\.0\.0\.1:#{port}/0: cannot connect})
    expect { lock.locked? }.to raise_error(Locking::ConnectionError)
    expect { lock.release }.to raise_error(Locking::ConnectionError)
    expect(lock.have_lock?).to be(false)
  end

  context "with a frozen server (SIGSTOP)" do
    before { configure_timeout(0.5) }

    it "times out acquire within the timeout with a TimeoutError naming the server" do
      Locking.new("warm").locked? # a pooled connection, so the read is what blocks
      lock = Locking.new("job")
      error = nil
      took = server.frozen { elapsed { lock.acquire(10) rescue error = $! } }

      expect(error).to be_a(Locking::TimeoutError)
      expect(error).to be_a(Locking::ConnectionError)
      expect(error.message).to eq("#{server.url}: read timed out after 0.5s")
      expect(took).to be_between(0.4, 1.5)
      expect(lock.have_lock?).to be(false)
    end

    it "raises from locked? instead of answering false" do
      server.frozen do
        expect { Locking.new("job").locked? }.to raise_error(Locking::TimeoutError)
      end
    end

    it "raises from release and renew" do
      lock = Locking.new("job", token: "t")
      lock.acquire(10)
      server.frozen do
        expect { lock.release }.to raise_error(Locking::TimeoutError)
        expect { lock.renew(10) }.to raise_error(Locking::TimeoutError)
      end
      # The server may still run the queued commands once it resumes: the
      # outcome of a timed-out command is unknown, and retrying is safe.
      expect(lock.release).to be(true).or be(false)
      expect(server.redis.dbsize).to eq(0)
    end

    it "lets other Ruby threads run while a call waits (the GVL is released)" do
      counter = 0
      ticker = Thread.new do
        deadline = monotonic + 0.4
        counter += 1 while monotonic < deadline
      end
      server.frozen do
        expect { Locking.new("job").locked? }.to raise_error(Locking::TimeoutError)
      end
      ticker.join
      expect(counter).to be > 10_000
    end

    it "ends a blocked call on Thread#kill, long before the timeout" do
      configure_timeout(10)
      Locking.new("warm").locked?
      server.frozen do
        blocked = Thread.new { Locking.new("job").acquire(10) }
        sleep 0.2
        expect(blocked.status).to eq("sleep").or eq("run")
        took = elapsed do
          blocked.kill
          expect(blocked.join(2)).to be(blocked)
        end
        expect(took).to be < 1.0
        expect(blocked.status).to be(false)
      end
    end

    it "is interrupted by Timeout.timeout" do
      configure_timeout(10)
      Locking.new("warm").locked?
      server.frozen do
        took = elapsed do
          expect { Timeout.timeout(0.3) { Locking.new("job").locked? } }.to raise_error(Timeout::Error)
        end
        expect(took).to be_between(0.25, 1.5)
      end
    end

    it "works again once the server resumes, on fresh connections" do
      Locking.new("warm").locked?
      server.frozen do
        expect { Locking.new("job").locked? }.to raise_error(Locking::TimeoutError)
      end
      lock = Locking.new("job", token: "t")
      expect(lock.acquire(10)).to be(true)
      expect(server.redis.get("locking:job")).to eq("t")
    end
  end

  it "reconnects by itself after a server restart and reloads its scripts" do
    configure_timeout(1)
    lock = Locking.new("job", token: "t")
    lock.acquire(10)
    lock.release
    server.restart

    # The pooled connection died with the old server: the call retries on a new one.
    expect(Locking.new("probe").locked?).to be(false)
    expect(lock.acquire(10)).to be(true)
    expect(lock.release).to be(true) # compare-and-delete after NOSCRIPT
    expect(server.redis.dbsize).to eq(0)
  end

  it "loads its scripts again after SCRIPT FLUSH" do
    configure_timeout(1)
    lock = Locking.new("job", token: "t")
    lock.acquire(10)
    server.redis.script(:flush)
    expect(lock.renew(20)).to be(true)
    server.redis.script(:flush)
    expect(lock.release).to be(true)
    expect(server.redis.dbsize).to eq(0)
  end

  it "reports a server error reply as CommandError" do
    configure_timeout(1)
    server.redis.rpush("locking:queue", "job")
    expect { Locking.new("queue").acquire(10) }.to raise_error(Locking::CommandError, /WRONGTYPE/)
    expect { Locking.new("queue").release }.to raise_error(Locking::CommandError, /WRONGTYPE/)
    expect(server.redis.lrange("locking:queue", 0, -1)).to eq(["job"])
  end
end
