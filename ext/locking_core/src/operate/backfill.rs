//! Backfill in streamed batches: a scheduler over the pipeline executor
//! that drives thousands of per-key `protocol::Backfill` state machines (the
//! ones the explorer checks) at once.
//!
//! Each server is sent the next commands as soon as the replies they depend
//! on are in, so it has work queued while the client reads the other
//! server's replies. Replies come back in the order sent, per connection;
//! each key has one command in flight at a time, so its steps stay in the
//! order the protocol gives them. The next SCAN page is asked for as soon as
//! a page arrives. NOSCRIPT and the old-server fallback come back from the
//! executor as `Received::Resend`: the key's command joins the next pipeline
//! to that server (after the script load the executor puts at its front).

use crate::client::Route;
use crate::error::{Error, Result};
use crate::operate::bulk::{parse_scan, scan_args, BackfillReport, KeyType, MAX_PAGES_PER_BATCH};
use crate::operate::operator::Operator;
use crate::protocol::{
    self, BackfillOutcome, Command, Operation, Reply, SemaphoreBackfill, Step, Target,
};
use crate::wire::codec::lock;
use crate::wire::codec::Value;
use crate::wire::connection::Interrupt;
use crate::wire::pipeline::{self, Received, Request};
use std::collections::VecDeque;
use std::time::Instant;

/// Keys read in one MULTI/EXEC: the source (a busy jobs Redis) serves no
/// one else while it runs a transaction, ~1 ms here for this many.
const READS_PER_TRANSACTION: usize = 1000;

/// How often one command may be sent again (NOSCRIPT, then an old server).
const MAX_RESENDS: u8 = 2;

/// How many failures a backfill batch reports in words.
const ERRORS_REPORTED: usize = 3;

/// A key's place among the batch's jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct JobId(usize);

/// One key's backfill.
struct Job {
    key: Vec<u8>,
    op: protocol::Backfill,
    outcome: Option<Result<BackfillOutcome>>,
    /// Times its current command was sent again.
    resends: u8,
}

/// What a server owes the scheduler, in the order it was asked.
enum Flight {
    Scan,
    /// One transaction reading these keys (each key's `ReadWithTtl`).
    Reads(Vec<JobId>),
    /// One protocol command per key.
    Commands(Vec<(JobId, Command)>),
}

/// One server's side of the stream.
struct Side {
    /// Flights sent and not yet read, each with its sending order.
    owed: VecDeque<(u64, Flight, pipeline::Ticket)>,
    /// Commands to send in the next pipeline.
    next: Vec<(JobId, Command)>,
}

impl Side {
    fn new() -> Side {
        Side {
            owed: VecDeque::new(),
            next: Vec::new(),
        }
    }
}

struct Scheduler<'o, 'c> {
    operator: &'o mut Operator<'c>,
    jobs: Vec<Job>,
    source: Side,
    destination: Side,
    /// Flights sent so far (orders them across the two servers).
    sent: u64,
    prefix: Vec<u8>,
    count: usize,
    pages_left: usize,
    /// Where the walk stands: the cursor of the last page read.
    cursor: u64,
}

impl Operator<'_> {
    /// One batch of backfill: up to `pages` SCAN pages of the source from
    /// `cursor`, every key mirrored onto the destination. With `dry_run`,
    /// only counts what would be copied (source locks missing on the
    /// destination), writing nothing.
    pub fn backfill_batch(
        &mut self,
        cursor: u64,
        count: usize,
        pages: usize,
        dry_run: bool,
        interrupt: &Interrupt,
    ) -> Result<BackfillReport> {
        if !(1..=MAX_PAGES_PER_BATCH).contains(&pages) {
            return Err(Error::InvalidArgument(format!(
                "pages must be between 1 and {MAX_PAGES_PER_BATCH}, not {pages}"
            )));
        }
        self.check_prefix()?;
        self.resolve_phase(interrupt)?.check_backfill()?;
        if dry_run {
            return self.backfill_dry_run(cursor, count, interrupt);
        }
        let clustered = [Target::Source, Target::Destination]
            .into_iter()
            .any(|target| {
                self.client()
                    .server(target)
                    .is_some_and(|server| server.cluster().is_some())
            });
        if clustered {
            return self.backfill_by_node(cursor, count, pages, interrupt);
        }
        let prefix = self.client().key_prefix().to_vec();
        let mut scheduler = Scheduler {
            operator: self,
            jobs: Vec::new(),
            source: Side::new(),
            destination: Side::new(),
            sent: 0,
            prefix,
            count,
            pages_left: pages,
            cursor,
        };
        scheduler.run(interrupt)?;
        let (mut report, no_lock) = scheduler.report();
        self.backfill_places(no_lock, &mut report, interrupt)?;
        Ok(report)
    }

    /// The semaphores among `keys` (the batch's keys where no lock was
    /// found): each one's live source places copied onto the destination
    /// (`protocol::SemaphoreBackfill`, explored beside the clients), side by
    /// side as `Lease::run_batch` runs them. A key that is neither is
    /// counted absent, as before.
    fn backfill_places(
        &mut self,
        keys: Vec<Vec<u8>>,
        report: &mut BackfillReport,
        interrupt: &Interrupt,
    ) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys: Vec<Result<Vec<u8>>> = keys.into_iter().map(Ok).collect();
        let ops = keys.iter().map(|_| SemaphoreBackfill::new()).collect();
        self.check_fence()?;
        let outcomes = self.lease().run_batch(&keys, ops, interrupt);
        for (key, outcome) in keys.iter().zip(outcomes) {
            match outcome {
                Ok(copied) if copied.places == 0 => {}
                Ok(copied) => {
                    report.absent -= 1;
                    if copied.conflict {
                        report.conflicts += 1;
                    } else {
                        report.semaphores += 1;
                        report.places_copied += copied.written;
                    }
                }
                Err(error) => {
                    report.absent -= 1;
                    tally(report, key.as_deref().unwrap_or_default(), Err(error));
                }
            }
        }
        Ok(())
    }

    /// Backfill where a cluster is involved: the batch's SCAN pages of the
    /// source (master by master for a cluster), then their keys' backfills
    /// side by side (`Lease::run_batch`): each command goes to its key's
    /// node, in a pipeline per node sent to all before any reply is read,
    /// and reads are single-key, so nothing crosses slots. A source cluster's slot map is compared before and after the
    /// batch: if it changed, keys may have moved past the walk, so the
    /// position returned starts the walk over (`restarted`).
    fn backfill_by_node(
        &mut self,
        cursor: u64,
        count: usize,
        pages: usize,
        interrupt: &Interrupt,
    ) -> Result<BackfillReport> {
        let client = self.client();
        let source = client
            .server(Target::Source)
            .ok_or_else(|| Error::InvalidArgument("backfill needs a source server".into()))?;
        let began = match source.cluster() {
            Some(_) => Some(source.survey(interrupt)?),
            None => None,
        };
        let prefix = client.key_prefix().to_vec();
        let mut report = BackfillReport::default();
        let mut position = cursor;
        let mut keys: Vec<Result<Vec<u8>>> = Vec::new();
        for _ in 0..pages {
            let page = self.scan_matching(
                Target::Source,
                &prefix,
                position,
                count,
                KeyType::Any,
                interrupt,
            )?;
            if page.restarted {
                report.restarted = true;
                report.restart_reason =
                    Some("the walk's position was made under another slot map".into());
            }
            position = page.cursor;
            keys.extend(page.keys.into_iter().map(Ok));
            if position == 0 {
                break;
            }
        }
        report.scanned = keys.len() as u64;
        let outcomes = self.backfill_side_by_side(&keys, interrupt)?;
        let mut no_lock = Vec::new();
        for (key, outcome) in keys.into_iter().zip(outcomes) {
            let key = key.unwrap_or_default();
            if matches!(outcome, Ok(BackfillOutcome::Absent)) {
                no_lock.push(key.clone());
            }
            tally(&mut report, &key, outcome);
        }
        self.backfill_places(no_lock, &mut report, interrupt)?;
        if report.failed > 0 {
            // Copies refused by the fence mid-batch: the lease is the news.
            self.check_fence()?;
        }
        if let (Some(began), Some(cluster)) = (began, source.cluster()) {
            let ended = source.survey(interrupt)?;
            let changed = (began.fingerprint != ended.fingerprint)
                .then(|| "the slot map changed during the batch".to_string());
            if let Some(reason) = began.unsettled.or(ended.unsettled).or(changed) {
                report.restarted = true;
                report.restart_reason = Some(reason);
                position = cluster.restart_position()?;
            }
        }
        report.cursor = position;
        Ok(report)
    }

    /// The backfills of `keys` (full keys) side by side, as a batch by node
    /// runs them: each round is a pipeline per node (`Lease::run_batch`),
    /// the fence asked first. One outcome per key.
    pub(crate) fn backfill_side_by_side(
        &mut self,
        keys: &[Result<Vec<u8>>],
        interrupt: &Interrupt,
    ) -> Result<Vec<Result<BackfillOutcome>>> {
        let ops = keys.iter().map(|_| protocol::Backfill::new()).collect();
        self.check_fence()?;
        Ok(self.lease().run_batch(keys, ops, interrupt))
    }

    fn backfill_dry_run(
        &mut self,
        cursor: u64,
        count: usize,
        interrupt: &Interrupt,
    ) -> Result<BackfillReport> {
        let prefix = self.client().key_prefix().to_vec();
        let page = self.scan_matching(
            Target::Source,
            &prefix,
            cursor,
            count,
            KeyType::Strings,
            interrupt,
        )?;
        let mut report = BackfillReport {
            cursor: page.cursor,
            scanned: page.keys.len() as u64,
            restarted: page.restarted,
            ..BackfillReport::default()
        };
        if page.keys.is_empty() {
            return Ok(report);
        }
        let on_source = self.each_key(Target::Source, "GET", &page.keys, interrupt)?;
        let on_destination = self.each_key(Target::Destination, "GET", &page.keys, interrupt)?;
        for (source, destination) in on_source.into_iter().zip(on_destination) {
            match (source, destination) {
                (Value::BulkString(_), Value::Nil) => report.copied += 1,
                (Value::BulkString(s), Value::BulkString(d)) if s == d => report.already_there += 1,
                (Value::BulkString(_), _) => report.conflicts += 1,
                _ => report.absent += 1,
            }
        }
        Ok(report)
    }
}

impl Scheduler<'_, '_> {
    fn run(&mut self, interrupt: &Interrupt) -> Result<()> {
        self.ask_for_page(interrupt)?;
        while let Some(target) = self.oldest() {
            let side = self.side(target);
            let Some((_, flight, ticket)) = side.owed.pop_front() else {
                break;
            };
            match flight {
                Flight::Scan => self.page_arrived(ticket, interrupt)?,
                Flight::Reads(ids) => self.reads_arrived(ids, ticket, interrupt)?,
                Flight::Commands(commands) => {
                    self.commands_arrived(target, commands, ticket, interrupt)?
                }
            }
            self.send_next(Target::Source, interrupt)?;
            self.send_next(Target::Destination, interrupt)?;
        }
        Ok(())
    }

    fn side(&mut self, target: Target) -> &mut Side {
        match target {
            Target::Source => &mut self.source,
            Target::Destination => &mut self.destination,
        }
    }

    /// The server whose oldest owed reply was sent first: replies come back
    /// roughly in that order, so reading it blocks the least.
    fn oldest(&self) -> Option<Target> {
        match (self.source.owed.front(), self.destination.owed.front()) {
            (Some((a, ..)), Some((b, ..))) if b < a => Some(Target::Destination),
            (Some(_), _) => Some(Target::Source),
            (None, Some(_)) => Some(Target::Destination),
            (None, None) => None,
        }
    }

    fn ask_for_page(&mut self, interrupt: &Interrupt) -> Result<()> {
        let pattern = crate::operate::bulk::match_pattern(&self.prefix);
        let count = self.count as u64;
        let args = scan_args(self.cursor, &pattern, count, KeyType::Any);
        let ticket = send_to(
            self.operator,
            Target::Source,
            &[Request::Plain(&args)],
            interrupt,
        )?;
        self.source
            .owed
            .push_back((self.sent, Flight::Scan, ticket));
        self.sent += 1;
        self.pages_left -= 1;
        Ok(())
    }

    fn page_arrived(&mut self, ticket: pipeline::Ticket, interrupt: &Interrupt) -> Result<()> {
        let value = match receive_single(
            self.operator,
            Target::Source,
            ticket,
            &Request::Plain(&["SCAN".into()]),
            interrupt,
        )? {
            Received::Reply(value) => value,
            Received::Resend => Value::Nil, // a plain command is never resent
        };
        let page = parse_scan(value, &server_name(self.operator, Target::Source))?;
        self.cursor = page.cursor;
        if self.cursor != 0 && self.pages_left > 0 {
            self.ask_for_page(interrupt)?;
        }
        for key in page.keys {
            let id = JobId(self.jobs.len());
            self.jobs.push(Job {
                key,
                op: protocol::Backfill::new(),
                outcome: None,
                resends: 0,
            });
            self.step(id, Vec::new());
        }
        Ok(())
    }

    fn reads_arrived(
        &mut self,
        ids: Vec<JobId>,
        ticket: pipeline::Ticket,
        interrupt: &Interrupt,
    ) -> Result<()> {
        let keys: Vec<&[u8]> = ids
            .iter()
            .map(|id| self.jobs[id.0].key.as_slice())
            .collect();
        let received = receive_single(
            self.operator,
            Target::Source,
            ticket,
            &Request::Reads(&keys),
            interrupt,
        )?;
        let name = server_name(self.operator, Target::Source);
        let entries = match received {
            Received::Reply(exec) => lock::decode_reads(ids.len(), exec),
            Received::Resend => Err("a read of keys asked to be sent again".into()),
        };
        match entries {
            Ok(entries) => {
                for (id, entry) in ids.into_iter().zip(entries) {
                    self.step(id, vec![Ok(Reply::Entry(entry))]);
                }
            }
            Err(detail) => {
                let error = Error::Command {
                    server: name,
                    detail,
                };
                for id in ids {
                    self.step(id, vec![Err(error.clone())]);
                }
            }
        }
        Ok(())
    }

    fn commands_arrived(
        &mut self,
        target: Target,
        commands: Vec<(JobId, Command)>,
        ticket: pipeline::Ticket,
        interrupt: &Interrupt,
    ) -> Result<()> {
        let received = {
            let requests: Vec<Request<'_>> = commands
                .iter()
                .map(|(id, command)| Request::Lock {
                    key: &self.jobs[id.0].key,
                    command,
                })
                .collect();
            let at = (target, Route::Node(0));
            let (node, received) = self
                .operator
                .lease()
                .receive(at, ticket, &requests, None, interrupt)?;
            received
                .into_iter()
                .zip(&commands)
                .map(|(received, (_, command))| match received {
                    Received::Reply(value) => Some(node.decode(command, value)),
                    Received::Resend => None,
                })
                .collect::<Vec<_>>()
        };
        for ((id, command), reply) in commands.into_iter().zip(received) {
            let job = &mut self.jobs[id.0];
            match reply {
                Some(reply) => {
                    job.resends = 0;
                    self.step(id, vec![reply]);
                }
                None if job.resends < MAX_RESENDS => {
                    job.resends += 1;
                    self.side(target).next.push((id, command));
                }
                None => {
                    let error = Error::Command {
                        server: server_name(self.operator, target),
                        detail: format!("server keeps refusing {}", lock::name(&command)),
                    };
                    self.step(id, vec![Err(error)]);
                }
            }
        }
        Ok(())
    }

    /// Steps one key's backfill with its replies: the command it sends next
    /// is queued for its server, or its end recorded. Backfill sends one
    /// command per step; anything else is a bug, reported as that key's
    /// failure.
    fn step(&mut self, id: JobId, replies: Vec<Result<Reply>>) {
        let job = &mut self.jobs[id.0];
        match job.op.step(replies) {
            Step::Done(result) => job.outcome = Some(result),
            Step::Send(mut batch) if batch.len() == 1 => {
                if let Some((target, command)) = batch.pop() {
                    self.side(target).next.push((id, command));
                }
            }
            Step::Send(_) => {
                job.outcome = Some(Err(Error::Internal(
                    "backfill step sent other than one command".into(),
                )))
            }
        }
    }

    /// Sends what `target` is due as one pipeline: a page of reads as
    /// transactions of `READS_PER_TRANSACTION` keys, other commands as they are.
    fn send_next(&mut self, target: Target, interrupt: &Interrupt) -> Result<()> {
        let next = std::mem::take(&mut self.side(target).next);
        if next.is_empty() {
            return Ok(());
        }
        let all_reads = next.len() > 1
            && next
                .iter()
                .all(|(_, command)| matches!(command, Command::ReadWithTtl));
        let flights: Vec<Flight> = if all_reads {
            next.chunks(READS_PER_TRANSACTION)
                .map(|chunk| Flight::Reads(chunk.iter().map(|(id, _)| *id).collect()))
                .collect()
        } else {
            vec![Flight::Commands(next)]
        };
        for flight in flights {
            let ticket = {
                let keys: Vec<&[u8]> = match &flight {
                    Flight::Reads(ids) => ids
                        .iter()
                        .map(|id| self.jobs[id.0].key.as_slice())
                        .collect(),
                    _ => Vec::new(),
                };
                let requests: Vec<Request<'_>> = match &flight {
                    Flight::Reads(_) => vec![Request::Reads(&keys)],
                    Flight::Commands(commands) => commands
                        .iter()
                        .map(|(id, command)| Request::Lock {
                            key: &self.jobs[id.0].key,
                            command,
                        })
                        .collect(),
                    Flight::Scan => Vec::new(),
                };
                send_to(self.operator, target, &requests, interrupt)?
            };
            let sent = self.sent;
            self.side(target).owed.push_back((sent, flight, ticket));
            self.sent += 1;
        }
        Ok(())
    }

    /// The batch's counts, and the keys where no lock was found (for the
    /// semaphores' backfill).
    fn report(&mut self) -> (BackfillReport, Vec<Vec<u8>>) {
        let mut report = BackfillReport {
            cursor: self.cursor,
            scanned: self.jobs.len() as u64,
            ..BackfillReport::default()
        };
        let mut no_lock = Vec::new();
        for job in self.jobs.drain(..) {
            let outcome = job
                .outcome
                .unwrap_or_else(|| Err(Error::Internal("backfill did not finish".into())));
            if matches!(outcome, Ok(BackfillOutcome::Absent)) {
                no_lock.push(job.key.clone());
            }
            tally(&mut report, &job.key, outcome);
        }
        (report, no_lock)
    }
}

/// Counts one key's outcome in `report`.
fn tally(report: &mut BackfillReport, key: &[u8], outcome: Result<BackfillOutcome>) {
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

/// Sends one pipeline to `target`.
fn send_to(
    operator: &mut Operator<'_>,
    target: Target,
    requests: &[Request<'_>],
    interrupt: &Interrupt,
) -> Result<pipeline::Ticket> {
    operator.check_fence()?;
    let (_, node, connection) = operator
        .lease()
        .connection(target, Route::Node(0), interrupt)?;
    pipeline::send(connection, &node.dialect, requests, interrupt)
}

/// Reads the reply to the pipeline of one request that `ticket` names.
fn receive_single(
    operator: &mut Operator<'_>,
    target: Target,
    ticket: pipeline::Ticket,
    request: &Request<'_>,
    interrupt: &Interrupt,
) -> Result<Received> {
    let (_, node, connection) = operator
        .lease()
        .connection(target, Route::Node(0), interrupt)?;
    let deadline = Instant::now() + connection.read_timeout();
    pipeline::receive_single(
        connection,
        &node.dialect,
        ticket,
        request,
        deadline,
        interrupt,
    )
}

fn server_name(operator: &Operator<'_>, target: Target) -> String {
    operator
        .client()
        .server_name(target)
        .unwrap_or("?")
        .to_string()
}
