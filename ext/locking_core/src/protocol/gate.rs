//! The gates the fleet passes before it moves between phases 1 and 2.

use crate::protocol::belief::drift_ms;

/// Whether moving the fleet from phase 1 to phase 2 is safe, and if not why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    pub open: bool,
    pub reasons: Vec<String>,
}

/// Whether a copy (a lock, or a semaphore's place) counts against a gate
/// (DESIGN "The gates compare what each copy has left"): live on the server
/// walked, with `here_left_ms` left by that server's clock, while the other
/// server has no live copy of it (for a lock: with the same token), or one
/// that may end sooner. A holder believes at most until its copy's end less
/// the drift bound (`belief::drift_ms` of what is left), so the other copy
/// covers it if it has at least that long left, after `uncertainty_ms`: the
/// local time between sending the first of the two reads and receiving the
/// second (the servers' clocks are compared only through what each says is
/// left). The gate walks the source, the reverse gate the destination; the
/// explorers' gates call this too.
pub fn copy_one_sided(
    here_left_ms: Option<u64>,
    there_left_ms: Option<u64>,
    uncertainty_ms: u64,
) -> bool {
    let Some(here) = here_left_ms else {
        return false;
    };
    match there_left_ms {
        None => true,
        Some(there) => there.saturating_add(drift_ms(here)) < here.saturating_add(uncertainty_ms),
    }
}

/// The gate of DESIGN §3: no process still in phase 0, and no lock or
/// semaphore place that lives on the source only (a backfill mirrors locks;
/// a place is copied when its holder renews it in phase 1; or they expire).
pub fn gate(processes_in_phase_0: usize, source_only_locks: u64) -> Gate {
    let mut reasons = Vec::new();
    if source_only_locks > 0 {
        reasons.push(format!(
            "{} lock(s) or semaphore place(s) live on the source only, or end sooner on the destination: \
             run `locking backfill` (it copies locks and raises a shorter copy's TTL; a place is copied \
             when its holder renews it), or wait for their TTLs",
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
            "{} lock(s) or semaphore place(s) live on the destination only (taken in phase 2), or end \
             sooner on the source: a process in phase 0 would not see them; wait for their TTLs, or for \
             their holders to renew them in phase 1",
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
