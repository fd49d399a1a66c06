# frozen_string_literal: true

require_relative "loopback_proxy"

# A replication link to a master on another host: what the master sends
# reaches its replica `lag_ms` late (each chunk waits that long), as over a
# network to another zone. #close is that host dying: the bytes still in
# flight are lost with it.
class LaggingProxy < LoopbackProxy
  def initialize(target_port, lag_ms:)
    @lag = lag_ms / 1000.0
    super(target_port)
  end

  def close
    super
    @lock.synchronize { @sockets.each { |socket| socket.close rescue nil } }
  end

  private

  def forward_reply(data, client, _upstream)
    sleep @lag
    client.write(data)
  end
end
