# frozen_string_literal: true

class Locking
  class CLI
    # A backfill's restarts of a cluster walk, and its progress bar or lines.
    # Walks of a cluster source that start over because its slots are not settled. While the same reason stays
    # (a slot left migrating by an interrupted reshard), each restart waits longer, and after MAX restarts the
    # backfill stops and says what to run.
    class Restarts
      MAX = 12
      FIRST_PAUSE = 0.05
      LONGEST_PAUSE = 1.0

      def initialize(sleeper: ->(seconds) { sleep(seconds) })
        @sleeper = sleeper
        @reason = nil
        @count = 0
      end

      # Notes one batch's report; returns the message to stop with, or nil.
      def note(report)
        unless report[:restarted].positive?
          @reason = nil
          @count = 0
          return nil
        end
        @count = report[:restart_reason] == @reason ? @count + 1 : 1
        @reason = report[:restart_reason]
        return stuck_message if @count >= MAX

        @sleeper.call([FIRST_PAUSE * (2**(@count - 1)), LONGEST_PAUSE].min)
        nil
      end

      private

      def stuck_message
        "the source cluster stayed unsettled through #{MAX} restarts of the walk (#{@reason}). If a reshard was " \
          "interrupted, a slot is left migrating: run `redis-cli --cluster fix HOST:PORT` on one of its nodes, " \
          "then resume the backfill"
      end
    end

    # Progress on a terminal: a bar with keys, keys/s and ETA; elsewhere a
    # plain line every few seconds. SCAN gives no total: the fraction done is
    # read off the cursor (`fraction`, the core's Client#walk_fraction), whose
    # bits reversed walk the hash table in order, master by master on a cluster.
    class Progress
      # `from`: the cursor this run starts at (a resume starts part way); `before`: the keys scanned by the
      # runs before it. The percentage is of the whole walk, so the count shown with it is of the whole walk
      # too (this run's share in parentheses); the rate and the ETA follow this run's own pace.
      def initialize(out, bar, fraction:, from: 0, before: 0)
        @out = out
        @bar = bar
        @last = -Float::INFINITY
        @fraction = fraction
        @start_fraction = from.zero? ? 0.0 : fraction.(from)
        @before = before.to_i
      end

      # `keys`: the keys this run scanned so far.
      def update(keys, cursor, elapsed)
        fraction = @fraction.(cursor)
        @start_fraction = 0.0 if fraction < @start_fraction # a walk started over
        rate = keys / [elapsed, 1e-9].max
        done = fraction - @start_fraction
        eta = done.positive? ? elapsed * (1 - fraction) / done : 0
        if @bar
          return if elapsed - @last < 0.1 && fraction < 1.0

          @last = elapsed
          filled = (fraction * 30).round
          @out.print format("\r[%-30s] %3d%%  %s keys%s  %s keys/s  ETA %s ",
                            "=" * filled, fraction * 100, with_commas(@before + keys), this_run(keys),
                            with_commas(rate), clock(eta))
          @out.flush
        elsif elapsed - @last >= 2 || fraction >= 1.0
          @last = elapsed
          @out.puts format("backfill: %d%% of the walk, %s keys scanned%s, %s keys/s, ETA %s",
                           fraction * 100, with_commas(@before + keys), this_run(keys), with_commas(rate), clock(eta))
          @out.flush # a line at a time into a log file or a pipe, not a block at the end
        end
      end

      def finish
        @out.puts if @bar
      end

      private

      def this_run(keys)
        @before.zero? ? "" : " (#{with_commas(keys)} in this run)"
      end

      def with_commas(value)
        value.to_i.to_s.reverse.scan(/\d{1,3}/).join(",").reverse
      end

      def clock(seconds)
        seconds = seconds.round
        format("%d:%02d", seconds / 60, seconds % 60)
      end
    end
  end
end
