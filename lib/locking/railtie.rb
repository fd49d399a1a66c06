# frozen_string_literal: true

require "rails/railtie"

class Locking
  # Reads configuration from the app and loads the rake tasks. Settings come
  # from config/locking.yml (per environment, via config_for; a sample is in
  # the gem's docs/examples/locking.yml) and then from config.locking in
  # application.rb or an environment file:
  #
  #   config.locking.source = ENV["REDIS_URL"]
  #   config.locking.destination = ENV["LOCKING_DESTINATION_URL"]
  #   config.locking.phase = :dynamic
  class Railtie < Rails::Railtie
    config.locking = ActiveSupport::OrderedOptions.new

    initializer "locking.configure" do |app|
      settings = {}
      settings.merge!(app.config_for(:locking).to_h) if app.root.join("config", "locking.yml").exist?
      settings.merge!(app.config.locking.to_h)
      unless settings.empty?
        Locking.configure { |c| settings.each { |name, value| c.public_send(:"#{name}=", value) } }
      end
    end

    initializer "locking.log_subscriber" do
      ActiveSupport.on_load(:active_job) { require "locking/log_subscriber" }
    end

    rake_tasks { load File.expand_path("tasks/locking.rake", __dir__) }
  end
end
