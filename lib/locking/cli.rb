# frozen_string_literal: true

require "optparse"
require "json"
require "time"
require "stringio"
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

    # The commands whose result --json prints as one JSON object.
    JSON_COMMANDS = %w[status gate phase backfill unlock audit].freeze

    def run
      command = parse
      return dispatch(command) unless options[:json] && command != "help"

      json_run(command)
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

    def dispatch(command)
      case command
      when "status" then status
      when "backfill" then backfill
      when "gate" then gate
      when "phase" then phase
      when "unlock" then unlock
      when "audit" then audit_command
      when "cleanup-source" then cleanup_source
      when "web" then web
      when "help" then usage(EXIT_OK)
      when nil then usage_error("no command given (status, backfill, gate, phase, unlock, audit, cleanup-source or web)")
      else usage_error("unknown command #{command.inspect}")
      end
    end

    # --json: the command's text goes nowhere (its lines stay in "output"); what it recorded with #result,
    # its exit status and any error are printed as one JSON object on one line.
    def json_run(command)
      unless JSON_COMMANDS.include?(command)
        return usage_error("--json works with #{JSON_COMMANDS.join(', ')}, not #{command.inspect}")
      end

      out = @out
      @out = StringIO.new
      @result = { "command" => command }
      status = begin
        dispatch(command)
      rescue Locking::Error, ArgumentError, TypeError => e
        @err.puts "locking: #{e.message} (#{e.class})"
        @result["error"] = "#{e.message} (#{e.class})"
        EXIT_ERROR
      end
      @result["exit"] = status
      @result["output"] = @out.string.lines.map { |line| json_text(line.chomp) }
      out.puts JSON.generate(@result)
      status
    ensure
      @out = out if out
    end

    # Records part of the command's result (printed by --json, ignored otherwise).
    def result(values)
      (@result ||= {}).merge!(values.transform_keys(&:to_s))
    end

    # A String as JSON can hold it: itself when it is valid UTF-8, else as Ruby shows it ("\xFF").
    def json_text(text)
      utf8 = text.to_s.dup.force_encoding(Encoding::UTF_8)
      utf8.valid_encoding? ? utf8 : text.inspect
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

    def control_phase
      options[:destination] ? client.control_phase : nil
    end

    def describe_phase(phase)
      "#{Configuration.phase_index(phase)} (#{phase})"
    end

    # The phase this command goes by, and how it knows: [phase, :dynamic] (the control key on the destination),
    # [phase, :static] (this configuration's phase: the fleet's own cannot be seen), or [nil, :unset] (dynamic,
    # and no phase is set).
    def phase_seen
      current = control_phase
      return [current, :dynamic] if current
      return [nil, :unset] if options[:phase] == :dynamic

      [options[:phase], :static]
    end

    # The phase a command goes by, in words that say whether it was seen or assumed.
    def phase_note
      phase, how = phase_seen
      case how
      when :dynamic then "#{describe_phase(phase)}, dynamic (read from the control key on the destination)"
      when :unset then "none set (phase :dynamic, and no phase on the destination)"
      else
        "#{describe_phase(phase)} ASSUMED: phases are static, so this is this configuration's phase (LOCKING_PHASE " \
        "or --config; default 0); this tool cannot see the phase the fleet's processes run in"
      end
    end

    def phase_json
      phase, how = phase_seen
      { "index" => phase && Configuration.phase_index(phase), "name" => phase&.to_s, "seen" => how.to_s }
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
require_relative "cli/lease"
require_relative "cli/unlock"
require_relative "cli/audit"
