# frozen_string_literal: true

class Locking
  class CLI
    # locking cleanup-source: after phase 3, deletes the locks left on the source.

    private

    # After phase 3 the source is read by nobody, but locks without a TTL,
    # and those not yet expired, stay there. This deletes them, strings under
    # the prefix only, once nothing can read them: the fleet in phase 3
    # (dynamic: every process reports phase 3 alone; static: this
    # configuration says :destination).
    def cleanup_source
      need_destination!
      reasons = cleanup_refusals
      unless reasons.empty?
        @out.puts "refused: cleanup-source runs only once the fleet is in phase 3 with no phase-2 process left:"
        reasons.each { |r| @out.puts "  - #{r}" }
        return EXIT_REFUSED
      end

      tool = client(phase: :dual)
      cursor = 0
      found = deleted = 0
      loop do
        cursor, page_found, page_deleted = tool.cleanup_source_page(cursor, count: options[:batch],
                                                                            dry_run: options[:dry_run])
        found += page_found
        deleted += page_deleted
        break if cursor.zero?
      end
      if options[:dry_run]
        @out.puts "dry run: #{number(found)} lock key(s) under #{options[:prefix].inspect} on the source would be deleted"
      else
        @out.puts "deleted #{number(deleted)} lock key(s) under #{options[:prefix].inspect} from the source " \
                  "(#{number(found)} found); other keys are untouched"
        audit(event: "cleanup-source", outcome: "done", totals: { "deleted" => deleted })
      end
      EXIT_OK
    rescue Interrupt
      @out.puts "interrupted: #{number(deleted)} deleted so far; running it again goes on (it starts a new walk)"
      130
    end

    def cleanup_refusals
      current = client.control_phase
      fleet = client.fleet
      if current
        reasons = []
        reasons << "the fleet is in phase #{describe_phase(current)}" unless current == :destination
        behind = fleet.reject { |m| m[:phase] == :destination && m[:highest] == :destination }
        unless behind.empty?
          reasons << "#{behind.size} process(es) not in phase 3 alone: #{behind.first(5).map { |m| m[:process] }.join(', ')}"
        end
        reasons
      elsif options[:phase] == :destination
        []
      else
        ["no dynamic phase is set, and this configuration's phase is #{options[:phase].inspect}, not :destination " \
         "(run it from the app, or with LOCKING_PHASE=destination, once every process is deployed with phase 3)"]
      end
    end
  end
end
