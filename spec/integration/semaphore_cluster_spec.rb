# frozen_string_literal: true

require "json"
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
  # A migration into the cluster: the gate walks the source's semaphores and asks each key's master for its
  # places; a phase-1 renewal takes a phase-0 place on that master too.
  it "keeps places across a migration into the cluster, and the gate counts a source-only place per key" do
    names = Array.new(12) { |i| "imports:#{i}" }
    configure_both(:source, destination: cluster.settings)
    early = names.map { |name| Locking::Semaphore.new(name, limit: 1, token: "early") }
    expect(early.map { |place| place.acquire(30) }).to all(be(true))
    configure_both(:dual, destination: cluster.settings)
    status, out, = locking_cli("gate", "--json", destination: cluster.url)
    gate = JSON.parse(out)
    expect([status, gate["source_only"], gate["source_only_places"]]).to eq([1, 12, 12])

    expect(early.first(6).map { |place| place.renew(30) }).to all(be(true))
    expect(names.first(6).map { |name| cluster.node_for(prefixed(name)).redis.zrange(prefixed(name), 0, -1) })
      .to all(eq(["early"]))
    # The limit counts the source first in phase 1, and the destination in phase 2.
    expect(Locking::Semaphore.new(names.last, limit: 1).acquire(30)).to be(false)
    status, out, = locking_cli("gate", "--json", destination: cluster.url)
    expect([status, JSON.parse(out)["source_only_places"]]).to eq([1, 6])
    # The other 6 reach the cluster by the backfill (its by-node path), each on its key's master.
    status, out, = locking_cli("backfill", destination: cluster.url)
    # (A renewed place's copy may be raised by the ms between the read and the write: 6 to 12 written.)
    expect([status, out[/12 semaphore\(s\), (\d+) place\(s\) copied/, 1].to_i]).to match([0, be_between(6, 12)])
    expect(names.map { |name| cluster.node_for(prefixed(name)).redis.zrange(prefixed(name), 0, -1) })
      .to all(eq(["early"]))
    status, out, = locking_cli("gate", "--json", destination: cluster.url)
    expect([status, JSON.parse(out)["open"]]).to eq([0, true])
  end

  it "is counted by status, listed and unlocked by locking unlock on every master, other sorted sets left" do
    configure_both(:destination, source: nil, destination: cluster.settings)
    names = Array.new(12) { |i| "ops:#{i}" }
    names.each { |name| 2.times { |t| Locking::Semaphore.new(name, limit: 2, token: "t#{t}").acquire(30) } }
    expect(cluster.keys_by_master("locking:ops:*").values).to all(satisfy { |keys| !keys.empty? })
    board = prefixed("ops:board")
    cluster.node_for(board).redis.zadd(board, 1, "a") # a sorted set, no semaphore

    status, out, = locking_cli("status", "--json", destination: cluster.url)
    expect(status).to eq(0), out
    expect(JSON.parse(out)["servers"]["destination"]).to include("semaphores" => 12, "places" => 24)

    status, out, = locking_cli("unlock", "--glob", "ops:*", "--json", destination: cluster.url)
    expect(status).to eq(0), out
    expect(JSON.parse(out)).to include("semaphores_matched" => 12, "semaphores_deleted" => 12, "deleted" => 0)
    expect(cluster.keys_by_master("locking:ops:*").values.flatten).to eq([board])
  end
end
