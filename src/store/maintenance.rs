//! Offline and background upkeep of the delivery log: [`reextract`] rebuilds leads from stored
//! deliveries (after a parser fix, nothing is lost even for deliveries we could not read at the
//! time), [`prune_loop`] deletes projected log entries past the retention period in small
//! batches, and [`move_legacy_events`] moves raw deliveries that earlier versions kept in the
//! leads database into the log, once. None of them ever deletes a lead.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection};
use sqlx::SqliteConnection;
use tokio_util::sync::CancellationToken;

use super::log::{status_code, status_from_code, Kind, LogRecord, Progress};
use super::projector::{insert_leads, set_watermark};
use super::scan::LogScan;
use super::seen::Seen;
use super::writer::open_connection;
use super::StoreError;
use crate::config::{DatabaseSettings, Durability};
use crate::leads::extract::{extract, ParseStatus};

const REEXTRACT_PAGE: i64 = 500;
/// Raw events deleted per statement: short write locks, so ingest never waits long.
pub const PRUNE_BATCH: i64 = 500;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReextractReport {
    pub events: u64,
    /// Leads that were not stored before.
    pub new_leads: u64,
    /// Events whose parse status changed (e.g. `invalid` → `parsed`).
    pub restatused: u64,
    /// Log entries whose body no longer unpacks: skipped, each named in an error log line.
    pub unreadable: u64,
}

/// Re-reads every log entry received at or after `since_ms` and stores the leads it holds.
/// Idempotent: a lead already stored (same `wamid`) is left alone.
pub async fn reextract(
    settings: &DatabaseSettings,
    routes: super::outbox::Routes,
    since_ms: Option<i64>,
) -> Result<ReextractReport, StoreError> {
    let files = super::migrate_schema(settings).await?;
    let durability = settings.synchronous;
    super::blocking(move || {
        let mut leads = open_connection(&files.leads, durability)?;
        let log = open_connection(&files.log, durability)?;
        let report = reextract_blocking(&log, &mut leads, &routes, since_ms)?;
        leads.close().map_err(|(_, err)| err)?;
        log.close().map_err(|(_, err)| err)?;
        Ok(report)
    })
    .await
}

fn reextract_blocking(
    log: &Connection,
    leads: &mut Connection,
    routes: &super::outbox::Routes,
    since_ms: Option<i64>,
) -> rusqlite::Result<ReextractReport> {
    let mut report = ReextractReport::default();
    let mut seen = Seen::load(leads)?;
    let mut ahead = StoredAhead::default();
    let mut scan = LogScan::new(REEXTRACT_PAGE).since(since_ms);
    loop {
        // Immediate: the wamids are checked and inserted under the write lock, so a running
        // server's projector cannot store one of them in between.
        let tx = leads.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        seen = seen.refresh(&tx)?;
        let mut restatus = Vec::new();
        let entries = scan.next_page(log, |entry| {
            let raw = match entry.body {
                Ok(raw) => raw,
                Err(err) => {
                    report.unreadable += 1;
                    tracing::error!(id = entry.id, %err, "a log entry could not be unpacked; skipped");
                    return Ok::<_, rusqlite::Error>(());
                }
            };
            let extracted = extract(&raw);
            let stored = ahead.read(&tx, entry.id)?;
            let leads = extracted
                .leads
                .iter()
                .map(|lead| lead.view())
                .filter(|lead| !stored.contains(lead.wamid()))
                .map(|lead| (entry.id, entry.received_at, lead));
            report.new_leads += insert_leads(&tx, leads, routes, &mut seen)?.leads;
            super::conversions::insert_detected(&tx, &extracted.detected, entry.received_at)?;
            if status_from_code(entry.status) != extracted.status {
                let count = extracted.leads.len() + extracted.detected.len();
                restatus.push((entry.id, extracted.status, count));
            }
            report.events += 1;
            Ok(())
        })?;
        tx.commit()?;
        if entries == 0 {
            break;
        }
        for (id, status, count) in restatus {
            log.prepare_cached("UPDATE log SET status = ?1, lead_count = ?2 WHERE id = ?3")?
                .execute(params![status_code(status), count as i64, id])?;
            report.restatused += 1;
        }
    }
    Ok(report)
}

/// The wamids already stored for each log entry, read by walking `leads` in id order.
///
/// The projector stores leads in log order, so the leads of consecutive log entries have
/// consecutive ids, and a cursor moved forward entry by entry reads each entry's stored wamids
/// in one sequential pass over the table. Without it every lead of a reextract, almost all of
/// them stored already, took the look-up a re-delivery takes: a search of every id range of the
/// `wamid` index. It only ever answers "stored" for a wamid it read from the table in the
/// page's transaction; a lead it did not meet (stored out of log order, or not stored) takes
/// that look-up as before, so it makes reextract faster and never changes what it stores.
/// The cursor starts at the first lead of the first entry read, found by a binary search, so a
/// `--since` run does not walk the leads of every entry before it.
#[derive(Default)]
struct StoredAhead {
    /// The id of the last lead read.
    after: i64,
    /// Whether the cursor has been placed at the first entry's leads.
    placed: bool,
}

impl StoredAhead {
    /// Reads on from the cursor up to the first lead of a later entry than `event`; returns
    /// the wamids of the leads of `event` (those of earlier entries are passed over).
    fn read(&mut self, conn: &Connection, event: i64) -> rusqlite::Result<HashSet<String>> {
        if !self.placed {
            self.after = self.after.max(first_lead_of(conn, event)? - 1);
            self.placed = true;
        }
        let mut stmt =
            conn.prepare_cached("SELECT id, event_id, wamid FROM leads WHERE id > ?1 ORDER BY id")?;
        let mut rows = stmt.query(params![self.after])?;
        let mut stored = HashSet::new();
        while let Some(row) = rows.next()? {
            let event_id: i64 = row.get(1)?;
            if event_id > event {
                break;
            }
            self.after = row.get(0)?;
            if event_id == event {
                stored.insert(row.get(2)?);
            }
        }
        Ok(stored)
    }
}

/// The smallest id `x` such that the first lead at or after `x` belongs to entry `event` or a
/// later one (one past the last lead if none does). A binary search over the ids, about 2 ×
/// log2(leads) single-row reads: leads are stored in log order, so their entries rise with
/// their ids. Where a lead was stored out of that order the search may start past some of an
/// entry's leads, which then take the index look-up; it never changes what is stored.
fn first_lead_of(conn: &Connection, event: i64) -> rusqlite::Result<i64> {
    let (min, max): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT MIN(id), MAX(id) FROM leads", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let (Some(mut lo), Some(max)) = (min, max) else {
        return Ok(1);
    };
    let mut stmt =
        conn.prepare_cached("SELECT event_id FROM leads WHERE id >= ?1 ORDER BY id LIMIT 1")?;
    let mut hi = max + 1;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let entry: i64 = stmt.query_row(params![mid], |r| r.get(0))?;
        if entry >= event {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}

/// Deletes up to [`PRUNE_BATCH`] log entries received before `cutoff_ms` and already projected
/// (id at most `projected`); returns how many, 0 once none is left. Entries are numbered as
/// they arrive, so those to delete are the oldest ids: it reads the batch's oldest entries
/// first, outside the log's write lock, and deletes the run of them older than the cutoff by
/// id range. It never scans past the first entry that is still kept. (A single `DELETE … WHERE
/// received_at < ?` walked every entry up to `projected` whenever fewer than a batch were old,
/// as in every pass's last batch, holding the write lock that the acknowledgement path
/// commits under for the whole scan: 0.23 s on a log of 1M entries in the page cache, 1.8 s
/// read from disk.)
pub async fn prune_once(
    conn: &mut SqliteConnection,
    cutoff_ms: i64,
    projected: i64,
) -> Result<u64, sqlx::Error> {
    let oldest: Vec<(i64, i64)> =
        sqlx::query_as("SELECT id, received_at FROM log WHERE id <= ? ORDER BY id LIMIT ?")
            .bind(projected)
            .bind(PRUNE_BATCH)
            .fetch_all(&mut *conn)
            .await?;
    let Some(last) = old_prefix(&oldest, cutoff_ms) else {
        return Ok(0);
    };
    let done = sqlx::query("DELETE FROM log WHERE id <= ? AND received_at < ?")
        .bind(last)
        .bind(cutoff_ms)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}

/// The last id of the leading run of `(id, received_at)` entries received before `cutoff_ms`.
fn old_prefix(entries: &[(i64, i64)], cutoff_ms: i64) -> Option<i64> {
    entries
        .iter()
        .take_while(|(_, at)| *at < cutoff_ms)
        .last()
        .map(|(id, _)| *id)
}

/// Every `every`, deletes raw events older than `days`, a batch at a time with a pause between
/// batches, until none are left or `stop` fires.
pub async fn prune_loop(
    options: sqlx::sqlite::SqliteConnectOptions,
    days: u32,
    every: Duration,
    progress: Arc<Progress>,
    stop: CancellationToken,
) {
    use sqlx::ConnectOptions;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let mut conn = match options.connect().await {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!(%err, "retention: cannot open the database");
                continue;
            }
        };
        let cutoff = chrono::Utc::now().timestamp_millis() - i64::from(days) * 86_400_000;
        let mut total = 0;
        loop {
            let projected = progress.projected.load(Ordering::Acquire);
            match prune_once(&mut conn, cutoff, projected).await {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(err) => {
                    tracing::warn!(%err, "retention: pruning raw events failed; retrying later");
                    break;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        if total > 0 {
            tracing::info!(events = total, days, "retention: pruned raw events");
        }
        let _ = sqlx::Connection::close(conn).await;
    }
}

/// Moves the raw deliveries an earlier version kept in the leads database's `events` table into
/// the log (same ids, compressed), advances the projection's watermark past them (their leads
/// are already stored), and empties `events`. Idempotent: a crash half-way repeats safely.
/// Returns how many were moved.
pub fn move_legacy_events(leads_path: &Path, log_path: &Path) -> Result<u64, StoreError> {
    let mut leads = open_connection(leads_path, Durability::Full)?;
    let exists: bool = leads.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(0);
    }
    let log = open_connection(log_path, Durability::Full)?;
    let mut moved = 0;
    loop {
        // Streamed into the log's transaction row by row, not collected: an earlier version
        // kept bodies as received, and a page of 1000-message batches would be ~1.5 GB.
        let mut stmt = leads.prepare_cached(
            "SELECT id, received_at, status, lead_count, body FROM events ORDER BY id LIMIT ?1",
        )?;
        let mut rows = stmt.query(params![REEXTRACT_PAGE])?;
        let mut last = None;
        log.execute_batch("BEGIN IMMEDIATE")?;
        while let Some(row) = rows.next()? {
            let (id, received_at, lead_count): (i64, i64, i64) =
                (row.get(0)?, row.get(1)?, row.get(3)?);
            let status = match row.get::<_, String>(2)?.as_str() {
                "parsed" => ParseStatus::Parsed,
                "partial" => ParseStatus::Partial,
                _ => ParseStatus::Invalid,
            };
            let kind = if lead_count > 0 {
                Kind::Leads
            } else {
                Kind::Other
            };
            let body: Vec<u8> = row.get(4)?;
            let record = LogRecord::new(received_at, status, kind, lead_count as usize, &body);
            super::log::insert_or_ignore(&log, id, &record)?;
            last = Some(id);
            moved += 1;
        }
        log.execute_batch("COMMIT")?;
        drop(rows);
        drop(stmt);
        let Some(last) = last else {
            break;
        };
        let tx = leads.transaction()?;
        set_watermark(&tx, last)?;
        tx.execute("DELETE FROM events WHERE id <= ?1", params![last])?;
        tx.commit()?;
    }
    log.close().map_err(|(_, err)| err)?;
    leads.close().map_err(|(_, err)| err)?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn log_ids(conn: &mut SqliteConnection) -> Vec<i64> {
        sqlx::query_scalar("SELECT id FROM log ORDER BY id")
            .fetch_all(conn)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn pruning_deletes_the_old_projected_prefix_of_the_log_a_batch_at_a_time() {
        use sqlx::Connection as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        super::super::log::create(&path).unwrap();
        let (old, new, cutoff) = (1_000, 3_000, 2_000);
        {
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            let mut insert = tx
                .prepare("INSERT INTO log VALUES (?1, ?2, 0, 3, 0, 0, x'7b7d')")
                .unwrap();
            for id in 1..=1_300_i64 {
                insert.execute(params![id, old]).unwrap();
            }
            // Newer entries, then one stamped old again (the clock stepped back).
            for id in 1_301..=1_400_i64 {
                insert.execute(params![id, new]).unwrap();
            }
            insert.execute(params![1_401, old]).unwrap();
            drop(insert);
            tx.commit().unwrap();
        }
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        // Entries past the watermark are kept, however old.
        let mut batches = Vec::new();
        loop {
            let n = prune_once(&mut conn, cutoff, 1_200).await.unwrap();
            if n == 0 {
                break;
            }
            batches.push(n);
        }
        assert_eq!(batches, [500, 500, 200]);
        let left = log_ids(&mut conn).await;
        assert_eq!(left.len(), 201);
        assert_eq!((left[0], left[200]), (1_201, 1_401));
        // With the watermark past them: the old prefix goes, and nothing past the first entry
        // that is kept is deleted (the late old one waits until the newer ones go).
        assert_eq!(prune_once(&mut conn, cutoff, 2_000).await.unwrap(), 100);
        assert_eq!(prune_once(&mut conn, cutoff, 2_000).await.unwrap(), 0);
        let left = log_ids(&mut conn).await;
        assert_eq!(left.len(), 101);
        assert_eq!((left[0], left[100]), (1_301, 1_401));
    }

    #[test]
    fn stored_ahead_reads_each_entrys_wamids_once_and_stops_at_a_later_entry() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE leads (id INTEGER PRIMARY KEY, event_id INTEGER NOT NULL, wamid TEXT);
             INSERT INTO leads VALUES (1, 1, 'a'), (2, 1, 'b'), (3, 2, 'c'), (4, 4, 'd'),
               (5, 5, 'e'),
               -- stored after the others, from an earlier entry (as reextract stores one)
               (6, 2, 'g');",
        )
        .unwrap();
        let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
        let mut ahead = StoredAhead::default();
        assert_eq!(ahead.read(&conn, 1).unwrap(), set(&["a", "b"]));
        assert_eq!(ahead.read(&conn, 2).unwrap(), set(&["c"]));
        // Entry 3 has no lead; the lead of entry 4 stays unread for it.
        assert_eq!(ahead.read(&conn, 3).unwrap(), set(&[]));
        assert_eq!(ahead.after, 3);
        assert_eq!(ahead.read(&conn, 4).unwrap(), set(&["d"]));
        // 'g' is met after its entry: not reported, so it takes the look-up.
        assert_eq!(ahead.read(&conn, 5).unwrap(), set(&["e"]));
        assert_eq!(ahead.read(&conn, 6).unwrap(), set(&[]));
        assert_eq!(ahead.after, 6);
    }

    /// Leads 1..=3000 of entries 1..=1000 (three each), with gaps where leads were erased.
    fn leads_of_a_thousand_entries() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE leads (id INTEGER PRIMARY KEY, event_id INTEGER NOT NULL, wamid TEXT)",
        )
        .unwrap();
        for id in 1..=3000_i64 {
            conn.execute(
                "INSERT INTO leads VALUES (?1, ?2, ?3)",
                params![id, (id + 2) / 3, format!("w{id}")],
            )
            .unwrap();
        }
        conn.execute_batch("DELETE FROM leads WHERE id BETWEEN 1498 AND 1510")
            .unwrap();
        conn
    }

    #[test]
    fn the_cursor_starts_at_the_first_entry_s_leads() {
        let conn = leads_of_a_thousand_entries();
        // Entry 700's leads are 2098..=2100.
        assert_eq!(first_lead_of(&conn, 700).unwrap(), 2098);
        assert_eq!(first_lead_of(&conn, 1).unwrap(), 1);
        // Entries 500..=503 lost their leads (1498..=1509, and 1510 of entry 504): entry 501's
        // search ends just past entry 499's last lead, and the next lead read is 1511.
        assert_eq!(first_lead_of(&conn, 501).unwrap(), 1498);
        // Past the last entry: one past the last lead. No leads at all: from the start.
        assert_eq!(first_lead_of(&conn, 5000).unwrap(), 3001);
        conn.execute_batch("DELETE FROM leads").unwrap();
        assert_eq!(first_lead_of(&conn, 7).unwrap(), 1);

        let conn = leads_of_a_thousand_entries();
        // A lead of entry 700 stored far out of log order: the search never lands on it, so
        // it is not met (it takes the index look-up). A cursor walking from the first lead
        // would have met it.
        conn.execute_batch("UPDATE leads SET event_id = 700 WHERE id = 2")
            .unwrap();
        let mut ahead = StoredAhead::default();
        let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
        assert_eq!(
            ahead.read(&conn, 700).unwrap(),
            set(&["w2098", "w2099", "w2100"])
        );
        // Only entry 700's leads were read: the cursor did not walk the 2,084 before them.
        assert_eq!(ahead.after, 2100);
        assert_eq!(
            ahead.read(&conn, 701).unwrap(),
            set(&["w2101", "w2102", "w2103"])
        );
    }
}
