//! Operations over many keys, for the operator tools: walking lock keys with
//! SCAN (never KEYS) for `status` and the gates, and deleting. Backfill is
//! in `backfill`.

use crate::client::Route;
use crate::error::{Error, Result};
use crate::operate::operator::Operator;
use crate::operate::places::KeyCopy;
use crate::protocol::{copy_one_sided, Target};
use crate::wire::codec::{Arg, Value};
use crate::wire::connection::Interrupt;
use std::collections::HashSet;
use std::time::Instant;

/// At most this many SCAN pages per backfill batch.
pub const MAX_PAGES_PER_BATCH: usize = 64;

/// One page of a SCAN over string keys under the key prefix.
#[derive(Debug, Clone, Default)]
pub struct ScanPage {
    /// Where the walk goes on (for a cluster: the node and its cursor, see
    /// `cluster`); 0 when the walk is complete.
    pub cursor: u64,
    pub keys: Vec<Vec<u8>>,
    /// The position given was made under another slot map (a cluster was
    /// resharded or failed over): this page is the walk's first again.
    pub restarted: bool,
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
    /// Semaphores with live places on the source (not counted as absent).
    pub semaphores: u64,
    /// Their places added on the destination, or raised there.
    pub places_copied: u64,
    /// The source is a cluster whose slot map changed (resharding, a
    /// failover): the walk started over from the first master, since keys
    /// may have moved past it. Copies are idempotent; nothing is lost.
    pub restarted: bool,
    /// Why it started over: the slots being moved, or the map that changed.
    pub restart_reason: Option<String>,
    /// The first few of those errors, with their keys.
    pub errors: Vec<String>,
}

/// Source locks that the destination does not hold with the same token.
#[derive(Debug, Clone, Default)]
pub struct SourceOnly {
    pub scanned: u64,
    /// One-sided locks and semaphore places.
    pub count: u64,
    /// Of `count`, the semaphore places (re-checked ones).
    pub places: u64,
    /// Of `count`, those counted without the re-check (past `MAX_RECHECKED`).
    pub unchecked: u64,
    pub examples: Vec<Vec<u8>>,
}

/// One-sided locks kept for the gate's re-check; past this many they are
/// counted without it, so the walk's memory stays bounded (2,000,000
/// source-only locks once took 655 MB).
pub const MAX_RECHECKED: usize = 10_000;

/// Keys read on both servers back to back, per group, by the gates' walk.
const COPIES_GROUP: usize = 200;

/// Where a resumable SCAN walk stands.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WalkPosition {
    pub(crate) cursor: u64,
    pub(crate) done: bool,
}

/// A walk of one server for the gate (source-only) or the reverse gate
/// (destination-only), resumable page by page: its locks and its
/// semaphores' places, in one SCAN (a semaphore is the key a GET finds of
/// the wrong type).
#[derive(Debug, Clone)]
pub struct OneSidedWalk {
    side: Target,
    position: WalkPosition,
    scanned: u64,
    /// One-sided locks: (key, value).
    candidates: Vec<(Vec<u8>, Vec<u8>)>,
    /// One-sided places: (key, token).
    places: Vec<(Vec<u8>, Vec<u8>)>,
    unchecked: u64,
    /// The walked server's slot map when the walk began (a cluster).
    began: Option<u64>,
}

impl OneSidedWalk {
    pub fn new(side: Target) -> Self {
        OneSidedWalk {
            side,
            position: WalkPosition::default(),
            scanned: 0,
            candidates: Vec::new(),
            places: Vec::new(),
            unchecked: 0,
            began: None,
        }
    }
}

/// Which keys a SCAN returns: SCAN's TYPE filter, which costs the server a
/// lookup per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// No filter (backfill's reads ignore other types).
    Any,
    /// Locks.
    Strings,
    /// Semaphores (and any other sorted set: `operate::semaphores` tells them).
    Zsets,
}

/// `SCAN cursor MATCH pattern COUNT count [TYPE string|zset]`.
pub(crate) fn scan_args(cursor: u64, pattern: &[u8], count: u64, kind: KeyType) -> Vec<Arg<'_>> {
    let mut args: Vec<Arg> = vec![
        "SCAN".into(),
        cursor.into(),
        "MATCH".into(),
        pattern.into(),
        "COUNT".into(),
        count.max(1).into(),
    ];
    match kind {
        KeyType::Any => {}
        KeyType::Strings => args.extend::<[Arg; 2]>(["TYPE".into(), "string".into()]),
        KeyType::Zsets => args.extend::<[Arg; 2]>(["TYPE".into(), "zset".into()]),
    }
    args
}

/// A SCAN reply as a page: the next cursor and the keys.
pub(crate) fn parse_scan(value: Value, server: &str) -> Result<ScanPage> {
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
            Ok(ScanPage {
                cursor,
                keys,
                restarted: false,
            })
        }
        Value::ServerError(error) => Err(bad(format!("SCAN failed: {error}"))),
        other => Err(bad(format!("SCAN returned {other:?}"))),
    }
}

/// A glob that matches exactly the keys starting with `prefix`.
pub(crate) fn match_pattern(prefix: &[u8]) -> Vec<u8> {
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

impl Operator<'_> {
    /// One SCAN page of string keys under the prefix, from `position` (a
    /// cursor; for a cluster, master by master).
    pub fn scan(
        &mut self,
        target: Target,
        position: u64,
        count: usize,
        interrupt: &Interrupt,
    ) -> Result<ScanPage> {
        self.scan_kind(target, KeyType::Strings, position, count, interrupt)
    }

    /// One SCAN page of the keys of `kind` under the prefix.
    pub(crate) fn scan_kind(
        &mut self,
        target: Target,
        kind: KeyType,
        position: u64,
        count: usize,
        interrupt: &Interrupt,
    ) -> Result<ScanPage> {
        self.check_prefix()?;
        let prefix = self.client().key_prefix().to_vec();
        self.scan_matching(target, &prefix, position, count, kind, interrupt)
    }

    /// One SCAN page of the keys of `kind` starting with `prefix`.
    pub(crate) fn scan_matching(
        &mut self,
        target: Target,
        prefix: &[u8],
        position: u64,
        count: usize,
        kind: KeyType,
        interrupt: &Interrupt,
    ) -> Result<ScanPage> {
        let pattern = match_pattern(prefix);
        self.scan_pattern(target, &pattern, position, count, kind, interrupt)
    }

    /// One SCAN page of the keys matching `pattern`: on a cluster, of the
    /// master the position names, moving on to the next master (in slot
    /// order) when that one is done.
    pub(crate) fn scan_pattern(
        &mut self,
        target: Target,
        pattern: &[u8],
        position: u64,
        count: usize,
        kind: KeyType,
        interrupt: &Interrupt,
    ) -> Result<ScanPage> {
        let client = self.client();
        let server = client.server(target).ok_or_else(|| {
            Error::InvalidArgument(format!("no {} server is configured", target.name()))
        })?;
        let Some(step) = server.walk_at(position, interrupt)? else {
            return Ok(ScanPage::default());
        };
        let args = scan_args(step.cursor, pattern, count as u64, kind);
        let value = self.command(target, Route::Node(step.node), &args, interrupt)?;
        let page = parse_scan(value, server.name())?;
        Ok(ScanPage {
            cursor: server.walk_after(&step, page.cursor)?,
            keys: page.keys,
            restarted: step.restarted,
        })
    }

    /// Steps a resumable SCAN walk of `target`: up to `pages` pages from
    /// `position`, each page's keys handed to `page`; true once complete.
    pub(crate) fn walk_pages(
        &mut self,
        target: Target,
        kind: KeyType,
        position: &mut WalkPosition,
        pages: usize,
        interrupt: &Interrupt,
        mut page: impl FnMut(&mut Self, Vec<Vec<u8>>) -> Result<()>,
    ) -> Result<bool> {
        for _ in 0..pages.max(1) {
            if position.done {
                break;
            }
            let scanned = self.scan_kind(target, kind, position.cursor, 1000, interrupt)?;
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

    /// Walks up to `pages` SCAN pages of `side`, collecting the locks and
    /// the semaphore places the other server lacks; true when the walk is
    /// complete.
    pub fn one_sided_step(
        &mut self,
        walk: &mut OneSidedWalk,
        pages: usize,
        interrupt: &Interrupt,
    ) -> Result<bool> {
        let side = walk.side;
        if walk.began.is_none() {
            walk.began = Some(self.settled(side, interrupt)?);
        }
        let mut position = walk.position;
        // No TYPE filter: a semaphore is found by its lock read (WRONGTYPE).
        let done = self.walk_pages(
            side,
            KeyType::Any,
            &mut position,
            pages,
            interrupt,
            |operator, keys| {
                walk.scanned += keys.len() as u64;
                let (locks, semaphores) = operator.only_among(side, keys, interrupt)?;
                let places = if semaphores.is_empty() {
                    Vec::new()
                } else {
                    operator.places_only_among(side, semaphores, interrupt)?
                };
                let found = locks
                    .into_iter()
                    .map(|lock| (lock, false))
                    .chain(places.into_iter().map(|place| (place, true)));
                for (candidate, is_place) in found {
                    if walk.candidates.len() + walk.places.len() >= MAX_RECHECKED {
                        walk.unchecked += 1;
                    } else if is_place {
                        walk.places.push(candidate);
                    } else {
                        walk.candidates.push(candidate);
                    }
                }
                Ok(())
            },
        )?;
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
        // A cluster whose slots moved during the walk may have moved keys
        // from a master not yet walked to one already walked: the count
        // would miss them. Nothing is decided on such a walk.
        let ended = self.settled(side, interrupt)?;
        if walk.began.is_some_and(|began| began != ended) {
            return Err(Error::Command {
                server: self.client().server_name(side).unwrap_or("?").to_string(),
                detail: "the cluster's slot map changed during the walk (resharding or a failover), so keys \
                         may have moved past it: nothing is decided on this count; run it again once the \
                         cluster is settled"
                    .into(),
            });
        }
        for _ in 0..3 {
            if walk.candidates.is_empty() && walk.places.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut still = HashSet::with_capacity(walk.candidates.len() + walk.places.len());
            for chunk in walk.candidates.chunks(1000) {
                let keys = chunk.iter().map(|(key, _)| key.clone()).collect();
                still.extend(self.only_among(side, keys, interrupt)?.0);
            }
            for chunk in walk.places.chunks(1000) {
                let mut keys: Vec<Vec<u8>> = chunk.iter().map(|(key, _)| key.clone()).collect();
                keys.dedup();
                still.extend(self.places_only_among(side, keys, interrupt)?);
            }
            walk.candidates
                .retain(|candidate| still.contains(candidate));
            walk.places.retain(|candidate| still.contains(candidate));
        }
        let mut example_keys: Vec<Vec<u8>> = Vec::new();
        for (key, _) in walk.candidates.iter().chain(&walk.places) {
            if example_keys.len() < examples && !example_keys.contains(key) {
                example_keys.push(key.clone());
            }
        }
        Ok(SourceOnly {
            scanned: walk.scanned,
            count: (walk.candidates.len() + walk.places.len()) as u64 + walk.unchecked,
            places: walk.places.len() as u64,
            unchecked: walk.unchecked,
            examples: example_keys,
        })
    }

    /// The fingerprint of `target`'s slot map, once it is settled (always,
    /// for one server); an error while a cluster is resharding or failing
    /// over.
    fn settled(&mut self, target: Target, interrupt: &Interrupt) -> Result<u64> {
        let client = self.client();
        let Some(server) = client.server(target) else {
            return Ok(0);
        };
        let survey = server.survey(interrupt)?;
        match survey.unsettled {
            None => Ok(survey.fingerprint),
            Some(why) => Err(Error::Command {
                server: server.name().to_string(),
                detail: format!(
                    "{why}: a walk of the cluster now could miss keys; run it again once the cluster is settled"
                ),
            }),
        }
    }

    /// (key, value) of the locks on `side` that the other server does not
    /// cover (`protocol::copy_one_sided`: no copy with the same token, or one
    /// that may end sooner), and the keys of another type on `side`:
    /// semaphores, whose places `places_only_among` compares. Keys go in
    /// groups, each read on both servers back to back (`lock_copy.lua`, the
    /// value and its TTL at once), so that the time between the two reads
    /// (the rule's uncertainty) stays a few round trips.
    #[allow(clippy::type_complexity)]
    fn only_among(
        &mut self,
        side: Target,
        keys: Vec<Vec<u8>>,
        interrupt: &Interrupt,
    ) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, Vec<Vec<u8>>)> {
        let other = match side {
            Target::Source => Target::Destination,
            Target::Destination => Target::Source,
        };
        let mut locks = Vec::new();
        let mut others = Vec::new();
        for group in keys.chunks(COPIES_GROUP) {
            let started = Instant::now();
            let here = self.lock_copies(side, group, interrupt)?;
            let there = self.lock_copies(other, group, interrupt)?;
            let uncertainty_ms = started.elapsed().as_millis() as u64 + 1;
            for ((key, here), there) in group.iter().zip(here).zip(there) {
                match here {
                    KeyCopy::Lock(value, left) => {
                        let there_left = match there {
                            KeyCopy::Lock(other, left) if other == value => Some(left),
                            _ => None,
                        };
                        if copy_one_sided(Some(left), there_left, uncertainty_ms) {
                            locks.push((key.clone(), value));
                        }
                    }
                    KeyCopy::Other => others.push(key.clone()),
                    KeyCopy::Missing => {}
                }
            }
        }
        Ok((locks, others))
    }

    /// Deletes `key` (under the prefix) on every configured server, whoever
    /// holds it: the operator's manual unlock. Returns the keys deleted.
    pub fn force_delete(&mut self, key: &[u8], interrupt: &Interrupt) -> Result<u64> {
        if key.is_empty() {
            return Err(Error::InvalidArgument("lock key must not be empty".into()));
        }
        let mut full_key = self.client().key_prefix().to_vec();
        full_key.extend_from_slice(key);
        let mut deleted = 0;
        for target in self.configured_targets() {
            let values = self.each_key(target, "DEL", &[full_key.clone()], interrupt)?;
            deleted += values.iter().filter(|v| matches!(v, Value::Int(1))).count() as u64;
        }
        Ok(deleted)
    }

    /// Deletes every lock whose key (after the prefix) starts with
    /// `key_start`, on every configured server, walking with SCAN, and every
    /// semaphore's places there too (a limited unique job's): the walk has no
    /// TYPE filter. Returns the keys deleted.
    pub fn delete_matching(&mut self, key_start: &[u8], interrupt: &Interrupt) -> Result<u64> {
        self.check_prefix()?;
        if key_start.is_empty() {
            return Err(Error::InvalidArgument(
                "refusing to delete every lock: give the start of the keys".into(),
            ));
        }
        let mut pattern_prefix = self.client().key_prefix().to_vec();
        pattern_prefix.extend_from_slice(key_start);
        let mut deleted = 0;
        for target in self.configured_targets() {
            let mut position = 0;
            loop {
                let page = self.scan_matching(
                    target,
                    &pattern_prefix,
                    position,
                    1000,
                    KeyType::Any,
                    interrupt,
                )?;
                if !page.keys.is_empty() {
                    let values = self.each_key(target, "DEL", &page.keys, interrupt)?;
                    deleted += values.iter().filter(|v| matches!(v, Value::Int(1))).count() as u64;
                }
                position = page.cursor;
                if position == 0 {
                    break;
                }
            }
        }
        Ok(deleted)
    }

    /// One SCAN page of the locks on a server whose key (after the prefix)
    /// matches `glob` (Redis glob syntax; the prefix itself is matched
    /// literally): (next cursor, [(key without the prefix, token, PTTL)]).
    /// A key that went between the SCAN and its GET is left out. A `glob`
    /// without `*`, `?`, `[` or `\\` names one key: it is looked up directly.
    #[allow(clippy::type_complexity)]
    pub fn lock_page(
        &mut self,
        target: Target,
        cursor: u64,
        glob: &[u8],
        count: usize,
        interrupt: &Interrupt,
    ) -> Result<(u64, Vec<(Vec<u8>, Vec<u8>, i64)>)> {
        let prefix = self.client().key_prefix().to_vec();
        let page = self.glob_page(target, cursor, glob, count, KeyType::Strings, interrupt)?;
        if page.keys.is_empty() {
            return Ok((page.cursor, Vec::new()));
        }
        let tokens = self.each_key(target, "GET", &page.keys, interrupt)?;
        let pttls = self.each_key(target, "PTTL", &page.keys, interrupt)?;
        let locks = page
            .keys
            .into_iter()
            .zip(tokens.into_iter().zip(pttls))
            .filter_map(|(key, (token, pttl))| match (token, pttl) {
                (Value::BulkString(token), Value::Int(pttl)) if pttl != -2 => {
                    Some((key[prefix.len().min(key.len())..].to_vec(), token, pttl))
                }
                _ => None,
            })
            .collect();
        Ok((page.cursor, locks))
    }

    /// One SCAN page of the keys of `kind` whose key (after the prefix)
    /// matches `glob`, prefix included (see `lock_page`); a `glob` that names
    /// one key is that key, whatever it holds, without a walk.
    pub(crate) fn glob_page(
        &mut self,
        target: Target,
        cursor: u64,
        glob: &[u8],
        count: usize,
        kind: KeyType,
        interrupt: &Interrupt,
    ) -> Result<ScanPage> {
        self.check_prefix()?;
        let prefix = self.client().key_prefix().to_vec();
        let exact = !glob.is_empty() && !glob.iter().any(|b| b"*?[\\".contains(b));
        if exact {
            // One key, not a pattern: one lookup, not a walk of the keyspace.
            return Ok(ScanPage {
                cursor: 0,
                keys: vec![[prefix.as_slice(), glob].concat()],
                restarted: false,
            });
        }
        let mut pattern = match_pattern(&prefix);
        pattern.pop(); // the trailing '*': the glob goes there
        pattern.extend_from_slice(if glob.is_empty() { b"*" } else { glob });
        self.scan_pattern(target, &pattern, cursor, count, kind, interrupt)
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
        let prefix = self.client().key_prefix().to_vec();
        let page = self.scan_matching(
            Target::Source,
            &prefix,
            cursor,
            count,
            KeyType::Strings,
            interrupt,
        )?;
        let found = page.keys.len() as u64;
        let mut deleted = 0;
        if !dry_run && !page.keys.is_empty() {
            let values = self.each_key(Target::Source, "DEL", &page.keys, interrupt)?;
            deleted = values.iter().filter(|v| matches!(v, Value::Int(1))).count() as u64;
        }
        Ok((page.cursor, found, deleted))
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
