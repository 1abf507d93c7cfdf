//! Offline and background upkeep of the raw events: [`reextract`] rebuilds leads from stored
//! deliveries (after a parser fix, nothing is lost even for deliveries we could not read at the
//! time), and [`prune_loop`] deletes raw events past the retention period in small batches.
//! Neither ever deletes a lead.

use std::time::Duration;

use sqlx::{Connection, SqliteConnection};
use tokio_util::sync::CancellationToken;

use super::writer::insert_leads;
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
    let (mut conn, _) = super::open_writer(settings).await?;
    let mut report = ReextractReport::default();
    let mut after_id = 0_i64;
    loop {
        let rows: Vec<(i64, i64, String, Vec<u8>)> = sqlx::query_as(
            "SELECT id, received_at, status, body FROM events \
             WHERE id > ? AND received_at >= ? ORDER BY id LIMIT ?",
        )
        .bind(after_id)
        .bind(since_ms.unwrap_or(i64::MIN))
        .bind(REEXTRACT_PAGE)
        .fetch_all(&mut conn)
        .await?;
        let Some(last) = rows.last() else { break };
        after_id = last.0;
        let mut tx = conn.begin().await?;
        for (id, received_at, status, body) in &rows {
            let extracted = extract(body);
            let leads: Vec<_> = extracted
                .leads
                .iter()
                .map(|lead| (*id, *received_at, lead))
                .collect();
            report.new_leads += insert_leads(&mut tx, &leads).await?;
            if status != extracted.status.as_str() {
                sqlx::query("UPDATE events SET status = ?, lead_count = ? WHERE id = ?")
                    .bind(extracted.status.as_str())
                    .bind(extracted.leads.len() as i64)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                report.restatused += 1;
            }
            report.events += 1;
        }
        tx.commit().await?;
    }
    conn.close().await?;
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
        let _ = conn.close().await;
    }
}
