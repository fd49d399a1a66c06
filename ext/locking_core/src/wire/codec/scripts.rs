//! The script table: every Lua script the library runs, each with its name,
//! its source and its SHA1 together. A script is sent by `EVALSHA`; the
//! pipeline executor (`pipeline`) loads it from here when a server answers
//! NOSCRIPT (a restart, a failover, `SCRIPT FLUSH`).

use std::sync::LazyLock;

/// One Lua script.
pub struct Script {
    pub name: &'static str,
    pub source: &'static str,
    /// The SHA1 of `source`, in hex, as `EVALSHA` takes it.
    pub sha: String,
}

impl Script {
    fn new(name: &'static str, source: &'static str) -> Script {
        Script {
            name,
            source,
            sha: sha1_smol::Sha1::from(source).digest().to_string(),
        }
    }
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "script {}", self.name)
    }
}

/// Defines each script once, under its name, from its file in `lua/`.
macro_rules! scripts {
    ($($(#[$doc:meta])* $name:ident = $file:literal;)*) => {
        $(
            $(#[$doc])*
            pub static $name: LazyLock<Script> =
                LazyLock::new(|| Script::new($file, include_str!(concat!("lua/", $file, ".lua"))));
        )*
        /// Every script, for tests and tools.
        pub fn all() -> Vec<&'static Script> {
            vec![$(&*$name),*]
        }
    };
}

scripts! {
    COMPARE_AND_DELETE = "compare_and_delete";
    COMPARE_AND_EXTEND = "compare_and_extend";
    /// Only for servers older than Redis 7, which lack `SET .. NX GET`.
    ACQUIRE = "acquire";
    TOKEN_TTL = "token_ttl";
    /// Backfill: follow a source renewal on the destination copy.
    EXTEND_IF_GREATER = "extend_if_greater";
    /// Dynamic phases: read the phase and report this process's use of it.
    PHASE_HEARTBEAT = "phase_heartbeat";
    /// Dynamic phases: compare-and-set of the fleet's phase.
    SET_PHASE = "set_phase";
    /// One backfill at a time, visible to phase moves.
    CONTROL_LEASE = "control_lease";
    /// Semaphores: take a place unless the limit's places are live.
    SEMAPHORE_ACQUIRE = "semaphore_acquire";
    SEMAPHORE_RELEASE = "semaphore_release";
    SEMAPHORE_RENEW = "semaphore_renew";
    SEMAPHORE_HOLDERS = "semaphore_holders";
    /// Backfill: copies of the source's places, raised only.
    SEMAPHORE_COPY = "semaphore_copy";
    /// A lock's value and what it has left (or the key's type), for the gates.
    LOCK_COPY = "lock_copy";
    /// The operator tools: a semaphore's live places, or the unlock that
    /// deletes only a lock or a semaphore.
    OPERATOR_KEY = "operator_key";
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_script_carries_the_sha_redis_computes() {
        let scripts = super::all();
        assert_eq!(scripts.len(), 15);
        for script in scripts {
            assert_eq!(
                redis::Script::new(script.source).get_hash(),
                script.sha,
                "{}",
                script.name
            );
        }
    }
}
