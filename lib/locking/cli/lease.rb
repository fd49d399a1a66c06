# frozen_string_literal: true

require "socket"

class Locking
  class CLI
    # Who holds the backfill's lease, and whether that process provably is gone.
    #
    # The lease's value names its holder: "HOST:PID", and where Linux's /proc tells them, " start=TICKS
    # ns=PIDNS tns=TIMENS boot=BOOT_ID": the process's start time (clock ticks since boot, /proc/PID/stat, as
    # the reader's time namespace counts them), its PID and time namespaces and the kernel's boot id; a
    # holder that gave it back to expire adds " released=1". A holder is gone only when all of this says so
    # from the same host, boot and namespaces: no process PID, or a process PID that started at another time
    # (the PID was reused). Anything else (another host or container, a holder without start time) cannot be
    # told apart from a live one: it is taken as alive, and only `locking backfill --break-lease` takes it over.
    class Lease
      PROC = "/proc"

      # The holder name for this process.
      def self.own(pid: Process.pid, proc_dir: PROC)
        identity = identity_of(pid, proc_dir)
        ["#{host_name}:#{pid}", *identity.map { |name, value| "#{name}=#{value}" }].join(" ")
      end

      # This host's name as leases carry it: printable ASCII without spaces (a
      # name set with sethostname may hold anything).
      def self.host_name
        Socket.gethostname.b.gsub(/[^!-~]/n, "?").force_encoding(Encoding::UTF_8)
      end

      # { "start" => ticks, "ns" => inode, "tns" => inode, "boot" => id } for a process, as far as /proc
      # tells; {} when /proc is not this process's own PID namespace's (a PID namespace entered without
      # its /proc: /proc/PID would be another process). The start time counts in the reader's time
      # namespace, so that namespace is part of the identity too.
      def self.identity_of(pid, proc_dir = PROC)
        return {} unless File.readlink("#{proc_dir}/self") == Process.pid.to_s

        {
          "start" => start_ticks(pid, proc_dir),
          "ns" => File.readlink("#{proc_dir}/#{pid}/ns/pid")[/\d+/],
          "tns" => time_namespace("#{proc_dir}/self"),
          "boot" => File.read("#{proc_dir}/sys/kernel/random/boot_id").strip
        }.compact
      rescue SystemCallError
        {}
      end

      def self.time_namespace(dir)
        File.readlink("#{dir}/ns/time")[/\d+/]
      rescue SystemCallError
        nil
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
        @value = holder.to_s
        @holder = @value.b.gsub(/[^ -~]/n, "?").force_encoding(Encoding::UTF_8)
        @proc_dir = proc_dir
        name, *attributes = @holder.split
        @host, pid = name.to_s.rpartition(":").values_at(0, 2)
        @pid = pid.match?(/\A\d+\z/) ? Integer(pid, 10) : nil
        @identity = attributes.to_h { |pair| pair.split("=", 2) }
      end

      # The lease's value, byte for byte (what a take over must name).
      attr_reader :value

      # "HOST:PID", the part operators read.
      def name
        @holder.split.first.to_s
      end

      # Its holder gave it back but left it to expire: copies it sent may still land until then.
      def released?
        identity["released"] == "1"
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
        return [nil, "held on #{host}, not this host (#{self.class.host_name}): whether it runs cannot be told here"] \
          unless host == self.class.host_name && pid
        return [nil, "its name carries no boot id and PID namespace (not Linux?): whether PID #{pid} is it cannot be told"] \
          unless identity["boot"] && identity["ns"]

        own = self.class.identity_of(Process.pid, @proc_dir)
        return [nil, "held from another boot or container with this host name: whether it runs cannot be told here"] \
          unless own["boot"] == identity["boot"] && own["ns"] == identity["ns"] && own["tns"] == identity["tns"]
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
      { "holder" => lease.name, "alive" => lease.alive?, "why" => lease.why, "released" => lease.released?,
        "expires_in_ms" => client.control_ttl_ms("backfill") }
    end

    def describe_lease(info)
      state = if info["released"] then "given back, left to expire"
              else
                { true => "running", false => "DEAD" }.fetch(info["alive"], "held")
              end
      expires = if info["expires_in_ms"]
                  "its lease expires in #{seconds(info['expires_in_ms'])}"
                else
                  "no expiry seen (the lease may just have expired)"
                end
      text = "#{state} (#{info['holder']}: #{info['why']}); #{expires}"
      text += "; phase 2 waits for it (copies of that backfill may still land until then)" if info["released"]
      if info["released"]
        "#{text}; a new backfill takes it over now"
      elsif info["alive"] == false
        "#{text}; a backfill run on this host takes it over now (phase 2 still waits for the lease to expire)"
      elsif info["alive"].nil?
        "#{text}; once you know that backfill is gone, `locking backfill --break-lease` takes it over"
      else
        text
      end
    end

    # A lease this run may take over, and why, or nil: one given back to expire (by any host), one whose
    # holder is provably gone, or, with --break-lease, one whose holder cannot be told running. The take
    # over replaces that exact value and keeps the TTL it has left: the lease's TTL covers the copies its
    # holder may still have on the wire, so phase 2 waits for them whoever holds the lease now.
    def take_over_lease(taken, own)
      lease = Lease.new(taken)
      how = if lease.released? then "given back to expire"
            elsif lease.gone? then "gone (#{lease.why})"
            elsif options[:break_lease] && lease.alive?.nil? then "not provably running (#{lease.why}): --break-lease"
            end
      return taken unless how

      left = client.control_ttl_ms("backfill")
      @out.puts "the backfill lease is held by #{lease.name}, #{how}: taking it over; it keeps the " \
                "#{left ? seconds(left) : 'TTL'} it has left, so phase 2 waits for any copy of that backfill still " \
                "on the wire"
      now = keep_backfill_lease(own, take_over: lease.value)
      if now == own
        @taken_over_at = monotonic
        outcome = options[:break_lease] && !lease.released? && !lease.gone? ? "broken" : "taken over"
        audit(event: "backfill-lease", outcome: outcome, holder: lease.name, why: lease.why)
      end
      now
    end

    # Gives the lease back at the end of a run: at once only when every copy it sent was answered (no batch
    # cut short by an error or Ctrl-C, no copy failed) and no lease it took over within a TTL could still
    # have copies on the wire; else it is left to expire.
    def give_back_lease(holder)
      # The lease taken over ran out within a TTL of the take over on Redis's clock; twice that here covers
      # any drift between the clocks.
      taken_over_lately = @taken_over_at && monotonic - @taken_over_at < 2 * BACKFILL_LEASE_TTL
      expire = @in_flight || @maybe_on_wire || taken_over_lately
      return unless @lease_until # never held

      if lease_lapsed?
        @out.puts "the backfill's lease has run out, or is about to: left to expire"
        return
      end
      left = client.backfill_lease(holder, ttl: nil, expire: expire)
      return unless expire && left.nil?

      @out.puts "the backfill lease is left to expire (within #{BACKFILL_LEASE_TTL}s): " \
                "#{taken_over_lately ? 'the backfill it took over' : 'this run'} may have copies still on the wire, " \
                "and phase 2 waits for them; a new backfill takes it over at once"
    end
  end
end
