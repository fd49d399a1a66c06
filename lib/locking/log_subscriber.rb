# frozen_string_literal: true

require "active_support/log_subscriber"

class Locking
  # Logs the *.locking notifications (acquire, conflict, release, renew,
  # error, release_error, lost, unlock, wait) to ActiveJob's logger, or Locking.logger when set.
  class LogSubscriber < ActiveSupport::LogSubscriber
    def acquire(event)
      if event.payload[:retaken]
        info { "[locking] #{job(event)} took #{event.payload[:lock_key]} again at perform: it expired while the job waited" }
      else
        debug { "[locking] #{job(event)} acquired #{event.payload[:lock_key]} at #{event.payload[:at]}" }
      end
    end

    def wait(event)
      debug { "[locking] #{job(event)} waits up to #{event.payload[:wait]} s for #{event.payload[:lock_key]}" }
    end

    def conflict(event)
      info { "[locking] #{job(event)} conflict on #{event.payload[:lock_key]} at #{event.payload[:at]}" }
    end

    def release(event)
      debug do
        "[locking] #{job(event)} released #{event.payload[:lock_key]} (#{event.payload[:reason]}, " \
          "#{event.payload[:released] ? 'deleted' : 'already gone'})"
      end
    end

    def renew(event)
      debug { "[locking] #{job(event)} kept #{event.payload[:lock_key]} for its retry" }
    end

    def error(event)
      error = event.payload[:error]
      warn { "[locking] #{job(event)} Redis error on #{event.payload[:lock_key]}: #{error.class}: #{error.message}" }
    end

    def release_error(event)
      error = event.payload[:error]
      warn do
        "[locking] #{job(event)} could not release #{event.payload[:lock_key]} (#{event.payload[:reason]}): " \
          "#{error.class}: #{error.message}; it stays locked until its TTL runs out"
      end
    end

    def lost(event)
      at = event.payload[:at]
      warn do
        "[locking] #{[job(event), 'lost'].reject(&:empty?).join(' ')} #{event.payload[:lock_key]}#{" (#{at})" if at}: " \
          "a renewal found it expired or held by another token, or none was confirmed before its deadline"
      end
    end

    def unlock(event)
      info { "[locking] unlocked #{event.payload[:lock_key]} (#{event.payload[:deleted]})" }
    end

    def logger
      Locking.logger || (defined?(ActiveJob::Base) ? ActiveJob::Base.logger : nil)
    end

    private

    def job(event)
      [event.payload[:job_class], event.payload[:job_id]].compact.join(" ")
    end
  end
end

Locking::LogSubscriber.attach_to :locking
