# frozen_string_literal: true

require "redis"
require "securerandom"

# A pure-Ruby reference of the same operations on redis-rb: what the monolith
# runs today (with token-checked release added, so the work is the same).
# Used only by the benchmarks, to measure locking against in the same run.
# It is written the way a careful Ruby client would be: the release script is
# loaded once and run with EVALSHA, like locking does.
class ReferenceLocking
  RELEASE = <<~LUA
    if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
    return 0
  LUA

  def initialize(servers, prefix: "locking:")
    @redis = servers # one Redis client per server, in phase order (source, destination)
    @prefix = prefix
    @sha = @redis.map { |redis| redis.script(:load, RELEASE) }.first
  end

  def acquire(key, token, seconds, servers)
    servers.each_with_index do |index, position|
      next if @redis[index].set(@prefix + key, token, nx: true, px: (seconds * 1000).to_i)

      servers.first(position).each { |i| release_on(i, key, token) }
      return false
    end
    true
  end

  def release(key, token, servers)
    servers.map { |index| release_on(index, key, token) }.any?
  end

  def locked?(key, servers)
    servers.any? { |index| @redis[index].exists?(@prefix + key) }
  end

  private

  def release_on(index, key, token)
    @redis[index].evalsha(@sha, keys: [@prefix + key], argv: [token]) == 1
  rescue Redis::CommandError => e
    raise unless e.message.start_with?("NOSCRIPT")

    @redis[index].script(:load, RELEASE)
    retry
  end
end
