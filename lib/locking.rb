# frozen_string_literal: true

require "securerandom"
require "socket"
require_relative "locking/version"
require_relative "locking/errors"

begin
  require "locking/locking" # the native extension (ext/locking), built by `rake compile` or `gem install`
rescue LoadError => e
  raise LoadError, "locking's native extension is not built (#{e.message}); run `bin/setup` or `rake compile`"
end

require_relative "locking/client"
require_relative "locking/configuration"
require_relative "locking/lock"

class Locking
  # ActiveJob integration, loaded on first use (ActiveJob is required then).
  autoload :UniqueJob, File.expand_path("locking/unique_job", __dir__)
  autoload :LogSubscriber, File.expand_path("locking/log_subscriber", __dir__)

  class << self
    # Where LogSubscriber writes (default: ActiveJob's logger).
    attr_accessor :logger
  end
end

require_relative "locking/railtie" if defined?(Rails::Railtie)
