# frozen_string_literal: true

# The core's backfill step over real servers (the operator command that walks
# millions of keys with it comes with the CLI).
RSpec.describe "backfill step" do
  before { configure_both(:dual) }

  def backfill(key)
    Locking.client.backfill_key(key)
  end

  it "copies a source-only lock with its token and TTL, and leaves the source as it was" do
    source.set("locking:a", "token-a", px: 60_000)
    source.set("locking:forever", "token-f")

    expect(backfill("locking:a")).to eq(:copied)
    expect(backfill("locking:forever")).to eq(:copied)

    expect(destination.get("locking:a")).to eq("token-a")
    expect(destination.pttl("locking:a")).to be_within(1_000).of(source.pttl("locking:a"))
    expect(destination.pttl("locking:a")).to be >= source.pttl("locking:a")
    expect(destination.get("locking:forever")).to eq("token-f")
    expect(destination.pttl("locking:forever")).to eq(-1)
    expect(source.get("locking:a")).to eq("token-a")
  end

  it "lets the lock's holder release it everywhere afterwards" do
    configure_both(:source)
    Locking.new("job", token: "t").acquire(30)
    switch_phase(:dual)
    expect(backfill("locking:job")).to eq(:copied)
    expect(Locking.new("job", token: "t").release).to be(true)
    expect(holdings).to eq([nil, nil])
  end

  it "never touches queue data, nor keys outside the prefix" do
    source.rpush("locking:queue", %w[a b])
    source.hset("locking:hash", "f", "v")
    source.set("other:key", "x")

    expect(backfill("locking:queue")).to eq(:absent)
    expect(backfill("locking:hash")).to eq(:absent)
    expect { backfill("other:key") }.to raise_error(ArgumentError, /key prefix/)

    expect(destination.dbsize).to eq(0)
    expect(source.lrange("locking:queue", 0, -1)).to eq(%w[a b])
    expect(source.hgetall("locking:hash")).to eq("f" => "v")
  end

  it "leaves another token's destination lock alone, and raises a shorter copy's TTL" do
    source.set("locking:x", "mine", px: 60_000)
    destination.set("locking:x", "theirs", px: 5_000)
    expect(backfill("locking:x")).to eq(:conflict)
    expect(destination.get("locking:x")).to eq("theirs")

    source.set("locking:y", "same", px: 60_000)
    destination.set("locking:y", "same", px: 5_000)
    expect(backfill("locking:y")).to eq(:already_there)
    expect(destination.pttl("locking:y")).to be > 50_000
  end

  it "refuses to run in phase 2 or 3" do
    source.set("locking:a", "t", px: 60_000)
    switch_phase(:drain)
    expect { backfill("locking:a") }.to raise_error(ArgumentError, /phases 0 and 1/)
    expect(destination.dbsize).to eq(0)
  end

  it "walks several staggered pages per batch, and every key arrives with its TTL" do
    300.times { |i| source.set("locking:p#{i}", "t#{i}", px: 60_000 + i) }
    300.times { |i| source.rpush("queue:#{i}", "job") }
    client = Locking.client
    first = client.backfill_batch(0, count: 20, pages: 4)
    expect(first[:cursor]).not_to eq(0)
    expect(first[:scanned]).to be_between(4, 300) # SCAN's COUNT is a hint
    cursor = first[:cursor]
    batches = 1
    until cursor.zero? || batches > 100
      cursor = client.backfill_batch(cursor, count: 20, pages: 4)[:cursor]
      batches += 1
    end
    expect(cursor).to eq(0)
    expect(destination.keys("locking:p*").size).to eq(300)
    expect(destination.keys("queue:*")).to eq([])
    [0, 150, 299].each do |i|
      expect(destination.get("locking:p#{i}")).to eq("t#{i}")
      expect(destination.pttl("locking:p#{i}")).to be_within(1_000).of(source.pttl("locking:p#{i}"))
    end
  end

  it "refuses a page count out of range with a clear error" do
    expect { Locking.client.backfill_batch(0, pages: 0) }.to raise_error(ArgumentError, /pages must be between 1 and 64/)
    expect { Locking.client.backfill_batch(0, pages: 65) }.to raise_error(ArgumentError, /pages must be between 1 and 64/)
  end

  it "loads a flushed script in the middle of a batch and still raises every copy's TTL" do
    # The destination already holds each lock with a shorter TTL: backfill
    # must extend the copies with a script the destination no longer has.
    100.times do |i|
      source.set("locking:s#{i}", "t#{i}", px: 120_000)
      destination.set("locking:s#{i}", "t#{i}", px: 5_000)
    end
    destination.script(:flush)
    report = Locking.client.backfill_batch(0, count: 50, pages: 4)
    cursor = report[:cursor]
    totals = report.dup
    until cursor.zero?
      more = Locking.client.backfill_batch(cursor, count: 50, pages: 4)
      more.each { |k, v| totals[k] += v unless k == :cursor }
      cursor = more[:cursor]
    end
    expect(totals[:already_there]).to eq(100)
    expect(totals[:failed]).to eq(0)
    [0, 50, 99].each do |i|
      expect(destination.pttl("locking:s#{i}")).to be > 100_000
    end
  end
end
