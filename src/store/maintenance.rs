//! Offline and background upkeep of the raw events: [`reextract`] rebuilds leads from stored
//! deliveries (after a parser fix, nothing is lost even for deliveries we could not read at the
//! time), and [`prune_loop`] deletes raw events past the retention period in small batches.
//! Neither ever deletes a lead.

use std::time::Duration;

use rusqlite::{params, Connection};
use sqlx::SqliteConnection;
use tokio_util::sync::CancellationToken;

use super::writer::{insert_leads, open_connection};
use super::StoreError;
use crate::config::DatabaseSettings;
use crate::leads::extract::extract;

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
}

/// Re-reads every raw event received at or after `since_ms` and stores the leads it holds.
/// Idempotent: a lead already stored (same `wamid`) is left alone.
pub async fn reextract(
    settings: &DatabaseSettings,
    since_ms: Option<i64>,
) -> Result<ReextractReport, StoreError> {
    let (path, _) = super::migrate_schema(settings).await?;
    let durability = settings.synchronous;
    tokio::task::spawn_blocking(move || {
        let mut conn = open_connection(&path, durability)?;
        let report = reextract_blocking(&mut conn, since_ms)?;
        conn.close().map_err(|(_, err)| err)?;
        Ok(report)
    })
    .await
    .map_err(|err| StoreError::Io(std::io::Error::other(err)))?
}

fn reextract_blocking(
    conn: &mut Connection,
    since_ms: Option<i64>,
) -> rusqlite::Result<ReextractReport> {
    let mut report = ReextractReport::default();
    let mut after_id = 0_i64;
    loop {
        let rows: Vec<(i64, i64, String, Vec<u8>)> = conn
            .prepare_cached(
                "SELECT id, received_at, status, body FROM events \
                 WHERE id > ?1 AND received_at >= ?2 ORDER BY id LIMIT ?3",
            )?
            .query_map(
                params![after_id, since_ms.unwrap_or(i64::MIN), REEXTRACT_PAGE],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )?
            .collect::<rusqlite::Result<_>>()?;
        let Some(last) = rows.last() else { break };
        after_id = last.0;
        let tx = conn.transaction()?;
        for (id, received_at, status, body) in &rows {
            let extracted = extract(body);
            let leads = extracted.leads.iter().map(|lead| (*id, *received_at, lead));
            report.new_leads += insert_leads(&tx, leads)?;
            if status != extracted.status.as_str() {
                tx.prepare_cached("UPDATE events SET status = ?1, lead_count = ?2 WHERE id = ?3")?
                    .execute(params![
                        extracted.status.as_str(),
                        extracted.leads.len() as i64,
                        id
                    ])?;
                report.restatused += 1;
            }
            report.events += 1;
        }
        tx.commit()?;
    }
    Ok(report)
}

/// Deletes up to [`PRUNE_BATCH`] raw events received before `cutoff_ms`; returns how many.
pub async fn prune_once(conn: &mut SqliteConnection, cutoff_ms: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM events WHERE id IN \
         (SELECT id FROM events WHERE received_at < ? ORDER BY received_at LIMIT ?)",
    )
    .bind(cutoff_ms)
    .bind(PRUNE_BATCH)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Every `every`, deletes raw events older than `days`, a batch at a time with a pause between
/// batches, until none are left or `stop` fires.
pub async fn prune_loop(
    options: sqlx::sqlite::SqliteConnectOptions,
    days: u32,
    every: Duration,
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
            match prune_once(&mut conn, cutoff).await {
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
