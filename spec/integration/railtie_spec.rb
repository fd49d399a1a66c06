# frozen_string_literal: true

# The Railtie in a minimal Rails app, in a process of its own: settings from
# config/locking.yml and config.locking, and the rake tasks.
RSpec.describe "Rails integration" do
  lib = File.expand_path("../../lib", __dir__)

  it "configures Locking from config/locking.yml and config.locking, and adds the rake tasks" do
    Dir.mktmpdir("locking-rails-") do |root|
      Dir.mkdir(File.join(root, "config"))
      File.write(File.join(root, "config", "locking.yml"), <<~YAML)
        test:
          source: #{source_server.url}
          key_prefix: "app-locks:"
          timeout: 2.5
      YAML
      File.write(File.join(root, "app.rb"), <<~RUBY)
        require "rails"
        require "active_job/railtie"
        require "locking"
        class DemoApp < Rails::Application
          config.root = #{root.dump}
          config.eager_load = false
          config.logger = Logger.new(nil)
          config.locking.destination = #{destination_server.url.dump}
          config.locking.phase = :dual
        end
        DemoApp.initialize!
      RUBY
      script = <<~RUBY
        require "./app"
        c = Locking.configuration
        puts [c.source, c.destination, c.phase, c.key_prefix, c.timeout].inspect
        lock = Locking.new("job", token: "t")
        puts lock.acquire(10)
        require "rake"
        DemoApp.load_tasks
        puts Rake::Task.tasks.map(&:name).grep(/\\Alocking:/).sort.inspect
      RUBY
      env = { "RAILS_ENV" => "test", "RUBYLIB" => lib, "BUNDLE_GEMFILE" => nil, "RUBYOPT" => nil }
      out, status = Open3.capture2e(env, RbConfig.ruby, "-e", script, chdir: root)
      expect(status).to be_success, out
      lines = out.lines.map(&:chomp)
      expect(lines[0]).to eq([source_server.url, destination_server.url, :dual, "app-locks:", 2.5].inspect)
      expect(lines[1]).to eq("true")
      expect(lines[2]).to eq(%w[locking:audit locking:backfill locking:cleanup_source locking:gate locking:phase locking:status
                                locking:unlock].inspect)
      expect(source_server.redis.get("app-locks:job")).to eq("t")
      expect(destination_server.redis.get("app-locks:job")).to eq("t")
    end
  end

  # An app laid out as `rails new` lays it out: the Rakefile requires
  # config/application and loads the tasks, and only the :environment task
  # (defined by Rails after our Railtie has loaded its tasks) runs
  # config/environment.rb, which initializes the app.
  it "runs rake locking:* with the app's settings (config/locking.yml, config.locking), no environment variables" do
    Dir.mktmpdir("locking-rails-new-") do |root|
      FileUtils.mkdir_p(File.join(root, "config", "environments"))
      File.write(File.join(root, "Rakefile"), <<~RUBY)
        require_relative "config/application"
        Rails.application.load_tasks
      RUBY
      File.write(File.join(root, "config", "application.rb"), <<~RUBY)
        require "rails"
        require "active_job/railtie"
        require "locking"
        module Shop
          class Application < Rails::Application
            config.load_defaults 6.1
            config.eager_load = false
            config.logger = Logger.new(nil)
          end
        end
      RUBY
      File.write(File.join(root, "config", "environment.rb"), <<~RUBY)
        require_relative "application"
        Rails.application.initialize!
      RUBY
      File.write(File.join(root, "config", "environments", "development.rb"), <<~RUBY)
        Rails.application.configure do
          config.locking.destination = #{destination_server.url.dump}
          config.locking.phase = :dual
        end
      RUBY
      File.write(File.join(root, "config", "locking.yml"), <<~YAML)
        development:
          source: #{source_server.url}
          key_prefix: "shop-locks:"
      YAML
      source_server.redis.set("shop-locks:ImportJob:1", "t1", px: 60_000)
      source_server.redis.set("locking:Other:1", "t2", px: 60_000) # another prefix: not ours

      env = ENV.keys.grep(/\A(LOCKING_|REDIS_URL|RAILS_ENV|RACK_ENV)/).to_h { |k| [k, nil] }
               .merge("RUBYLIB" => lib, "BUNDLE_GEMFILE" => nil, "RUBYOPT" => nil)
      rake = ->(task) { Open3.capture2e(env, RbConfig.ruby, "-S", "rake", task, chdir: root) }

      out, status = rake.("locking:status")
      expect(status).to be_success, out
      expect(out).to match(/source\s+#{Regexp.escape(source_server.url)}\s+1 lock keys/)
      expect(out).to match(/destination\s+#{Regexp.escape(destination_server.url)}\s+0 lock keys/)
      expect(out).to match(/phase\s+1 \(dual\) \(static/)

      out, status = rake.("locking:gate")
      expect(status.exitstatus).to eq(1), out
      expect(out).to include("source-only locks: 1")

      out, status = rake.("locking:backfill")
      expect(status).to be_success, out
      expect(out).to include("1 copied")
      expect(destination_server.redis.get("shop-locks:ImportJob:1")).to eq("t1")
      expect(destination_server.redis.keys("locking:*")).to eq([])

      out, status = rake.("locking:gate")
      expect(status).to be_success, out
      expect(out).to include("OPEN")
    end
  end

  it "does not load Rails or ActiveJob unless the app does" do
    out, status = Open3.capture2e({ "RUBYLIB" => lib, "RUBYOPT" => nil },
                                  RbConfig.ruby, "-e",
                                  'require "locking"; p [defined?(Rails), defined?(ActiveJob), defined?(ActiveSupport)]')
    expect(status).to be_success, out
    expect(out.chomp).to eq("[nil, nil, nil]")
  end
end
