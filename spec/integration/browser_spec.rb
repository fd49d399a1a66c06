# frozen_string_literal: true

require "selenium-webdriver"
require "webrick"
require "rack/handler/webrick"
require "locking/web"

# The dashboard in a real headless Chromium (Debian's chromium and
# chromium-driver, driven by selenium-webdriver), served by WEBrick from this
# process during a migration. Screenshots go to a temporary directory, or to
# the directory LOCKING_SCREENSHOTS names (`LOCKING_SCREENSHOTS=docs` makes the
# README's).
RSpec.describe "Locking::Web in a browser" do
  CHROMIUM = %w[/usr/bin/chromium /usr/bin/chromium-browser].find { |path| File.executable?(path) }
  CHROMEDRIVER = %w[/usr/bin/chromedriver /usr/lib/chromium/chromedriver].find { |path| File.executable?(path) }

  before(:all) do
    raise "chromium and chromium-driver are needed (bin/setup installs them)" unless CHROMIUM && CHROMEDRIVER

    @port = RedisServer.free_port
    @server = WEBrick::HTTPServer.new(BindAddress: "127.0.0.1", Port: @port, AccessLog: [],
                                      Logger: WEBrick::Log.new(nil, WEBrick::BasicLog::FATAL))
    @server.mount("/", Rack::Handler::WEBrick, Locking::Web.app(secret: "b" * 64))
    @thread = Thread.new { @server.start }
    options = Selenium::WebDriver::Chrome::Options.new
    options.binary = CHROMIUM
    %w[--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --window-size=1280,900].each do |arg|
      options.add_argument(arg)
    end
    service = Selenium::WebDriver::Chrome::Service.new(path: CHROMEDRIVER)
    @browser = Selenium::WebDriver.for(:chrome, options: options, service: service)
    @shots = ENV["LOCKING_SCREENSHOTS"] || Dir.mktmpdir("locking-screenshots-")
  end

  after(:all) do
    @browser&.quit
    @server&.shutdown
    @thread&.join(5)
  end

  let(:browser) { @browser }
  let(:url) { "http://127.0.0.1:#{@port}" }

  before { Locking::Web.forget_counts }
  after { Locking.reset_configuration! }

  # Waits for a state of the page. An element found on the page being left
  # goes stale under the check: that is "not yet", as a missing one is.
  def wait_until(seconds = 5, &)
    ignore = [Selenium::WebDriver::Error::NoSuchElementError, Selenium::WebDriver::Error::StaleElementReferenceError]
    Selenium::WebDriver::Wait.new(timeout: seconds, ignore: ignore).until(&)
  end

  def shot(name)
    path = File.join(@shots, "#{name}.png")
    browser.save_screenshot(path)
    path
  end

  # Phase 1 of a live migration: locks on both servers, three processes
  # reporting (one still catching up), a backfill under way.
  def migration_under_way
    configure_both(:dual)
    expect(locking_cli("phase", "set", "0", "--init")[0]).to eq(0)
    expect(locking_cli("phase", "advance")[0]).to eq(0) # 0 -> 1 (nobody reports yet)
    fake_heartbeat("worker-1.prod:4121", "1 1 10000")
    fake_heartbeat("worker-2.prod:3907", "1 1 10000")
    fake_heartbeat("web-1.prod:812", "0 1 10000")
    [["ImportJob:8d41c0", 600], ["ImportJob:17aa2e", 45], ["ReportJob:account-42", 3600 * 3], ["SyncJob:9", 8]]
      .each { |key, ttl| Locking.new(key).acquire(ttl) }
    source_server.bulk_load((1..120).map { |i| ["SET", "locking:MailerJob:#{i}", "t#{i}", "PX", (i * 30_000).to_s] })
    destination_server.redis.set("{locking-control}:locking:backfill", "ops-1.prod:7781", px: 30_000)
    destination_server.redis.set("{locking-control}:locking:backfill-cursor",
                                 JSON.generate({ "cursor" => 77, "totals" => { "scanned" => 61, "copied" => 58, "failed" => 0 } }))
  end

  it "shows the overview during a migration" do
    migration_under_way
    browser.manage.window.resize_to(1280, 1900) # the whole page in the screenshot
    browser.navigate.to("#{url}/")
    wait_until { browser.find_element(tag_name: "h2").displayed? }
    body = browser.find_element(tag_name: "main").text
    expect(body).to include("phase 1 (dual)", "worker-1.prod:4121", "web-1.prod:812", "running (ops-1.prod:7781)",
                            "Gate into phase 2")
    expect(body).to match(/source\s.*124/m) # 120 + 4 lock keys on the source
    expect(browser.find_elements(css: "span.bar").size).to eq(14) # 7 TTL buckets per server
    expect(File.size(shot("dashboard-overview"))).to be > 10_000
  ensure
    browser.manage.window.resize_to(1280, 900)
  end

  it "finds a lock, unlocks it through the confirmation, and Redis no longer holds it" do
    migration_under_way
    browser.navigate.to("#{url}/locks")
    field = browser.find_element(name: "q")
    field.clear
    field.send_keys("ImportJob:*")
    browser.find_element(xpath: "//button[text()='Search']").click
    # The page before the search lists these too: wait for the search's page, showing just them.
    expected = %w[ImportJob:17aa2e ImportJob:8d41c0]
    keys = nil
    begin
      wait_until do
        browser.current_url.include?("q=ImportJob") &&
          (keys = browser.find_elements(xpath: "//table[@id='locks']//tr/td[1]/code").map(&:text).sort) == expected
      end
    rescue Selenium::WebDriver::Error::TimeoutError
      nil # the expectation below shows what the page held last
    end
    expect(keys).to eq(expected)
    shot("dashboard-locks")
    row = browser.find_element(xpath: "//table[@id='locks']//tr[td[1]/code[text()='ImportJob:8d41c0']]")
    expect(row.text).to include("both")
    row.find_element(xpath: ".//button").click
    wait_until { browser.find_element(tag_name: "h2").text.include?("Unlock ImportJob:8d41c0?") }
    expect(source_server.redis.exists("locking:ImportJob:8d41c0")).to eq(1) # nothing yet
    browser.find_element(xpath: "//button[text()='Yes, unlock']").click
    wait_until { browser.find_element(tag_name: "h2").text == "Done" }
    expect(source_server.redis.exists("locking:ImportJob:8d41c0")).to eq(0)
    expect(destination_server.redis.exists("locking:ImportJob:8d41c0")).to eq(0)
    expect(source_server.redis.exists("locking:ImportJob:17aa2e")).to eq(1)
    shot("dashboard-unlocked")
  end
end
