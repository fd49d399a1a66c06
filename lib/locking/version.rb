# frozen_string_literal: true

class Locking
  VERSION = "0.1.0"
end
