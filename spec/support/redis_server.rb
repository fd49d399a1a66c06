# frozen_string_literal: true

require "socket"
require "uri"
require "tmpdir"
require "fileutils"
require "redis"

Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)

# A real redis-server process on a free loopback port, for tests. Never a mock.
class RedisServer
  BINARY = ENV.fetch("REDIS_SERVER", "redis-server")

  # Whether the server binary was built with TLS (Redis 6.2 from PyPI and Valkey 8.1 from PyPI are not):
  # asked once, by starting it with a TLS port and a certificate that does not exist.
  def self.tls?
    return @tls unless @tls.nil?

    out = IO.popen([BINARY, "--port", "0", "--tls-port", free_port.to_s, "--tls-cert-file", "/nonexistent",
                    "--save", ""], err: %i[child out], &:read)
    @tls = !out.match?(/Failed finding TLS support|Bad directive|not supported/i)
  end

  attr_reader :port, :pid, :dir

  # `settings`: more redis-server arguments, e.g. ["--appendonly", "yes"]
  # for a server whose data survives #restart.
  # `max_port`: a highest port to use (a Redis 6.2 cluster node also binds port + 10000).
  # `password`: the server requires it (requirepass), and `url` and `redis` give it.
  def self.start(name = "redis", settings: [], max_port: nil, password: nil)
    new(name, settings: settings, max_port: max_port, password: password).tap(&:start)
  end

  def initialize(name, settings: [], max_port: nil, password: nil)
    @name = name
    @settings = settings
    @max_port = max_port
    @password = password
    @dir = Dir.mktmpdir("locking-#{name}-")
  end

  def url(db = 0)
    "redis://#{":#{@password}@" if @password}127.0.0.1:#{port}/#{db}"
  end

  def start
    5.times do
      @port = free_port
      @port = free_port while @max_port && @port > @max_port
      spawn_server
      return self if wait_until_ready

      stop
    end
    raise "redis-server did not start; see #{File.join(dir, 'log')}"
  end

  # A redis-rb client for looking at what the server holds.
  def redis
    @redis ||= Redis.new(url: url, timeout: 5)
  end

  def stop
    return unless pid

    thaw
    Process.kill(:KILL, pid)
    Process.wait(pid)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  ensure
    @pid = nil
    @redis&.close
    @redis = nil
  end

  # Kills the server (SIGKILL) and starts it again on the same port: its
  # data is gone, unless it was started with persistence in `settings`.
  def restart
    old_port = port
    stop
    @port = old_port
    spawn_server
    raise "redis-server did not restart" unless wait_until_ready
  end

  # Loads many commands fast (see RedisServer.bulk_load).
  def bulk_load(commands, db: 0)
    self.class.bulk_load(url(db), commands)
  end

  # Loads many commands into the Redis at `url`: RESP straight down one
  # socket, replies skipped, then a PING to know they have all run.
  # `commands` yields arrays of strings.
  def self.bulk_load(url, commands)
    uri = URI(url)
    db = uri.path.delete("/")
    socket = TCPSocket.new(uri.host, uri.port || 6379)
    encode = ->(args) { "*#{args.size}\r\n" + args.map { |a| "$#{a.bytesize}\r\n#{a}\r\n" }.join }
    socket.write(encode.(["SELECT", db])) unless db.empty? || db == "0"
    reader = Thread.new do
      tail = +""
      until tail.end_with?("+PONG\r\n")
        tail << socket.readpartial(1 << 20)
        tail = tail[-16..] if tail.size > 16
      end
    end
    commands.each_slice(10_000) { |slice| socket.write(slice.map(&encode).join) }
    socket.write(encode.(["PING"]))
    reader.join
  ensure
    socket&.close
  end

  # A loopback port nothing listens on (just now).
  def self.free_port
    server = TCPServer.new("127.0.0.1", 0)
    server.addr[1]
  ensure
    server&.close
  end

  # SIGSTOP: the kernel still accepts connections, nothing is answered.
  def freeze
    Process.kill(:STOP, pid)
  end

  def thaw
    Process.kill(:CONT, pid) if pid
  rescue Errno::ESRCH
    nil
  end

  def frozen
    freeze
    yield
  ensure
    thaw
  end

  def cleanup
    stop
    FileUtils.rm_rf(dir)
  end

  private

  def spawn_server
    defaults = ["--save", "", "--appendonly", "no"]
    defaults += ["--requirepass", @password, "--masterauth", @password] if @password
    @pid = Process.spawn(BINARY, "--port", port.to_s, "--bind", "127.0.0.1", *defaults, *@settings,
                         "--dir", dir, "--daemonize", "no", out: File.join(dir, "log"), err: %i[child out])
  end

  def free_port = self.class.free_port

  def wait_until_ready
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
    while Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline
      return false if Process.waitpid(pid, Process::WNOHANG)

      begin
        return true if Redis.new(url: url, timeout: 0.5).ping == "PONG"
      rescue Redis::BaseConnectionError, Redis::CommandError # LOADING: still reading its data
        sleep 0.02
      end
    end
    false
  end
end
