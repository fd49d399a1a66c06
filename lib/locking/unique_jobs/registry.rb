# frozen_string_literal: true

class Locking
  module UniqueJobs
    # Where a job's lock key and token travel in its serialized data.
    DATA_KEY = "locking"

    # The job classes that declared unique_lock, for UniqueJob.unlock_all!.
    module Registry
      @names = {}
      @mutex = Mutex.new

      class << self
        def add(job_class)
          @mutex.synchronize { @names[job_class.name] = true } if job_class.name
          nil
        end

        # Every loaded class with a unique_lock: those registered, and their
        # subclasses (which inherit it under their own name).
        # @return [Array<Class>]
        def job_classes
          registered = @mutex.synchronize { @names.keys }.filter_map { |name| Object.const_get(name) rescue nil } # rubocop:disable Style/RescueModifier
          subclasses = ActiveJob::Base.descendants.select { |klass| klass.name && klass.try(:locking_declaration) }
          (registered + subclasses).uniq.select { |klass| klass.try(:locking_declaration) }
        end
      end
    end
  end
end
