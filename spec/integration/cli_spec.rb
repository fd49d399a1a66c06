# frozen_string_literal: true

RSpec.describe "exe/locking" do
  def load_source
    source.set("locking:job:1", "token-1", px: 120_000)
    source.set("locking:job:2", "token-2", px: 30_000)
    source.set("locking:forever", "token-f")
    source.set("locking:binary:\xFF".b, "tok\x00en".b, px: 60_000)
    # Queue data that must stay byte for byte, some of it under the prefix.
    source.rpush("queue:default", %w[job-a job-b])
    source.rpush("locking:queue", %w[x y])
    source.hset("locking:meta", "a", "1")
    source.set("other:plain", "value", px: 50_000)
    source.zadd("schedule", 1.5, "job-c")
  end

  it "backfills every lock with its token and TTL, copies nothing else, and leaves the source unchanged" do
    load_source
    before = snapshot(source)
    expect(locking_cli("gate").first).to eq(1)

    status, out, = locking_cli("backfill", "--batch", "2")

    expect(status).to eq(0)
    # The list and the hash under the prefix are scanned, and skipped.
    expect(out).to match(/done: 6 scanned, 4 copied, 0 already there, 0 conflicts, 0 undone, 2 skipped/)
    expect(snapshot(source)).to eq(before)
    expect(destination.keys("*").reject { |k| k.start_with?("{locking-control}") }.map(&:b).sort).to eq(
      ["locking:binary:\xFF".b, "locking:forever".b, "locking:job:1".b, "locking:job:2".b].sort
    )
    { "locking:job:1" => "token-1", "locking:job:2" => "token-2", "locking:forever" => "token-f",
      "locking:binary:\xFF".b => "tok\x00en".b }.each do |key, token|
      expect(destination.get(key).b).to eq(token.b)
      source_ttl = source.pttl(key)
      if source_ttl == -1
        expect(destination.pttl(key)).to eq(-1)
      else
        expect(destination.pttl(key)).to be_within(1_000).of(source_ttl)
      end
    end

    status, out, = locking_cli("gate")
    expect(status).to eq(0)
    expect(out).to include("source-only locks: 0", "OPEN")
  end

  it "counts with --dry-run and writes nothing" do
    load_source
    status, out, = locking_cli("backfill", "--dry-run")
    expect(status).to eq(0)
    expect(out).to match(/4 would copy/)
    expect(destination.dbsize).to eq(0)
  end

  it "resumes an interrupted backfill from its saved position" do
    200.times { |i| source.set("locking:k#{i}", "t#{i}", px: 60_000) }
    tool = Locking::Client.build(Locking::Configuration.new({}).tap do |c|
      c.source = source_server.url
      c.destination = destination_server.url
      c.phase = :dual
    end)
    first = tool.backfill_batch(0, count: 20, pages: 1)
    # What the command saves after each batch: the position, for this source, and the totals so far.
    saved = { "cursor" => first[:cursor], "source" => "#{tool.server_run_id(:source)} #{source_server.url}",
              "totals" => { "scanned" => first[:scanned], "copied" => first[:copied] } }
    tool.control_set("backfill-cursor", JSON.generate(saved))

    status, out, = locking_cli("backfill", "--batch", "50")

    expect(status).to eq(0)
    expect(out).to include("resuming from a saved position")
    expect(out).to match(/done: 200 scanned, 200 copied/) # totals over both runs
    expect(destination.keys("locking:*").size).to eq(200)
    expect(destination.get("{locking-control}:locking:backfill-cursor")).to be_nil
  end

  it "does not resume a position saved for another source" do
    200.times { |i| source.set("locking:k#{i}", "t#{i}", px: 60_000) }
    other = "#{witness_server.redis.info('server')['run_id']} #{witness_server.url}"
    destination.set("{locking-control}:locking:backfill-cursor",
                    JSON.generate("cursor" => 12_345, "source" => other, "totals" => { "scanned" => 96_476 }))
    status, out, = locking_cli("backfill")
    expect(status).to eq(0)
    expect(out).to include("for another source", "done: 200 scanned, 200 copied")
    expect(destination.keys("locking:*").size).to eq(200)
  end

  it "on Ctrl-C prints the totals so far, the saved position and the command to resume; status shows the audit" do
    RedisServer.bulk_load(source_server.url, 20_000.times.map { |i| ["SET", "locking:k#{i}", "t", "PX", "600000"] })
    env = { "RUBYLIB" => File.expand_path("../../lib", __dir__), "RUBYOPT" => nil }
    command = [RbConfig.ruby, File.expand_path("../../exe/locking", __dir__), "backfill", "--source", source_server.url,
               "--destination", destination_server.url, "--rate", "4000", "--batch", "100"]
    output = +""
    IO.popen(env, command, err: %i[child out]) do |io|
      deadline = monotonic + 20
      sleep 0.02 until destination.get("{locking-control}:locking:backfill-cursor") || monotonic > deadline
      Process.kill(:INT, io.pid)
      output << io.read
    end
    expect($?.exitstatus).to eq(130), output
    expect(output).to match(/interrupted: [\d,]+ scanned, [\d,]+ copied/)
    expect(output).to include("the position is saved (cursor ", "resume with: locking backfill --source")
    saved = JSON.parse(destination.get("{locking-control}:locking:backfill-cursor"))
    expect(saved["totals"]["scanned"]).to be > 0

    status, out, = locking_cli("status")
    expect(status).to eq(0)
    # Ctrl-C between batches gives the lease back; in a batch, its copies may be on the wire: left to expire.
    resumable = /backfill\s+(not running; a saved position to resume from|given back, left to expire .*), [\d,]+ keys scanned/
    expect(out).to match(resumable)
    expect(out).to match(/backfill interrupted: [\d,]+ scanned/)
  end

  it "caps the rate with --rate" do
    300.times { |i| source.set("locking:k#{i}", "t#{i}", px: 60_000) }
    started = monotonic
    status, = locking_cli("backfill", "--batch", "50", "--rate", "600")
    expect(status).to eq(0)
    # 300 keys at 600/s: at least the 200 keys before the last batch are paced.
    expect(monotonic - started).to be >= 0.3
    expect(destination.keys("locking:*").size).to eq(300)
  end

  it "reports lock keys per server with SCAN, and their TTLs" do
    load_source
    locking_cli("backfill")
    status, out, = locking_cli("status")
    expect(status).to eq(0)
    expect(out).to match(/source\s+#{Regexp.escape(source_server.url)}\s+4 lock keys\s+\(TTL max \d+\.\ds, p99 \d+\.\ds, 1 without TTL\)/)
    expect(out).to match(/destination\s+#{Regexp.escape(destination_server.url)}\s+4 lock keys/)
    expect(out).to match(/phase\s+0 \(source\)/)
  end

  it "refuses to backfill once the fleet is in phase 2" do
    destination.set("{locking-control}:locking:phase", "2")
    source.set("locking:a", "t", px: 60_000)
    status, _, err = locking_cli("backfill")
    expect(status).to eq(1)
    expect(err).to include("refused: the fleet is in phase 2 (drain): backfill runs only in phases 0 and 1")
    expect(destination.exists?("locking:a")).to be(false)
  end

  it "refuses to backfill when the configuration says phase 2 or 3 (static phases)" do
    source.set("locking:a", "t", px: 60_000)
    %i[drain destination].each do |phase|
      configure_both(phase) # what a rake task inside the app sees
      status, _, err = locking_cli("backfill")
      expect(status).to eq(1)
      expect(err).to include("backfill runs only in phases 0 and 1")
    end
    expect(destination.exists?("locking:a")).to be(false)
  end

  it "refuses an empty prefix, which would treat queue data as locks" do
    source.set("plain", "x")
    status, _, err = locking_cli("backfill", prefix: "")
    expect(status).to eq(3)
    expect(err).to include("non-empty key_prefix")
    expect(destination.dbsize).to eq(0)
  end

  it "prints usage and exits 2 on bad input" do
    expect(locking_cli("frobnicate")[0..2]).to match([2, "", /unknown command "frobnicate"/])
    expect(Locking::CLI.new([], out: StringIO.new, err: StringIO.new.tap { |io| @none = io }).run).to eq(2)
    expect(@none.string).to include("no command given", "locking --help")
    expect(locking_cli("phase", "set", "7")[0..2])
      .to match([2, "", /unknown phase "7" \(expected 0..3 or source\|dual\|drain\|destination\)/])
    expect(locking_cli("phase", "set", "bogus")[2]).not_to include("dynamic")
    status = Locking::CLI.new(["--help"], out: StringIO.new.tap { |io| @help = io }).run
    expect(status).to eq(0)
    expect(@help.string).to include("phase advance", "--rate N", "--dry-run")
  end

  it "works with the final settings after the migration (no source): status, phase, gate" do
    expect(locking_cli("phase", "set", "3", "--init")[0]).to eq(0)
    destination.set("locking:final", "t", px: 60_000)
    final = Locking::Configuration.new({}).tap do |c|
      c.source = nil # the README's final settings
      c.destination = destination_server.url
      c.phase = :destination
    end
    run = lambda do |*args|
      out = StringIO.new
      err = StringIO.new
      status = Locking::CLI.new([*args, "--no-progress"], out: out, err: err, config: final).run
      [status, out.string, err.string]
    end
    status, out, err = run.("status")
    expect([status, err]).to eq([0, ""])
    expect(out).to include("none configured (the migration is finished)", "3 (destination)")
    expect(out).to match(/destination\s+\S+\s+1 lock keys/)
    expect(run.("phase")[0..1]).to match([0, /3 \(destination\)/])
    expect(run.("gate")[0..1]).to match([0, /no source is configured/])
  end

  it "records the real operator in the audit log: LOCKING_OPERATOR, else the login, never unknown" do
    expect(locking_cli("phase", "set", "0", "--init")[0]).to eq(0)
    saved = ENV.to_h.slice("USER", "LOCKING_OPERATOR")
    begin
      ENV.delete("USER")
      ENV["LOCKING_OPERATOR"] = "alice (runbook 12)"
      expect(locking_cli("phase", "set", "1")[0]).to eq(0)
      ENV.delete("LOCKING_OPERATOR")
      expect(locking_cli("phase", "set", "0")[0]).to eq(0)
    ensure
      ENV.update(saved)
    end
    _, out, = locking_cli("status")
    expect(out).to match(/alice \(runbook 12\)@\S+: phase source -> dual/)
    expect(out).not_to include("unknown@")
    expect(out).to match(/ #{Regexp.escape(Etc.getpwuid(Process.uid).name)}@\S+: phase dual -> source/)
  end

  it "keeps the gate CLOSED when the prefix matches no lock and no process reports (a wrong prefix)" do
    source.set("app:Job:1", "t", px: 60_000) # the app's locks live under another prefix
    status, out, = locking_cli("gate") # default prefix "locking:"
    expect(status).to eq(1)
    expect(out).to include("CLOSED", "no lock under \"locking:\"", "--allow-empty")
    expect(locking_cli("gate", "--allow-empty")[0]).to eq(0)

    expect(locking_cli("phase", "set", "1", "--init")[0]).to eq(0)
    status, out, = locking_cli("phase", "advance")
    expect(status).to eq(1)
    expect(out).to include("no lock under")
    expect(destination.get("{locking-control}:locking:phase")).to eq("1")

    status, out, = locking_cli("gate", prefix: "app:")
    expect(status).to eq(1) # the right prefix: a real source-only lock
    expect(out).to include("source-only locks: 1")
  end

  it "reads the prefix from LOCKING_PREFIX" do
    expect(Locking::Configuration.new({ "LOCKING_PREFIX" => "app:" }).key_prefix).to eq("app:")
  end

  it "validates --rate and --batch" do
    [%w[--rate 0], %w[--rate -5], %w[--batch 0], %w[--batch 1000001]].each do |option|
      status, _, err = locking_cli("backfill", *option)
      expect(status).to eq(2), option.join(" ")
      expect(err).to match(/--(rate|batch) -?\d+: must be/)
    end
  end

  it "prints no password: status, backfill, inspect" do
    source.config(:set, "requirepass", "s3cret")
    url = "redis://:s3cret@127.0.0.1:#{source_server.port}/0"
    status, out, err = locking_cli("status", source: url)
    status2, out2, err2 = locking_cli("backfill", source: url)
    Locking.configure { |c| c.source = url }
    expect([status, status2]).to eq([0, 0]), err + err2
    expect(out + err + out2 + err2 + Locking.configuration.inspect).not_to include("s3cret")
    expect(out).to include("redis://127.0.0.1:#{source_server.port}/0 ") # the server's name, without credentials
    expect(Locking.configuration.inspect).to include(":***@")
  ensure
    Redis.new(url: url).config(:set, "requirepass", "") rescue nil
  end

  it "prints the first failures of a backfill, and verifies 'done' with the gate's count" do
    source.set("locking:a", "t1", px: 60_000)
    source.set("locking:b", "t2", px: 60_000)
    destination.rpush("locking:b", "not a lock") # a key of another type where the copy goes
    configure_both(:dual)
    status, out, = locking_cli("backfill")
    expect(status).to eq(3)
    expect(out).to include("1 failed", "the first failures:", '"locking:b"', "WRONGTYPE")

    destination.del("locking:b")
    status, out, = locking_cli("backfill")
    expect(status).to eq(0), out
    expect(out).to include("verified: no lock lives on the source only")
  end

  describe "cleanup-source" do
    def load_leftovers
      source.set("locking:forever", "t") # no TTL: would stay for ever
      source.set("locking:late", "t", px: 600_000)
      source.rpush("locking:queue", "job") # not a string: never a lock
      source.set("other:plain", "x")
    end

    it "refuses until the fleet is in phase 3 with no phase-2 process left" do
      load_leftovers
      expect(locking_cli("phase", "set", "2", "--init")[0]).to eq(0)
      status, out, = locking_cli("cleanup-source")
      expect(status).to eq(1)
      expect(out).to include("the fleet is in phase 2 (drain)")

      destination.set("{locking-control}:locking:phase", "3")
      fake_heartbeat("web-1:9", "2 3 10000")
      status, out, = locking_cli("cleanup-source")
      expect(status).to eq(1)
      expect(out).to include("not in phase 3 alone: web-1:9")
      expect(source.dbsize).to eq(4)
    end

    it "deletes the string keys under the prefix on the source, nothing else (--dry-run counts them)" do
      load_leftovers
      expect(locking_cli("phase", "set", "3", "--init")[0]).to eq(0)
      status, out, = locking_cli("cleanup-source", "--dry-run")
      expect(status).to eq(0)
      expect(out).to include("2 lock key(s)")
      expect(source.dbsize).to eq(4)

      status, out, = locking_cli("cleanup-source")
      expect(status).to eq(0)
      expect(out).to include("deleted 2 lock key(s)")
      expect(source.keys("*").sort).to eq(%w[locking:queue other:plain])
      expect(locking_cli("status")[1]).to include("cleanup-source")
    end

    it "runs with static phases when the configuration says phase 3" do
      load_leftovers
      expect(locking_cli("cleanup-source")[0]).to eq(1) # this configuration: phase :source
      configure_both(:destination)
      expect(locking_cli("cleanup-source")[0]).to eq(0)
      expect(source.keys("locking:*")).to eq(["locking:queue"])
    end
  end

  it "takes a binary --prefix (not UTF-8) in every command" do
    prefix = "\xFF:".b
    source.set("#{prefix}a".b, "t", px: 60_000)
    %w[status gate backfill phase].each do |command|
      status, out, err = locking_cli(command, prefix: prefix)
      expect(err).not_to include("invalid byte sequence"), "#{command}: #{err}"
      expect(status).to be <= 1, "#{command}: #{out}#{err}"
    end
    expect(destination.get("#{prefix}a".b)).to eq("t")
  end

  # The CLI walks the keyspace a few pages per native call, so a Ctrl-C lands
  # between two calls (a single-threaded process cannot cut one short).
  it "ends gate on Ctrl-C within the timeout, mid-walk of 1,000,000 keys" do
    RedisServer.bulk_load(source_server.url, 1_000_000.times.lazy.map { |i| ["SET", "locking:k#{i}", "t", "PX", "600000"] })
    scans = -> { scan_calls(source) }
    scans_before = scans.call
    env = { "RUBYLIB" => File.expand_path("../../lib", __dir__), "RUBYOPT" => nil }
    command = [RbConfig.ruby, File.expand_path("../../exe/locking", __dir__), "gate", "--source", source_server.url,
               "--destination", destination_server.url, "--timeout", "5"]
    output = +""
    IO.popen(env, command, err: %i[child out]) do |io|
      deadline = monotonic + 20
      # Walking: the source has served its first SCAN pages (of about 1,000).
      sleep 0.005 until scans.call > scans_before || monotonic > deadline
      interrupted = monotonic
      Process.kill(:INT, io.pid)
      output << io.read
      expect(monotonic - interrupted).to be < 5.0
    end
    expect($?.exitstatus).to eq(130), output
    expect(output).to include("interrupted")
    expect(output).not_to include("CLOSED")
  end

  it "reads its settings from --config FILE (config/locking.yml's form), the command line winning" do
    source.set("shop:a", "t", px: 60_000)
    Dir.mktmpdir do |dir|
      path = File.join(dir, "locking.yml")
      File.write(path, <<~YAML)
        production:
          source: #{source_server.url}
          destination: <%= "#{destination_server.url}" %>
          key_prefix: "shop:"
          phase: dual
      YAML
      out = StringIO.new
      status = Locking::CLI.new(["status", "--config", path], out: out, err: out).run
      expect(status).to eq(0), out.string
      expect(out.string).to match(/source\s+#{Regexp.escape(source_server.url)}\s+1 lock keys/)
      expect(out.string).to include("1 (dual) (static")

      out = StringIO.new
      status = Locking::CLI.new(["status", "--config", path, "--prefix", "other:"], out: out, err: out).run
      expect(status).to eq(0)
      expect(out.string).to match(/source\s+\S+\s+0 lock keys/)

      out = StringIO.new
      status = Locking::CLI.new(["status", "--config", path, "--environment", "prod"], out: out, err: out).run
      expect(status).to eq(3)
      expect(out.string).to include("no prod: section (it has production)", "--environment NAME")

      File.write(path, "production:\n  colour: blue\n")
      out = StringIO.new
      expect(Locking::CLI.new(["status", "--config", path], out: out, err: out).run).to eq(3)
      expect(out.string).to include("unknown setting \"colour\"")
    end
  end

  it "writes progress a line at a time into a pipe or a log file, while it runs" do
    3_000.times { |i| source.set("locking:k#{i}", "t", px: 600_000) }
    env = { "RUBYLIB" => File.expand_path("../../lib", __dir__), "RUBYOPT" => nil }
    command = [RbConfig.ruby, File.expand_path("../../exe/locking", __dir__), "backfill", "--source", source_server.url,
               "--destination", destination_server.url, "--rate", "1000"]
    IO.popen(env, command, err: %i[child out]) do |io|
      expect(io.gets).to start_with("backfill: redis://") # the header, before the work
      expect(io.gets).to start_with("phase: 0 (source) ASSUMED") # static phases: the phase it assumes
      expect(io.gets).to match(/\Abackfill: \d+% of the walk, [\d,]+ keys scanned/) # long before the end
      expect(destination.keys("locking:*").size).to be < 3_000 # still running
      io.read
    end
  end

  it "spreads --rate evenly: one small page at a time" do
    100.times { |i| source.set("locking:k#{i}", "t", px: 600_000) }
    status, out, = locking_cli("backfill", "--rate", "10000")
    expect(status).to eq(0)
    expect(out).to include("50 per page, 1 page(s) per batch, at most 10000 keys/s") # 5 ms of the rate
    status, out, = locking_cli("backfill", "--restart")
    expect(status).to eq(0)
    expect(out).to include("200 per page, 16 page(s) per batch") # the default, unthrottled
  end

  it "estimates the time left from this run's own pace after a resume" do
    out = StringIO.new
    half = 1 # SCAN's cursor walks in reversed-bit order: this one is half way
    three_quarters = 3
    tool = Locking::Client.build(Locking::Configuration.new({}).tap do |c|
      c.source = source_server.url
      c.destination = destination_server.url
      c.phase = :dual
    end)
    progress = Locking::CLI::Progress.new(out, false, from: half, fraction: ->(at) { tool.walk_fraction(:source, at) })
    progress.update(1_000, three_quarters, 10.0) # a quarter of the walk in 10 s: a quarter left
    expect(out.string).to include("75%", "ETA 0:10")
  end

  it "reads the fleet without scanning the destination's keyspace" do
    RedisServer.bulk_load(destination_server.url, 20_000.times.lazy.map { |i| ["SET", "locking:k#{i}", "t"] })
    expect(locking_cli("phase", "set", "1", "--init")[0]).to eq(0)
    fake_heartbeat("web-1:1", "1 1 10000")
    scans = -> { scan_calls(destination) }
    before = scans.call
    status, out, = locking_cli("phase")
    expect(status).to eq(0)
    expect(out).to include("web-1:1")
    expect(scans.call).to eq(before)
  end

  it "refuses a source that is the destination" do
    status, _, err = locking_cli("status", destination: source_server.url)
    expect(status).to eq(3)
    expect(err).to include("source and destination are the same server")
  end

  # SCAN commands a server has run so far.
  def scan_calls(redis)
    redis.info("commandstats").fetch("scan", {}).fetch("calls", "0").to_i
  end

  it "counts the SCANs a server runs (the helper the two specs above rely on)" do
    before = scan_calls(destination)
    destination.scan(0)
    expect(scan_calls(destination)).to eq(before + 1)
  end

  it "reports an unreachable server as an error, exit 3" do
    status, _, err = locking_cli("status", source: "redis://127.0.0.1:1/0")
    expect(status).to eq(3)
    expect(err).to include("redis://127.0.0.1:1/0", "ConnectionError")
  end

  describe "phase" do
    it "moves one phase at a time, and into phase 2 only through the gate" do
      status, out, = locking_cli("phase", "set", "dual") # no phase set yet
      expect(status).to eq(1)
      expect(out).to include("no phase is set", "--init")
      expect(locking_cli("phase", "set", "source", "--init")[0]).to eq(0)
      expect(locking_cli("phase", "set", "2")[0]).to eq(1)
      expect(locking_cli("phase", "set", "dual")[0]).to eq(0)
      expect(destination.get("{locking-control}:locking:phase")).to eq("1")

      source.set("locking:left-from-phase-0", "t", px: 60_000)
      status, out, = locking_cli("phase", "advance")
      expect(status).to eq(1)
      expect(out).to include("source only")
      expect(destination.get("{locking-control}:locking:phase")).to eq("1")

      locking_cli("backfill")
      status, out, = locking_cli("phase", "advance")
      expect(status).to eq(0)
      expect(out).to include("1 (dual) -> 2 (drain)")
      expect(destination.get("{locking-control}:locking:phase")).to eq("2")
    end

    it "refuses to advance while a process is behind, and waits for it with --wait" do
      locking_cli("phase", "set", "1", "--init")
      fake_heartbeat("worker-7:4242", "0") # a process still on phase 0 (an older version's heartbeat)

      status, out, = locking_cli("phase", "advance")
      expect(status).to eq(1)
      expect(out).to include("worker-7:4242 (phase 0)")

      catching_up = Thread.new do
        sleep 0.3
        fake_heartbeat("worker-7:4242", "1 1 10000")
      end
      status, out, = locking_cli("phase", "advance", "--wait", "5")
      catching_up.join
      expect(status).to eq(0), out
      expect(destination.get("{locking-control}:locking:phase")).to eq("2")
    end
  end
end
