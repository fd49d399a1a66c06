# frozen_string_literal: true

require_relative "lib/locking/version"

# One gemspec, two gems (bin/package writes both):
# - the source gem (platform "ruby"): builds the Rust extension with cargo on install;
# - with LOCKING_PLATFORM=x86_64-linux, the precompiled gem: the builds found under
#   lib/locking/<ruby minor>/locking.so, no extension to build, and only the Ruby
#   versions those builds are for.
platform = ENV.fetch("LOCKING_PLATFORM", nil)
precompiled = Dir[File.join(__dir__, "lib/locking/*/locking.so")].map { |path| path.delete_prefix("#{__dir__}/") }
abort "LOCKING_PLATFORM=#{platform}: no lib/locking/<ruby minor>/locking.so to package" if platform && precompiled.empty?

Gem::Specification.new do |spec|
  spec.name = "locking"
  spec.version = Locking::VERSION
  spec.authors = ["The locking developers"]
  spec.summary = "Unique-job locks in Redis with a Rust core, movable between Redis servers live"
  spec.description = <<~DESC
    A drop-in Locking class for Rails apps (acquire, release, locked?, have_lock?)
    whose logic is a native extension written in Rust: token-checked release,
    connection pools that survive forks, Redis calls that release the GVL, and a
    phase protocol to move every lock from one Redis to another without downtime.
  DESC
  spec.license = "MIT"
  # Where the project is published; the changelog ships in the gem too.
  spec.homepage = "https://github.com/locking-gem/locking"
  spec.metadata["homepage_uri"] = spec.homepage
  spec.metadata["source_code_uri"] = spec.homepage
  spec.metadata["changelog_uri"] = "#{spec.homepage}/blob/main/CHANGELOG.md"
  spec.metadata["rubygems_mfa_required"] = "true"

  spec.files = Dir[
    "lib/**/*.rb", "lib/**/*.rake", "lib/**/*.erb", "exe/*",
    "README.md", "CHANGELOG.md", "LICENSE", "docs/*.md", "docs/examples/*"
  ]
  # The source gem builds for any Ruby from 3.1; the precompiled one only
  # loads into the Ruby minor versions it carries builds for.
  minors = precompiled.map { |path| path.split("/")[-2].split(".").map(&:to_i) }.sort
  spec.required_ruby_version = if platform
                                 [">= #{minors.first.join('.')}", "< #{minors.last[0]}.#{minors.last[1] + 1}.dev"]
                               else
                                 ">= 3.1"
                               end
  spec.bindir = "exe"
  spec.executables = Dir["exe/*"].map { |path| File.basename(path) }
  spec.require_paths = ["lib"]

  if platform
    spec.platform = Gem::Platform.new(platform)
    spec.files += precompiled
  else
    spec.files += Dir[
      "ext/locking/extconf.rb", "ext/*/Cargo.toml", "ext/*/build.rs", "ext/*/src/**/*.{rs,lua}",
      "Cargo.toml", "Cargo.lock"
    ]
    spec.extensions = ["ext/locking/extconf.rb"]
  end
end
