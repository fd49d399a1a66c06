# frozen_string_literal: true

# The phase protocol's examples over real servers, shared by the standalone
# specs and the cluster spec (whose `destination_server` is a cluster).
module PhaseExamples
  HOLDINGS = { none: nil, ours: "ours", foreign: "foreign" }.freeze
  PHASES = %i[source dual drain destination].freeze
  PAIRS = [%i[source dual], %i[dual drain], %i[drain destination]].freeze
  SECONDS = 1.5
  KEYS = %w[job:a job:b job:c].freeze
end

# DESIGN §3's table, over real servers: for each phase, and each server
# holding nothing, our token or a foreign token, what locked?, acquire (with a
# new token) and release (with our token) return, and what each server holds
# afterwards. The expectations are written from the table, independently of
# the implementation.
RSpec.shared_examples "the phase truth table" do
  def expected_locked(phase, s, d)
    case phase
    when :source then s != :none
    when :dual, :drain then s != :none || d != :none
    when :destination then d != :none
    end
  end

  # => [result, source after, destination after]
  def expected_acquire(phase, s, d)
    sv = PhaseExamples::HOLDINGS[s]
    dv = PhaseExamples::HOLDINGS[d]
    case phase
    when :source then s == :none ? [true, "new", dv] : [false, sv, dv]
    when :dual
      if s != :none then [false, sv, dv]
      elsif d != :none then [false, nil, dv] # source written, then rolled back
      else
        [true, "new", "new"]
      end
    when :drain, :destination then d == :none ? [true, sv, "new"] : [false, sv, dv]
    end
  end

  # Release cleans our token from every configured server, in every phase.
  def expected_release(_phase, s, d)
    after = ->(h) { h == :ours ? nil : PhaseExamples::HOLDINGS[h] }
    [s == :ours || d == :ours, after.(s), after.(d)]
  end

  def place(s, d)
    source_server.redis.set(PhaseHelpers::KEY, PhaseExamples::HOLDINGS[s], px: 10_000) if PhaseExamples::HOLDINGS[s]
    destination_server.redis.set(PhaseHelpers::KEY, PhaseExamples::HOLDINGS[d], px: 10_000) if PhaseExamples::HOLDINGS[d]
  end

  PhaseExamples::PHASES.each do |phase|
    context "in phase #{phase}" do
      before { configure_both(phase) }

      PhaseExamples::HOLDINGS.each_key do |s|
        PhaseExamples::HOLDINGS.each_key do |d|
          context "with source=#{s}, destination=#{d}" do
            before { place(s, d) }

            it "locked? answers per the table and changes nothing" do
              expect(Locking.new("job").locked?).to be(expected_locked(phase, s, d))
              expect(holdings).to eq([PhaseExamples::HOLDINGS[s], PhaseExamples::HOLDINGS[d]])
            end

            it "acquire with a new token answers per the table; a refusal leaves no trace" do
              result, source_after, destination_after = expected_acquire(phase, s, d)
              expect(Locking.new("job", token: "new").acquire(10)).to be(result)
              expect(holdings).to eq([source_after, destination_after])
              if result
                written = [source_after == "new" ? source_server : nil, destination_after == "new" ? destination_server : nil]
                written.compact.each { |server| expect(server.redis.pttl(PhaseHelpers::KEY)).to be_between(9_000, 10_000) }
              end
            end

            it "release with our token deletes ours everywhere and nothing else" do
              result, source_after, destination_after = expected_release(phase, s, d)
              expect(Locking.new("job", token: "ours").release).to be(result)
              expect(holdings).to eq([source_after, destination_after])
            end
          end
        end
      end
    end
  end
end

# Processes in two adjacent phases (a rolling deploy), some flipping phase
# between operations, contend on a few keys. An occupancy witness on a third
# server (INCR on entry, DECR on exit) must never exceed 1, and no lock key
# may remain at the end. Bounded: a few seconds and a fixed number of loops.
RSpec.shared_examples "adjacent phases under contention" do
  def run_worker(id, phases, flipping, witness_url)
    witness = Redis.new(url: witness_url)
    report = Hash.new(0)
    deadline = monotonic + PhaseExamples::SECONDS
    phase = phases[id % 2]
    configure_both(phase)
    2_000.times do
      break if monotonic > deadline

      key = PhaseExamples::KEYS.sample
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

  PhaseExamples::PAIRS.each do |phases|
    it "#{phases.join(' + ')}: never two holders, nothing left behind" do
      # Start every server here: a child must not start its own.
      configure_both(phases.first)
      witness_url = witness_server.url
      workers = 4.times.map { |id| Forked.new { run_worker(id, phases, id >= 2, witness_url) } }
      reports = workers.map(&:result)

      total = reports.each_with_object(Hash.new(0)) { |r, sum| r.each { |k, v| sum[k] += v } }
      expect(total[:overlaps]).to eq(0)
      expect(total[:errors]).to eq(0)
      expect(total[:release_failures]).to eq(0)
      expect(total[:runs]).to be > 50
      expect(total[:refused]).to be > 0 # they did contend
      expect(lock_keys_left).to eq([])
      expect(PhaseExamples::KEYS.map { |key| witness_server.redis.get("inside:#{key}").to_i }).to all(eq(0))
    end
  end
end
