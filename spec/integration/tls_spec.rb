# frozen_string_literal: true

require_relative "../support/tls"

# TLS on real redis-servers (Debian's 7.0 has it built in), with
# certificates made by the openssl CLI when this file starts. The code under
# test only talks to the TLS ports; the specs look at what the servers hold
# through their plaintext ports.
RSpec.describe "TLS (rediss://)" do
  before(:all) do
    @certs = TestCertificates.new
    @tls_source = TlsRedisServer.new("tls-source", @certs).tap(&:start)
    @tls_destination = TlsRedisServer.new("tls-destination", @certs).tap(&:start)
    @mutual = TlsRedisServer.new("tls-mutual", @certs, clients: "yes").tap(&:start)
    @elsewhere = TlsRedisServer.new("tls-elsewhere", @certs, cert: "elsewhere").tap(&:start)
  end

  after(:all) do
    [@tls_source, @tls_destination, @mutual, @elsewhere].each(&:cleanup)
    @certs.cleanup
  end

  attr_reader :certs, :tls_source, :tls_destination, :mutual, :elsewhere

  before do
    [tls_source, tls_destination, mutual, elsewhere, source_server, destination_server].each { |s| s.redis.flushall }
  end

  after { Locking.reset_configuration! }

  def configure(source, destination, phase)
    configure_both(phase, source: source, destination: destination)
  end

  def connection_error(source)
    configure(source, nil, :source)
    Locking.new("job").acquire(5)
    raise "connected"
  rescue Locking::ConnectionError => e
    e.message
  end

  # Where an acquire with nothing held writes, per phase (DESIGN §3).
  WRITES = { source: [true, false], dual: [true, true], drain: [false, true], destination: [false, true] }.freeze

  {
    "TLS source, plain destination" => %i[tls plain],
    "plain source, TLS destination" => %i[plain tls],
    "TLS on both" => %i[tls tls]
  }.each do |title, (source_kind, destination_kind)|
    context title do
      let(:source) { source_kind == :tls ? tls_source : source_server }
      let(:destination) { destination_kind == :tls ? tls_destination : destination_server }
      let(:source_url) { source_kind == :tls ? source.tls_url : source.url }
      let(:destination_url) { destination_kind == :tls ? destination.tls_url : destination.url }

      WRITES.each do |phase, (on_source, on_destination)|
        it "runs phase #{phase}: acquire, contention, locked?, token-checked release; Redis holds what the table says" do
          configure(source_url, destination_url, phase)
          ours = Locking.new("job")
          theirs = Locking.new("job")
          expect(ours.acquire(30)).to be(true)
          expect(theirs.acquire(30)).to be(false)
          expect(theirs.locked?).to be(true)
          expect(source.redis.get("locking:job")).to(on_source ? eq(ours.token) : be_nil)
          expect(destination.redis.get("locking:job")).to(on_destination ? eq(ours.token) : be_nil)
          expect(source.redis.pttl("locking:job")).to be_between(29_000, 30_000) if on_source
          expect(theirs.release).to be(false)
          expect(ours.release).to be(true)
          expect([source.redis.exists("locking:job"), destination.redis.exists("locking:job")]).to eq([0, 0])
        end
      end

      it "runs the operator's gate and status over it" do
        configure(source_url, destination_url, :dual)
        Locking.new("held").acquire(60)
        status, out, = locking_cli("status", source: source_url, destination: destination_url)
        expect(status).to eq(0)
        expect(out).to include(source_kind == :tls ? "rediss://127.0.0.1:#{source.tls_port}/0 " : source.url)
        expect(out).not_to include("ca_file") # the server's name, not its settings
        status, out, = locking_cli("gate", source: source_url, destination: destination_url)
        expect([status, out]).to match([Integer, /source-only locks: 0|0 source-only/])
      end
    end
  end

  it "takes the settings as a Hash and as a redis-rb Redis object" do
    hash = { host: "127.0.0.1", port: tls_source.tls_port, db: 3, ssl: true,
             ssl_params: { ca_file: certs.path("ca.crt"), verify_mode: OpenSSL::SSL::VERIFY_PEER } }
    configure(hash, nil, :source)
    expect(Locking.configuration.source).to start_with("rediss://127.0.0.1:#{tls_source.tls_port}?db=3")
    lock = Locking.new("job")
    expect(lock.acquire(30)).to be(true)
    expect(tls_source.redis.tap { |r| r.select(3) }.get("locking:job")).to eq(lock.token)
    tls_source.redis.select(0)
    lock.release

    redis = Redis.new(url: "rediss://127.0.0.1:#{tls_source.tls_port}/4", ssl_params: { ca_file: certs.path("ca.crt") })
    configure(redis, nil, :source)
    lock = Locking.new("job")
    expect(lock.acquire(30)).to be(true)
    expect(tls_source.redis.tap { |r| r.select(4) }.get("locking:job")).to eq(lock.token)
    tls_source.redis.select(0)
  end

  it "reads the same settings from a YAML file (exe/locking --config) and from the environment" do
    configure(tls_source.tls_url, nil, :source)
    Locking.new("held").acquire(60)
    file = File.join(certs.dir, "locking.yml")
    File.write(file, <<~YAML)
      production:
        source:
          host: 127.0.0.1
          port: #{tls_source.tls_port}
          ssl: true
          ssl_params:
            ca_file: #{certs.path('ca.crt')}
        destination: #{tls_destination.tls_url}
        min_replicas_acked: 0
    YAML
    out = StringIO.new
    status = Locking::CLI.new(["status", "--config", file, "--environment", "production", "--no-progress"],
                              out: out, err: StringIO.new).run
    expect(status).to eq(0)
    expect(out.string).to match(%r{source +rediss://127.0.0.1:#{tls_source.tls_port}/0 +1 lock keys})
    expect(out.string).to match(%r{destination +rediss://127.0.0.1:#{tls_destination.tls_port}/0 +0 lock keys})

    config = Locking::Configuration.new("LOCKING_SOURCE_URL" => tls_source.tls_url, "LOCKING_PHASE" => "source")
    client = Locking::Client.build(config)
    expect(client.locked?("held")).to be(true)
  end

  it "backfills 3,000 locks from a plaintext source into a TLS destination (large pipelines over TLS)" do
    source_server.bulk_load((1..3000).map { |i| ["SET", "locking:job-#{i}", "token-#{i}", "PX", "60000"] })
    status, out, = locking_cli("backfill", "--batch", "500", source: source_server.url, destination: tls_destination.tls_url)
    expect(status).to eq(0), out
    copied = tls_destination.redis.mget(*(1..3000).map { |i| "locking:job-#{i}" })
    expect(copied).to eq((1..3000).map { |i| "token-#{i}" })
    expect(tls_destination.redis.pttl("locking:job-1")).to be_between(1, 60_000)
  end

  it "authenticates as an ACL user over TLS, and a wrong password is refused without being shown" do
    tls_source.redis.call("ACL", "SETUSER", "locks-app", "on", ">app-s3cret", "~locking:*", "+@all")
    configure({ url: tls_source.tls_url, username: "locks-app", password: "app-s3cret" }, nil, :source)
    lock = Locking.new("job")
    expect(lock.acquire(30)).to be(true)
    expect(tls_source.redis.get("locking:job")).to eq(lock.token)
    expect(lock.release).to be(true)
    configure({ url: tls_source.tls_url, username: "locks-app", password: "not-it" }, nil, :source)
    expect { Locking.new("job").acquire(5) }.to raise_error(Locking::CommandError) { |error|
      expect(error.message).to include("AUTH failed", "WRONGPASS")
      expect(error.message).not_to include("not-it")
    }
  ensure
    tls_source.redis.call("ACL", "DELUSER", "locks-app")
  end

  it "does mutual TLS with a client certificate" do
    url = mutual.tls_url(cert: certs.path("client.crt"), key: certs.path("client.key"))
    configure(url, nil, :source)
    lock = Locking.new("job")
    expect(lock.acquire(30)).to be(true)
    expect(mutual.redis.get("locking:job")).to eq(lock.token)
    expect(lock.release).to be(true)
  end

  describe "failures, each a Locking::ConnectionError that says what to do" do
    it "an unknown CA (no ca_file: the system's roots do not know the test CA)" do
      expect(connection_error(tls_source.tls_url(ca_file: nil))).to include("not signed by a trusted CA", "ca_file")
    end

    it "a certificate for another host name, and verify_hostname: false accepting it" do
      expect(connection_error(elsewhere.tls_url)).to include('not valid for "127.0.0.1"', "verify_hostname")
      configure(elsewhere.tls_url(verify_hostname: false), nil, :source)
      expect(Locking.new("job").acquire(5)).to be(true)
      expect(elsewhere.redis.exists("locking:job")).to eq(1)
    end

    it "a missing client certificate, and one signed by a CA the server does not trust" do
      expect(connection_error(mutual.tls_url)).to include("client certificate")
      rogue = mutual.tls_url(cert: certs.path("rogue-client.crt"), key: certs.path("rogue-client.key"))
      expect(connection_error(rogue)).to include("not signed by a CA the server trusts")
      expect(mutual.redis.keys("*")).to eq([])
    end

    it "plain text sent to a TLS port, and TLS sent to a plaintext port" do
      expect(connection_error("redis://127.0.0.1:#{tls_source.tls_port}/0")).to include("use rediss://")
      plain = "rediss://127.0.0.1:#{source_server.port}/0?ca_file=#{certs.path('ca.crt')}"
      configure(plain, nil, :source)
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      expect { Locking.new("job").acquire(5) }.to raise_error(Locking::TimeoutError, /TLS handshake.*plaintext port/)
      expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be < 5
    end

    it "a CA file that cannot be read is an ArgumentError at configure time" do
      expect { configure(tls_source.tls_url(ca_file: "/nonexistent/ca.pem"), nil, :source) }
        .to raise_error(ArgumentError, %r{cannot read the TLS ca_file /nonexistent/ca.pem})
      expect { configure(tls_source.tls_url(cert: certs.path("client.crt")), nil, :source) }
        .to raise_error(ArgumentError, /needs both cert and key/)
    end

    it "verify_mode none connects to any certificate, and warns" do
      url = elsewhere.tls_url(ca_file: nil, verify_mode: "none")
      expect { configure(url, nil, :source) }.to output(/verification is off/).to_stderr
      expect(Locking.new("job").acquire(5)).to be(true)
    end

    it "never shows a password, in a message or in inspect" do
      tls_source.redis.config(:set, "requirepass", "s3cret-pw")
      url = tls_source.tls_url.sub("rediss://", "rediss://:wrong-pw@")
      configure(url, nil, :source)
      expect(Locking.configuration.inspect).not_to include("wrong-pw")
      expect { Locking.new("job").acquire(5) }.to raise_error(Locking::CommandError) { |error|
        expect(error.message).to include("AUTH")
        expect(error.message).not_to include("wrong-pw")
      }
    ensure
      tls_source.redis.config(:set, "requirepass", "")
    end
  end

  it "serves 8 threads at once: never two holders, and every key gone at the end" do
    configure(tls_source.tls_url, tls_destination.tls_url, :dual)
    witness = witness_server.redis
    witness.del("tls:inside", "tls:overlaps", "tls:acquired")
    threads = Array.new(8) do
      Thread.new do
        200.times do
          name = "shared-#{rand(4)}"
          lock = Locking.new(name)
          next unless lock.acquire(10)

          inside = witness.incr("tls:inside:#{name}")
          witness.incr("tls:overlaps") if inside > 1
          witness.incr("tls:acquired")
          witness.decr("tls:inside:#{name}")
          lock.release
        end
      end
    end
    threads.each { |thread| expect(thread.join(60)).to be_truthy }
    expect(witness.get("tls:overlaps").to_i).to eq(0)
    expect(witness.get("tls:acquired").to_i).to be > 100
    expect(tls_source.redis.keys("locking:*") + tls_destination.redis.keys("locking:*")).to eq([])
  end

  it "opens new TLS sessions in a forked child, and the parent's session goes on" do
    configure(tls_source.tls_url, nil, :source)
    held = Locking.new("parent")
    expect(held.acquire(60)).to be(true) # the parent's pool now has a TLS session
    child = Forked.new do
      lock = Locking.new("child")
      [lock.acquire(60), Locking.new("parent").locked?, lock.release]
    end
    expect(child.result).to eq([true, true, true])
    expect(held.locked?).to be(true)
    expect(held.release).to be(true)
    expect(tls_source.redis.keys("*")).to eq([])
  end

  it "lets Thread#raise interrupt a handshake with a stopped server" do
    configure(tls_source.tls_url, nil, :source)
    Locking.configure { |c| c.timeout = 5.0 }
    tls_source.frozen do
      thread = Thread.new { Locking.new("job").acquire(5) }
      thread.report_on_exception = false
      Timeout.timeout(5) { Thread.pass until thread.stop? } # blocked in the handshake's read
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      thread.raise(Interrupt)
      expect { thread.join }.to raise_error(Interrupt)
      expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be < 1
    end
  end
end
