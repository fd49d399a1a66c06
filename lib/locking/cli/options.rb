# frozen_string_literal: true

class Locking
  class CLI
    # The command line: the usage text, the options, and settings from --config FILE.
    USAGE = <<~TEXT
      usage: locking COMMAND [options]

      Commands:
        status              lock keys on each server (counted with SCAN), their TTLs, semaphore keys and
                            their live places, the phase, the fleet, the backfill's lease (its holder
                            alive or dead) and the audit log
        backfill            copy every source-only lock onto the destination (phases 0 and 1 only);
                            --break-lease: take over a lease whose holder cannot be told running (audited)
        gate                exit 0 when moving to phase 2 is safe, 1 (with the reasons) when not;
                            --reverse: the same for rolling back from phase 1 to 0
        phase               show the phase and, with dynamic phases, the fleet
        cleanup-source      after phase 3: delete the locks left on the source (strings under the prefix);
                            --dry-run counts them
        phase set PHASE     set the fleet's phase (dynamic phases): 0..3 or source|dual|drain|destination;
                            only to an adjacent phase, once every process has caught up (--init: the first one)
        phase advance       move the fleet to the next phase once every process has caught up;
                            --check: the verdict only; --wait-fleet SECONDS: then wait for the fleet to follow
        unlock KEY          delete one lock or semaphore (all its places; the key after the prefix) on
                            every server, whoever holds it; other data under the prefix stays;
        unlock --glob PAT   or every lock and semaphore whose key matches a Redis glob; --dry-run lists
                            them (audited)
        audit               the audit log on the destination, newest first (--limit N)
        web                 serve the dashboard (Locking::Web) on --bind:--port until Ctrl-C

      --json (status, gate, phase, backfill, unlock, audit) prints one JSON object instead of text.
      Exit status: 0 done (gate open), 1 refused (gate closed, unsafe move, --wait-fleet timed out), 2 usage,
      3 Redis or other error.

      Options:
    TEXT

    # The most keys per SCAN page --batch takes.
    MAX_BATCH = 100_000

    private

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
        o.on("--dry-run", "backfill: count what would be copied, write nothing; cleanup-source, unlock: " \
                          "list or count, delete nothing") { options[:dry_run] = true }
        o.on("--restart", "backfill: start over instead of resuming a saved position") { options[:restart] = true }
        o.on("--[no-]progress", "backfill: progress bar (default: on a terminal)") { |v| options[:progress] = v }
        o.on("--wait SECONDS", Float, "phase set/advance: wait this long for the fleet to catch up (default: 0)") do |v|
          options[:wait] = v
        end
        o.on("--wait-fleet SECONDS", Float, "phase set/advance: after the move, wait this long for every reporting " \
                                            "process to report the new phase; exit 1 if they do not") do |v|
          options[:wait_fleet] = v
        end
        o.on("--check", "phase set/advance: the verdict (exit 0 or 1, with the reasons) without the move") do
          options[:check] = true
        end
        o.on("--json", "status, gate, phase, backfill, unlock, audit: print one JSON object (see the README)") do
          options[:json] = true
        end
        o.on("--break-lease", "backfill: take over the lease of a backfill that cannot be told running (another " \
                              "host; audited), keeping its TTL") { options[:break_lease] = true }
        o.on("--glob PATTERN", "unlock: every lock and semaphore whose key (after the prefix) matches PATTERN (Redis glob)") do |v|
          options[:glob] = v
        end
        o.on("--limit N", Integer, "audit: the newest N entries (default: 20, at most #{Locking::Client::AUDIT_KEEP})") do |v|
          options[:limit] = v
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
      if options[:limit] && !options[:limit].between?(1, Locking::Client::AUDIT_KEEP)
        raise OptionParser::InvalidArgument, "--limit #{options[:limit]}: must be 1..#{Locking::Client::AUDIT_KEEP}"
      end
      if options[:wait_fleet] && !(options[:wait_fleet].finite? && options[:wait_fleet] >= 0)
        raise OptionParser::InvalidArgument, "--wait-fleet #{options[:wait_fleet]}: must be a number of seconds, 0 or more"
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
  end
end
