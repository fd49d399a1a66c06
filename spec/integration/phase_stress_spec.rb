# frozen_string_literal: true

# Processes in two adjacent phases (a rolling deploy), some flipping phase
# between operations, contend on a few keys. An occupancy witness on a third
# server (INCR on entry, DECR on exit) must never exceed 1, and no lock key
# may remain at the end. Bounded: a few seconds and a fixed number of loops.
RSpec.describe "adjacent phases under contention" do
  PAIRS = [%i[source dual], %i[dual drain], %i[drain destination]].freeze
  SECONDS = 1.5
  KEYS = %w[job:a job:b job:c].freeze

  def run_worker(id, phases, flipping, witness_url)
    witness = Redis.new(url: witness_url)
    report = Hash.new(0)
    deadline = monotonic + SECONDS
    phase = phases[id % 2]
    configure_both(phase)
    2_000.times do
      break if monotonic > deadline

      key = KEYS.sample
      lock = Locking.new(key)
      switch_phase(phase = phases.sample) if flipping
      if lock.acquire(5)
        inside = witness.incr("inside:#{key}")
        report[:overlaps] += 1 if inside > 1
        report[:runs] += 1
        sleep(rand * 0.003)
        witness.decr("inside:#{key}")
        switch_phase(phase = phases.sample) if flipping # release in the other phase, sometimes
        report[:release_failures] += 1 unless lock.release
      else
        report[:refused] += 1
      end
    rescue Locking::Error => e
      report[:errors] += 1
      warn "worker #{id}: #{e.class}: #{e.message}"
    end
    report
  end

  PAIRS.each do |phases|
    it "#{phases.join(' + ')}: never two holders, nothing left behind" do
      # Start every server here: a child must not start its own.
      configure_both(phases.first)
      witness_url = witness_server.url
      readers = 4.times.map do |id|
        reader, writer = IO.pipe
        pid = fork do
          reader.close
          report = run_worker(id, phases, id >= 2, witness_url)
          writer.write(Marshal.dump(report))
          writer.close
          exit!(0)
        end
        writer.close
        [pid, reader]
      end
      reports = readers.map do |pid, reader|
        data = reader.read
        Process.wait(pid)
        Marshal.load(data)
      end

      total = reports.each_with_object(Hash.new(0)) { |r, sum| r.each { |k, v| sum[k] += v } }
      expect(total[:overlaps]).to eq(0)
      expect(total[:errors]).to eq(0)
      expect(total[:release_failures]).to eq(0)
      expect(total[:runs]).to be > 50
      expect(total[:refused]).to be > 0 # they did contend
      expect(lock_keys_left).to eq([])
      expect(KEYS.map { |key| witness_server.redis.get("inside:#{key}").to_i }).to all(eq(0))
    end
  end
end
