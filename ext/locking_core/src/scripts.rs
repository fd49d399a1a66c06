//! Every Lua script the library runs, loaded once, named for what it does.

use std::sync::LazyLock;

pub static COMPARE_AND_DELETE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/compare_and_delete.lua")));

pub static COMPARE_AND_EXTEND: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/compare_and_extend.lua")));

/// Only for servers older than Redis 7, which lack `SET .. NX GET`.
pub static ACQUIRE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/acquire.lua")));

pub static TOKEN_TTL: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/token_ttl.lua")));

/// Backfill: follow a source renewal on the destination copy.
pub static EXTEND_IF_GREATER: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/extend_if_greater.lua")));

/// Dynamic phases: read the phase and report this process's use of it.
pub static PHASE_HEARTBEAT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/phase_heartbeat.lua")));

/// Dynamic phases: compare-and-set of the fleet's phase.
pub static SET_PHASE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/set_phase.lua")));

/// The Lua source of one of the scripts above, for a `SCRIPT LOAD` sent in
/// a pipeline (the `redis` crate keeps a script's source to itself).
pub fn source_of(script: &redis::Script) -> Option<&'static str> {
    let all: [(&redis::Script, &'static str); 7] = [
        (
            &COMPARE_AND_DELETE,
            include_str!("scripts/compare_and_delete.lua"),
        ),
        (
            &COMPARE_AND_EXTEND,
            include_str!("scripts/compare_and_extend.lua"),
        ),
        (&ACQUIRE, include_str!("scripts/acquire.lua")),
        (&TOKEN_TTL, include_str!("scripts/token_ttl.lua")),
        (
            &EXTEND_IF_GREATER,
            include_str!("scripts/extend_if_greater.lua"),
        ),
        (
            &PHASE_HEARTBEAT,
            include_str!("scripts/phase_heartbeat.lua"),
        ),
        (&SET_PHASE, include_str!("scripts/set_phase.lua")),
    ];
    all.into_iter()
        .find(|(known, _)| known.get_hash() == script.get_hash())
        .map(|(_, source)| source)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_script_has_its_source() {
        for script in [
            &super::COMPARE_AND_DELETE,
            &super::EXTEND_IF_GREATER,
            &super::SET_PHASE,
        ] {
            let source = super::source_of(script).expect("source");
            assert_eq!(redis::Script::new(source).get_hash(), script.get_hash());
        }
    }
}
