//! The four migration phases (DESIGN §3).

use crate::error::{Error, Result};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// 0: locks live on the source only.
    Source = 0,
    /// 1: written to the source, then the destination.
    Dual = 1,
    /// 2: written to the destination; the source is still read and cleaned.
    Drain = 2,
    /// 3: locks live on the destination only.
    Destination = 3,
}

impl Phase {
    pub const ALL: [Phase; 4] = [Phase::Source, Phase::Dual, Phase::Drain, Phase::Destination];

    /// Every pair of phases two processes may be in at once during a
    /// rolling deploy (the same phase, or adjacent ones): what the
    /// explorers cover.
    pub const LIVE_PAIRS: [(Phase, Phase); 7] = [
        (Phase::Source, Phase::Source),
        (Phase::Dual, Phase::Dual),
        (Phase::Drain, Phase::Drain),
        (Phase::Destination, Phase::Destination),
        (Phase::Source, Phase::Dual),
        (Phase::Dual, Phase::Drain),
        (Phase::Drain, Phase::Destination),
    ];

    pub fn from_index(index: i64) -> Result<Phase> {
        match index {
            0 => Ok(Phase::Source),
            1 => Ok(Phase::Dual),
            2 => Ok(Phase::Drain),
            3 => Ok(Phase::Destination),
            other => Err(Error::InvalidArgument(format!(
                "unknown phase {other} (expected 0..3 or :source, :dual, :drain, :destination)"
            ))),
        }
    }

    pub fn from_name(name: &str) -> Result<Phase> {
        match name {
            "source" => Ok(Phase::Source),
            "dual" => Ok(Phase::Dual),
            "drain" => Ok(Phase::Drain),
            "destination" => Ok(Phase::Destination),
            other => Err(Error::InvalidArgument(format!(
                "unknown phase {other:?} (expected :source, :dual, :drain, :destination or 0..3)"
            ))),
        }
    }

    pub fn index(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Source => "source",
            Phase::Dual => "dual",
            Phase::Drain => "drain",
            Phase::Destination => "destination",
        }
    }

    /// Backfill runs only in phases 0 and 1: from phase 2 on, releases no
    /// longer reach the destination through the source, and a copy could
    /// land after its lock's release (DESIGN: backfill). The one place this
    /// rule is written; the CLI asks the core.
    pub fn check_backfill(self) -> Result<()> {
        if matches!(self, Phase::Source | Phase::Dual) {
            return Ok(());
        }
        Err(Error::InvalidArgument(format!(
            "backfill runs only in phases 0 and 1, not in phase {self}: its copies could race releases"
        )))
    }

    /// Whether the phase writes to (and so needs) the source server.
    pub fn uses_source(self) -> bool {
        matches!(self, Phase::Source | Phase::Dual | Phase::Drain)
    }

    /// Whether the phase writes to (and so needs) the destination server.
    pub fn uses_destination(self) -> bool {
        !matches!(self, Phase::Source)
    }

    /// Two phases may run side by side (a rolling deploy) only when adjacent.
    pub fn adjacent(self, other: Phase) -> bool {
        (self.index() as i16 - other.index() as i16).abs() <= 1
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.index(), self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_indexes_round_trip() {
        for phase in Phase::ALL {
            assert_eq!(Phase::from_name(phase.name()).unwrap(), phase);
            assert_eq!(Phase::from_index(phase.index() as i64).unwrap(), phase);
        }
        assert!(Phase::from_index(4).is_err());
        assert!(Phase::from_index(-1).is_err());
        assert!(Phase::from_name("both").is_err());
    }

    #[test]
    fn which_servers_each_phase_writes_and_where_backfill_runs() {
        let uses: Vec<(bool, bool)> = Phase::ALL
            .iter()
            .map(|p| (p.uses_source(), p.uses_destination()))
            .collect();
        assert_eq!(
            uses,
            [(true, false), (true, true), (true, true), (false, true)]
        );
        let backfills: Vec<bool> = Phase::ALL
            .iter()
            .map(|p| p.check_backfill().is_ok())
            .collect();
        assert_eq!(backfills, [true, true, false, false]);
        assert_eq!(Phase::Drain.to_string(), "2 (drain)");
    }

    #[test]
    fn adjacency() {
        assert!(Phase::Source.adjacent(Phase::Dual));
        assert!(Phase::Drain.adjacent(Phase::Dual));
        assert!(!Phase::Source.adjacent(Phase::Drain));
        assert!(!Phase::Dual.adjacent(Phase::Destination));
    }
}
