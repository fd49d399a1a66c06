# frozen_string_literal: true

require "stringio"
require "locking/cli"

# Runs the operator command in-process against the test servers.
module CLIHelpers
  def locking_cli(*args, source: source_server.url, destination: destination_server.url, prefix: "locking:")
    out = StringIO.new
    err = StringIO.new
    argv = [*args, "--source", source, "--prefix", prefix, "--no-progress"]
    argv += ["--destination", destination] if destination
    status = Locking::CLI.new(argv, out: out, err: err).run
    [status, out.string, err.string]
  end

  # Every key of a server with its type, exact content (DUMP) and TTL bucket.
  def snapshot(redis)
    redis.keys("*").sort.to_h { |key| [key, [redis.type(key), redis.dump(key)]] }
  end
end

RSpec.configure { |config| config.include CLIHelpers }
