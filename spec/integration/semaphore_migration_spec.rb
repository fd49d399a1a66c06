# frozen_string_literal: true

require "json"

# Semaphores across a migration (docs/DESIGN.md, "Semaphores"): the table of
# the four phases on real servers, the gates counting places on one server
# only, and an occupancy witness with 4 processes in each adjacent pair.
RSpec.describe "Locking::Semaphore across a migration" do
  include PhaseHelpers

  let(:key) { "locking:exports" }

  def places(server)
    server.redis.zrange(key, 0, -1)
  end

  def semaphore(token, limit: 2) = Locking::Semaphore.new("exports", limit: limit, token: token)

  def gate_json(*args)
    status, out, = locking_cli("gate", "--json", *args)
    [status, JSON.parse(out)]
  end

  it "takes a place on both servers in phase 1 and on the destination only in phase 2, as the table says" do
    configure_both(:source)
    expect(semaphore("zero").acquire(30)).to be(true)
    configure_both(:dual)
    expect(semaphore("one").acquire(30)).to be(true)
    configure_both(:drain)
    expect(semaphore("two").acquire(30)).to be(true)

    expect(places(source_server)).to contain_exactly("zero", "one")
    expect(places(destination_server)).to contain_exactly("one", "two")
    # A phase-2 acquire counts the destination only: it has 2 of 2.
    expect(semaphore("three").acquire(30)).to be(false)
    expect(semaphore("x").holders).to eq(2)
    # Phase 1 counts the source first: "zero" and "one" fill it.
    configure_both(:dual)
    expect(semaphore("three").acquire(30)).to be(false)
    expect(places(destination_server)).to contain_exactly("one", "two")

    # Phase 2's release frees both servers.
    configure_both(:drain)
    expect(semaphore("one").release).to be(true)
    expect([places(source_server), places(destination_server)]).to eq([["zero"], ["two"]])
  end

  it "closes the gate on a place left on the source only, until its holder renews it in phase 1" do
    configure_both(:source)
    holder = semaphore("early")
    expect(holder.acquire(30)).to be(true)
    configure_both(:dual)

    status, gate = gate_json
    expect([status, gate["open"], gate["source_only"], gate["source_only_places"]]).to eq([1, false, 1, 1])
    expect(gate["examples"]).to eq(["locking:exports"])
    expect(gate["reasons"].first).to start_with("1 lock(s) or semaphore place(s) live on the source only")

    # Phase 1's renewal takes the place on the destination too (counted against the limit there).
    expect(holder.renew(30)).to be(true)
    expect(places(destination_server)).to eq(["early"])
    status, gate = gate_json
    expect([status, gate["open"], gate["source_only"], gate["source_only_places"]]).to eq([0, true, 0, 0])
  end

  # A place's ms left on `server`'s clock (nil: none for `token`).
  def ms_left(server, token)
    seconds, micros = server.redis.time
    score = server.redis.zscore(key, token)
    score && (score - ((seconds * 1000) + (micros / 1000))).round
  end

  it "backfills a phase-0 place onto the destination, raising only, so the gate opens before its TTL ends" do
    configure_both(:source)
    expect(semaphore("early").acquire(300)).to be(true) # five minutes: the gate would wait for them
    # A sorted set under the prefix that is not a semaphore (no TTL, scores far ahead): never copied,
    # never counted (an adversary found the backfill copying one, with a TTL of its top score).
    source_server.redis.zadd("locking:board", [[9e15, "alice"], [1e13, "bob"]])
    configure_both(:dual)
    expect(gate_json.first).to eq(1)

    status, out, = locking_cli("backfill")
    expect(status).to eq(0)
    expect(out).to include("1 semaphore(s), 1 place(s) copied")
    expect(places(destination_server)).to eq(["early"])
    expect(destination_server.redis.exists?("locking:board")).to be(false)
    # The copy ends no sooner than the source's place, and not much later.
    expect(ms_left(destination_server, "early") - ms_left(source_server, "early")).to be_between(0, 1000)
    status, gate = gate_json
    expect([status, gate["source_only_places"]]).to eq([0, 0])

    # A destination place that has longer left is never lowered.
    far = destination_server.redis.zscore(key, "early") + 600_000
    destination_server.redis.zadd(key, far, "early")
    destination_server.redis.pexpire(key, 1_000_000)
    expect(locking_cli("backfill")[1]).to include("1 semaphore(s), 0 place(s) copied")
    expect(destination_server.redis.zscore(key, "early")).to eq(far)
  end

  it "adds no place beside a destination holder the source does not have (a phase-2 acquire): raises only" do
    configure_both(:source)
    expect(semaphore("early", limit: 1).acquire(300)).to be(true)
    destination_server.redis.zadd(key, (Time.now.to_f * 1000).to_i + 300_000, "unseen")
    destination_server.redis.pexpire(key, 300_000)
    configure_both(:dual)

    expect(locking_cli("backfill")[1]).to include("1 semaphore(s), 0 place(s) copied")
    expect(places(destination_server)).to eq(["unseen"]) # never 2 places of a semaphore of 1
    expect(gate_json.first).to eq(1) # so the gate waits for "early"'s renewal or TTL
  end

  it "a phase-1 renewal of a place the destination has no room for is lost, and leaves no place behind there" do
    configure_both(:source)
    early = semaphore("early", limit: 1)
    expect(early.acquire(30)).to be(true)
    destination_server.redis.zadd(key, (Time.now.to_f * 1000).to_i + 30_000, "other") # the destination is full
    configure_both(:dual)

    expect(early.renew(30)).to be(false)
    expect(early.have_lock?).to be(false)
    expect(places(destination_server)).to eq(["other"])
  end

  it "closes the reverse gate on a place taken in phase 2, which a process in phase 0 would not see" do
    configure_both(:drain)
    late = semaphore("late")
    expect(late.acquire(30)).to be(true)
    configure_both(:dual)

    status, gate = gate_json("--reverse")
    expect([status, gate["open"], gate["destination_only"], gate["destination_only_places"]]).to eq([1, false, 1, 1])
    expect(gate["reasons"].first).to start_with("1 lock(s) or semaphore place(s) live on the destination only")

    # After the rollback to phase 1, its holder's renewal finds no place on the source: lost, never re-taken there.
    expect(late.renew(30)).to be(false)
    expect(late.lost?).to be(true)
    expect(places(source_server)).to be_empty
    expect(late.release).to be(true)
    status, gate = gate_json("--reverse")
    expect([status, gate["open"]]).to eq([0, true])
  end

  # 4 processes x 2 threads on one semaphore of 2, two processes in each phase of the pair: each insider counts
  # itself in and out on a witness server while it believes it holds a place; the count never exceeds 2.
  [%i[source dual], %i[dual drain], %i[drain destination]].each do |first, second|
    it "never lets more than the limit in with processes in phases #{first} and #{second} (occupancy witness)" do
      # Started here: a child that started its own servers would count on them alone.
      witness_url, source_url, destination_url = [witness_server, source_server, destination_server].map(&:url)
      children = [first, first, second, second].map do |phase|
        Forked.new do
          configure_both(phase, source: source_url, destination: destination_url)
          witness = Redis.new(url: witness_url)
          mutex = Mutex.new
          most = 0
          threads = Array.new(2) do
            Thread.new do
              deadline = monotonic + 15
              20.times do
                break if monotonic > deadline

                place = Locking::Semaphore.new("occupied", limit: 2)
                next sleep(0.002) unless place.acquire(5)

                begin
                  inside = mutex.synchronize { witness.incr("insiders") }
                  mutex.synchronize { most = [most, inside].max }
                  sleep(rand * 0.004)
                  raise "lost its place while inside" unless place.have_lock?
                ensure
                  mutex.synchronize { witness.decr("insiders") }
                  place.release
                end
              end
            end
          end
          threads.each(&:join)
          most
        end
      end

      most = children.map(&:result).max
      expect(most).to eq(2)
      expect(witness_server.redis.get("insiders")).to eq("0")
      # Every place was given back, on every server it was taken on.
      leftover = [source_server, destination_server].sum { |server| server.redis.zcard("locking:occupied") }
      expect(leftover).to eq(0)
    end
  end
end
