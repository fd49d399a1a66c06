//! The gates the fleet passes before it moves between phases 1 and 2.

/// Whether moving the fleet from phase 1 to phase 2 is safe, and if not why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    pub open: bool,
    pub reasons: Vec<String>,
}

/// Whether a semaphore's place counts against a gate (DESIGN "Semaphores"):
/// live on the server walked (by that server's clock) while the other server
/// has no live place for its token. The gate walks the source, the reverse
/// gate the destination; the explorer's gates call this too.
pub fn place_one_sided(live_here: bool, live_there: bool) -> bool {
    live_here && !live_there
}

/// The gate of DESIGN §3: no process still in phase 0, and no lock or
/// semaphore place that lives on the source only (a backfill mirrors locks;
/// a place is copied when its holder renews it in phase 1; or they expire).
pub fn gate(processes_in_phase_0: usize, source_only_locks: u64) -> Gate {
    let mut reasons = Vec::new();
    if source_only_locks > 0 {
        reasons.push(format!(
            "{} lock(s) or semaphore place(s) live on the source only: run `locking backfill` (it copies \
             locks; a place is copied when its holder renews it), or wait for their TTLs",
            grouped(source_only_locks)
        ));
    }
    if processes_in_phase_0 > 0 {
        reasons.push(format!(
            "{processes_in_phase_0} process(es) still in phase 0 (source): they write the source only"
        ));
    }
    Gate {
        open: reasons.is_empty(),
        reasons,
    }
}

/// The reverse gate, before rolling back from phase 1 to 0: no lock or
/// semaphore place that lives on the destination only. Such a lock or place
/// was taken in phase 2, and a process in phase 0 looks at the source only:
/// it would take the lock again, or count one place too few.
pub fn reverse_gate(destination_only_locks: u64) -> Gate {
    let mut reasons = Vec::new();
    if destination_only_locks > 0 {
        reasons.push(format!(
            "{} lock(s) or semaphore place(s) live on the destination only (taken in phase 2): a \
             process in phase 0 would not see them; wait for their TTLs",
            grouped(destination_only_locks)
        ));
    }
    Gate {
        open: reasons.is_empty(),
        reasons,
    }
}

/// A count with thousands separators: 2,000,000.
pub fn grouped(count: u64) -> String {
    let digits = count.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}
