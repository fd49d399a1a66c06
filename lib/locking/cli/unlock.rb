# frozen_string_literal: true

class Locking
  class CLI
    # locking unlock KEY | --glob PATTERN [--dry-run]: deletes locks, and semaphores with all their places, on every
    # configured server, whoever holds them (the dashboard's unlock, from a shell), and records it in the audit log.
    # KEY is the key after the prefix; PATTERN a Redis glob over the same. Only locks (strings) and semaphores
    # (sorted sets as the semaphore scripts write them) are deleted: other data under the prefix stays.

    private

    def unlock
      need_destination!
      key = @args.shift
      return usage_error("unlock takes one KEY, or --glob PATTERN") unless @args.empty?
      return usage_error("unlock needs a KEY or --glob PATTERN (not both)") if key.nil? == options[:glob].nil?
      return usage_error("unlock: an empty key names no lock") if key && key.empty?
      return usage_error("unlock --glob: an empty pattern; to match every lock, say \"*\"") if options[:glob] && options[:glob].empty?

      glob = key ? escape_glob(key) : options[:glob]
      keys = matching_locks(glob)
      semaphores = matching_semaphores(glob)
      what = key ? key.inspect : "matching #{options[:glob].inspect}"
      result("key" => key && json_text(key), "glob" => options[:glob] && json_text(options[:glob]),
             "dry_run" => options[:dry_run], "matched" => keys.size, "keys" => keys.first(100).map { |k| json_text(k) },
             "semaphores_matched" => semaphores.size,
             "semaphore_keys" => semaphores.keys.first(100).map { |k| json_text(k) })
      return unlock_dry_run(what, keys, semaphores) if options[:dry_run]

      # Each key is deleted where it is a lock or a semaphore (the server decides): other data stays.
      deleted = (keys + semaphores.keys).uniq.map { |one| client.unlock_key(one) }
      locks = deleted.sum { |one| one[:locks] }
      places = deleted.sum { |one| one[:semaphores] }
      @out.puts "unlocked #{what}: #{number(locks)} lock key(s) deleted, #{number(places)} semaphore key(s) deleted " \
                "(each with all its places; on every configured server)"
      result("deleted" => locks, "semaphores_deleted" => places)
      audit(event: "unlock", outcome: "done", key: key && json_text(key), glob: options[:glob] && json_text(options[:glob]),
            totals: { "deleted" => locks, "semaphores_deleted" => places })
      EXIT_OK
    end

    def unlock_dry_run(what, keys, semaphores)
      @out.puts "dry run: #{number(keys.size)} lock(s) #{what} under #{options[:prefix].inspect} would be deleted" \
                "#{':' unless keys.empty?}"
      keys.first(50).each { |one| @out.puts "  #{one.inspect}" }
      @out.puts "  ..." if keys.size > 50
      @out.puts "dry run: #{number(semaphores.size)} semaphore(s) #{what} under #{options[:prefix].inspect} would be " \
                "deleted, each with all its places#{':' unless semaphores.empty?}"
      semaphores.first(50).each { |one, places| @out.puts "  #{one.inspect} (#{number(places)} live places)" }
      @out.puts "  ..." if semaphores.size > 50
      EXIT_OK
    end

    # The keys (after the prefix) of the locks matching `glob` on every configured server.
    def matching_locks(glob)
      each_server_page(glob, :lock_page).map(&:first).uniq
    end

    # The semaphores matching `glob` on every configured server: {key (after the prefix) => live places on the
    # first server that has it}.
    def matching_semaphores(glob)
      found = {}
      each_server_page(glob, :semaphore_page).each { |(key, places)| found[key] ||= places.size }
      found
    end

    # Every entry of the `page` walk (lock_page, semaphore_page) of `glob`, server after server.
    def each_server_page(glob, page)
      %i[source destination].select { |server| options[server] }.flat_map do |server|
        tool = client(phase: server)
        found = []
        cursor = 0
        loop do
          cursor, entries = tool.public_send(page, server, cursor, glob, 1000)
          found.concat(entries)
          break if cursor.zero?
        end
        found
      end
    end

    # A key as a glob that matches it alone.
    def escape_glob(key)
      key.gsub(/[*?\[\]\\]/) { |char| "\\#{char}" }
    end
  end
end
