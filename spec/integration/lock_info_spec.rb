# frozen_string_literal: true

require "active_job"

ActiveJob::Base.queue_adapter = :test
ActiveJob::Base.logger = Logger.new(nil)

# Locking.lock_info, Locking.each_lock and Locking::UniqueJob.unlock_all!
# on real Redis servers, in every phase.
RSpec.describe "Locking.lock_info and Locking.each_lock" do
  it "tells who holds a lock and for how long, nil when nobody does" do
    lock = Locking.new("report:1")
    lock.acquire(60)
    forever = "report:forever"
    source.set("locking:#{forever}", "kept")

    info = Locking.lock_info("report:1")
    expect(info[:token]).to eq(lock.token)
    expect(info[:ttl]).to be_a(Float).and be_between(59.0, 60.0)
    expect(Locking.lock_info(forever)).to eq(token: "kept", ttl: Float::INFINITY)
    expect(Locking.lock_info("report:2")).to be_nil
    expect { Locking.lock_info("") }.to raise_error(ArgumentError, /""/)
    expect { Locking.lock_info(nil) }.to raise_error(ArgumentError, /nil/)
    expect { Locking.each_lock(:all) }.to raise_error(ArgumentError, /:all/)
  end

  it "reads a key with glob characters literally" do
    Locking.new("odd*[1]?").acquire(60)
    Locking.new("oddX1Y").acquire(60)
    expect(Locking.lock_info("odd*[1]?")).to include(:token)
    expect(Locking.lock_info("odd*")).to be_nil
  end

  it "walks the locks matching a glob, SCAN page after page, as pairs or an Enumerator" do
    source.pipelined { |pipe| 2_500.times { |i| pipe.set("locking:walk:#{i}", "t#{i}", px: 60_000) } }
    source.set("locking:other:1", "x", px: 60_000)

    seen = {}
    expect(Locking.each_lock("walk:*") { |key, info| seen[key] = info }).to be_nil
    expect(seen.size).to eq(2_500)
    expect(seen["walk:7"][:token]).to eq("t7")
    expect(seen["walk:7"][:ttl]).to be_between(50.0, 60.0)

    enum = Locking.each_lock("other:*")
    expect(enum).to be_a(Enumerator)
    expect(enum.map(&:first)).to eq(["other:1"])
    expect(Locking.each_lock.count).to eq(2_501)
  end

  it "follows the phase (a dynamic one too): the source in 0, the destination in 3, in 1 and 2 both, each lock once" do
    source.set("locking:on:source", "s", px: 60_000)
    destination.set("locking:on:destination", "d", px: 60_000)
    source.set("locking:on:both", "b", px: 60_000)
    destination.set("locking:on:both", "b", px: 60_000)

    found = lambda do |phase|
      configure_both(phase)
      [%w[source destination both].map { |where| Locking.lock_info("on:#{where}")&.fetch(:token) },
       Locking.each_lock("on:*").map(&:first).sort]
    end
    expect(found.call(:source)).to eq([["s", nil, "b"], %w[on:both on:source]])
    expect(found.call(:dual)).to eq([%w[s d b], %w[on:both on:destination on:source]])
    expect(found.call(:drain)).to eq([%w[s d b], %w[on:both on:destination on:source]])
    expect(found.call(:destination)).to eq([[nil, "d", "b"], %w[on:both on:destination]])
    configure_both(:dynamic)
    Locking.client.set_control_phase(nil, :destination) # what `locking phase set destination --init` writes
    expect([Locking.lock_info("on:source"), Locking.lock_info("on:destination")&.fetch(:token)]).to eq([nil, "d"])
  end

  it "frees every unique-job lock of every class with Locking::UniqueJob.unlock_all!, and nothing else" do
    first = Class.new(ActiveJob::Base) do
      def self.name = "LockInfo::FirstJob"
      include Locking::UniqueJob
      unique_lock :until_executed, ttl: 60
    end
    second = Class.new(ActiveJob::Base) do
      def self.name = "LockInfo::SecondJob"
      include Locking::UniqueJob
      unique_lock :until_and_while_executing, ttl: 60
    end
    3.times { |i| first.perform_later(i) }
    job = second.perform_later(1)
    source.set("locking:#{job.lock_key}:run", "running", px: 60_000)
    Locking.new("not-a-job:1").acquire(60)

    expect(Locking::UniqueJob.unlock_all!).to eq(5)
    expect(source.keys("locking:*")).to eq(["locking:not-a-job:1"])
  end
end
