//! The projector: the one loop that turns the delivery log into leads, off the acknowledgement
//! path. It reads durable log entries after its watermark in large batches, extracts their
//! leads (the same pure `extract` the webhook ran), inserts them deduplicated on `wamid`, and
//! records the new watermark in the same transaction of the leads database, so a crash can
//! neither lose nor duplicate a lead: after a restart it resumes from the watermark. This
//! transaction is also where later work hooks in (the outbox for lead forwarding and
//! conversion events is written here, with the leads).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::log::{Progress, Unpacker};
use super::outbox::{enqueue, Routes, Wake};
use super::seen::Seen;
use super::writer::open_connection;
use crate::config::Durability;
use crate::leads::detected::NewDetected;
use crate::leads::extract::extract;
use crate::leads::packed::{LeadView, PackedLead, FIELD_COLUMNS};

/// How long the projector sleeps when nothing is new (it is woken earlier by the writer).
const IDLE_WAIT: Duration = Duration::from_millis(250);
/// A lag this old is worth a log line (at most every [`LAG_LOG_EVERY`]).
const LAG_WORTH_LOGGING: f64 = 1.0;
const LAG_LOG_EVERY: Duration = Duration::from_secs(10);
/// Entries worth a transaction at once; fewer wait up to the pace (`ingest.projection_pace_ms`)
/// for company, so that a random-keyed index page dirtied once per transaction is shared by
/// more leads (fewer bytes written, less CPU per lead). Fewer entries that already hold
/// [`ROUND_LEADS`](super::log::ROUND_LEADS) leads in hand, or one entry of
/// [`LARGE_ENTRY_LEADS`](super::log::LARGE_ENTRY_LEADS) (large batches), do not wait.
const FULL_ROUND: u64 = 1024;
/// Leads one projection transaction takes on, at most (it may exceed this by one entry).
const MAX_LEADS_PER_ROUND: u64 = 8192;

/// What one `insert_leads` wrote.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Inserted {
    pub leads: u64,
    /// Outbox rows: one per new lead and matching destination.
    pub deliveries: u64,
}

/// Inserts `(event_id, received_at_ms, lead)` rows, skipping wamids already stored (`seen`
/// says which, and learns the new ones), and enqueues each new lead for its destinations
/// (`routes`). Runs inside the caller's transaction, so a lead and its deliveries commit
/// together or not at all.
pub(super) fn insert_leads<'a>(
    conn: &Connection,
    leads: impl IntoIterator<Item = (i64, i64, LeadView<'a>)>,
    routes: &Routes,
    seen: &mut Seen,
) -> rusqlite::Result<Inserted> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    static INSERT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = INSERT.get_or_init(|| {
        let marks = vec!["?"; FIELD_COLUMNS.len() + 4].join(", ");
        format!(
            "INSERT INTO leads (id, {}, event_id, received_at, timestamp) VALUES ({marks})",
            FIELD_COLUMNS.join(", ")
        )
    });
    let mut insert = conn.prepare_cached(sql)?;
    let mut inserted = Inserted::default();
    for (event_id, received_at, lead) in leads {
        if seen.is_stored(conn, lead.wamid())? {
            continue;
        }
        // Numbered by `seen`: never an id given before, an erased lead's included.
        let id = seen.next_id();
        let text = lead.fields.iter().map(|f| f as &dyn rusqlite::ToSql);
        let rest: [&dyn rusqlite::ToSql; 3] = [&event_id, &received_at, &lead.timestamp];
        let first: [&dyn rusqlite::ToSql; 1] = [&id];
        insert.execute(rusqlite::params_from_iter(
            first.into_iter().chain(text).chain(rest),
        ))?;
        seen.add(id, lead.wamid());
        inserted.leads += 1;
        if !routes.is_empty() {
            inserted.deliveries += enqueue(conn, id, &lead, routes, now_ms)?;
        }
    }
    Ok(inserted)
}

/// The projection's watermark, as recorded in the leads database.
pub(super) fn watermark(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row("SELECT watermark FROM projection WHERE id = 1", [], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0))
}

pub(super) fn set_watermark(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO projection (id, watermark) VALUES (1, ?1) \
         ON CONFLICT (id) DO UPDATE SET watermark = MAX(watermark, excluded.watermark)",
    )?
    .execute(params![id])?;
    Ok(())
}

/// What one projection round wrote.
#[derive(Debug, Default)]
struct Tally {
    entries: usize,
    created: u64,
    enqueued: u64,
    /// Entries whose leads were all stored already (a re-delivery).
    duplicates: u64,
}

impl Tally {
    /// Inserts one log entry's (`(id, received_at)`) leads and detected events in the round's
    /// transaction.
    fn apply(
        &mut self,
        tx: &Connection,
        (id, received_at): (i64, i64),
        leads: &[LeadView<'_>],
        detected: &[NewDetected],
        routes: &Routes,
        seen: &mut Seen,
    ) -> rusqlite::Result<()> {
        let new = insert_leads(
            tx,
            leads.iter().map(|lead| (id, received_at, *lead)),
            routes,
            seen,
        )?;
        if !detected.is_empty() {
            super::conversions::insert_detected(tx, detected, received_at)?;
        }
        self.entries += 1;
        self.created += new.leads;
        self.enqueued += new.deliveries;
        if new.leads == 0 && !leads.is_empty() {
            self.duplicates += 1;
        }
        Ok(())
    }
}

/// What a round runs inside its transaction: given the log, the transaction, the routes, the
/// stored wamids and the tally, it inserts the round's leads and returns the watermark reached.
trait Fill:
    FnOnce(&Connection, &Connection, &Routes, &mut Seen, &mut Tally) -> rusqlite::Result<i64>
{
}

impl<F> Fill for F where
    F: FnOnce(&Connection, &Connection, &Routes, &mut Seen, &mut Tally) -> rusqlite::Result<i64>
{
}

pub(super) struct Projector {
    log_path: PathBuf,
    leads_path: PathBuf,
    batch: usize,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    log: Option<Connection>,
    leads: Option<Connection>,
    watermark: i64,
    last_lag_log: Instant,
    unpacker: Unpacker,
    pace: Duration,
    routes: Routes,
    wake: Wake,
    turns: super::Turns,
    /// The stored wamids; `None` until loaded, and again after a failed round.
    seen: Option<Seen>,
}

/// The projector's page cache for the leads file, in KiB. Its rounds touch the newest id
/// range of the range-led indexes and the right-hand edge of the others, far less than this;
/// pages beyond that only stay resident. On a database grown to 2M leads (a restart, then 20 s
/// at 64 connections of `loadgen --mix real`, two runs each, one after the other on copies of
/// the same files) 4 MiB peaked at 46.4–47.3 MB resident against 50.3–50.7 with 8 MiB, at
/// 101.7–119.6 µs of CPU per delivery against 103.9–128.2 and the same bytes written.
const LEADS_CACHE_KIB: i64 = 4096;

/// The projector's write connection to the leads file, with its page cache.
fn open_leads(path: &Path) -> rusqlite::Result<Connection> {
    let leads = open_connection(path, Durability::Normal)?;
    leads.pragma_update(None, "cache_size", -LEADS_CACHE_KIB)?;
    Ok(leads)
}

impl Projector {
    pub(super) fn new(
        log_path: &Path,
        leads_path: &Path,
        batch: usize,
        progress: Arc<Progress>,
        stop: Arc<AtomicBool>,
    ) -> rusqlite::Result<Self> {
        let leads = open_leads(leads_path)?;
        let watermark = watermark(&leads)?;
        progress.projected.store(watermark, Ordering::Release);
        Ok(Self {
            log_path: log_path.to_path_buf(),
            leads_path: leads_path.to_path_buf(),
            batch,
            progress,
            stop,
            log: None,
            leads: Some(leads),
            watermark,
            last_lag_log: Instant::now(),
            unpacker: Unpacker::new(),
            pace: Duration::ZERO,
            routes: Routes::default(),
            wake: Wake::default(),
            turns: super::Turns::default(),
            seen: None,
        })
    }

    /// The watermark it resumes from, as read from the leads database.
    pub(super) fn watermark(&self) -> i64 {
        self.watermark
    }

    /// How long a few pending entries may wait for more before they are projected.
    pub(super) fn with_pace(mut self, pace: Duration) -> Self {
        self.pace = pace;
        self
    }

    /// Where new leads are forwarded, and whom to wake when they are enqueued.
    pub(super) fn with_routes(mut self, routes: Routes, wake: Wake) -> Self {
        self.routes = routes;
        self.wake = wake;
        self
    }

    /// The turns at the leads file's write lock that the other writers of the file take too.
    pub(super) fn with_turns(mut self, turns: super::Turns) -> Self {
        self.turns = turns;
        self
    }

    /// Runs until stopped and caught up with everything durable (so a drain projects it all).
    pub(super) fn run(mut self) {
        let mut pending_since: Option<Instant> = None;
        loop {
            let durable = self.progress.durable.load(Ordering::Acquire);
            if durable > self.watermark && !self.stop.load(Ordering::Acquire) {
                let since = *pending_since.get_or_insert_with(|| {
                    // The lag's age counts while the round is paced, not from its start.
                    self.progress.age_from_hand(self.watermark);
                    Instant::now()
                });
                let few = ((durable - self.watermark) as u64) < FULL_ROUND
                    && !self.progress.round_in_hand();
                if few && since.elapsed() < self.pace {
                    // Pacing: new entries do not end this wait (only `stop` and a round's worth of
                    // leads in hand do), the pace does.
                    self.progress
                        .wait(self.pace.saturating_sub(since.elapsed()));
                    continue;
                }
            }
            pending_since = None;
            if durable <= self.watermark {
                self.progress
                    .oldest_unprojected_ms
                    .store(0, Ordering::Release);
                crate::monitor::projection_lag(0, 0.0);
                if self.stop.load(Ordering::Acquire) {
                    break;
                }
                self.progress.wait_for_work(self.watermark, IDLE_WAIT);
                continue;
            }
            match self.project_once(durable) {
                Ok(_) => {
                    if self
                        .progress
                        .projector_failing
                        .swap(false, Ordering::AcqRel)
                    {
                        tracing::info!("projection resumed");
                    }
                }
                Err(err) => {
                    if !self.progress.projector_failing.swap(true, Ordering::AcqRel) {
                        tracing::error!(%err, watermark = self.watermark, "projection failed; retrying");
                    }
                    // A connection in a bad state is replaced on the next round.
                    self.log = None;
                    self.leads = None;
                    std::thread::sleep(Duration::from_millis(500));
                    if self.stop.load(Ordering::Acquire) {
                        tracing::warn!(
                            lag = self.progress.lag_entries(),
                            "stopping with the projection behind; it resumes on the next start"
                        );
                        break;
                    }
                }
            }
            self.report_lag();
        }
        tracing::debug!(watermark = self.watermark, "projector stopped");
    }

    fn connections(&mut self) -> rusqlite::Result<(&Connection, &mut Connection)> {
        if self.log.is_none() {
            let log = Connection::open(&self.log_path)?;
            log.busy_timeout(Duration::from_secs(5))?;
            log.pragma_update(None, "query_only", "ON")?;
            // It reads the log forward once: a big page cache would only hold pages never read
            // again.
            log.pragma_update(None, "cache_size", -256)?;
            self.log = Some(log);
        }
        if self.leads.is_none() {
            let leads = open_leads(&self.leads_path)?;
            self.watermark = self.watermark.max(watermark(&leads)?);
            self.leads = Some(leads);
        }
        match (self.log.as_ref(), self.leads.as_mut()) {
            (Some(log), Some(leads)) => Ok((log, leads)),
            _ => Err(rusqlite::Error::InvalidQuery),
        }
    }

    /// Projects the next batch of durable entries after the watermark; returns how many.
    fn project_once(&mut self, durable: i64) -> rusqlite::Result<usize> {
        let from = self.watermark;
        let batch = self.batch;
        let progress = self.progress.clone();
        let mut unpacker = std::mem::take(&mut self.unpacker);
        let result = self.project_entries(from, batch, durable, &progress, &mut unpacker);
        self.unpacker = unpacker;
        result
    }

    fn project_entries(
        &mut self,
        from: i64,
        batch: usize,
        durable: i64,
        progress: &Progress,
        unpacker: &mut Unpacker,
    ) -> rusqlite::Result<usize> {
        // The writer's hand-off first: the same leads, without reading and parsing them back.
        let handed = progress.take(from + 1, durable, MAX_LEADS_PER_ROUND as usize);
        if let Some(last) = handed.last().map(|h| h.id) {
            if let Some(first) = handed.first() {
                progress
                    .oldest_unprojected_ms
                    .store(first.received_at, Ordering::Release);
            }
            return self.round(progress, |_, tx, routes, seen, tally| {
                for entry in &handed {
                    let leads: Vec<LeadView> = entry.leads.iter().map(PackedLead::view).collect();
                    tally.apply(
                        tx,
                        (entry.id, entry.received_at),
                        &leads,
                        &entry.detected,
                        routes,
                        seen,
                    )?;
                }
                Ok(last)
            });
        }
        // Otherwise read the log back, one entry at a time inside the transaction: only one
        // entry's body and leads are in memory at once, however far behind the projection is.
        self.round(progress, |log, tx, routes, seen, tally| {
            let mut stmt = log.prepare_cached(
                "SELECT id, received_at, codec, lead_count, CASE WHEN lead_count > 0 THEN body END \
                 FROM log WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3",
            )?;
            let mut rows = stmt.query(params![from, durable, batch as i64])?;
            // Entries in id order, until the batch or the lead budget is full: a 1,000-message
            // delivery is one entry but a thousand leads, and a round must stay bounded.
            let mut leads_in_round = 0_u64;
            let mut last = None;
            let mut exhausted = true;
            while let Some(row) = rows.next()? {
                if last.is_some() && leads_in_round >= MAX_LEADS_PER_ROUND {
                    exhausted = false;
                    break;
                }
                leads_in_round += row.get::<_, i64>(3)?.max(0) as u64;
                let id: i64 = row.get(0)?;
                let received_at: i64 = row.get(1)?;
                if last.is_none() {
                    progress
                        .oldest_unprojected_ms
                        .store(received_at, Ordering::Release);
                }
                let (leads, detected) = match row.get::<_, Option<Vec<u8>>>(4)? {
                    None => (Vec::new(), Vec::new()),
                    Some(body) => match unpacker.unpack(row.get(2)?, body) {
                        Ok(raw) => {
                            let extracted = extract(&raw);
                            (extracted.leads, extracted.detected)
                        }
                        Err(err) => {
                            tracing::error!(id, %err, "a log entry could not be unpacked; skipped");
                            (Vec::new(), Vec::new())
                        }
                    },
                };
                let views: Vec<LeadView> = leads.iter().map(PackedLead::view).collect();
                tally.apply(tx, (id, received_at), &views, &detected, routes, seen)?;
                last = Some(id);
            }
            // Everything up to `last` is done; ids past it up to `durable` that hold nothing (a
            // failed batch) are skipped only when the read ran out before the batch did.
            Ok(match last {
                Some(last) if !exhausted || tally.entries >= batch => last,
                _ => durable,
            })
        })
    }

    /// One projection transaction: `fill` inserts a round's leads (entries in id order) and
    /// returns the watermark it reached, which is recorded in the same transaction and then
    /// published. Returns how many entries the round held. Both sources, the in-memory hand-off
    /// and the log, run through here.
    fn round(&mut self, progress: &Progress, fill: impl Fill) -> rusqlite::Result<usize> {
        let started = Instant::now();
        let routes = std::mem::take(&mut self.routes);
        let turns = self.turns.clone();
        let result = {
            let _turn = turns.take_blocking();
            self.commit(&routes, fill)
        };
        self.routes = routes;
        let (tally, mark) = result?;
        if tally.enqueued > 0 {
            self.wake.notify();
        }
        self.watermark = mark;
        progress.mark_projected(mark);
        crate::monitor::leads_created(tally.created);
        crate::monitor::deliveries(crate::monitor::Outcome::Duplicate, tally.duplicates);
        crate::monitor::projection_batch(tally.entries, started.elapsed());
        Ok(tally.entries)
    }

    fn commit(&mut self, routes: &Routes, fill: impl Fill) -> rusqlite::Result<(Tally, i64)> {
        // Taken out for the round and put back only once it committed: after a failure the
        // filter may hold wamids the rollback removed, or miss what another writer added
        // meanwhile, so it is loaded afresh.
        let seen = self.seen.take();
        let (log, leads) = self.connections()?;
        let tx = leads.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut seen = match seen {
            Some(seen) => seen.refresh(&tx)?,
            None => {
                let started = Instant::now();
                let seen = Seen::load(&tx)?;
                tracing::debug!(
                    micros = started.elapsed().as_micros() as u64,
                    "loaded the stored wamids"
                );
                seen
            }
        };
        let mut tally = Tally::default();
        let mark = fill(log, &tx, routes, &mut seen, &mut tally)?;
        set_watermark(&tx, mark)?;
        tx.commit()?;
        self.seen = Some(seen);
        Ok((tally, mark))
    }

    fn report_lag(&mut self) {
        let entries = self.progress.lag_entries();
        let seconds = self.progress.lag_seconds();
        crate::monitor::projection_lag(entries, seconds);
        if seconds >= LAG_WORTH_LOGGING && self.last_lag_log.elapsed() >= LAG_LOG_EVERY {
            self.last_lag_log = Instant::now();
            tracing::warn!(
                lag_entries = entries,
                lag_seconds = seconds,
                "the projection is behind the log"
            );
        }
    }
}
