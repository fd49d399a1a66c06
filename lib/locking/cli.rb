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
    def control_phase
      options[:destination] ? client.control_phase : nil
    end

    def describe_phase(phase)
      "#{Configuration.phase_index(phase)} (#{phase})"
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end
end

require_relative "cli/options"
require_relative "cli/status"
require_relative "cli/backfill_progress"
require_relative "cli/backfill"
require_relative "cli/gate"
require_relative "cli/phase"
require_relative "cli/cleanup_source"
require_relative "cli/web"
