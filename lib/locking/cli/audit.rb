# frozen_string_literal: true

class Locking
  class CLI
    # locking audit [--limit N]: the audit log on the destination, newest first. Entries are JSON objects in a
    # list under the control prefix ({locking-control}:PREFIX:audit), the newest Locking::Client::AUDIT_KEEP kept:
    # phase moves, backfills, broken or taken-over backfill leases, unlocks and cleanup-source.

    private

    def audit_command
      need_destination!
      return usage_error("audit takes no argument (--limit N: how many)") unless @args.empty?

      entries = client.audit_log(options[:limit] || 20)
      result("entries" => entries)
      if entries.empty?
        @out.puts "the audit log under #{options[:prefix].inspect} is empty"
      else
        @out.puts "audit log under #{options[:prefix].inspect}, the last #{entries.size}, newest first:"
        entries.each { |entry| @out.puts "  #{describe_audit(entry)}" }
      end
      EXIT_OK
    end

    # One audit entry in a line: when, who, what.
    def describe_audit(entry)
      what = case entry["event"]
             when "phase" then "phase #{entry['from'] || 'none'} -> #{entry['to']}"
             when "backfill"
               "backfill #{entry['outcome']}: #{number(entry.dig('totals', 'scanned'))} scanned, " \
               "#{number(entry.dig('totals', 'copied'))} copied, #{number(entry.dig('totals', 'failed'))} failed"
             when "backfill-lease" then "backfill lease of #{entry['holder']} #{entry['outcome']} (#{entry['why']})"
             when "unlock" then describe_unlock(entry)
             else
               "#{entry['event']} #{entry['outcome']}: " \
               "#{(entry['totals'] || {}).map { |k, v| "#{number(v)} #{k}" }.join(', ')}"
             end
      "#{entry['at']} #{entry['by']}: #{what}"
    end

    # An unlock's entry (from locking unlock, or the dashboard's: via "dashboard"); entries written before
    # semaphores were counted have no "semaphores_deleted".
    def describe_unlock(entry)
      what = entry["key"] ? entry["key"].inspect : "--glob #{entry['glob'].inspect}"
      what += " (#{entry['via']})" if entry["via"]
      semaphores = entry.dig("totals", "semaphores_deleted")
      deleted = semaphores ? "lock key(s) and #{number(semaphores)} semaphore key(s)" : "key(s)"
      "unlock #{what}: #{number(entry.dig('totals', 'deleted'))} #{deleted} deleted"
    end
  end
end
