# frozen_string_literal: true

# The native boundary under the garbage collector: every API call with
# GC.stress on (a collection at every allocation), and after GC.compact.
RSpec.describe "the native boundary under GC" do
  let(:redis) { source_server.redis }

  def exercise
    key = "gc:#{rand(1_000_000)}".b + "\xFF".b
    lock = Locking.new(key, token: "t\x00oken".b)
    results = [lock.acquire(5), Locking.new(key).acquire(5), lock.locked?, lock.ttl.positive?, lock.renew(5),
               lock.release, lock.locked?]
    errors = []
    [-> { lock.acquire(0) }, -> { Locking.new(nil) }, -> { lock.acquire("x") }].each do |bad|
      bad.call
    rescue ArgumentError, TypeError => e
      errors << e.class
    end
    [results, errors]
  end

  it "gives the same answers with GC.stress on" do
    expected = [[true, false, true, true, true, true, false], [ArgumentError, ArgumentError, TypeError]]
    under_gc_stress do
      3.times { expect(exercise).to eq(expected) }
      Locking.with_lock("gc:block", ttl: 5) { |lock| expect(lock.have_lock?).to be(true) }
      renewed = Locking.new("gc:renewed")
      expect(renewed.acquire(5, auto_renew: 60)).to be(true)
      expect([renewed.have_lock?, renewed.lost?, renewed.release]).to eq([true, false, true])
    end
    expect(redis.keys("locking:*")).to eq([])
  end

  it "keeps working after GC.compact moves objects" do
    skip "GC.compact is not available" unless GC.respond_to?(:compact)

    locks = 20.times.map { |i| Locking.new("compact:#{i}", token: "t#{i}") }
    locks.each { |lock| expect(lock.acquire(5)).to be(true) }
    client = Locking.client
    GC.compact
    expect(Locking.client).to be(client)
    locks.each { |lock| expect(lock.release).to be(true) }
    expect(redis.keys("locking:*")).to eq([])
  end

  it "raises clean errors from a connection failure under GC.stress" do
    Locking.configure { |c| c.source = "redis://127.0.0.1:1/0" }
    under_gc_stress do
      expect { Locking.new("x").locked? }.to raise_error(Locking::ConnectionError)
    end
  end
end
