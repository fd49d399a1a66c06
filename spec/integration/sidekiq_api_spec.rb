# frozen_string_literal: true

require "active_job"
require "sidekiq"
require "locking/sidekiq"

# `require "locking/sidekiq"`: Sidekiq's API (Debian's Sidekiq 6.4) deleting
# a unique job frees its lock, on real Redis: the jobs in db 1 of the source
# server, the locks in db 0. (A real Sidekiq process: spec/integration/sidekiq_spec.rb.)
RSpec.describe "locking/sidekiq: a job deleted through Sidekiq's API frees its lock", :sidekiq do
  let(:locks) { source_server.redis }
  let(:jobs) { source_server.redis.dup.tap { |r| r.select(1) } }
  let(:job_class) do
    Class.new(ActiveJob::Base) do
      def self.name = "SidekiqApi::ImportJob"
      include Locking::UniqueJob
      self.queue_adapter = :sidekiq
      self.logger = Logger.new(nil)
      unique_lock :until_executed, ttl: 600
      def perform(*) = nil
    end
  end

  before do
    Sidekiq.redis = { url: source_server.url(1) }
    Sidekiq.logger.level = Logger::WARN
  end

  def lock_keys = locks.keys("locking:*").sort
  def lock_of(job) = "locking:#{job.lock_key}"
  def queue = Sidekiq::Queue.new("default")
  def entry_of(set, job) = set.find { |entry| entry.args.first["job_id"] == job.job_id }

  # Takes a job's payload out of its queue (as a worker or a failure would).
  def take_payload(job)
    record = queue.find { |r| r.args.first["job_id"] == job.job_id }
    jobs.lrem("queue:default", 1, record.value)
    record.value
  end

  it "Queue#clear frees the locks of exactly the jobs it removed, each by its own token" do
    first, second, third = (1..3).map { |i| job_class.perform_later(i) }
    locks.set(lock_of(third), "taken-again", px: 600_000) # third's expired and another enqueue took it
    expect(queue.size).to eq(3)

    queue.clear
    expect(queue.size).to eq(0)
    expect(jobs.keys("queue:*")).to eq([]) # nothing left aside
    expect(jobs.smembers("queues")).to eq([])
    expect(lock_keys).to eq([lock_of(third)])
    expect(locks.get(lock_of(third))).to eq("taken-again")
    expect([first, second].map { |job| locks.exists(lock_of(job)) }).to eq([0, 0])
    expect(job_class.perform_later(1)).to be_truthy # enqueued again at once, not after its TTL
  end

  it "a job's #delete frees its lock; a stale record of a job a worker took frees nothing" do
    deleted, taken, kept = (1..3).map { |i| job_class.perform_later(i) }
    stale = queue.find { |r| r.args.first["job_id"] == taken.job_id }
    jobs.lrem("queue:default", 1, stale.value) # a worker took it: it runs, holding its lock

    expect(queue.find { |r| r.args.first["job_id"] == deleted.job_id }.delete).to be(true)
    expect(stale.delete).to be(false)
    expect(lock_keys).to eq([lock_of(taken), lock_of(kept)].sort)
    expect(locks.get(lock_of(taken))).to eq(taken.lock_token)
  end

  it "frees the lock of a job deleted from the scheduled set, by entry or by the set's #delete and #clear" do
    by_entry, by_jid, by_clear = (1..3).map { |i| job_class.set(wait: 600).perform_later(i) }
    scheduled = Sidekiq::ScheduledSet.new
    expect(scheduled.size).to eq(3)

    expect(entry_of(scheduled, by_entry).delete).to be(true)
    expect(lock_keys).to eq([lock_of(by_jid), lock_of(by_clear)].sort)
    entry = entry_of(scheduled, by_jid)
    expect(scheduled.delete(entry.score, entry.jid)).to be(true)
    expect(lock_keys).to eq([lock_of(by_clear)])
    scheduled.clear
    expect(lock_keys).to eq([])
    expect(jobs.keys("schedule*")).to eq([])
  end

  it "frees the lock of a job deleted from the retry or the dead set" do
    retried, dead, cleared = (1..3).map { |i| job_class.perform_later(i) }
    Sidekiq::RetrySet.new.schedule(Time.now.to_f + 600, Sidekiq.load_json(take_payload(retried)))
    Sidekiq::DeadSet.new.kill(take_payload(dead), notify_failure: false)
    Sidekiq::DeadSet.new.kill(take_payload(cleared), notify_failure: false)
    expect(lock_keys.size).to eq(3)

    entry_of(Sidekiq::RetrySet.new, retried).delete
    expect(lock_keys).to eq([lock_of(dead), lock_of(cleared)].sort)
    entry_of(Sidekiq::DeadSet.new, dead).delete
    expect(lock_keys).to eq([lock_of(cleared)])
    Sidekiq::DeadSet.new.clear
    expect(lock_keys).to eq([])
  end

  it "frees a job's lock through a death handler when it dies (here: killed through the API)" do
    dying, other = (1..2).map { |i| job_class.perform_later(i) }
    expect(Sidekiq.death_handlers).to include(Locking::SidekiqIntegration::DEATH_HANDLER)
    Sidekiq::DeadSet.new.kill(take_payload(dying))
    expect(lock_keys).to eq([lock_of(other)])
    expect(Sidekiq::DeadSet.new.size).to eq(1) # dead, not deleted
  end

  it "frees a limited job's place (unique_lock ..., limit:) by #delete and through the death handler" do
    limited = Class.new(ActiveJob::Base) do
      def self.name = "SidekiqApi::LimitedJob"
      include Locking::UniqueJob
      self.queue_adapter = :sidekiq
      self.logger = Logger.new(nil)
      unique_lock :until_executed, ttl: 600, limit: 3
      def perform(*) = nil
    end
    deleted, dying, kept = Array.new(3) { limited.perform_later(1) }
    key = lock_of(kept)
    expect(limited.perform_later(1)).to be(false)

    expect(queue.find { |r| r.args.first["job_id"] == deleted.job_id }.delete).to be(true)
    expect(locks.zrange(key, 0, -1)).to contain_exactly(dying.lock_token, kept.lock_token)
    Sidekiq::DeadSet.new.kill(take_payload(dying))
    expect(locks.zrange(key, 0, -1)).to eq([kept.lock_token])
  end

  it "leaves jobs without a lock alone" do
    plain = Class.new(ActiveJob::Base) do
      def self.name = "SidekiqApi::PlainJob"
      self.queue_adapter = :sidekiq
      def perform(*) = nil
    end
    plain.perform_later(1)
    Sidekiq::Client.push("class" => "SomeWorker", "args" => [1, { "locking" => "not a lock" }])
    Locking.new("unrelated").acquire(60)
    queue.each(&:delete)
    expect(queue.size).to eq(0)
    expect(lock_keys).to eq(["locking:unrelated"])
  end
end
