# frozen_string_literal: true

require "rack/test"
require "locking/web"

# The operator tools and semaphores, on real servers: `locking status` counts them, `locking unlock` and the
# dashboard delete them (every place) and nothing else under the prefix, Locking.lock_info refuses them and
# Locking.semaphore_info lists their places. Each example checks what Redis holds afterwards.
RSpec.describe "The operator tools and semaphores" do
  include Rack::Test::Methods

  def app = @app ||= Locking::Web.app(secret: "s" * 64)

  def json_of(out)
    expect(out.lines.size).to eq(1), out
    JSON.parse(out)
  end

  def audit_entries = destination.lrange("{locking-control}:locking:audit", 0, -1).map { |line| JSON.parse(line) }

  # Sorted sets and a hash under the prefix that are not semaphores: no TTL (scores a place could have had);
  # scores in seconds; a TTL shorter than its scores (a semaphore's key outlives its places); and no zset at
  # all. Only on the source.
  def other_data
    now_ms = source.time.then { |seconds, micros| (seconds * 1000) + (micros / 1000) }
    source.zadd("locking:board", now_ms - 60_000, "a")
    source.zadd("locking:secs", (now_ms / 1000) + 60, "a")
    source.expire("locking:secs", 600)
    source.zadd("locking:later", now_ms + 600_000, "a")
    source.pexpire("locking:later", 60_000)
    source.hset("locking:hash", "a", "1")
    %w[locking:board locking:secs locking:later locking:hash]
  end

  before do
    Locking::Web.read_only = false
    Locking::Web.forget_counts
    configure_both(:dual)
  end

  after do
    Locking::Web.read_only = false
    Locking.reset_configuration!
  end

  describe "locking status" do
    it "counts semaphore keys and their live places per server, beside the lock numbers, in text and --json" do
      Locking.new("job:1").acquire(60)
      Locking::Semaphore.new("exports", limit: 3, token: "long").acquire(60)
      Locking::Semaphore.new("exports", limit: 3, token: "short").acquire(0.2)
      Locking::Semaphore.new("imports", limit: 1).acquire(60)
      other_data
      sleep 0.3 # "short" has expired; its member stays until the next write to the semaphore
      expect(source.zcard("locking:exports")).to eq(2)

      status, out, = locking_cli("status")
      expect(status).to eq(0)
      expect(out.lines.grep(/^source /).join).to match(/1 lock keys  \(TTL max/).and match(/2 semaphore keys  \(2 live places\)/)
      expect(out.lines.grep(/^destination /).join).to match(/2 semaphore keys  \(2 live places\)/)

      servers = json_of(locking_cli("status", "--json")[1])["servers"]
      %w[source destination].each do |name|
        expect(servers[name]).to include("keys" => 1, "without_ttl" => 0, "semaphores" => 2, "places" => 2)
        expect(servers[name]["max_ttl_ms"]).to be_between(50_000, 60_000)
        expect(servers[name]["p99_ttl_ms"]).to be_between(50_000, 60_000)
      end
    end
  end

  describe "locking unlock" do
    before do
      Locking.new("job:1").acquire(60)
      Locking::Semaphore.new("job:limit", limit: 2, token: "p1").acquire(60)
      Locking::Semaphore.new("job:limit", limit: 2, token: "p2").acquire(60)
      Locking::Semaphore.new("exports", limit: 2).acquire(60)
    end

    it "deletes a semaphore's key with all its places on every server, reports it in text and --json, and audits" do
      status, out, = locking_cli("unlock", "job:limit", "--dry-run")
      expect(status).to eq(0)
      expect(out).to include("0 lock(s) \"job:limit\"", "1 semaphore(s) \"job:limit\"", "\"job:limit\" (2 live places)")
      expect([source.zcard("locking:job:limit"), destination.zcard("locking:job:limit")]).to eq([2, 2])

      result = json_of(locking_cli("unlock", "job:limit", "--json")[1])
      expect(result).to include("exit" => 0, "matched" => 0, "semaphores_matched" => 1, "semaphore_keys" => ["job:limit"],
                                "deleted" => 0, "semaphores_deleted" => 2)
      expect(result["output"].join).to include("0 lock key(s) deleted, 2 semaphore key(s) deleted")
      expect([source.exists("locking:job:limit"), destination.exists("locking:job:limit")]).to eq([0, 0])
      expect([source.exists("locking:job:1"), source.zcard("locking:exports")]).to eq([1, 1]) # not matched
      expect(audit_entries.first).to include("event" => "unlock", "key" => "job:limit",
                                             "totals" => { "deleted" => 0, "semaphores_deleted" => 2 })
      expect(locking_cli("audit")[1]).to include("unlock \"job:limit\": 0 lock key(s) and 2 semaphore key(s) deleted")
    end

    it "deletes locks and semaphores matching --glob, and leaves other sorted sets and hashes under the prefix" do
      others = other_data.to_h { |key| [key, source.dump(key)] }
      %w[board secs later hash].each { |name| source.rename("locking:#{name}", "locking:job:#{name}") }
      others = others.transform_keys { |key| key.sub("locking:", "locking:job:") }

      before = snapshot(source)
      dry = json_of(locking_cli("unlock", "--glob", "job:*", "--dry-run", "--json")[1])
      expect(dry).to include("matched" => 1, "keys" => ["job:1"], "semaphores_matched" => 1, "semaphore_keys" => ["job:limit"])
      expect(snapshot(source)).to eq(before)

      status, out, = locking_cli("unlock", "--glob", "job:*")
      expect(status).to eq(0)
      expect(out).to include("2 lock key(s) deleted, 2 semaphore key(s) deleted")
      expect(source.keys("locking:job:*")).to match_array(others.keys)
      others.each { |key, dump| expect(source.dump(key)).to eq(dump), key }
      expect(destination.keys("locking:job:*")).to be_empty
      expect([source.zcard("locking:exports"), destination.zcard("locking:exports")]).to eq([1, 1]) # not matched
    end

    it "leaves a key that is no lock and no semaphore, even named alone, and decides per server" do
      keys = other_data
      keys.each do |key|
        status, out, = locking_cli("unlock", key.delete_prefix("locking:"))
        expect(status).to eq(0)
        expect(out).to include("0 lock key(s) deleted, 0 semaphore key(s) deleted")
      end
      expect(keys.map { |key| source.exists(key) }).to eq([1, 1, 1, 1])

      # What the key is on each server is decided there, at the delete: a lock on one, a hash on the other.
      source.set("locking:mixed", "t", px: 60_000)
      destination.hset("locking:mixed", "a", "1")
      expect(Locking.client.unlock_key("mixed")).to eq(locks: 1, semaphores: 0)
      expect([source.exists("locking:mixed"), destination.hgetall("locking:mixed")]).to eq([0, { "a" => "1" }])
    end

    it "refuses bad input with a clear exception" do
      expect { Locking.client.unlock_key(nil) }.to raise_error(ArgumentError, /String/)
      expect { Locking.client.unlock_key("") }.to raise_error(ArgumentError, /must not be empty/)
      expect { Locking.client.semaphore_page(:elsewhere, 0, "*", 10) }.to raise_error(ArgumentError, /:source or :destination/)
      expect { Locking.client.semaphore_page(:source, "x", "*", 10) }.to raise_error(ArgumentError)
      expect(source.zcard("locking:job:limit")).to eq(2)
    end
  end

  describe "the dashboard" do
    def csrf
      get "/locks"
      last_response.body[/<meta name="csrf-token" content="([^"]+)">/, 1] or raise "no token on /locks"
    end

    it "counts semaphores and their places in the overview, and lists each with its places' tokens and time left" do
      Locking::Semaphore.new("exports", limit: 3, token: "tok-a").acquire(60)
      Locking::Semaphore.new("exports", limit: 3, token: "tok-b").acquire(600)
      Locking.new("job:1").acquire(60)
      other_data
      get "/"
      expect(last_response.status).to eq(200)
      expect(last_response.body).to include("<th>semaphores</th><th>live places</th>")
      expect(last_response.body.scan(%r{#semaphores">1</a></td>\s*<td>2</td>}).size).to eq(2) # both servers

      get "/locks", server: "source"
      body = last_response.body
      expect(body).to include("Semaphores on the source")
      row = body[%r{<tr><td><code>exports</code></td>.*?</tr>}m]
      expect(row).to include("<td>both</td>", "<td>2</td>", "<code>tok-a</code>: ", "<code>tok-b</code>: ", "Unlock…")
      expect(row).to match(%r{tok-a</code>: (59|60)(\.\d)? s}).and match(%r{tok-b</code>: (9|10) min})
      expect(body).not_to include("<code>board</code>", "<code>secs</code>", "<code>later</code>", "<code>hash</code>")
      expect(body).to include("<code>job:1</code>") # the locks' list is still there

      Locking::Web.read_only = true
      get "/locks", server: "source"
      expect(last_response.body[%r{<tr><td><code>exports</code></td>.*?</tr>}m]).to include("<code>tok-a</code>")
      expect(last_response.body).not_to include("Unlock", "unlock")
      post "/locks/unlock", key: "exports", csrf: "anything", confirm: "yes"
      expect(last_response.status).to eq(403)
      expect(source.zcard("locking:exports")).to eq(2)
    end

    it "unlocks a semaphore (every place) through a confirmation, audits it, and leaves other data" do
      Locking::Semaphore.new("exports", limit: 3, token: "tok-a").acquire(60)
      Locking::Semaphore.new("exports", limit: 3, token: "tok-b").acquire(60)
      keys = other_data
      token = csrf
      post "/locks/unlock", key: "exports", csrf: token
      expect(last_response.status).to eq(200)
      expect(last_response.body).to include("Unlock exports?", "It is a semaphore", "2 live place(s)", "<code>tok-a</code>")
      expect([source.zcard("locking:exports"), destination.zcard("locking:exports")]).to eq([2, 2]) # not yet

      post "/locks/unlock", key: "exports", csrf: token, confirm: "yes"
      expect(last_response.status).to eq(200)
      expect(last_response.body).to include("0 lock key(s) and 2 semaphore key(s)")
      expect([source.exists("locking:exports"), destination.exists("locking:exports")]).to eq([0, 0])
      expect(audit_entries.first).to include("event" => "unlock", "via" => "dashboard", "key" => "exports",
                                             "totals" => { "deleted" => 0, "semaphores_deleted" => 2 })

      post "/locks/unlock", key: "board", csrf: token, confirm: "yes" # a sorted set, not a semaphore
      expect(last_response.body).to include("0 lock key(s) and 0 semaphore key(s)")
      expect(keys.map { |key| source.exists(key) }).to eq([1, 1, 1, 1])
    end

    it "unlocks every lock and semaphore matching a glob after listing them" do
      Locking.new("Import:1").acquire(60)
      Locking::Semaphore.new("Import:limit", limit: 2, token: "tok-i").acquire(60)
      Locking::Semaphore.new("Keep:limit", limit: 2).acquire(60)
      source.zadd("locking:Import:board", 1, "a")
      token = csrf
      post "/locks/unlock", pattern: "Import:*", csrf: token
      expect(last_response.body).to include("Unlock 1 lock(s) matching Import:* (and 1 semaphore(s))?", "<code>Import:limit</code>")
      post "/locks/unlock", pattern: "Import:*", csrf: token, confirm: "yes"
      expect(source.keys("locking:*")).to contain_exactly("locking:Keep:limit", "locking:Import:board")
      expect(destination.keys("locking:*")).to eq(["locking:Keep:limit"])
      expect(audit_entries.first).to include("glob" => "Import:*", "totals" => { "deleted" => 2, "semaphores_deleted" => 2 })
    end
  end

  describe "Locking.lock_info and Locking.semaphore_info" do
    it "refuses a semaphore's key in lock_info, naming Semaphore#holders; semaphore_info lists the places" do
      Locking::Semaphore.new("exports", limit: 3, token: "tok-a").acquire(60)
      Locking::Semaphore.new("exports", limit: 3, token: "tok-b").acquire(30)
      expect { Locking.lock_info("exports") }.to raise_error(ArgumentError, /semaphore.*Locking::Semaphore#holders/)

      info = Locking.semaphore_info("exports")
      expect(info[:places].map { |place| place[:token] }).to contain_exactly("tok-a", "tok-b")
      ttls = info[:places].to_h { |place| [place[:token], place[:ttl]] }
      expect(ttls["tok-a"]).to be_a(Float).and be_between(59.0, 60.0)
      expect(ttls["tok-b"]).to be_between(29.0, 30.0)
      expect(Locking::Semaphore.new("exports", limit: 3).holders).to eq(info[:places].size)
    end

    it "reads the server whose places count in the phase, and answers nil or refuses what is no semaphore" do
      configure_both(:drain)
      Locking::Semaphore.new("exports", limit: 3, token: "tok-d").acquire(60)
      expect(source.exists("locking:exports")).to eq(0)
      expect(Locking.semaphore_info("exports")[:places].map { |place| place[:token] }).to eq(["tok-d"])

      configure_both(:dual)
      other_data
      expect(Locking.semaphore_info("board")).to be_nil # a sorted set, no semaphore
      expect(Locking.lock_info("board")).to be_nil
      expect(Locking.semaphore_info("nothing")).to be_nil
      Locking.new("job:1").acquire(60)
      expect { Locking.semaphore_info("job:1") }.to raise_error(ArgumentError, /lock's key.*lock_info/)
      expect { Locking.semaphore_info(nil) }.to raise_error(ArgumentError, /nil/)
      expect { Locking.semaphore_info("") }.to raise_error(ArgumentError, /""/)
    end
  end
end
