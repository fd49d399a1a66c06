# frozen_string_literal: true

require "json"
require "optparse"
require "locking"
require_relative "../spec/support/redis_server"
require "open3"
require "socket"

# Shared by the benchmarks: timing, medians, the floor tool, and the rows
# each script hands to bench/all.rb (which prints them as one table).
module Bench
  ROOT = File.expand_path("..", __dir__)

  module_function

  # The script's options: `defaults`, then what the command line says. A
  # default given as [value, help] is an option of its own (`--name N` for
  # an Integer, `--name VALUE` else); the block may declare more on the
  # parser, into the hash it is given.
  def options(defaults)
    options = defaults.transform_values { |value| value.is_a?(Array) ? value.first : value }
    OptionParser.new do |parser|
      defaults.each do |name, (value, help)|
        next unless help

        flag = "--#{name.to_s.tr('_', '-')} #{value.is_a?(Integer) ? 'N' : 'VALUE'}"
        parser.on(flag, value.class, "#{help} (default #{value})") { |given| options[name] = given }
      end
      yield parser, options if block_given?
    end.parse!
    options
  end

  # Locking in phase 1 over both servers, as the operator tools run it.
  def configure_dual(source, destination, timeout:)
    Locking.configure do |c|
      c.source = source.url
      c.destination = destination.url
      c.phase = :dual
      c.timeout = timeout
    end
  end

  def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  # Starts a redis-server per name on a free port (spec/support/redis_server.rb),
  # stopped and removed when the benchmark exits.
  def start_servers(*names)
    servers = names.map { |name| RedisServer.start(name) }
    at_exit { servers.each(&:cleanup) }
    servers
  end

  def median(values) = values.sort[values.size / 2]

  def machine
    cpu = File.read("/proc/cpuinfo")[/model name\s*:\s*(.+)/, 1] if File.exist?("/proc/cpuinfo")
    "#{`nproc`.strip} cores (#{cpu || 'unknown CPU'}), #{RUBY_DESCRIPTION.split(' [').first}, " \
      "redis-server #{`redis-server --version`[/v=(\S+)/, 1]}, redis-rb #{Redis::VERSION}"
  end

  # A server behind a delaying proxy (ext/locking_core/examples/delay_proxy.rs):
  # what the client sees of a server one network hop away.
  Delayed = Struct.new(:port, :pid) do
    def url = "redis://127.0.0.1:#{port}/0"
  end

  # Puts each server behind its own delaying proxy, `delay_us` each way;
  # the proxies stop when the benchmark exits.
  def delayed(servers, delay_us)
    tool = example_tool("delay_proxy")
    servers.map do |server|
      reader, writer = IO.pipe
      pid = Process.spawn(tool, "127.0.0.1:#{server.port}", delay_us.to_s, out: writer)
      writer.close
      port = Integer(reader.gets)
      reader.close
      at_exit { Process.kill(:KILL, pid) rescue nil } # rubocop:disable Style/RescueModifier
      Delayed.new(port, pid)
    end
  end

  # Builds an example of the core (floor, delay_proxy) once; returns its path.
  def example_tool(name)
    @example_tools ||= {}
    @example_tools[name] ||= begin
      out, status = Open3.capture2e("cargo", "build", "--release", "--locked", "-p", "locking_core",
                                    "--example", name, chdir: ROOT)
      abort out unless status.success?
      File.join(ROOT, "target", "release", "examples", name)
    end
  end

  # Mean µs per iteration of `steps` (see floor.rs) sent by hand over plain sockets.
  def floor_us(count, source, destination, steps)
    out, status = Open3.capture2e(example_tool("floor"), count.to_s, "127.0.0.1:#{source.port}",
                                  "127.0.0.1:#{destination.port}", *steps)
    abort "floor: #{out}" unless status.success?
    out.to_f
  end

  # A row of the table: what was measured, against what, and its goal.
  #   name, unit, locking, references: { "label" => value }, floor:, commands:,
  #   goal: text, met: true/false/nil
  def row(**fields) = fields

  # Writes rows as JSON to the file named by --json (bench/all.rb), or prints them.
  def emit(rows, json_path)
    if json_path
      File.write(json_path, JSON.generate(rows))
    else
      rows.each { |r| puts r.to_json }
    end
  end

  # A process that PINGs a server one at a time over its own socket, from
  # #initialize until #stop, and sums up the round trips: what any client of
  # that server (a job worker) sees of its latency meanwhile.
  class Pinger
    def initialize(port)
      @reader, writer = IO.pipe
      @pid = fork do
        @reader.close
        writer.write(ping(port).join("\n"))
        writer.close
        exit!(0)
      end
      writer.close
    end

    # { p50:, p99:, worst_window: (the worst mean over one second), max:, count: } in ms.
    def stop
      Process.kill(:TERM, @pid)
      samples = @reader.read.split("\n").map { |line| line.split.map(&:to_f) }
      Process.wait(@pid)
      latencies = samples.map(&:last).sort
      windows = samples.group_by { |at, _| at.floor }.values.reject { |w| w.size < 50 }
      { p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99),
        worst_window: windows.map { |w| w.sum(&:last) / w.size }.max || latencies.last, max: latencies.last,
        count: latencies.size }
    end

    private

    # "seconds_since_start latency_ms" lines, until SIGTERM.
    def ping(port)
      socket = TCPSocket.new("127.0.0.1", port)
      socket.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY, 1)
      stop = false
      trap(:TERM) { stop = true }
      started = Bench.monotonic
      lines = []
      until stop
        sent = Bench.monotonic
        socket.write("PING\r\n")
        socket.readpartial(64)
        lines << format("%.4f %.4f", sent - started, (Bench.monotonic - sent) * 1000)
        sleep 0.001
      end
      lines
    end

    def percentile(sorted, fraction) = sorted[[(sorted.size * fraction).ceil - 1, 0].max]
  end
end
