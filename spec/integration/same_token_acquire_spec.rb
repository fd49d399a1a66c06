# frozen_string_literal: true

# A second object with a holder's token (a job's worker, say) may acquire
# again. When that acquire fails after finding the token's lock or place
# ("already mine", or a timeout that may have found it), nothing is undone:
# the holder still believes it, and undoing it let a third token in beside
# the holder (an adversary's finding). The copies expire with their TTLs.
RSpec.describe "A same-token acquire that fails" do
  include PhaseHelpers

  # The server answers no write for longer than the timeout (1 s); reads and PING still run.
  def pause_writes(server) = server.redis.call("CLIENT", "PAUSE", "1500", "WRITE")

  # Blocks until the pause is over (a paused client's write waits for it).
  def wait_for_writes(server) = server.redis.set("probe", "1") && server.redis.del("probe")

  it "never frees the holder's place (a semaphore on one server)" do
    configure_both(:destination, source: nil, timeout: 1.0)
    holder = Locking::Semaphore.new("exports", limit: 2, token: "a")
    expect([holder.acquire(30), Locking::Semaphore.new("exports", limit: 2, token: "b").acquire(30)]).to eq([true, true])

    pause_writes(destination_server)
    expect { Locking::Semaphore.new("exports", limit: 2, token: "a").acquire(60) }.to raise_error(Locking::TimeoutError)
    wait_for_writes(destination_server)

    expect(destination_server.redis.zrange("locking:exports", 0, -1)).to contain_exactly("a", "b")
    expect(Locking::Semaphore.new("exports", limit: 2, token: "c").acquire(30)).to be(false)
    expect(holder.have_lock?).to be(true)
  end

  it "never frees the holder's lock (phase 1, the destination timing out)" do
    configure_both(:dual, timeout: 1.0)
    holder = Locking.new("job", token: "a")
    expect(holder.acquire(30)).to be(true)

    pause_writes(destination_server)
    expect { Locking.new("job", token: "a").acquire(60) }.to raise_error(Locking::TimeoutError)
    wait_for_writes(destination_server)

    expect([source.get("locking:job"), destination.get("locking:job")]).to eq(%w[a a])
    expect(Locking.new("job", token: "c").acquire(30)).to be(false)
    expect(holder.have_lock?).to be(true)
  end
end
