//! The forwarding outbox, in the leads database. The projector writes one delivery per
//! (new lead, matching destination) in the transaction that creates the lead ([`enqueue`]);
//! each destination's worker takes due ones in order ([`due`]), and records how each attempt
//! went in batches ([`record`]); the API lists, retries and replays them. A delivery's
//! `webhook_id` never changes, so a send repeated after a crash carries the same id.

use std::sync::Arc;

use rusqlite::{params, Connection};
use sqlx::{FromRow, QueryBuilder, Sqlite};

use super::leads::{LeadRow, COLUMNS};
use super::{Store, StoreError};
use crate::config::{ForwardingSettings, LeadFilters};
use crate::leads::packed::LeadView;

/// Where the projector enqueues a new lead: every enabled destination whose filters match.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    routes: Vec<(String, LeadFilters)>,
    /// Delay of the first attempt (the schedule's first entry), in ms.
    first_delay_ms: i64,
    /// `capi.auto_lead_submitted`: a `LeadSubmitted` conversion for every new lead with a
    /// click id.
    lead_submitted: bool,
}

impl Routes {
    pub fn new(settings: &ForwardingSettings, lead_submitted: bool) -> Self {
        Self {
            lead_submitted,
            routes: settings
                .destinations
                .iter()
                .filter(|d| d.enabled)
                .map(|d| (d.name.clone(), d.filters.clone()))
                .collect(),
            first_delay_ms: settings
                .retry_schedule
                .first()
                .map_or(0, |d| d.as_millis() as i64),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && !self.lead_submitted
    }
}

/// Wakes the destination workers when deliveries become due: new ones (new leads, replay), or
/// old ones made due again (retry), which a worker only finds by reading everything due again.
#[derive(Debug, Clone)]
pub struct Wake(Arc<tokio::sync::watch::Sender<Woken>>);

/// Counters a worker compares with what it saw last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Woken {
    pub new: u64,
    pub rescans: u64,
}

impl Default for Wake {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::channel(Woken::default()).0))
    }
}

impl Wake {
    /// New deliveries, with ids above every existing one.
    pub fn notify(&self) {
        self.0.send_modify(|w| w.new = w.new.wrapping_add(1));
    }

    /// Existing deliveries made due now.
    pub fn rescan(&self) {
        self.0
            .send_modify(|w| w.rescans = w.rescans.wrapping_add(1));
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Woken> {
        self.0.subscribe()
    }
}

/// Enqueues `lead` (just inserted as `lead_id`) for every matching destination, and its
/// `LeadSubmitted` conversion when that is on; runs inside the projector's transaction.
/// Returns how many rows it wrote.
pub(super) fn enqueue(
    conn: &Connection,
    lead_id: i64,
    lead: &LeadView<'_>,
    routes: &Routes,
    now_ms: i64,
) -> rusqlite::Result<u64> {
    let mut written = 0;
    for (name, filters) in &routes.routes {
        if !filters.matches(lead.source_id(), lead.ref_(), lead.source_type()) {
            continue;
        }
        conn.prepare_cached(concat!(
            "INSERT INTO deliveries (id, destination, lead_id, next_attempt_at, created_at, \
             updated_at) VALUES (",
            next_id!("deliveries", "delivery_ids_taken"),
            ", ?1, ?2, ?3, ?4, ?4)"
        ))?
        .execute(params![
            name,
            lead_id,
            now_ms + routes.first_delay_ms,
            now_ms
        ])?;
        written += 1;
    }
    if routes.lead_submitted && lead.ctwa_clid().is_some() {
        let event_time = lead.timestamp.unwrap_or(now_ms / 1000);
        written += super::conversions::enqueue_lead_submitted(conn, lead_id, event_time, now_ms)?;
    }
    Ok(written)
}

/// A delivery due to be sent, with its lead.
#[derive(Debug, Clone)]
pub struct Due {
    pub delivery_id: i64,
    pub webhook_id: String,
    pub attempts: i64,
    pub step: i64,
    /// When the delivery was created (the event's timestamp), unix ms.
    pub queued_at: i64,
    pub lead: LeadRow,
}

/// A destination worker's own read connection to the leads file, through rusqlite: its reads
/// take many rows of two dozen columns each, which sqlx copies value by value on a thread of
/// its own. Used on the blocking pool, one read at a time.
pub struct Reader(Connection);

/// The two reads of due deliveries, built once; each takes the delivery's columns, then the
/// lead's ([`COLUMNS`]).
struct DueSql {
    /// Everything due, oldest due first.
    all: String,
    /// What arrived after an id, in id order.
    after: String,
}

fn due_sql() -> &'static DueSql {
    static SQL: std::sync::OnceLock<DueSql> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let lead = COLUMNS
            .split(',')
            .map(|c| format!("l.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let columns = format!("d.id, d.webhook_id, d.attempts, d.step, d.created_at, {lead}");
        DueSql {
            all: format!(
                "SELECT {columns} FROM deliveries d JOIN leads l ON l.id = d.lead_id \
                 WHERE d.destination = ?1 AND d.status = 'pending' AND d.next_attempt_at <= ?2 \
                 ORDER BY d.next_attempt_at, d.id LIMIT ?3"
            ),
            after: format!(
                "SELECT {columns} FROM deliveries d NOT INDEXED JOIN leads l ON l.id = d.lead_id \
                 WHERE d.id > ?1 AND d.destination = ?2 AND d.status = 'pending' \
                 AND d.next_attempt_at <= ?3 ORDER BY d.id LIMIT ?4"
            ),
        }
    })
}

fn due_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Due> {
    Ok(Due {
        delivery_id: row.get(0)?,
        webhook_id: row.get(1)?,
        attempts: row.get(2)?,
        step: row.get(3)?,
        queued_at: row.get(4)?,
        lead: LeadRow::from_rusqlite(row, 5)?,
    })
}

impl Reader {
    /// Opens a read-only connection to the leads file at `path`.
    pub(super) fn open(path: &std::path::Path) -> rusqlite::Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "cache_size", -1024)?;
        Ok(Self(conn))
    }

    /// Up to `limit` pending deliveries to `destination` due by `now_ms`, oldest due first
    /// (for first attempts, that is lead order).
    pub fn due(
        &self,
        destination: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Due>, StoreError> {
        Ok(self
            .0
            .prepare_cached(&due_sql().all)?
            .query_map(params![destination, now_ms, limit as i64], due_row)?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// Up to `limit` pending deliveries to `destination` due by `now_ms` with ids above
    /// `after`, in id order: what arrived since a worker last looked. It walks ids upward from
    /// `after` (the rowid, not an index: the rows above are few), so it costs the new rows
    /// only, however large the backlog below.
    pub fn due_after(
        &self,
        destination: &str,
        after: i64,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Due>, StoreError> {
        Ok(self
            .0
            .prepare_cached(&due_sql().after)?
            .query_map(params![after, destination, now_ms, limit as i64], due_row)?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// When the next pending delivery to `destination` after `now_ms` falls due, if any.
    pub fn next_due(&self, destination: &str, now_ms: i64) -> Result<Option<i64>, StoreError> {
        use rusqlite::OptionalExtension;
        Ok(self
            .0
            .prepare_cached(
                "SELECT next_attempt_at FROM deliveries \
                 WHERE destination = ?1 AND status = 'pending' AND next_attempt_at > ?2 \
                 ORDER BY next_attempt_at LIMIT 1",
            )?
            .query_row(params![destination, now_ms], |r| r.get(0))
            .optional()?)
    }
}

/// What an attempt decided for its delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    Succeeded {
        code: u16,
    },
    /// Try again at `at_ms`, at schedule position `step`.
    Retry {
        code: Option<u16>,
        error: String,
        at_ms: i64,
        step: i64,
    },
    /// The schedule is exhausted.
    Failed {
        code: Option<u16>,
        error: String,
    },
    /// Not delivered, and not to be retried until the destination is enabled again (410):
    /// stays pending, due at once after a restart.
    Held {
        code: u16,
        error: String,
    },
}

/// One finished attempt, named by its row id and its `webhook_id`: a row id freed by an erasure
/// before migration 0011 may be taken again (`INTEGER PRIMARY KEY` reuses the highest id once
/// that row is deleted; new rows are numbered above erased ones since), and an attempt recorded
/// late must not mark another delivery that took its id.
#[derive(Debug, Clone)]
pub struct Attempted {
    pub delivery_id: i64,
    pub webhook_id: String,
    pub mark: Mark,
}

/// Records finished attempts in one statement: the marks travel as one JSON array, so a batch
/// of hundreds costs one round trip to the connection's thread and one commit, not one of each
/// per attempt.
pub async fn record(store: &Store, done: &[Attempted], now_ms: i64) -> Result<(), sqlx::Error> {
    if done.is_empty() {
        return Ok(());
    }
    let marks: Vec<_> = done
        .iter()
        .map(|a| {
            let (status, code, error, next, step): (
                &str,
                Option<u16>,
                Option<&str>,
                Option<i64>,
                Option<i64>,
            ) = match &a.mark {
                Mark::Succeeded { code } => ("succeeded", Some(*code), None, None, None),
                Mark::Retry {
                    code,
                    error,
                    at_ms,
                    step,
                } => ("pending", *code, Some(error), Some(*at_ms), Some(*step)),
                Mark::Failed { code, error } => ("failed", *code, Some(error), None, None),
                Mark::Held { code, error } => {
                    ("pending", Some(*code), Some(error), Some(now_ms), None)
                }
            };
            (
                a.delivery_id,
                status,
                code,
                error,
                next,
                step,
                &a.webhook_id,
            )
        })
        .collect();
    super::update_each(
        store.write_turn().await.pool(),
        "UPDATE deliveries SET status = m.status, attempts = attempts + 1, \
         last_status_code = m.code, last_error = m.error, next_attempt_at = m.next, \
         step = COALESCE(m.step, deliveries.step), updated_at = ?2 \
         FROM (SELECT value ->> 0 AS id, value ->> 1 AS status, value ->> 2 AS code, \
               value ->> 3 AS error, value ->> 4 AS next, value ->> 5 AS step, \
               value ->> 6 AS webhook_id \
               FROM json_each(?1)) AS m \
         WHERE deliveries.id = m.id AND deliveries.webhook_id = m.webhook_id",
        &marks,
        now_ms,
    )
    .await
}

/// A delivery as the API shows it.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct DeliveryRow {
    pub id: i64,
    pub webhook_id: String,
    pub destination: String,
    pub lead_id: i64,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: Option<i64>,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

const DELIVERY_COLUMNS: &str = "id, webhook_id, destination, lead_id, status, attempts, \
    next_attempt_at, last_status_code, last_error, created_at, updated_at";

/// Filters of `GET /v1/deliveries`; set ones combine (AND).
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub destination: Option<String>,
    pub status: Option<String>,
    pub lead_id: Option<i64>,
}

/// One page, newest first: at most `limit` deliveries with ids below `before`.
pub async fn page(
    store: &Store,
    filter: &DeliveryFilter,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<DeliveryRow>, sqlx::Error> {
    let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE 1 = 1"
    ));
    if let Some(d) = &filter.destination {
        q.push(" AND destination = ").push_bind(d.as_str());
    }
    if let Some(s) = &filter.status {
        q.push(" AND status = ").push_bind(s.as_str());
    }
    if let Some(l) = filter.lead_id {
        q.push(" AND lead_id = ").push_bind(l);
    }
    if let Some(b) = before {
        q.push(" AND id < ").push_bind(b);
    }
    q.push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(limit));
    q.build_query_as().fetch_all(store.read_pool()).await
}

pub async fn by_id(store: &Store, id: i64) -> Result<Option<DeliveryRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(store.read_pool())
    .await
}

/// Makes a pending or failed delivery due at `now_ms`. A failed one gets one more attempt
/// (its schedule position becomes `last_step`); returns the row after the change, or `None`
/// when it was not pending or failed.
pub async fn retry(
    store: &Store,
    id: i64,
    now_ms: i64,
    last_step: i64,
) -> Result<Option<DeliveryRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE deliveries SET next_attempt_at = ?1, updated_at = ?1, \
         step = CASE WHEN status = 'failed' THEN ?2 ELSE step END, status = 'pending' \
         WHERE id = ?3 AND status IN ('pending', 'failed') RETURNING {DELIVERY_COLUMNS}"
    ))
    .bind(now_ms)
    .bind(last_step)
    .bind(id)
    .fetch_optional(store.write_turn().await.pool())
    .await
}

/// Leads enqueued per replay transaction: short enough not to hold the projector back.
const REPLAY_CHUNK: i64 = 2000;

/// Enqueues again, with new webhook ids, every lead received in `[since_ms, until_ms]` that
/// matches `filters`, in lead order, a chunk per transaction. Returns how many.
pub async fn replay(
    store: &Store,
    destination: &str,
    filters: &LeadFilters,
    since_ms: i64,
    until_ms: i64,
    due_ms: i64,
    now_ms: i64,
) -> Result<u64, sqlx::Error> {
    let mut after = (since_ms, i64::MIN);
    let mut total = 0;
    loop {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT id, received_at FROM leads WHERE (received_at, id) > (");
        q.push_bind(after.0)
            .push(", ")
            .push_bind(after.1)
            .push(") AND received_at >= ")
            .push_bind(since_ms)
            .push(" AND received_at <= ")
            .push_bind(until_ms);
        for (column, values) in [
            ("source_id", &filters.source_id),
            ("ref", &filters.ref_),
            ("source_type", &filters.source_type),
        ] {
            if values.is_empty() {
                continue;
            }
            q.push(format_args!(" AND {column} IN ("));
            let mut list = q.separated(", ");
            for v in values {
                list.push_bind(v.as_str());
            }
            q.push(")");
        }
        q.push(" ORDER BY received_at, id LIMIT ")
            .push_bind(REPLAY_CHUNK);
        let ids: Vec<(i64, i64)> = q.build_query_as().fetch_all(store.read_pool()).await?;
        let Some(last) = ids.last().copied() else {
            break;
        };
        let turn = store.write_turn().await;
        let mut tx = turn.pool().begin().await?;
        for (id, _) in &ids {
            // From the lead's row, not its id alone: a lead erased since the page was read gets
            // no delivery (one would wait forever, since only deliveries with a lead fall due).
            total += sqlx::query(concat!(
                "INSERT INTO deliveries (id, destination, lead_id, next_attempt_at, created_at, \
                 updated_at) SELECT ",
                next_id!("deliveries", "delivery_ids_taken"),
                ", ?, id, ?, ?, ? FROM leads WHERE id = ?"
            ))
            .bind(destination)
            .bind(due_ms)
            .bind(now_ms)
            .bind(now_ms)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        if (ids.len() as i64) < REPLAY_CHUNK {
            break;
        }
        after = (last.1, last.0);
    }
    Ok(total)
}

/// A destination's backlog.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct Backlog {
    pub destination: String,
    pub pending: i64,
    pub failed: i64,
    /// When the oldest pending delivery was created, unix ms.
    pub oldest_pending_ms: Option<i64>,
}

/// Pending and failed counts, and the oldest pending delivery, per destination that has any.
pub async fn backlog(store: &Store) -> Result<Vec<Backlog>, sqlx::Error> {
    sqlx::query_as(
        "SELECT destination, SUM(status = 'pending') AS pending, SUM(status = 'failed') AS failed, \
         MIN(CASE WHEN status = 'pending' THEN created_at END) AS oldest_pending_ms \
         FROM deliveries WHERE status IN ('pending', 'failed') GROUP BY destination",
    )
    .fetch_all(store.read_pool())
    .await
}
