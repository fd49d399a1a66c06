# frozen_string_literal: true

# The whole migration with no deploy: worker processes with `phase = :dynamic`
# keep running unique jobs while the operator walks phases 0 to 3 with
# `locking phase advance`; an occupancy witness counts overlaps.
RSpec.describe "dynamic phases" do
  def start_workers(count, stop_key)
    witness_url = witness_server.url
    count.times.map do
      fork do
        configure_both(:dynamic, phase_cache_ttl: 0.05)
        witness = Redis.new(url: witness_url)
        deadline = monotonic + 30
        until witness.exists?(stop_key) || monotonic > deadline
          # A safe point (no operation half done): a test that wants this
          # process stuck asks here, and it stops itself.
          if witness.del("pause:#{Process.pid}") == 1
            witness.set("paused:#{Process.pid}", "1")
            Process.kill(:STOP, Process.pid)
          end
          key = "job:#{rand(3)}"
          lock = Locking.new(key)
          next unless lock.acquire(5)

          witness.incr("overlaps") if witness.incr("inside:#{key}") > 1
          witness.incr("used:#{Locking.client.phase}")
          sleep(rand * 0.004)
          witness.decr("inside:#{key}")
          lock.release
        end
        exit!(0)
      end
    end
  end

  let(:witness) { witness_server.redis }

  # Phase 0 set, and `count` workers started in it (stopped by the "stop" key).
  def start_fleet(count)
    configure_both(:source)
    expect(locking_cli("phase", "set", "0", "--init")[0]).to eq(0)
    start_workers(count, "stop")
  end

  it "moves running processes through every phase without a restart, never running a job twice" do
    workers = start_fleet(3)
    begin
      expect(wait_for { fleet_phases.size == 3 }).to be(true)
      pids_before = fleet_members.map { |m| m[:process] }.sort

      expect(locking_cli("phase", "advance", "--wait", "5")[0]).to eq(0) # 0 -> 1
      expect(wait_for { fleet_phases.uniq == ["1"] }).to be(true)
      expect(locking_cli("backfill")[0]).to eq(0)
      status, out, = locking_cli("phase", "advance", "--wait", "5") # 1 -> 2, through the gate
      expect(status).to eq(0), out
      expect(wait_for { fleet_phases.uniq == ["2"] }).to be(true)
      status, out, = locking_cli("phase", "advance", "--wait", "5") # 2 -> 3
      expect(status).to eq(0), out
      expect(wait_for { fleet_phases.uniq == ["3"] }).to be(true)
      sleep 0.2

      # The same processes (no restart) did all of it.
      expect(fleet_members.map { |m| m[:process] }.sort).to eq(pids_before)
    ensure
      witness.set("stop", "1")
      statuses = workers.map { |pid| Process.wait2(pid).last }
    end

    expect(statuses).to all(be_success)
    expect(witness.get("overlaps").to_i).to eq(0)
    %w[source dual drain destination].each { |phase| expect(witness.get("used:#{phase}").to_i).to be > 0 }
    expect(lock_keys_left).to eq([])
  end

  it "refuses to advance while a process is still behind, and proceeds once it catches up" do
    workers = start_fleet(2)
    begin
      expect(wait_for { fleet_phases.size == 2 }).to be(true)
      expect(locking_cli("phase", "advance", "--wait", "5")[0]).to eq(0) # 0 -> 1
      expect(wait_for { fleet_phases.uniq == ["1"] }).to be(true)

      # Stuck, at a safe point: its heartbeat keeps saying 1. (A SIGSTOP from
      # outside could land between a phase-1 acquire's source and destination
      # writes, and the gate would rightly stay shut on that source-only lock.)
      witness.set("pause:#{workers.first}", "1")
      expect(wait_for { witness.exists?("paused:#{workers.first}") }).to be(true)
      expect(wait_for { File.read("/proc/#{workers.first}/stat").split[2] == "T" }).to be(true)
      expect(locking_cli("phase", "advance", "--wait", "5")[0]).to eq(0) # 1 -> 2 (nothing source-only)
      expect(wait_for { fleet_phases.sort == %w[1 2] }).to be(true)

      status, out, = locking_cli("phase", "advance") # 2 -> 3 must wait for the stuck one
      expect(status).to eq(1)
      expect(out).to include("not yet in phase 2")
      expect(destination_server.redis.get("{locking-control}:locking:phase")).to eq("2")

      Process.kill(:CONT, workers.first)
      status, out, = locking_cli("phase", "advance", "--wait", "5")
      expect(status).to eq(0), out
    ensure
      workers.each { |pid| Process.kill(:CONT, pid) rescue nil }
      witness.set("stop", "1")
      workers.each { |pid| Process.wait(pid) }
    end
    expect(witness.get("overlaps").to_i).to eq(0)
  end

  # Processes of their own, which exit: one normally, one killed.
  it "removes a heartbeat when its process exits normally; a killed one's shows its age in the refusal" do
    configure_both(:source)
    expect(locking_cli("phase", "set", "0", "--init")[0]).to eq(0)
    script = lambda do |ending|
      <<~RUBY
        require "locking"
        Locking.configure do |c|
          c.source = #{source_server.url.dump}
          c.destination = #{destination_server.url.dump}
          c.phase = :dynamic
        end
        Locking.new("job").locked?
        puts Process.pid
        $stdout.flush
        #{ending}
      RUBY
    end
    env = { "RUBYLIB" => File.expand_path("../../lib", __dir__), "RUBYOPT" => nil }
    exited = IO.popen(env, [RbConfig.ruby, "-e", script.("exit 0")], &:read).to_i
    killed = IO.popen(env, [RbConfig.ruby, "-e", script.("Process.kill(:KILL, Process.pid)")], &:read).to_i
    processes = fleet_members.map { |m| m[:process].split(":").last.to_i }
    expect(processes).to eq([killed])
    expect(processes).not_to include(exited)

    expect(locking_cli("phase", "advance")[0]).to eq(0) # 0 -> 1: the killed one was at 0
    status, out, = locking_cli("phase", "advance")
    expect(status).to eq(1)
    expect(out).to match(/:#{killed} \(phase 0, last seen \d+\.\ds ago, gone in \d+\.\ds unless it reports again\)/)
  end

  it "says that an error came from reading the fleet's phase" do
    configure_both(:source)
    Locking.configure do |c|
      c.destination = "redis://127.0.0.1:#{RedisServer.free_port}/0"
      c.phase = :dynamic
    end
    expect { Locking.new("job").locked? }
      .to raise_error(Locking::ConnectionError, /reading the fleet's phase \(phase = :dynamic\)/)
  end

  it "refuses to advance past phase 3, saying so" do
    configure_both(:source)
    expect(locking_cli("phase", "set", "3", "--init")[0]).to eq(0)
    status, out, = locking_cli("phase", "advance")
    expect(status).to eq(1)
    expect(out).to include("the last phase; nothing to advance")
    expect(out).not_to include("3 -> 3")
  end

  it "needs both servers" do
    Locking.reset_configuration!
    expect do
      Locking.configure do |c|
        c.source = source_server.url
        c.phase = :dynamic
      end
    end.to raise_error(ArgumentError, /dynamic phases need both/)
  end
end
