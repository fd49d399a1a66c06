# frozen_string_literal: true

require_relative "loopback_proxy"

# Holds (once armed) every request that carries lock keys, until #let_go!.
class CopyHoldingProxy < LoopbackProxy
  attr_reader :held_data

  def initialize(port)
    @armed = false
    @go = false
    @held_data = []
    @cv = ConditionVariable.new
    super
  end

  def arm! = @lock.synchronize { @armed = true }
  def held? = @lock.synchronize { !@held_data.empty? }

  def let_go!
    @lock.synchronize do
      @go = true
      @cv.broadcast
    end
  end

  private

  def forward_request(data, upstream, _client)
    @lock.synchronize do
      if @armed && !@go && data.include?("locking:k")
        @held_data << data
        @cv.wait(@lock) until @go
      end
    end
    upstream.write(data)
  end
end
