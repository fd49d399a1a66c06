# frozen_string_literal: true

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

# The precompiled gem, as a deploy host without a toolchain installs it.
RSpec.describe "the precompiled gem", :packaging do
  root = File.expand_path("..", __dir__)
  platform_gem = File.join(root, "pkg", "locking-#{Locking::VERSION}-x86_64-linux.gem")
  minor = RUBY_VERSION[/\A\d+\.\d+/]

  before(:all) do
    out, status = Open3.capture2e(File.join(root, "bin/package"), "--no-setup", chdir: root)
    raise "bin/package failed:\n#{out}" unless status.success?
  end

  it "installs into an empty GEM_HOME with no cargo, rustc or libclang, and locks from outside the checkout" do
    Dir.mktmpdir("locking-precompiled-") do |dir|
      gem_home = File.join(dir, "gems")
      # No toolchain: only the system's bin directories (cargo and rustc live in ~/.cargo/bin).
      env = {
        "GEM_HOME" => gem_home, "GEM_PATH" => gem_home, "PATH" => "/usr/bin:/bin", "BUNDLE_GEMFILE" => nil,
        "RUBYOPT" => nil, "RUBYLIB" => nil, "LIBCLANG_PATH" => File.join(dir, "none"), "CARGO" => File.join(dir, "none")
      }
      expect(system(env, "sh", "-c", "command -v cargo || command -v rustc", out: File::NULL)).to be(false)

      out, status = Open3.capture2e(env, "gem", "install", "--local", "--no-document", platform_gem, chdir: dir)
      expect(status).to be_success, out
      installed = File.join(gem_home, "gems", "locking-#{Locking::VERSION}-x86_64-linux")
      native = File.join(installed, "lib", "locking", minor, "locking.so")
      expect(File).to exist(native)
      expect(Dir[File.join(installed, "ext", "**", "*")]).to be_empty # nothing to build

      script = <<~RUBY
        require "locking"
        native = $LOADED_FEATURES.grep(/locking\\.so\\z/).first
        raise "loaded \#{native}" unless native == #{native.dump}
        Locking.configure { |c| c.source = #{source_server.url.dump} }
        lock = Locking.new("precompiled", token: "t")
        raise "acquire" unless lock.acquire(30)
        puts "held: \#{lock.locked?}"
        raise "release" unless lock.release
      RUBY
      out, status = Open3.capture2e(env, "ruby", "-e", script, chdir: dir)
      expect(status).to be_success, out
      expect(out).to include("held: true")
      expect(source_server.redis.exists?("locking:precompiled")).to be(false)

      source_server.redis.set("locking:left", "x", px: 60_000)
      out, status = Open3.capture2e(env, File.join(gem_home, "bin", "locking"), "status", "--source",
                                    source_server.url, chdir: dir)
      expect(status).to be_success, out
      expect(out).to match(/\s1 lock keys/)
    end
  end

  it "is a stripped build that needs glibc 2.17 at most and does not link libruby" do
    Dir.mktmpdir("locking-unpacked-") do |dir|
      expect(system("gem", "unpack", platform_gem, "--target", dir, out: File::NULL)).to be(true)
      native = Dir[File.join(dir, "*", "lib", "locking", minor, "locking.so")].first
      symbols = `objdump -T #{native}`
      glibc = symbols.scan(/GLIBC_(\d+(?:\.\d+)+)/).flatten.uniq.max_by { |v| Gem::Version.new(v) }
      expect(Gem::Version.new(glibc)).to be <= Gem::Version.new("2.17")
      needed = `objdump -p #{native}`.scan(/NEEDED\s+(\S+)/).flatten
      expect(needed.grep(/ruby/)).to be_empty
      # Stripped: no symbol table left, only the dynamic symbols Ruby needs.
      expect(`nm #{native} 2>&1`).to include("no symbols")
      expect(symbols).to include("Init_locking")
    end
  end

  it "gives a clear error on a Ruby it has no build for" do
    Dir.mktmpdir("locking-other-ruby-") do |dir|
      expect(system("gem", "unpack", platform_gem, "--target", dir, out: File::NULL)).to be(true)
      lib = Dir[File.join(dir, "*", "lib")].first
      FileUtils.mv(File.join(lib, "locking", minor), File.join(lib, "locking", "9.9"))
      out, status = Open3.capture2e({ "RUBYOPT" => nil }, RbConfig.ruby, "-I", lib, "-e", "require 'locking'")
      expect(status).not_to be_success
      expect(out).to include("precompiled for Ruby 9.9, not for Ruby #{RUBY_VERSION}", "--platform ruby")
    end
  end
end
