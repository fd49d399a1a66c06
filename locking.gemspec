# frozen_string_literal: true

require_relative "lib/locking/version"

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
  spec.required_ruby_version = ">= 3.1"

  spec.files = Dir[
    "lib/**/*.rb", "lib/**/*.rake", "exe/*",
    "ext/locking/extconf.rb", "ext/*/Cargo.toml", "ext/*/build.rs", "ext/*/src/**/*.{rs,lua}",
    "Cargo.toml", "Cargo.lock", "README.md", "LICENSE", "docs/*.md", "docs/examples/*"
  ]
  spec.bindir = "exe"
  spec.executables = Dir["exe/*"].map { |path| File.basename(path) }
  spec.require_paths = ["lib"]
  spec.extensions = ["ext/locking/extconf.rb"]
  spec.metadata["rubygems_mfa_required"] = "true"
end
