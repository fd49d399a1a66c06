# frozen_string_literal: true

# A forked child that hands its block's result back to the parent through a
# pipe (Marshal), so a spec can assert on what each process saw.
class Forked
  attr_reader :pid

  def initialize
    @reader, writer = IO.pipe
    @pid = fork do
      @reader.close
      writer.write(Marshal.dump(yield))
      writer.close
      exit!(0)
    rescue Exception => e # rubocop:disable Lint/RescueException -- the child must not run the parent's at_exit
      warn "forked child: #{e.class}: #{e.message}"
      exit!(1)
    end
    writer.close
  end

  # Waits for the child; its block's result. Raises if it failed.
  def result
    data = @reader.read
    @reader.close
    _, status = Process.wait2(@pid)
    raise "forked child #{@pid} failed: #{status.inspect}" unless status.success?

    Marshal.load(data) # -- our own child's
  end

  # Kills the child if it still runs (for an ensure).
  def kill
    Process.kill(:KILL, @pid)
    Process.wait(@pid)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  end
end
