# frozen_string_literal: true

require "json"

# The gates compare what each copy has left, not only whether it is there
# (docs/DESIGN.md, "The gates compare what each copy has left"). A lock (or a
# place) can have copies on both servers that end at different times: a
# same-token acquire in phase 0 resets the source copy only, one in phase 2
# the destination copy only. A gate that asked only "same token on both?"
# said OPEN there, and once the shorter copy ended, the next phase let a
# second holder in beside the first (an adversary's finding, with no fault).
RSpec.describe "The gates and copies that end at different times" do
  include PhaseHelpers

  def gate(*args)
    status, out, = locking_cli("gate", "--json", *args)
    [status, JSON.parse(out)]
  end

  def pttls(key) = [source, destination].map { |redis| redis.pttl("locking:#{key}") }

  it "closes the gate on a lock whose destination copy ends sooner, until a backfill raises it" do
    configure_both(:dual)
    expect(Locking.new("job", token: "a").acquire(8)).to be(true)
    configure_both(:source) # a rollback to phase 0: another object with the token acquires for longer
    expect(Locking.new("job", token: "a").acquire(60)).to be(true)
    on_source, on_destination = pttls("job")
    expect(on_source).to be > 50_000
    expect(on_destination).to be <= 8_000

    configure_both(:dual)
    status, result = gate
    expect([status, result["open"], result["source_only"]]).to eq([1, false, 1])
    expect(result["reasons"].first).to start_with("1 lock(s) or semaphore place(s) live on the source only, or end sooner")

    expect(locking_cli("backfill")[0]).to eq(0)
    expect(pttls("job").last).to be > 50_000
    status, result = gate
    expect([status, result["open"]]).to eq([0, true])
  end

  it "closes the reverse gate on a lock whose source copy ends sooner, until its holder renews it in phase 1" do
    configure_both(:dual)
    holder = Locking.new("job", token: "a")
    expect(holder.acquire(8)).to be(true)
    configure_both(:drain) # phase 2: another object with the token acquires for longer (the destination only)
    expect(Locking.new("job", token: "a").acquire(60)).to be(true)
    expect(pttls("job").first).to be <= 8_000

    configure_both(:dual) # rolled back to phase 1; the reverse gate guards the move to phase 0
    status, result = gate("--reverse")
    expect([status, result["open"], result["destination_only"]]).to eq([1, false, 1])
    expect(result["reasons"].first).to start_with("1 lock(s) or semaphore place(s) live on the destination only")

    expect(holder.renew(60)).to be(true) # phase 1 renews the source, then the destination
    expect(pttls("job")).to all(be > 50_000)
    status, result = gate("--reverse")
    expect([status, result["open"]]).to eq([0, true])
  end

  it "does the same for a semaphore's place" do
    configure_both(:dual)
    expect(Locking::Semaphore.new("exports", limit: 2, token: "a").acquire(8)).to be(true)
    configure_both(:source)
    expect(Locking::Semaphore.new("exports", limit: 2, token: "a").acquire(60)).to be(true) # "already mine": the source
    configure_both(:dual)
    status, result = gate
    expect([status, result["source_only"], result["source_only_places"]]).to eq([1, 1, 1])

    expect(Locking::Semaphore.new("exports", limit: 2, token: "a").renew(60)).to be(true) # phase 1: both
    status, result = gate
    expect([status, result["open"]]).to eq([0, true])
  end

  it "keeps the gates open for copies written together (phase 1), whatever the TTL" do
    configure_both(:dual)
    [1, 3, 30, 600].each do |seconds|
      expect(Locking.new("lock:#{seconds}").acquire(seconds)).to be(true)
      expect(Locking::Semaphore.new("place:#{seconds}", limit: 1).acquire(seconds)).to be(true)
    end
    expect(gate.first(1) + gate("--reverse").first(1)).to eq([0, 0])
  end
end
