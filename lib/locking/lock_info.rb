# frozen_string_literal: true

class Locking
  class << self
    # Who holds a lock, where the phase reads it: the source in phase 0, the
    # source then the destination in phase 1, the destination then the
    # source in phase 2, the destination in phase 3.
    #
    #   Locking.lock_info("ImportJob:42") # => { token: "…", ttl: 3599.2 } or nil
    #
    # A semaphore has many holders, not one token: asked about a semaphore's
    # key, lock_info raises ArgumentError (see Locking.semaphore_info).
    #
    # @param key [String] the lock's key, without key_prefix
    # @return [Hash, nil] { token:, ttl: } (ttl in seconds, a Float;
    #   Float::INFINITY without expiry), nil when nobody holds it
    # @raise [ArgumentError] when the key is a semaphore's
    def lock_info(key)
      raise ArgumentError, "lock_info needs a key (a non-empty String), got #{key.inspect}" unless key.is_a?(String) && !key.empty?

      lock_servers.each do |server|
        found = find_lock(server, key)
        return lock_info_of(found) if found
      end
      if lock_servers.any? { |server| find_semaphore(server, key) }
        raise ArgumentError, "#{key.inspect} is a semaphore's key, not a lock's: a semaphore has many holders; ask " \
                             "Locking::Semaphore#holders (how many places are taken) or Locking.semaphore_info(key) " \
                             "(each place's token and time left)"
      end
      nil
    end

    # The live places of a semaphore, on the server whose places count in
    # this phase (as Locking::Semaphore#holders: the source in phases 0 and 1,
    # the destination in 2 and 3).
    #
    #   Locking.semaphore_info("exports") # => { places: [{ token: "…", ttl: 41.5 }, ...] } or nil
    #
    # @param key [String] the semaphore's key, without key_prefix
    # @return [Hash, nil] { places: [{ token:, ttl: }, ...] } (ttl in seconds,
    #   a Float, by the server's clock; places may be empty once all expired
    #   and the key not yet), nil when there is no semaphore at the key
    # @raise [ArgumentError] when the key is a lock's
    def semaphore_info(key)
      raise ArgumentError, "semaphore_info needs a key (a non-empty String), got #{key.inspect}" unless key.is_a?(String) && !key.empty?

      server = lock_servers.first or return nil
      places = find_semaphore(server, key)
      if places.nil? && find_lock(server, key)
        raise ArgumentError, "#{key.inspect} is a lock's key, not a semaphore's: ask Locking.lock_info(key)"
      end

      places && { places: places.map { |(token, left)| { token: token, ttl: left / 1000.0 } } }
    end

    # Every lock whose key (without key_prefix) matches a Redis glob, a SCAN
    # page at a time, where the phase reads (see lock_info): a lock on both
    # servers is yielded once.
    #
    #   Locking.each_lock("ImportJob:*") { |key, info| ... }
    #
    # @yieldparam pair [Array(String, Hash)] the key and { token:, ttl: }
    # @return [Enumerator] without a block; nil with one
    def each_lock(glob = "*", &block)
      raise ArgumentError, "each_lock needs a glob (a non-empty String), got #{glob.inspect}" unless glob.is_a?(String) && !glob.empty?
      return enum_for(:each_lock, glob) unless block

      first, second = lock_servers
      each_lock_on(first, glob) { |key, info| yield [key, info] }
      if second
        # Locks on the other server only (taken in the neighbouring phase).
        each_lock_on(second, glob) { |key, info| yield [key, info] unless lock_on?(first, key) }
      end
      nil
    end

    private

    def lock_servers
      config = configuration
      phase = lock_phase_index
      servers = phase >= 2 ? %i[destination source] : %i[source destination]
      servers.delete_at(1) if [0, 3].include?(phase)
      servers.select { |server| config.public_send(server) }
    end

    # With dynamic phases, the phase the fleet is told to use (none set yet: both servers).
    def lock_phase_index
      return client.phase_index unless client.dynamic?

      phase = client.control_phase
      phase ? Configuration.phase_index(phase) : 1
    end

    def each_lock_on(server, glob)
      glob = "#{glob}*" unless glob.match?(/[*?\[\\]/) # an exact glob is one key: walk it as a pattern
      cursor = 0
      loop do
        cursor, page = client.lock_page(server, cursor, glob, 1000)
        page.each { |found| yield found[0], lock_info_of(found) }
        break if cursor.zero?
      end
    end

    def lock_on?(server, key) = !find_lock(server, key).nil?

    # [key, token, pttl] of one lock on a server, or nil: one lookup (a key
    # with glob characters is matched literally, walking with SCAN).
    def find_lock(server, key)
      glob = key.gsub(/[*?\[\]\\]/) { |char| "\\#{char}" }
      cursor = 0
      loop do
        cursor, page = client.lock_page(server, cursor, glob, 1000)
        found = page.find { |(name, _token, _pttl)| name == key }
        return found if found
        return nil if cursor.zero?
      end
    end

    # The live places [[token, ms left], ...] of the semaphore at `key` on a server, or nil when it has none there.
    def find_semaphore(server, key)
      unless client.respond_to?(:semaphore_page)
        raise Error, "semaphores are not yet supported by Locking::Testing's memory mode"
      end

      glob = key.gsub(/[*?\[\]\\]/) { |char| "\\#{char}" }
      cursor = 0
      loop do
        cursor, page = client.semaphore_page(server, cursor, glob, 1000)
        found = page.find { |(name, _places)| name == key }
        return found.last if found
        return nil if cursor.zero?
      end
    end

    def lock_info_of((_key, token, pttl))
      { token: token, ttl: pttl.negative? ? Float::INFINITY : pttl / 1000.0 }
    end
  end
end
