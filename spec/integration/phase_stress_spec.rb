# frozen_string_literal: true

# Adjacent phases on two standalone servers (spec/support/phase_examples.rb).
RSpec.describe "adjacent phases under contention" do
  include_examples "adjacent phases under contention"
end
