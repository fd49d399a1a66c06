//! Operations over many keys, for the operator tools: walking lock keys with
//! SCAN (never KEYS), and backfill in streamed batches. Every batch drives
//! the same per-key `protocol::Backfill` state machines the explorer checks,
//! thousands at once, one command in flight per key (`stream_backfill`).

use crate::client::Lease;
use crate::connection::Interrupt;
use crate::error::{Error, Result};
use crate::phase::Phase;
use crate::protocol::{self, BackfillOutcome, Command, Operation, Reply, Step, Target};
use crate::resp::{self, Arg};
use crate::server::Decoded;
use redis::Value;
use std::collections::HashSet;
use std::collections::VecDeque;

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
    /// The first few of those errors, with their keys.
    pub errors: Vec<String>,
}

/// How many failures a backfill batch reports in words.
const ERRORS_REPORTED: usize = 3;

/// Source locks that the destination does not hold with the same token.
#[derive(Debug, Clone, Default)]
pub struct SourceOnly {
    pub scanned: u64,
    pub count: u64,
    /// Of `count`, those counted without the re-check (past `MAX_RECHECKED`).
    pub unchecked: u64,
    pub examples: Vec<Vec<u8>>,
}

/// One-sided locks kept for the gate's re-check; past this many they are
/// counted without it, so the walk's memory stays bounded (2,000,000
/// source-only locks once took 655 MB).
pub const MAX_RECHECKED: usize = 10_000;

/// TTLs kept to estimate the p99 of a key-stats walk (a uniform sample).
const TTL_SAMPLE: usize = 100_000;

/// Where a resumable SCAN walk stands.
#[derive(Debug, Clone, Copy, Default)]
struct WalkPosition {
    cursor: u64,
    done: bool,
}

/// A walk of one server for `key_stats`, resumable page by page.
#[derive(Debug, Clone)]
pub struct KeyStatsWalk {
    target: Target,
    position: WalkPosition,
    stats: KeyStats,
    ttls: Vec<u64>,
    ttls_seen: u64,
    random: u64,
}

impl KeyStatsWalk {
    pub fn new(target: Target) -> Self {
        KeyStatsWalk {
            target,
            position: WalkPosition::default(),
            stats: KeyStats::default(),
            ttls: Vec::new(),
            ttls_seen: 0,
            random: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// Reservoir sampling: every TTL seen has the same chance to be kept.
    fn sample_ttl(&mut self, ttl: u64) {
        self.stats.max_ttl_ms = self.stats.max_ttl_ms.max(ttl);
        self.ttls_seen += 1;
        if self.ttls.len() < TTL_SAMPLE {
            self.ttls.push(ttl);
            return;
        }
        // xorshift64: enough to spread the sample, no dependency.
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        let slot = self.random % self.ttls_seen;
        if let Some(kept) = self.ttls.get_mut(slot as usize) {
            *kept = ttl;
        }
    }

    pub fn finish(mut self) -> KeyStats {
        if !self.ttls.is_empty() {
            let index = ((self.ttls.len() as f64) * 0.99).ceil() as usize;
            let index = index.clamp(1, self.ttls.len()) - 1;
            let (_, p99, _) = self.ttls.select_nth_unstable(index);
            self.stats.p99_ttl_ms = *p99;
        }
        self.stats
    }
}

/// A walk of one server for the gate (source-only) or the reverse gate
/// (destination-only), resumable page by page.
#[derive(Debug, Clone)]
pub struct OneSidedWalk {
    side: Target,
    position: WalkPosition,
    scanned: u64,
    candidates: Vec<(Vec<u8>, Vec<u8>)>,
    unchecked: u64,
}

impl OneSidedWalk {
    pub fn new(side: Target) -> Self {
        OneSidedWalk {
            side,
            position: WalkPosition::default(),
            scanned: 0,
            candidates: Vec::new(),
            unchecked: 0,
        }
    }
}

/// `SCAN cursor MATCH prefix* COUNT count [TYPE string]`, encoded.
fn scan_command(prefix: &[u8], cursor: u64, count: usize, strings_only: bool) -> Vec<u8> {
    let pattern = match_pattern(prefix);
    let mut args: Vec<Arg> = vec![
        "SCAN".into(),
        cursor.into(),
        "MATCH".into(),
        pattern.as_slice().into(),
        "COUNT".into(),
        (count.max(1) as u64).into(),
    ];
    if strings_only {
        args.extend::<[Arg; 2]>(["TYPE".into(), "string".into()]);
    }
    let mut packed = Vec::with_capacity(64 + pattern.len());
    resp::write_command(&mut packed, &args);
    packed
}

/// A SCAN reply as a page: the next cursor and the keys.
fn parse_scan(value: Value, server: &str) -> Result<ScanPage> {
    let bad = |detail: String| Error::Command {
        server: server.to_string(),
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
        let packed = scan_command(prefix, cursor, count, strings_only);
        let (server, connection) = self.connection(target, interrupt)?;
        let name = server.name().to_string();
        let value = connection.request(&packed, interrupt)?;
        parse_scan(value, &name)
    }

    /// Counts lock keys on a server and summarizes their TTLs (a full walk).
    pub fn key_stats(&mut self, target: Target, interrupt: &Interrupt) -> Result<KeyStats> {
        let mut walk = KeyStatsWalk::new(target);
        while !self.key_stats_step(&mut walk, usize::MAX, interrupt)? {}
        Ok(walk.finish())
    }

    /// Walks up to `pages` SCAN pages of a key-stats walk; true when it is
    /// complete. A caller that steps a few pages at a time can stop between
    /// steps (Ctrl-C in the CLI), and memory stays bounded (a TTL sample).
    pub fn key_stats_step(
        &mut self,
        walk: &mut KeyStatsWalk,
        pages: usize,
        interrupt: &Interrupt,
    ) -> Result<bool> {
        let target = walk.target;
        let mut position = walk.position;
        let done = self.walk_pages(target, &mut position, pages, interrupt, |lease, keys| {
            let pttls = lease.pipeline_raw(target, "PTTL", &keys, interrupt)?;
            for pttl in pttls {
                match pttl {
                    Value::Int(-1) => {
                        walk.stats.keys += 1;
                        walk.stats.without_ttl += 1;
                    }
                    Value::Int(ms) if ms >= 0 => {
                        walk.stats.keys += 1;
                        walk.sample_ttl(ms as u64);
                    }
                    _ => {} // expired since the scan
                }
            }
            Ok(())
        })?;
        walk.position = position;
        Ok(done)
    }

    /// Steps a resumable SCAN walk of `target`: up to `pages` pages from
    /// `position`, each page's keys handed to `page`; true once complete.
    fn walk_pages(
        &mut self,
        target: Target,
        position: &mut WalkPosition,
        pages: usize,
        interrupt: &Interrupt,
        mut page: impl FnMut(&mut Self, Vec<Vec<u8>>) -> Result<()>,
    ) -> Result<bool> {
        for _ in 0..pages.max(1) {
            if position.done {
                break;
            }
            let scanned = self.scan(target, position.cursor, 1000, interrupt)?;
            position.cursor = scanned.cursor;
            position.done = scanned.cursor == 0;
            page(self, scanned.keys)?;
        }
        Ok(position.done)
    }

    /// Source locks the destination does not hold with the same token (a full
    /// walk of the source): what stands between phase 1 and the gate.
    pub fn source_only(&mut self, examples: usize, interrupt: &Interrupt) -> Result<SourceOnly> {
        self.only_on(Target::Source, examples, interrupt)
    }

    /// The reverse gate's count, before a rollback from phase 1 to 0: locks
    /// on the destination only (taken in phase 2), which a process in phase 0
    /// would not see. Same re-checks as `source_only` (a phase-1 release is
    /// destination-only for one round trip).
    pub fn destination_only(
        &mut self,
        examples: usize,
        interrupt: &Interrupt,
    ) -> Result<SourceOnly> {
        self.only_on(Target::Destination, examples, interrupt)
    }

    fn only_on(
        &mut self,
        side: Target,
        examples: usize,
        interrupt: &Interrupt,
    ) -> Result<SourceOnly> {
        let mut walk = OneSidedWalk::new(side);
        while !self.one_sided_step(&mut walk, usize::MAX, interrupt)? {}
        self.one_sided_finish(walk, examples, interrupt)
    }

    /// Walks up to `pages` SCAN pages of `side`, collecting the locks the
    /// other server lacks; true when the walk is complete.
    pub fn one_sided_step(
        &mut self,
        walk: &mut OneSidedWalk,
        pages: usize,
        interrupt: &Interrupt,
    ) -> Result<bool> {
        let side = walk.side;
        let mut position = walk.position;
        let done = self.walk_pages(side, &mut position, pages, interrupt, |lease, keys| {
            walk.scanned += keys.len() as u64;
            for candidate in lease.only_among(side, keys, interrupt)? {
                if walk.candidates.len() < MAX_RECHECKED {
                    walk.candidates.push(candidate);
                } else {
                    walk.unchecked += 1;
                }
            }
            Ok(())
        })?;
        walk.position = position;
        Ok(done)
    }

    /// Ends a walk: an operation in flight makes a key one-sided for a round
    /// trip (a phase-1 acquire has written the source, not yet the
    /// destination), so candidates are checked again, a few times over
    /// ~150 ms, and only those still one-sided with the same token count: a
    /// lock left from phase 0 stays that way, an acquire in flight does not
    /// (a stalled one keeps the gate closed, which errs on the safe side).
    /// At most `MAX_RECHECKED` are kept for that; the rest count unchecked
    /// (the gate is closed by far more than a few acquires in flight then).
    pub fn one_sided_finish(
        &mut self,
        mut walk: OneSidedWalk,
        examples: usize,
        interrupt: &Interrupt,
    ) -> Result<SourceOnly> {
        let side = walk.side;
        for _ in 0..3 {
            if walk.candidates.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut still = HashSet::with_capacity(walk.candidates.len());
            for chunk in walk.candidates.chunks(1000) {
                let keys = chunk.iter().map(|(key, _)| key.clone()).collect();
                still.extend(self.only_among(side, keys, interrupt)?);
            }
            walk.candidates
                .retain(|candidate| still.contains(candidate));
        }
        Ok(SourceOnly {
            scanned: walk.scanned,
            count: walk.candidates.len() as u64 + walk.unchecked,
            unchecked: walk.unchecked,
            examples: walk
                .candidates
                .into_iter()
                .take(examples)
                .map(|(key, _)| key)
                .collect(),
        })
    }

    /// (key, value) of the keys whose value on `side` the other server lacks.
    fn only_among(
        &mut self,
        side: Target,
        keys: Vec<Vec<u8>>,
        interrupt: &Interrupt,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let other = match side {
            Target::Source => Target::Destination,
            Target::Destination => Target::Source,
        };
        let on_side = self.pipeline_raw(side, "GET", &keys, interrupt)?;
        let on_other = self.pipeline_raw(other, "GET", &keys, interrupt)?;
        Ok(keys
            .into_iter()
            .zip(on_side)
            .zip(on_other)
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
        self.check_prefix()?;
        if !(1..=MAX_PAGES_PER_BATCH).contains(&pages) {
            return Err(Error::InvalidArgument(format!(
                "pages per backfill batch must be between 1 and {MAX_PAGES_PER_BATCH}, not {pages}"
            )));
        }
        let prefix = self.client.key_prefix().to_vec();
        if dry_run {
            let page =
                self.scan_matching(Target::Source, &prefix, cursor, count, true, interrupt)?;
            let mut report = BackfillReport {
                cursor: page.cursor,
                scanned: page.keys.len() as u64,
                ..BackfillReport::default()
            };
            if page.keys.is_empty() {
                return Ok(report);
            }
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
        let walk = self.stream_backfill(&prefix, cursor, count, pages, interrupt)?;
        let mut report = BackfillReport {
            cursor: walk.cursor,
            scanned: walk.outcomes.len() as u64,
            ..BackfillReport::default()
        };
        for (key, outcome) in walk.keys.iter().zip(walk.outcomes) {
            match outcome {
                Ok(BackfillOutcome::Copied) => report.copied += 1,
                Ok(BackfillOutcome::AlreadyThere) => report.already_there += 1,
                Ok(BackfillOutcome::Conflict) => report.conflicts += 1,
                Ok(BackfillOutcome::Undone) => report.undone += 1,
                Ok(BackfillOutcome::Absent) => report.absent += 1,
                Err(error) => {
                    report.failed += 1;
                    if report.errors.len() < ERRORS_REPORTED {
                        report
                            .errors
                            .push(format!("{:?}: {error}", String::from_utf8_lossy(key)));
                    }
                }
            }
        }
        Ok(report)
    }

    /// Walks up to `pages` SCAN pages from `cursor` and drives every key's
    /// `protocol::Backfill` to its end, streaming: each server is sent the
    /// next commands as soon as the replies they depend on are in, so it
    /// has work queued while the client handles the other server's
    /// replies. Replies come back in the order sent, per connection; each
    /// key has one command in flight at a time, so its steps stay in the
    /// order the protocol (and the explorer) gives them. The next SCAN is
    /// sent as soon as a page arrives.
    fn stream_backfill(
        &mut self,
        prefix: &[u8],
        cursor: u64,
        count: usize,
        pages: usize,
        interrupt: &Interrupt,
    ) -> Result<Walk> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut ops: Vec<protocol::Backfill> = Vec::new();
        let mut outcomes: Vec<Option<Result<BackfillOutcome>>> = Vec::new();
        // What each server owes us, oldest first, with the order it was sent in.
        let mut owed: [VecDeque<(u64, Flight)>; 2] = [VecDeque::new(), VecDeque::new()];
        let mut sent = 0u64;
        let mut packed = Vec::new();
        let mut next_cursor = cursor;
        let mut pages_asked = 1;
        let mut resent: Vec<u8> = Vec::new();
        let mut load: [Vec<&'static redis::Script>; 2] = [Vec::new(), Vec::new()];
        let names = [
            self.client
                .server_name(Target::Source)
                .unwrap_or("source")
                .to_string(),
            self.client
                .server_name(Target::Destination)
                .unwrap_or("destination")
                .to_string(),
        ];

        let (_, connection) = self.connection(Target::Source, interrupt)?;
        connection.send(&scan_command(prefix, cursor, count, false), interrupt)?;
        owed[0].push_back((sent, Flight::Scan));
        sent += 1;

        while let Some(side) = oldest(&owed) {
            let Some((_, flight)) = owed[side].pop_front() else {
                break;
            };
            let target = [Target::Source, Target::Destination][side];
            // (op, command) pairs each server gets next.
            let mut next: [Vec<(usize, Command)>; 2] = [Vec::new(), Vec::new()];
            match flight {
                Flight::Scan => {
                    let (_, connection) = self.connection(Target::Source, interrupt)?;
                    let page = parse_scan(connection.receive(interrupt)?, &names[0])?;
                    next_cursor = page.cursor;
                    if next_cursor != 0 && pages_asked < pages {
                        connection
                            .send(&scan_command(prefix, next_cursor, count, false), interrupt)?;
                        owed[0].push_back((sent, Flight::Scan));
                        sent += 1;
                        pages_asked += 1;
                    }
                    for key in page.keys {
                        let index = ops.len();
                        keys.push(key);
                        ops.push(protocol::Backfill::new());
                        outcomes.push(None);
                        resent.push(0);
                        step_into(&mut ops[index], index, Vec::new(), &mut outcomes, &mut next);
                    }
                }
                Flight::Commands(flight) => {
                    let commands: Vec<(&[u8], &Command)> = flight
                        .iter()
                        .map(|(index, command)| (keys[*index].as_slice(), command))
                        .collect();
                    let (server, connection) = self.connection(target, interrupt)?;
                    let decoded = server.pipeline_decode(connection, &commands, interrupt)?;
                    for ((index, command), decoded) in flight.into_iter().zip(decoded) {
                        let reply = match decoded {
                            Ok(Decoded::Reply(reply)) => {
                                resent[index] = 0; // the count is per command
                                Ok(reply)
                            }
                            // The script is gone (restart, SCRIPT FLUSH): load
                            // it in the next pipeline and resend. An old server
                            // (no SET .. NX GET): resend as the Lua mirror, which
                            // may need loading in turn. At most twice a command.
                            Ok(Decoded::LoadScript(script)) if resent[index] < 2 => {
                                resent[index] += 1;
                                load[side].push(script);
                                next[side].push((index, command));
                                continue;
                            }
                            Ok(Decoded::UseAcquireScript) if resent[index] < 2 => {
                                resent[index] += 1;
                                server.use_acquire_script();
                                next[side].push((index, command));
                                continue;
                            }
                            Ok(_) => Err(Error::Command {
                                server: names[side].clone(),
                                detail: format!("server keeps refusing {command:?}"),
                            }),
                            Err(error) => Err(error),
                        };
                        step_into(
                            &mut ops[index],
                            index,
                            vec![reply],
                            &mut outcomes,
                            &mut next,
                        );
                    }
                }
                Flight::ScriptLoad(count) => {
                    // A failed load shows as a second NOSCRIPT, which fails its key.
                    let (_, connection) = self.connection(target, interrupt)?;
                    for _ in 0..count {
                        connection.receive(interrupt)?;
                    }
                }
            }
            for (side, batch) in next.into_iter().enumerate() {
                let target = [Target::Source, Target::Destination][side];
                if !load[side].is_empty() {
                    let mut scripts = std::mem::take(&mut load[side]);
                    scripts.sort_by_key(|script| script.get_hash());
                    scripts.dedup_by_key(|script| script.get_hash());
                    packed.clear();
                    for script in &scripts {
                        let source = crate::scripts::source_of(script)
                            .ok_or_else(|| Error::Internal("a script without its source".into()))?;
                        resp::write_command(
                            &mut packed,
                            &["SCRIPT".into(), "LOAD".into(), source.into()],
                        );
                    }
                    let (_, connection) = self.connection(target, interrupt)?;
                    connection.send(&packed, interrupt)?;
                    owed[side].push_back((sent, Flight::ScriptLoad(scripts.len())));
                    sent += 1;
                }
                if batch.is_empty() {
                    continue;
                }
                let commands: Vec<(&[u8], &Command)> = batch
                    .iter()
                    .map(|(index, command)| (keys[*index].as_slice(), command))
                    .collect();
                let (server, connection) = self.connection(target, interrupt)?;
                server.pipeline_send(connection, &commands, &mut packed, interrupt)?;
                owed[side].push_back((sent, Flight::Commands(batch)));
                sent += 1;
            }
        }
        Ok(Walk {
            cursor: next_cursor,
            keys,
            outcomes: outcomes
                .into_iter()
                .map(|outcome| {
                    outcome
                        .unwrap_or_else(|| Err(Error::Internal("backfill did not finish".into())))
                })
                .collect(),
        })
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

    /// One page of `locking cleanup-source`: string keys under the prefix on
    /// the source, deleted (or, with `dry_run`, counted). Returns the next
    /// cursor, the keys found and the keys deleted. Only once the fleet no
    /// longer reads the source (the CLI checks that).
    pub fn cleanup_source_page(
        &mut self,
        cursor: u64,
        count: usize,
        dry_run: bool,
        interrupt: &Interrupt,
    ) -> Result<(u64, u64, u64)> {
        self.check_prefix()?;
        let prefix = self.client.key_prefix().to_vec();
        let page = self.scan_matching(Target::Source, &prefix, cursor, count, true, interrupt)?;
        let found = page.keys.len() as u64;
        let mut deleted = 0;
        if !dry_run && !page.keys.is_empty() {
            let values = self.pipeline_raw(Target::Source, "DEL", &page.keys, interrupt)?;
            deleted = values.iter().filter(|v| matches!(v, Value::Int(1))).count() as u64;
        }
        Ok((page.cursor, found, deleted))
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
}

/// What a server owes the backfill stream: a SCAN page, or the replies to
/// a pipeline of commands (op index, command), in order.
enum Flight {
    Scan,
    Commands(Vec<(usize, Command)>),
    /// Replies to this many SCRIPT LOADs.
    ScriptLoad(usize),
}

/// What `stream_backfill` did: where the walk stopped, and each key's end.
struct Walk {
    cursor: u64,
    keys: Vec<Vec<u8>>,
    outcomes: Vec<Result<BackfillOutcome>>,
}

/// The server whose oldest owed reply was sent first: replies come back
/// roughly in that order, so reading it blocks the least.
fn oldest(owed: &[VecDeque<(u64, Flight)>; 2]) -> Option<usize> {
    match (owed[0].front(), owed[1].front()) {
        (Some((a, _)), Some((b, _))) => Some(if a <= b { 0 } else { 1 }),
        (Some(_), None) => Some(0),
        (None, Some(_)) => Some(1),
        (None, None) => None,
    }
}

/// Steps one key's backfill with its replies; a command it sends next is
/// queued for its server, an end is recorded. Backfill sends one command
/// per step; anything else is a bug, reported as that key's failure.
fn step_into(
    op: &mut protocol::Backfill,
    index: usize,
    replies: Vec<Result<Reply>>,
    outcomes: &mut [Option<Result<BackfillOutcome>>],
    next: &mut [Vec<(usize, Command)>; 2],
) {
    match op.step(replies) {
        Step::Done(result) => outcomes[index] = Some(result),
        Step::Send(mut batch) if batch.len() == 1 => {
            if let Some((target, command)) = batch.pop() {
                next[slot_of(target)].push((index, command));
            }
        }
        Step::Send(_) => {
            outcomes[index] = Some(Err(Error::Internal(
                "backfill step sent other than one command".into(),
            )))
        }
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
