# frozen_string_literal: true

require "socket"

# A TCP proxy in front of a Redis server that can hold requests in flight:
# after #hold!, what clients send is kept back (the client waits, as on a
# slow network path) until #let_go!, then delivered in order. Tests wait for
# #held? (a request is in flight) instead of sleeping.
class HoldingProxy
  attr_reader :port

  def initialize(target_port)
    @target_port = target_port
    @server = TCPServer.new("127.0.0.1", 0)
    @port = @server.addr[1]
    @lock = Mutex.new
    @released = ConditionVariable.new
    @holding = false
    @held = 0
    @threads = []
    @acceptor = Thread.new { accept_loop }
  end

  def url = "redis://127.0.0.1:#{port}/0"

  def hold!
    @lock.synchronize { @holding = true }
  end

  # Whether a request is being held back right now.
  def held?
    @lock.synchronize { @held.positive? }
  end

  def let_go!
    @lock.synchronize do
      @holding = false
      @released.broadcast
    end
  end

  def close
    let_go!
    @acceptor.kill
    @threads.each(&:kill)
    @server.close
  end

  private

  def accept_loop
    loop do
      client = @server.accept
      upstream = TCPSocket.new("127.0.0.1", @target_port)
      @threads << Thread.new { pump_requests(client, upstream) }
      @threads << Thread.new { pump(upstream, client) }
    end
  rescue IOError, Errno::EBADF
    nil
  end

  def pump_requests(from, to)
    loop do
      data = from.readpartial(65_536)
      @lock.synchronize do
        @held += 1
        @released.wait(@lock) while @holding
        @held -= 1
      end
      to.write(data)
    end
  rescue IOError, SystemCallError
    [from, to].each { |s| s.close rescue nil }
  end

  def pump(from, to)
    loop { to.write(from.readpartial(65_536)) }
  rescue IOError, SystemCallError
    [from, to].each { |s| s.close rescue nil }
  end
end
