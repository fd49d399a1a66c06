# frozen_string_literal: true

# Locking::Testing as an app uses it: its own suites (spec/fixtures/app_suite,
# named so that this suite does not load them: they switch Locking to memory),
# run in processes of their own, with every Redis URL pointing at a port
# nothing listens on, so any real Redis call would fail them.
RSpec.describe "test support for apps (Locking::Testing)" do
  suite = File.expand_path("../fixtures/app_suite", __dir__)
  lib = File.expand_path("../../lib", __dir__)

  let(:env) do
    nowhere = "redis://127.0.0.1:#{RedisServer.free_port}/0"
    { "RUBYLIB" => lib, "RUBYOPT" => nil, "BUNDLE_GEMFILE" => nil, "REDIS_URL" => nowhere,
      "LOCKING_SOURCE_URL" => nowhere, "LOCKING_DESTINATION_URL" => nowhere }
  end

  it "runs an app's RSpec suite with the memory backend, the matchers and the :locking tag" do
    rspec = Gem.bin_path("rspec-core", "rspec")
    Dir.mktmpdir do |dir| # no .rspec, no spec_helper: only what the app's suite requires
      out, status = Open3.capture2e(env, RbConfig.ruby, rspec, "--order", "defined", File.join(suite, "rspec_suite.rb"),
                                    chdir: dir)
      expect(status).to be_success, out
      expect(out).to include("8 examples, 0 failures")
    end
  end

  it "runs an app's Minitest suite with the assertions" do
    out, status = Open3.capture2e(env, RbConfig.ruby, File.join(suite, "minitest_suite.rb"))
    expect(status).to be_success, out
    expect(out).to match(/4 runs, \d+ assertions, 0 failures, 0 errors/)
  end
end
