# frozen_string_literal: true

# A real Sidekiq process (Debian's ruby-sidekiq) running ActiveJob jobs of a
# small app (spec/support/sidekiq_app.rb) against real Redis servers.
RSpec.describe "unique jobs on a real Sidekiq", :sidekiq do
  APP = File.expand_path("../support/sidekiq_app.rb", __dir__)
  SIDEKIQ = Gem.bin_path("sidekiq", "sidekiq") rescue "sidekiq"

  let(:witness) { witness_server.redis }
  let(:jobs) { source_server.redis.dup.tap { |r| r.select(1) } } # Sidekiq's queues

  after { jobs.close }

  def env(phase, destination: destination_server.url)
    {
      "JOBS_REDIS_URL" => source_server.url(1), # the jobs Redis; locks live in its db 0 in phase 0
      "LOCKING_SOURCE_URL" => source_server.url,
      "LOCKING_DESTINATION_URL" => destination,
      "LOCKING_PHASE" => phase,
      "WITNESS_URL" => witness_server.url,
      "RUBYOPT" => nil, "BUNDLE_GEMFILE" => nil
    }
  end

  def start_sidekiq(phase, **settings)
    log = File.join(source_server.dir, "sidekiq.log")
    pid = Process.spawn(env(phase, **settings), RbConfig.ruby, SIDEKIQ, "-r", APP, "-c", "5", "-q", "default",
                        out: log, err: %i[child out])
    [pid, log]
  end

  # Runs the block beside a Sidekiq process (yielded: its pid and log), stopped afterwards.
  def with_sidekiq(phase, **settings)
    pid, log = start_sidekiq(phase, **settings)
    yield pid, log
  ensure
    stop_sidekiq(pid) if pid
  end

  def stop_sidekiq(pid)
    Process.kill(:TERM, pid)
    Timeout.timeout(15) { Process.wait(pid) }
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  rescue Timeout::Error
    Process.kill(:KILL, pid)
    Process.wait(pid)
  end

  # Enqueues from a separate Ruby process, as a web server would.
  def enqueue(phase, code, **settings)
    script = "require #{APP.dump}; #{code}"
    out = IO.popen(env(phase, **settings), [RbConfig.ruby, "-e", script], err: %i[child out], &:read)
    raise "enqueue failed: #{out}" unless $?.success?

    out
  end

  def wait_for(seconds)
    deadline = monotonic + seconds
    sleep 0.05 until (result = yield) || monotonic > deadline
    result
  end

  def lock_keys = lock_keys_left

  it "runs a job enqueued many times at once exactly once; a retried job keeps then frees its lock" do
    configure_both(:dual)
    with_sidekiq("source") do |_pid, log|
      # Four processes enqueue the same jobs at the same moment.
      enqueuers = 4.times.map do
        fork do
          enqueue("source", "r = 10.times.map { |i| UniqueImportJob.perform_later(i % 3) }; puts r.count(&:itself)")
          exit!(0)
        end
      end
      enqueuers.each { |p| Process.wait(p) }
      enqueue("source", "FlakyJob.perform_later(7)")

      ran = wait_for(30) { (0..2).all? { |i| witness.get("runs:#{i}") } && witness.llen("flaky:7") >= 2 && lock_keys.empty? }
      expect(ran).to be_truthy, File.read(log)
      sleep 0.5 # anything else would have run by now
      expect((0..2).map { |i| witness.get("runs:#{i}").to_i }).to eq([1, 1, 1])
      expect(witness.get("overlaps").to_i).to eq(0)
      expect(witness.lrange("flaky:7", 0, -1)).to eq(["1:held", "2:held"])
      expect(lock_keys).to eq([])
    end
  end

  # Locking on the source, and a real Sidekiq process on it for the block.
  def with_source_sidekiq(&)
    configure_both(:source)
    with_sidekiq("source", &)
  end

  # A real Sidekiq on the source running LongJob `id` (its other arguments
  # as Ruby source); yields the process's pid and log once the job runs.
  def with_long_job(id, arguments, &)
    with_source_sidekiq do |pid, log|
      expect(enqueue("source", "p LongJob.perform_later(#{id}, #{arguments}) != false")).to eq("true\n")
      expect(wait_for(15) { witness.get("long:running:#{id}") }).to be_truthy, File.read(log)
      yield pid, log
    end
  end

  it "never duplicates a unique job running 3 times its TTL (auto_renew renews its lock while it runs)" do
    with_long_job(1, "3.0, hold: true") do |_pid, log|
      # Past the 1 s TTL, again and again: each enqueue finds the lock held (the job runs 3 s at least,
      # and on until it is let go).
      results = Array.new(4) do
        sleep 0.5
        enqueue("source", "p LongJob.perform_later(1, 0.1) != false").strip
      end
      expect(results).to eq(%w[false false false false])
      witness.set("long:release:1", "1")
      expect(wait_for(15) { witness.get("long:done:1") }).to be_truthy, File.read(log)
      sleep 0.5
      expect([witness.get("long:runs:1").to_i, witness.get("long:overlaps").to_i]).to eq([1, 0])
      expect(wait_for(5) { lock_keys.empty? }).to be(true)
    end
  end

  it "frees the lock of a Sidekiq process SIGKILLed mid-job within its TTL; the job enqueued again then runs" do
    with_long_job(2, "30") do |pid, _log|
      sleep 1.5 # renewed past its 1 s TTL
      expect(lock_keys).to eq(["locking:LongJob:2"])
      Process.kill(:KILL, pid)
      killed_at = monotonic
      Process.wait(pid)
      expect(wait_for(3) { lock_keys.empty? }).to be(true)
      freed_after = monotonic - killed_at
      puts "\n  SIGKILLed Sidekiq: its job's lock (TTL 1 s) was gone #{freed_after.round(2)} s after the kill"
      expect(freed_after).to be <= 1.2
    end
    # The killed run is lost (basic fetch): enqueued again, it is accepted and runs.
    with_sidekiq("source") do |_pid, log|
      expect(enqueue("source", "p LongJob.perform_later(2, 0.1) != false")).to eq("true\n")
      expect(wait_for(15) { witness.get("long:done:2") }).to be_truthy, File.read(log)
      expect(witness.get("long:runs:2").to_i).to eq(2)
    end
  end

  it "runs each job once, with no retry, when the destination is down in phase 0 (release errors never fail a job)" do
    down = "redis://127.0.0.1:#{RedisServer.free_port}/0" # configured, as before a migration, but down
    with_sidekiq("source", destination: down) do |_pid, log|
      enqueue("source", "40.times { |i| UniqueImportJob.perform_later(100 + i) }", destination: down)
      done = wait_for(60) { (100...140).all? { |i| witness.get("runs:#{i}") } && lock_keys.empty? }
      expect(done).to be_truthy, File.read(log)
      expect(jobs.zcard("retry")).to eq(0) # read before the last check: a failed job lands here at once
      expect((100...140).map { |i| witness.get("runs:#{i}").to_i }).to all(eq(1))
      expect(witness.get("overlaps").to_i).to eq(0)
      expect(jobs.zcard("retry")).to eq(0)
      expect(jobs.zcard("dead")).to eq(0)
      expect(lock_keys).to eq([])
    end
  end

  it "releases locks taken before a phase move after it (source to dual), leaving none" do
    configure_both(:dual)
    expect(locking_cli("phase", "set", "source", "--init")[0]).to eq(0)
    with_sidekiq("dynamic") do |_pid, log|
      enqueue("source", "3.times { |i| GatedJob.perform_later(i) }")
      expect(source_server.redis.keys("locking:GatedJob:*").size).to eq(3)
      expect(wait_for(20) { witness.get("gated:started").to_i == 3 }).to be_truthy, File.read(log)

      expect(locking_cli("phase", "set", "dual")[0]).to eq(0) # the Sidekiq process follows within 0.1s
      sleep 0.3
      witness.set("go", "1")

      expect(wait_for(20) { witness.llen("gated:phases") == 3 && lock_keys.empty? }).to be_truthy, File.read(log)
      expect(witness.lrange("gated:phases", 0, -1).uniq).to eq(["dual"])
      # The first read of phase 1 still reports 0 as in use (an operation may
      # have begun on the cached phase), until the next read: the highest is 1.
      expect(fleet_members.map { |m| m[:highest] }).to all(eq(:dual))
      expect(lock_keys).to eq([])
    end
  end

  context "parity (issue 30)" do
    # Whether perform_later, run in an enqueuing process, enqueued the job.
    def enqueued?(call, setup = nil) = enqueue("source", "#{setup}; p #{call} != false") == "true\n"

    # Nothing waiting, scheduled or running any more.
    def drained?
      jobs.keys("queue:*").empty? && jobs.zcard("schedule").zero? && jobs.keys("*:workers").all? { |key| jobs.hlen(key).zero? }
    end

    # Once all is done: the job ran once, never beside another copy (the occupancy witness), and left no lock.
    def expect_one_run(name, id, log)
      ran = wait_for(30) { witness.get("#{name}:runs:#{id}") && lock_keys.empty? && drained? }
      expect(ran).to be_truthy, File.read(log)
      expect([witness.get("#{name}:runs:#{id}").to_i, witness.get("#{name}:overlaps").to_i]).to eq([1, 0])
    end

    it "keeps the lock of a job scheduled past its TTL (set(wait:)) for the delay: a duplicate meanwhile is dropped" do
      with_source_sidekiq do |_pid, log|
        expect(enqueued?("ScheduledJob.set(wait: 8).perform_later(1)")).to be(true)
        # Past its 1 s TTL: a probe of that TTL taken after the enqueue is gone, and the job's lock lives on.
        source_server.redis.set("probe", "1", px: 1_000)
        expect(wait_for(10) { !source_server.redis.exists?("probe") }).to be(true)
        expect(source_server.redis.pttl("locking:ScheduledJob:1")).to be > 0
        expect(enqueued?("ScheduledJob.perform_later(1)")).to be(false)

        expect_one_run("scheduled", 1, log)
      end
    end

    it "runs only the copy that owns the lock when a job's lock expired in the queue and was taken again" do
      configure_both(:source)
      expect(enqueued?("RetakenJob.perform_later(1, 0.5)")).to be(true)
      expect(wait_for(10) { lock_keys.empty? }).to be(true) # expired while it waited
      expect(enqueued?("RetakenJob.perform_later(1, 60)")).to be(true)
      expect(jobs.llen("queue:default")).to eq(2)

      with_sidekiq("source") do |_pid, log| # -c 5: both copies are taken at once
        expect_one_run("retaken", 1, log)
      end
    end

    it "frees the lock of a scheduled job deleted through Sidekiq's API: the same job enqueued again runs, once" do
      with_source_sidekiq do |_pid, log|
        expect(enqueued?("ScheduledJob.set(wait: 600).perform_later(2)")).to be(true)
        expect(enqueued?("ScheduledJob.perform_later(2)")).to be(false)
        expect(enqueued?("ScheduledJob.perform_later(2)", "Sidekiq::ScheduledSet.new.each(&:delete)")).to be(true)
        expect_one_run("scheduled", 2, log)
      end
    end

    it "frees the lock of a job that dies (no retries left) through locking/sidekiq's death handler" do
      with_source_sidekiq do |_pid, log|
        expect(enqueued?("DyingJob.perform_later(1)")).to be(true)
        died = wait_for(20) { jobs.zcard("dead") == 1 && lock_keys.empty? }
        expect(died).to be_truthy, "#{lock_keys.inspect}\n#{File.read(log)}"
        expect(witness.get("dying:runs:1").to_i).to eq(1)
        expect(enqueued?("DyingJob.perform_later(1)")).to be(true) # at once, not after 60 s
      end
    end
  end
end
