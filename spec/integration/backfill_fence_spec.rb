# frozen_string_literal: true

require_relative "../support/cluster"
require_relative "../support/reply_delaying_proxy"

# The backfill's fence through a cluster: a batch runs in waves of one
# pipeline per node, each of which may wait a whole --timeout for its
# replies, so a batch on a slow source can outlive the lease it began under.
# The fence is asked again before every pipeline (each wave, each redirect
# followed, each retry): once the lease can no longer cover a pipeline, the
# batch sends nothing more, and the run says it lost its lease. Here the lease
# lasts 6 s and each 1,000-read pipeline of the source is answered in 2 s; the
# lease expires mid-batch, the fleet moves into phase 2 and releases every
# lock, and not one comes back on the destination. (Before, the fence was
# asked once per batch, and released locks came back with their full TTL.)
RSpec.describe "the backfill's fence with a cluster" do
  before(:all) { @cluster = RedisCluster.new(masters: 1, name: "fence") }
  after(:all) { @cluster&.cleanup }

  let(:node) { @cluster.nodes.first.redis }
  let(:lease_key) { "{locking-control}:locking:backfill" }

  it "sends nothing once its lease can no longer cover a pipeline, even mid-batch" do
    keys = Array.new(8_000) { |i| ["locking:k#{i}", "t#{i}"] }
    source_server.bulk_load(keys.map { |k, t| ["SET", k, t, "PX", "600000"] })
    # Copied already (the gate is open): the batch's copies re-check them.
    RedisServer.bulk_load(@cluster.nodes.first.url, keys.map { |k, t| ["SET", k, t, "PX", "600000"] })
    expect(locking_cli("phase", "set", "1", "--init", destination: @cluster.url)[0]).to eq(0)
    proxy = ReplyDelayingProxy.new(source_server.port, delay: 2)
    proxy.arm!
    backfill = Forked.new do
      Locking::CLI.send(:remove_const, :BACKFILL_LEASE_TTL)
      Locking::CLI.const_set(:BACKFILL_LEASE_TTL, 6)
      locking_cli("backfill", "--batch", "500", source: proxy.url, destination: @cluster.url)
    end
    begin
      expect(wait_for(5) { node.exists(lease_key) == 1 }).to be(true)
      expect(wait_for(20) { node.exists(lease_key).zero? }).to be(true) # expired mid-batch
      status, out, = locking_cli("phase", "advance", destination: @cluster.url)
      expect(status).to eq(0), out
      proxy.delay = 60 # the re-checks that would undo a late copy would time out
      source.del(*keys.map(&:first)) # phase 2: every lock is released on both servers
      node.pipelined { |pipe| keys.each { |k, _| pipe.del(k) } }

      status, out, = backfill.result
      expect(node.keys("locking:k*")).to eq([]) # nothing sent once the lease could have run out
      expect(status).to eq(Locking::CLI::EXIT_ERROR), out
      expect(out).to match(/lost its lease|sends nothing more/)
      expect(node.exists(lease_key)).to eq(0)
    ensure
      backfill.kill
      proxy.close
    end
  end
end
