# frozen_string_literal: true

class Locking
  class CLI
    # locking status: lock keys and semaphores per server, the phase, the fleet, the backfill, the audit log.

    private

    def status
      servers = []
      servers << [:source, options[:source]] if options[:source]
      servers << [:destination, options[:destination]] if options[:destination]
      raise ArgumentError, "no server: pass --source URL and/or --destination URL (or set LOCKING_SOURCE_URL)" if servers.empty?

      @out.puts format("%-12s %s", "source", "none configured (the migration is finished)") unless options[:source]
      servers.each do |name, url|
        stats = client(phase: name == :source ? :source : :destination).key_stats(name)
        ttl = if stats[:keys] == stats[:without_ttl]
                ""
              else
                "TTL max #{seconds(stats[:max_ttl_ms])}, p99 #{seconds(stats[:p99_ttl_ms])}, "
              end
        @out.puts format("%-12s %-32s %12s lock keys  (%s%s without TTL)",
                         name, Locking.server_name(url), number(stats[:keys]), ttl, number(stats[:without_ttl]))
        @out.puts format("%-12s %-32s %12s semaphore keys  (%s live places)",
                         name, Locking.server_name(url), number(stats[:semaphores]), number(stats[:places]))
        (@result_servers ||= {})[name.to_s] = { "server" => Locking.server_name(url) }.merge(stats.transform_keys(&:to_s))
      end
      result("servers" => @result_servers)
      return EXIT_OK unless options[:destination]

      show_phase
      show_backfill_and_audit
      EXIT_OK
    end

    # A saved backfill position (JSON), or nil when there is none or it does not parse.
    def parse_saved(text)
      text && JSON.parse(text)
    rescue JSON::ParserError
      nil
    end

    def show_backfill_and_audit
      lease = lease_info
      saved = parse_saved(client.control_get(CURSOR))
      saved = nil unless saved.is_a?(Hash)
      line = if lease then describe_lease(lease)
             elsif saved then "not running; a saved position to resume from"
             else
               "not running"
             end
      if saved && saved["totals"]
        line += ", #{number(saved['totals']['scanned'])} keys scanned so far, #{number(saved['totals']['copied'])} copied"
      end
      @out.puts format("%-12s %s", "backfill", line)
      result("backfill" => { "lease" => lease, "saved" => saved && { "cursor" => saved["cursor"], "totals" => saved["totals"] } })
      entries = client.audit_log(5)
      @out.puts format("%-12s %s", "audit", entries.empty? ? "nothing recorded" : "the last #{entries.size}, newest first:")
      entries.each { |entry| @out.puts "  #{describe_audit(entry)}" }
      result("audit" => entries)
    end
  end
end
