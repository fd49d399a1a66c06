# frozen_string_literal: true

require "openssl"

# Every form of a server setting becomes the one URL the core reads; the
# core then reads it (Locking::Client.server_name shows what it understood).
RSpec.describe Locking::ServerSettings do
  def url(value) = described_class.to_url(value, "source")
  def name(value) = Locking.server_name(url(value))

  it "keeps a URL as it is" do
    expect(url("rediss://:pw@h:6380/2")).to eq("rediss://:pw@h:6380/2")
  end

  it "builds URLs from redis-rb's Hash vocabulary, string or symbol keys" do
    expect(url(host: "cache.example", port: 6380, db: 2, password: "p@ss", ssl: true))
      .to eq("rediss://cache.example:6380?db=2&password=p%40ss")
    expect(name(host: "cache.example", port: 6380, db: 2, ssl: true)).to eq("rediss://cache.example:6380/2")
    expect(url("host" => "::1", "port" => 7000)).to eq("redis://[::1]:7000")
    expect(url(path: "/tmp/redis.sock", db: 3)).to eq("unix:///tmp/redis.sock?db=3")
    expect(url(url: "redis://h:1/0", ssl: true, username: "app", timeout: 5, driver: :ruby))
      .to eq("redis://h:1/0?username=app&ssl=true")
    expect(name(url: "redis://h:1/4", ssl: true)).to eq("rediss://h:1/4")
  end

  it "turns ssl_params into the core's TLS options" do
    built = url(host: "h", ssl: true, ssl_params: { ca_file: "/etc/ca.pem", cert: "/c.pem", key: "/k.pem",
                                                    verify_mode: OpenSSL::SSL::VERIFY_NONE, verify_hostname: false })
    expect(built).to eq("rediss://h:6379?ca_file=%2Fetc%2Fca.pem&cert=%2Fc.pem&key=%2Fk.pem&verify_mode=none&verify_hostname=false")
    expect(described_class.unverified?(built)).to be(true)
    expect(url(host: "h", ssl: true, ssl_params: { verify_mode: OpenSSL::SSL::VERIFY_PEER })).to end_with("verify_mode=peer")
  end

  it "builds Redis Cluster URLs from seed nodes, credentials and TLS from the Hash or the first seed" do
    built = url(cluster: ["redis://10.0.0.1:7000", "10.0.0.2:7001", { host: "::1", port: 7002 }], password: "p w")
    expect(built).to eq("redis+cluster://10.0.0.1:7000,10.0.0.2:7001,[::1]:7002?password=p%20w")
    expect(Locking.server_name(built)).to eq("redis+cluster://10.0.0.1:7000,10.0.0.2:7001,[::1]:7002")
    expect(Locking.redact(built)).not_to include("p%20w")
    expect(url("cluster" => ["rediss://app:secret@h:7000"], "ssl_params" => { "ca_file" => "/ca.pem" }))
      .to eq("rediss+cluster://h:7000?username=app&password=secret&ca_file=%2Fca.pem")
    expect(name(cluster: ["h:7000"])).to eq("redis+cluster://h:7000")
  end

  it "says what is wrong with a cluster setting" do
    expect { url(cluster: []) }.to raise_error(ArgumentError, /at least one seed/)
    expect { url(cluster: ["h:1"], host: "h") }.to raise_error(ArgumentError, /give cluster or host, not both/)
    expect { url(cluster: [42]) }.to raise_error(TypeError, /a cluster node must be/)
    config = Locking::Configuration.new({}).tap { |c| c.source = { cluster: ["h:1"], db: 2 } }
    expect { Locking::Client.build(config) }.to raise_error(ArgumentError, /a Redis Cluster has only database 0, not 2/)
  end

  it "builds Sentinel URLs, with the sentinels' own credentials" do
    built = url(name: "mymaster", sentinels: [{ host: "s1", port: 26_379 }, "redis://s2:26380", "s3:26381"],
                role: :master, password: "m", sentinel_password: "s", db: 1)
    expect(built).to eq("redis+sentinel://s1:26379,s2:26380,s3:26381/mymaster?db=1&password=m&sentinel_password=s")
    expect(Locking.server_name(built)).to eq("redis+sentinel://s1:26379,s2:26380,s3:26381/mymaster/1")
    expect(Locking.redact(built)).not_to include("=m&", "=s")
  end

  it "reads a redis-rb Redis object's options, Sentinel ones included" do
    expect(name(Redis.new(url: "rediss://:pw@cache:6380/5"))).to eq("rediss://cache:6380/5")
    sentinel = Redis.new(url: "redis://mymaster", sentinels: [{ host: "s1", port: 26_379 }], role: :master)
    expect(name(sentinel)).to eq("redis+sentinel://s1:26379/mymaster/0")
  end

  it "reads a ConnectionPool of Redis objects once, and locks where its connections point" do
    require "connection_pool"
    built = 0
    pool = ConnectionPool.new(size: 2) do
      built += 1
      Redis.new(url: source_server.url(3))
    end
    expect(name(pool)).to eq("redis://127.0.0.1:#{source_server.port}/3")

    Locking.configure { |c| c.source = pool }
    Locking.new("pooled").acquire(60)
    expect(source_server.redis.dup.tap { |r| r.select(3) }.exists("locking:pooled")).to eq(1)
    expect(built).to eq(1) # settings read from one connection, then never used again
    expect(name(ConnectionPool::Wrapper.new { Redis.new(url: "redis://cache:6390/4") })).to eq("redis://cache:6390/4")
  end

  it "refuses what it cannot honour, saying what is wrong" do
    expect { url(host: "h", hots: 1) }.to raise_error(ArgumentError, /unknown setting :hots/)
    expect { url(url: "redis://h", host: "h") }.to raise_error(ArgumentError, /url or host, not both/)
    expect { url(sentinels: ["s1:1"]) }.to raise_error(ArgumentError, /master's name/)
    expect { url(name: "m", sentinels: ["s1:1"], role: :replica) }.to raise_error(ArgumentError, /only ever/)
    expect { url(host: "h", ssl_params: { ca: "x" }) }.to raise_error(ArgumentError, /unknown ssl_params :ca/)
    expect { url(host: "h", ssl_params: { verify_mode: :maybe }) }.to raise_error(ArgumentError, /verify_mode/)
    expect { url(42) }.to raise_error(TypeError, /URL String, a settings Hash or a Redis object/)
    expect { Locking.configure { |c| c.source = "redis://h:1?ca_file=/x" } }.to raise_error(ArgumentError, /TLS is off/)
    expect { Locking.configure { |c| c.source = "redis+sentinel://h:1" } }.to raise_error(ArgumentError, /master's name/)
  end
end
