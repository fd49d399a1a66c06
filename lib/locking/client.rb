# frozen_string_literal: true

require "json"

class Locking
  # One process-wide handle on the configured servers (defined natively in
  # ext/locking/src/client.rs). It keeps a small pool of connections per
  # server, opened lazily and reopened after a fork. Application code uses
  # Locking instances instead; this class is public for tools and tests.
  class Client
    # @return [Client] built from a Configuration; raises ArgumentError on a bad URL.
    def self.build(config)
      phase = config.dynamic? ? 0 : Configuration.phase_index(config.phase)
      client = _new(config.source, config.destination, phase, config.key_prefix, config.timeout.to_f,
                    config.pool_size, config.dynamic? ? config.phase_cache_ttl : nil, Socket.gethostname,
                    Configuration::EVICTION_CHECKS.index(config.eviction_policy_check), config.min_replicas_acked)
      leave_fleet_at_exit(client) if config.dynamic?
      client
    end

    # A process that exits normally takes its heartbeat with it, so that
    # `locking phase` does not wait for it to expire. (One that dies leaves
    # it to expire: its lease on the phase lasts the heartbeat's TTL.)
    def self.leave_fleet_at_exit(client)
      @leaving ||= begin
        at_exit do
          @leaving.each do |leaving|
            leaving.leave_fleet
          rescue Locking::Error
            nil # the heartbeat expires by itself
          end
        end
        ObjectSpace::WeakMap.new
      end
      @leaving[client] = client
    end
    private_class_method :leave_fleet_at_exit

    # Dynamic phases: removes this process's heartbeat unless an operation is
    # still in flight. The next operation reads the phase and reports again.
    # @return [Boolean] whether a heartbeat was removed
    def leave_fleet
      _leave_fleet
    end

    # @return [Boolean] true when the lock was taken with this token (or already held by it).
    def acquire(key, token, ttl_ms)
      _acquire(key, token, ttl_ms)
    end

    # @return [Boolean] true when a key holding this token was deleted somewhere.
    def release(key, token)
      _release(key, token)
    end

    # @return [Boolean] whether anyone holds the key where the phase looks.
    def locked?(key)
      _locked(key)
    end

    # @return [Boolean] true when the TTL of the lock holding this token was reset.
    def renew(key, token, ttl_ms)
      _renew(key, token, ttl_ms)
    end

    # Starts renewing a lock this token holds, from a native thread (no GVL
    # needed), until the returned Renewal is stopped or `renew_for` seconds
    # (nil: no limit) have passed. The lock is believed held for `valid_for`
    # seconds from now (what its last confirmed acquire or renewal left).
    # With `limit:`, the key is a semaphore and the token's place is renewed.
    # @return [Renewal] #held?, #lost?, #remaining (seconds believed held),
    #   #stop (returns #remaining after a renewal in flight ended)
    def auto_renew(key, token, ttl_ms, valid_for, renew_for = nil, limit: nil)
      _auto_renew(key, token, ttl_ms, Float(valid_for), renew_for&.to_f, limit)
    end

    # One SCAN page of the locks on :source or :destination whose key (after
    # the prefix) matches `glob` (the dashboard's list).
    # @return [Array(Integer, Array<Array(String, String, Integer)>)] next cursor (0: done), [key, token, pttl]
    def lock_page(server, cursor, glob, count)
      _lock_page(server_index(server), Integer(cursor), glob.to_s, Integer(count))
    end

    # One SCAN page of the semaphores on :source or :destination whose key
    # (after the prefix) matches `glob`, as #lock_page; sorted sets that are
    # not semaphores (no TTL, scores that are no times in ms) are left out.
    # @return [Array(Integer, Array<Array(String, Array<Array(String, Integer)>)>)]
    #   next cursor (0: done), [key, [[token, ms left], ...] (the live places)]
    def semaphore_page(server, cursor, glob, count)
      _semaphore_page(server_index(server), Integer(cursor), glob.to_s, Integer(count))
    end

    # How far along a walk of :source or :destination a cursor is (0.0 to
    # 1.0, which a cursor of 0 is): for a cluster, master by master.
    def walk_fraction(server, cursor)
      _walk_fraction(server_index(server), Integer(cursor))
    end

    # For a Redis Cluster server (:source or :destination), what this process
    # has seen: :masters, :nodes_known, :refreshes (slot map reads), :moved,
    # :asked, :retried (TRYAGAIN/CLUSTERDOWN); nil for another kind of server.
    def cluster_stats(server)
      _cluster_stats(server_index(server))
    end

    # The renewer of this process: :held (locks being renewed), :renewed,
    # :failed, :lost, :batches, :lag_p50_ms, :lag_p99_ms, :lag_max_ms (how late
    # renewals started, of the last 8,192), :cpu_ms (the renewer thread's), :last_error.
    def renewer_stats
      _renewer_stats
    end

    # @return [Integer, nil] milliseconds left; -1 without expiry; nil when the token does not hold the key.
    def ttl_ms(key, token)
      _ttl(key, token)
    end

    # Mirrors one source lock onto the destination (DESIGN: backfill), for
    # the gate into phase 2. `full_key` is the Redis key, prefix included.
    # Phases 0 and 1 only.
    # @return [Symbol] :copied, :already_there, :absent (no string lock on the
    #   source), :conflict (another token on the destination) or :undone
    #   (the source changed meanwhile; the copy was removed again).
    def backfill_key(full_key)
      _backfill_key(full_key).to_sym
    end

    # One backfill batch: up to `pages` SCAN pages of the source (string keys
    # under the prefix, about `count` keys visited per page), each key mirrored
    # onto the destination. Commands are streamed to both servers as their
    # replies come in; more pages per batch keep the servers busier, fewer
    # give a finer --rate and resume point. Phases 0 and 1 only. With
    # dry_run, one page is counted and nothing is written.
    # @return [Hash] :cursor (0 when done), :scanned, :copied, :already_there,
    #   :conflicts, :undone, :absent, :failed, and :errors (the first few
    #   failures, in words)
    # @param lease_until [Numeric, nil] when the backfill's lease is believed
    #   to run out, on `Client.clock`: no write is sent that could land after
    #   it (raises Locking::PhaseError, having written what it had sent)
    def backfill_batch(cursor, count: 1000, pages: BACKFILL_PAGES, dry_run: false, lease_until: nil)
      # The core checks pages against MAX_BACKFILL_PAGES (defined there).
      _backfill_batch(Integer(cursor), Integer(count), Integer(pages), dry_run ? true : false, lease_until&.to_f)
    end

    # SCAN pages per backfill batch by default (measured: 16 beat 4; 64 no better).
    BACKFILL_PAGES = 16

    # Lock keys on :source or :destination, counted with SCAN, and their TTLs;
    # semaphore keys there and their live places.
    # @return [Hash] :keys, :without_ttl, :max_ttl_ms, :p99_ttl_ms (lock keys), :semaphores, :places
    def key_stats(server)
      walk(0, server_index(server), 0)
    end

    # SCAN pages per step of a walk (about 1,000 keys a page): the CLI is
    # single-threaded, so Ctrl-C waits at most one step.
    WALK_PAGES = 8

    # Walks a server page by page (see ext/locking/src/walk.rs).
    def walk(kind, server, examples)
      walk = self.class._walk(kind, server)
      nil until _walk_step(walk, WALK_PAGES)
      _walk_finish(walk, examples)
    end
    private :walk

    # Source locks the destination does not hold with the same token, and
    # live semaphore places on the source whose token has no live place on
    # the destination: the gate's count.
    # @return [Array(Integer, Integer, Array<String>, Integer)] count (locks and places), keys scanned,
    #   a few example keys, how many of the count are places
    # (At most 10,000 are re-checked for operations in flight; the rest count as they were found.)
    def source_only(examples: 5)
      walk(1, 0, Integer(examples)).values_at(0, 1, 2, 4)
    end

    # Destination locks (and semaphore places) the source does not hold with
    # the same token (taken in phase 2): the reverse gate's count, before
    # rolling back from 1 to 0.
    # @return [Array(Integer, Integer, Array<String>, Integer)] as #source_only
    def destination_only(examples: 5)
      walk(1, 1, Integer(examples)).values_at(0, 1, 2, 4)
    end

    # @return [Symbol] the phase this client uses now.
    def phase
      Configuration::PHASES.fetch(phase_index)
    end

    # Dynamic phases: the phase the fleet is told to use (the control key on the destination).
    # @return [Symbol, nil] nil when no phase is set (processes with phase :dynamic then refuse)
    def control_phase
      phase = _control_phase
      phase && Configuration::PHASES.fetch(phase)
    end

    # Dynamic phases: sets the fleet's phase to `target` if it is still
    # `expected` (nil: only if no phase is set). No checks: use
    # #transition_reasons first (the CLI does).
    # @return [Symbol, nil] the phase stored afterwards
    def set_control_phase(expected, target)
      stored = _set_control_phase(expected && Configuration.phase_index(expected), Configuration.phase_index(target))
      stored && Configuration::PHASES.fetch(stored)
    end

    # Dynamic phases: waits (WAIT, at most half the timeout) until every
    # replica of the control keys' master has the phase and heartbeats
    # written so far. A move on no replica is lost if that master fails over.
    # @return [Hash] {acknowledged: Integer, replicas: Integer} (0 and 0: no replica)
    def replicate_control
      acknowledged, replicas = _replicate_control
      { acknowledged: acknowledged, replicas: replicas }
    end

    # Dynamic phases: the processes whose heartbeat is live.
    # @return [Array<Hash>] {process: "host:pid", phase: Symbol (the lowest it may act in),
    #   highest: Symbol, expires_in_ms: Integer, age_ms: Integer or nil}
    def fleet
      _fleet.map do |process, phase, highest, expires, age|
        { process: process, phase: Configuration::PHASES.fetch(phase), highest: Configuration::PHASES.fetch(highest),
          expires_in_ms: expires, age_ms: age }
      end
    end

    # Why the fleet may not move to `target` now (empty when it may).
    # @param source_only [Integer, nil] the gate's count, needed to move from :dual to :drain
    # @return [Array(Symbol or nil, Array<String>)] the current control phase and the reasons
    def transition_reasons(target, source_only: nil)
      current, reasons = _transition_reasons(Configuration.phase_index(target), source_only)
      [current && Configuration::PHASES.fetch(current), reasons]
    end

    # The running backfill's lease on the destination: one backfill at a
    # time, and no move into phase 2 while it is held. `ttl` seconds takes or
    # keeps it for `holder` (with `take_over`, the exact value of a lease it
    # replaces, keeping the TTL that lease has left if longer); `ttl: nil`
    # gives it back: at once, or with `expire: true` left to live out its TTL
    # (marked released) because copies may still be on the wire.
    # @return [String, nil] who holds it afterwards
    def backfill_lease(holder, ttl:, take_over: nil, expire: false)
      ttl_ms = if ttl then (ttl * 1000).to_i.clamp(1, MAX_TTL_MS)
               else
                 expire ? -1 : 0
               end
      _backfill_lease(holder.to_s, ttl_ms, take_over&.to_s)
    end

    # One page of `locking cleanup-source`: string keys under the prefix on
    # the source, deleted (or counted, with dry_run).
    # @return [Array(Integer, Integer, Integer)] next cursor (0: done), found, deleted
    def cleanup_source_page(cursor, count: 1000, dry_run: false)
      _cleanup_source_page(Integer(cursor), Integer(count), dry_run ? true : false)
    end

    # The run_id of :source or :destination (changes when the server restarts).
    def server_run_id(server)
      _server_run_id(server_index(server))
    end

    # The audit entries kept on the destination (the oldest go).
    AUDIT_KEEP = 100

    # Appends an entry (a Hash, stored as JSON) to the audit log on the
    # destination; the newest `keep` are kept.
    def audit(entry, keep: AUDIT_KEEP)
      _audit_push(JSON.generate(entry), keep)
    end

    # The newest audit entries, newest first.
    # @return [Array<Hash>]
    def audit_log(count = 10)
      _audit_recent(count).filter_map do |line|
        JSON.parse(line)
      rescue JSON::ParserError
        nil
      end
    end

    # A value kept under the control prefix on the destination (nil when unset).
    def control_get(name)
      _control_get(name.to_s)
    end

    # A control value's time to live in milliseconds (nil: not set, or no TTL).
    def control_ttl_ms(name)
      _control_ttl_ms(name.to_s)
    end

    # Sets (with a TTL in seconds) or, with nil, deletes a control value.
    def control_set(name, value, ttl: 86_400)
      _control_set(name.to_s, value&.to_s, (ttl * 1000).to_i)
    end

    # Deletes a lock on every configured server whoever holds it (manual
    # unlock; jobs use Locking#release, which checks the token).
    # @return [Integer] keys deleted
    def force_delete(key)
      _force_delete(key)
    end

    # The operator's unlock (locking unlock, the dashboard): deletes `key` on
    # every configured server where it is a lock or a semaphore (all its
    # places), whoever holds it; any other data at the key stays.
    # @return [Hash] :locks and :semaphores, the keys of each deleted
    def unlock_key(key)
      raise ArgumentError, "the key to unlock must be a String, got #{key.inspect}" unless key.is_a?(String)

      locks, semaphores = _unlock_key(key)
      { locks: locks, semaphores: semaphores }
    end

    # Deletes every lock whose key starts with `key_start`, walking with SCAN.
    # @return [Integer] keys deleted
    def delete_matching(key_start)
      _delete_matching(key_start)
    end

    SERVERS = %i[source destination].freeze

    def server_index(server)
      SERVERS.index(server) || raise(ArgumentError, "server must be :source or :destination, got #{server.inspect}")
    end
    private :server_index

    # Switches the phase of the running process; the next operation uses it.
    def phase=(phase)
      _set_phase(Configuration.phase_index(phase))
    end
  end
end
