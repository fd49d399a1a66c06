# frozen_string_literal: true

# Helpers for specs that run with both a source and a destination.
module PhaseHelpers
  KEY = "locking:job"

  def configure_both(phase)
    Locking.reset_configuration!
    Locking.configure do |c|
      c.source = source_server.url
      c.destination = destination_server.url
      c.phase = phase
      c.timeout = 2.0
    end
  end

  def switch_phase(phase)
    Locking.configure { |c| c.phase = phase }
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
