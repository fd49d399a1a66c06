# frozen_string_literal: true

# A lock taken at enqueue in one phase is released (or renewed) by a worker in
# the next or the previous phase, by another object with the same token.
RSpec.describe "locks crossing a phase change" do
  PHASE_ORDER = %i[source dual drain destination].freeze

  PHASE_ORDER.each_with_index do |from, index|
    [index - 1, index + 1].select { |i| i.between?(0, 3) }.map { |i| PHASE_ORDER[i] }.each do |to|
      it "acquired in #{from}, released in #{to}: nothing left on either server" do
        configure_both(from)
        expect(Locking.new("job", token: "shared").acquire(30)).to be(true)

        switch_phase(to)
        expect(Locking.new("job").locked?).to be(true)
        expect(Locking.new("job", token: "shared").release).to be(true)

        expect(holdings).to eq([nil, nil])
        expect(Locking.new("job").locked?).to be(false)
      end

      # A lock from phase 2 has no source copy; phase 1 decides by the source,
      # so it reports the lock lost (safe: the job stops trusting it).
      renewable = !(from == :drain && to == :dual)

      it "acquired in #{from}, renewed in #{to}: #{renewable ? 'extended where it lives' : 'reported lost'}" do
        configure_both(from)
        lock = Locking.new("job", token: "shared")
        lock.acquire(2)

        switch_phase(to)
        expect(Locking.new("job", token: "shared").renew(30)).to be(renewable)
        next lock.release unless renewable

        [source_server, destination_server].each do |server|
          next unless server.redis.get(PhaseHelpers::KEY)

          expect(server.redis.get(PhaseHelpers::KEY)).to eq("shared")
          expect(server.redis.pttl(PhaseHelpers::KEY)).to be > 20_000
        end
        # Phase 1 keeps both copies; a phase-0 lock gets its destination copy there.
        expect(holdings.compact).to eq(%w[shared shared]) if to == :dual
        lock.release
        expect(holdings).to eq([nil, nil])
      end
    end
  end

  it "reads the phase once per operation: a flip during a call is harmless" do
    configure_both(:dual)
    lock = Locking.new("job", token: "t")
    lock.acquire(10)
    switch_phase(:drain)
    expect(lock.release).to be(true)
    expect(holdings).to eq([nil, nil])
  end

  it "acquires in phase 1 on the source first, then the destination" do
    configure_both(:dual)
    destination_server.redis.set(PhaseHelpers::KEY, "phase-2-holder", px: 10_000)
    expect(Locking.new("job", token: "t").acquire(10)).to be(false)
    expect(holdings).to eq([nil, "phase-2-holder"])
  end

  it "rolls back the source when the destination fails during a phase-1 acquire" do
    configure_both(:dual)
    destination_server.redis.rpush(PhaseHelpers::KEY, "not a string") # WRONGTYPE on the destination
    expect { Locking.new("job", token: "t").acquire(10) }.to raise_error(Locking::CommandError, /WRONGTYPE/)
    expect(source_server.redis.exists?(PhaseHelpers::KEY)).to be(false)
  end

  it "asks both servers at once for locked? in phases 1 and 2" do
    configure_both(:dual)
    Locking.new("warm").locked?
    # Each server is frozen for the same time; asked one after the other, the
    # call would take two timeouts.
    Locking.configure { |c| c.timeout = 0.4 }
    Locking.new("warm").locked?
    started = monotonic
    source_server.freeze
    destination_server.freeze
    expect { Locking.new("job").locked? }.to raise_error(Locking::TimeoutError)
    expect(monotonic - started).to be < 0.75
  ensure
    source_server.thaw
    destination_server.thaw
  end
end
