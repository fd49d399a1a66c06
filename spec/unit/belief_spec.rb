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
end
