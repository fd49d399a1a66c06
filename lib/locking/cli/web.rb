# frozen_string_literal: true

class Locking
  class CLI
    # locking web: serves the dashboard.

    private

    # Serves Locking::Web with this command's settings (WEBrick, from Ruby's
    # gems); LOCKING_WEB_SECRET keeps sessions across restarts.
    def web
      require "webrick"
      require "rack/handler/webrick"
      require_relative "../web"
      settings = options
      Locking.configure do |c|
        c.source = settings[:source]
        c.destination = settings[:destination]
        c.key_prefix = settings[:prefix]
        c.timeout = settings[:timeout]
        c.phase = settings[:destination] ? :dual : :source
      end
      Web.read_only = true if options[:read_only]
      port = options[:port] || 9292
      host = options[:bind] || "127.0.0.1"
      @out.puts "locking web: http://#{host}:#{port}/#{' (read-only)' if options[:read_only]} (Ctrl-C stops)"
      logger = WEBrick::Log.new(nil, WEBrick::BasicLog::WARN)
      Rack::Handler::WEBrick.run(Web.app, Host: host, Port: port, AccessLog: [], Logger: logger)
      EXIT_OK
    rescue LoadError => e
      @err.puts "locking web needs rack and webrick (#{e.message})"
      EXIT_ERROR
    end
  end
end
