# frozen_string_literal: true

class Locking
  # Settings for Locking, set with Locking.configure. Every setter checks its
  # value and raises ArgumentError or TypeError showing the bad value.
  class Configuration
    PHASES = %i[source dual drain destination].freeze
    DEFAULT_SOURCE = "redis://127.0.0.1:6379/0"
    DEFAULT_PHASE = :source
    DEFAULT_KEY_PREFIX = "locking:"
    DEFAULT_TIMEOUT = 1.0
    DEFAULT_POOL_SIZE = 8
    DEFAULT_PHASE_CACHE_TTL = 1.0
    EVICTION_CHECKS = %i[off warn raise].freeze

    # Where lock keys live today (the jobs Redis): a URL (redis://, rediss://,
    # redis+sentinel://, unix://), a settings Hash in redis-rb's vocabulary
    # (host:, port:, ssl:, ssl_params:, sentinels: ...), a Redis object
    # (`Resque.redis`) whose connection options are read, or a ConnectionPool
    # of them (one connection's options, read once). Kept as the one URL
    # form the core reads (Locking::ServerSettings). Default:
    # LOCKING_SOURCE_URL, then REDIS_URL, then DEFAULT_SOURCE.
    attr_reader :source
    # Where lock keys move to (the locks Redis), in the same forms. Default: LOCKING_DESTINATION_URL, else none.
    attr_reader :destination
    # After a successful acquire or renew, wait until this many replicas of each server written have the
    # write (Redis WAIT), or raise Locking::NotReplicatedError. 0 (default) does not wait.
    # Default: LOCKING_MIN_REPLICAS_ACKED, else 0.
    attr_reader :min_replicas_acked
    # :source, :dual, :drain or :destination (0..3 are accepted), or :dynamic
    # to follow the phase an operator sets with `locking phase`.
    # Default: LOCKING_PHASE, else :source.
    attr_reader :phase
    # With phase :dynamic, seconds a phase read from Redis is used before reading it again. Default: 1.0.
    attr_reader :phase_cache_ttl
    # A server whose maxmemory-policy may evict locks: :warn once (default), :raise on connect, or :off.
    attr_reader :eviction_policy_check
    # Prepended to every lock key in Redis. Default: LOCKING_PREFIX, else "locking:".
    attr_reader :key_prefix
    # Seconds to connect, read and write before Locking::TimeoutError. Default: 1.0.
    attr_reader :timeout
    # Idle connections kept per server per process. Default: 8.
    attr_reader :pool_size
    # Options every Locking::UniqueJob job gets unless its unique_lock sets
    # its own: any of unique_lock's (ttl:, on_conflict:, ...). Default: none.
    attr_reader :unique_job_defaults

    def self.phase_index(phase)
      index = case phase
              when Integer then phase
              when Symbol, String then PHASES.index(phase.to_sym)
              end
      return index if index&.between?(0, PHASES.size - 1)

      raise ArgumentError,
            "unknown phase #{phase.inspect} (expected :source, :dual, :drain, :destination, 0..3 or :dynamic)"
    end

    def initialize(env = ENV)
      self.source = env["LOCKING_SOURCE_URL"] || env["REDIS_URL"] || DEFAULT_SOURCE
      self.destination = env["LOCKING_DESTINATION_URL"]
      self.phase = env["LOCKING_PHASE"] ? phase_from_env(env["LOCKING_PHASE"]) : DEFAULT_PHASE
      self.key_prefix = env["LOCKING_PREFIX"] || DEFAULT_KEY_PREFIX
      self.timeout = DEFAULT_TIMEOUT
      self.pool_size = DEFAULT_POOL_SIZE
      self.phase_cache_ttl = DEFAULT_PHASE_CACHE_TTL
      self.eviction_policy_check = :warn
      @unique_job_defaults = {}.freeze
      self.min_replicas_acked = env["LOCKING_MIN_REPLICAS_ACKED"] ? Integer(env["LOCKING_MIN_REPLICAS_ACKED"], 10) : 0
    end

    def min_replicas_acked=(count)
      unless count.is_a?(Integer) && count.between?(0, 64)
        raise ArgumentError, "min_replicas_acked must be an Integer from 0 to 64, got #{count.inspect}"
      end

      @min_replicas_acked = count
    end

    def eviction_policy_check=(check)
      @eviction_policy_check = Locking.choice!("eviction_policy_check", check, EVICTION_CHECKS)
    end

    def source=(server)
      @source = server_url(server, "source")
    end

    def destination=(server)
      @destination = server_url(server, "destination")
    end

    def phase=(phase)
      @phase = dynamic_name?(phase) ? :dynamic : PHASES.fetch(self.class.phase_index(phase))
    end

    def dynamic?
      phase == :dynamic
    end

    def phase_cache_ttl=(seconds)
      @phase_cache_ttl = self.class.seconds(seconds, "phase_cache_ttl")
    end

    # A positive, finite number of seconds, at most a day (Client::MAX_SECONDS).
    def self.seconds(value, name)
      max = Client::MAX_SECONDS
      unless value.is_a?(Numeric) && value.real? && value.to_f.finite? && value.positive? && value <= max
        raise ArgumentError, "#{name} must be a positive number of seconds, at most #{max}, got #{value.inspect}"
      end

      value.to_f
    end

    def key_prefix=(prefix)
      raise TypeError, "key_prefix must be a String, got #{prefix.inspect}" unless prefix.is_a?(String)

      @key_prefix = prefix.dup.freeze
    end

    def timeout=(seconds)
      @timeout = self.class.seconds(seconds, "timeout")
    end

    def pool_size=(size)
      unless size.is_a?(Integer) && size.between?(1, Client::MAX_POOL_SIZE)
        raise ArgumentError, "pool_size must be an Integer from 1 to #{Client::MAX_POOL_SIZE}, got #{size.inspect}"
      end

      @pool_size = size
    end

    # @param defaults [Hash] unique_lock options, e.g. { ttl: 1.hour, on_conflict: :log }
    def unique_job_defaults=(defaults)
      require_relative "unique_jobs/options"
      @unique_job_defaults = UniqueJobs::Options.check_defaults(defaults)
    end

    # Passwords in URLs are shown as "***".
    def inspect
      "#<#{self.class.name} source=#{Locking.redact(source).inspect} destination=#{Locking.redact(destination).inspect} " \
        "phase=#{phase.inspect} key_prefix=#{key_prefix.inspect} timeout=#{timeout} pool_size=#{pool_size} " \
        "min_replicas_acked=#{min_replicas_acked}>"
    end

    # Settings that need new connections when they change (the phase does not).
    def connection_settings
      [source, destination, key_prefix, timeout, pool_size, dynamic?, phase_cache_ttl, eviction_policy_check,
       min_replicas_acked]
    end

    private

    def server_url(server, name)
      url = ServerSettings.to_url(server, name)
      if ServerSettings.unverified?(url)
        warn "locking: #{name} #{Locking.redact(url)}: TLS certificate verification is off (verify_mode none): " \
             "the connection is encrypted but the server is not authenticated"
      end
      url
    end

    def phase_from_env(value)
      value.match?(/\A\d+\z/) ? Integer(value) : value
    end

    def dynamic_name?(phase)
      (phase.is_a?(Symbol) || phase.is_a?(String)) && phase.to_sym == :dynamic
    end
  end

  @configuration = Configuration.new
  @client = nil
  @client_lock = Mutex.new

  class << self
    # A Redis URL fit to print: its password replaced by "***" (the core's rule).
    def redact(url)
      url.is_a?(String) ? Client.redact(url) : url
    end

    # A server as messages name it: "rediss://host:6380/0", "redis+sentinel://s1:26379,.../mymaster/0".
    def server_name(url)
      url.is_a?(String) ? Client.server_name(url) : url
    end

    # The current settings (read-only use; change them with Locking.configure).
    attr_reader :configuration

    # Changes settings. The block gets a copy; nothing changes unless the whole
    # copy is valid (URLs parse, the phase has the servers it needs). A change
    # of phase alone keeps the open connections, so it is cheap at runtime.
    #
    #   Locking.configure do |c|
    #     c.source = "redis://jobs-redis:6379/0"
    #     c.destination = "redis://locks-redis:6379/0"
    #     c.phase = :dual
    #   end
    def configure
      @client_lock.synchronize do
        config = @configuration.dup
        yield config
        if @client && config.connection_settings == @configuration.connection_settings
          @client.phase = config.phase
        else
          @client = Client.build(config)
        end
        @configuration = config
      end
      self
    end

    # What the lock renewer (auto_renew) of this process has done: :held,
    # :renewed, :failed, :lost, :batches, :lag_p50_ms, :lag_p99_ms,
    # :lag_max_ms, :cpu_ms, :last_error. See Locking::Client#renewer_stats.
    def stats
      client.renewer_stats
    end

    # The process-wide client, built on first use.
    def client
      @client || @client_lock.synchronize { @client ||= Client.build(@configuration) }
    end

    # Forgets the settings and the client (tests, or re-reading ENV).
    def reset_configuration!
      @client_lock.synchronize do
        @configuration = Configuration.new
        @client = nil
      end
    end
  end
end
