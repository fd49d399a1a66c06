# frozen_string_literal: true

# Redis Cluster, in the same run:
# - 8 threads of acquire+release (phase 3, the destination alone) on one
#   standalone master, on a cluster of 1 master and on a cluster of 3
#   masters: operations per second, the 3 masters against 1;
# - backfill of N locks from a standalone source into a standalone
#   destination (the streamed scheduler) and into the 3-master cluster (a
#   pipeline per master): keys per second.
# Every server runs on this machine's 2 cores, with the client: a cluster of
# 3 masters has no more CPU to spread over than 1 master has.
#
#   bundle exec ruby -Ilib bench/cluster.rb [--ops N] [--keys N] [--rounds R] [--json FILE]
require "optparse"
require "locking"
require_relative "../spec/support/redis_server"
# spec/support/cluster.rb also defines an RSpec shared context: RSpec must be
# loaded for it (nothing runs; rspec/autorun is not required).
require "rspec/core"
require_relative "../spec/support/cluster"
require_relative "support"

options = { ops: 3000, keys: 200_000, rounds: 3, threads: 8 }
OptionParser.new do |o|
  o.on("--ops N", Integer, "operations per thread per measurement (default 3000)") { |v| options[:ops] = v }
  o.on("--keys N", Integer, "locks backfilled per measurement (default 200,000)") { |v| options[:keys] = v }
  o.on("--rounds N", Integer, "interleaved rounds; medians reported (default 3)") { |v| options[:rounds] = v }
  o.on("--json FILE", "write the rows as JSON (for bench/all.rb)") { |v| options[:json] = v }
  o.on("--label TEXT", "put TEXT before the case's name") { |v| options[:label] = v }
end.parse!

single = RedisServer.start("bench-single")
source = RedisServer.start("bench-source")
one = RedisCluster.new(masters: 1, name: "bench-one")
three = RedisCluster.new(masters: 3, name: "bench-three")
at_exit { [single, source, one, three].each(&:cleanup) }

def client_for(source_url, destination_url, phase)
  Locking::Client.build(Locking::Configuration.new({}).tap do |c|
    c.source = source_url
    c.destination = destination_url
    c.phase = phase
    c.pool_size = 16
  end)
end

destinations = { standalone: single.url, one_master: one.url, three_masters: three.url }
clients = destinations.transform_values { |url| client_for(source.url, url, :destination) }
token = "0b5b3f4c-7f6e-4a51-9d43-6a1d2b8e9f10"
throughput = Hash.new { |h, k| h[k] = [] }
options[:rounds].times do |round|
  clients.each do |kind, client|
    started = Bench.monotonic
    Array.new(options[:threads]) do |t|
      Thread.new do
        options[:ops].times do |i|
          key = "b#{round}:#{t}:#{i}"
          (client.acquire(key, token, 10_000) && client.release(key, token)) or raise "lost #{key}"
        end
      end
    end.each(&:join)
    throughput[kind] << (options[:threads] * options[:ops] / (Bench.monotonic - started))
  end
end
ops = throughput.transform_values { |values| Bench.median(values) }

# Backfill: the same N locks from the source into each destination.
pairs = Array.new(options[:keys]) { |i| ["locking:bf:#{i}", "t#{i}"] }
rates = Hash.new { |h, k| h[k] = [] }
options[:rounds].times do
  { standalone: [single, single.url], three_masters: [ClusterAsServer.new(three), three.url] }.each do |kind, (server, url)|
    source.redis.flushall
    server.redis.flushall
    source.bulk_load(pairs.map { |key, value| ["SET", key, value, "PX", "600000"] })
    tool = client_for(source.url, url, :dual)
    started = Bench.monotonic
    cursor = 0
    copied = 0
    loop do
      report = tool.backfill_batch(cursor, count: 1000, pages: 16)
      copied += report[:copied]
      cursor = report[:cursor]
      break if cursor.zero?
    end
    rates[kind] << (copied / (Bench.monotonic - started))
    raise "backfill copied #{copied} of #{pairs.size}" unless copied == pairs.size
  end
end
backfill = rates.transform_values { |values| Bench.median(values) }

rows = [
  Bench.row(name: "#{options[:label]}Cluster: acquire+release, #{options[:threads]} threads, 3 masters",
            unit: "ops/s", lower_is_better: false, locking: ops[:three_masters], references: {},
            note: format("1 standalone master %.0f ops/s, a cluster of 1 master %.0f: 3 masters give %.2fx " \
                         "the standalone's (every server and the client share 2 cores)",
                         ops[:standalone], ops[:one_master], ops[:three_masters] / ops[:standalone]),
            goal: "", met: nil),
  Bench.row(name: "#{options[:label]}Cluster: backfill #{options[:keys]} locks into 3 masters",
            unit: "keys/s", lower_is_better: false, locking: backfill[:three_masters], references: {},
            note: format("into one standalone server (the streamed scheduler) %.0f keys/s: %.2fx",
                         backfill[:standalone], backfill[:three_masters] / backfill[:standalone]),
            goal: "", met: nil)
]
Bench.emit(rows, options[:json])
