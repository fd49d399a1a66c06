# frozen_string_literal: true

require_relative "../support/cluster"

# A semaphore is one key, so one hash slot: on a Redis Cluster each lives on
# the master of its slot, and its limit holds there.
RSpec.describe "Locking::Semaphore on a Redis Cluster" do
  include PhaseHelpers
  include_context "a cluster of 3 masters", "semaphore-cluster"

  it "keeps each semaphore's places in one sorted set on the master of its slot" do
    configure_both(:destination, source: nil, destination: cluster.settings)
    names = Array.new(30) { |i| "exports:#{i}" }
    taken = names.to_h do |name|
      [name, Array.new(3) { |t| Locking::Semaphore.new(name, limit: 2, token: "t#{t}").acquire(30) }]
    end

    expect(taken.values).to all(eq([true, true, false]))
    by_master = cluster.keys_by_master("locking:exports:*")
    expect(by_master.size).to eq(3)
    expect(by_master.values).to all(satisfy { |keys| !keys.empty? })
    names.each do |name|
      node = cluster.node_for(prefixed(name))
      expect(node.redis.type(prefixed(name))).to eq("zset")
      expect(node.redis.zrange(prefixed(name), 0, -1)).to eq(%w[t0 t1])
    end
    expect(Locking::Semaphore.new("exports:0", limit: 2).holders).to eq(2)
    expect(Locking::Semaphore.new("exports:0", limit: 2, token: "t0").release).to be(true)
    expect(cluster.node_for(prefixed("exports:0")).redis.zrange(prefixed("exports:0"), 0, -1)).to eq(["t1"])
  end
end
