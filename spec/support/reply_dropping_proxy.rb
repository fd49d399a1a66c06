# frozen_string_literal: true

require "socket"

# A TCP proxy in front of a Redis server that can lose a reply: the command
# reaches the server (and runs), its reply is dropped, and the client's
# connection is reset, as when a network path dies at the worst moment.
class ReplyDroppingProxy
  attr_reader :port

  def initialize(target_port)
    @target_port = target_port
    @server = TCPServer.new("127.0.0.1", 0)
    @port = @server.addr[1]
    @drop_next = false
    @lock = Mutex.new
    @threads = []
    @acceptor = Thread.new { accept_loop }
  end

  def url = "redis://127.0.0.1:#{port}/0"

  # The next reply from the server is dropped and the client connection reset.
  def drop_next_reply!
    @lock.synchronize { @drop_next = true }
  end

  def close
    @acceptor.kill
    @threads.each(&:kill)
    @server.close
  end

  private

  def accept_loop
    loop do
      client = @server.accept
      upstream = TCPSocket.new("127.0.0.1", @target_port)
      @threads << Thread.new { pump(client, upstream) }
      @threads << Thread.new { pump_replies(upstream, client) }
    end
  rescue IOError, Errno::EBADF
    nil
  end

  def pump(from, to)
    loop { to.write(from.readpartial(65_536)) }
  rescue IOError, SystemCallError
    [from, to].each { |s| s.close rescue nil }
  end

  def pump_replies(from, to)
    loop do
      data = from.readpartial(65_536)
      drop = @lock.synchronize { @drop_next.tap { @drop_next = false } }
      if drop
        to.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii")) # RST on close
        to.close
        from.close
        return
      end
      to.write(data)
    end
  rescue IOError, SystemCallError
    [from, to].each { |s| s.close rescue nil }
  end
end
