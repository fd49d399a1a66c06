# frozen_string_literal: true

class Locking
  class CLI
    # locking gate [--reverse]: whether moving to phase 2 (or back to 0) is safe, and why not.

    private

    def gate
      need_destination!
      unless options[:source]
        @out.puts "gate: no source is configured (the migration is finished): there is no source-only lock to " \
                  "count, and nothing to roll back to"
        result("gate" => options[:reverse] ? "reverse" : "drain", "open" => true, "reasons" => [], "phase" => phase_json)
        return EXIT_OK
      end
      return reverse_gate if options[:reverse]

      count, scanned, examples, places = client(phase: :dual).source_only(examples: 5)
      fleet = client.fleet
      _, how = phase_seen
      dynamic = how == :dynamic || !fleet.empty?
      in_phase_zero = fleet.count { |m| m[:phase] == :source }
      lease = lease_info
      @out.puts "gate into phase 2 (drain):"
      @out.puts "  phase: #{phase_note}"
      @out.puts "  source-only locks: #{number(count - places)}, semaphore places: #{number(places)} " \
                "(of #{number(scanned)} keys on the source)"
      examples.each { |key| @out.puts "    e.g. #{key.inspect}" }
      if dynamic
        @out.puts "  processes still in phase 0: #{in_phase_zero} (of #{fleet.size} reporting)"
      else
        @out.puts "  processes still in phase 0: not visible without dynamic phases; make sure every " \
                  "process has been deployed with phase :dual"
      end
      @out.puts "  backfill: #{lease ? describe_lease(lease) : 'none running'}"
      reasons = protocol_reasons(count, in_phase_zero, lease && lease["holder"])
      reasons << empty_prefix_reason(scanned, fleet) if reasons.empty? && empty_prefix?(scanned, fleet)
      result("gate" => "drain", "phase" => phase_json, "source_only" => count, "source_only_places" => places,
             "scanned" => scanned,
             "examples" => examples.map { |key| json_text(key) },
             "processes_in_phase_0" => (in_phase_zero if dynamic), "processes_reporting" => fleet.size,
             "backfill" => lease)
      verdict(reasons, "moving to phase 2 is safe")
    end

    # A gate that finds nothing proves nothing when it looked in the wrong
    # place: a prefix under which neither server holds a lock and no process
    # reports is far more likely a typo than an idle fleet.
    def empty_prefix?(source_keys, fleet)
      return false if options[:allow_empty] || source_keys.nil? || source_keys.positive? || !fleet.empty?

      client(phase: :destination).key_stats(:destination)[:keys].zero?
    end

    def empty_prefix_reason(_source_keys, _fleet)
      "no lock under #{options[:prefix].inspect} on either server, and no process reports: is the prefix right " \
        "(--prefix, LOCKING_PREFIX, the app's key_prefix)? If the fleet really holds no lock, pass --allow-empty"
    end

    # Before a rollback from phase 1 to 0: no lock on the destination only.
    def reverse_gate
      count, scanned, examples, places = client(phase: :dual).destination_only(examples: 5)
      @out.puts "reverse gate into phase 0 (source), for a rollback from phase 1:"
      @out.puts "  destination-only locks: #{number(count - places)}, semaphore places: #{number(places)} " \
                "(of #{number(scanned)} keys on the destination)"
      examples.each { |key| @out.puts "    e.g. #{key.inspect}" }
      result("gate" => "reverse", "phase" => phase_json, "destination_only" => count,
             "destination_only_places" => places, "scanned" => scanned,
             "examples" => examples.map { |key| json_text(key) })
      verdict(Locking::Client.reverse_gate_reasons(count), "rolling back to phase 0 is safe")
    end

    # The core's gate, in the core's words: the same rules as `phase advance` (a running backfill's lease
    # included, `backfill_holder`).
    def protocol_reasons(source_only, in_phase_zero, backfill_holder)
      Locking::Client.gate_reasons(in_phase_zero, source_only, backfill_holder)
    end

    def verdict(reasons, safe)
      result("open" => reasons.empty?, "reasons" => reasons.map { |r| json_text(r) })
      if reasons.empty?
        @out.puts "OPEN: #{safe}"
        EXIT_OK
      else
        @out.puts "CLOSED:"
        reasons.each { |r| @out.puts "  - #{r}" }
        EXIT_REFUSED
      end
    end
  end
end
