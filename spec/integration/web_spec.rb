# frozen_string_literal: true

require "rack/test"
require "locking/web"

# Locking::Web route by route (Rack::Test), on real servers: what each page
# shows, and what Redis holds after each action.
RSpec.describe "Locking::Web (the dashboard)" do
  include Rack::Test::Methods

  def app = @app ||= Locking::Web.app(secret: "s" * 64)

  before do
    Locking::Web.read_only = false
    Locking::Web.forget_counts
    configure_both(:dual)
  end

  after do
    Locking::Web.read_only = false
    Locking.reset_configuration!
  end

  # The session's CSRF token, as every page carries it.
  def csrf
    get "/locks"
    last_response.body[/<meta name="csrf-token" content="([^"]+)">/, 1] or raise "no token on /locks"
  end

  it "shows the overview: phase, lock counts and TTL chart per server, gate, fleet, backfill; it refreshes itself" do
    Locking.new("Import:1").acquire(30)
    Locking.new("Import:2").acquire(3600 * 2)
    get "/"
    expect(last_response.status).to eq(200)
    body = last_response.body
    expect(body).to include("phase 1 (dual)", source_server.url, destination_server.url)
    expect(body).to include("Gate into phase 2", "source-only locks: 0", "Fleet (0 processes reporting)", "Backfill")
    expect(body).to include('<meta http-equiv="refresh" content="5">')
    expect(body.scan(%r{<td class="muted" style="width: 70px">&lt; 1 min</td>\s*<td><span class="bar" style="width: 160px"></span> 1}).size)
      .to eq(2) # one lock under a minute on each server...
    expect(body.scan(%r{&lt; 1 day</td>\s*<td><span class="bar" style="width: 160px"></span> 1}).size).to eq(2) # ...one under a day
    expect(last_response.headers["content-security-policy"]).to include("default-src 'self'")
  end

  it "works with the final settings after the migration (phase 3, no source): overview and lock list" do
    Locking.reset_configuration!
    Locking.configure do |c|
      c.source = nil # the README's final settings
      c.destination = destination_server.url
      c.phase = :destination
    end
    Locking.new("Final:1").acquire(60)
    expect(destination.get("locking:Final:1")).not_to be_nil
    get "/"
    expect(last_response.status).to eq(200), last_response.body[0, 500]
    expect(last_response.body).to include(destination_server.url)
    expect(last_response.body).not_to include("Gate into phase 2")
    get "/locks"
    expect(last_response.status).to eq(200)
    expect(last_response.body).to include("Final:1")
  end

  it "shows the fleet's phase and heartbeats with dynamic phases, and the phase controls" do
    expect(locking_cli("phase", "set", "0", "--init")[0]).to eq(0)
    fake_heartbeat("web-host:4242", "0 0 5000")
    get "/"
    expect(last_response.body).to include("phase 0 (source)", "web-host:4242", "Advance to the next phase")
  end

  # Calls of one command on a server so far (INFO commandstats).
  def calls(server, command)
    server.redis.info("commandstats").fetch(command, {}).fetch("calls", 0).to_i
  end

  it "counts the keyspace at most once per interval for every viewer, and says how old the counts are" do
    source_server.bulk_load((1..3_000).map { |i| ["SET", "locking:Count:#{i}", "t", "PX", "60000"] })
    before = calls(source_server, "scan")
    get "/"
    first = calls(source_server, "scan") - before
    expect(first).to be > 0
    expect(last_response.body).to include("3,000", "counted", "shared by every viewer")
    3.times { get "/" } # the page refreshes itself; other viewers
    expect(calls(source_server, "scan") - before).to eq(first)
    Locking::Web.counts_seconds = 0
    get "/"
    expect(calls(source_server, "scan") - before).to be > first
  ensure
    Locking::Web.counts_seconds = 30
  end

  it "looks an exact key up at once, without walking the keyspace" do
    source_server.bulk_load((1..3_000).map { |i| ["SET", "locking:Many:#{i}", "t#{i}", "PX", "60000"] })
    before = calls(source_server, "scan")
    get "/locks", q: "Many:2999", server: "source"
    expect(last_response.body).to include("<code>Many:2999</code>", "<code>t2999</code>")
    expect(calls(source_server, "scan") - before).to eq(0)
  end

  it "lists the locks of the server the phase reads, and offers only the moves the rules could allow" do
    configure_both(:drain)
    Locking.new("Drained:1").acquire(30)
    get "/locks"
    expect(last_response.body).to include("Locks on the destination", "Drained:1")

    expect(locking_cli("phase", "set", "3", "--init")[0]).to eq(0)
    get "/"
    expect(last_response.body).not_to include("Advance to the next phase")
    expect(last_response.body).to include("Set phase 2…")
    expect(last_response.body).not_to include("Set phase 0…", "Set phase 1…")
    expect(locking_cli("phase", "set", "2")[0]).to eq(0)
    get "/"
    expect(last_response.body).to include("Advance to the next phase", "Set phase 1…", "Set phase 3…")
    expect(last_response.body).not_to include("Set phase 0…")
  end

  it "lists locks matching a glob, SCAN-paged, with key, servers, token and TTL" do
    Locking.new("Import:1", token: "tok-1").acquire(30)
    Locking.new("Export:1").acquire(30)
    source_server.bulk_load((1..450).map { |i| ["SET", "locking:Bulk:#{i}", "t#{i}", "PX", "60000"] })
    get "/locks", q: "Import:*"
    expect(last_response.status).to eq(200)
    expect(last_response.body).to include("<code>Import:1</code>", "<td>both</td>", "<code>tok-1</code>")
    expect(last_response.body).not_to include("Export:1")
    # Paging: follow the "Next page" links until the scan ends; every key once.
    seen = []
    path = "/locks?q=Bulk:*"
    20.times do
      get path
      seen.concat(last_response.body.scan(%r{<code>(Bulk:\d+)</code>}).flatten)
      next_link = last_response.body[/href="([^"]+)">Next page/, 1] or break
      path = CGI.unescapeHTML(next_link)
    end
    expect(seen.sort).to eq((1..450).map { |i| "Bulk:#{i}" }.sort)
  end

  it "unlocks one lock through a confirmation, as unlock! does, and checks Redis" do
    Locking.new("Import:9").acquire(60)
    token = csrf
    post "/locks/unlock", key: "Import:9", csrf: token
    expect(last_response.status).to eq(200)
    expect(last_response.body).to include("Unlock Import:9?", "Yes, unlock")
    expect([source.exists("locking:Import:9"), destination.exists("locking:Import:9")]).to eq([1, 1]) # not yet
    post "/locks/unlock", key: "Import:9", csrf: token, confirm: "yes"
    expect(last_response.status).to eq(200)
    expect([source.exists("locking:Import:9"), destination.exists("locking:Import:9")]).to eq([0, 0])
  end

  it "unlocks every lock matching a glob after showing them" do
    3.times { |i| Locking.new("Import:#{i}").acquire(60) }
    Locking.new("Keep:1").acquire(60)
    token = csrf
    post "/locks/unlock", pattern: "Import:*", csrf: token
    expect(last_response.body).to include("3 lock(s) matching Import:*", "<code>Import:0</code>")
    post "/locks/unlock", pattern: "Import:*", csrf: token, confirm: "yes"
    expect(source.keys("locking:*")).to eq(["locking:Keep:1"])
    expect(destination.keys("locking:*")).to eq(["locking:Keep:1"])
  end

  it "refuses a POST without the session's CSRF token, or with another session's, changing nothing" do
    Locking.new("Import:1").acquire(60)
    post "/locks/unlock", key: "Import:1", confirm: "yes"
    expect(last_response.status).to eq(403)
    other_token = csrf
    clear_cookies # a new session: the old token is not its own
    post "/locks/unlock", key: "Import:1", csrf: other_token, confirm: "yes"
    expect(last_response.status).to eq(403)
    expect(last_response.body).to include("CSRF")
    expect(source.exists("locking:Import:1")).to eq(1)
  end

  it "changes nothing on a GET, and says so" do
    Locking.new("Import:1").acquire(60)
    get "/locks/unlock", key: "Import:1", confirm: "yes", csrf: csrf
    expect(last_response.status).to eq(405)
    get "/phase"
    expect(last_response.status).to eq(405)
    expect(source.exists("locking:Import:1")).to eq(1)
  end

  it "moves the phase with the CLI's rules, after a confirmation, and shows a refusal" do
    expect(locking_cli("phase", "set", "0", "--init")[0]).to eq(0)
    token = csrf
    post "/phase", to: "2", csrf: token
    expect(last_response.body).to include("Set the fleet's phase to 2?")
    post "/phase", to: "2", csrf: token, confirm: "yes" # 0 -> 2: not adjacent
    expect(last_response.status).to eq(409)
    expect(last_response.body).to include("Refused")
    expect(destination.get("{locking-control}:locking:phase")).to eq("0")
    post "/phase", csrf: token, confirm: "yes" # advance: 0 -> 1
    expect(last_response.status).to eq(200), last_response.body
    expect(destination.get("{locking-control}:locking:phase")).to eq("1")
  end

  it "hides and refuses every action when read-only" do
    Locking::Web.read_only = true
    Locking.new("Import:1").acquire(60)
    expect(locking_cli("phase", "set", "0", "--init")[0]).to eq(0)
    get "/locks", q: "Import:*"
    expect(last_response.body).to include("<code>Import:1</code>", "read-only")
    expect(last_response.body).not_to include("Unlock", "<form method=\"post\"")
    get "/"
    expect(last_response.body).not_to include("Advance", "<form method=\"post\"")
    post "/locks/unlock", key: "Import:1", csrf: "anything", confirm: "yes"
    expect(last_response.status).to eq(403)
    post "/phase", confirm: "yes"
    expect(last_response.status).to eq(403)
    expect(source.exists("locking:Import:1")).to eq(1)
    expect(destination.get("{locking-control}:locking:phase")).to eq("0")
  end

  it "escapes everything it shows: a key holding <script> and a binary token" do
    Locking.new("x<script>alert(1)</script>", token: "\xFF<b>".b).acquire(60)
    get "/locks"
    body = last_response.body
    expect(body).not_to include("<script>", "<b>")
    expect(body).to include("x&lt;script&gt;alert(1)&lt;/script&gt;", "\\xFF&lt;b&gt;")
    post "/locks/unlock", key: "x<script>alert(1)</script>", csrf: csrf
    expect(last_response.body).not_to include("<script>")
  end

  it "never shows a password" do
    source.config(:set, "requirepass", "s3cret-pw")
    Locking.reset_configuration!
    Locking.configure do |c|
      c.source = source_server.url.sub("redis://", "redis://:s3cret-pw@")
      c.destination = destination_server.url
      c.phase = :dual
    end
    Locking.new("Import:1").acquire(60)
    get "/"
    expect(last_response.status).to eq(200)
    get "/locks"
    expect(last_response.body).to include("Import:1")
    [get("/").body, get("/locks").body].each { |body| expect(body).not_to include("s3cret-pw") }
  ensure
    Redis.new(url: source_server.url, password: "s3cret-pw").config(:set, "requirepass", "")
  end

  it "shows a Redis failure as a page, not a crash" do
    Locking.reset_configuration!
    Locking.configure { |c| c.source = "redis://:pw@127.0.0.1:#{RedisServer.free_port}/0" }
    get "/"
    expect(last_response.status).to eq(503)
    expect(last_response.body).to include("Locking::ConnectionError", "cannot connect")
    expect(last_response.body).not_to include(":pw@")
  end
end
