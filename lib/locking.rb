# frozen_string_literal: true

require "securerandom"
require "socket"
require_relative "locking/version"
require_relative "locking/errors"

begin
  require "locking/locking" # the native extension (ext/locking), built by `rake compile` or `gem install`
rescue LoadError => e
  raise LoadError, "locking's native extension is not built (#{e.message}). Bundler does not build the " \
                   "extension of a gem installed with `path:`: in the gem's own directory " \
                   "(#{File.expand_path('..', __dir__)}) run `bundle exec rake compile` (needs Rust's cargo, " \
                   "ruby-dev and libclang-dev), or install it with `git:` or `gem install`, which build it"
end

require_relative "locking/client"
require_relative "locking/configuration"
require_relative "locking/lock"

class Locking
  # ActiveJob integration, loaded on first use (ActiveJob is required then).
  autoload :UniqueJob, File.expand_path("locking/unique_job", __dir__)
  autoload :LogSubscriber, File.expand_path("locking/log_subscriber", __dir__)

  class << self
    # Where LogSubscriber and server warnings write (default: ActiveJob's logger, else $stderr).
    attr_accessor :logger

    # Called by the native client with a warning about a server (an evicting
    # maxmemory-policy), once per server and process.
    def server_warning(message)
      if logger
        logger.warn("[locking] #{message}")
      else
        Kernel.warn("[locking] #{message}")
      end
      nil
    end
  end
end

require_relative "locking/railtie" if defined?(Rails::Railtie)
