# frozen_string_literal: true

# No leak in the core: the cycles example (acquire, locked?, ttl, renew,
# release through the same pool and protocol code the gem uses) under
# valgrind's memcheck must report no definitely or indirectly lost bytes.
RSpec.describe "memory", :leak do
  root = File.expand_path("..", __dir__)

  it "leaks nothing over 100,000 cycles under valgrind memcheck" do
    skip "valgrind is not installed" unless system("valgrind --version", out: File::NULL, err: File::NULL)

    out, status = Open3.capture2e("cargo", "build", "--release", "--locked", "-p", "locking_core",
                                  "--example", "cycles", chdir: root)
    expect(status).to be_success, out

    binary = File.join(root, "target", "release", "examples", "cycles")
    out, status = Open3.capture2e("valgrind", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
                                  "--error-exitcode=3", binary, source_server.url, "100000")
    expect(status.exitstatus).to eq(0), out
    expect(out).to include("100000 cycles")
    expect(out).to match(/definitely lost: 0 bytes|All heap blocks were freed/)
    expect(source_server.redis.keys("*")).to eq([])
  end
end
