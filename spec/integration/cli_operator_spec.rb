# frozen_string_literal: true

require "rack/test"
require "locking/web"

# The operator command for scripts and runbooks (issue 28): the gate and `phase advance` under one rule, a dead
# backfill's lease, --json, unlock, audit, phase --check and --wait-fleet, and what static phases assume.
RSpec.describe "exe/locking for operators" do
  let(:lease_key) { "{locking-control}:locking:backfill" }
  let(:phase_key) { "{locking-control}:locking:phase" }

  def json_of(out)
    expect(out.lines.size).to eq(1), out
    JSON.parse(out)
  end

  def audit_entries = destination.lrange("{locking-control}:locking:audit", 0, -1).map { |line| JSON.parse(line) }

  # A lease holder name for a process of this host that is gone: a child, named while it ran, then reaped.
  def dead_holder = with_live_holder { |holder, _pid| holder }

  # Yields the lease holder name of a live process of this host (a child that runs until the block ends).
  def with_live_holder
    reader, writer = IO.pipe
    pid = fork do
      writer.close
      reader.read
      exit!(0)
    end
    reader.close
    yield Locking::CLI::Lease.own(pid: pid), pid
  ensure
    writer&.close
    Process.wait(pid) if pid
  end

  describe "the gate and a running backfill" do
    before do
      expect(locking_cli("phase", "set", "1", "--init")[0]).to eq(0)
      source.set("locking:job", "t", px: 60_000)
      destination.set("locking:job", "t", px: 60_000) # copied: no source-only lock
      destination.set(lease_key, "ops-1:77", px: 30_000) # a backfill on another host
    end

    it "keeps the gate CLOSED, as phase advance (and its --check) and the dashboard do" do
      status, out, = locking_cli("gate")
      expect(status).to eq(1), out
      expect(out).to include("CLOSED", "a backfill is running (ops-1:77)")

      status, out, = locking_cli("phase", "advance", "--check")
      expect(status).to eq(1)
      expect(out).to include("a backfill is running (ops-1:77)")

      gate = json_of(locking_cli("gate", "--json")[1])
      expect(gate).to include("open" => false, "exit" => 1, "source_only" => 0)
      expect(gate["reasons"]).to include(a_string_including("a backfill is running (ops-1:77)"))
      expect(gate["backfill"]).to include("holder" => "ops-1:77", "alive" => nil)

      configure_both(:dual)
      Locking::Web.forget_counts
      web = Rack::MockRequest.new(Locking::Web.app(secret: "s" * 64)).get("/")
      expect(web.body).to include("closed", "a backfill is running (ops-1:77)")
      expect(destination.get(phase_key)).to eq("1")

      destination.del(lease_key) # the backfill ends: the dashboard's counted gate follows, cached or not
      expect(Rack::MockRequest.new(Locking::Web.app(secret: "s" * 64)).get("/").body).to match(/class="open">open</)
      destination.set(lease_key, "ops-1:78", px: 30_000) # another starts
      expect(Rack::MockRequest.new(Locking::Web.app(secret: "s" * 64)).get("/").body).to include("a backfill is running (ops-1:78)")
      destination.del(lease_key)
      expect(locking_cli("gate")[0]).to eq(0)
      expect(locking_cli("phase", "advance", "--check")[0]).to eq(0)
      expect(destination.get(phase_key)).to eq("1") # --check moves nothing
    ensure
      Locking.reset_configuration!
    end
  end

  describe "a dead backfill's lease" do
    before { expect(locking_cli("phase", "set", "1", "--init")[0]).to eq(0) }

    it "shows in status whether its holder lives and when it expires" do
      destination.set(lease_key, Locking::CLI::Lease.own, px: 30_000) # this process: alive
      _, out, = locking_cli("status")
      expect(out).to match(/backfill\s+running \(#{Socket.gethostname}:#{Process.pid}: process #{Process.pid} runs on this host/)
      expect(out).to match(/its lease expires in (29|30)\.\d+s/)

      destination.set(lease_key, dead_holder, px: 30_000)
      _, out, = locking_cli("status")
      expect(out).to match(/backfill\s+DEAD \(.*no process \d+ runs on this host\); its lease expires in/)
      expect(out).to include("a backfill run on this host takes it over now")

      status = json_of(locking_cli("status", "--json")[1])
      expect(status["backfill"]["lease"]).to include("alive" => false)
      expect(status["backfill"]["lease"]["expires_in_ms"]).to be_between(1, 30_000)

      configure_both(:dual)
      web = Rack::MockRequest.new(Locking::Web.app(secret: "s" * 64)).get("/")
      expect(web.body).to include("DEAD (#{Socket.gethostname}:", "takes it over now")
    ensure
      Locking.reset_configuration!
    end

    it "is taken over at once by a backfill on the same host, and the take-over is audited" do
      source.set("locking:job", "t", px: 60_000)
      gone = dead_holder
      destination.set(lease_key, gone, px: 30_000)
      status, out, err = locking_cli("backfill")
      expect(status).to eq(0), out + err
      expect(out).to include("gone (no process", "taking it over")
      expect(destination.get("locking:job")).to eq("t")
      # Left to expire: the gone backfill's copies may still be on the wire (backfill_takeover_spec).
      expect(destination.get(lease_key)).to eq("#{Locking::CLI::Lease.own} released=1")
      expect(audit_entries.map { |e| [e["event"], e["outcome"]] }).to include(["backfill-lease", "taken over"])
    end

    it "is not taken over while its holder runs, nor when the holder is on another host" do
      source.set("locking:job", "t", px: 60_000)
      with_live_holder do |holder, pid|
        destination.set(lease_key, holder, px: 30_000)
        status, _, err = locking_cli("backfill")
        expect(status).to eq(1)
        expect(err).to include("another backfill is running (#{Socket.gethostname}:#{pid})", "process #{pid} runs on this host")
        expect(destination.get(lease_key)).to eq(holder)
      end

      destination.set(lease_key, "ops-1:77", px: 30_000)
      status, _, err = locking_cli("backfill")
      expect(status).to eq(1)
      expect(err).to include("another backfill is running (ops-1:77)", "not this host")
      expect(destination.exists("locking:job")).to eq(0)
      expect(destination.get(lease_key)).to eq("ops-1:77")
    end

    it "takes a PID reused since as gone: the same PID, another start time" do
      reused = Locking::CLI::Lease.own.sub(/start=\d+/, "start=1")
      skip "no /proc start time here" if reused == Locking::CLI::Lease.own
      lease = Locking::CLI::Lease.new(reused)
      expect(lease.alive?).to be(false)
      expect(lease.why).to include("reused")
    end

    it "is taken over with backfill --break-lease when its holder cannot be told running, audited" do
      source.set("locking:job", "t", px: 60_000)
      with_live_holder do |holder|
        destination.set(lease_key, holder, px: 30_000)
        status, _, err = locking_cli("backfill", "--break-lease")
        expect(status).to eq(1)
        expect(err).to include("refused", "runs on this host")
        expect(destination.get(lease_key)).to eq(holder)
      end

      destination.set(lease_key, "ops-1:77", px: 30_000)
      status, out, = locking_cli("backfill", "--break-lease")
      expect(status).to eq(0), out
      expect(out).to include("held by ops-1:77, not provably running", "taking it over")
      expect(destination.get("locking:job")).to eq("t")
      expect(destination.get(lease_key)).to end_with(" released=1") # phase 2 waits out the TTL it had
      expect(audit_entries).to include(a_hash_including("event" => "backfill-lease", "outcome" => "broken",
                                                        "holder" => "ops-1:77"))
      expect(locking_cli("audit")[1]).to include("backfill lease of ops-1:77 broken")
    end
  end

  it "says which phase backfill and gate assume with static phases, and that the fleet's cannot be seen" do
    _, out, = locking_cli("gate", "--allow-empty")
    expect(out).to include("phase: 0 (source) ASSUMED", "cannot see the phase the fleet's processes run in")
    _, out, = locking_cli("backfill")
    expect(out).to include("phase: 0 (source) ASSUMED")

    locking_cli("phase", "set", "1", "--init")
    _, out, = locking_cli("backfill")
    expect(out).to include("phase: 1 (dual), dynamic")
    expect(out).not_to include("ASSUMED")
  end

  it "shows the progress of a resumed backfill over the whole walk, with this run's share" do
    out = StringIO.new
    progress = Locking::CLI::Progress.new(out, false, from: 1, before: 2_000, fraction: ->(at) { at == 1 ? 0.5 : 0.75 })
    progress.update(1_000, 3, 10.0)
    expect(out.string).to include("75% of the walk, 3,000 keys scanned (1,000 in this run)", "ETA 0:10")
  end

  describe "--json" do
    it "prints one object for status, phase, gate and backfill" do
      source.set("locking:job", "t", px: 60_000)
      locking_cli("phase", "set", "1", "--init")

      status = json_of(locking_cli("status", "--json")[1])
      expect(status).to include("command" => "status", "exit" => 0)
      expect(status["servers"]["source"]).to include("keys" => 1)
      expect(status["phase"]).to eq("index" => 1, "name" => "dual", "seen" => "dynamic")

      gate = json_of(locking_cli("gate", "--json")[1])
      expect(gate).to include("open" => false, "source_only" => 1, "exit" => 1)
      expect(gate["reasons"]).to eq(["1 lock(s) or semaphore place(s) live on the source only, or end sooner on the " \
                                     "destination: run `locking backfill` (it copies locks and raises a shorter copy's " \
                                     "TTL; a place is copied when its holder renews it), or wait for their TTLs"])

      backfill = json_of(locking_cli("backfill", "--json")[1])
      expect(backfill).to include("outcome" => "done", "exit" => 0, "source_only_after" => 0)
      expect(backfill["totals"]).to include("scanned" => 1, "copied" => 1)
      expect(destination.get("locking:job")).to eq("t")

      phase = json_of(locking_cli("phase", "advance", "--json")[1])
      expect(phase).to include("from" => 1, "to" => 2, "moved" => true, "exit" => 0)
      expect(destination.get(phase_key)).to eq("2")
    end

    it "is a usage error on a command without it" do
      status, _, err = locking_cli("cleanup-source", "--json")
      expect(status).to eq(2)
      expect(err).to include("--json works with")
    end
  end

  describe "unlock" do
    before do
      source.set("locking:job:1", "t1", px: 60_000)
      destination.set("locking:job:1", "t1", px: 60_000)
      source.set("locking:job:2", "t2", px: 60_000)
      source.set("locking:other", "t3", px: 60_000)
      source.set("locking:odd*key", "t4", px: 60_000)
    end

    it "deletes one key on every server, lists with --dry-run, and audits" do
      status, out, = locking_cli("unlock", "job:1", "--dry-run")
      expect(status).to eq(0)
      expect(out).to include("1 lock(s) \"job:1\"", "would be deleted")
      expect(source.exists("locking:job:1") + destination.exists("locking:job:1")).to eq(2)

      status, out, = locking_cli("unlock", "job:1")
      expect(status).to eq(0)
      expect(out).to include("2 lock key(s) deleted")
      expect(source.exists("locking:job:1") + destination.exists("locking:job:1")).to eq(0)
      expect(source.get("locking:job:2")).to eq("t2")
      expect(audit_entries.first).to include("event" => "unlock", "key" => "job:1",
                                             "totals" => { "deleted" => 2, "semaphores_deleted" => 0 })

      _, out, = locking_cli("unlock", "odd*key", "--dry-run") # a key, not a pattern
      expect(out).to include("1 lock(s)")

      source.rpush("locking:queue", "job") # not a lock: left alone
      _, out, = locking_cli("unlock", "queue")
      expect(out).to include("0 lock key(s) deleted")
      expect(source.lrange("locking:queue", 0, -1)).to eq(["job"])
    end

    it "deletes every match of --glob, and --dry-run lists them" do
      unlock = json_of(locking_cli("unlock", "--glob", "job:*", "--dry-run", "--json")[1])
      expect(unlock).to include("matched" => 2, "dry_run" => true)
      expect(unlock["keys"]).to contain_exactly("job:1", "job:2")
      expect(source.exists("locking:job:2")).to eq(1)

      status, out, = locking_cli("unlock", "--glob", "job:*")
      expect(status).to eq(0)
      expect(out).to include("3 lock key(s) deleted")
      expect(source.keys("locking:*")).to contain_exactly("locking:other", "locking:odd*key")
      expect(destination.keys("locking:*")).to be_empty
      expect(audit_entries.first).to include("event" => "unlock", "glob" => "job:*")
    end

    it "refuses bad input with a usage error" do
      [[[], "unlock needs a KEY or --glob PATTERN"], [["a", "--glob", "b"], "unlock needs a KEY or --glob PATTERN"],
       [["--glob", ""], "an empty pattern"], [%w[a b], "unlock takes one KEY"]].each do |args, message|
        status, _, err = locking_cli("unlock", *args)
        expect(status).to eq(2)
        expect(err).to include(message)
      end
      expect(source.keys("locking:*").size).to eq(4)
    end
  end

  it "prints the audit log, newest first, --limit N of it" do
    locking_cli("phase", "set", "0", "--init")
    locking_cli("phase", "set", "1")
    _, out, = locking_cli("audit")
    expect(out.lines.grep(/phase/).map(&:strip)).to match([/phase source -> dual\z/, /phase none -> source\z/])
    _, out, = locking_cli("audit", "--limit", "1")
    expect(out).to include("the last 1").and include("source -> dual")
    audit = json_of(locking_cli("audit", "--json", "--limit", "2")[1])
    expect(audit["entries"].map { |e| e["to"] }).to eq(%w[dual source])
    expect(locking_cli("audit", "--limit", "0")[0]).to eq(2)
  end

  describe "phase --wait-fleet" do
    before { locking_cli("phase", "set", "1", "--init", "--allow-empty") }

    it "waits until every reporting process reports the new phase" do
      fake_heartbeat("worker-1:1", "1 1 10000")
      follow = Thread.new do
        # The worker follows once it sees phase 2 (as a process does within its phase_cache_ttl).
        deadline = monotonic + 10
        sleep 0.01 until destination.get(phase_key) == "2" || monotonic > deadline
        fake_heartbeat("worker-1:1", "1 2 10000")
        fake_heartbeat("worker-1:1", "2 2 10000")
      end
      status, out, = locking_cli("phase", "advance", "--allow-empty", "--wait-fleet", "10")
      follow.join
      expect(status).to eq(0), out
      expect(out).to include("1 (dual) -> 2 (drain)", "every reporting process reports phase 2 (drain)")
      expect(destination.get(phase_key)).to eq("2")
    end

    it "exits 1 naming the processes behind when they do not follow in time" do
      fake_heartbeat("worker-1:1", "1 1 10000")
      status, out, = locking_cli("phase", "set", "0", "--wait-fleet", "0.5")
      expect(status).to eq(1)
      expect(out).to include("timed out", "worker-1:1", "the phase was set")
      expect(destination.get(phase_key)).to eq("0") # the move itself was made
    end
  end
end
