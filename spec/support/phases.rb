# frozen_string_literal: true

# Helpers for specs that run with both a source and a destination.
module PhaseHelpers
  KEY = "locking:job"

  # Both servers (any form: a URL, a cluster's Hash ...), the phase, a 2 s
  # timeout, and any other setting.
  def configure_both(phase, source: source_server.url, destination: destination_server.url, **settings)
    Locking.reset_configuration!
    Locking.configure do |c|
      c.source = source
      c.destination = destination
      c.phase = phase
      c.timeout = 2.0
      settings.each { |name, value| c.public_send(:"#{name}=", value) }
    end
  end

  def switch_phase(phase)
    Locking.configure { |c| c.phase = phase }
  end

  # The live heartbeats of a dynamic fleet, read as `locking phase` reads them.
  def fleet_members(prefix: "locking:")
    config = Locking::Configuration.new({})
    config.source = source_server.url
    config.destination = destination_server.url
    config.key_prefix = prefix
    config.phase = :dual
    Locking::Client.build(config).fleet
  end

  # "LOW..HIGH" phase indexes of each live heartbeat ("1" when LOW == HIGH).
  def fleet_phases(prefix: "locking:")
    fleet_members(prefix: prefix).map do |member|
      low, high = [member[:phase], member[:highest]].map { |p| Locking::Configuration.phase_index(p).to_s }
      low == high ? low : "#{low}..#{high}"
    end
  end

  # A heartbeat as a process would write it, for specs that stand in for one.
  def fake_heartbeat(process, value, prefix: "locking:", ttl_ms: 10_000)
    redis = destination_server.redis
    seconds, micros = redis.time
    redis.zadd("{locking-control}:#{prefix}fleet", (seconds * 1000) + (micros / 1000) + ttl_ms, process)
    redis.hset("{locking-control}:#{prefix}fleet-phases", process, value)
  end

  # [value on source, value on destination] for the test key.
  def holdings
    [source_server.redis.get(KEY), destination_server.redis.get(KEY)]
  end

  def lock_keys_left
    source_server.redis.keys("locking:*") + destination_server.redis.keys("locking:*")
  end
end

RSpec.configure { |config| config.include PhaseHelpers }
