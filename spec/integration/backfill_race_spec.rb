# frozen_string_literal: true

# Backfill while processes in phase 1 take and release locks: afterwards no
# orphan on the destination, and no lock from phase 0 missing there.
RSpec.describe "backfill racing live traffic" do
  it "leaves no orphan and loses no lock" do
    configure_both(:dual)
    leftovers = 1_500.times.to_h { |i| ["locking:old:#{i}", "old-#{i}"] }
    leftovers.each_slice(500) do |slice|
      source_server.redis.pipelined { |p| slice.each { |key, token| p.set(key, token, px: 60_000) } }
    end

    deadline = monotonic + 2.0
    workers = 3.times.map do
      fork do
        configure_both(:dual)
        ops = 0
        while monotonic < deadline && ops < 20_000
          lock = Locking.new("live:#{rand(40)}")
          lock.release if lock.acquire(10)
          ops += 1
        end
        exit!(0)
      end
    end

    passes = 0
    while monotonic < deadline
      status, out, = locking_cli("backfill", "--batch", "25", "--restart")
      expect(status).to eq(0), out
      passes += 1
    end
    statuses = workers.map { |pid| Process.wait2(pid).last }

    expect(statuses).to all(be_success)
    expect(passes).to be >= 1
    destination_keys = destination_server.redis.keys("locking:*")
    expect(destination_keys.grep(/live/)).to eq([]) # no orphan of the live traffic
    expect(destination_keys.sort).to eq(leftovers.keys.sort) # every phase-0 lock arrived
    leftovers.first(50).each { |key, token| expect(destination_server.redis.get(key)).to eq(token) }
    expect(source_server.redis.keys("locking:live:*")).to eq([])
  end
end
