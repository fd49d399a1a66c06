# frozen_string_literal: true

# DESIGN §3's table, over real servers: for each phase, and each server
# holding nothing, our token or a foreign token, what locked?, acquire (with a
# new token) and release (with our token) return, and what each server holds
# afterwards. The expectations are written from the table, independently of
# the implementation.
RSpec.describe "phase truth table" do
  HOLDINGS = { none: nil, ours: "ours", foreign: "foreign" }.freeze
  PHASES = %i[source dual drain destination].freeze

  def expected_locked(phase, s, d)
    case phase
    when :source then s != :none
    when :dual, :drain then s != :none || d != :none
    when :destination then d != :none
    end
  end

  # => [result, source after, destination after]
  def expected_acquire(phase, s, d)
    sv = HOLDINGS[s]
    dv = HOLDINGS[d]
    case phase
    when :source then s == :none ? [true, "new", dv] : [false, sv, dv]
    when :dual
      if s != :none then [false, sv, dv]
      elsif d != :none then [false, nil, dv] # source written, then rolled back
      else
        [true, "new", "new"]
      end
    when :drain, :destination then d == :none ? [true, sv, "new"] : [false, sv, dv]
    end
  end

  # Release cleans our token from every configured server, in every phase.
  def expected_release(_phase, s, d)
    after = ->(h) { h == :ours ? nil : HOLDINGS[h] }
    [s == :ours || d == :ours, after.(s), after.(d)]
  end

  def place(s, d)
    source_server.redis.set(PhaseHelpers::KEY, HOLDINGS[s], px: 10_000) if HOLDINGS[s]
    destination_server.redis.set(PhaseHelpers::KEY, HOLDINGS[d], px: 10_000) if HOLDINGS[d]
  end

  PHASES.each do |phase|
    context "in phase #{phase}" do
      before { configure_both(phase) }

      HOLDINGS.each_key do |s|
        HOLDINGS.each_key do |d|
          context "with source=#{s}, destination=#{d}" do
            before { place(s, d) }

            it "locked? answers per the table and changes nothing" do
              expect(Locking.new("job").locked?).to be(expected_locked(phase, s, d))
              expect(holdings).to eq([HOLDINGS[s], HOLDINGS[d]])
            end

            it "acquire with a new token answers per the table; a refusal leaves no trace" do
              result, source_after, destination_after = expected_acquire(phase, s, d)
              expect(Locking.new("job", token: "new").acquire(10)).to be(result)
              expect(holdings).to eq([source_after, destination_after])
              if result
                written = [source_after == "new" ? source_server : nil, destination_after == "new" ? destination_server : nil]
                written.compact.each { |server| expect(server.redis.pttl(PhaseHelpers::KEY)).to be_between(9_000, 10_000) }
              end
            end

            it "release with our token deletes ours everywhere and nothing else" do
              result, source_after, destination_after = expected_release(phase, s, d)
              expect(Locking.new("job", token: "ours").release).to be(result)
              expect(holdings).to eq([source_after, destination_after])
            end
          end
        end
      end
    end
  end
end
