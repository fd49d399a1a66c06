# frozen_string_literal: true

require "active_job"

ActiveJob::Base.queue_adapter = :test
ActiveJob::Base.logger = Logger.new(nil)

# Jobs for the examples; each records what Redis held while it performed.
module UniqueJobs
  PERFORMED = []

  class Base < ActiveJob::Base
    include Locking::UniqueJob

    def held_during_perform
      Locking.new(self.class.lock_key_for(*arguments)).locked?
    end

    def perform(*args) = PERFORMED << [self.class.name, args, held_during_perform]
  end

  class UntilExecuted < Base
    unique_lock :until_executed, ttl: 60
  end

  class UntilExecuting < Base
    unique_lock :until_executing, ttl: 60
  end

  class WhileExecuting < Base
    unique_lock :while_executing, ttl: 60
  end

  class UntilExpired < Base
    unique_lock :until_expired, ttl: 60
  end

  class Raising < Base
    unique_lock :until_executed, ttl: 60, on_conflict: :raise
    def perform(*) = nil
  end

  class CustomKey < Base
    unique_lock :until_executed, ttl: 60, key: ->(account, _options) { "account-#{account}" }
    def perform(*) = nil
  end

  class Flaky < Base
    class Boom < StandardError; end
    ATTEMPTS = []
    unique_lock :until_executed, ttl: 60
    retry_on Boom, wait: 0, attempts: 3

    def perform(id)
      ATTEMPTS << [id, executions, Locking.new(lock_key, token: lock_token).ttl]
      raise Boom if executions < 2
    end
  end

  class Failing < Base
    unique_lock :until_executed, ttl: 60
    def perform(*) = raise(ArgumentError, "bad input")
  end

  class FailingKept < Base
    unique_lock :until_executed, ttl: 60, on_failure: :keep
    def perform(*) = raise(ArgumentError, "bad input")
  end

  class ReleaseWarn < Base
    unique_lock :until_executed, ttl: 60, on_release_error: :warn
    def perform(*) = PERFORMED << :ran
  end

  class ReleaseRaise < Base
    unique_lock :until_executed, ttl: 60, on_release_error: :raise
    def perform(*) = PERFORMED << :ran
  end

  class ReleaseProc < Base
    SEEN = []
    unique_lock :until_executed, ttl: 60, on_release_error: ->(job, error) { SEEN << [job.arguments, error.class] }
    def perform(*) = PERFORMED << :ran
  end

  class Discarded < Base
    class Gone < StandardError; end
    unique_lock :until_executed, ttl: 60
    discard_on Gone
    def perform(*) = raise(Gone)
  end
end

RSpec.describe Locking::UniqueJob do
  include ActiveJob::TestHelper

  let(:redis) { source_server.redis }

  before do
    UniqueJobs::PERFORMED.clear
    UniqueJobs::Flaky::ATTEMPTS.clear
    clear_enqueued_jobs
    clear_performed_jobs
  end

  def lock_keys = redis.keys("locking:*")

  describe ":until_executed" do
    it "locks at enqueue, drops a duplicate, and frees the lock after perform" do
      job = UniqueJobs::UntilExecuted.perform_later(42, "x")

      expect(job).to be_a(UniqueJobs::UntilExecuted)
      expect(lock_keys).to eq(["locking:#{job.lock_key}"])
      expect(job.lock_key).to match(/\AUniqueJobs::UntilExecuted:\h{64}\z/)
      expect(redis.get("locking:#{job.lock_key}")).to eq(job.lock_token)
      expect(redis.pttl("locking:#{job.lock_key}")).to be_between(59_000, 60_000)

      expect(UniqueJobs::UntilExecuted.perform_later(42, "x")).to be(false)
      expect(enqueued_jobs.size).to eq(1)
      expect(UniqueJobs::UntilExecuted.perform_later(43, "x")).to be_truthy # other arguments, other lock
      expect(enqueued_jobs.size).to eq(2)

      perform_enqueued_jobs
      expect(UniqueJobs::PERFORMED.map(&:last)).to eq([true, true]) # held while performing
      expect(lock_keys).to eq([])
    end

    it "carries key and token in the job's data, so another process releases exactly that lock" do
      job = UniqueJobs::UntilExecuted.perform_later(7)
      data = enqueued_jobs.first
      expect(data["locking"]).to eq("key" => job.lock_key, "token" => job.lock_token)

      # A worker somewhere else: a fresh object from the serialized data.
      ActiveJob::Base.execute(data.stringify_keys)
      expect(lock_keys).to eq([])
    end

    it "derives the same key whatever the hash order or symbol/string keys" do
      UniqueJobs::UntilExecuted.perform_later({ a: 1, b: { c: 2, d: 3 } })
      expect(UniqueJobs::UntilExecuted.perform_later({ "b" => { "d" => 3, "c" => 2 }, "a" => 1 })).to be(false)
      expect(enqueued_jobs.size).to eq(1)
    end

    it "releases only its own token: a lock taken by someone else after expiry stays" do
      job = UniqueJobs::UntilExecuted.perform_later(1)
      redis.set("locking:#{job.lock_key}", "someone-else", px: 60_000) # ours expired, another took it
      perform_enqueued_jobs
      expect(redis.get("locking:#{job.lock_key}")).to eq("someone-else")
    end
  end

  describe ":until_executing" do
    it "frees the lock when perform starts" do
      UniqueJobs::UntilExecuting.perform_later(1)
      expect(lock_keys.size).to eq(1)
      perform_enqueued_jobs
      expect(UniqueJobs::PERFORMED.map(&:last)).to eq([false])
      expect(lock_keys).to eq([])
    end
  end

  describe ":while_executing" do
    it "takes no lock at enqueue, and holds one only around perform" do
      UniqueJobs::WhileExecuting.perform_later(1)
      UniqueJobs::WhileExecuting.perform_later(1)
      expect(enqueued_jobs.size).to eq(2)
      expect(lock_keys).to eq([])
      perform_enqueued_jobs
      expect(UniqueJobs::PERFORMED.map(&:last)).to eq([true, true])
      expect(lock_keys).to eq([])
    end

    it "skips a run while another run holds the lock (on_perform_conflict: :drop)" do
      job = UniqueJobs::WhileExecuting.new(5)
      redis.set("locking:#{UniqueJobs::WhileExecuting.lock_key_for(5)}", "running-elsewhere", px: 60_000)
      job.perform_now
      expect(UniqueJobs::PERFORMED).to eq([])
      expect(redis.get("locking:#{UniqueJobs::WhileExecuting.lock_key_for(5)}")).to eq("running-elsewhere")
    end

    it "retries later with on_perform_conflict: :retry, or raises with :raise" do
      retrying = Class.new(UniqueJobs::Base) do
        def self.name = "UniqueJobs::RetryWhileBusy"
        unique_lock :while_executing, ttl: 60, on_perform_conflict: :retry, retry_wait: 30
        def perform(*) = UniqueJobs::PERFORMED << :ran
      end
      raising = Class.new(UniqueJobs::Base) do
        def self.name = "UniqueJobs::RaiseWhileBusy"
        unique_lock :while_executing, ttl: 60, on_perform_conflict: :raise
        def perform(*) = UniqueJobs::PERFORMED << :ran
      end
      [retrying, raising].each { |k| redis.set("locking:#{k.lock_key_for(1)}", "busy", px: 60_000) }

      retrying.new(1).perform_now
      expect(enqueued_jobs.size).to eq(1)
      expect(enqueued_jobs.first[:at]).to be > Time.now.to_f + 20
      expect { raising.new(1).perform_now }.to raise_error(Locking::DuplicateJobError, /already running/)
      expect(UniqueJobs::PERFORMED).to eq([])
    end
  end

  describe ":until_expired" do
    it "keeps the lock after perform, until its TTL" do
      job = UniqueJobs::UntilExpired.perform_later(1)
      perform_enqueued_jobs
      expect(redis.get("locking:#{job.lock_key}")).to eq(job.lock_token)
      expect(redis.pttl("locking:#{job.lock_key}")).to be > 50_000
      expect(UniqueJobs::UntilExpired.perform_later(1)).to be(false)
    end
  end

  describe "conflict policies" do
    it "raises DuplicateJobError with on_conflict: :raise" do
      UniqueJobs::Raising.perform_later(1)
      expect { UniqueJobs::Raising.perform_later(1) }.to raise_error(Locking::DuplicateJobError, /already enqueued/)
      expect(enqueued_jobs.size).to eq(1)
    end

    it "logs with :log and calls a Proc with the job" do
      log = StringIO.new
      logging = Class.new(UniqueJobs::Base) do
        def self.name = "UniqueJobs::Logging"
        unique_lock :until_executed, ttl: 60, on_conflict: :log
        def perform(*) = nil
      end
      logging.logger = Logger.new(log)
      seen = []
      calling = Class.new(UniqueJobs::Base) do
        def self.name = "UniqueJobs::Calling"
        unique_lock :until_executed, ttl: 60, on_conflict: ->(job) { seen << job.arguments }
        def perform(*) = nil
      end

      2.times { logging.perform_later(1) }
      2.times { calling.perform_later(9) }

      expect(log.string).to include("UniqueJobs::Logging not enqueued")
      expect(seen).to eq([[9]])
      expect(enqueued_jobs.size).to eq(2)
    end

    it "uses a custom key built from the arguments" do
      job = UniqueJobs::CustomKey.perform_later(12, { "x" => 1 })
      expect(job.lock_key).to eq("UniqueJobs::CustomKey:account-12")
      expect(UniqueJobs::CustomKey.perform_later(12, { "x" => 2 })).to be(false)
    end

    it "rejects bad declarations" do
      expect { Class.new(ActiveJob::Base) { include Locking::UniqueJob; unique_lock :forever, ttl: 1 } }
        .to raise_error(ArgumentError, /unknown strategy :forever/)
      expect { Class.new(ActiveJob::Base) { include Locking::UniqueJob; unique_lock :until_executed, ttl: 0 } }
        .to raise_error(ArgumentError, /ttl/)
      expect { Class.new(ActiveJob::Base) { include Locking::UniqueJob; unique_lock :until_executed, ttl: 1, on_conflict: :ignore } }
        .to raise_error(ArgumentError, /on_conflict/)
    end
  end

  describe "failures" do
    it "keeps the lock across retry_on retries, with the same token and no gap, then frees it" do
      job = UniqueJobs::Flaky.perform_later(1)
      key = "locking:#{job.lock_key}"

      perform_enqueued_jobs # attempt 1 raises, retry_on enqueues attempt 2
      expect(redis.get(key)).to eq(job.lock_token)
      expect(enqueued_jobs.size).to eq(1)
      expect(UniqueJobs::Flaky.perform_later(1)).to be(false) # still unique while waiting to retry

      perform_enqueued_jobs # attempt 2 succeeds
      expect(UniqueJobs::Flaky::ATTEMPTS.map { |_, executions, ttl| [executions, ttl&.positive?] })
        .to eq([[1, true], [2, true]])
      expect(lock_keys).to eq([])
    end

    it "frees the lock when perform raises and nothing retries it (on_failure: :release)" do
      UniqueJobs::Failing.perform_later(1)
      expect { perform_enqueued_jobs }.to raise_error(ArgumentError, "bad input")
      expect(lock_keys).to eq([])
    end

    it "keeps it until the TTL with on_failure: :keep" do
      job = UniqueJobs::FailingKept.perform_later(1)
      expect { perform_enqueued_jobs }.to raise_error(ArgumentError)
      expect(redis.get("locking:#{job.lock_key}")).to eq(job.lock_token)
    end

    it "frees the lock of a discarded job" do
      UniqueJobs::Discarded.perform_later(1)
      perform_enqueued_jobs
      expect(lock_keys).to eq([])
    end
  end

  describe "Redis errors" do
    def with_unreachable_redis
      port = RedisServer.free_port
      Locking.configure { |c| c.source = "redis://127.0.0.1:#{port}/0" }
      yield
    ensure
      configure_single
    end

    def job_class(policy)
      Class.new(UniqueJobs::Base) do
        define_singleton_method(:name) { "UniqueJobs::Policy#{policy}" }
        unique_lock :until_executed, ttl: 60, on_redis_error: policy
        def perform(*) = nil
      end
    end

    it "raises by default, never reading an error as 'no lock'" do
      with_unreachable_redis do
        expect { job_class(:raise).perform_later(1) }.to raise_error(Locking::ConnectionError)
      end
      expect(enqueued_jobs).to eq([])
    end

    it "enqueues with :allow and drops with :deny" do
      with_unreachable_redis do
        expect(job_class(:allow).perform_later(1)).to be_truthy
        expect(job_class(:deny).perform_later(1)).to be(false)
      end
      expect(enqueued_jobs.size).to eq(1)
    end
  end

  describe "release errors (on_release_error)" do
    # The lock is taken in phase 0 with a destination configured but down;
    # the worker then runs in phase 1, where the destination is required, so
    # its release deletes the source copy and fails on the destination.
    def with_failing_release
      port = RedisServer.free_port
      Locking.configure do |c|
        c.destination = "redis://127.0.0.1:#{port}/0"
        c.phase = :source
      end
      yield -> { Locking.configure { |c| c.phase = :dual } }
    ensure
      configure_single
    end

    def job_class(policy)
      { warn: UniqueJobs::ReleaseWarn, raise: UniqueJobs::ReleaseRaise, proc: UniqueJobs::ReleaseProc }.fetch(policy)
    end

    it "never fails a job whose perform finished: it logs, instruments, and leaves the lock to its TTL" do
      log = StringIO.new
      Locking.logger = Logger.new(log)
      events = []
      subscriber = ActiveSupport::Notifications.subscribe("release_error.locking") { |*, payload| events << payload }
      with_failing_release do |to_phase_one|
        klass = job_class(:warn)
        klass.perform_later(1)
        to_phase_one.call
        expect { perform_enqueued_jobs }.not_to raise_error
        expect(UniqueJobs::PERFORMED).to eq([:ran])
        expect(enqueued_jobs).to eq([]) # not retried
        expect(events.map { |e| [e[:reason], e[:error].class] }).to eq([[:performed, Locking::ConnectionError]])
        expect(log.string).to match(/could not release .*stays locked until its TTL/)
        expect(lock_keys).to eq([]) # the source copy went first
      end
    ensure
      Locking.logger = nil
      ActiveSupport::Notifications.unsubscribe(subscriber)
    end

    it "re-raises with on_release_error: :raise, and calls a Proc with the job and the error" do
      UniqueJobs::ReleaseProc::SEEN.clear
      with_failing_release do |to_phase_one|
        job_class(:raise).perform_later(1)
        job_class(:proc).perform_later(2)
        to_phase_one.call
        expect { perform_enqueued_jobs(only: UniqueJobs::ReleaseRaise) }.to raise_error(Locking::ConnectionError)
        perform_enqueued_jobs(only: UniqueJobs::ReleaseProc)
      end
      expect(UniqueJobs::ReleaseProc::SEEN).to eq([[[2], Locking::ConnectionError]])
    end

    it "rejects an unknown policy" do
      expect { Class.new(ActiveJob::Base) { include Locking::UniqueJob; unique_lock :until_executed, ttl: 1, on_release_error: :ignore } }
        .to raise_error(ArgumentError, /unknown on_release_error :ignore/)
    end

    it "in phase 0, a destination that is down does not fail the release at all" do
      port = RedisServer.free_port
      Locking.configure { |c| c.destination = "redis://127.0.0.1:#{port}/0" }
      events = []
      subscriber = ActiveSupport::Notifications.subscribe(/\.locking\z/) { |name, *| events << name }
      job = job_class(:raise).perform_later(1)
      perform_enqueued_jobs
      expect(events).to eq(%w[acquire.locking release.locking])
      expect(redis.get("locking:#{job.lock_key}")).to be_nil
    ensure
      ActiveSupport::Notifications.unsubscribe(subscriber)
      configure_single
    end
  end

  describe "ActiveJob's own log" do
    it "says a dropped duplicate was not enqueued" do
      log = StringIO.new
      ActiveJob::Base.logger = Logger.new(log)
      UniqueJobs::UntilExecuted.perform_later(77)
      UniqueJobs::UntilExecuted.perform_later(77)
      lines = log.string.lines.grep(/UniqueJobs::UntilExecuted/)
      expect(lines.grep(/Enqueued UniqueJobs::UntilExecuted/).size).to eq(1)
      expect(lines.grep(/Failed enqueuing UniqueJobs::UntilExecuted/).size).to eq(1)
    ensure
      ActiveJob::Base.logger = Logger.new(nil)
    end
  end

  describe "notifications and manual unlock" do
    it "instruments acquire, conflict and release" do
      events = []
      subscriber = ActiveSupport::Notifications.subscribe(/\.locking\z/) { |name, *, payload| events << [name, payload[:job_class]] }
      UniqueJobs::UntilExecuted.perform_later(1)
      UniqueJobs::UntilExecuted.perform_later(1)
      perform_enqueued_jobs
      expect(events.map(&:first)).to eq(%w[acquire.locking conflict.locking release.locking])
      expect(events.map(&:last).uniq).to eq(["UniqueJobs::UntilExecuted"])
    ensure
      ActiveSupport::Notifications.unsubscribe(subscriber)
    end

    it "unlocks one job's lock, or every lock of a job class" do
      UniqueJobs::UntilExecuted.perform_later(1)
      UniqueJobs::UntilExecuted.perform_later(2)
      UniqueJobs::UntilExecuting.perform_later(1)

      expect(UniqueJobs::UntilExecuted.unlock!(1)).to be(true)
      expect(UniqueJobs::UntilExecuted.unlock!(1)).to be(false)
      expect(UniqueJobs::UntilExecuted.perform_later(1)).to be_truthy

      expect(UniqueJobs::UntilExecuted.unlock_all!).to eq(2)
      expect(lock_keys).to eq(["locking:#{UniqueJobs::UntilExecuting.lock_key_for(1)}"])
    end
  end
end
