# frozen_string_literal: true

# The backfill stops when its lease is gone: a backfill stopped (SIGSTOP)
# for longer than its lease writes nothing more when it wakes, not even the
# rest of the batch it was in, since the fleet may have moved into phase 2
# meanwhile (`set_phase.lua` refuses that move only while the lease lives).
RSpec.describe "the backfill's lease" do
  let(:lease_key) { "{locking-control}:locking:backfill" }

  def copies = destination.keys("locking:*").size

  it "writes nothing more once it was stopped past its lease, and says so" do
    source_server.bulk_load(Array.new(20_000) { |i| ["SET", "locking:k#{i}", "t#{i}", "PX", "600000"] })
    expect(copies).to eq(0) # the destination server is started here, not in the child
    backfill = Forked.new do
      # A 2 s lease instead of 30, for the spec's sake.
      Locking::CLI.send(:remove_const, :BACKFILL_LEASE_TTL)
      Locking::CLI.const_set(:BACKFILL_LEASE_TTL, 2)
      locking_cli("backfill", "--rate", "4000", "--timeout", "0.2")
    end
    begin
      expect(wait_for(10) { copies >= 2_000 }).to be(true)
      Process.kill(:STOP, backfill.pid)
      expect(wait_for(10) { destination.exists(lease_key).zero? }).to be(true) # the lease ran out meanwhile
      copied = copies
      # What a move into phase 2 would now be allowed to do; the backfill wakes.
      Process.kill(:CONT, backfill.pid)
      status, out, err = backfill.result
      expect(status).to eq(Locking::CLI::EXIT_ERROR), out + err
      expect(out).to match(/lost its lease|sends nothing more/)
      expect(copies).to eq(copied)
      expect(destination.exists(lease_key)).to eq(0)
    ensure
      backfill.kill
    end
  end
end
