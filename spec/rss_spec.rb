# frozen_string_literal: true

# Resident memory stays flat over 1,000,000 acquire+release cycles through
# the Ruby API (8 threads, the GVL released on every round trip).
RSpec.describe "memory", :rss do
  def rss_kib = File.read("/proc/self/status")[/VmRSS:\s+(\d+)/, 1].to_i

  it "grows by less than 10 MiB over 1,000,000 cycles" do
    skip "no /proc" unless File.exist?("/proc/self/status")

    warm = lambda do |count, threads|
      threads.times.map do |t|
        Thread.new do
          count.times do |i|
            lock = Locking.new("rss:#{t}:#{i % 64}")
            lock.acquire(10) && lock.release
          end
        end
      end.each(&:join)
    end
    warm.call(5_000, 8)
    GC.start
    before = rss_kib
    started = monotonic
    warm.call(125_000, 8)
    GC.start
    growth = rss_kib - before
    elapsed = monotonic - started
    puts format("\n  RSS %d KiB -> %d KiB (+%d KiB) over 1,000,000 cycles in %.0fs", before, before + growth, growth, elapsed)
    expect(growth).to be < 10 * 1024
    expect(source_server.redis.keys("locking:rss:*")).to eq([])
  end
end
