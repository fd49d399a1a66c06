# frozen_string_literal: true

require "tmpdir"
require "open3"
require "rbconfig"

# The gem as a user gets it: `gem build`, `gem install` (which compiles the
# Rust extension with cargo through extconf.rb), then `require "locking"`
# from the installed copy, in a GEM_HOME of its own.
RSpec.describe "packaging", :packaging do
  root = File.expand_path("..", __dir__)

  it "builds, installs into a fresh GEM_HOME and loads the installed copy" do
    Dir.mktmpdir("locking-gem-") do |dir|
      gem_home = File.join(dir, "gems")
      env = {
        "GEM_HOME" => gem_home, "GEM_PATH" => gem_home, "BUNDLE_GEMFILE" => nil, "RUBYOPT" => nil,
        "RUBYLIB" => nil,
        # Cached between runs so only our two crates recompile.
        "CARGO_TARGET_DIR" => File.join(root, "target", "packaging")
      }

      out, status = Open3.capture2e(env, "gem", "build", File.join(root, "locking.gemspec"), "--output",
                                    File.join(dir, "locking.gem"), chdir: root)
      expect(status).to be_success, out

      out, status = Open3.capture2e(env, "gem", "install", "--local", "--no-document", File.join(dir, "locking.gem"),
                                    chdir: dir)
      expect(status).to be_success, out

      script = <<~RUBY
        require "locking"
        native = $LOADED_FEATURES.grep(/locking\\.so\\z/).first
        raise "loaded from the checkout: \#{native}" if native.start_with?(#{root.dump})
        raise "not from GEM_HOME: \#{native}" unless native.start_with?(#{gem_home.dump})
        Locking::Client.generate_token
        puts "loaded \#{Locking::VERSION} from \#{native}"
      RUBY
      out, status = Open3.capture2e(env, RbConfig.ruby, "-e", script, chdir: dir)
      expect(status).to be_success, out
      expect(out).to include("loaded #{Locking::VERSION} from #{gem_home}")
    end
  end
end
