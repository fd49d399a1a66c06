# frozen_string_literal: true

# Runs every benchmark, each in its own process, and prints one table:
# locking against the pure-Ruby reference on redis-rb (Ruby driver and
# hiredis) and against the round-trip floor, with each goal and whether it
# was met. Run it with `bin/bench` or `bundle exec rake bench`.
#
#   bundle exec ruby -Ilib bench/all.rb [--quick] [--baseline LIB_DIR]
#   --quick: fewer operations and keys (a smoke run, not for the README)
#   --baseline LIB_DIR: also run every case on an older build (its lib/, with
#     its locking.so; `bin/bench --baseline REV` builds one), each baseline
#     run just before the same run of this build, and print both: "before"
#     and "after" from the same run.
#   --repeat N: run each benchmark N times (alternating with the baseline's
#     runs) and report the median of the runs: the placement of processes on
#     2 cores moves a run's figures by 10-20%, run to run.
require "optparse"
require "tmpdir"
require "redis"
require_relative "support"
require_relative "../spec/support/redis_server"

quick = false
baseline = nil
repeat = 1
OptionParser.new do |o|
  o.on("--quick", "a short run: fewer operations, keys and cycles") { quick = true }
  o.on("--baseline LIB_DIR", "compare with the build whose lib/ is LIB_DIR") { |v| baseline = File.expand_path(v) }
  o.on("--repeat N", Integer, "run each benchmark N times; medians of the runs") { |v| repeat = v.clamp(1, 9) }
end.parse!

ops = quick ? %w[--ops 300 --rounds 3] : %w[--ops 3000 --rounds 5]
network_ops = quick ? %w[--ops 100 --rounds 3] : %w[--ops 500 --rounds 3]
# The single-thread cases run twice. Spread over both cores as the scheduler
# likes, a round trip costs ~80 µs here, most of it waking a process on the
# other core (this VM's idle cores sleep). Pinned to one core (taskset), the
# client and both servers take turns and a round trip costs ~20 µs: the
# floor is low and steady, so what the client itself costs shows.
# The last run puts each server behind a proxy that adds 0.25 ms each way
# (bench/ops.rb --network): a round trip of 0.5 ms, as inside one cloud zone.
runs = [
  ["ops.rb", [*ops, "--label", "[2 cores] "]],
  ["ops.rb", [*ops, "--label", "[1 core] ", "--no-threads"], %w[taskset -c 0]],
  ["tls.rb", [*ops, "--label", "[2 cores] "]],
  ["tls.rb", [*ops, "--label", "[1 core] "], %w[taskset -c 0]],
  ["rss.rb", quick ? %w[--cycles 100000] : []],
  ["backfill.rb", quick ? %w[--keys 100000 --rounds 3] : %w[--keys 1000000 --rounds 3]],
  ["cluster.rb", quick ? %w[--ops 300 --keys 20000 --rounds 1] : []],
  ["semaphore.rb", [*ops, "--label", "[2 cores] "]],
  ["semaphore.rb", [*network_ops, "--label", "[0.5 ms RTT] ", "--network", "250"]],
  ["ops.rb", [*network_ops, "--label", "[0.5 ms RTT] ", "--no-threads", "--network", "250"]]
]

def run_bench(dir, name, lib, script, args, prefix)
  json = File.join(dir, "#{name}.json")
  warn "== #{[*prefix, "bench/#{script}", *args].join(' ')} (#{lib})"
  command = [*prefix, RbConfig.ruby, "-I", lib, File.join(__dir__, script), *args, "--json", json]
  system(*command, out: $stderr, exception: true)
  JSON.parse(File.read(json), symbolize_names: true)
end

# The baseline's run, or nil when it cannot run this benchmark (a feature it
# does not have yet, such as TLS): its "before" columns stay empty.
def before_run(*args)
  run_bench(*args)
rescue RuntimeError => e
  warn "== the baseline cannot run this benchmark (#{e.message}); no before columns for it"
  nil
end

# One row from the same row of several runs: the median of each figure.
def merge(runs)
  runs.first.to_h do |name, value|
    case value
    when Numeric then [name, median_of(runs.map { |row| row[name] })]
    when Hash then [name, merge(runs.map { |row| row[name] })]
    else [name, value]
    end
  end
end

def median_of(values)
  sorted = values.compact.sort
  return sorted.first if sorted.uniq.size <= 1 # counts (commands), or a single run

  middle = sorted.size / 2
  sorted.size.odd? ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2.0
end

started = Bench.monotonic
before = {}
rows = Dir.mktmpdir("locking-bench") do |dir|
  runs.each_with_index.flat_map do |(script, args, prefix), index|
    olds = []
    news = Array.new(repeat) do |time|
      olds << before_run(dir, "before-#{index}-#{time}", baseline, script, args, prefix) if baseline
      run_bench(dir, "#{index}-#{time}", File.join(Bench::ROOT, "lib"), script, args, prefix)
    end
    olds.compact.transpose.each { |same| before[same.first[:name]] = merge(same) } if baseline
    news.transpose.map { |same| merge(same) }
  end
end

# The RTT the floor tool measures through one delaying proxy (a PING each way).
calibration = Dir.mktmpdir do
  server = Bench.start_servers("bench-calibration").first
  proxy = Bench.delayed([server], 250).first
  Bench.floor_us(quick ? 500 : 3000, proxy, proxy, ["S:PING"])
end

def number(value, unit)
  return "" if value.nil?

  unit == "µs/op" ? format("%.1f", value) : format("%.0f", value)
end

def ratio(ours, theirs, lower_is_better)
  return "" if theirs.nil? || ours.nil? || ours.zero? || theirs.zero?

  format("%.2fx", lower_is_better ? theirs / ours : ours / theirs)
end

runs_note = repeat > 1 ? ", then of #{repeat} runs#{' alternating with the baseline' if baseline}" : ""
puts
puts "locking benchmarks, #{Time.now.utc.strftime('%Y-%m-%d')}, #{Bench.machine}, " \
     "hiredis #{Gem.loaded_specs['hiredis']&.version || Gem::Specification.find_by_name('hiredis').version}" \
     "#{quick ? ' (QUICK RUN: not for the README)' : ''}; medians of interleaved rounds#{runs_note}; " \
     "#{format('%.0f', Bench.monotonic - started)} s"
puts "The delaying proxy (0.25 ms each way) measures #{format('%.0f', calibration)} µs per PING round trip " \
     "through it (the floor tool)."
puts
before_columns = baseline ? " before | after vs before |" : ""
puts "| case | unit | locking |#{before_columns} Ruby, redis-rb | Ruby, hiredis | speed-up vs redis-rb | vs hiredis " \
     "| floor (commands) | locking over floor, µs per command | goal | met |"
puts "|---|---|---|#{baseline ? '---|---|' : ''}---|---|---|---|---|---|---|---|"
rows.each do |row|
  references = row[:references] || {}
  lower = row[:lower_is_better]
  floor = row[:floor] ? "#{number(row[:floor], row[:unit])} (#{row[:commands]})" : ""
  over = row[:overhead] ? format("%.1f", row[:overhead]) : row[:note].to_s
  met = { true => "yes", false => "**no**", nil => "" }[row[:met]]
  speed = row[:unit] == "KiB" ? "" : ratio(row[:locking], references[:"redis-rb"], lower)
  old = before[row[:name]]
  then_and_now = if baseline
                   " #{number(old&.dig(:locking), row[:unit])} | #{ratio(row[:locking], old&.dig(:locking), lower)} |"
                 else
                   ""
                 end
  puts "| #{row[:name]} | #{row[:unit]} | #{number(row[:locking], row[:unit])} |#{then_and_now} " \
       "#{number(references[:"redis-rb"], row[:unit])} " \
       "| #{number(references[:hiredis], row[:unit])} | #{speed} | #{ratio(row[:locking], references[:hiredis], lower)} " \
       "| #{floor} | #{over} | #{row[:goal]} | #{met} |"
end
