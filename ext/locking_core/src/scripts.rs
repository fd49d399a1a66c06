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
