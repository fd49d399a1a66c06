# frozen_string_literal: true

# What one holder believes when threads share its object: only the answer to
# the latest write sent moves the deadline, and a release ends it at its send.
RSpec.describe Locking::Belief do
  subject(:belief) { described_class.new }

  let(:now) { Locking::Client.clock }

  it "believes a confirmed write from its send, and caps a belief while a shorter one flies" do
    first = belief.sending(now, 10_000)
    expect(belief.answered(first, true, now, 10_000)).to be(true)
    expect(belief.deadline).to be_within(0.001).of(now + Locking::Client.valid_for(10_000))
    belief.sending(now, 300) # in flight: it may already have cut the lock to 300 ms
    expect(belief.deadline).to be_within(0.001).of(now + Locking::Client.valid_for(300))
  end

  it "lets a late answer to an older write move nothing once a newer one was sent" do
    long = belief.sending(now, 10_000)
    short = belief.sending(now, 300)
    belief.answered(short, true, now, 300)
    belief.answered(long, true, now, 10_000) # Redis ran it first; the short one cut it since
    expect(belief.deadline).to be_within(0.001).of(now + Locking::Client.valid_for(300))
  end

  it "believes nothing from a release's send, whatever a renewal in flight answers later" do
    renewal = belief.sending(now, 10_000)
    belief.forget
    belief.answered(renewal, true, now, 10_000)
    expect(belief.deadline).to be_nil
    expect(belief.holds?).to be(false)
  end

  it "runs one holder's writes one at a time: a release waits while another write runs" do
    lock = Locking.new("exclusive")
    expect(lock.acquire(10)).to be(true)
    lock.instance_variable_get(:@belief).exclusive do
      releasing = Thread.new { lock.release }
      expect(wait_for(2) { releasing.status == "sleep" }).to be(true) # waiting for the write in progress
      expect(source.exists("locking:exclusive")).to eq(1)
      releasing.kill
    end
    semaphore = Locking::Semaphore.new("exclusive-s", limit: 2)
    semaphore.instance_variable_get(:@belief).exclusive do
      taking = Thread.new { semaphore.acquire(10) }
      expect(wait_for(2) { taking.status == "sleep" }).to be(true)
      expect(source.exists("locking:exclusive-s")).to eq(0)
      taking.kill
    end
    expect(lock.release).to be(true)
  end
end
