# frozen_string_literal: true

require "socket"

class Locking
  class CLI
    # Who holds the backfill's lease, and whether that process provably is gone.
    #
    # The lease's value names its holder: "HOST:PID", and where Linux's /proc tells them, " start=TICKS
    # ns=PIDNS boot=BOOT_ID": the process's start time (clock ticks since boot, /proc/PID/stat), its PID
    # namespace and the kernel's boot id. A holder is gone only when all of this says so from the same host,
    # the same boot and the same PID namespace: no process PID, or a process PID that started at another time
    # (the PID was reused). Anything else (another host or container, a holder without start time) cannot be
    # told apart from a live one: it is taken as alive, and only `locking backfill --break-lease` frees it.
    class Lease
      PROC = "/proc"

      # The holder name for this process.
      def self.own(pid: Process.pid, proc_dir: PROC)
        identity = identity_of(pid, proc_dir)
        ["#{Socket.gethostname}:#{pid}", *identity.map { |name, value| "#{name}=#{value}" }].join(" ")
      end

      # { "start" => ticks, "ns" => inode, "boot" => id } for a process, as far as /proc tells.
      def self.identity_of(pid, proc_dir = PROC)
        {
          "start" => start_ticks(pid, proc_dir),
          "ns" => File.readlink("#{proc_dir}/#{pid}/ns/pid")[/\d+/],
          "boot" => File.read("#{proc_dir}/sys/kernel/random/boot_id").strip
        }.compact
      rescue SystemCallError
        {}
      end

      # A process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or nil.
      def self.start_ticks(pid, proc_dir = PROC)
        stat = File.read("#{proc_dir}/#{pid}/stat")
        # The command name (field 2) is in parentheses and may hold spaces: count from the last ")".
        stat[(stat.rindex(")") + 2)..].split[19]
      rescue SystemCallError, NoMethodError
        nil
      end

      attr_reader :holder, :host, :pid, :identity

      def initialize(holder, proc_dir: PROC)
        @holder = holder.to_s
        @proc_dir = proc_dir
        name, *attributes = @holder.split
        @host, pid = name.to_s.rpartition(":").values_at(0, 2)
        @pid = pid.match?(/\A\d+\z/) ? Integer(pid, 10) : nil
        @identity = attributes.to_h { |pair| pair.split("=", 2) }
      end

      # "HOST:PID", the part operators read.
      def name
        @holder.split.first.to_s
      end

      # true (runs), false (provably gone), or nil (cannot tell: taken as alive).
      def alive?
        verdict.first
      end

      def gone?
        alive? == false
      end

      # Why #alive? says what it says, in words.
      def why
        verdict.last
      end

      private

      def verdict
        @verdict ||= judge
      end

      def judge
        return [nil, "held on #{host}, not this host (#{Socket.gethostname}): whether it runs cannot be told here"] \
          unless host == Socket.gethostname && pid
        return [nil, "its name carries no boot id and PID namespace (not Linux?): whether PID #{pid} is it cannot be told"] \
          unless identity["boot"] && identity["ns"]

        own = self.class.identity_of(Process.pid, @proc_dir)
        return [nil, "held from another boot or container with this host name: whether it runs cannot be told here"] \
          unless own["boot"] == identity["boot"] && own["ns"] == identity["ns"]
        return [false, "no process #{pid} runs on this host"] unless process_exists?

        started = self.class.start_ticks(pid, @proc_dir)
        return [true, "process #{pid} runs on this host"] if started.nil? || identity["start"].nil?
        return [true, "process #{pid} runs on this host (the same start time)"] if started == identity["start"]

        [false, "process #{pid} on this host started at another time than the holder (the PID was reused)"]
      end

      def process_exists?
        Process.kill(0, pid)
        true
      rescue Errno::ESRCH
        false
      rescue Errno::EPERM
        true # another user's process
      end
    end

    private

    # The backfill lease as status, the gate and --json show it, or nil when nobody holds it.
    def lease_info
      holder = client.control_get("backfill") or return nil
      lease = Lease.new(holder)
      { "holder" => lease.name, "alive" => lease.alive?, "why" => lease.why,
        "expires_in_ms" => client.control_ttl_ms("backfill") }
    end

    def describe_lease(info)
      state = case info["alive"]
              when true then "running"
              when false then "DEAD"
              else "held"
              end
      expires = if info["expires_in_ms"]
                  "its lease expires in #{seconds(info['expires_in_ms'])}"
                else
                  "no expiry seen (the lease may just have expired)"
                end
      text = "#{state} (#{info['holder']}: #{info['why']}); #{expires}"
      return text unless info["alive"] == false

      "#{text}; a backfill run on this host takes it over now, or `locking backfill --break-lease` frees it"
    end

    # `backfill --break-lease`: frees the lease of a holder that is not provably alive, the operator's choice,
    # audited. A holder that provably runs on this host is refused: stop it (Ctrl-C gives the lease back).
    def break_lease
      info = lease_info
      unless info
        @out.puts "no backfill lease is held: nothing to break"
        result("lease" => nil, "broken" => false)
        return EXIT_OK
      end
      result("lease" => info, "broken" => false)
      if info["alive"]
        @out.puts "refused: the backfill lease's holder runs (#{info['holder']}: #{info['why']}); stop it instead " \
                  "(Ctrl-C: it gives the lease back)"
        return EXIT_REFUSED
      end

      holder = client.control_get("backfill")
      left = client.backfill_lease(holder, ttl: nil) if holder
      if left
        @out.puts "refused: the lease changed hands meanwhile (now #{Lease.new(left).name}); look again with `locking status`"
        return EXIT_REFUSED
      end
      @out.puts "broke the backfill lease of #{info['holder']} (#{info['why']}). If that backfill still runs, it " \
                "takes the lease again at its next batch, or stops if the fleet moved into phase 2 meanwhile"
      audit(event: "backfill-lease", outcome: "broken", holder: info["holder"], why: info["why"])
      result("broken" => true)
      EXIT_OK
    end

    # A lease held by a process provably gone (this host, PID not running or reused) is given back, so that
    # this run can take it: the compare-and-delete frees only that holder's lease, and of two runs taking it
    # over at once one wins. Returns the holder afterwards.
    def take_over_dead_lease(taken, own)
      lease = Lease.new(taken)
      return taken unless lease.gone?

      @out.puts "the backfill lease is held by #{lease.name}, which is gone (#{lease.why}): taking it over"
      client.backfill_lease(taken, ttl: nil)
      now = keep_backfill_lease(own)
      audit(event: "backfill-lease", outcome: "taken over", holder: lease.name, why: lease.why) if now == own
      now
    end
  end
end
