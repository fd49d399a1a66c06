# frozen_string_literal: true

require "uri"

class Locking
  # Turns every form a server can be given in into the one text form the core
  # reads: a URL (see ext/locking_core/src/url.rs, and "Production Redis" in
  # the README).
  #
  #   "rediss://:pw@host:6380/0"                        # a URL, as is
  #   { host: "h", port: 6380, ssl: true, password: "pw",
  #     ssl_params: { ca_file: "/etc/ca.pem" } }          # redis-rb's vocabulary
  #   { name: "mymaster", sentinels: [{ host: "s1", port: 26379 }], role: :master }
  #   { cluster: ["redis://10.0.0.1:7000", "10.0.0.2:7000"], password: "pw" }  # one seed node is enough
  #   Resque.redis / Sidekiq's Redis / any Redis object  # its connection options
  #   ConnectionPool.new { Redis.new(...) }              # one connection's options, read once
  #
  # A Hash and a URL become the same thing: settings in config/locking.yml,
  # in Locking.configure and in LOCKING_SOURCE_URL are interchangeable.
  module ServerSettings
    KEYS = %i[url scheme host port path db username password ssl ssl_params name sentinels role
              sentinel_username sentinel_password cluster].freeze
    SSL_KEYS = %i[ca_file ca_path cert key verify_mode verify_hostname].freeze
    # redis-rb options that say nothing about where the server is (timeouts are Locking's own).
    IGNORED = %i[timeout connect_timeout read_timeout write_timeout driver id tcp_keepalive reconnect_attempts
                 reconnect_delay reconnect_delay_max inherit_socket logger _parsed protocol].freeze

    module_function

    # @return [String, nil] the URL for `value`; ArgumentError/TypeError say what is wrong.
    def to_url(value, name)
      case value
      when nil then nil
      when String then value.dup.freeze
      when Hash then from_hash(symbolize(value), name).freeze
      else
        options = redis_options(value)
        raise TypeError, "#{name} must be a Redis URL String, a settings Hash or a Redis object, got #{value.inspect}" unless options

        from_hash(options.slice(*KEYS).compact, name).freeze
      end
    end

    # Whether the URL turns certificate checks off (verify_mode none).
    def unverified?(url)
      url.is_a?(String) && url.match?(/[?&]verify_mode=(none|0)(&|\z)/i)
    end

    # The connection options of a redis-rb Redis (4.x, or 5.x over
    # redis-client), unwrapping Redis::Namespace; nil for anything else.
    def redis_options(object)
      # A ConnectionPool (Sidekiq's, an app's): one connection's options,
      # read now, once; the pool is not kept.
      return object.with { |connection| redis_options(connection) } if pool?(object)

      object = object.redis while object.respond_to?(:redis) && !object.respond_to?(:_client)
      return nil unless object.respond_to?(:_client)

      client = object._client
      if client.respond_to?(:options) # redis-rb 4
        options = client.options.dup
        options.delete(:url) # parsed into host, port, path ... already
        options[:name] ||= options[:host] if options[:sentinels]
        options[:ssl] = true if options[:scheme] == "rediss"
        options
      elsif client.respond_to?(:config) # redis-rb 5: a RedisClient
        config_options(client.config)
      end
    end

    def pool?(object)
      object.respond_to?(:with) && object.respond_to?(:checkout) && !object.respond_to?(:_client)
    end

    def config_options(config)
      options = {}
      %i[host port path db username password ssl ssl_params name sentinels].each do |key|
        options[key] = config.public_send(key) if config.respond_to?(key)
      end
      options[:password] = config.password if config.respond_to?(:password)
      options[:sentinels] = options[:sentinels]&.map { |s| s.respond_to?(:host) ? { host: s.host, port: s.port } : s }
      options
    end

    def symbolize(hash)
      hash.to_h { |key, value| [key.to_sym, value.is_a?(Hash) ? symbolize(value) : value] }
    end

    def from_hash(hash, name)
      unknown = hash.keys - KEYS - IGNORED
      unless unknown.empty?
        raise ArgumentError, "#{name}: unknown setting #{unknown.map(&:inspect).join(', ')} (known: #{KEYS.join(', ')})"
      end

      if hash[:cluster]
        cluster_url(hash, name)
      elsif hash[:sentinels]
        sentinel_url(hash, name)
      else
        server_url(hash, name)
      end
    end

    # `cluster:` the seed nodes, as URLs, "host:port" or { host:, port: };
    # credentials and TLS come from the Hash, or from the first seed URL.
    def cluster_url(hash, name)
      clashing = %i[url host port path sentinels name].select { |key| hash[key] }
      raise ArgumentError, "#{name}: give cluster or #{clashing.join('/')}, not both" unless clashing.empty?

      seeds = Array(hash[:cluster])
      raise ArgumentError, "#{name}: cluster needs at least one seed node (\"redis://host:7000\")" if seeds.empty?

      hash = hash.dup
      hosts = seeds.map { |seed| cluster_host(seed, hash, name) }
      scheme = ssl?(hash) ? "rediss+cluster" : "redis+cluster"
      with_query("#{scheme}://#{hosts.join(',')}", common_query(hash, name))
    end

    def cluster_host(seed, hash, name)
      return host_port(seed, 6379, "cluster node", name) unless seed.is_a?(String)

      uri = seed.include?("://") ? URI.parse(seed) : URI.parse("redis://#{seed}")
      hash[:ssl] = true if uri.scheme == "rediss"
      hash[:username] ||= URI.decode_www_form_component(uri.user) if uri.user && !uri.user.empty?
      hash[:password] ||= URI.decode_www_form_component(uri.password) if uri.password
      host_port({ host: uri.hostname, port: uri.port }, 6379, "cluster node", name)
    rescue URI::InvalidURIError => e
      raise ArgumentError, "#{name}: a bad cluster node #{seed.inspect}: #{e.message}"
    end

    # "host:port" of a { host:, port: } Hash (a sentinel's, a cluster node's).
    def host_port(entry, default_port, what, name)
      raise TypeError, "#{name}: a #{what} must be a URL String or a Hash, got #{entry.inspect}" unless entry.is_a?(Hash)

      entry = symbolize(entry)
      host = entry[:host].to_s
      raise ArgumentError, "#{name}: a #{what} without a host: #{entry.inspect}" if host.empty?

      host = "[#{host}]" if host.include?(":")
      "#{host}:#{Integer(entry[:port] || default_port)}"
    end

    def server_url(hash, name)
      if hash[:url]
        where = %i[host port path].select { |key| hash[key] }
        raise ArgumentError, "#{name}: give url or #{where.join('/')}, not both" unless where.empty?

        base = hash[:url].to_s
      elsif hash[:path]
        base = "unix://#{hash[:path]}"
      else
        host = hash.fetch(:host, "127.0.0.1").to_s
        host = "[#{host}]" if host.include?(":")
        scheme = ssl?(hash) ? "rediss" : "redis"
        base = "#{scheme}://#{host}:#{Integer(hash.fetch(:port, 6379))}"
      end
      with_query(base, common_query(hash, name))
    end

    def sentinel_url(hash, name)
      master = hash[:name]
      raise ArgumentError, "#{name}: sentinels need the master's name (name: \"mymaster\")" if master.to_s.empty?
      raise ArgumentError, "#{name}: give sentinels or url, not both" if hash[:url]

      role = hash.fetch(:role, :master).to_s
      unless role == "master"
        raise ArgumentError, "#{name}: role #{role.inspect}: locks are only ever read and written on the master"
      end

      hosts = Array(hash[:sentinels]).map { |sentinel| sentinel_host(sentinel, name) }
      raise ArgumentError, "#{name}: sentinels is empty" if hosts.empty?

      scheme = ssl?(hash) ? "rediss+sentinel" : "redis+sentinel"
      query = common_query(hash, name)
      query << ["sentinel_username", hash[:sentinel_username]] if hash[:sentinel_username]
      query << ["sentinel_password", hash[:sentinel_password]] if hash[:sentinel_password]
      with_query("#{scheme}://#{hosts.join(',')}/#{escape(master.to_s)}", query)
    end

    def sentinel_host(sentinel, name)
      return host_port(sentinel, 26_379, "sentinel", name) unless sentinel.is_a?(String)

      sentinel.sub(%r{\A[a-z+]+://}, "").sub(%r{/.*\z}, "").sub(/\A.*@/, "")
    end

    def ssl?(hash)
      hash[:ssl] == true || hash[:scheme].to_s == "rediss"
    end

    # db, credentials and TLS options, as query pairs the core reads.
    def common_query(hash, name)
      query = []
      query << ["db", Integer(hash[:db])] if hash[:db]
      # An empty one (an unset ENV in config/locking.yml's ERB) is none, not AUTH "".
      query << ["username", hash[:username]] unless hash[:username].to_s.empty?
      query << ["password", hash[:password]] unless hash[:password].to_s.empty?
      query << %w[ssl true] if hash[:url] && hash[:ssl] == true
      query.concat(ssl_query(hash[:ssl_params], name)) if hash[:ssl_params]
      query
    end

    def ssl_query(params, name)
      raise TypeError, "#{name}: ssl_params must be a Hash, got #{params.inspect}" unless params.is_a?(Hash)

      params = symbolize(params)
      unknown = params.keys - SSL_KEYS
      unless unknown.empty?
        raise ArgumentError, "#{name}: unknown ssl_params #{unknown.map(&:inspect).join(', ')} (known: #{SSL_KEYS.join(', ')})"
      end

      params.filter_map do |key, value|
        next if value.nil?

        case key
        when :verify_mode then ["verify_mode", verify_mode(value, name)]
        when :verify_hostname then ["verify_hostname", value ? "true" : "false"]
        else [key.to_s, value.to_s]
        end
      end
    end

    # OpenSSL::SSL::VERIFY_NONE is 0, VERIFY_PEER 1 (with or without the fail flags).
    def verify_mode(value, name)
      case value
      when 0, :none, "none" then "none"
      when Integer, :peer, "peer" then "peer"
      else raise ArgumentError, "#{name}: verify_mode must be OpenSSL::SSL::VERIFY_NONE or VERIFY_PEER, got #{value.inspect}"
      end
    end

    def with_query(base, pairs)
      return base if pairs.empty?

      separator = base.include?("?") ? "&" : "?"
      base + separator + pairs.map { |key, value| "#{key}=#{escape(value.to_s)}" }.join("&")
    end

    def escape(text)
      text.b.gsub(/[^A-Za-z0-9\-._~]/n) { |char| format("%%%02X", char.ord) }
    end
  end
end
