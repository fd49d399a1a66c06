# frozen_string_literal: true

require "socket"

# A TCP proxy on loopback in front of a Redis server, for fault specs. Each
# client connection gets its own upstream connection and two pumps; the
# subclasses decide what happens to requests (#forward_request) and replies
# (#forward_reply) on their way.
class LoopbackProxy
  attr_reader :port

  def initialize(target_port)
    @target_port = target_port
    @server = TCPServer.new("127.0.0.1", 0)
    @port = @server.addr[1]
    @lock = Mutex.new
    @threads = []
    @sockets = []
    @acceptor = Thread.new { accept_loop }
  end

  def url = "redis://127.0.0.1:#{port}/0"

  def close
    @acceptor.kill
    @threads.each(&:kill)
    @server.close
  end

  private

  def forward_request(data, upstream, _client) = upstream.write(data)
  def forward_reply(data, client, _upstream) = client.write(data)

  def accept_loop
    loop do
      client = @server.accept
      begin
        upstream = TCPSocket.new("127.0.0.1", @target_port)
      rescue SystemCallError # the server is down: so is this connection
        client.close
        next
      end
      @lock.synchronize { @sockets.push(client, upstream) }
      @threads << Thread.new { pump(client, upstream) { |data| forward_request(data, upstream, client) } }
      @threads << Thread.new { pump(upstream, client) { |data| forward_reply(data, client, upstream) } }
    end
  rescue IOError, Errno::EBADF
    nil
  end

  def pump(from, to)
    loop { yield from.readpartial(65_536) }
  rescue IOError, SystemCallError
    [from, to].each { |s| s.close rescue nil }
  end
end
