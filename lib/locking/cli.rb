# frozen_string_literal: true

require "optparse"
require "json"
require "time"
require_relative "../locking"

class Locking
  # The operator command behind exe/locking and the locking:* rake tasks.
  # Exit status: 0 done (gate open), 1 refused (gate closed, unsafe phase
  # move), 2 usage error, 3 Redis or other error.
  class CLI
    USAGE = <<~TEXT
      usage: locking COMMAND [options]

      Commands:
        status              lock keys on each server (counted with SCAN), their TTLs, the phase, the fleet
        backfill            copy every source-only lock onto the destination (phases 0 and 1 only)
        gate                exit 0 when moving to phase 2 is safe, 1 (with the reasons) when not;
                            --reverse: the same for rolling back from phase 1 to 0
        phase               show the phase and, with dynamic phases, the fleet
        cleanup-source      after phase 3: delete the locks left on the source (strings under the prefix);
                            --dry-run counts them
        phase set PHASE     set the fleet's phase (dynamic phases): 0..3 or source|dual|drain|destination;
                            only to an adjacent phase, once every process has caught up (--init: the first one)
        phase advance       move the fleet to the next phase once every process has caught up
        web                 serve the dashboard (Locking::Web) on --bind:--port until Ctrl-C

      Options:
    TEXT

    # The most keys per SCAN page --batch takes.
    MAX_BATCH = 100_000

    EXIT_OK = 0
    EXIT_REFUSED = 1
    EXIT_USAGE = 2
    EXIT_ERROR = 3

    def initialize(argv, out: $stdout, err: $stderr, config: Locking.configuration)
      # A binary --prefix (not valid UTF-8) is passed on as bytes: OptionParser's
      # matching would fail on it as text.
      @argv = argv.map { |arg| arg.valid_encoding? ? arg : arg.b }
      @out = out
      @err = err
      @options = {
        source: config.source, destination: config.destination, prefix: config.key_prefix,
        timeout: [config.timeout, 5.0].max, batch: 200, rate: nil, dry_run: false, restart: false,
        wait: 0.0, progress: nil, phase: config.phase, init: false
      }
    end

    def run
      command = parse
      case command
      when "status" then status
      when "backfill" then backfill
      when "gate" then gate
      when "phase" then phase
      when "cleanup-source" then cleanup_source
      when "web" then web
      when "help" then usage(EXIT_OK)
      when nil then usage_error("no command given (status, backfill, gate, phase, cleanup-source or web)")
      else usage_error("unknown command #{command.inspect}")
      end
    rescue OptionParser::ParseError => e
      usage_error(e.message)
    rescue Interrupt
      @err.puts "\ninterrupted"
      130
    rescue Locking::Error, ArgumentError, TypeError => e
      @err.puts "locking: #{e.message} (#{e.class})"
      EXIT_ERROR
    end

    private

    attr_reader :options

    def parser
      @parser ||= OptionParser.new do |o|
        o.banner = USAGE
        o.on("--config FILE", "settings from a YAML file like config/locking.yml (its --environment section); " \
                              "--source/--destination/--prefix still win") { |v| options[:config] = v }
        o.on("--environment NAME", "the section of --config (default: RAILS_ENV, RACK_ENV, else production)") do |v|
          options[:environment] = v
        end
        o.on("--source URL", "source Redis: redis://, rediss://...?ca_file=..., redis+sentinel://s1:26379,s2/master, " \
                             "redis+cluster://n1:7000,n2:7000 (default: LOCKING_SOURCE_URL, REDIS_URL)") do |v|
          explicit(:source, v)
        end
        o.on("--destination URL", "destination Redis, the same forms (default: LOCKING_DESTINATION_URL)") do |v|
          explicit(:destination, v)
        end
        o.on("--allow-empty", "gate, phase: accept a prefix under which no lock and no process is found") do
          options[:allow_empty] = true
        end
        o.on("--prefix PREFIX", "lock key prefix (default: the configured key_prefix: LOCKING_PREFIX, else \"locking:\")") do |v|
          explicit(:prefix, v)
        end
        o.on("--timeout SECONDS", Float, "per-command timeout (default: 5)") { |v| options[:timeout] = v }
        o.on("--batch N", Integer, "backfill: keys per SCAN page and per read transaction on the source, " \
                                   "1..#{MAX_BATCH} (default: 200; a batch walks up to 16 pages)") do |v|
          options[:batch] = v
        end
        o.on("--rate N", Integer, "backfill: at most N keys walked per second, copied or not, N > 0 (each: 2 reads on the source)") do |v|
          options[:rate] = v
        end
        o.on("--reverse", "gate: the reverse gate, before rolling back from phase 1 to 0") { options[:reverse] = true }
        o.on("--pages N", Integer, "backfill: SCAN pages per batch, 1..#{Locking::Client::MAX_BACKFILL_PAGES} " \
                                   "(default: #{Locking::Client::BACKFILL_PAGES}; 1 under --rate)") do |v|
          options[:pages] = v
        end
        o.on("--dry-run", "backfill: count what would be copied, write nothing") { options[:dry_run] = true }
        o.on("--restart", "backfill: start over instead of resuming a saved position") { options[:restart] = true }
        o.on("--[no-]progress", "backfill: progress bar (default: on a terminal)") { |v| options[:progress] = v }
        o.on("--wait SECONDS", Float, "phase set/advance: wait this long for the fleet to catch up (default: 0)") do |v|
          options[:wait] = v
        end
        o.on("--init", "phase set: set the phase when none is set (the first set, or after the destination " \
                       "lost its data)") { options[:init] = true }
        o.on("--port N", Integer, "web: the port (default: 9292)") { |v| options[:port] = v }
        o.on("--bind ADDRESS", "web: the address to listen on (default: 127.0.0.1)") { |v| options[:bind] = v }
        o.on("--read-only", "web: hide and refuse every action") { options[:read_only] = true }
        o.on("-h", "--help", "this help") { options[:help] = true }
      end
    end

    def explicit(name, value)
      (@explicit ||= []) << name
      options[name] = value
    end

    def parse
      @args = parser.parse(@argv)
      return "help" if options[:help]

      apply_config_file(options[:config]) if options[:config]

      unless options[:batch].between?(1, MAX_BATCH)
        raise OptionParser::InvalidArgument, "--batch #{options[:batch]}: must be 1..#{MAX_BATCH}"
      end
      if options[:pages] && !options[:pages].between?(1, Locking::Client::MAX_BACKFILL_PAGES)
        raise OptionParser::InvalidArgument, "--pages #{options[:pages]}: must be 1..#{Locking::Client::MAX_BACKFILL_PAGES}"
      end
      if options[:rate] && !options[:rate].positive?
        raise OptionParser::InvalidArgument, "--rate #{options[:rate]}: must be a positive number of keys per second"
      end

      @args.shift
    end

    # Settings from a YAML file in config/locking.yml's form (ERB, one section
    # per environment, or flat), through Locking::Configuration's checks;
    # options given on the command line win.
    def apply_config_file(path)
      require "yaml"
      require "erb"
      text = ERB.new(File.read(path)).result
      data = YAML.safe_load(text, aliases: true) || {}
      environment = options[:environment] || ENV["RAILS_ENV"] || ENV["RACK_ENV"] || "production"
      data = section_of(path, data, environment)
      unless data.is_a?(Hash)
        raise ArgumentError, "#{path}: expected settings (source, destination, key_prefix ...) or an #{environment}: section"
      end

      config = Configuration.new(ENV)
      data.each do |name, value|
        next if value.nil?

        config.public_send(:"#{name}=", name.to_s == "phase" ? value.to_s : value)
      rescue NoMethodError
        raise ArgumentError, "#{path}: unknown setting #{name.inspect}"
      end
      explicit = @explicit || []
      options[:source] = config.source unless explicit.include?(:source)
      options[:destination] = config.destination unless explicit.include?(:destination)
      options[:prefix] = config.key_prefix unless explicit.include?(:prefix)
      options[:phase] = config.phase
    rescue Errno::ENOENT, Psych::SyntaxError => e
      raise ArgumentError, "--config: #{e.message}"
    end

    # The environment's section of a config file, or the file itself when it is flat (its keys are settings).
    def section_of(path, data, environment)
      return data[environment] if data.is_a?(Hash) && data.key?(environment)
      return data unless data.is_a?(Hash) && !data.empty?
      return data if data.keys.any? { |name| Configuration.method_defined?(:"#{name}=") }

      raise ArgumentError, "#{path}: no #{environment}: section (it has #{data.keys.join(', ')}); " \
                           "choose one with --environment NAME"
    end

    def usage(status)
      @out.puts parser.help
      status
    end

    def usage_error(message)
      @err.puts "locking: #{message}"
      @err.puts "run `locking --help` for usage"
      EXIT_USAGE
    end

    # A client for the tool itself: a fixed phase (it never heartbeats, so it
    # never counts as a member of the fleet), and generous timeouts.
    def client(phase: :dual)
      # After the migration the settings name no source: the tool then works on the destination alone.
      phase = :destination unless options[:source]
      @clients ||= {}
      @clients[phase] ||= begin
        config = Configuration.new({})
        config.source = options[:source]
        config.destination = options[:destination]
        config.key_prefix = options[:prefix]
        config.timeout = options[:timeout]
        config.pool_size = 2
        config.phase = phase
        Client.build(config)
      end
    end

    def need_destination!
      return if options[:destination]

      raise ArgumentError, "no destination: pass --destination URL or set LOCKING_DESTINATION_URL"
    end

    def number(value)
      value.to_i.to_s.reverse.scan(/\d{1,3}/).join(",").reverse
    end

    def seconds(ms)
      format("%.1fs", ms / 1000.0)
    end

    # ------------------------------------------------------------ status

    def status
      servers = []
      servers << [:source, options[:source]] if options[:source]
      servers << [:destination, options[:destination]] if options[:destination]
      raise ArgumentError, "no server: pass --source URL and/or --destination URL (or set LOCKING_SOURCE_URL)" if servers.empty?

      @out.puts format("%-12s %s", "source", "none configured (the migration is finished)") unless options[:source]
      servers.each do |name, url|
        stats = client(phase: name == :source ? :source : :destination).key_stats(name)
        ttl = if stats[:keys] == stats[:without_ttl]
                ""
              else
                "TTL max #{seconds(stats[:max_ttl_ms])}, p99 #{seconds(stats[:p99_ttl_ms])}, "
              end
        @out.puts format("%-12s %-32s %12s lock keys  (%s%s without TTL)",
                         name, Locking.server_name(url), number(stats[:keys]), ttl, number(stats[:without_ttl]))
      end
      return EXIT_OK unless options[:destination]

      show_phase
      show_backfill_and_audit
      EXIT_OK
    end

    # A saved backfill position (JSON), or nil when there is none or it does not parse.
    def parse_saved(text)
      text && JSON.parse(text)
    rescue JSON::ParserError
      nil
    end

    def show_backfill_and_audit
      holder = client.control_get("backfill")
      saved = parse_saved(client.control_get(CURSOR))
      line = if holder then "running (#{holder})"
             elsif saved.is_a?(Hash) then "not running; a saved position to resume from"
             else
               "not running"
             end
      if saved.is_a?(Hash) && saved["totals"]
        line += ", #{number(saved['totals']['scanned'])} keys scanned so far, #{number(saved['totals']['copied'])} copied"
      end
      @out.puts format("%-12s %s", "backfill", line)
      entries = client.audit_log(5)
      @out.puts format("%-12s %s", "audit", entries.empty? ? "nothing recorded" : "the last #{entries.size}, newest first:")
      entries.each do |entry|
        what = case entry["event"]
               when "phase" then "phase #{entry['from'] || 'none'} -> #{entry['to']}"
               when "backfill"
                 "backfill #{entry['outcome']}: #{number(entry.dig('totals', 'scanned'))} scanned, " \
                 "#{number(entry.dig('totals', 'copied'))} copied, #{number(entry.dig('totals', 'failed'))} failed"
               else
                 "#{entry['event']} #{entry['outcome']}: " \
                 "#{(entry['totals'] || {}).map { |k, v| "#{number(v)} #{k}" }.join(', ')}"
               end
        @out.puts "  #{entry['at']} #{entry['by']}: #{what}"
      end
    end

    # ------------------------------------------------------------ backfill

    # Walks of a cluster source that start over because its slots are not settled. While the same reason stays
    # (a slot left migrating by an interrupted reshard), each restart waits longer, and after MAX restarts the
    # backfill stops and says what to run.
    class Restarts
      MAX = 12
      FIRST_PAUSE = 0.05
      LONGEST_PAUSE = 1.0

      def initialize(sleeper: ->(seconds) { sleep(seconds) })
        @sleeper = sleeper
        @reason = nil
        @count = 0
      end

      # Notes one batch's report; returns the message to stop with, or nil.
      def note(report)
        unless report[:restarted].positive?
          @reason = nil
          @count = 0
          return nil
        end
        @count = report[:restart_reason] == @reason ? @count + 1 : 1
        @reason = report[:restart_reason]
        return stuck_message if @count >= MAX

        @sleeper.call([FIRST_PAUSE * (2**(@count - 1)), LONGEST_PAUSE].min)
        nil
      end

      private

      def stuck_message
        "the source cluster stayed unsettled through #{MAX} restarts of the walk (#{@reason}). If a reshard was " \
          "interrupted, a slot is left migrating: run `redis-cli --cluster fix HOST:PORT` on one of its nodes, " \
          "then resume the backfill"
      end
    end

    CURSOR = "backfill-cursor"

    # Seconds the backfill's lease lasts unless renewed (each batch renews it).
    BACKFILL_LEASE_TTL = 30

    def backfill
      need_destination!
      return EXIT_REFUSED unless backfill_allowed?

      holder = "#{Socket.gethostname}:#{Process.pid}"
      unless options[:dry_run]
        taken = keep_backfill_lease(holder)
        if taken != holder
          @err.puts "locking: refused: another backfill is running (#{taken}); one at a time"
          return EXIT_REFUSED
        end
      end
      begin
        run_backfill(holder)
      ensure
        client.backfill_lease(holder, ttl: nil) unless options[:dry_run]
      end
    end

    # Backfill runs in phases 0 and 1 only: dynamic phases are read from the
    # control key (after the lease is taken, so a move into phase 2 either
    # sees the lease or is seen here), static ones from the configuration.
    def backfill_allowed?
      refusal = phase_refusal
      return true unless refusal

      @err.puts "locking: refused: #{refusal}"
      false
    end

    # Why backfill may not run in the fleet's phase now, or nil.
    def phase_refusal
      phase = control_phase || (options[:phase] unless options[:phase] == :dynamic)
      refusal = phase && Locking::Client.backfill_refusal(Configuration::PHASES.index(phase))
      refusal && "the fleet is in phase #{describe_phase(phase)}: #{refusal}"
    end

    # Takes or keeps the backfill's lease; on success it is believed held
    # until the send time plus its TTL, less the drift allowed (#lease_left).
    def keep_backfill_lease(holder)
      sent = monotonic
      taken = client.backfill_lease(holder, ttl: BACKFILL_LEASE_TTL)
      @lease_until = sent + Locking::Client.valid_for(BACKFILL_LEASE_TTL * 1000) if taken == holder
      taken
    end

    # Seconds the lease is still believed held. Once it ran out it is lost
    # for good: the lease script would hand an expired lease back, but the
    # fleet may have moved into phase 2 meanwhile.
    def lease_left
      left = (@lease_until || 0) - monotonic
      return left if left.positive?

      raise Locking::Error, "the backfill lost its lease (stalled for over #{BACKFILL_LEASE_TTL}s?); run it again"
    end

    LEASE_LAPSED = "the backfill lost its lease meanwhile (stalled?), so it sends nothing more; run it again"

    # Whether a lease was taken and has run out since: a read that timed out
    # because the process was stopped fails first, but the lease is the news.
    def lease_lapsed? = @lease_until && @lease_until <= monotonic

    def run_backfill(holder)
      return EXIT_REFUSED unless backfill_allowed?

      tool = client(phase: :dual)
      source_id = "#{tool.server_run_id(:source)} #{Locking.redact(options[:source])}"
      saved = options[:dry_run] || options[:restart] ? nil : saved_position(tool, source_id)
      cursor = saved ? saved["cursor"] : 0
      totals = Hash.new(0).merge(((saved && saved["totals"]) || {}).transform_keys(&:to_sym))
      @out.puts "backfill#{' (dry run)' if options[:dry_run]}: #{Locking.redact(options[:source])} -> " \
                "#{Locking.redact(options[:destination])}, " \
                "keys under #{options[:prefix].inspect}, #{page_size} per page, #{pages_per_batch} page(s) per batch" \
                "#{", at most #{options[:rate]} keys/s" if options[:rate]}"
      if saved
        @out.puts "resuming from a saved position (cursor #{cursor}, #{number(totals[:scanned])} keys scanned " \
                  "before); --restart starts over"
      end
      bar = options[:progress].nil? ? @out.tty? : options[:progress]
      progress = Progress.new(@out, bar, from: cursor, fraction: ->(at) { tool.walk_fraction(:source, at) })
      started = monotonic
      scanned_before = totals[:scanned]
      first_errors = []
      restarts = Restarts.new
      begin
        loop do
          unless options[:dry_run]
            lease_left
            raise Locking::Error, "the backfill lost its lease; run it again" unless keep_backfill_lease(holder) == holder

            # The phase again, each batch: a lease held throughout kept the fleet out of phase 2.
            refusal = phase_refusal
            raise Locking::Error, "the fleet moved on: #{refusal}" if refusal
          end

          report = tool.backfill_batch(cursor, count: page_size, pages: pages_per_batch, dry_run: options[:dry_run],
                                               lease_for: (lease_left unless options[:dry_run]))
          first_errors.concat(report[:errors]) if first_errors.size < 5
          report.each { |k, v| totals[k] += v unless %i[cursor errors restarted restart_reason].include?(k) }
          cursor = report[:cursor]
          stuck = restarts.note(report)
          if report[:restarted].positive?
            @out.puts "the source cluster is not settled (#{report[:restart_reason]}): keys may have moved past " \
                      "the walk, so it starts over from the first master (copies are idempotent)"
          end
          raise Locking::Error, stuck if stuck

          unless options[:dry_run] || cursor.zero?
            tool.control_set(CURSOR, JSON.generate("cursor" => cursor, "source" => source_id, "totals" => totals))
          end
          progress.update(totals[:scanned] - scanned_before, cursor, monotonic - started)
          break if cursor.zero?

          throttle(totals[:scanned] - scanned_before, started)
        end
      rescue Interrupt, Locking::Error => e
        progress.finish
        stopped = e.is_a?(Interrupt) ? "interrupted" : "stopped: #{e.message} (#{e.class})"
        stopped += "; #{LEASE_LAPSED}" if !options[:dry_run] && lease_lapsed? && !e.message.include?("lease")
        report_backfill(totals, monotonic - started, stopped, first_errors)
        unless options[:dry_run] || cursor.zero?
          @out.puts "the position is saved (cursor #{cursor}); resume with: " \
                    "locking backfill --source #{Locking.redact(options[:source])} " \
                    "--destination #{Locking.redact(options[:destination])} --prefix #{options[:prefix].inspect}"
        end
        audit(event: "backfill", outcome: stopped, totals: totals) unless options[:dry_run]
        return e.is_a?(Interrupt) ? 130 : EXIT_ERROR
      end
      tool.control_set(CURSOR, nil) unless options[:dry_run]
      progress.finish
      report_backfill(totals, monotonic - started, "done", first_errors)
      audit(event: "backfill", outcome: "done", totals: totals) unless options[:dry_run]
      return EXIT_ERROR unless totals[:failed].zero?

      options[:dry_run] ? EXIT_OK : verify_backfill
    end

    # "Done" is checked, not trusted: the gate's own count of source-only
    # locks, right after. In phase 1 it must be 0 (new locks go to both
    # servers); in phase 0 processes keep writing the source only.
    def verify_backfill
      count, = client(phase: :dual).source_only(examples: 0)
      phase = control_phase || (options[:phase] unless options[:phase] == :dynamic)
      if count.zero?
        @out.puts "verified: no lock lives on the source only"
        EXIT_OK
      elsif phase == :dual
        @out.puts "verified: #{number(count)} lock(s) still live on the source only (copies undone as their " \
                  "locks changed, or a position skipped): run backfill again"
        EXIT_REFUSED
      else
        @out.puts "verified: #{number(count)} lock(s) live on the source only, expected in phase 0 (processes " \
                  "there write the source only); run backfill again once the fleet is in phase 1"
        EXIT_OK
      end
    end

    # The saved position, if it was saved for this source (its run_id and
    # address) and this prefix (the key lives under it). Another source's,
    # or one saved before the source restarted, is not resumed.
    def saved_position(tool, source_id)
      text = tool.control_get(CURSOR) or return nil
      saved = parse_saved(text)
      if saved.is_a?(Hash) && saved["source"] == source_id && saved["cursor"].is_a?(Integer)
        return saved
      end

      @out.puts "a saved position exists, but for another source (or from before this source restarted): " \
                "starting over"
      nil
    end

    def report_backfill(totals, elapsed, outcome, errors = [])
      verb = options[:dry_run] ? "would copy" : "copied"
      @out.puts "#{outcome}: #{number(totals[:scanned])} scanned, #{number(totals[:copied])} #{verb}, " \
                "#{number(totals[:already_there])} already there, #{number(totals[:conflicts])} conflicts, " \
                "#{number(totals[:undone])} undone, #{number(totals[:absent])} skipped (gone, expiring, or not a string), " \
                "#{number(totals[:failed])} failed " \
                "(totals over every run since the start; this run: #{format('%.1f', elapsed)}s)"
      unless errors.empty?
        @out.puts "the first failures:"
        errors.first(5).each { |error| @out.puts "  - #{error}" }
      end
      @out.flush
    end

    # Who runs the command, for the audit log: LOCKING_OPERATOR, else the login name, else the uid's name
    # ($USER is unset under cron, systemd and in many containers).
    def operator_name
      require "etc"
      ENV["LOCKING_OPERATOR"].to_s.strip.then { |name| return name unless name.empty? }
      ENV["USER"].to_s.strip.then { |name| return name unless name.empty? }
      Etc.getlogin || Etc.getpwuid(Process.uid)&.name || "uid #{Process.uid}"
    rescue ArgumentError
      "uid #{Process.uid}"
    end

    # Records an operator's action in the audit log on the destination.
    def audit(entry)
      # The prefix as Ruby shows it: a binary prefix is no JSON text.
      client.audit(entry.merge(at: Time.now.utc.iso8601, by: "#{operator_name}@#{Socket.gethostname}",
                               prefix: options[:prefix].inspect))
    rescue Locking::Error, JSON::GeneratorError => e
      @err.puts "locking: could not write the audit log: #{e.message}"
    end

    # Pages per backfill batch: as many as keep both servers busy, but under
    # --rate only what a tenth of a second allows, so the cap stays smooth
    # (the pause comes between batches) and the saved position stays recent.
    # SCAN pages per backfill batch: as many as keep both servers busy
    # (--pages overrides), but one under --rate, so the load is spread evenly
    # rather than a burst at full speed and then a pause.
    def pages_per_batch
      return options[:pages] if options[:pages]

      options[:rate] ? 1 : Locking::Client::BACKFILL_PAGES
    end

    # Keys per SCAN page (and per read transaction on the source): --batch,
    # but under --rate at most what 5 ms of the rate allows, so that the
    # source never serves one batch for long.
    def page_size
      return options[:batch] unless options[:rate] && !options[:pages]

      [options[:batch], [options[:rate] / 200, 10].max].min
    end

    def throttle(scanned, started)
      return unless options[:rate]

      ahead = (scanned.to_f / options[:rate]) - (monotonic - started)
      sleep(ahead) if ahead.positive?
    end

    # Progress on a terminal: a bar with keys, keys/s and ETA; elsewhere a
    # plain line every few seconds. SCAN gives no total: the fraction done is
    # read off the cursor (`fraction`, the core's Client#walk_fraction), whose
    # bits reversed walk the hash table in order, master by master on a cluster.
    class Progress
      # `from`: the cursor this run starts at (a resume starts part way).
      def initialize(out, bar, fraction:, from: 0)
        @out = out
        @bar = bar
        @last = -Float::INFINITY
        @fraction = fraction
        @start_fraction = from.zero? ? 0.0 : fraction.(from)
      end

      def update(keys, cursor, elapsed)
        fraction = @fraction.(cursor)
        @start_fraction = 0.0 if fraction < @start_fraction # a walk started over
        rate = keys / [elapsed, 1e-9].max
        # The ETA follows this run's own pace: a resumed run starts part way.
        done = fraction - @start_fraction
        eta = done.positive? ? elapsed * (1 - fraction) / done : 0
        if @bar
          return if elapsed - @last < 0.1 && fraction < 1.0

          @last = elapsed
          filled = (fraction * 30).round
          @out.print format("\r[%-30s] %3d%%  %s keys  %s keys/s  ETA %s ",
                            "=" * filled, fraction * 100, with_commas(keys), with_commas(rate), clock(eta))
          @out.flush
        elsif elapsed - @last >= 2 || fraction >= 1.0
          @last = elapsed
          @out.puts format("backfill: %d%% %s keys, %s keys/s, ETA %s",
                           fraction * 100, with_commas(keys), with_commas(rate), clock(eta))
          @out.flush # a line at a time into a log file or a pipe, not a block at the end
        end
      end

      def finish
        @out.puts if @bar
      end

      private

      def with_commas(value)
        value.to_i.to_s.reverse.scan(/\d{1,3}/).join(",").reverse
      end

      def clock(seconds)
        seconds = seconds.round
        format("%d:%02d", seconds / 60, seconds % 60)
      end
    end

    # ------------------------------------------------------------ gate

    def gate
      need_destination!
      unless options[:source]
        @out.puts "gate: no source is configured (the migration is finished): there is no source-only lock to " \
                  "count, and nothing to roll back to"
        return EXIT_OK
      end
      return reverse_gate if options[:reverse]

      count, scanned, examples = client(phase: :dual).source_only(examples: 5)
      fleet = client.fleet
      dynamic = !control_phase.nil? || !fleet.empty?
      in_phase_zero = fleet.count { |m| m[:phase] == :source }
      @out.puts "gate into phase 2 (drain):"
      @out.puts "  source-only locks: #{number(count)} (of #{number(scanned)} on the source)"
      examples.each { |key| @out.puts "    e.g. #{key.inspect}" }
      if dynamic
        @out.puts "  processes still in phase 0: #{in_phase_zero} (of #{fleet.size} reporting)"
      else
        @out.puts "  processes still in phase 0: not visible without dynamic phases; make sure every " \
                  "process has been deployed with phase :dual"
      end
      reasons = protocol_reasons(count, in_phase_zero)
      reasons << empty_prefix_reason(scanned, fleet) if reasons.empty? && empty_prefix?(scanned, fleet)
      verdict(reasons, "moving to phase 2 is safe")
    end

    # A gate that finds nothing proves nothing when it looked in the wrong
    # place: a prefix under which neither server holds a lock and no process
    # reports is far more likely a typo than an idle fleet.
    def empty_prefix?(source_keys, fleet)
      return false if options[:allow_empty] || source_keys.nil? || source_keys.positive? || !fleet.empty?

      client(phase: :destination).key_stats(:destination)[:keys].zero?
    end

    def empty_prefix_reason(_source_keys, _fleet)
      "no lock under #{options[:prefix].inspect} on either server, and no process reports: is the prefix right " \
        "(--prefix, LOCKING_PREFIX, the app's key_prefix)? If the fleet really holds no lock, pass --allow-empty"
    end

    # Before a rollback from phase 1 to 0: no lock on the destination only.
    def reverse_gate
      count, scanned, examples = client(phase: :dual).destination_only(examples: 5)
      @out.puts "reverse gate into phase 0 (source), for a rollback from phase 1:"
      @out.puts "  destination-only locks: #{number(count)} (of #{number(scanned)} on the destination)"
      examples.each { |key| @out.puts "    e.g. #{key.inspect}" }
      verdict(Locking::Client.reverse_gate_reasons(count), "rolling back to phase 0 is safe")
    end

    # The core's gate, in the core's words (the same as `phase advance`).
    def protocol_reasons(source_only, in_phase_zero)
      Locking::Client.gate_reasons(in_phase_zero, source_only)
    end

    def verdict(reasons, safe)
      if reasons.empty?
        @out.puts "OPEN: #{safe}"
        EXIT_OK
      else
        @out.puts "CLOSED:"
        reasons.each { |r| @out.puts "  - #{r}" }
        EXIT_REFUSED
      end
    end

    # ------------------------------------------------------------ cleanup-source

    # After phase 3 the source is read by nobody, but locks without a TTL,
    # and those not yet expired, stay there. This deletes them, strings under
    # the prefix only, once nothing can read them: the fleet in phase 3
    # (dynamic: every process reports phase 3 alone; static: this
    # configuration says :destination).
    def cleanup_source
      need_destination!
      reasons = cleanup_refusals
      unless reasons.empty?
        @out.puts "refused: cleanup-source runs only once the fleet is in phase 3 with no phase-2 process left:"
        reasons.each { |r| @out.puts "  - #{r}" }
        return EXIT_REFUSED
      end

      tool = client(phase: :dual)
      cursor = 0
      found = deleted = 0
      loop do
        cursor, page_found, page_deleted = tool.cleanup_source_page(cursor, count: options[:batch],
                                                                            dry_run: options[:dry_run])
        found += page_found
        deleted += page_deleted
        break if cursor.zero?
      end
      if options[:dry_run]
        @out.puts "dry run: #{number(found)} lock key(s) under #{options[:prefix].inspect} on the source would be deleted"
      else
        @out.puts "deleted #{number(deleted)} lock key(s) under #{options[:prefix].inspect} from the source " \
                  "(#{number(found)} found); other keys are untouched"
        audit(event: "cleanup-source", outcome: "done", totals: { "deleted" => deleted })
      end
      EXIT_OK
    rescue Interrupt
      @out.puts "interrupted: #{number(deleted)} deleted so far; running it again goes on (it starts a new walk)"
      130
    end

    def cleanup_refusals
      current = client.control_phase
      fleet = client.fleet
      if current
        reasons = []
        reasons << "the fleet is in phase #{describe_phase(current)}" unless current == :destination
        behind = fleet.reject { |m| m[:phase] == :destination && m[:highest] == :destination }
        unless behind.empty?
          reasons << "#{behind.size} process(es) not in phase 3 alone: #{behind.first(5).map { |m| m[:process] }.join(', ')}"
        end
        reasons
      elsif options[:phase] == :destination
        []
      else
        ["no dynamic phase is set, and this configuration's phase is #{options[:phase].inspect}, not :destination " \
         "(run it from the app, or with LOCKING_PHASE=destination, once every process is deployed with phase 3)"]
      end
    end

    # ------------------------------------------------------------ phase

    def phase
      need_destination!
      case @args.shift
      when nil then show_phase
      when "set"
        text = @args.shift or return usage_error("phase set needs a phase: #{PHASE_CHOICES}")
        target = parse_phase(text) or return usage_error("unknown phase #{text.inspect} (expected #{PHASE_CHOICES})")
        set_phase(target)
      when "advance" then advance
      else usage_error("unknown phase command (expected: phase, phase set PHASE, phase advance)")
      end
    end

    PHASE_CHOICES = "0..3 or source|dual|drain|destination"

    # @return [Symbol, nil] nil for anything but 0..3 or a phase's name
    def parse_phase(text)
      index = text.match?(/\A[0-3]\z/) ? Integer(text) : Configuration::PHASES.index(text.to_sym)
      index && Configuration::PHASES[index]
    end

    def control_phase
      options[:destination] ? client.control_phase : nil
    end

    def describe_phase(phase)
      "#{Configuration.phase_index(phase)} (#{phase})"
    end

    def show_phase
      current = client.control_phase
      fleet = client.fleet
      line = if current
               "#{describe_phase(current)} (dynamic: the control key on the destination)"
             elsif options[:phase] == :dynamic
               "none set: processes with phase :dynamic refuse to work until `locking phase set PHASE --init`"
             else
               "#{describe_phase(options[:phase])} (static: this configuration's phase; no dynamic phase is set)"
             end
      @out.puts format("%-12s %s", "phase", line)
      show_control_master
      @out.puts format("%-12s %d process(es) reporting", "fleet", fleet.size)
      fleet.group_by { |m| [m[:phase], m[:highest]] }.sort_by { |(low, high), _| [low, high].map { |p| Configuration.phase_index(p) } }
           .each do |(low, high), members|
        phases = if low == high
                   "phase #{describe_phase(low)}"
                 else
                   "phases #{Configuration.phase_index(low)}..#{Configuration.phase_index(high)} (moving)"
                 end
        @out.puts "  #{phases}: #{members.size}: " \
                  "#{members.first(5).map { |m| describe_member(m) }.join(', ')}#{members.size > 5 ? ', ...' : ''}"
      end
      EXIT_OK
    end

    # On a cluster destination, one master holds every control key (the phase, the fleet's heartbeats): while it is
    # down, processes go on in their cached phase until their own heartbeat lapses, then refuse.
    def show_control_master
      stats = client.cluster_stats(:destination) or return

      @out.puts format("%-12s %s", "control",
                       "the control keys ({locking-control}) are on master #{stats[:control_master] || 'unknown'}: " \
                       "while it is down, the phase cannot move, and processes stop once their heartbeat lapses")
    end

    def describe_member(member)
      return member[:process] unless member[:age_ms]

      "#{member[:process]} (seen #{seconds(member[:age_ms])} ago)"
    end

    # The count the gate (1 -> 2) or the reverse gate (1 -> 0) needs, and
    # how many lock keys were scanned for it: [count, scanned], or nil.
    def one_sided_for(current, target)
      return nil unless current == :dual

      case target
      when :drain then client(phase: :dual).source_only(examples: 0).first(2)
      when :source then client(phase: :dual).destination_only(examples: 0).first(2)
      end
    end

    def advance
      current = client.control_phase
      return refuse_unset(:source) if current.nil?

      index = Configuration.phase_index(current)
      if index == 3
        @out.puts "refused: the fleet is in phase #{describe_phase(current)}, the last phase; nothing to advance"
        return EXIT_REFUSED
      end
      set_phase(Configuration::PHASES[index + 1], expected: current)
    end

    # Moves the fleet to `target` once it is safe, waiting up to --wait for
    # the fleet to catch up (a lock count that blocks the move does not wait:
    # it needs a backfill, or time for TTLs).
    def set_phase(target, expected: :any)
      current = client.control_phase
      return initialize_phase(target) if current.nil?
      if target == :drain && backfill_running
        return refuse(current, target, ["a backfill is running (#{backfill_running}): phase 2 waits for it"])
      end
      if expected != :any && current != expected
        return refuse(current, target, ["the phase changed meanwhile (now #{current})"])
      end

      one_sided, scanned = one_sided_for(current, target)
      if target == :drain && empty_prefix?(scanned, client.fleet)
        return refuse(current, target, [empty_prefix_reason(scanned, [])])
      end

      deadline = monotonic + options[:wait]
      waited = nil
      loop do
        now, reasons = client.transition_reasons(target, source_only: one_sided)
        return refuse(now || current, target, ["the phase changed meanwhile (now #{now.inspect})"]) if now != current
        break if reasons.empty?
        return refuse(current, target, reasons) if monotonic >= deadline || one_sided.to_i.positive?

        if waited.nil? || monotonic - waited >= 2
          waited = monotonic
          @out.puts "waiting (#{format('%.0f', deadline - monotonic)}s left): #{reasons.join('; ')}"
          @out.flush
        end
        sleep 0.2
      end
      recount_refusal(current, target, one_sided) || store_phase(current, target)
    end

    # The one-sided count again, now that every process has caught up: a process still in phase 0 (or 2) while
    # the first count ran could have written a lock on one side since, and none can from here on.
    def recount_refusal(current, target, counted)
      return nil if counted.nil?

      again, = one_sided_for(current, target)
      now, reasons = client.transition_reasons(target, source_only: again)
      return refuse(now || current, target, ["the phase changed meanwhile (now #{now.inspect})"]) if now != current

      reasons.empty? ? nil : refuse(current, target, reasons)
    end

    def initialize_phase(target)
      return refuse_unset(target) unless options[:init]

      store_phase(nil, target)
    end

    def refuse_unset(target)
      @out.puts "refused: no phase is set on the destination (never set, or lost with the destination's data)."
      @out.puts "  Processes with phase :dynamic refuse to work until one is. To set the first phase, or the"
      @out.puts "  phase the fleet was in before the destination lost it: locking phase set #{Configuration.phase_index(target)} --init"
      EXIT_REFUSED
    end

    def backfill_running
      client.control_get("backfill")
    end

    def store_phase(current, target)
      stored = client.set_control_phase(current, target)
      if stored != target
        @err.puts "locking: the phase changed meanwhile (now #{stored.inspect}); nothing was set"
        return EXIT_REFUSED
      end
      from = current ? describe_phase(current) : "none"
      @out.puts "phase #{from} -> #{describe_phase(target)}: processes pick it up within their phase_cache_ttl"
      audit(event: "phase", from: current, to: target)
      EXIT_OK
    rescue Locking::PhaseError => e
      refuse(current, target, [e.message])
    end

    def refuse(current, target, reasons)
      @out.puts "refused: phase #{describe_phase(current)} -> #{describe_phase(target)}:"
      reasons.each { |r| @out.puts "  - #{r}" }
      EXIT_REFUSED
    end

    # ------------------------------------------------------------ web

    # Serves Locking::Web with this command's settings (WEBrick, from Ruby's
    # gems); LOCKING_WEB_SECRET keeps sessions across restarts.
    def web
      require "webrick"
      require "rack/handler/webrick"
      require_relative "web"
      settings = options
      Locking.configure do |c|
        c.source = settings[:source]
        c.destination = settings[:destination]
        c.key_prefix = settings[:prefix]
        c.timeout = settings[:timeout]
        c.phase = settings[:destination] ? :dual : :source
      end
      Web.read_only = true if options[:read_only]
      port = options[:port] || 9292
      host = options[:bind] || "127.0.0.1"
      @out.puts "locking web: http://#{host}:#{port}/#{' (read-only)' if options[:read_only]} (Ctrl-C stops)"
      logger = WEBrick::Log.new(nil, WEBrick::BasicLog::WARN)
      Rack::Handler::WEBrick.run(Web.app, Host: host, Port: port, AccessLog: [], Logger: logger)
      EXIT_OK
    rescue LoadError => e
      @err.puts "locking web needs rack and webrick (#{e.message})"
      EXIT_ERROR
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end
end
