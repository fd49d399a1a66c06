# frozen_string_literal: true

# Resident memory stays flat over 1,000,000 acquire+release cycles through
# the Ruby API (8 threads, the GVL released on every round trip): the same
# run as bin/bench's RSS row (bench/rss.rb), in a process of its own so that
# nothing else the suite loaded counts.
RSpec.describe "memory", :rss do
  root = File.expand_path("..", __dir__)

  it "grows by less than 10 MiB over 1,000,000 cycles, and every lock is released" do
    skip "no /proc" unless File.exist?("/proc/self/status")

    Dir.mktmpdir("locking-rss-") do |dir|
      json = File.join(dir, "rss.json")
      out, status = Open3.capture2e(RbConfig.ruby, "-I", File.join(root, "lib"), File.join(root, "bench/rss.rb"),
                                    "--cycles", "1000000", "--json", json, chdir: root)
      expect(status).to be_success, out
      puts "\n  #{out.lines.last.strip}"
      row = JSON.parse(File.read(json), symbolize_names: true).first
      expect(row[:locking]).to be < 10 * 1024
      expect(row[:left]).to eq(0)
      expect(row[:met]).to be(true)
    end
  end
end
