//! Dynamic phases: the fleet's phase in a control key on the destination,
//! each process's heartbeat, and the rules for moving the fleet.
//!
//! Control keys live under `{locking-control}:<key_prefix>`, outside the key
//! prefix (so they never count as locks) and in one cluster slot.

use crate::client::{
    audit_key, backfill_key, control_key, control_script, fleet_key, fleet_phases_key, phase_key,
    phase_of, Route, CONTROL_TAG,
};
use crate::error::{Error, Result};
use crate::operate::operator::Operator;
use crate::protocol::phase::Phase;
use crate::wire::codec::scripts;
use crate::wire::codec::{lock::server_time_ms, Arg, Value};
use crate::wire::connection::Interrupt;
// The fleet's rules are pure (`fleet`): the CLI reaches them here, the explorer there.
pub use crate::protocol::fleet::{check_transition, FleetMember};
use crate::protocol::Target;

/// What a backfill does with its lease (`control_lease.lua`).
#[derive(Clone, Copy, Debug)]
pub enum LeaseStep<'a> {
    /// Take or keep it for `ttl_ms`; `take_over` is the exact value of a
    /// lease this holder may replace (a gone holder's, or one given back to
    /// expire), keeping the TTL it has left if that is longer.
    Hold {
        ttl_ms: u64,
        take_over: Option<&'a str>,
    },
    /// Give it back now: every copy its holder sent has been answered.
    GiveBack,
    /// Give it back but let it live out its TTL: copies may still be on the
    /// wire (the run failed or was stopped), or it was taken over from a
    /// holder whose copies might be. Phase 2 waits until it expires.
    LetExpire,
}

/// Why a move to `target` waits for a backfill whose lease `holder` holds
/// (its name up to the first space), or `None`: phase 2 waits while a
/// backfill may still copy. The set-phase script enforces it atomically; the
/// gate and `phase set/advance` give these words.
pub fn backfill_blocks(target: Phase, holder: Option<&str>) -> Option<String> {
    let holder = holder.filter(|_| target == Phase::Drain)?;
    let name = holder.split(' ').next().unwrap_or(holder);
    Some(format!(
        "a backfill is running ({name}): phase 2 waits for it to finish (a dead one's lease: `locking status`)"
    ))
}

impl Operator<'_> {
    /// One control command on the destination's control node.
    fn control(&mut self, args: &[Arg<'_>], interrupt: &Interrupt) -> Result<Value> {
        self.command(
            Target::Destination,
            Route::Key(CONTROL_TAG),
            args,
            interrupt,
        )
    }

    /// The phase stored in the control key (`None` when unset).
    pub fn control_phase(&mut self, interrupt: &Interrupt) -> Result<Option<Phase>> {
        let key = phase_key(self.client().key_prefix());
        match self.control(&["GET".into(), key.as_slice().into()], interrupt)? {
            Value::Nil => Ok(None),
            Value::BulkString(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| text.trim().parse::<i64>().ok())
                .map_or_else(
                    || {
                        Err(Error::Phase(
                            "the phase control key holds no phase number".into(),
                        ))
                    },
                    Phase::from_index,
                )
                .map(Some),
            other => Err(Error::Internal(format!("unexpected phase reply {other:?}"))),
        }
    }

    /// Sets the control phase to `target` if it is still `expected` (`None`:
    /// only if no phase is set). Returns the phase stored afterwards.
    pub fn set_control_phase(
        &mut self,
        expected: Option<Phase>,
        target: Phase,
        interrupt: &Interrupt,
    ) -> Result<Option<Phase>> {
        let prefix = self.client().key_prefix().to_vec();
        let expected: Arg<'_> = match expected {
            Some(phase) => u64::from(phase.index()).into(),
            None => "none".into(),
        };
        let needs_no_backfill = if target == Phase::Drain { "1" } else { "0" };
        let value = control_script(
            self.lease(),
            &scripts::SET_PHASE,
            &[&phase_key(&prefix), &backfill_key(&prefix)],
            &[
                expected,
                u64::from(target.index()).into(),
                needs_no_backfill.into(),
            ],
            interrupt,
        )?;
        match value {
            Value::Int(-1) => Ok(None),
            Value::Int(-2) => Err(Error::Phase(
                "a backfill is running (it holds its lease): phase 2 waits for it to finish".into(),
            )),
            other => phase_of(other).map(Some),
        }
    }

    /// Waits (`WAIT`) until every replica of the control keys' master has
    /// the control writes made so far, at most half the client's timeout
    /// (so that WAIT's own answer beats the read timeout). Returns
    /// (acknowledged, replicas); (0, 0) for a master without replicas, or
    /// one that does not answer ROLE. A phase move that every replica
    /// acknowledged survives a failover of that master; one that is not yet
    /// on a replica is lost if that replica is promoted now.
    pub fn replicate_control(&mut self, interrupt: &Interrupt) -> Result<(u64, u64)> {
        let replicas = match self.control(&["ROLE".into()], interrupt)? {
            Value::Array(role) => match role.get(2) {
                Some(Value::Array(replicas)) => replicas.len() as u64,
                _ => 0,
            },
            _ => 0,
        };
        if replicas == 0 {
            return Ok((0, 0));
        }
        let timeout_ms = (self.client().timeout().as_millis() as u64 / 2).max(1);
        match self.control(
            &["WAIT".into(), replicas.into(), timeout_ms.into()],
            interrupt,
        )? {
            Value::Int(acked) => Ok((acked.max(0) as u64, replicas)),
            other => Err(Error::Internal(format!(
                "unexpected reply to WAIT on the control master: {other:?}"
            ))),
        }
    }

    /// A control value by name (under the control prefix), if set.
    pub fn control_get(&mut self, name: &[u8], interrupt: &Interrupt) -> Result<Option<Vec<u8>>> {
        let key = control_key(self.client().key_prefix(), name);
        match self.control(&["GET".into(), key.as_slice().into()], interrupt)? {
            Value::BulkString(value) => Ok(Some(value)),
            _ => Ok(None),
        }
    }

    /// A control value's time to live in ms (`None`: not set, or no TTL).
    pub fn control_pttl(&mut self, name: &[u8], interrupt: &Interrupt) -> Result<Option<u64>> {
        let key = control_key(self.client().key_prefix(), name);
        match self.control(&["PTTL".into(), key.as_slice().into()], interrupt)? {
            Value::Int(ms) if ms >= 0 => Ok(Some(ms as u64)),
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
        let key = control_key(self.client().key_prefix(), name);
        let key = key.as_slice();
        match value {
            Some(value) => self.control(
                &[
                    "SET".into(),
                    key.into(),
                    value.into(),
                    "PX".into(),
                    ttl_ms.max(1).into(),
                ],
                interrupt,
            ),
            None => self.control(&["DEL".into(), key.into()], interrupt),
        }
        .map(|_| ())
    }

    /// Takes or keeps the backfill lease for `holder` (`LeaseStep::Hold`),
    /// or gives it back (see `LeaseStep`). Returns who holds it afterwards.
    pub fn backfill_lease(
        &mut self,
        holder: &str,
        step: LeaseStep<'_>,
        interrupt: &Interrupt,
    ) -> Result<Option<String>> {
        let key = backfill_key(self.client().key_prefix());
        let (ttl, take_over): (Arg<'_>, &str) = match step {
            LeaseStep::Hold { ttl_ms, take_over } => {
                (ttl_ms.max(1).into(), take_over.unwrap_or(""))
            }
            LeaseStep::GiveBack => ("0".into(), ""),
            LeaseStep::LetExpire => ("-1".into(), ""),
        };
        let value = control_script(
            self.lease(),
            &scripts::CONTROL_LEASE,
            &[&key],
            &[holder.into(), ttl, take_over.into()],
            interrupt,
        )?;
        match value {
            Value::BulkString(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            _ => Ok(None),
        }
    }

    /// The server's `run_id` (INFO server): changes when it restarts. With its
    /// address, it tells one source from another for a saved backfill position.
    pub fn server_run_id(&mut self, target: Target, interrupt: &Interrupt) -> Result<String> {
        let name = self.client().server_name(target).unwrap_or("?").to_string();
        // A cluster's identity is its first master's (a restart of it
        // starts a saved backfill over, which is safe).
        let node = match self.client().server(target).and_then(|s| s.cluster()) {
            Some(cluster) => cluster.first_master(interrupt)?,
            None => 0,
        };
        let text = match self.command(
            target,
            Route::Node(node),
            &["INFO".into(), "server".into()],
            interrupt,
        )? {
            Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            other => {
                return Err(Error::Command {
                    server: name,
                    detail: format!("unexpected reply to INFO: {other:?}"),
                })
            }
        };
        text.lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .map(|id| id.trim().to_string())
            .ok_or_else(|| Error::Command {
                server: name,
                detail: "INFO server has no run_id".into(),
            })
    }

    /// Appends an entry to the audit log (newest first, the last `keep` kept).
    pub fn audit_push(&mut self, entry: &[u8], keep: u64, interrupt: &Interrupt) -> Result<()> {
        let key = audit_key(self.client().key_prefix());
        let key = key.as_slice();
        self.control(&["LPUSH".into(), key.into(), entry.into()], interrupt)?;
        self.control(
            &[
                "LTRIM".into(),
                key.into(),
                0.into(),
                keep.saturating_sub(1).into(),
            ],
            interrupt,
        )?;
        Ok(())
    }

    /// The newest `count` audit entries.
    pub fn audit_recent(&mut self, count: u64, interrupt: &Interrupt) -> Result<Vec<Vec<u8>>> {
        let key = audit_key(self.client().key_prefix());
        let value = self.control(
            &[
                "LRANGE".into(),
                key.as_slice().into(),
                0.into(),
                count.saturating_sub(1).into(),
            ],
            interrupt,
        )?;
        Ok(match value {
            Value::Array(items) => items
                .into_iter()
                .filter_map(|item| match item {
                    Value::BulkString(bytes) => Some(bytes),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        })
    }

    /// Deletes a process's heartbeat (this process's, as it exits).
    pub fn delete_heartbeat(&mut self, process: &str, interrupt: &Interrupt) -> Result<bool> {
        let prefix = self.client().key_prefix().to_vec();
        let removed = self.control(
            &[
                "ZREM".into(),
                fleet_key(&prefix).as_slice().into(),
                process.into(),
            ],
            interrupt,
        )?;
        self.control(
            &[
                "HDEL".into(),
                fleet_phases_key(&prefix).as_slice().into(),
                process.into(),
            ],
            interrupt,
        )?;
        Ok(matches!(removed, Value::Int(1)))
    }

    /// Every live heartbeat: three commands, whatever the size of the
    /// keyspace (no SCAN).
    pub fn fleet(&mut self, interrupt: &Interrupt) -> Result<Vec<FleetMember>> {
        let prefix = self.client().key_prefix().to_vec();
        let time = self.control(&["TIME".into()], interrupt)?;
        let now =
            server_time_ms(&time).ok_or_else(|| Error::Internal("TIME gave no time".into()))?;
        let after = format!("({now}");
        let live = self.control(
            &[
                "ZRANGEBYSCORE".into(),
                fleet_key(&prefix).as_slice().into(),
                after.as_str().into(),
                "+inf".into(),
                "WITHSCORES".into(),
            ],
            interrupt,
        )?;
        let Value::Array(items) = live else {
            return Ok(Vec::new());
        };
        let mut processes = Vec::with_capacity(items.len() / 2);
        for pair in items.chunks(2) {
            let [Value::BulkString(process), Value::BulkString(score)] = pair else {
                continue;
            };
            let expires_at = std::str::from_utf8(score)
                .ok()
                .and_then(|t| t.parse::<f64>().ok())
                .unwrap_or(0.0) as i64;
            processes.push((process.clone(), expires_at - now as i64));
        }
        if processes.is_empty() {
            return Ok(Vec::new());
        }
        let phases_key = fleet_phases_key(&prefix);
        let mut hmget: Vec<Arg<'_>> = vec!["HMGET".into(), phases_key.as_slice().into()];
        hmget.extend(
            processes
                .iter()
                .map(|(process, _)| Arg::from(process.as_slice())),
        );
        let Value::Array(values) = self.control(&hmget, interrupt)? else {
            return Ok(Vec::new());
        };
        let mut members = Vec::with_capacity(processes.len());
        for ((process, expires_in_ms), value) in processes.iter().zip(values) {
            let Value::BulkString(value) = value else {
                continue; // forgotten meanwhile
            };
            let name = String::from_utf8_lossy(process).into_owned();
            members.push(FleetMember::parse(name, &value, *expires_in_ms)?);
        }
        members.sort_by(|a, b| a.process.cmp(&b.process));
        Ok(members)
    }
}
