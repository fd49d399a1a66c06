# frozen_string_literal: true

class Locking
  # Base class of every error raised by locking (bad arguments raise ArgumentError or TypeError).
  class Error < StandardError; end

  # A Redis server could not be reached or the connection broke; the message names the server.
  class ConnectionError < Error; end

  # A Redis server did not answer within the configured timeout.
  class TimeoutError < ConnectionError; end

  # Dynamic phases: the fleet's phase is not set on the destination (never set, or lost with the
  # destination's data); operations refuse rather than guess. `locking phase set` sets it.
  class PhaseError < Error; end

  # min_replicas_acked: a lock was written on the master, but fewer replicas than asked acknowledged it in
  # time, so it may not survive a failover. The lock is left in place (it expires by its TTL).
  class NotReplicatedError < Error; end

  # A Redis server answered with an error reply (WRONGTYPE, OOM, NOAUTH ...).
  class CommandError < Error; end

  # #acquire was called on a lock this object already holds (the original module's name).
  class AlreadyAcquireLockError < Error; end

  # Locking.with_lock gave up: someone else held the lock for all of `wait:`.
  class NotAcquiredError < Error; end

  # A unique job was enqueued (or performed) while the same job held its lock
  # (Locking::UniqueJob with on_conflict: :raise).
  class DuplicateJobError < Error; end

  # `value` if it is one of `choices`; else an ArgumentError naming `what`, the choices and the value.
  def self.choice!(what, value, choices)
    return value if choices.include?(value)

    raise ArgumentError, "#{what} must be one of #{choices.map(&:inspect).join(', ')}, got #{value.inspect}"
  end
end
