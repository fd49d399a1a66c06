# frozen_string_literal: true

# rake locking:status | locking:backfill | locking:gate | locking:phase | locking:unlock | locking:audit |
#   locking:cleanup_source
# Options go in LOCKING_ARGS, as for exe/locking:
#   rake locking:backfill LOCKING_ARGS="--rate 50000"
#   rake locking:phase LOCKING_ARGS="advance --wait 60"
# Defaults come from the app's Locking.configure (source, destination, key_prefix).
require "shellwords"

namespace :locking do
  { "status" => "status", "backfill" => "backfill", "gate" => "gate", "phase" => "phase",
    "unlock" => "unlock", "audit" => "audit", "cleanup_source" => "cleanup-source" }.each do |task_name, command|
    desc "locking #{command} (see `locking --help`; options in LOCKING_ARGS)"
    task task_name do
      # Decided now, not when this file loads: a Rails app defines
      # :environment after its Railtie loads these tasks.
      Rake::Task[:environment].invoke if Rake::Task.task_defined?(:environment)
      require "locking/cli"
      status = Locking::CLI.new([command, *Shellwords.split(ENV.fetch("LOCKING_ARGS", ""))]).run
      exit status unless status.zero?
    end
  end
end
