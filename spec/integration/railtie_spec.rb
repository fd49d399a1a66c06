# frozen_string_literal: true

require "open3"
require "tmpdir"
require "rbconfig"

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
      expect(lines[2]).to eq(%w[locking:backfill locking:gate locking:phase locking:status].inspect)
      expect(source_server.redis.get("app-locks:job")).to eq("t")
      expect(destination_server.redis.get("app-locks:job")).to eq("t")
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
