# frozen_string_literal: true

# Runs every benchmark, each in its own process, and prints one table:
# locking against the pure-Ruby reference on redis-rb (Ruby driver and
# hiredis) and against the round-trip floor, with each goal and whether it
# was met. Run it with `bin/bench` or `bundle exec rake bench`.
#
#   bundle exec ruby -Ilib bench/all.rb [--quick]
#   --quick: fewer operations and keys (a smoke run, not for the README)
require "optparse"
require "tmpdir"
require "redis"
require_relative "support"

quick = false
OptionParser.new do |o|
  o.on("--quick", "a short run: fewer operations, keys and cycles") { quick = true }
end.parse!

ops = quick ? %w[--ops 300 --rounds 3] : %w[--ops 3000 --rounds 5]
# The single-thread cases run twice. Spread over both cores as the scheduler
# likes, a round trip costs ~80 µs here, most of it waking a process on the
# other core (this VM's idle cores sleep). Pinned to one core (taskset), the
# client and both servers take turns and a round trip costs ~20 µs: the
# floor is low and steady, so what the client itself costs shows.
runs = [
  ["ops.rb", [*ops, "--label", "[2 cores] "]],
  ["ops.rb", [*ops, "--label", "[1 core] ", "--no-threads"], %w[taskset -c 0]],
  ["rss.rb", quick ? %w[--cycles 100000] : []],
  ["backfill.rb", quick ? %w[--keys 100000 --rounds 3] : %w[--keys 1000000 --rounds 3]]
]
started = Bench.monotonic
rows = Dir.mktmpdir("locking-bench") do |dir|
  runs.each_with_index.flat_map do |(script, args, prefix), index|
    json = File.join(dir, "#{index}.json")
    warn "== #{[*prefix, "bench/#{script}", *args].join(' ')}"
    command = [*prefix, RbConfig.ruby, "-I", File.join(Bench::ROOT, "lib"), File.join(__dir__, script), *args, "--json", json]
    system(*command, out: $stderr, exception: true)
    JSON.parse(File.read(json), symbolize_names: true)
  end
end

def number(value, unit)
  return "" if value.nil?

  unit == "µs/op" ? format("%.1f", value) : format("%.0f", value)
end

def ratio(ours, theirs, lower_is_better)
  return "" if theirs.nil? || ours.nil? || ours.zero? || theirs.zero?

  format("%.2fx", lower_is_better ? theirs / ours : ours / theirs)
end

puts
puts "locking benchmarks, #{Time.now.utc.strftime('%Y-%m-%d')}, #{Bench.machine}, " \
     "hiredis #{Gem.loaded_specs['hiredis']&.version || Gem::Specification.find_by_name('hiredis').version}" \
     "#{quick ? ' (QUICK RUN: not for the README)' : ''}; medians of interleaved rounds; " \
     "#{format('%.0f', Bench.monotonic - started)} s"
puts
puts "| case | unit | locking | Ruby, redis-rb | Ruby, hiredis | speed-up vs redis-rb | vs hiredis " \
     "| floor (commands) | locking over floor, µs per command | goal | met |"
puts "|---|---|---|---|---|---|---|---|---|---|---|"
rows.each do |row|
  references = row[:references] || {}
  lower = row[:lower_is_better]
  floor = row[:floor] ? "#{number(row[:floor], row[:unit])} (#{row[:commands]})" : ""
  over = row[:overhead] ? format("%.1f", row[:overhead]) : row[:note].to_s
  met = { true => "yes", false => "**no**", nil => "" }[row[:met]]
  speed = row[:unit] == "KiB" ? "" : ratio(row[:locking], references[:"redis-rb"], lower)
  puts "| #{row[:name]} | #{row[:unit]} | #{number(row[:locking], row[:unit])} | #{number(references[:"redis-rb"], row[:unit])} " \
       "| #{number(references[:hiredis], row[:unit])} | #{speed} | #{ratio(row[:locking], references[:hiredis], lower)} " \
       "| #{floor} | #{over} | #{row[:goal]} | #{met} |"
end
