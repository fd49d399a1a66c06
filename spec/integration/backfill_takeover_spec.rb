# frozen_string_literal: true

require_relative "../support/copy_holding_proxy"

# A backfill's lease keeps the fleet out of phase 2 while its copies may
# still land: a process that is gone may have left copies on the wire (the
# kernel's send queue, a proxy, a TLS terminator), and a run that stopped on
# a timeout sent copies nobody answered. So the lease is never shortened by
# anyone but a holder whose every copy was answered: a take over keeps the
# TTL the lease has left, a run that ends otherwise leaves its lease to
# expire, and a holder is judged gone only from its own host, boot, PID
# namespace, time namespace and /proc. (An adversary's findings, each
# reproduced first.)
RSpec.describe "taking over a backfill's lease" do
  let(:lease_key) { "{locking-control}:locking:backfill" }
  let(:root) { File.expand_path("../..", __dir__) }

  before { expect(locking_cli("phase", "set", "1", "--init")[0]).to eq(0) }

  def load_source(count) = source_server.bulk_load(Array.new(count) { |i| ["SET", "locking:k#{i}", "t#{i}", "PX", "600000"] })

  # A backfill through a proxy that holds its copies once armed; yields the
  # proxy and the child once a copy pipeline is held (sent, not landed).
  def with_copies_on_the_wire(*args)
    load_source(5_000)
    proxy = CopyHoldingProxy.new(destination_server.port)
    backfill = Forked.new do
      trap("INT", "DEFAULT")
      locking_cli("backfill", "--rate", "2000", *args, destination: proxy.url)
    end
    expect(wait_for(20) { destination.keys("locking:k*").size >= 400 }).to be(true)
    proxy.arm!
    expect(wait_for(10) { proxy.held? }).to be(true)
    yield proxy, backfill
  ensure
    proxy&.let_go!
    backfill&.kill
    proxy&.close
  end

  def expect_phase_2_refused
    status, out, = locking_cli("phase", "advance")
    expect(status).to eq(1), out
    expect(out).to include("backfill")
    expect(destination.get("{locking-control}:locking:phase")).to eq("1")
  end

  it "keeps phase 2 waiting for a killed backfill's copies when another takes its lease over" do
    with_copies_on_the_wire do |_proxy, backfill|
      Process.kill(:KILL, backfill.pid)
      backfill.kill # reaped: provably gone
      status, out, = locking_cli("backfill")
      expect(status).to eq(0), out
      expect(out).to include("gone", "taking it over", "left to expire")
      expect(destination.get(lease_key)).to end_with(" released=1")
      expect(destination.pttl(lease_key)).to be > 1_000
      expect_phase_2_refused
      _, out, = locking_cli("status")
      expect(out).to include("given back, left to expire")
    end
  end

  [nil, :INT].each do |signal|
    it "leaves the lease of a run whose copies were not all answered to expire#{' (Ctrl-C)' if signal}" do
      with_copies_on_the_wire("--timeout", "1") do |_proxy, backfill|
        Process.kill(signal, backfill.pid) if signal
        status, out, = backfill.result
        expect(status).not_to eq(0)
        expect(out).to include("left to expire")
        expect(destination.get(lease_key)).to end_with(" released=1")
        expect_phase_2_refused

        status, out, = locking_cli("backfill") # a resume takes it over at once, from any host
        expect(status).to eq(0), out
        expect(out).to include("given back to expire", "taking it over")
        expect_phase_2_refused
      end
    end
  end

  it "gives the lease back at once after a clean run" do
    load_source(50)
    status, out, = locking_cli("backfill")
    expect(status).to eq(0), out
    expect(destination.exists(lease_key)).to eq(0)
  end

  it "replaces only the exact lease value it judged" do
    destination.set(lease_key, "other-host:2 released=1", px: 30_000)
    configure_both(:dual)
    client = Locking.client
    expect(client.backfill_lease("me:1", ttl: 30, take_over: "other-host:1 released=1")).to eq("other-host:2 released=1")
    expect(destination.get(lease_key)).to eq("other-host:2 released=1")
    destination.pexpire(lease_key, 20_000)
    expect(client.backfill_lease("me:1", ttl: 5, take_over: "other-host:2 released=1")).to eq("me:1")
    expect(destination.pttl(lease_key)).to be > 15_000 # the TTL it had left, not the shorter one asked for
  ensure
    Locking.reset_configuration!
  end

  it "refuses --break-lease with --dry-run (a dry run takes no lease)" do
    destination.set(lease_key, "ops-1:77", px: 30_000)
    status, _, err = locking_cli("backfill", "--break-lease", "--dry-run")
    expect(status).to eq(2)
    expect(err).to include("--break-lease")
    expect(destination.get(lease_key)).to eq("ops-1:77")
  end

  it "names its host in printable ASCII, whatever sethostname set" do
    allow(Socket).to receive(:gethostname).and_return("web 1\u00e9".b)
    own = Locking::CLI::Lease.own
    expect(own).to match(/\Aweb\?1\?\?:\d+/)
    expect(own).to be_ascii_only
    expect(Locking::CLI::Lease.new(own).host).to eq(Locking::CLI::Lease.host_name)
  end

  context "as root, with namespaces (unshare)" do
    before do
      skip "needs root for unshare" unless Process.uid.zero?
      skip "no unshare" unless system("unshare", "-T", "-p", "-f", "true", err: File::NULL)
    end

    def locking_command(*args)
      [RbConfig.ruby, "-rbundler/setup", "-I#{root}/lib", "#{root}/exe/locking", *args, "--source", source_server.url,
       "--destination", destination_server.url, "--prefix", "locking:", "--no-progress"]
    end

    it "does not judge a holder in another time namespace gone (its start time reads differently)" do
      reader, writer = IO.pipe
      pid = Process.spawn("unshare", "-T", "--boottime", "1000", RbConfig.ruby, "-rbundler/setup", "-I#{root}/lib",
                          "-rlocking/cli", "-e", "puts Locking::CLI::Lease.own; STDOUT.flush; sleep", out: writer)
      writer.close
      holder = reader.gets.strip
      destination.set(lease_key, holder, px: 30_000)
      expect(Locking::CLI::Lease.new(holder).alive?).not_to be(false)
      status, _, err = locking_cli("backfill")
      expect(status).to eq(1)
      expect(err).to include("another backfill is running")
      expect(destination.get(lease_key)).to eq(holder)
    ensure
      if pid
        Process.kill(:KILL, pid)
        Process.wait(pid)
      end
    end

    it "does not judge a live holder gone from a PID namespace that sees another /proc" do
      live = Forked.new { sleep }
      holder = Locking::CLI::Lease.own(pid: live.pid)
      destination.set(lease_key, holder, px: 30_000)
      out = IO.popen(["unshare", "-p", "-f", "sh", "-c", '"$@"; echo "exit=$?"', "sh", *locking_command("backfill")],
                     err: %i[child out], &:read)
      expect(out[/exit=(\d+)/, 1]).to eq("1"), out
      expect(out).to include("another backfill is running")
      expect(destination.get(lease_key)).to eq(holder)
    ensure
      live&.kill
    end
  end
end
