# frozen_string_literal: true

require "securerandom"
require "sidekiq"
require "sidekiq/api"
require "locking"
require_relative "unique_jobs/registry"

class Locking
  # `require "locking/sidekiq"`: a unique job (Locking::UniqueJob on
  # ActiveJob's Sidekiq adapter) that Sidekiq's API deletes, or that dies,
  # frees its lock, so the same job can be enqueued again at once rather
  # than after its TTL:
  #
  # - from a queue: Sidekiq::Queue#clear, a job's #delete
  # - from the scheduled, retry or dead set: an entry's #delete, the set's #clear
  # - a job whose retries are exhausted (or killed through the API): a death handler
  #
  # Only the token in the job's own data is released: a lock someone else
  # holds now (the job's expired and was taken again) stays. A release that
  # fails (Redis down) is logged; the lock then lives out its TTL.
  #
  # (Named SidekiqIntegration: inside `class Locking`, a Locking::Sidekiq
  # would hide ::Sidekiq.)
  module SidekiqIntegration
    PAGE = 100

    module_function

    # Frees the lock a job payload (a Hash, or its JSON) carries, if any.
    # @return [Boolean] whether a lock held by the job's token was freed
    def release(item)
      item = ::Sidekiq.load_json(item) if item.is_a?(String)
      key, token, limit = lock_of(item)
      return false unless key

      (limit ? Semaphore.new(key, limit: limit, token: token) : Locking.new(key, token: token)).release
    rescue JSON::ParserError
      false
    rescue Locking::Error => e
      ::Sidekiq.logger.warn("[locking] could not free lock #{key.inspect} of a deleted job: #{e.message} " \
                            "(it expires with its TTL)")
      false
    end

    # The [key, token, limit] in an ActiveJob payload's data (limit: nil
    # for a lock, N > 1 for a place in a semaphore), or nil.
    def lock_of(item)
      data = item.is_a?(Hash) && Array(item["args"]).first
      lock = data.is_a?(Hash) && data[UniqueJobs::DATA_KEY]
      return nil unless lock.is_a?(Hash) && lock["key"].is_a?(String) && lock["token"].is_a?(String)

      key, token, limit = lock.values_at("key", "token", "limit")
      [key, token, (limit if limit.is_a?(Integer) && limit > 1)]
    end

    # Empties a queue (a list) or a set (a sorted set) atomically, by moving
    # it aside with RENAME, then frees the locks of exactly the jobs moved,
    # a page at a time, and deletes the moved copy. A job a worker took
    # before the move is not touched.
    def clear(key, type)
      aside = "#{key}:locking-clear:#{SecureRandom.hex(8)}"
      ::Sidekiq.redis do |conn|
        begin
          conn.multi do |transaction|
            transaction.rename(key, aside)
            transaction.expire(aside, 86_400) # a process that dies midway leaves no garbage for long
          end
        rescue Redis::CommandError => e
          raise unless e.message.include?("no such key")

          return yield(conn)
        end
        yield conn
        release_page(conn, aside, type)
        conn.unlink(aside)
      end
    end

    def release_page(conn, aside, type)
      start = 0
      loop do
        page = type == :list ? conn.lrange(aside, start, start + PAGE - 1) : conn.zrange(aside, start, start + PAGE - 1)
        page.each { |item| release(item) }
        break if page.size < PAGE

        start += PAGE
      end
    end

    # Sidekiq::Queue
    module Queue
      def clear
        SidekiqIntegration.clear("queue:#{name}", :list) { |conn| conn.srem("queues", name) }
      end
      alias 💣 clear # rubocop:disable Naming/AsciiIdentifiers -- Sidekiq's own alias of clear
    end

    # Sidekiq::JobRecord (a job in a queue)
    module JobRecord
      def delete
        deleted = super
        SidekiqIntegration.release(item) if deleted
        deleted
      end
    end

    # Sidekiq::SortedSet (the scheduled, retry and dead sets)
    module SortedSet
      def clear
        SidekiqIntegration.clear(name, :zset) { nil }
      end
      alias 💣 clear # rubocop:disable Naming/AsciiIdentifiers -- Sidekiq's own alias of clear
    end

    # Sidekiq::JobSet: what SortedEntry#delete and JobSet#delete call.
    module JobSet
      def delete_by_value(name, value)
        deleted = super
        SidekiqIntegration.release(value) if deleted == true
        deleted
      end

      # As Sidekiq's, and frees the lock of the entry it removed.
      def delete_by_jid(score, jid)
        ::Sidekiq.redis do |conn|
          conn.zrangebyscore(name, score, score).each do |element|
            next unless element.index(jid)

            message = ::Sidekiq.load_json(element)
            next unless message["jid"] == jid

            deleted = conn.zrem(name, element)
            @_size -= 1 if deleted
            SidekiqIntegration.release(message) if deleted
            return deleted
          end
        end
        false
      end

      def delete(score, jid) = delete_by_jid(score, jid)
    end

    # A job whose retries are exhausted, or that the API kills.
    DEATH_HANDLER = ->(job, _error) { SidekiqIntegration.release(job) }

    def install
      ::Sidekiq::Queue.prepend(Queue)
      ::Sidekiq::JobRecord.prepend(JobRecord)
      ::Sidekiq::SortedSet.prepend(SortedSet)
      ::Sidekiq::JobSet.prepend(JobSet)
      ::Sidekiq.death_handlers << DEATH_HANDLER unless ::Sidekiq.death_handlers.include?(DEATH_HANDLER)
    end
  end
end

Locking::SidekiqIntegration.install
