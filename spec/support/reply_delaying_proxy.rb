# frozen_string_literal: true

require_relative "loopback_proxy"

# Once armed, holds the reply to each request that carries lock keys until `delay` seconds after that
# request came in (the server ran it at once: only its answer is slow, as from a busy server or a slow
# path). Requests without lock keys (SCAN, INFO) pass untouched. `delay` may be changed at any time: it
# counts for requests that come in from then on.
class ReplyDelayingProxy < LoopbackProxy
  attr_accessor :delay

  def initialize(port, delay:)
    @delay = delay
    @armed = false
    @due = nil
    super(port)
  end

  def arm! = @lock.synchronize { @armed = true }

  private

  def forward_request(data, upstream, _client)
    @lock.synchronize { @due ||= clock + @delay if @armed && data.include?("locking:k") }
    upstream.write(data)
  end

  def forward_reply(data, client, _upstream)
    due = @lock.synchronize { @due.tap { @due = nil } }
    sleep(due - clock) if due && due > clock
    client.write(data)
  end

  def clock = Process.clock_gettime(Process::CLOCK_MONOTONIC)
end
