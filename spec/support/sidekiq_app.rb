# frozen_string_literal: true

# A small app for the end-to-end spec, run by a real Sidekiq process:
#   sidekiq -r ./spec/support/sidekiq_app.rb
# Settings come from the environment: JOBS_REDIS_URL (Sidekiq's queues),
# LOCKING_SOURCE_URL / LOCKING_DESTINATION_URL / LOCKING_PHASE (locking's
# own defaults), WITNESS_URL (what the jobs record).
$LOAD_PATH.unshift(File.expand_path("../../lib", __dir__))
require "logger"
require "active_job"
require "sidekiq"
require "locking"
require "locking/sidekiq" # a job that dies frees its lock (a death handler)

Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)
ActiveJob::Base.queue_adapter = :sidekiq
ActiveJob::Base.logger = Logger.new(nil)
# Sidekiq's own retries for the jobs named in NoRetries::JOBS: none, so a
# failing one dies at once (ActiveJob's Sidekiq adapter of Rails 6.1 takes no
# sidekiq_options from the job).
class NoRetries
  JOBS = %w[DyingJob].freeze

  def call(_worker, job, _queue, _redis_pool)
    job["retry"] = 0 if JOBS.include?(job["wrapped"].to_s)
    yield
  end
end

Sidekiq.configure_server do |config|
  config.redis = { url: ENV.fetch("JOBS_REDIS_URL") }
  config.options[:poll_interval_average] = 0.5 # run retry_on's scheduled retries soon
  config.logger.level = Logger::WARN
end
Sidekiq.configure_client do |config|
  config.redis = { url: ENV.fetch("JOBS_REDIS_URL") }
  config.client_middleware { |chain| chain.add(NoRetries) }
end
Locking.configure { |c| c.phase_cache_ttl = 0.1 }

module Witness
  def self.redis = Redis.new(url: ENV.fetch("WITNESS_URL"))
end

# Many enqueues of the same job at once: it must run once.
class UniqueImportJob < ActiveJob::Base
  include Locking::UniqueJob
  unique_lock :until_executed, ttl: 60

  def perform(id)
    witness = Witness.redis
    witness.incr("overlaps") if witness.incr("inside:#{id}") > 1
    witness.incr("runs:#{id}")
    sleep 0.3
    witness.decr("inside:#{id}")
  ensure
    witness&.close
  end
end

# Fails once, retried by retry_on: keeps its lock in between, then frees it.
class FlakyJob < ActiveJob::Base
  include Locking::UniqueJob
  unique_lock :until_executed, ttl: 60
  retry_on RuntimeError, wait: 1, attempts: 3

  def perform(id)
    witness = Witness.redis
    witness.rpush("flaky:#{id}", "#{executions}:#{Locking.new(lock_key, token: lock_token).ttl ? 'held' : 'free'}")
    raise "attempt #{executions} fails" if executions == 1
  ensure
    witness&.close
  end
end

# Waits for the spec's signal, so that it is released after a phase change.
class GatedJob < ActiveJob::Base
  include Locking::UniqueJob
  unique_lock :until_executed, ttl: 60

  def perform(_id)
    witness = Witness.redis
    witness.incr("gated:started")
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 20
    sleep 0.05 until witness.exists?("go") || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
    Locking.new("probe").locked? # an operation: reads the (dynamic) phase now
    witness.rpush("gated:phases", Locking.client.phase.to_s)
  ensure
    witness&.close
  end
end

# Runs for `seconds` (three times its lock's TTL in the spec), its lock
# renewed while it runs (auto_renew): enqueues meanwhile are dropped.
class LongJob < ActiveJob::Base
  include Locking::UniqueJob
  unique_lock :until_executed, ttl: 1, auto_renew: true, key: ->(id, *) { id }

  # Runs `seconds`, and with `hold` on until the spec sets long:release:ID (30 s at most), so that a spec
  # waits for a state, not for the time its enqueues take on a busy machine.
  def perform(id, seconds, hold: false)
    witness = Witness.redis
    witness.incr("long:overlaps") if witness.incr("long:inside:#{id}") > 1
    witness.incr("long:runs:#{id}")
    witness.set("long:running:#{id}", Process.pid)
    sleep seconds
    300.times { hold && !witness.exists?("long:release:#{id}") ? sleep(0.1) : break }
    witness.decr("long:inside:#{id}")
    witness.incr("long:done:#{id}")
  ensure
    witness&.close
  end
end

# Counts the runs of one id and how often two ran at once (an occupancy
# witness), each run taking `hold` seconds so that an overlap shows.
module Occupied
  def occupy(name, id, hold: 0.5)
    witness = Witness.redis
    witness.incr("#{name}:overlaps") if witness.incr("#{name}:inside:#{id}") > 1
    witness.incr("#{name}:runs:#{id}")
    sleep hold
    witness.decr("#{name}:inside:#{id}")
  ensure
    witness&.close
  end
end

# Scheduled (set(wait:)) past its 1 s TTL: its lock lives for the delay plus the TTL.
class ScheduledJob < ActiveJob::Base
  include Locking::UniqueJob
  include Occupied
  unique_lock :until_executed, ttl: 1, key: ->(id) { id }

  def perform(id) = occupy("scheduled", id)
end

# Its TTL comes with it (a ttl: Proc): a short one expires in the queue, and
# the same job enqueued again with a long one takes the lock.
class RetakenJob < ActiveJob::Base
  include Locking::UniqueJob
  include Occupied
  unique_lock :until_executed, ttl: ->(_id, ttl) { ttl }, key: ->(id, _ttl) { id }

  def perform(id, _ttl) = occupy("retaken", id)
end

# Fails, keeping its lock (on_failure: :keep), and dies (no Sidekiq retries):
# the death handler of locking/sidekiq frees the lock.
class DyingJob < ActiveJob::Base
  include Locking::UniqueJob
  unique_lock :until_executed, ttl: 60, on_failure: :keep, key: ->(id) { id }

  def perform(id)
    witness = Witness.redis
    witness.incr("dying:runs:#{id}")
    raise "job #{id} fails"
  ensure
    witness&.close
  end
end
