//! Every Lua script the library runs, loaded once, named for what it does.

use std::sync::LazyLock;

/// Defines each script once: a lazily built `redis::Script` under its name,
/// and its source in `SOURCES` (for a `SCRIPT LOAD` of our own).
macro_rules! scripts {
    ($($(#[$doc:meta])* $name:ident = $file:literal;)*) => {
        $(
            $(#[$doc])*
            pub static $name: LazyLock<redis::Script> =
                LazyLock::new(|| redis::Script::new(include_str!($file)));
        )*
        const SOURCES: &[&str] = &[$(include_str!($file)),*];
    };
}

scripts! {
    COMPARE_AND_DELETE = "scripts/compare_and_delete.lua";
    COMPARE_AND_EXTEND = "scripts/compare_and_extend.lua";
    /// Only for servers older than Redis 7, which lack `SET .. NX GET`.
    ACQUIRE = "scripts/acquire.lua";
    TOKEN_TTL = "scripts/token_ttl.lua";
    /// Backfill: follow a source renewal on the destination copy.
    EXTEND_IF_GREATER = "scripts/extend_if_greater.lua";
    /// Dynamic phases: read the phase and report this process's use of it.
    PHASE_HEARTBEAT = "scripts/phase_heartbeat.lua";
    /// Dynamic phases: compare-and-set of the fleet's phase.
    SET_PHASE = "scripts/set_phase.lua";
    /// One backfill at a time, visible to phase moves.
    CONTROL_LEASE = "scripts/control_lease.lua";
}

/// The Lua source of one of the scripts above, for a `SCRIPT LOAD` sent in
/// a pipeline (the `redis` crate keeps a script's source to itself).
pub fn source_of(script: &redis::Script) -> Option<&'static str> {
    // Only after a NOSCRIPT: hashing the few sources again costs nothing.
    SOURCES
        .iter()
        .copied()
        .find(|source| redis::Script::new(source).get_hash() == script.get_hash())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_script_has_its_source() {
        for script in [
            &super::COMPARE_AND_DELETE,
            &super::COMPARE_AND_EXTEND,
            &super::ACQUIRE,
            &super::TOKEN_TTL,
            &super::EXTEND_IF_GREATER,
            &super::PHASE_HEARTBEAT,
            &super::SET_PHASE,
        ] {
            let source = super::source_of(script).expect("source");
            assert_eq!(redis::Script::new(source).get_hash(), script.get_hash());
        }
    }
}
