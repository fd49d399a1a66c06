# frozen_string_literal: true

require_relative "loopback_proxy"

# Can lose a reply: the command reaches the server (and runs), its reply is
# dropped, and the client's connection is reset, as when a network path dies
# at the worst moment.
class ReplyDroppingProxy < LoopbackProxy
  def initialize(target_port)
    super
    @drop_next = false
  end

  # The next reply from the server is dropped and the client connection reset.
  def drop_next_reply!
    @lock.synchronize { @drop_next = true }
  end

  private

  def forward_reply(data, client, upstream)
    drop = @lock.synchronize { @drop_next.tap { @drop_next = false } }
    return client.write(data) unless drop

    client.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii")) # RST on close
    client.close
    upstream.close
    raise IOError, "reply dropped" # ends this pump
  end
end
