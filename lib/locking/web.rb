# frozen_string_literal: true

require "erb"
require "rack"
require "securerandom"
require "stringio"
require_relative "../locking"
require_relative "cli"

class Locking
  # The operator dashboard: a Rack app, no JavaScript framework, no asset
  # pipeline. Mount it behind your app's own authentication, as Sidekiq::Web:
  #
  #   # config/routes.rb
  #   authenticate :user, ->(user) { user.admin? } do
  #     mount Locking::Web => "/locking"
  #   end
  #
  # or run it alone: `locking web --port 9292`, or a config.ru with
  # `run Locking::Web.app` (Locking::Web.app adds a session cookie).
  #
  # Pages: GET / (the phase, the fleet, lock and semaphore counts and lock
  # TTLs per server, the gate, the backfill), GET /locks?q=GLOB (locks, and
  # semaphores with each live place, SCAN-paged). Actions, each a POST with
  # the session's CSRF token and a confirmation step: POST /locks/unlock
  # (key=..., or pattern=...: locks, and semaphores with all their places;
  # audited), POST /phase (advance, or set to=N) with the CLI's rules (the
  # same code runs). A GET never changes anything; Locking::Web.read_only =
  # true hides and refuses every action.
  class Web
    VIEWS = File.expand_path("web", __dir__)
    CSRF_KEY = "locking.csrf"
    # Locks shown per page of /locks (about: SCAN pages are read until this many matched)
    PAGE = 200
    # The most SCAN pages one page of /locks reads.
    SCAN_PAGES = 50
    # Keys whose TTLs the overview's chart samples, per server.
    TTL_SAMPLE = 1000
    # The most locks one "unlock every match" deletes.
    MAX_BULK_UNLOCK = 10_000
    TTL_BUCKETS = [["< 10 s", 10_000], ["< 1 min", 60_000], ["< 10 min", 600_000], ["< 1 h", 3_600_000],
                   ["< 1 day", 86_400_000], ["longer", Float::INFINITY]].freeze

    class << self
      # Hide and refuse every action (unlock, phase changes).
      attr_accessor :read_only

      # Seconds between refreshes of the overview (0: none).
      attr_accessor :refresh_seconds

      # Seconds the overview's lock counts (a walk of each server's keyspace, and the gate's walk) are
      # reused before they are computed again: one walk per interval for every viewer of this process.
      attr_accessor :counts_seconds

      # The counts, computed once per interval by the first viewer who needs them, the others waiting for
      # that walk rather than starting their own.
      def counts(identity)
        @counts_lock.synchronize do
          if @counts.nil? || @counts[:identity] != identity ||
             monotonic - @counts[:at] >= counts_seconds
            @counts = { identity: identity, at: monotonic, data: yield }
          end
          @counts.merge(age: monotonic - @counts[:at])
        end
      end

      # Forgets the cached counts (after an unlock or a phase move, and in tests).
      def forget_counts
        @counts_lock.synchronize { @counts = nil }
      end

      def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

      def call(env)
        new.call(env)
      end

      # The dashboard with its own session cookie, for running it alone
      # (in Rails, the app's session is used).
      def app(secret: ENV.fetch("LOCKING_WEB_SECRET") { SecureRandom.hex(32) })
        Rack::Builder.new do
          use Rack::Session::Cookie, key: "locking.session", secret: secret, same_site: :strict, httponly: true
          run Locking::Web
        end.to_app
      end
    end
    self.read_only = false
    self.refresh_seconds = 5
    self.counts_seconds = 30
    @counts_lock = Mutex.new

    def call(env)
      @request = Rack::Request.new(env)
      @session = env["rack.session"] or return text(500, "Locking::Web needs a session (use Locking::Web.app, or mount it in Rails)")
      route
    rescue Locking::Error => e
      page(503, "error", error: e)
    end

    private

    attr_reader :request

    def route
      case [request.request_method, request.path_info.chomp("/").then { |p| p.empty? ? "/" : p }]
      when %w[GET /] then page(200, "overview", overview)
      when %w[GET /locks] then page(200, "locks", locks)
      when %w[POST /locks/unlock] then action { unlock }
      when %w[POST /phase] then action { change_phase }
      else
        return text(405, "method not allowed: changes are POSTs, pages are GETs") if %w[/locks/unlock /phase].include?(request.path_info)

        text(404, "not found")
      end
    end

    # ------------------------------------------------------------ pages

    def overview
      config = Locking.configuration
      servers = []
      servers << [:source, config.source] if config.source
      servers << [:destination, config.destination] if config.destination
      walk = lambda do
        self.class.counts([servers, config.key_prefix]) do
          { servers: servers.map { |name, url| server_summary(name, url) },
            gate: config.destination && config.source ? gate_summary : nil }
        end
      end
      counts = walk.call
      # The gate closes while a backfill runs: a backfill that started or ended since the gate was
      # counted makes it count again, rather than show a verdict the lease has changed.
      if counts[:data][:gate] && counts[:data][:gate][:lease] != tool.control_get("backfill")
        self.class.forget_counts
        counts = walk.call
      end
      phase = phase_summary(config)
      counts[:data].merge(
        phase: phase, moves: moves_offered(phase), counts_age: counts[:age],
        fleet: config.destination ? tool.fleet : [],
        backfill: config.destination ? backfill_summary : nil,
        refresh: self.class.refresh_seconds
      )
    end

    # The phase moves the rules could allow from the stored phase: the next one (advance) and the adjacent
    # ones; the CLI's checks still decide.
    def moves_offered(phase)
      return { advance: false, set: [] } unless phase[:stored]

      current = Locking::Configuration.phase_index(phase[:stored])
      { advance: current < 3, set: [current - 1, current + 1].select { |target| target.between?(0, 3) } }
    end

    # The server whose locks the fleet's phase reads: the source in phases 0 and 1, the destination after.
    def server_of_phase
      config = Locking.configuration
      return :source unless config.destination
      return :destination unless config.source

      phase = (config.destination && tool.control_phase) || config.phase
      phase = :source if phase == :dynamic
      Locking::Configuration.phase_index(phase) >= 2 ? :destination : :source
    end

    def server_summary(name, url)
      stats = tool(name == :source ? :source : :destination).key_stats(name)
      { name: name, url: Locking.server_name(url), stats: stats, buckets: ttl_buckets(name) }
    end

    def ttl_buckets(name)
      counts = Hash.new(0)
      cursor = 0
      seen = 0
      loop do
        cursor, locks = tool.lock_page(name, cursor, "*", PAGE)
        locks.each do |(_, _, pttl)|
          label = pttl.negative? ? "no TTL" : TTL_BUCKETS.find { |(_, limit)| pttl < limit }.first
          counts[label] += 1
        end
        seen += locks.size
        break if cursor.zero? || seen >= TTL_SAMPLE
      end
      (TTL_BUCKETS.map(&:first) + ["no TTL"]).map { |label| [label, counts[label]] }
    end

    def phase_summary(config)
      stored = config.destination ? tool.control_phase : nil
      { configured: config.phase, stored: stored, dynamic: config.dynamic? }
    end

    # The CLI's gate, run here: the same rules and the same words.
    def gate_summary
      out = StringIO.new
      lease = tool.control_get("backfill") # the lease the verdict went by (#overview)
      status = CLI.new(%w[gate --no-progress], out: out, err: out).run
      { open: status.zero?, text: out.string, lease: lease }
    end

    def backfill_summary
      holder = tool.control_get("backfill")
      lease = holder && CLI::Lease.new(holder)
      saved = begin
        JSON.parse(tool.control_get(CLI::CURSOR) || "null")
      rescue JSON::ParserError
        nil
      end
      { running: lease&.name, why: lease&.why, dead: lease&.gone?, released: lease&.released?,
        totals: saved.is_a?(Hash) ? saved["totals"] : nil }
    end

    def locks
      glob = request.params["q"].to_s
      glob = "*" if glob.empty?
      config = Locking.configuration
      server = case request.params["server"]
               when "destination" then config.destination ? :destination : :source
               when "source" then config.source ? :source : :destination
               else server_of_phase
               end
      at = Integer(request.params["cursor"] || "0", 10)
      semaphores_at = Integer(request.params["scursor"] || "0", 10)
      cursor, found = screenful(:lock_page, server, at, glob)
      semaphores_cursor, semaphores = screenful(:semaphore_page, server, semaphores_at, glob)
      other = other_server(server)
      { glob: glob, server: server, cursor: cursor, other: other, at: at, semaphores_at: semaphores_at,
        semaphores_cursor: semaphores_cursor,
        locks: found.map { |(key, token, pttl)| { key: key, token: token, pttl: pttl, also: also_on(other, key, token) } },
        semaphores: semaphores.map { |(key, places)| { key: key, places: places, also: semaphore_on(other, key) } } }
    rescue ArgumentError
      text(400, "bad cursor")
    end

    # SCAN pages (of `page`: lock_page or semaphore_page) until a screenful matched, the scan ended, or enough
    # pages were read: [the next cursor, what matched].
    def screenful(page, server, cursor, glob)
      found = []
      SCAN_PAGES.times do
        cursor, entries = tool.public_send(page, server, cursor, glob, PAGE)
        found.concat(entries)
        break if cursor.zero? || found.size >= PAGE
      end
      [cursor, found]
    end

    def other_server(server)
      return nil unless Locking.configuration.destination && Locking.configuration.source

      server == :source ? :destination : :source
    end

    # Whether the other server holds the same lock (same token): "both".
    def also_on(other, key, token)
      return nil unless other

      ttl = tool(other == :source ? :source : :destination).ttl_ms(key, token)
      ttl.nil? ? nil : other
    end

    # Whether the other server holds the semaphore too: "both".
    def semaphore_on(other, key)
      return nil unless other

      semaphore_places(other, key) ? other : nil
    end

    # The live places ([[token, ms left], ...]) of the semaphore at `key` on a server; nil when it holds none there.
    def semaphore_places(server, key)
      glob = key.gsub(/[*?\[\]\\]/) { |char| "\\#{char}" } # the key alone: a plain one is looked up, not walked
      cursor = 0
      loop do
        cursor, found = tool.semaphore_page(server, cursor, glob, 1000)
        hit = found.find { |(name, _)| name == key }
        return hit.last if hit
        return nil if cursor.zero?
      end
    end

    # ------------------------------------------------------------ actions

    # Runs a change: refused when read-only or without the session's CSRF
    # token; without confirm=yes, shows what it would do and asks.
    def action
      return text(403, "read-only: Locking::Web.read_only is set") if self.class.read_only

      given = request.params["csrf"].to_s
      unless !given.empty? && Rack::Utils.secure_compare(given, csrf_token)
        return text(403, "refused: a missing or wrong CSRF token (reload the page and try again)")
      end

      yield
    end

    def unlock
      key = request.params["key"].to_s
      pattern = request.params["pattern"].to_s
      return text(400, "give key= or pattern=") if key.empty? && pattern.empty?

      unless request.params["confirm"] == "yes"
        matches = key.empty? ? matching(pattern) : [key]
        semaphores = key.empty? ? matching_semaphores(pattern) : semaphore_at(key)
        return page(200, "confirm", what: :unlock, key: key, pattern: pattern, matches: matches.first(50), count: matches.size,
                                    semaphores: semaphores.first(50), semaphore_count: semaphores.size)
      end

      keys = key.empty? ? (matching(pattern) + matching(pattern, :semaphore_page).map(&:first)).uniq : [key]
      unlocked = keys.map { |one| tool.unlock_key(one) }
      locks = unlocked.sum { |one| one[:locks] }
      semaphores = unlocked.sum { |one| one[:semaphores] }
      self.class.forget_counts
      audit(key, pattern, locks, semaphores)
      page(200, "done", message: "unlocked #{locks} lock key(s) and #{semaphores} semaphore key(s) (each with all its places) " \
                                 "#{key.empty? ? "matching #{pattern}" : key}",
                        back: "locks?q=#{Rack::Utils.escape(key.empty? ? pattern : key)}")
    end

    # The keys (without the prefix) of the locks matching `pattern` on every configured server, at most
    # MAX_BULK_UNLOCK; with page = :semaphore_page, the semaphores', as [key, places] (on the first server).
    def matching(pattern, page = :lock_page)
      found = []
      configured_servers.each do |server|
        cursor = 0
        loop do
          cursor, entries = tool.public_send(page, server, cursor, pattern, 1000)
          found.concat(page == :lock_page ? entries.map(&:first) : entries)
          break if cursor.zero? || found.size >= MAX_BULK_UNLOCK
        end
      end
      (page == :lock_page ? found.uniq : found.uniq(&:first)).first(MAX_BULK_UNLOCK)
    end

    def matching_semaphores(pattern) = matching(pattern, :semaphore_page)

    # [[key, places]] when `key` is a semaphore on a configured server (its places on the first), else [].
    def semaphore_at(key)
      configured_servers.each do |server|
        places = semaphore_places(server, key)
        return [[key, places]] if places
      end
      []
    end

    def configured_servers = %i[source destination].select { |server| Locking.configuration.public_send(server) }

    # Records an unlock in the audit log on the destination, as `locking unlock` does (none without a destination).
    def audit(key, pattern, locks, semaphores)
      return unless Locking.configuration.destination

      who = request.env["REMOTE_USER"].to_s.then { |user| user.empty? ? "dashboard" : user }
      tool.audit({ event: "unlock", outcome: "done", via: "dashboard", key: (json_text(key) unless key.empty?),
                   glob: (json_text(pattern) unless pattern.empty?), totals: { "deleted" => locks, "semaphores_deleted" => semaphores },
                   at: Time.now.utc.iso8601, by: "#{who} (#{request.ip})@#{Socket.gethostname}",
                   prefix: Locking.configuration.key_prefix.inspect })
    rescue Locking::Error, JSON::GeneratorError => e
      warn "locking: could not write the audit log: #{e.message}"
    end

    # A String as JSON can hold it (see CLI#json_text).
    def json_text(text)
      utf8 = text.to_s.dup.force_encoding(Encoding::UTF_8)
      utf8.valid_encoding? ? utf8 : text.inspect
    end

    def change_phase
      args = request.params["to"].to_s.empty? ? %w[advance] : ["set", request.params["to"].to_s]
      unless request.params["confirm"] == "yes"
        return page(200, "confirm", what: :phase, args: args, current: tool.control_phase)
      end

      out = StringIO.new
      status = CLI.new(["phase", *args], out: out, err: out).run
      self.class.forget_counts
      page(status.zero? ? 200 : 409, "done", message: out.string, back: "./", refused: !status.zero?)
    end

    # ------------------------------------------------------------ helpers

    # A client for the dashboard's reads: the configured servers and prefix,
    # a fixed phase (it never heartbeats), as the CLI's.
    def tool(phase = default_phase)
      @tools ||= {}
      @tools[phase] ||= begin
        config = Locking.configuration.dup
        config.phase = phase
        config.pool_size = 2
        Client.build(config)
      end
    end

    # Both servers: phase 1 reads both; after the migration (no source) the destination alone.
    def default_phase
      config = Locking.configuration
      return :dual if config.source && config.destination

      config.source ? :source : :destination
    end

    def csrf_token
      @session[CSRF_KEY] ||= SecureRandom.urlsafe_base64(32)
    end

    # Text fit for HTML: keys and tokens are arbitrary bytes.
    def h(value)
      text = value.to_s
      text = text.dup.force_encoding(Encoding::UTF_8)
      text = text.scrub { |bad| bad.bytes.map { |byte| format("\\x%02X", byte) }.join } unless text.valid_encoding?
      ERB::Util.html_escape(text)
    end

    def u(value) = Rack::Utils.escape(value.to_s)

    def seconds(ms)
      return "no TTL" if ms.negative?
      return format("%.1f s", ms / 1000.0) if ms < 10_000
      return "#{ms / 1000} s" if ms < 120_000
      return "#{ms / 60_000} min" if ms < 7_200_000

      "#{ms / 3_600_000} h #{(ms % 3_600_000) / 60_000} min"
    end

    def number(value) = value.to_i.to_s.reverse.scan(/\d{1,3}/).join(",").reverse

    def base = request.script_name.to_s

    def form(path, fields, label, css = "")
      hidden = fields.merge("csrf" => csrf_token).map do |name, value|
        %(<input type="hidden" name="#{h(name)}" value="#{h(value)}">)
      end.join
      %(<form method="post" action="#{h(base)}/#{path}" class="inline">#{hidden}<button class="#{css}">#{h(label)}</button></form>)
    end

    def page(status, view, locals = {})
      return locals if locals.is_a?(Array) # a text response from inside a page's data

      body = render("layout", locals.slice(:refresh)) { render(view, locals) }
      [status, { "content-type" => "text/html; charset=utf-8", "cache-control" => "no-store",
                 "x-frame-options" => "DENY", "content-security-policy" => "default-src 'self'; style-src 'unsafe-inline'" },
       [body]]
    end

    def render(view, locals = {}, &)
      template = ERB.new(File.read(File.join(VIEWS, "#{view}.erb")), trim_mode: "-")
      context = binding
      locals.each { |name, value| context.local_variable_set(name, value) }
      template.result(context)
    end

    def text(status, message)
      [status, { "content-type" => "text/plain; charset=utf-8" }, [message]]
    end
  end
end
