# frozen_string_literal: true

# The benchmarks are not timed here (timed tests flake on a shared machine),
# but they must keep working: the floor tool sends real commands and fails
# on an error reply, and a tiny ops run produces well-formed rows.
RSpec.describe "benchmarks", :bench do
  root = File.expand_path("..", __dir__)

  it "floor tool runs the commands it is given and refuses an error reply" do
    require_relative "../bench/support"
    server = source_server
    mean = Bench.floor_us(50, server, server, ["S:SET locking:bench-floor{i} t NX PX 10000 ++ S:EXISTS locking:bench-floor{i}"])
    expect(mean).to be > 0
    expect(server.redis.get("locking:bench-floor49")).to eq("t")

    out, status = Open3.capture2e(Bench.example_tool("floor"), "3", "127.0.0.1:#{server.port}", "127.0.0.1:#{server.port}",
                                  "S:NOSUCHCOMMAND x")
    expect(status).not_to be_success
    expect(out).to include("unknown command")
  end

  it "bench/ops.rb emits a row per case with locking, both Ruby drivers and the floor" do
    Dir.mktmpdir("locking-bench-") do |dir|
      json = File.join(dir, "rows.json")
      out, status = Open3.capture2e(RbConfig.ruby, "-I", File.join(root, "lib"), File.join(root, "bench/ops.rb"),
                                    "--ops", "20", "--rounds", "1", "--no-threads", "--json", json, chdir: root)
      expect(status).to be_success, out
      rows = JSON.parse(File.read(json), symbolize_names: true)
      expect(rows.size).to eq(9)
      rows.each do |row|
        expect(row[:locking]).to be > 0
        expect(row[:references].keys).to eq(%i[redis-rb hiredis])
        expect(row[:floor]).to be > 0
        expect(row[:commands]).to be_between(1, 4)
      end
      expect(rows.find { |r| r[:name].include?("phase 3 (destination)") && r[:name].include?("acquire+release") }[:goal])
        .to include("1.3x")
    end
  end

  it "bench/semaphore.rb emits a lock-against-semaphore row per limit and thread count" do
    out, status = Open3.capture2e(RbConfig.ruby, "-I", File.join(root, "lib"), "bench/semaphore.rb", "--ops", "20",
                                  "--rounds", "1", "--threads", "2", chdir: root)
    expect(status).to be_success, out
    rows = out.lines.map { |line| JSON.parse(line, symbolize_names: true) }
    expect(rows.map { |row| row[:name][/limit \d+/] }).to eq(["limit 1", "limit 10", "limit 1000"] * 2)
    expect(rows.flat_map { |row| [row[:locking], row[:references][:lock]] }).to all(be > 0)
  end
end
