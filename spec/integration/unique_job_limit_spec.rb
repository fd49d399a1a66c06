# frozen_string_literal: true

require "active_job"
require_relative "../support/cluster"

ActiveJob::Base.queue_adapter = :test
ActiveJob::Base.logger = Logger.new(nil)

# `unique_lock STRATEGY, ..., limit: N`: N jobs with one key hold a place at
# once (a Locking::Semaphore at the job's key), the policies apply to the
# N+1st. Each example reads the sorted set's members afterwards; the
# occupancy examples count, in the witness Redis, the jobs inside perform.
module LimitedJobs
  PERFORMED = []

  # The occupancy witness: how many jobs are inside perform now ("inside"),
  # each count seen on entering ("seen"). A job stays inside until `limit`
  # jobs are (for at most 2 s), so reaching the limit is a state the run
  # waits for, not luck of timing; then 10 ms more, the window in which an
  # N+1st would be seen if the limit let it in.
  module Occupancy
    class << self
      attr_accessor :url

      def witness = (@witness ||= {})[Process.pid] ||= Redis.new(url: url)

      def inside(limit)
        witness.rpush("seen", witness.incr("inside"))
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 2
        sleep 0.002 until witness.get("inside").to_i >= limit || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        sleep 0.01
        witness.incr("runs")
      ensure
        witness.decr("inside")
      end

      def most = witness.lrange("seen", 0, -1).map(&:to_i).max
      def runs = witness.get("runs").to_i
    end
  end

  class Base < ActiveJob::Base
    include Locking::UniqueJob

    # Records the places of its key, and of its runtime key, while it runs.
    def perform(*) = PERFORMED << { places: LimitedJobs.members(lock_key), run: LimitedJobs.members("#{lock_key}:run") }
  end

  class << self
    attr_accessor :redis

    def members(key) = redis.zrange("locking:#{key}", 0, -1)
  end

  def self.job(name, strategy, base: Base, **options, &body)
    klass = Class.new(base) do
      define_singleton_method(:name) { "LimitedJobs::#{name}" }
      unique_lock strategy, ttl: 60, **options
    end
    klass.class_eval(&body) if body
    const_set(name, klass)
  end

  job :UntilExecuted, :until_executed, limit: 2
  job :UntilExecuting, :until_executing, limit: 2
  job :WhileExecuting, :while_executing, limit: 2
  job :UntilAndWhile, :until_and_while_executing, limit: 2
  job :UntilExpired, :until_expired, limit: 3
  job :Raising, :until_executed, limit: 2, on_conflict: :raise
  job :PerformRaising, :until_executed, limit: 2, on_perform_conflict: :raise
  job :RetryBusy, :while_executing, limit: 2, on_perform_conflict: :retry, retry_wait: 30
  job :Waiting, :while_executing, limit: 2, wait: 5
  job(:Flaky, :until_executed, limit: 2) do
    retry_on ArgumentError, wait: 0, attempts: 3
    def perform(*) = (PERFORMED << [executions, LimitedJobs.members(lock_key)]) && (raise ArgumentError if executions < 2)
  end
  [%i[UntilExecuted until_executed], %i[WhileExecuting while_executing], %i[UntilAndWhile until_and_while_executing]]
    .each do |name, strategy|
      job(:"Occupied#{name}", strategy, limit: 3) do
        def perform(*) = Occupancy.inside(3)
      end
    end
end

RSpec.describe "unique_lock ..., limit: N" do
  include ActiveJob::TestHelper

  let(:redis) { source_server.redis }

  before do
    LimitedJobs::PERFORMED.clear
    LimitedJobs.redis = redis
    LimitedJobs::Occupancy.url = witness_server.url
    clear_enqueued_jobs
  end

  def members(job_or_key) = LimitedJobs.members(job_or_key.is_a?(String) ? job_or_key : job_or_key.lock_key)
  # A worker: a fresh job from its data.
  def run(job) = ActiveJob::Base.execute(job.serialize)

  # A place's score as the scripts write it: a whole number of the server's ms, a minute ahead.
  def in_a_minute_ms
    seconds, micros = redis.time
    (seconds * 1000) + (micros / 1000) + 60_000
  end

  # Enqueues `limit` jobs of one key, checks that the next is dropped, and returns them.
  def fill(klass, limit = 2)
    jobs = Array.new(limit) { klass.perform_later(1) }
    expect(jobs).to all(be_a(klass))
    expect(klass.perform_later(1)).to be(false)
    jobs
  end

  def declare(strategy, **options) = Class.new(ActiveJob::Base) { include Locking::UniqueJob }.unique_lock(strategy, ttl: 60, **options)

  # `workers` threads each try `attempts` times: enqueue and run (a worker
  # taking the job at once), or run only (:while_executing).
  def occupy(klass, workers: 6, attempts: 8)
    Array.new(workers) do
      Thread.new do
        attempts.times do
          job = klass.locking_options[:strategy] == :while_executing ? klass.new(1) : klass.perform_later(1)
          job ? run(job) : sleep(0.002)
        end
      end
    end.each(&:join)
  end

  # The witness saw 3 jobs inside at once, never 4, over more runs than
  # one round; no place is left.
  def expect_three_at_most_and_reached
    expect(LimitedJobs::Occupancy.most).to eq(3)
    expect(LimitedJobs::Occupancy.runs).to be > 3
    expect(LimitedJobs.members(LimitedJobs::OccupiedUntilExecuted.lock_key_for(1))).to eq([])
    expect(redis.keys("locking:*")).to eq([])
  end

  describe "declaring" do
    it "refuses a limit that is not an Integer from 1 to Semaphore::MAX_LIMIT, showing the value" do
      [0, -1, 2.0, "2", nil, Locking::Semaphore::MAX_LIMIT + 1].each do |bad|
        expect { declare(:until_executed, limit: bad) }
          .to raise_error(ArgumentError, "limit: must be an Integer from 1 to 1000000, got #{bad.inspect}")
      end
      expect { Locking.configure { |c| c.unique_job_defaults = { limit: 0 } } }.to raise_error(ArgumentError, /got 0/)
    end

    it "renews places with auto_renew: while perform runs past the TTL, as the runtime strategies do by default" do
      expect(LimitedJobs::WhileExecuting.locking_options).to include(auto_renew: true, limit: 2)
      expect(LimitedJobs::UntilExecuted.locking_options[:auto_renew]).to be(false)
      %i[while_executing until_executed].each do |strategy|
        klass = Class.new(LimitedJobs::Base) do
          define_singleton_method(:name) { "LimitedJobs::Renewed" }
          unique_lock strategy, ttl: 0.4, limit: 2, auto_renew: true
          # Stays in perform for 4 renewals (the renewer's, about every 133 ms: past the 400 ms TTL).
          define_method(:perform) do |*|
            renewed = Locking.stats[:renewed]
            deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
            sleep 0.01 until Locking.stats[:renewed] >= renewed + 4 || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
            LimitedJobs::PERFORMED << { places: LimitedJobs.members(lock_key), renewed: Locking.stats[:renewed] - renewed }
          end
        end
        stub_const("LimitedJobs::Renewed", klass)
        klass.perform_later(1)
        perform_enqueued_jobs
        expect(LimitedJobs::PERFORMED.last).to match(places: [be_a(String)], renewed: be >= 4)
        expect(redis.keys("locking:*")).to eq([]) # freed when perform ended
      end
    end

    it "keeps the lock for limit: 1 (the default): a string key, no limit in the job's data" do
      klass = LimitedJobs.job(:One, :until_executed, limit: 1)
      job = klass.perform_later(1)
      expect(redis.type("locking:#{job.lock_key}")).to eq("string")
      expect(job.serialize["locking"]).to eq("key" => job.lock_key, "token" => job.lock_token)
      expect(klass.perform_later(1)).to be(false)
    end
  end

  describe ":until_executed" do
    it "lets N jobs of one key wait or run, drops the N+1st, and frees each place when its perform ends" do
      first, second = fill(LimitedJobs::UntilExecuted)
      expect(enqueued_jobs.size).to eq(2)

      expect(first.lock_key).to eq(second.lock_key)
      expect(first.lock_key).to eq(LimitedJobs::UntilExecuted.lock_key_for(1)) # the lock's key scheme
      expect(redis.type("locking:#{first.lock_key}")).to eq("zset")
      expect(members(first)).to contain_exactly(first.lock_token, second.lock_token)
      expect(redis.pttl("locking:#{first.lock_key}")).to be_between(59_000, 60_000)
      expect(first.serialize["locking"]).to eq("key" => first.lock_key, "token" => first.lock_token, "limit" => 2)

      run(first)
      expect(LimitedJobs::PERFORMED.last[:places]).to contain_exactly(first.lock_token, second.lock_token) # held in perform
      expect(members(first)).to eq([second.lock_token])
      expect(LimitedJobs::UntilExecuted.perform_later(1)).to be_truthy # a place is free again
      expect(members(first).size).to eq(2)
    end

    it "at perform, retakes a place that expired in the queue, and with none free applies on_perform_conflict" do
      job = LimitedJobs::UntilExecuted.perform_later(1)
      key = "locking:#{job.lock_key}"
      redis.zrem(key, job.lock_token) # expired while waiting
      redis.zadd(key, in_a_minute_ms, "other")
      run(job)
      expect(LimitedJobs::PERFORMED.last[:places]).to contain_exactly(job.lock_token, "other") # retaken, then ran
      expect(members(job)).to eq(["other"])

      blocked = LimitedJobs::PerformRaising.perform_later(1)
      blocked_key = "locking:#{blocked.lock_key}"
      redis.zrem(blocked_key, blocked.lock_token)
      redis.zadd(blocked_key, [[in_a_minute_ms, "x"], [in_a_minute_ms, "y"]])
      expect { run(blocked) }.to raise_error(Locking::DuplicateJobError, /another enqueue holds/)
      expect(members(blocked)).to eq(%w[x y]) # the holders' places untouched
    end

    it "keeps its place across retry_on retries with the same token, then frees it" do
      job = LimitedJobs::Flaky.perform_later(1)
      perform_enqueued_jobs
      perform_enqueued_jobs
      expect(LimitedJobs::PERFORMED).to eq([[1, [job.lock_token]], [2, [job.lock_token]]])
      expect(redis.keys("locking:*")).to eq([])
    end
  end

  describe ":until_executing" do
    it "frees the place when perform starts" do
      jobs = fill(LimitedJobs::UntilExecuting)
      run(jobs.first)
      expect(LimitedJobs::PERFORMED.last[:places]).to eq([jobs.last.lock_token]) # its own place gone in perform
      expect(members(jobs.last)).to eq([jobs.last.lock_token])
    end
  end

  describe ":while_executing" do
    it "takes no place at enqueue, one around perform, and drops a run when N others run" do
      2.times { LimitedJobs::WhileExecuting.perform_later(1) }
      expect(redis.keys("locking:*")).to eq([])
      perform_enqueued_jobs
      expect(LimitedJobs::PERFORMED.map { |seen| seen[:places].size }).to eq([1, 1])
      expect(redis.keys("locking:*")).to eq([])

      key = LimitedJobs::WhileExecuting.lock_key_for(1)
      %w[a b].each { |token| Locking::Semaphore.new(key, limit: 2, token: token).acquire(60) }
      LimitedJobs::WhileExecuting.perform_now(1)
      expect(LimitedJobs::PERFORMED.size).to eq(2)
      expect(members(key)).to eq(%w[a b])
    end

    it "retries the N+1st run later with on_perform_conflict: :retry" do
      key = LimitedJobs::RetryBusy.lock_key_for(1)
      %w[a b].each { |token| Locking::Semaphore.new(key, limit: 2, token: token).acquire(60) }
      LimitedJobs::RetryBusy.perform_now(1)
      expect(enqueued_jobs.size).to eq(1)
      expect(enqueued_jobs.first[:at]).to be > Time.now.to_f + 20
      expect(LimitedJobs::PERFORMED).to eq([])
    end

    it "waits (wait:) for a place another run gives back" do
      key = LimitedJobs::Waiting.lock_key_for(1)
      holders = %w[a b].map { |token| Locking::Semaphore.new(key, limit: 2, token: token).tap { |s| s.acquire(60) } }
      waiting = Queue.new
      subscriber = ActiveSupport::Notifications.subscribe("wait.locking") { waiting << :waiting }
      runner = Thread.new { LimitedJobs::Waiting.perform_now(1) }
      expect(Timeout.timeout(5) { waiting.pop }).to eq(:waiting)
      expect(LimitedJobs::PERFORMED).to eq([])
      holders.first.release
      runner.join(10)
      expect(LimitedJobs::PERFORMED.size).to eq(1)
      expect(LimitedJobs::PERFORMED.last[:places]).to contain_exactly("b", be_a(String))
      expect(members(key)).to eq(["b"])
    ensure
      ActiveSupport::Notifications.unsubscribe(subscriber)
    end
  end

  describe ":until_and_while_executing" do
    it "holds N places at enqueue, and at perform swaps its own for one of N runtime places (<key>:run)" do
      jobs = fill(LimitedJobs::UntilAndWhile)
      run(jobs.first)
      expect(LimitedJobs::PERFORMED.last[:places]).to eq([jobs.last.lock_token])
      expect(LimitedJobs::PERFORMED.last[:run].size).to eq(1)
      expect(redis.keys("locking:*")).to eq(["locking:#{jobs.last.lock_key}"])
    end
  end

  describe ":until_expired" do
    it "keeps N places after perform, until their TTL" do
      jobs = fill(LimitedJobs::UntilExpired, 3)
      perform_enqueued_jobs
      expect(members(jobs.first)).to match_array(jobs.map(&:lock_token))
      expect(redis.pttl("locking:#{jobs.first.lock_key}")).to be > 50_000
    end
  end

  describe "on_conflict for the N+1st" do
    it "raises, logs, or calls a Proc, and enqueues nothing" do
      2.times { LimitedJobs::Raising.perform_later(1) }
      expect { LimitedJobs::Raising.perform_later(1) }.to raise_error(Locking::DuplicateJobError, /already enqueued/)
      log = StringIO.new
      logging = LimitedJobs.job(:Logging, :until_executed, limit: 2, on_conflict: :log)
      logging.logger = Logger.new(log)
      seen = []
      calling = LimitedJobs.job(:Calling, :until_executed, limit: 2, on_conflict: ->(job) { seen << job.arguments })
      3.times { logging.perform_later(1) }
      3.times { calling.perform_later(9) }
      expect(log.string).to include("LimitedJobs::Logging not enqueued")
      expect(seen).to eq([[9]])
      expect(enqueued_jobs.size).to eq(6)
      expect(members(logging.lock_key_for(1)).size).to eq(2)
    end
  end

  describe "the other policies" do
    it "applies on_perform_conflict: Proc, on_failure: :keep and on_redis_error: :allow / :deny to limited jobs" do
      seen = []
      calling = LimitedJobs.job(:PerformCalling, :while_executing, limit: 2, on_perform_conflict: ->(job) { seen << job.arguments })
      key = calling.lock_key_for(1)
      %w[a b].each { |token| Locking::Semaphore.new(key, limit: 2, token: token).acquire(60) }
      calling.perform_now(1)
      expect(seen).to eq([[1]])
      expect(members(key)).to eq(%w[a b])

      kept = LimitedJobs.job(:Kept, :until_executed, limit: 2, on_failure: :keep) { def perform(*) = raise(ArgumentError, "bad input") }
      failed = kept.perform_later(1)
      expect { run(failed) }.to raise_error(ArgumentError, "bad input")
      expect(members(failed)).to eq([failed.lock_token]) # kept until its TTL

      allowing = LimitedJobs.job(:Allowing, :until_executed, limit: 2, on_redis_error: :allow)
      denying = LimitedJobs.job(:Denying, :until_executed, limit: 2, on_redis_error: :deny)
      Locking.configure { |c| c.source = "redis://127.0.0.1:#{RedisServer.free_port}/0" }
      expect(allowing.perform_later(1)).to be_a(allowing)
      expect(denying.perform_later(1)).to be(false)
    end
  end

  describe "freeing places by hand" do
    it "unlock! deletes every place of a key; unlock_all! and UniqueJob.unlock_all! every key of the class" do
      2.times { LimitedJobs::UntilExecuted.perform_later(1) }
      LimitedJobs::UntilExecuted.perform_later(2)
      LimitedJobs::UntilExpired.perform_later(1)
      expect(LimitedJobs::UntilExecuted.unlock!(1)).to be(true)
      expect(members(LimitedJobs::UntilExecuted.lock_key_for(1))).to eq([])
      expect(LimitedJobs::UntilExecuted.unlock_all!).to eq(1)
      expect(redis.keys("locking:*")).to eq(["locking:#{LimitedJobs::UntilExpired.lock_key_for(1)}"])
      expect(Locking::UniqueJob.unlock_all!).to be >= 1
      expect(redis.keys("locking:*")).to eq([])
    end
  end

  it "keeps its limit through a migration: a phase-0 place counts in phase 1, whose places go to both servers" do
    queued = LimitedJobs::UntilExecuted.perform_later(1) # phase 0 (one server configured): a place on the source
    configure_both(:dual)
    second = LimitedJobs::UntilExecuted.perform_later(1)
    expect(LimitedJobs::UntilExecuted.perform_later(1)).to be(false) # 2 of 2: the source counts the phase-0 place
    key = "locking:#{queued.lock_key}"
    on_source = redis.zrange(key, 0, -1)
    on_destination = destination_server.redis.zrange(key, 0, -1)
    expect([on_source.size, on_destination.size]).to eq([2, 1])
    expect(on_source).to include(on_destination.first)

    [queued, second].each { |job| run(job) }
    expect(LimitedJobs::PERFORMED.size).to eq(2)
    expect([redis.keys("locking:*"), destination_server.redis.keys("locking:*")]).to eq([[], []])
  end

  describe "occupancy: never more than N inside perform, and N reached" do
    %w[UntilExecuted WhileExecuting UntilAndWhile].each do |name|
      it "holds for #{name} with limit: 3 (threads)" do
        klass = LimitedJobs.const_get(:"Occupied#{name}")
        occupy(klass)
        expect_three_at_most_and_reached
      end
    end

    it "holds for :while_executing across forked processes" do
      children = Array.new(5) do
        Forked.new do
          6.times.count { LimitedJobs::OccupiedWhileExecuting.perform_now(1) }
        end
      end
      children.each(&:result)
      expect_three_at_most_and_reached
    end
  end

  describe "on a Redis Cluster" do
    include_context "a cluster of 3 masters", "unique-job-limit"

    before { configure_both(:destination, source: nil, destination: cluster.settings) }

    it "keeps each key's places on the master of its slot, and holds the limit there" do
      jobs = (1..12).to_h { |id| [id, Array.new(2) { LimitedJobs::UntilExecuted.perform_later(id) }] }
      expect((1..12).map { |id| LimitedJobs::UntilExecuted.perform_later(id) }).to all(be(false))
      expect(cluster.keys_by_master("locking:LimitedJobs::UntilExecuted:*").size).to eq(3)
      jobs.each_value do |pair|
        node = cluster.node_for(prefixed(pair.first.lock_key))
        expect(node.redis.zrange(prefixed(pair.first.lock_key), 0, -1)).to match_array(pair.map(&:lock_token))
      end

      LimitedJobs.redis = cluster.node_for(prefixed(LimitedJobs::OccupiedUntilExecuted.lock_key_for(1))).redis
      occupy(LimitedJobs::OccupiedUntilExecuted)
      expect_three_at_most_and_reached
    end
  end
end
