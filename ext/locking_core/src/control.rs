//! Dynamic phases: the fleet's phase in a control key on the destination,
//! each process's heartbeat, and the rules for moving the fleet.
//!
//! Control keys live under `{locking-control}:<key_prefix>`, outside the key
//! prefix (so they never count as locks) and in one cluster slot.

use crate::client::Lease;
use crate::connection::{server_error, server_error_text, Interrupt};
use crate::error::{Error, Result};
use crate::phase::Phase;
use crate::protocol::{self, Target};
use crate::scripts;
use redis::Value;

pub fn control_prefix(key_prefix: &[u8]) -> Vec<u8> {
    let mut prefix = b"{locking-control}:".to_vec();
    prefix.extend_from_slice(key_prefix);
    prefix
}

pub fn phase_key(key_prefix: &[u8]) -> Vec<u8> {
    let mut key = control_prefix(key_prefix);
    key.extend_from_slice(b"phase");
    key
}

pub fn heartbeat_key(key_prefix: &[u8], process: &str) -> Vec<u8> {
    let mut key = control_prefix(key_prefix);
    key.extend_from_slice(b"process:");
    key.extend_from_slice(process.as_bytes());
    key
}

/// A process of the fleet, as its heartbeat reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetMember {
    pub process: String,
    pub phase: Phase,
    pub expires_in_ms: i64,
}

/// Why moving the fleet from `current` to `target` is not safe now; empty
/// when it is. `source_only` is the gate's count of source-only locks,
/// needed for a move from phase 1 to 2.
pub fn check_transition(
    current: Phase,
    target: Phase,
    fleet: &[FleetMember],
    source_only: Option<u64>,
) -> Vec<String> {
    let mut reasons = Vec::new();
    if target == current {
        reasons.push(format!("the fleet is already in phase {current}"));
        return reasons;
    }
    if !current.adjacent(target) {
        reasons.push(format!(
            "phase {current} to {target} is not adjacent: move one phase at a time"
        ));
        return reasons;
    }
    let behind: Vec<&FleetMember> = fleet.iter().filter(|m| m.phase != current).collect();
    if !behind.is_empty() {
        let names: Vec<String> = behind
            .iter()
            .take(5)
            .map(|m| format!("{} (phase {})", m.process, m.phase.index()))
            .collect();
        reasons.push(format!(
            "{} process(es) not yet in phase {current}: {}{}",
            behind.len(),
            names.join(", "),
            if behind.len() > 5 { ", ..." } else { "" }
        ));
    }
    if current == Phase::Dual && target == Phase::Drain {
        let in_phase_0 = fleet.iter().filter(|m| m.phase == Phase::Source).count();
        match source_only {
            Some(count) => reasons.extend(protocol::gate(in_phase_0, count).reasons),
            None => reasons.push("the gate was not checked".into()),
        }
    }
    reasons
}

impl Lease<'_> {
    fn control_request(&mut self, packed: &[u8], interrupt: &Interrupt) -> Result<Value> {
        let (server, connection) = self.connection(Target::Destination, interrupt)?;
        let name = server.name().to_string();
        let value = connection.request(packed, interrupt)?;
        if let Some(error) = server_error(&value) {
            return Err(Error::Command {
                server: name,
                detail: server_error_text(&error),
            });
        }
        Ok(value)
    }

    /// Runs a control script, loading it first if the server lacks it.
    fn control_script(
        &mut self,
        script: &redis::Script,
        keys: &[&[u8]],
        args: &[Vec<u8>],
        interrupt: &Interrupt,
    ) -> Result<Value> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(keys.len());
        for key in keys {
            cmd.arg(*key);
        }
        for arg in args {
            cmd.arg(arg.as_slice());
        }
        let packed = cmd.get_packed_command();
        match self.control_request(&packed, interrupt) {
            Err(Error::Command { detail, .. }) if detail.starts_with("NOSCRIPT") => {
                let (server, connection) = self.connection(Target::Destination, interrupt)?;
                let name = server.name().to_string();
                script.load(connection).map_err(|error| Error::Command {
                    server: name,
                    detail: format!("cannot load script: {error}"),
                })?;
                self.control_request(&packed, interrupt)
            }
            other => other,
        }
    }

    /// Reads the fleet's phase and records this process's heartbeat.
    pub(crate) fn phase_heartbeat(
        &mut self,
        process: &str,
        heartbeat_ttl_ms: u64,
        interrupt: &Interrupt,
    ) -> Result<Phase> {
        let prefix = self.client.key_prefix().to_vec();
        let value = self.control_script(
            &scripts::PHASE_HEARTBEAT,
            &[&phase_key(&prefix), &heartbeat_key(&prefix, process)],
            &[heartbeat_ttl_ms.to_string().into_bytes()],
            interrupt,
        )?;
        phase_of(value)
    }

    /// The phase stored in the control key (0 when unset).
    pub fn control_phase(&mut self, interrupt: &Interrupt) -> Result<Phase> {
        let key = phase_key(self.client.key_prefix());
        let value =
            self.control_request(&redis::cmd("GET").arg(key).get_packed_command(), interrupt)?;
        match value {
            Value::Nil => Ok(Phase::Source),
            Value::BulkString(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| text.trim().parse::<i64>().ok())
                .map_or_else(
                    || {
                        Err(Error::Internal(
                            "the phase control key holds no number".into(),
                        ))
                    },
                    Phase::from_index,
                ),
            other => Err(Error::Internal(format!("unexpected phase reply {other:?}"))),
        }
    }

    /// Sets the control phase to `target` if it is still `expected`.
    /// Returns the phase stored afterwards.
    pub fn set_control_phase(
        &mut self,
        expected: Phase,
        target: Phase,
        interrupt: &Interrupt,
    ) -> Result<Phase> {
        let key = phase_key(self.client.key_prefix());
        let value = self.control_script(
            &scripts::SET_PHASE,
            &[&key],
            &[
                expected.index().to_string().into_bytes(),
                target.index().to_string().into_bytes(),
            ],
            interrupt,
        )?;
        phase_of(value)
    }

    /// A control value by name (under the control prefix), if set.
    pub fn control_get(&mut self, name: &[u8], interrupt: &Interrupt) -> Result<Option<Vec<u8>>> {
        let mut key = control_prefix(self.client.key_prefix());
        key.extend_from_slice(name);
        match self.control_request(&redis::cmd("GET").arg(key).get_packed_command(), interrupt)? {
            Value::BulkString(value) => Ok(Some(value)),
            _ => Ok(None),
        }
    }

    /// Sets a control value with a TTL, or deletes it (`None`).
    pub fn control_set(
        &mut self,
        name: &[u8],
        value: Option<&[u8]>,
        ttl_ms: u64,
        interrupt: &Interrupt,
    ) -> Result<()> {
        let mut key = control_prefix(self.client.key_prefix());
        key.extend_from_slice(name);
        let packed = match value {
            Some(value) => redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl_ms.max(1))
                .get_packed_command(),
            None => redis::cmd("DEL").arg(key).get_packed_command(),
        };
        self.control_request(&packed, interrupt).map(|_| ())
    }

    /// Every live heartbeat (SCAN on the destination).
    pub fn fleet(&mut self, interrupt: &Interrupt) -> Result<Vec<FleetMember>> {
        let prefix = self.client.key_prefix().to_vec();
        let heartbeat_prefix = heartbeat_key(&prefix, "");
        let mut members = Vec::new();
        let mut cursor = 0;
        loop {
            let page = self.scan_matching(
                Target::Destination,
                &heartbeat_prefix,
                cursor,
                1000,
                true,
                interrupt,
            )?;
            for key in page.keys {
                let get = redis::cmd("GET").arg(key.as_slice()).get_packed_command();
                let pttl = redis::cmd("PTTL").arg(key.as_slice()).get_packed_command();
                let phase = self.control_request(&get, interrupt)?;
                let expires = self.control_request(&pttl, interrupt)?;
                let phase = match phase_of(phase) {
                    Ok(phase) => phase,
                    Err(_) => continue, // expired meanwhile
                };
                members.push(FleetMember {
                    process: String::from_utf8_lossy(&key[heartbeat_prefix.len()..]).into_owned(),
                    phase,
                    expires_in_ms: match expires {
                        Value::Int(ms) => ms,
                        _ => -2,
                    },
                });
            }
            cursor = page.cursor;
            if cursor == 0 {
                break;
            }
        }
        members.sort_by(|a, b| a.process.cmp(&b.process));
        Ok(members)
    }
}

fn phase_of(value: Value) -> Result<Phase> {
    match value {
        Value::Int(index) => Phase::from_index(index),
        Value::BulkString(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| text.trim().parse::<i64>().ok())
            .map_or_else(
                || Err(Error::Internal("a phase key holds no number".into())),
                Phase::from_index,
            ),
        other => Err(Error::Internal(format!("unexpected phase reply {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(phase: Phase) -> FleetMember {
        FleetMember {
            process: format!("host:{}", phase.index()),
            phase,
            expires_in_ms: 1000,
        }
    }

    #[test]
    fn transitions_must_be_adjacent_and_the_fleet_caught_up() {
        let fleet = [member(Phase::Dual), member(Phase::Dual)];
        assert!(check_transition(Phase::Dual, Phase::Drain, &fleet, Some(0)).is_empty());
        assert!(check_transition(Phase::Dual, Phase::Source, &fleet, None).is_empty());
        assert!(!check_transition(Phase::Source, Phase::Drain, &[], Some(0)).is_empty());
        assert!(!check_transition(Phase::Dual, Phase::Dual, &fleet, Some(0)).is_empty());

        let behind = [member(Phase::Dual), member(Phase::Source)];
        let reasons = check_transition(Phase::Dual, Phase::Drain, &behind, Some(0));
        assert!(reasons.iter().any(|r| r.contains("not yet in phase")));
        assert!(reasons.iter().any(|r| r.contains("still in phase 0")));

        let reasons = check_transition(Phase::Dual, Phase::Drain, &fleet, Some(3));
        assert!(reasons.iter().any(|r| r.contains("source only")));
    }

    #[test]
    fn control_keys_stay_outside_the_lock_prefix() {
        assert!(!phase_key(b"locking:").starts_with(b"locking:"));
        assert_eq!(
            heartbeat_key(b"locking:", "web-1:42"),
            b"{locking-control}:locking:process:web-1:42".to_vec()
        );
    }
}
