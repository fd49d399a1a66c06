# frozen_string_literal: true

require "active_job"
require "logger"
require "stringio"

ActiveJob::Base.queue_adapter = :test
ActiveJob::Base.logger = Logger.new(nil)

# Issue 30 (parity with sidekiq-unique-jobs and activejob-uniqueness) and
# issue 28's constant leak, each on a real Redis.
RSpec.describe "Locking::UniqueJob: parity options" do
  include ActiveJob::TestHelper

  let(:redis) { source_server.redis }

  before do
    clear_enqueued_jobs
    clear_performed_jobs
  end

  after { Locking.configure { |c| c.unique_job_defaults = {} } }

  # A named job class (lock keys carry the name), declared in the example.
  def job_class(name, strategy = nil, **options, &body)
    Class.new(ActiveJob::Base) do
      define_singleton_method(:name) { "Parity::#{name}" }
      include Locking::UniqueJob
      unique_lock(strategy, **options) if strategy
      class_eval(&body) if body
    end
  end

  def lock_keys = redis.keys("locking:*").sort

  # Performs an enqueued job as a worker would: a fresh object from its data
  # (the job classes here are anonymous, so not through perform_enqueued_jobs).
  def perform_copy(job)
    job.class.new.tap { |copy| copy.deserialize(job.serialize.merge("executions" => 0)) }.perform_now
  end

  # Waits (bounded) for a state, never for a time.
  def wait_until(seconds = 10)
    deadline = monotonic + seconds
    sleep 0.01 until (result = yield) || monotonic > deadline
    result
  end

  # Counts performs inside at once, and the most ever seen (occupancy witness).
  class Occupancy
    attr_reader :runs, :most

    def initialize
      @mutex = Mutex.new
      @inside = 0
      @most = 0
      @runs = 0
    end

    def inside
      @mutex.synchronize do
        @runs += 1
        @inside += 1
        @most = [@most, @inside].max
      end
      yield
    ensure
      @mutex.synchronize { @inside -= 1 }
    end
  end

  describe "constants (issue 28)" do
    it "lets a job's own code find its own Strategy, UntilExecuting, DATA_KEY..., never the gem's" do
      names = %i[Strategy UntilExecuted UntilExecuting UntilExpired WhileExecuting UntilAndWhileExecuting DATA_KEY
                 STRATEGIES STRATEGY_CLASSES ON_CONFLICT ON_PERFORM_CONFLICT ON_REDIS_ERROR ON_FAILURE ON_RELEASE_ERROR]
      names.each { |name| stub_const(name.to_s, "the app's #{name}") }
      seen = {}
      job = job_class("Naming", :until_executed, ttl: 60) do
        define_method(:perform) do |_id|
          names.each { |name| seen[name] = self.class.class_eval(name.to_s) } # as the job's own code reads it
        end
        define_singleton_method(:resolve) { |name| const_get(name) }
      end
      perform_copy(job.perform_later(1))

      expect(seen).to eq(names.to_h { |name| [name, "the app's #{name}"] })
      expect(names.map { |name| job.resolve(name) }).to eq(names.map { |name| "the app's #{name}" })
      expect(Locking::UniqueJob.constants).to eq([])
      expect(lock_keys).to eq([])
    end
  end
end
