# frozen_string_literal: true

require "active_job"

ActiveJob::Base.queue_adapter = :test
ActiveJob::Base.logger = Logger.new(nil)

module ParitySpec
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

  # A perform that holds on until the example lets it go (bounded).
  class Gate
    def initialize
      @entered = Queue.new
      @open = Queue.new
    end

    def hold
      @entered << true
      Timeout.timeout(10) { @open.pop }
    end

    def wait_entered = Timeout.timeout(10) { @entered.pop }
    def open = @open << true
  end
end

# Issue 30 (parity with sidekiq-unique-jobs and activejob-uniqueness) and
# issue 28's constant leak, each on a real Redis.
RSpec.describe "Locking::UniqueJob: parity with other unique-job gems" do
  include ActiveJob::TestHelper

  let(:redis) { source_server.redis }
  let(:log) { StringIO.new }

  before do
    clear_enqueued_jobs
    clear_performed_jobs
  end

  def job_class(name, strategy = nil, **options, &body)
    logger = Logger.new(log)
    Class.new(ActiveJob::Base) do
      define_singleton_method(:name) { "Parity::#{name}" }
      include Locking::UniqueJob
      self.logger = logger
      unique_lock(strategy, **options) if strategy
      class_eval(&body) if body
    end
  end

  def lock_keys = redis.keys("locking:*").sort
  def token_of(key) = redis.get("locking:#{key}")

  def perform_copy(job)
    job.class.new.tap { |copy| copy.deserialize(job.serialize.merge("executions" => 0)) }.perform_now
  end

  def wait_until(seconds = 10)
    deadline = monotonic + seconds
    sleep 0.01 until (result = yield) || monotonic > deadline
    result
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

  describe "a scheduled job's TTL" do
    it "covers set(wait:) and wait_until: plus ttl, so a duplicate enqueued during the delay is dropped" do
      klass = job_class("Scheduled", :until_executed, ttl: 60)
      waiting = klass.set(wait: 600).perform_later(1)
      until_then = klass.set(wait_until: Time.now + 1200).perform_later(2)

      expect(redis.pttl("locking:#{waiting.lock_key}")).to be_between(655_000, 660_000)
      expect(redis.pttl("locking:#{until_then.lock_key}")).to be_between(1_255_000, 1_260_000)
      expect(klass.perform_later(1)).to be(false)
      expect(enqueued_jobs.size).to eq(2)
    end
  end

  describe "ownership when perform starts" do
    %i[until_executed until_and_while_executing].each do |strategy|
      context strategy.inspect do
        let(:held) { [] }
        let(:klass) do
          held = self.held
          redis = self.redis
          job_class("Owner#{strategy}", strategy, ttl: 60) do
            define_method(:perform) { |_id| held << redis.get("locking:#{lock_key}") }
          end
        end

        it "runs a job whose token still holds its lock" do
          job = klass.perform_later(1)
          perform_copy(job)
          expect(held.size).to eq(1)
          expect(lock_keys).to eq([])
        end

        it "takes a lock that expired in the queue again with the job's own token, and runs" do
          job = klass.perform_later(1)
          redis.del("locking:#{job.lock_key}") # expired while the job waited
          seen = []
          subscriber = ActiveSupport::Notifications.subscribe("acquire.locking") { |*, payload| seen << payload }
          perform_copy(job)
          ActiveSupport::Notifications.unsubscribe(subscriber)

          expect(seen.select { |payload| payload[:retaken] }.map { |payload| payload[:lock_key] }).to eq([job.lock_key])
          # :until_executed holds it while it runs; :until_and_while_executing frees it at start again.
          expect(held).to eq([strategy == :until_executed ? job.lock_token : nil])
          expect(lock_keys).to eq([])
        end

        it "drops, and logs, a job whose lock another enqueue of the same job holds; that lock stays" do
          first = klass.perform_later(1)
          redis.del("locking:#{first.lock_key}") # expired in the queue
          second = klass.perform_later(1)        # the same job again, its own token
          expect(token_of(first.lock_key)).to eq(second.lock_token)

          perform_copy(first)
          expect(held).to eq([])
          expect(log.string).to include("not performed", first.lock_key)
          expect(token_of(first.lock_key)).to eq(second.lock_token)
          expect(redis.pttl("locking:#{first.lock_key}")).to be > 50_000

          perform_copy(second)
          expect(held.size).to eq(1)
          expect(lock_keys).to eq([])
        end
      end
    end
  end

  describe ":until_and_while_executing" do
    it "frees the enqueue lock when perform starts, holds a runtime lock while it runs, drops a second perform" do
      gate = ParitySpec::Gate.new
      runs = Queue.new
      klass = job_class("UntilAndWhile", :until_and_while_executing, ttl: 60) do
        define_method(:perform) do |id|
          runs << id
          gate.hold if id == 1
        end
      end
      first = klass.perform_later(1)
      expect(lock_keys).to eq(["locking:#{first.lock_key}"])
      expect(token_of(first.lock_key)).to eq(first.lock_token)
      expect(klass.perform_later(1)).to be(false)

      running = Thread.new { perform_copy(first) }
      gate.wait_entered
      # The enqueue lock is free: the same job can be enqueued again; the runtime lock is held.
      expect(lock_keys).to eq(["locking:#{first.lock_key}:run"])
      expect(token_of("#{first.lock_key}:run")).not_to eq(first.lock_token)
      second = klass.perform_later(1)
      expect(second).to be_truthy
      expect(token_of(first.lock_key)).to eq(second.lock_token)

      perform_copy(second) # while the first still runs: on_perform_conflict :drop
      expect(runs.size).to eq(1)
      expect(log.string).to include("already running")
      expect(lock_keys).to eq(["locking:#{first.lock_key}:run"]) # its enqueue lock was freed at perform start

      gate.open
      running.join(10)
      expect(lock_keys).to eq([])
      expect(runs.size).to eq(1)
    end

    it "waits wait: seconds for its runtime lock, then follows on_perform_conflict (:raise)" do
      klass = job_class("UntilAndWhileRaise", :until_and_while_executing, ttl: 60, wait: 0.2, on_perform_conflict: :raise) do
        define_method(:perform) { |_| raise "ran" }
      end
      job = klass.perform_later(1)
      redis.set("locking:#{job.lock_key}:run", "running-elsewhere", px: 60_000)
      started = monotonic
      expect { perform_copy(job) }.to raise_error(Locking::DuplicateJobError, /already running/)
      expect(monotonic - started).to be >= 0.2
      expect(lock_keys).to eq(["locking:#{job.lock_key}:run"]) # its enqueue lock freed, the other run's kept
      expect(token_of("#{job.lock_key}:run")).to eq("running-elsewhere")
    end

    it "unlock! frees both of its locks" do
      klass = job_class("UntilAndWhileUnlock", :until_and_while_executing, ttl: 60)
      job = klass.perform_later(1)
      redis.set("locking:#{job.lock_key}:run", "running", px: 60_000)
      expect(klass.unlock!(1)).to be(true)
      expect(lock_keys).to eq([])
    end
  end

  describe "unique_job_defaults" do
    it "gives every job the configured options; a class's own win, and later changes apply" do
      Locking.configure { |c| c.unique_job_defaults = { ttl: 3600, on_conflict: :log } }
      plain = job_class("Defaulted", :until_executed)
      own = job_class("OwnOptions", :until_executed, ttl: 60, on_conflict: :raise)

      job = plain.perform_later(1)
      expect(redis.pttl("locking:#{job.lock_key}")).to be_between(3_595_000, 3_600_000)
      expect(plain.perform_later(1)).to be(false)
      expect(log.string).to include("Parity::Defaulted not enqueued")
      mine = own.perform_later(1)
      expect(redis.pttl("locking:#{mine.lock_key}")).to be_between(55_000, 60_000)
      expect { own.perform_later(1) }.to raise_error(Locking::DuplicateJobError)

      Locking.configure { |c| c.unique_job_defaults = { ttl: 120 } }
      later = plain.perform_later(2)
      expect(redis.pttl("locking:#{later.lock_key}")).to be_between(115_000, 120_000)
    end

    it "refuses bad defaults with an ArgumentError naming the value, and keeps the ones it had" do
      Locking.configure { |c| c.unique_job_defaults = { ttl: 30 } }
      [[{ ttl: -1 }, /-1/], [{ on_conflict: :ignore }, /:ignore/], [{ bogus: 1 }, /:bogus/],
       ["ttl=1", /"ttl=1"/], [{ wait: "2" }, /"2"/]].each do |defaults, message|
        expect { Locking.configure { |c| c.unique_job_defaults = defaults } }.to raise_error(ArgumentError, message)
      end
      expect(Locking.configuration.unique_job_defaults).to eq(ttl: 30)
    end

    it "reads defaults as config/locking.yml gives them: string keys and values" do
      Locking.configure { |c| c.unique_job_defaults = { "ttl" => 90, "on_conflict" => "log", "key_scope" => "class" } }
      expect(Locking.configuration.unique_job_defaults).to eq(ttl: 90, on_conflict: :log, key_scope: :class)
      job = job_class("FromYaml", :until_executed).perform_later(1)
      expect(redis.pttl("locking:#{job.lock_key}")).to be_between(85_000, 90_000)
    end

    it "needs a ttl from somewhere" do
      expect { job_class("NoTtl", :until_executed) }.to raise_error(ArgumentError, /needs ttl/)
    end
  end

  describe "options" do
    it "takes ttl: as a Proc called with the job's arguments" do
      klass = job_class("TtlProc", :until_executed, ttl: ->(seconds, _name) { seconds })
      job = klass.perform_later(90, "x")
      expect(redis.pttl("locking:#{job.lock_key}")).to be_between(85_000, 90_000)

      expect { klass.perform_later(0, "y") }
        .to raise_error(ArgumentError, /ttl Proc of Parity::TtlProc must be a positive number of seconds, returned 0/)
      expect(lock_keys).to eq(["locking:#{job.lock_key}"])
      expect(enqueued_jobs.size).to eq(1)
    end

    it "refuses every bad option with an ArgumentError naming the bad value" do
      bad = [
        [:until_executed, { ttl: "60" }, /"60"/], [:until_executed, { ttl: 0 }, /got 0/],
        [:until_executed, { ttl: 60, on_perform_conflict: :skip }, /:skip/],
        [:until_executed, { ttl: 60, on_redis_error: :ignore }, /:ignore/],
        [:until_executed, { ttl: 60, on_failure: :forget }, /:forget/],
        [:until_executed, { ttl: 60, key: "k" }, /"k"/],
        [:until_executed, { ttl: 60, key_scope: :world }, /:world/],
        [:until_executed, { ttl: 60, key_scope: :global }, /key_scope: :global needs a key/],
        [:while_executing, { ttl: 60, wait: -1 }, /-1/],
        [:until_executed, { ttl: 60, wait: 3 }, /wait: 3 is for/],
        [:until_executed, { ttl: 60, retry_wait: "5" }, /"5"/],
        [:until_executed, { ttl: 60, bogus: 1 }, /:bogus/],
        [:until_forever, { ttl: 60 }, /:until_forever/]
      ]
      bad.each do |strategy, options, message|
        expect { job_class("Bad", strategy, **options) }.to raise_error(ArgumentError, message)
      end
    end

    it "calls an on_perform_conflict Proc with the job, and does not perform it" do
      seen = []
      ran = []
      klass = job_class("ConflictProc", :while_executing, ttl: 60, on_perform_conflict: ->(job) { seen << job.arguments }) do
        define_method(:perform) { |id| ran << id }
      end
      redis.set("locking:#{klass.lock_key_for(4)}", "running-elsewhere", px: 60_000)
      klass.new(4).perform_now
      expect([seen, ran]).to eq([[[4]], []])
      expect(token_of(klass.lock_key_for(4))).to eq("running-elsewhere")
    end

    it "asks an on_redis_error Proc (job, error): :allow and :deny as named, anything else raises" do
      answers = { 1 => :allow, 2 => :deny, 3 => :maybe }
      seen = []
      klass = job_class("RedisErrorProc", :until_executed, ttl: 60,
                                                           on_redis_error: lambda { |job, error|
                                                             seen << [job.arguments.first, error.class]
                                                             answers[job.arguments.first]
                                                           })
      Locking.configure { |c| c.source = "redis://127.0.0.1:#{RedisServer.free_port}/0" }
      begin
        expect(klass.perform_later(1)).to be_truthy
        expect(klass.perform_later(2)).to be(false)
        expect { klass.perform_later(3) }.to raise_error(Locking::ConnectionError)
      ensure
        configure_single
      end
      expect(seen).to eq([[1, Locking::ConnectionError], [2, Locking::ConnectionError], [3, Locking::ConnectionError]])
      expect(enqueued_jobs.size).to eq(1)
      expect(lock_keys).to eq([])
    end

    it "shares one lock between job classes with key_scope: :global" do
      key = ->(account, *) { "account:#{account}" }
      import = job_class("Import", :until_executed, ttl: 60, key: key, key_scope: :global)
      export = job_class("Export", :until_executed, ttl: 60, key: key, key_scope: :global)
      job = import.perform_later(7)
      expect(job.lock_key).to eq("account:7")
      expect(lock_keys).to eq(["locking:account:7"])
      expect(export.perform_later(7)).to be(false)
      expect(export.perform_later(8)).to be_truthy
      expect(lock_keys).to eq(%w[locking:account:7 locking:account:8])
    end
  end

  describe "wait: for the runtime lock" do
    it "waits for the run that holds the lock, then runs: never two at once" do
      gate = ParitySpec::Gate.new
      occupancy = ParitySpec::Occupancy.new
      runs = Queue.new
      klass = job_class("Waiting", :while_executing, ttl: 60, wait: 10, key: ->(*) { "one" }) do
        define_method(:perform) do |first|
          occupancy.inside do
            runs << first
            gate.hold if first
          end
        end
      end
      waiting = Queue.new
      subscriber = ActiveSupport::Notifications.subscribe("wait.locking") { |*, payload| waiting << payload[:lock_key] }
      first = Thread.new { klass.new(true).perform_now }
      gate.wait_entered
      second = Thread.new { klass.new(false).perform_now }
      expect(Timeout.timeout(10) { waiting.pop }).to eq(klass.lock_key_for(false))
      expect(runs.size).to eq(1)
      gate.open
      [first, second].each { |thread| thread.join(10) }
      ActiveSupport::Notifications.unsubscribe(subscriber)

      expect([runs.size, occupancy.runs, occupancy.most]).to eq([2, 2, 1])
      expect(lock_keys).to eq([])
    end

    it "gives up after wait: seconds, then applies on_perform_conflict" do
      klass = job_class("GivingUp", :while_executing, ttl: 60, wait: 0.3) { define_method(:perform) { |_| raise "ran" } }
      redis.set("locking:#{klass.lock_key_for(1)}", "running-elsewhere", px: 60_000)
      started = monotonic
      klass.new(1).perform_now
      expect(monotonic - started).to be >= 0.3
      expect(log.string).to include("already running")
      expect(token_of(klass.lock_key_for(1))).to eq("running-elsewhere")
    end
  end
end
