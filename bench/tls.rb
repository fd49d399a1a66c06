# frozen_string_literal: true

# Acquire+release over TLS against plain TCP, on the same redis-server (it
# listens on both), in the same run: what TLS costs per operation once the
# session is up. The pure-Ruby reference (redis-rb over Ruby's OpenSSL) is
# measured over TLS as well. Certificates are made at start (openssl CLI).
#
#   bundle exec ruby -Ilib bench/tls.rb [--ops N] [--rounds R] [--json FILE]
require "openssl"
require_relative "support"
require_relative "../spec/support/tls"
require_relative "reference_locking"

options = Bench.options(ops: [3000, "operations per measurement"],
                        rounds: [5, "interleaved rounds; medians reported"]) do |o, chosen|
  o.on("--json FILE", "write the rows as JSON (for bench/all.rb)") { |v| chosen[:json] = v }
  o.on("--label TEXT", "put TEXT before the case's name") { |v| chosen[:label] = v }
end

certs = TestCertificates.new
server = TlsRedisServer.new("bench-tls", certs).tap(&:start)
at_exit do
  server.cleanup
  certs.cleanup
end

clients = {
  plain: Locking::Client.build(Locking::Configuration.new({}).tap { |c| c.source = server.url }),
  tls: Locking::Client.build(Locking::Configuration.new({}).tap { |c| c.source = server.tls_url })
}
tls_redis = Redis.new(host: "127.0.0.1", port: server.tls_port, ssl: true,
                      ssl_params: { ca_file: certs.path("ca.crt"), verify_mode: OpenSSL::SSL::VERIFY_PEER })
references = { plain: ReferenceLocking.new([server.redis]), tls: ReferenceLocking.new([tls_redis]) }

n = options[:ops]
measured = Hash.new { |h, k| h[k] = [] }
time = lambda do |&operation|
  started = Bench.monotonic
  n.times(&operation)
  (Bench.monotonic - started) * 1e6 / n
end
token = "0b5b3f4c-7f6e-4a51-9d43-6a1d2b8e9f10"
options[:rounds].times do |round|
  clients.each do |kind, client|
    took = time.() { |i| client.acquire("b#{round}:#{i}", token, 10_000) && client.release("b#{round}:#{i}", token) }
    measured[:"locking_#{kind}"] << took
  end
  references.each do |kind, reference|
    took = time.() { |i| reference.acquire("r#{round}:#{i}", token, 10, [0]) && reference.release("r#{round}:#{i}", token, [0]) }
    measured[:"ruby_#{kind}"] << took
  end
end
median = measured.transform_values { |values| Bench.median(values) }
abort "keys left behind" unless server.redis.dbsize.zero?
row = Bench.row(name: "#{options[:label]}TLS: acquire+release, phase 0 (source), one thread", unit: "µs/op", lower_is_better: true,
                locking: median[:locking_tls], references: { "redis-rb" => median[:ruby_tls] },
                note: format("plain TCP %.1f µs/op: TLS adds %.1f µs (%.2fx); redis-rb over TLS adds %.1f µs",
                             median[:locking_plain], median[:locking_tls] - median[:locking_plain],
                             median[:locking_tls] / median[:locking_plain], median[:ruby_tls] - median[:ruby_plain]),
                goal: "", met: nil)
Bench.emit([row], options[:json])
