# frozen_string_literal: true

class Locking
  class CLI
    # locking backfill: copies every source-only lock onto the destination, under a lease.

    # The control key of a backfill's saved position.
    CURSOR = "backfill-cursor"

    # Seconds the backfill's lease lasts unless renewed (each batch renews it).
    BACKFILL_LEASE_TTL = 30

    private

    def backfill
      need_destination!
      if options[:break_lease] && options[:dry_run]
        return usage_error("--break-lease takes a lease over to copy with it; --dry-run takes none")
      end
      return EXIT_REFUSED unless backfill_allowed?

      holder = Lease.own
      unless options[:dry_run]
        taken = keep_backfill_lease(holder)
        taken = take_over_lease(taken, holder) if taken && taken != holder
        if taken != holder
          info = lease_info
          @err.puts "locking: refused: another backfill is running (#{Lease.new(taken).name}); one at a time"
          @err.puts "  its lease: #{describe_lease(info)}" if info
          result("outcome" => "refused", "lease" => info)
          return EXIT_REFUSED
        end
      end
      begin
        run_backfill(holder)
      ensure
        give_back_lease(holder) unless options[:dry_run]
      end
    end

    # Backfill runs in phases 0 and 1 only: dynamic phases are read from the
    # control key (after the lease is taken, so a move into phase 2 either
    # sees the lease or is seen here), static ones from the configuration.
    def backfill_allowed?
      refusal = phase_refusal
      return true unless refusal

      @err.puts "locking: refused: #{refusal}"
      result("outcome" => "refused", "reasons" => [refusal], "phase" => phase_json)
      false
    end

    # Why backfill may not run in the fleet's phase now, or nil.
    def phase_refusal
      phase = control_phase || (options[:phase] unless options[:phase] == :dynamic)
      refusal = phase && Locking::Client.backfill_refusal(Configuration::PHASES.index(phase))
      refusal && "the fleet is in phase #{describe_phase(phase)}: #{refusal}"
    end

    # One batch of the walk. Until its replies are read its copies may be on the wire (`@in_flight`);
    # an ArgumentError (bad input) is raised before anything is sent.
    def copy_batch(tool, cursor)
      @in_flight = true
      report = tool.backfill_batch(cursor, count: page_size, pages: pages_per_batch, dry_run: options[:dry_run],
                                           lease_until: (lease_until unless options[:dry_run]))
      @in_flight = false
      report
    rescue ArgumentError
      @in_flight = false
      raise
    end

    # Takes or keeps the backfill's lease; on success it is believed held
    # until the send time plus its TTL, less the drift allowed, on the core's
    # clock (`Locking::Client.clock`, which counts a suspend): the deadline
    # the core fences every copy with (#lease_until).
    def keep_backfill_lease(holder, take_over: nil)
      sent = Locking::Client.clock
      taken = client.backfill_lease(holder, ttl: BACKFILL_LEASE_TTL, take_over: take_over)
      @lease_until = sent + Locking::Client.valid_for(BACKFILL_LEASE_TTL * 1000) if taken == holder
      taken
    end

    # When the lease is believed to run out, on the core's clock: an absolute
    # deadline, so that a pause before the core reads it (GC, SIGSTOP) cannot
    # stretch it. Once it ran out it is lost for good: the lease script would
    # hand an expired lease back, but the fleet may have moved into phase 2.
    def lease_until
      return @lease_until if @lease_until && @lease_until > Locking::Client.clock

      raise Locking::Error, "the backfill lost its lease (stalled for over #{BACKFILL_LEASE_TTL}s?); run it again"
    end

    LEASE_LAPSED = "the backfill lost its lease meanwhile (stalled?), so it sends nothing more; run it again"

    # Whether a lease was taken and has run out since: a read that timed out
    # because the process was stopped fails first, but the lease is the news.
    def lease_lapsed? = @lease_until && @lease_until <= Locking::Client.clock

    def run_backfill(holder)
      return EXIT_REFUSED unless backfill_allowed?

      tool = client(phase: :dual)
      source_id = "#{tool.server_run_id(:source)} #{Locking.redact(options[:source])}"
      saved = options[:dry_run] || options[:restart] ? nil : saved_position(tool, source_id)
      cursor = saved ? saved["cursor"] : 0
      totals = Hash.new(0).merge(((saved && saved["totals"]) || {}).transform_keys(&:to_sym))
      @out.puts "backfill#{' (dry run)' if options[:dry_run]}: #{Locking.redact(options[:source])} -> " \
                "#{Locking.redact(options[:destination])}, " \
                "keys under #{options[:prefix].inspect}, #{page_size} per page, #{pages_per_batch} page(s) per batch" \
                "#{", at most #{options[:rate]} keys/s" if options[:rate]}"
      @out.puts "phase: #{phase_note}"
      result("phase" => phase_json)
      if saved
        @out.puts "resuming from a saved position (cursor #{cursor}, #{number(totals[:scanned])} keys scanned " \
                  "before); --restart starts over"
      end
      bar = options[:progress].nil? ? @out.tty? : options[:progress]
      progress = Progress.new(@out, bar, from: cursor, before: totals[:scanned],
                                         fraction: ->(at) { tool.walk_fraction(:source, at) })
      started = monotonic
      scanned_before = totals[:scanned]
      first_errors = []
      restarts = Restarts.new
      begin
        loop do
          unless options[:dry_run]
            lease_until
            raise Locking::Error, "the backfill lost its lease; run it again" unless keep_backfill_lease(holder) == holder

            # The phase again, each batch: a lease held throughout kept the fleet out of phase 2.
            refusal = phase_refusal
            raise Locking::Error, "the fleet moved on: #{refusal}" if refusal
          end

          report = copy_batch(tool, cursor)
          # A failed copy may have timed out with its request still on the wire.
          @maybe_on_wire ||= report[:failed].positive?
          first_errors.concat(report[:errors]) if first_errors.size < 5
          report.each { |k, v| totals[k] += v unless %i[cursor errors restarted restart_reason].include?(k) }
          cursor = report[:cursor]
          stuck = restarts.note(report)
          if report[:restarted].positive?
            @out.puts "the source cluster is not settled (#{report[:restart_reason]}): keys may have moved past " \
                      "the walk, so it starts over from the first master (copies are idempotent)"
          end
          raise Locking::Error, stuck if stuck

          unless options[:dry_run] || cursor.zero?
            tool.control_set(CURSOR, JSON.generate("cursor" => cursor, "source" => source_id, "totals" => totals))
          end
          progress.update(totals[:scanned] - scanned_before, cursor, monotonic - started)
          break if cursor.zero?

          throttle(totals[:scanned] - scanned_before, started)
        end
      rescue Interrupt, Locking::Error => e
        progress.finish
        stopped = e.is_a?(Interrupt) ? "interrupted" : "stopped: #{e.message} (#{e.class})"
        stopped += "; #{LEASE_LAPSED}" if !options[:dry_run] && lease_lapsed? && !e.message.include?("lease")
        report_backfill(totals, monotonic - started, stopped, first_errors)
        unless options[:dry_run] || cursor.zero?
          @out.puts "the position is saved (cursor #{cursor}); resume with: " \
                    "locking backfill --source #{Locking.redact(options[:source])} " \
                    "--destination #{Locking.redact(options[:destination])} --prefix #{options[:prefix].inspect}"
        end
        audit(event: "backfill", outcome: stopped, totals: totals) unless options[:dry_run]
        return e.is_a?(Interrupt) ? 130 : EXIT_ERROR
      end
      tool.control_set(CURSOR, nil) unless options[:dry_run]
      progress.finish
      report_backfill(totals, monotonic - started, "done", first_errors)
      audit(event: "backfill", outcome: "done", totals: totals) unless options[:dry_run]
      return EXIT_ERROR unless totals[:failed].zero?

      options[:dry_run] ? EXIT_OK : verify_backfill
    end

    # "Done" is checked, not trusted: the gate's own count of source-only
    # locks, right after. In phase 1 it must be 0 (new locks go to both
    # servers); in phase 0 processes keep writing the source only.
    def verify_backfill
      count, = client(phase: :dual).source_only(examples: 0)
      phase = control_phase || (options[:phase] unless options[:phase] == :dynamic)
      result("source_only_after" => count)
      if count.zero?
        @out.puts "verified: no lock lives on the source only"
        EXIT_OK
      elsif phase == :dual
        @out.puts "verified: #{number(count)} lock(s) still live on the source only (copies undone as their " \
                  "locks changed, or a position skipped): run backfill again"
        EXIT_REFUSED
      else
        @out.puts "verified: #{number(count)} lock(s) live on the source only, expected in phase 0 (processes " \
                  "there write the source only); run backfill again once the fleet is in phase 1"
        EXIT_OK
      end
    end

    # The saved position, if it was saved for this source (its run_id and
    # address) and this prefix (the key lives under it). Another source's,
    # or one saved before the source restarted, is not resumed.
    def saved_position(tool, source_id)
      text = tool.control_get(CURSOR) or return nil
      saved = parse_saved(text)
      if saved.is_a?(Hash) && saved["source"] == source_id && saved["cursor"].is_a?(Integer)
        return saved
      end

      @out.puts "a saved position exists, but for another source (or from before this source restarted): " \
                "starting over"
      nil
    end

    def report_backfill(totals, elapsed, outcome, errors = [])
      result("outcome" => outcome, "dry_run" => options[:dry_run], "totals" => totals.transform_keys(&:to_s),
             "elapsed_s" => elapsed.round(3), "errors" => errors.first(5).map { |e| json_text(e) })
      verb = options[:dry_run] ? "would copy" : "copied"
      @out.puts "#{outcome}: #{number(totals[:scanned])} scanned, #{number(totals[:copied])} #{verb}, " \
                "#{number(totals[:already_there])} already there, #{number(totals[:conflicts])} conflicts, " \
                "#{number(totals[:undone])} undone, #{number(totals[:absent])} skipped (gone, expiring, or not a lock), " \
                "#{number(totals[:failed])} failed; #{number(totals[:semaphores])} semaphore(s), " \
                "#{number(totals[:places_copied])} place(s) #{verb} " \
                "(totals over every run since the start; this run: #{format('%.1f', elapsed)}s)"
      unless errors.empty?
        @out.puts "the first failures:"
        errors.first(5).each { |error| @out.puts "  - #{error}" }
      end
      @out.flush
    end

    # SCAN pages per backfill batch: as many as keep both servers busy
    # (--pages overrides), but one under --rate, so the load is spread evenly
    # rather than a burst at full speed and then a pause.
    def pages_per_batch
      return options[:pages] if options[:pages]

      options[:rate] ? 1 : Locking::Client::BACKFILL_PAGES
    end

    # Keys per SCAN page (and per read transaction on the source): --batch,
    # but under --rate at most what 5 ms of the rate allows, so that the
    # source never serves one batch for long.
    def page_size
      return options[:batch] unless options[:rate] && !options[:pages]

      [options[:batch], [options[:rate] / 200, 10].max].min
    end

    def throttle(scanned, started)
      return unless options[:rate]

      ahead = (scanned.to_f / options[:rate]) - (monotonic - started)
      sleep(ahead) if ahead.positive?
    end
  end
end
