# frozen_string_literal: true

require "securerandom"
require "socket"
require_relative "locking/version"
require_relative "locking/errors"

# The native extension: the precompiled gem carries one build per Ruby minor
# version (lib/locking/3.1/locking.so, rake-compiler's layout); the source gem
# builds lib/locking/locking.so on install (or `rake compile` in a checkout).
class Locking
  # The precompiled builds this copy of the gem carries ("3.1", ...).
  def self.precompiled_for
    Dir[File.join(__dir__, "locking", "*", "locking.so")].map { |path| File.basename(File.dirname(path)) }.sort
  end
end

precompiled = File.join(__dir__, "locking", RUBY_VERSION[/\A\d+\.\d+/], "locking.so")
if File.exist?(precompiled)
  require precompiled # a failure here (an older glibc, say) is reported as it is
else
  begin
    require "locking/locking"
  rescue LoadError => e
    built_for = Locking.precompiled_for
    unless built_for.empty?
      raise LoadError, "this locking gem is precompiled for Ruby #{built_for.join(', ')}, not for Ruby " \
                       "#{RUBY_VERSION}: install the source gem, which builds the extension " \
                       "(`gem install locking --platform ruby`, or in the Gemfile " \
                       "`gem \"locking\", force_ruby_platform: true`; needs Rust's cargo, ruby-dev and libclang-dev)"
    end
    raise LoadError, "locking's native extension is not built (#{e.message}). Bundler does not build the " \
                     "extension of a gem installed with `path:`: in the gem's own directory " \
                     "(#{File.expand_path('..', __dir__)}) run `bundle exec rake compile` (needs Rust's cargo, " \
                     "ruby-dev and libclang-dev), or install it with `git:` or `gem install`, which build it"
  end
end

require_relative "locking/client"
require_relative "locking/server_settings"
require_relative "locking/configuration"
require_relative "locking/belief"
require_relative "locking/renewing"
require_relative "locking/lock"
require_relative "locking/lock_info"
require_relative "locking/semaphore"

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
