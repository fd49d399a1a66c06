# frozen_string_literal: true

require "optparse"
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
        gate                exit 0 when moving to phase 2 is safe, 1 (with the reasons) when not
        phase               show the phase and, with dynamic phases, the fleet
        phase set PHASE     set the fleet's phase (dynamic phases): 0..3 or source|dual|drain|destination
        phase advance       move the fleet to the next phase once every process has caught up

      Options:
    TEXT

    EXIT_OK = 0
    EXIT_REFUSED = 1
    EXIT_USAGE = 2
    EXIT_ERROR = 3

    def initialize(argv, out: $stdout, err: $stderr, config: Locking.configuration)
      @argv = argv.dup
      @out = out
      @err = err
      @options = {
        source: config.source, destination: config.destination, prefix: config.key_prefix,
        timeout: [config.timeout, 5.0].max, batch: 1000, rate: nil, dry_run: false, restart: false,
        wait: 0.0, progress: nil
      }
    end

    def run
      command = parse
      case command
      when "status" then status
      when "backfill" then backfill
      when "gate" then gate
      when "phase" then phase
      when nil, "help" then usage(EXIT_OK)
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
        o.on("--source URL", "source Redis (default: LOCKING_SOURCE_URL, REDIS_URL)") { |v| options[:source] = v }
        o.on("--destination URL", "destination Redis (default: LOCKING_DESTINATION_URL)") do |v|
          options[:destination] = v
        end
        o.on("--prefix PREFIX", "lock key prefix (default: the configured key_prefix, \"locking:\")") do |v|
          options[:prefix] = v
        end
        o.on("--timeout SECONDS", Float, "per-command timeout (default: 5)") { |v| options[:timeout] = v }
        o.on("--batch N", Integer, "backfill: keys per SCAN page (default: 1000; a batch walks up to 16 pages)") { |v| options[:batch] = v }
        o.on("--rate N", Integer, "backfill: at most N keys per second (each: 2 reads on the source)") do |v|
          options[:rate] = v
        end
        o.on("--dry-run", "backfill: count what would be copied, write nothing") { options[:dry_run] = true }
        o.on("--restart", "backfill: start over instead of resuming a saved position") { options[:restart] = true }
        o.on("--[no-]progress", "backfill: progress bar (default: on a terminal)") { |v| options[:progress] = v }
        o.on("--wait SECONDS", Float, "phase advance: wait this long for the fleet (default: 0)") do |v|
          options[:wait] = v
        end
        o.on("-h", "--help", "this help") { options[:help] = true }
      end
    end

    def parse
      @args = parser.parse(@argv)
      return "help" if options[:help]

      @args.shift
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
      servers = [[:source, options[:source]]]
      servers << [:destination, options[:destination]] if options[:destination]
      servers.each do |name, url|
        stats = client(phase: name == :source ? :source : :destination).key_stats(name)
        ttl = if stats[:keys] == stats[:without_ttl]
                ""
              else
                "TTL max #{seconds(stats[:max_ttl_ms])}, p99 #{seconds(stats[:p99_ttl_ms])}, "
              end
        @out.puts format("%-12s %-32s %12s lock keys  (%s%s without TTL)",
                         name, url, number(stats[:keys]), ttl, number(stats[:without_ttl]))
      end
      show_phase if options[:destination]
      EXIT_OK
    end

    # ------------------------------------------------------------ backfill

    CURSOR = "backfill-cursor"

    def backfill
      need_destination!
      phase = control_phase
      if %i[drain destination].include?(phase)
        raise ArgumentError, "the fleet is in phase #{phase}: backfill runs only in phases 0 and 1"
      end

      tool = client(phase: :dual)
      cursor = options[:restart] ? 0 : tool.control_get(CURSOR).to_i
      cursor = 0 if options[:dry_run]
      @out.puts "backfill#{' (dry run)' if options[:dry_run]}: #{options[:source]} -> #{options[:destination]}, " \
                "keys under #{options[:prefix].inspect}, #{options[:batch]} per page, #{pages_per_batch} page(s) per batch" \
                "#{", at most #{options[:rate]} keys/s" if options[:rate]}"
      @out.puts "resuming from a saved position (cursor #{cursor}); --restart starts over" if cursor.positive?
      totals = Hash.new(0)
      progress = Progress.new(@out, options[:progress].nil? ? @out.tty? : options[:progress])
      started = monotonic
      loop do
        report = tool.backfill_batch(cursor, count: options[:batch], pages: pages_per_batch, dry_run: options[:dry_run])
        report.each { |k, v| totals[k] += v unless k == :cursor }
        cursor = report[:cursor]
        tool.control_set(CURSOR, cursor) unless options[:dry_run] || cursor.zero?
        progress.update(totals[:scanned], cursor, monotonic - started)
        break if cursor.zero?

        throttle(totals[:scanned], started)
      end
      tool.control_set(CURSOR, nil) unless options[:dry_run]
      progress.finish
      elapsed = monotonic - started
      verb = options[:dry_run] ? "would copy" : "copied"
      @out.puts "done: #{number(totals[:scanned])} scanned, #{number(totals[:copied])} #{verb}, " \
                "#{number(totals[:already_there])} already there, #{number(totals[:conflicts])} conflicts, " \
                "#{number(totals[:undone])} undone, #{number(totals[:absent])} skipped (gone, or not a string), " \
                "#{number(totals[:failed])} failed " \
                "in #{format('%.1f', elapsed)}s (#{number(totals[:scanned] / [elapsed, 1e-9].max)} keys/s)"
      totals[:failed].zero? ? EXIT_OK : EXIT_ERROR
    end

    # Pages per backfill batch: as many as keep both servers busy, but under
    # --rate only what a tenth of a second allows, so the cap stays smooth
    # (the pause comes between batches) and the saved position stays recent.
    def pages_per_batch
      return Locking::Client::BACKFILL_PAGES unless options[:rate]

      (options[:rate] / 10 / options[:batch]).clamp(1, Locking::Client::BACKFILL_PAGES)
    end

    def throttle(scanned, started)
      return unless options[:rate]

      ahead = (scanned.to_f / options[:rate]) - (monotonic - started)
      sleep(ahead) if ahead.positive?
    end

    # Progress on a terminal: a bar with keys, keys/s and ETA; elsewhere a
    # plain line every few seconds. SCAN gives no total: the fraction done is
    # read off the cursor, whose bits reversed walk the hash table in order.
    class Progress
      def initialize(out, bar)
        @out = out
        @bar = bar
        @last = -Float::INFINITY
      end

      def update(keys, cursor, elapsed)
        fraction = cursor.zero? ? 1.0 : reverse_bits(cursor) / 2.0**64
        rate = keys / [elapsed, 1e-9].max
        eta = fraction.positive? ? elapsed * (1 - fraction) / fraction : 0
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
        end
      end

      def finish
        @out.puts if @bar
      end

      private

      def reverse_bits(value)
        value.to_s(2).rjust(64, "0").reverse.to_i(2)
      end

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
      count, scanned, examples = client(phase: :dual).source_only(examples: 5)
      dynamic = dynamic_fleet?
      fleet = dynamic ? client.fleet : []
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
      reasons = []
      reasons << "#{number(count)} lock(s) live on the source only: run `locking backfill`, or wait for their TTLs" if count.positive?
      reasons << "#{in_phase_zero} process(es) still in phase 0" if in_phase_zero.positive?
      if reasons.empty?
        @out.puts "OPEN: moving to phase 2 is safe"
        EXIT_OK
      else
        @out.puts "CLOSED:"
        reasons.each { |r| @out.puts "  - #{r}" }
        EXIT_REFUSED
      end
    end

    # ------------------------------------------------------------ phase

    def phase
      need_destination!
      case @args.shift
      when nil then show_phase
      when "set"
        target = @args.shift or return usage_error("phase set needs a phase: 0..3 or source|dual|drain|destination")
        set_phase(parse_phase(target))
      when "advance" then advance
      else usage_error("unknown phase command (expected: phase, phase set PHASE, phase advance)")
      end
    end

    def parse_phase(text)
      Configuration::PHASES.fetch(Configuration.phase_index(text.match?(/\A\d+\z/) ? Integer(text) : text))
    end

    def control_phase
      options[:destination] ? client.control_phase : :source
    end

    def dynamic_fleet?
      options[:destination] && (client.control_get("phase") || !client.fleet.empty?)
    end

    def show_phase
      current = client.control_phase
      fleet = client.fleet
      index = Configuration.phase_index(current)
      @out.puts format("%-12s %d (%s)%s", "phase", index, current,
                       dynamic_fleet? ? " (dynamic: the control key on the destination)" : " (no dynamic phase set)")
      @out.puts format("%-12s %d process(es) reporting", "fleet", fleet.size)
      fleet.group_by { |m| m[:phase] }.sort_by { |p, _| Configuration.phase_index(p) }.each do |p, members|
        @out.puts "  phase #{Configuration.phase_index(p)} (#{p}): #{members.size}: " \
                  "#{members.first(5).map { |m| m[:process] }.join(', ')}#{members.size > 5 ? ', ...' : ''}"
      end
      EXIT_OK
    end

    def source_only_for(current, target)
      return nil unless current == :dual && target == :drain

      client(phase: :dual).source_only(examples: 0).first
    end

    def set_phase(target)
      current = client.control_phase
      current, reasons = client.transition_reasons(target, source_only: source_only_for(current, target))
      return refuse(current, target, reasons) unless reasons.empty?

      stored = client.set_control_phase(current, target)
      if stored != target
        @err.puts "locking: the phase changed meanwhile (now #{stored}); nothing was set"
        return EXIT_REFUSED
      end
      @out.puts "phase #{Configuration.phase_index(current)} (#{current}) -> " \
                "#{Configuration.phase_index(target)} (#{target}): processes pick it up within their phase_cache_ttl"
      EXIT_OK
    end

    def advance
      current = client.control_phase
      index = Configuration.phase_index(current)
      return refuse(current, current, ["phase 3 (destination) is the last phase"]) if index == 3

      target = Configuration::PHASES[index + 1]
      source_only = source_only_for(current, target)
      deadline = monotonic + options[:wait]
      loop do
        current_now, reasons = client.transition_reasons(target, source_only: source_only)
        return refuse(current_now, target, ["the phase changed meanwhile (now #{current_now})"]) if current_now != current
        return set_phase(target) if reasons.empty?
        return refuse(current, target, reasons) if monotonic >= deadline || source_only.to_i.positive?

        sleep 0.2
      end
    end

    def refuse(current, target, reasons)
      @out.puts "refused: phase #{Configuration.phase_index(current)} (#{current}) -> " \
                "#{Configuration.phase_index(target)} (#{target}):"
      reasons.each { |r| @out.puts "  - #{r}" }
      EXIT_REFUSED
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end
end
