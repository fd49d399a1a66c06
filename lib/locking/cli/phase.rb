# frozen_string_literal: true

class Locking
  class CLI
    # locking phase [set PHASE | advance]: shows or moves the fleet's phase.
    PHASE_CHOICES = "0..3 or source|dual|drain|destination"

    private

    def phase
      need_destination!
      case @args.shift
      when nil then show_phase
      when "set"
        text = @args.shift or return usage_error("phase set needs a phase: #{PHASE_CHOICES}")
        target = parse_phase(text) or return usage_error("unknown phase #{text.inspect} (expected #{PHASE_CHOICES})")
        set_phase(target)
      when "advance" then advance
      else usage_error("unknown phase command (expected: phase, phase set PHASE, phase advance)")
      end
    end

    # @return [Symbol, nil] nil for anything but 0..3 or a phase's name
    def parse_phase(text)
      index = text.match?(/\A[0-3]\z/) ? Integer(text) : Configuration::PHASES.index(text.to_sym)
      index && Configuration::PHASES[index]
    end

    def show_phase
      current = client.control_phase
      fleet = client.fleet
      line = if current
               "#{describe_phase(current)} (dynamic: the control key on the destination)"
             elsif options[:phase] == :dynamic
               "none set: processes with phase :dynamic refuse to work until `locking phase set PHASE --init`"
             else
               "#{describe_phase(options[:phase])} (static: this configuration's phase; no dynamic phase is set)"
             end
      @out.puts format("%-12s %s", "phase", line)
      result("phase" => phase_json, "fleet" => fleet.map { |m| member_json(m) })
      show_control_master
      @out.puts format("%-12s %d process(es) reporting", "fleet", fleet.size)
      fleet.group_by { |m| [m[:phase], m[:highest]] }.sort_by { |(low, high), _| [low, high].map { |p| Configuration.phase_index(p) } }
           .each do |(low, high), members|
        phases = if low == high
                   "phase #{describe_phase(low)}"
                 else
                   "phases #{Configuration.phase_index(low)}..#{Configuration.phase_index(high)} (moving)"
                 end
        @out.puts "  #{phases}: #{members.size}: " \
                  "#{members.first(5).map { |m| describe_member(m) }.join(', ')}#{members.size > 5 ? ', ...' : ''}"
      end
      EXIT_OK
    end

    # On a cluster destination, one master holds every control key (the phase, the fleet's heartbeats): while it is
    # down, processes go on in their cached phase until their own heartbeat lapses, then refuse.
    def show_control_master
      stats = client.cluster_stats(:destination) or return

      @out.puts format("%-12s %s", "control",
                       "the control keys ({locking-control}) are on master #{stats[:control_master] || 'unknown'}: " \
                       "while it is down, the phase cannot move, and processes stop once their heartbeat lapses")
    end

    def member_json(member)
      { "process" => json_text(member[:process]), "phase" => Configuration.phase_index(member[:phase]),
        "highest" => Configuration.phase_index(member[:highest]), "age_ms" => member[:age_ms],
        "expires_in_ms" => member[:expires_in_ms] }
    end

    def describe_member(member)
      return member[:process] unless member[:age_ms]

      "#{member[:process]} (seen #{seconds(member[:age_ms])} ago)"
    end

    # The count the gate (1 -> 2) or the reverse gate (1 -> 0) needs, and
    # how many lock keys were scanned for it: [count, scanned], or nil.
    def one_sided_for(current, target)
      return nil unless current == :dual

      case target
      when :drain then client(phase: :dual).source_only(examples: 0).first(2)
      when :source then client(phase: :dual).destination_only(examples: 0).first(2)
      end
    end

    def advance
      current = client.control_phase
      return refuse_unset(:source) if current.nil?

      index = Configuration.phase_index(current)
      if index == 3
        @out.puts "refused: the fleet is in phase #{describe_phase(current)}, the last phase; nothing to advance"
        result("from" => index, "to" => nil, "moved" => false, "check" => options[:check] || false,
               "reasons" => ["the fleet is in the last phase"])
        return EXIT_REFUSED
      end
      set_phase(Configuration::PHASES[index + 1], expected: current)
    end

    # Moves the fleet to `target` once it is safe, waiting up to --wait for
    # the fleet to catch up (a lock count that blocks the move does not wait:
    # it needs a backfill, or time for TTLs). The rules, a running backfill's
    # lease included, are the core's (Client#transition_reasons), as the gate's.
    # --check stops at the verdict; --wait-fleet waits after the move.
    def set_phase(target, expected: :any)
      current = client.control_phase
      result("from" => current && Configuration.phase_index(current), "to" => Configuration.phase_index(target),
             "moved" => false, "check" => options[:check] || false)
      return initialize_phase(target) if current.nil?
      if expected != :any && current != expected
        return refuse(current, target, ["the phase changed meanwhile (now #{current})"])
      end

      one_sided, scanned = one_sided_for(current, target)
      if target == :drain && empty_prefix?(scanned, client.fleet)
        _, others = client.transition_reasons(target, source_only: one_sided)
        return refuse(current, target, others + [empty_prefix_reason(scanned, [])])
      end

      deadline = monotonic + options[:wait]
      @said_at = nil
      loop do
        now, reasons = client.transition_reasons(target, source_only: one_sided)
        return refuse(now || current, target, ["the phase changed meanwhile (now #{now.inspect})"]) if now != current
        break if reasons.empty?
        return refuse(current, target, reasons) if monotonic >= deadline || one_sided.to_i.positive?

        say_waiting("waiting (#{format('%.0f', deadline - monotonic)}s left): #{reasons.join('; ')}")
        sleep 0.2
      end
      recount_refusal(current, target, one_sided) || check_or_store(current, target)
    end

    def check_or_store(current, target)
      if options[:check]
        @out.puts "OPEN: phase #{current ? describe_phase(current) : 'none'} -> #{describe_phase(target)} is allowed " \
                  "now (--check: nothing was set)"
        result("reasons" => [])
        return EXIT_OK
      end
      status = store_phase(current, target)
      status == EXIT_OK && options[:wait_fleet] ? wait_for_fleet(target) : status
    end

    # --wait-fleet: after the move, until every process that reports (a live heartbeat) reports the new phase
    # alone; processes that stop reporting (their heartbeat lapsed: idle, or gone) do not count.
    def wait_for_fleet(target)
      deadline = monotonic + options[:wait_fleet]
      @said_at = nil
      loop do
        fleet = client.fleet
        behind = fleet.reject { |m| m[:phase] == target && m[:highest] == target }
        if behind.empty?
          @out.puts "the fleet follows: every reporting process reports phase #{describe_phase(target)} " \
                    "(#{fleet.size} reporting)"
          result("fleet_caught_up" => true, "behind" => [])
          return EXIT_OK
        end
        if monotonic >= deadline
          names = behind.first(5).map { |m| describe_member(m) }.join(", ")
          @out.puts "timed out: after #{options[:wait_fleet]}s, #{behind.size} process(es) do not report phase " \
                    "#{describe_phase(target)} yet: #{names}#{behind.size > 5 ? ', ...' : ''} (the phase was set; " \
                    "`locking phase` shows the fleet)"
          result("fleet_caught_up" => false, "behind" => behind.map { |m| member_json(m) })
          return EXIT_REFUSED
        end
        say_waiting("waiting for the fleet (#{format('%.0f', deadline - monotonic)}s left): " \
                    "#{behind.size} process(es) behind")
        sleep 0.2
      end
    end

    # The one-sided count again, now that every process has caught up: a process still in phase 0 (or 2) while
    # the first count ran could have written a lock on one side since, and none can from here on.
    def recount_refusal(current, target, counted)
      return nil if counted.nil?

      again, = one_sided_for(current, target)
      now, reasons = client.transition_reasons(target, source_only: again)
      return refuse(now || current, target, ["the phase changed meanwhile (now #{now.inspect})"]) if now != current

      reasons.empty? ? nil : refuse(current, target, reasons)
    end

    def initialize_phase(target)
      return refuse_unset(target) unless options[:init]

      check_or_store(nil, target)
    end

    def refuse_unset(target)
      @out.puts "refused: no phase is set on the destination (never set, or lost with the destination's data)."
      @out.puts "  Processes with phase :dynamic refuse to work until one is. To set the first phase, or the"
      @out.puts "  phase the fleet was in before the destination lost it: locking phase set #{Configuration.phase_index(target)} --init"
      result("moved" => false, "reasons" => ["no phase is set on the destination"])
      EXIT_REFUSED
    end

    def store_phase(current, target)
      stored = client.set_control_phase(current, target)
      if stored != target
        @err.puts "locking: the phase changed meanwhile (now #{stored.inspect}); nothing was set"
        result("reasons" => ["the phase changed meanwhile"])
        return EXIT_REFUSED
      end
      from = current ? describe_phase(current) : "none"
      @out.puts "phase #{from} -> #{describe_phase(target)}: processes pick it up within their phase_cache_ttl"
      audit(event: "phase", from: current, to: target)
      result("moved" => true, "replicated" => replicated)
      EXIT_OK
    rescue Locking::PhaseError => e
      refuse(current, target, [e.message])
    end

    # The move is on the control keys' master; until its replicas have it, a
    # failover of that master takes the fleet back to the phase before.
    def replicated
      replicas = client.replicate_control
      if replicas[:acknowledged] < replicas[:replicas]
        @err.puts "locking: warning: only #{replicas[:acknowledged]} of the #{replicas[:replicas]} replicas of the " \
                  "control keys' master acknowledged the move in time; if that master fails over before they have " \
                  "it, the fleet goes back to the phase before (check with `locking status`)"
      end
      replicas.transform_keys(&:to_s)
    rescue Locking::Error => e
      @err.puts "locking: warning: could not ask the control keys' master's replicas for the move: #{e.message}"
      nil
    end

    def refuse(current, target, reasons)
      @out.puts "refused: phase #{describe_phase(current)} -> #{describe_phase(target)}:"
      reasons.each { |r| @out.puts "  - #{r}" }
      result("moved" => false, "reasons" => reasons.map { |r| json_text(r) })
      EXIT_REFUSED
    end

    # A line of a wait, at most one every 2 s (`@said_at` is reset when a wait begins).
    def say_waiting(text)
      return if @said_at && monotonic - @said_at < 2

      @said_at = monotonic
      @out.puts text
      @out.flush
    end
  end
end
