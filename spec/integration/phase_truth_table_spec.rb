# frozen_string_literal: true

# DESIGN §3's table on two standalone servers (spec/support/phase_examples.rb).
RSpec.describe "phase truth table" do
  include_examples "the phase truth table"
end
