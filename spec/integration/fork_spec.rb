# frozen_string_literal: true

RSpec.describe "forking (Resque forks a child per job)" do
  let(:redis) { source_server.redis }

  # Runs acquire/locked?/release cycles on keys of its own and checks every
  # reply against what the request should give; returns the mismatches.
  def cycles(name, count)
    errors = []
    count.times do |i|
      key = "#{name}:#{i}"
      lock = Locking.new(key, token: "#{name}-#{i}")
      errors << "acquire #{key}" unless lock.acquire(10) == true
      errors << "locked? #{key}" unless Locking.new(key).locked? == true
      errors << "ttl #{key}" unless lock.ttl&.between?(9, 10)
      errors << "release #{key}" unless lock.release == true
      errors << "locked? after release #{key}" unless Locking.new(key).locked? == false
    end
    errors
  end

  it "gives every process, parent and children at once, the right replies, and the parent keeps working" do
    # Fill the parent's pool, and keep a lock held across the fork.
    held = Locking.new("held-by-parent", token: "parent-token")
    expect(held.acquire(30)).to be(true)
    expect(cycles("warmup", 5)).to eq([])
    expect(Locking.client.idle_connections.first).to be >= 1

    children = 4.times.map do |n|
      Forked.new do
        errors = cycles("child#{n}", 200)
        # The child sees the parent's lock, and cannot release it with another token.
        errors << "child sees held lock" unless Locking.new("held-by-parent").locked?
        errors << "child released foreign lock" if Locking.new("held-by-parent", token: "x").release
        errors
      end
    end

    parent_errors = cycles("parent", 200)

    results = children.map(&:result)

    expect(parent_errors).to eq([])
    expect(results).to all(eq([]))
    # The parent's own connections survived the children closing their copies.
    expect(cycles("parent-after", 20)).to eq([])
    expect(held.release).to be(true)
    expect(redis.dbsize).to eq(0)
  end

  it "does not reuse the parent's sockets in the child" do
    Locking.new("warm").locked?
    before = redis.info("clients")["connected_clients"].to_i

    pid = fork do
      Locking.new("in-child").locked?
      # Our connection is new: the server counts one more client than before.
      count = Redis.new(url: source_server.url).info("clients")["connected_clients"].to_i
      exit!(count >= before + 2 ? 0 : 1)
    end
    _, status = Process.wait2(pid)

    expect(status.exitstatus).to eq(0)
    expect(Locking.new("warm").locked?).to be(false)
  end
end
