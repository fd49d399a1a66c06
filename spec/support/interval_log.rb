# frozen_string_literal: true

# The interval checker of the soaks: worker processes record each interval in
# which they believed they held a lock ("KEY HOLDER FROM TO", times from one
# clock of the machine) into a list of the witness Redis; the parent reads
# them back and counts overlaps of one key between different holders.
module IntervalLog
  LIST = "intervals"

  # A worker's buffer: pushes its lines to the witness every `batch` of them,
  # and the rest on #flush, with the count of operation errors it met.
  class Writer
    attr_accessor :errors

    def initialize(witness, batch:)
      @witness = witness
      @batch = batch
      @lines = []
      @errors = 0
    end

    def record(key, holder, from, to)
      @lines << "#{key} #{holder} #{from} #{to}"
      flush_lines if @lines.size >= @batch
    end

    def flush
      flush_lines
      @witness.incrby("errors", @errors)
    end

    private

    def flush_lines
      @witness.rpush(LIST, @lines.slice!(0..)) unless @lines.empty?
    end
  end

  # A worker process's body: the block, one hold at a time, records into a
  # Writer until the witness holds `stop` (for at most `within` seconds);
  # then the rest is flushed and the process exits (1 if the block raised,
  # named for the log).
  def self.work(witness, batch:, name:, stop:, within: 600)
    log = Writer.new(witness, batch: batch)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + within
    yield log until witness.exists?(stop) || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
    log.flush
    exit!(0)
  rescue StandardError => e
    warn "#{name}: #{e.class}: #{e.message}"
    exit!(1)
  end

  # The block's value, or false after counting an operation error (a
  # fault refused it) instead of raising.
  def self.try(log)
    yield
  rescue Locking::Error
    log.errors += 1
    false
  end

  # [[key, holder, from, to], ...] as the workers recorded them.
  def self.read(witness)
    witness.lrange(LIST, 0, -1).map do |line|
      key, holder, from, to = line.split
      [key, holder, from.to_f, to.to_f]
    end
  end

  # How many intervals began while another holder's interval of the same key
  # was still open. One holder may span processes (a forked child shares its
  # parent's token), so intervals of one holder never count against each other.
  def self.overlaps(intervals)
    intervals.group_by(&:first).sum do |_key, held|
      ends = Hash.new(-Float::INFINITY) # the latest end so far, per holder
      held.sort_by { |_, _, from, _| from }.count do |_, holder, from, to|
        overlapping = ends.any? { |other, latest| other != holder && from < latest }
        ends[holder] = [ends[holder], to].max
        overlapping
      end
    end
  end

  # The most intervals of one key open at once, per key (a semaphore's holders).
  def self.most_at_once(intervals)
    intervals.group_by(&:first).transform_values do |held|
      edges = held.flat_map { |_, _, from, to| [[from, 1], [to, -1]] }
      # At one instant an end closes before a start opens: touching intervals are not at once.
      edges.sort_by { |time, step| [time, step] }.reduce([0, 0]) do |(open, most), (_, step)|
        [open + step, [most, open + step].max]
      end.last
    end
  end
end
