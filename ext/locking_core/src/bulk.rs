//! Operations over many keys, for the operator tools: walking lock keys with
//! SCAN (never KEYS), and backfill in pipelined batches. Every batch drives
//! the same per-key `protocol::Backfill` state machines the explorer checks;
//! each round trip carries the next command of every key in the batch, one
//! pipeline per server, both servers at once.

use crate::client::Lease;
use crate::connection::Interrupt;
use crate::error::{Error, Result};
use crate::phase::Phase;
use crate::protocol::{self, BackfillOutcome, Command, Operation, Reply, Step, Target};
use redis::Value;
use std::collections::HashSet;

/// At most this many SCAN pages per backfill batch.
pub const MAX_PAGES_PER_BATCH: usize = 64;

/// One page of a SCAN over string keys under the key prefix.
#[derive(Debug, Clone, Default)]
pub struct ScanPage {
    /// 0 when the walk is complete.
    pub cursor: u64,
    pub keys: Vec<Vec<u8>>,
}

/// Lock keys on one server and their remaining TTLs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyStats {
    pub keys: u64,
    pub without_ttl: u64,
    pub max_ttl_ms: u64,
    pub p99_ttl_ms: u64,
}

/// What one backfill batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillReport {
    /// Where the next batch starts; 0 when the walk is complete.
    pub cursor: u64,
    pub scanned: u64,
    pub copied: u64,
    pub already_there: u64,
    pub conflicts: u64,
    pub undone: u64,
    pub absent: u64,
    /// Keys whose commands failed with a server error (the batch went on).
    pub failed: u64,
}

/// Source locks that the destination does not hold with the same token.
#[derive(Debug, Clone, Default)]
pub struct SourceOnly {
    pub scanned: u64,
    pub count: u64,
    pub examples: Vec<Vec<u8>>,
}

/// A glob that matches exactly the keys starting with `prefix`.
fn match_pattern(prefix: &[u8]) -> Vec<u8> {
    let mut pattern = Vec::with_capacity(prefix.len() + 1);
    for &byte in prefix {
        if matches!(byte, b'*' | b'?' | b'[' | b']' | b'\\') {
            pattern.push(b'\\');
        }
        pattern.push(byte);
    }
    pattern.push(b'*');
    pattern
}

impl Lease<'_> {
    fn check_prefix(&self) -> Result<()> {
        if self.client.key_prefix().is_empty() {
            return Err(Error::InvalidArgument(
                "the operator tools need a non-empty key_prefix: with an empty one every string key \
                 of the server (queue data included) would count as a lock"
                    .into(),
            ));
        }
        Ok(())
    }

    /// One SCAN page of string keys under the prefix.
    pub fn scan(
        &mut self,
        target: Target,
        cursor: u64,
        count: usize,
        interrupt: &Interrupt,
    ) -> Result<ScanPage> {
        self.check_prefix()?;
        let prefix = self.client.key_prefix().to_vec();
        self.scan_matching(target, &prefix, cursor, count, true, interrupt)
    }

    /// One SCAN page of string keys starting with `prefix`.
    /// `strings_only` adds SCAN's TYPE filter, which costs the server a
    /// lookup per key; backfill goes without (its reads ignore other types).
    pub(crate) fn scan_matching(
        &mut self,
        target: Target,
        prefix: &[u8],
        cursor: u64,
        count: usize,
        strings_only: bool,
        interrupt: &Interrupt,
    ) -> Result<ScanPage> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(match_pattern(prefix))
            .arg("COUNT")
            .arg(count.max(1));
        if strings_only {
            scan.arg("TYPE").arg("string");
        }
        let packed = scan.get_packed_command();
        let (server, connection) = self.connection(target, interrupt)?;
        let name = server.name().to_string();
        let value = connection.request(&packed, interrupt)?;
        let bad = |detail: String| Error::Command {
            server: name.clone(),
            detail,
        };
        match value {
            Value::Array(mut parts) if parts.len() == 2 => {
                let keys = parts.pop();
                let cursor = parts.pop();
                let cursor = match cursor {
                    Some(Value::BulkString(bytes)) => std::str::from_utf8(&bytes)
                        .ok()
                        .and_then(|text| text.parse::<u64>().ok())
                        .ok_or_else(|| bad("SCAN returned a bad cursor".into()))?,
                    other => return Err(bad(format!("SCAN returned {other:?}"))),
                };
                let keys = match keys {
                    Some(Value::Array(keys)) => keys
                        .into_iter()
                        .filter_map(|key| match key {
                            Value::BulkString(bytes) => Some(bytes),
                            _ => None,
                        })
                        .collect(),
                    other => return Err(bad(format!("SCAN returned {other:?}"))),
                };
                Ok(ScanPage { cursor, keys })
            }
            other => match crate::connection::server_error(&other) {
                Some(error) => Err(bad(format!(
                    "SCAN failed: {}",
                    crate::connection::server_error_text(&error)
                ))),
                None => Err(bad(format!("SCAN returned {other:?}"))),
            },
        }
    }

    /// Counts lock keys on a server and summarizes their TTLs (a full walk).
    pub fn key_stats(&mut self, target: Target, interrupt: &Interrupt) -> Result<KeyStats> {
        let mut ttls: Vec<u64> = Vec::new();
        let mut stats = KeyStats::default();
        let mut cursor = 0;
        loop {
            let page = self.scan(target, cursor, 1000, interrupt)?;
            let pttls = self.pipeline_raw(target, "PTTL", &page.keys, interrupt)?;
            for pttl in pttls {
                match pttl {
                    Value::Int(-1) => {
                        stats.keys += 1;
                        stats.without_ttl += 1;
                    }
                    Value::Int(ms) if ms >= 0 => {
                        stats.keys += 1;
                        ttls.push(ms as u64);
                    }
                    _ => {} // expired since the scan
                }
            }
            cursor = page.cursor;
            if cursor == 0 {
                break;
            }
        }
        if !ttls.is_empty() {
            stats.max_ttl_ms = ttls.iter().copied().max().unwrap_or(0);
            let index = ((ttls.len() as f64) * 0.99).ceil() as usize;
            let index = index.clamp(1, ttls.len()) - 1;
            let (_, p99, _) = ttls.select_nth_unstable(index);
            stats.p99_ttl_ms = *p99;
        }
        Ok(stats)
    }

    /// Source locks the destination does not hold with the same token (a full
    /// walk of the source): what stands between phase 1 and the gate.
    ///
    /// A phase-1 acquire in flight has written the source and not yet the
    /// destination; such a key is source-only for a round trip. Candidates
    /// are therefore checked again, a few times over ~150 ms, and only those
    /// still source-only with the same token count: a lock left from phase 0
    /// stays that way, an acquire in flight does not (a stalled one keeps the
    /// gate closed, which errs on the safe side).
    pub fn source_only(&mut self, examples: usize, interrupt: &Interrupt) -> Result<SourceOnly> {
        let mut report = SourceOnly::default();
        let mut candidates: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut cursor = 0;
        loop {
            let page = self.scan(Target::Source, cursor, 1000, interrupt)?;
            report.scanned += page.keys.len() as u64;
            candidates.extend(self.source_only_among(page.keys, interrupt)?);
            cursor = page.cursor;
            if cursor == 0 {
                break;
            }
        }
        for _ in 0..3 {
            if candidates.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut still = HashSet::with_capacity(candidates.len());
            for chunk in candidates.chunks(1000) {
                let keys = chunk.iter().map(|(key, _)| key.clone()).collect();
                still.extend(self.source_only_among(keys, interrupt)?);
            }
            candidates.retain(|candidate| still.contains(candidate));
        }
        report.count = candidates.len() as u64;
        report.examples = candidates
            .into_iter()
            .take(examples)
            .map(|(key, _)| key)
            .collect();
        Ok(report)
    }

    /// (key, source value) of the keys whose source value the destination lacks.
    fn source_only_among(
        &mut self,
        keys: Vec<Vec<u8>>,
        interrupt: &Interrupt,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let on_source = self.pipeline_raw(Target::Source, "GET", &keys, interrupt)?;
        let on_destination = self.pipeline_raw(Target::Destination, "GET", &keys, interrupt)?;
        Ok(keys
            .into_iter()
            .zip(on_source)
            .zip(on_destination)
            .filter_map(|((key, source), destination)| match (source, destination) {
                (Value::BulkString(s), Value::BulkString(d)) if s == d => None,
                (Value::BulkString(s), _) => Some((key, s)),
                _ => None,
            })
            .collect())
    }

    /// One batch of backfill: a SCAN page of the source, then every key of it
    /// mirrored onto the destination. With `dry_run`, only counts what would
    /// be copied (source locks missing on the destination), writing nothing.
    pub fn backfill_batch(
        &mut self,
        cursor: u64,
        count: usize,
        pages: usize,
        dry_run: bool,
        interrupt: &Interrupt,
    ) -> Result<BackfillReport> {
        self.resolve_phase(interrupt)?;
        if !matches!(self.phase, Phase::Source | Phase::Dual) {
            return Err(Error::InvalidArgument(format!(
                "backfill runs only in phases 0 and 1, not in phase {}: its copies could race releases",
                self.phase
            )));
        }
        // Several pages per call, each one round trip behind the one before,
        // so that one page's destination writes travel with the others'
        // source reads: both servers (and both cores) work in most round
        // trips, and the client handles several pages per wake-up.
        self.check_prefix()?;
        let prefix = self.client.key_prefix().to_vec();
        if !(1..=MAX_PAGES_PER_BATCH).contains(&pages) {
            return Err(Error::InvalidArgument(format!(
                "pages per backfill batch must be between 1 and {MAX_PAGES_PER_BATCH}, not {pages}"
            )));
        }
        let wanted = pages;
        let mut pages: Vec<ScanPage> = Vec::with_capacity(wanted);
        let mut next = cursor;
        loop {
            let page =
                self.scan_matching(Target::Source, &prefix, next, count, dry_run, interrupt)?;
            next = page.cursor;
            pages.push(page);
            if next == 0 || dry_run || pages.len() == wanted {
                break;
            }
        }
        let mut report = BackfillReport {
            cursor: next,
            scanned: pages.iter().map(|page| page.keys.len() as u64).sum(),
            ..BackfillReport::default()
        };
        if report.scanned == 0 {
            return Ok(report);
        }
        if dry_run {
            let page = pages.swap_remove(0);
            let on_source = self.pipeline_raw(Target::Source, "GET", &page.keys, interrupt)?;
            let on_destination =
                self.pipeline_raw(Target::Destination, "GET", &page.keys, interrupt)?;
            for (source, destination) in on_source.into_iter().zip(on_destination) {
                match (source, destination) {
                    (Value::BulkString(_), Value::Nil) => report.copied += 1,
                    (Value::BulkString(s), Value::BulkString(d)) if s == d => {
                        report.already_there += 1
                    }
                    (Value::BulkString(_), _) => report.conflicts += 1,
                    _ => report.absent += 1,
                }
            }
            return Ok(report);
        }
        let ops = pages
            .iter()
            .enumerate()
            .flat_map(|(delay, page)| {
                page.keys.iter().map(move |key| {
                    (
                        key.as_slice(),
                        Delayed::new(delay, protocol::Backfill::new()),
                    )
                })
            })
            .collect();
        for outcome in self.run_many(ops, interrupt)? {
            match outcome {
                Ok(BackfillOutcome::Copied) => report.copied += 1,
                Ok(BackfillOutcome::AlreadyThere) => report.already_there += 1,
                Ok(BackfillOutcome::Conflict) => report.conflicts += 1,
                Ok(BackfillOutcome::Undone) => report.undone += 1,
                Ok(BackfillOutcome::Absent) => report.absent += 1,
                Err(_) => report.failed += 1,
            }
        }
        Ok(report)
    }

    /// Deletes `key` (under the prefix) on every configured server, whoever
    /// holds it: the operator's manual unlock. Returns the keys deleted.
    pub fn force_delete(&mut self, key: &[u8], interrupt: &Interrupt) -> Result<u64> {
        if key.is_empty() {
            return Err(Error::InvalidArgument("lock key must not be empty".into()));
        }
        let mut full_key = self.client.key_prefix().to_vec();
        full_key.extend_from_slice(key);
        let mut deleted = 0;
        for target in self.configured_targets() {
            let values = self.pipeline_raw(target, "DEL", &[full_key.clone()], interrupt)?;
            deleted += values.iter().filter(|v| matches!(v, Value::Int(1))).count() as u64;
        }
        Ok(deleted)
    }

    /// Deletes every lock whose key (after the prefix) starts with
    /// `key_start`, on every configured server, walking with SCAN. Returns
    /// the keys deleted.
    pub fn delete_matching(&mut self, key_start: &[u8], interrupt: &Interrupt) -> Result<u64> {
        self.check_prefix()?;
        if key_start.is_empty() {
            return Err(Error::InvalidArgument(
                "refusing to delete every lock: give the start of the keys".into(),
            ));
        }
        let mut pattern_prefix = self.client.key_prefix().to_vec();
        pattern_prefix.extend_from_slice(key_start);
        let mut deleted = 0;
        for target in self.configured_targets() {
            let mut cursor = 0;
            loop {
                let page =
                    self.scan_matching(target, &pattern_prefix, cursor, 1000, true, interrupt)?;
                if !page.keys.is_empty() {
                    let values = self.pipeline_raw(target, "DEL", &page.keys, interrupt)?;
                    deleted += values.iter().filter(|v| matches!(v, Value::Int(1))).count() as u64;
                }
                cursor = page.cursor;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(deleted)
    }

    fn configured_targets(&self) -> Vec<Target> {
        [Target::Source, Target::Destination]
            .into_iter()
            .filter(|target| self.client.server_name(*target).is_some())
            .collect()
    }

    /// The same single-key command (GET, PTTL ...) for many keys, pipelined.
    fn pipeline_raw(
        &mut self,
        target: Target,
        name: &str,
        keys: &[Vec<u8>],
        interrupt: &Interrupt,
    ) -> Result<Vec<Value>> {
        let mut packed = Vec::with_capacity(keys.len() * 32);
        for key in keys {
            redis::cmd(name)
                .arg(key.as_slice())
                .write_packed_command(&mut packed);
        }
        let (_, connection) = self.connection(target, interrupt)?;
        connection.send(&packed, interrupt)?;
        keys.iter().map(|_| connection.receive(interrupt)).collect()
    }

    /// Drives many operations, each on its own (full) key, in lockstep: each
    /// round trip sends the next commands of all of them, one pipeline per
    /// server, to both servers before reading either. A transport failure
    /// fails the whole call; a server error fails only its operation.
    pub fn run_many<O: Operation>(
        &mut self,
        mut ops: Vec<(&[u8], O)>,
        interrupt: &Interrupt,
    ) -> Result<Vec<Result<O::Output>>> {
        let mut outputs: Vec<Option<Result<O::Output>>> = ops.iter().map(|_| None).collect();
        let mut replies: Vec<Vec<Option<Result<Reply>>>> = ops.iter().map(|_| Vec::new()).collect();
        let mut batches: Vec<Vec<(Target, Command)>> = ops.iter().map(|_| Vec::new()).collect();
        let mut packed = Vec::new();
        loop {
            let mut waiting = false;
            for (index, (_, op)) in ops.iter_mut().enumerate() {
                if outputs[index].is_some() {
                    continue;
                }
                let ready: Vec<Result<Reply>> = std::mem::take(&mut replies[index])
                    .into_iter()
                    .map(|reply| {
                        reply.unwrap_or_else(|| Err(Error::Internal("reply missing".into())))
                    })
                    .collect();
                match op.step(ready) {
                    Step::Done(result) => {
                        outputs[index] = Some(result);
                        batches[index].clear();
                    }
                    Step::Send(batch) => {
                        replies[index] = batch.iter().map(|_| None).collect();
                        batches[index] = batch;
                        waiting = true;
                    }
                }
            }
            if !waiting {
                break;
            }
            // (operation, command) positions per server, in pipeline order.
            let mut positions: [Vec<(usize, usize)>; 2] = [Vec::new(), Vec::new()];
            for (index, batch) in batches.iter().enumerate() {
                for (slot, (target, _)) in batch.iter().enumerate() {
                    positions[slot_of(*target)].push((index, slot));
                }
            }
            let commands: [Vec<(&[u8], &Command)>; 2] = positions.clone().map(|side| {
                side.iter()
                    .map(|&(index, slot)| (ops[index].0, &batches[index][slot].1))
                    .collect()
            });
            let targets = [Target::Source, Target::Destination];
            for (side, target) in targets.iter().enumerate() {
                if !commands[side].is_empty() {
                    let (server, connection) = self.connection(*target, interrupt)?;
                    server.pipeline_send(connection, &commands[side], &mut packed, interrupt)?;
                }
            }
            for (side, target) in targets.iter().enumerate() {
                if commands[side].is_empty() {
                    continue;
                }
                let (server, connection) = self.connection(*target, interrupt)?;
                let results = server.pipeline_finish(connection, &commands[side], interrupt)?;
                for (&(index, slot), result) in positions[side].iter().zip(results) {
                    replies[index][slot] = Some(result);
                }
            }
        }
        Ok(outputs
            .into_iter()
            .map(|output| {
                output.unwrap_or_else(|| Err(Error::Internal("operation did not finish".into())))
            })
            .collect())
    }
}

/// Runs an operation `rounds` round trips late (sending nothing until then),
/// to stagger pages so that each round trip keeps both servers busy.
struct Delayed<O> {
    rounds: usize,
    op: O,
}

impl<O> Delayed<O> {
    fn new(rounds: usize, op: O) -> Self {
        Delayed { rounds, op }
    }
}

impl<O: Operation> Operation for Delayed<O> {
    type Output = O::Output;

    fn step(&mut self, replies: Vec<Result<Reply>>) -> Step<O::Output> {
        if self.rounds > 0 {
            self.rounds -= 1;
            return Step::Send(Vec::new());
        }
        self.op.step(replies)
    }
}

fn slot_of(target: Target) -> usize {
    match target {
        Target::Source => 0,
        Target::Destination => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::match_pattern;

    #[test]
    fn escapes_glob_characters_in_the_prefix() {
        assert_eq!(match_pattern(b"locking:"), b"locking:*".to_vec());
        assert_eq!(
            match_pattern(b"a*b?[c]\\"),
            b"a\\*b\\?\\[c\\]\\\\*".to_vec()
        );
    }
}
