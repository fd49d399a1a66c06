# frozen_string_literal: true

class Locking
  class CLI
    # locking unlock KEY | --glob PATTERN [--dry-run]: deletes locks on every configured server, whoever holds
    # them (the dashboard's unlock, from a shell), and records it in the audit log. KEY is the key after the
    # prefix; PATTERN a Redis glob over the same.

    private

    def unlock
      need_destination!
      key = @args.shift
      return usage_error("unlock takes one KEY, or --glob PATTERN") unless @args.empty?
      return usage_error("unlock needs a KEY or --glob PATTERN (not both)") if key.nil? == options[:glob].nil?
      return usage_error("unlock: an empty key names no lock") if key && key.empty?
      return usage_error("unlock --glob: an empty pattern; to match every lock, say \"*\"") if options[:glob] && options[:glob].empty?

      keys = key ? matching_locks(escape_glob(key)) : matching_locks(options[:glob])
      what = key ? key.inspect : "matching #{options[:glob].inspect}"
      result("key" => key && json_text(key), "glob" => options[:glob] && json_text(options[:glob]),
             "dry_run" => options[:dry_run], "matched" => keys.size, "keys" => keys.first(100).map { |k| json_text(k) })
      if options[:dry_run]
        @out.puts "dry run: #{number(keys.size)} lock(s) #{what} under #{options[:prefix].inspect} would be deleted" \
                  "#{':' unless keys.empty?}"
        keys.first(50).each { |one| @out.puts "  #{one.inspect}" }
        @out.puts "  ..." if keys.size > 50
        return EXIT_OK
      end

      # Only what was found as a lock (a string under the prefix): other data under the prefix stays.
      deleted = keys.sum { |one| client.force_delete(one) }
      @out.puts "unlocked #{what}: #{number(deleted)} lock key(s) deleted (on every configured server)"
      result("deleted" => deleted)
      audit(event: "unlock", outcome: "done", key: key && json_text(key), glob: options[:glob] && json_text(options[:glob]),
            totals: { "deleted" => deleted })
      EXIT_OK
    end

    # The keys (after the prefix) of the locks matching `glob` on every configured server.
    def matching_locks(glob)
      %i[source destination].select { |server| options[server] }.flat_map do |server|
        tool = client(phase: server)
        found = []
        cursor = 0
        loop do
          cursor, page = tool.lock_page(server, cursor, glob, 1000)
          found.concat(page.map(&:first))
          break if cursor.zero?
        end
        found
      end.uniq
    end

    # A key as a glob that matches it alone.
    def escape_glob(key)
      key.gsub(/[*?\[\]\\]/) { |char| "\\#{char}" }
    end
  end
end
