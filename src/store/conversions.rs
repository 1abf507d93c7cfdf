//! The Conversions API outbox and Meta's detected events, in the leads database. A conversion
//! is one event for one lead, unique on `event_id` (by default `ctwa-leads.{lead}.{name}`, so a
//! lead reports each event name once); the API and the projector (auto `LeadSubmitted`) insert,
//! the CAPI worker takes due ones in batches ([`due`]) and records how they went ([`record`]).
//! Detected events (`automatic_events` webhooks) are stored once per Meta id by the projector.

use rusqlite::{params, Connection};
use sqlx::{FromRow, QueryBuilder, Sqlite};

use super::Store;

pub use crate::leads::detected::NewDetected;

/// The event id a conversion gets when the caller gives none: one per (lead, event name).
pub fn default_event_id(lead_id: i64, event_name: &str) -> String {
    format!("ctwa-leads.{lead_id}.{event_name}")
}

/// A conversion to queue.
#[derive(Debug, Clone)]
pub struct NewConversion {
    pub event_id: String,
    pub lead_id: i64,
    pub event_name: String,
    /// Unix seconds.
    pub event_time: i64,
    pub value: Option<f64>,
    pub currency: Option<String>,
}

/// A conversion as stored.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct ConversionRow {
    pub id: i64,
    pub event_id: String,
    pub lead_id: i64,
    pub event_name: String,
    pub event_time: i64,
    pub value: Option<f64>,
    pub currency: Option<String>,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: Option<i64>,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub error_code: Option<i64>,
    pub error_subcode: Option<i64>,
    pub fbtrace_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "id, event_id, lead_id, event_name, event_time, value, currency, status, \
    attempts, next_attempt_at, last_status_code, last_error, error_code, error_subcode, \
    fbtrace_id, created_at, updated_at";

/// Queues `LeadSubmitted` for a lead the projector just created; inside its transaction.
/// Returns 1 when queued (0 when that event already exists).
pub(super) fn enqueue_lead_submitted(
    conn: &Connection,
    lead_id: i64,
    event_time: i64,
    now_ms: i64,
) -> rusqlite::Result<u64> {
    let n = conn
        .prepare_cached(concat!(
            "INSERT INTO conversions (id, event_id, lead_id, event_name, event_time, \
             next_attempt_at, created_at, updated_at) VALUES (",
            next_id!("conversions", "conversion_ids_taken"),
            ", ?1, ?2, 'LeadSubmitted', ?3, ?4, ?4, ?4) ON CONFLICT (event_id) DO NOTHING"
        ))?
        .execute(params![
            default_event_id(lead_id, "LeadSubmitted"),
            lead_id,
            event_time,
            now_ms
        ])?;
    Ok(n as u64)
}

/// Queues `new` unless its `event_id` exists: returns the row, and whether it is new. `None`
/// when its lead no longer exists (erased since the caller looked it up), so that no event is
/// left without its lead: it would never fall due, and an erasure would not find it.
pub async fn insert(
    store: &Store,
    new: &NewConversion,
    now_ms: i64,
) -> Result<Option<(ConversionRow, bool)>, sqlx::Error> {
    // Both statements in one turn at the write lock.
    let turn = store.write_turn().await;
    let pool = turn.pool();
    let created: Option<ConversionRow> = sqlx::query_as(&format!(
        "INSERT INTO conversions (id, event_id, lead_id, event_name, event_time, value, \
         currency, next_attempt_at, created_at, updated_at) \
         SELECT {next}, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?7 \
         WHERE EXISTS (SELECT 1 FROM leads WHERE id = ?2) \
         ON CONFLICT (event_id) DO NOTHING RETURNING {COLUMNS}",
        next = next_id!("conversions", "conversion_ids_taken")
    ))
    .bind(&new.event_id)
    .bind(new.lead_id)
    .bind(&new.event_name)
    .bind(new.event_time)
    .bind(new.value)
    .bind(&new.currency)
    .bind(now_ms)
    .fetch_optional(pool)
    .await?;
    if let Some(row) = created {
        return Ok(Some((row, true)));
    }
    let existing: Option<ConversionRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM conversions WHERE event_id = ?"
    ))
    .bind(&new.event_id)
    .fetch_optional(pool)
    .await?;
    Ok(existing.map(|row| (row, false)))
}

/// A conversion due to be sent, with what Meta needs from its lead.
#[derive(Debug, Clone, FromRow)]
pub struct DueConversion {
    pub id: i64,
    pub event_id: String,
    pub event_name: String,
    pub event_time: i64,
    pub value: Option<f64>,
    pub currency: Option<String>,
    pub step: i64,
    pub ctwa_clid: Option<String>,
    pub waba_id: Option<String>,
}

/// Up to `limit` pending conversions due by `now_ms`, oldest due first.
pub async fn due(
    store: &Store,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<DueConversion>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id, c.event_id, c.event_name, c.event_time, c.value, c.currency, c.step, \
         l.ctwa_clid, l.waba_id FROM conversions c JOIN leads l ON l.id = c.lead_id \
         WHERE c.status = 'pending' AND c.next_attempt_at <= ? \
         ORDER BY c.next_attempt_at, c.id LIMIT ?",
    )
    .bind(now_ms)
    .bind(limit as i64)
    .fetch_all(store.read_pool())
    .await
}

/// When the next pending conversion falls due, if any.
pub async fn next_due(store: &Store) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT next_attempt_at FROM conversions WHERE status = 'pending' \
         ORDER BY next_attempt_at LIMIT 1",
    )
    .fetch_optional(store.read_pool())
    .await
}

/// Graph's error, kept on a conversion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GraphError {
    pub status: Option<u16>,
    pub message: String,
    pub code: Option<i64>,
    pub subcode: Option<i64>,
    pub fbtrace_id: Option<String>,
}

/// What an attempt decided for one conversion.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Sent {
        fbtrace_id: Option<String>,
    },
    Retry {
        error: GraphError,
        at_ms: i64,
        step: i64,
    },
    Failed {
        error: GraphError,
    },
}

/// Records outcomes in one statement (a Conversions API batch holds up to 1,000 events): the
/// outcomes go in as one JSON array, which SQLite's `json_each` joins to the rows by id and
/// `event_id` (a row id freed by an erasure before migration 0011 may be taken again, and an
/// outcome recorded late must not mark the event that took it).
pub async fn record(
    store: &Store,
    done: &[(DueConversion, Outcome)],
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    if done.is_empty() {
        return Ok(());
    }
    let marks: Vec<_> = done
        .iter()
        .map(|(due, outcome)| {
            let (status, next, step, error) = match outcome {
                Outcome::Sent { .. } => ("sent", None, None, None),
                Outcome::Retry { error, at_ms, step } => {
                    ("pending", Some(*at_ms), Some(*step), Some(error))
                }
                Outcome::Failed { error } => ("failed", None, None, Some(error)),
            };
            let trace = match outcome {
                Outcome::Sent { fbtrace_id } => fbtrace_id.as_deref(),
                _ => error.and_then(|e| e.fbtrace_id.as_deref()),
            };
            (
                due.id,
                status,
                next,
                step,
                error.and_then(|e| e.status),
                error.map(|e| e.message.as_str()),
                error.and_then(|e| e.code),
                error.and_then(|e| e.subcode),
                trace,
                &due.event_id,
            )
        })
        .collect();
    super::update_each(
        store.write_turn().await.pool(),
        "UPDATE conversions SET status = m.status, attempts = attempts + 1, \
         next_attempt_at = m.next, step = COALESCE(m.step, conversions.step), \
         last_status_code = m.code, last_error = m.error, error_code = m.error_code, \
         error_subcode = m.error_subcode, fbtrace_id = m.trace, updated_at = ?2 \
         FROM (SELECT value ->> 0 AS id, value ->> 1 AS status, value ->> 2 AS next, \
               value ->> 3 AS step, value ->> 4 AS code, value ->> 5 AS error, \
               value ->> 6 AS error_code, value ->> 7 AS error_subcode, value ->> 8 AS trace, \
               value ->> 9 AS event_id \
               FROM json_each(?1)) AS m \
         WHERE conversions.id = m.id AND conversions.event_id = m.event_id",
        &marks,
        now_ms,
    )
    .await
}

/// One page of conversions, newest first: ids below `before`, optionally of one status/lead.
pub async fn page(
    store: &Store,
    status: Option<&str>,
    lead_id: Option<i64>,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<ConversionRow>, sqlx::Error> {
    let mut q: QueryBuilder<Sqlite> =
        QueryBuilder::new(format!("SELECT {COLUMNS} FROM conversions WHERE 1 = 1"));
    if let Some(s) = status {
        q.push(" AND status = ").push_bind(s);
    }
    if let Some(l) = lead_id {
        q.push(" AND lead_id = ").push_bind(l);
    }
    if let Some(b) = before {
        q.push(" AND id < ").push_bind(b);
    }
    q.push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(limit));
    q.build_query_as().fetch_all(store.read_pool()).await
}

/// Stores detected events, once per Meta id; inside the projector's transaction. Returns how
/// many were new.
pub(super) fn insert_detected(
    conn: &Connection,
    events: &[NewDetected],
    received_at: i64,
) -> rusqlite::Result<u64> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO detected_events (id, event_name, event_time, ctwa_clid, waba_id, \
         custom_data, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING",
    )?;
    let mut n = 0;
    for e in events {
        n += stmt.execute(params![
            e.id,
            e.event_name,
            e.event_time,
            e.ctwa_clid,
            e.waba_id,
            e.custom_data,
            received_at
        ])? as u64;
    }
    Ok(n)
}

/// A detected event as stored.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct DetectedRow {
    pub id: String,
    pub event_name: String,
    pub event_time: Option<i64>,
    pub ctwa_clid: Option<String>,
    pub custom_data: Option<String>,
    pub received_at: i64,
}

/// Detected events with this click id, oldest first.
pub async fn detected_for(store: &Store, ctwa_clid: &str) -> Result<Vec<DetectedRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, event_name, event_time, ctwa_clid, custom_data, received_at \
         FROM detected_events WHERE ctwa_clid = ? ORDER BY event_time, id LIMIT 100",
    )
    .bind(ctwa_clid)
    .fetch_all(store.read_pool())
    .await
}
