# frozen_string_literal: true

require_relative "loopback_proxy"

# Holds requests in flight: after #hold!, what clients send is kept back (the
# client waits, as on a slow network path) until #let_go!, then delivered in
# order. Tests wait for #held? (a request is in flight) instead of sleeping.
class HoldingProxy < LoopbackProxy
  def initialize(target_port)
    super
    @released = ConditionVariable.new
    @holding = false
    @held = 0
  end

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
    super
  end

  private

  def forward_request(data, upstream, _client)
    @lock.synchronize do
      @held += 1
      @released.wait(@lock) while @holding
      @held -= 1
    end
    upstream.write(data)
  end
end
