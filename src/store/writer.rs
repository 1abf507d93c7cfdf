//! Group commit. One task owns the write connection. Each request hands it a verified delivery
//! and awaits a oneshot; the task drains whatever is queued (up to `max_batch`) into a single
//! `BEGIN IMMEDIATE … COMMIT` with multi-row inserts, then answers every waiter. Nobody is told
//! "stored" before the commit returned, and when a batch fails every waiter in it hears so.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, QueryBuilder, Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::leads::extract::{NewLead, ParseStatus};

/// Rows per multi-row INSERT are powers of two up to this, so a batch of any size is written
/// with at most a few statements of at most nine shapes per table, all of which stay in sqlx's
/// prepared-statement cache. Preparing a fresh 700-parameter statement per batch cost more than
/// the inserts themselves. 256 × 24 lead columns stays far below SQLite's 32766 parameters.
const MAX_CHUNK: usize = 256;

/// Splits `rows` into chunks whose lengths are powers of two (largest first).
fn pow2_chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if rows.is_empty() {
            return None;
        }
        let size = MAX_CHUNK.min(1 << rows.len().ilog2());
        let (chunk, rest) = rows.split_at(size);
        rows = rest;
        Some(chunk)
    })
}

/// One verified delivery, as received.
#[derive(Debug)]
pub struct NewEvent {
    pub received_at_ms: i64,
    pub status: ParseStatus,
    pub body: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The queue is full: shed load, Meta retries.
    #[error("ingest queue is full")]
    Overloaded,
    /// The batch holding this delivery did not commit.
    #[error("the database did not commit")]
    Failed,
    /// The writer has stopped (shutting down).
    #[error("the writer has stopped")]
    Closed,
}

struct Job {
    event: NewEvent,
    leads: Vec<NewLead>,
    done: oneshot::Sender<Result<(), IngestError>>,
}

#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Job>,
}

impl WriterHandle {
    pub async fn submit(&self, event: NewEvent, leads: Vec<NewLead>) -> Result<(), IngestError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .try_send(Job { event, leads, done })
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => IngestError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => IngestError::Closed,
            })?;
        rx.await.map_err(|_| IngestError::Closed)?
    }
}

pub(super) struct Writer {
    conn: Option<SqliteConnection>,
    options: SqliteConnectOptions,
    max_batch: usize,
    healthy: Arc<AtomicBool>,
    /// Event ids are assigned here, so a batch's leads can point at their event without a
    /// round trip per row. Only this task writes events.
    next_event_id: i64,
}

impl Writer {
    pub(super) async fn new(
        mut conn: SqliteConnection,
        options: SqliteConnectOptions,
        max_batch: usize,
        healthy: Arc<AtomicBool>,
    ) -> Result<Self, sqlx::Error> {
        let next_event_id = next_event_id(&mut conn).await?;
        Ok(Self {
            conn: Some(conn),
            options,
            max_batch,
            healthy,
            next_event_id,
        })
    }

    /// Starts the task; it ends once every handle is dropped and the queue is drained.
    /// `stop` closes the queue: what is already in it is still committed, then the task ends.
    pub(super) fn spawn(
        self,
        queue_capacity: usize,
        stop: CancellationToken,
    ) -> (WriterHandle, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue_capacity);
        (WriterHandle { tx }, tokio::spawn(self.run(rx, stop)))
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Job>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(self.max_batch);
        let mut closed = false;
        loop {
            let received = tokio::select! {
                biased;
                n = rx.recv_many(&mut batch, self.max_batch) => n,
                _ = stop.cancelled(), if !closed => {
                    // New submissions now fail fast; queued ones are still received below.
                    rx.close();
                    closed = true;
                    continue;
                }
            };
            if received == 0 {
                break;
            }
            let started = std::time::Instant::now();
            let result = self.commit(&batch).await;
            tracing::debug!(
                deliveries = batch.len(),
                micros = started.elapsed().as_micros() as u64,
                "batch"
            );
            match &result {
                Ok(()) => self.healthy.store(true, Ordering::Relaxed),
                Err(err) => {
                    tracing::error!(%err, deliveries = batch.len(), "batch did not commit");
                    self.healthy.store(false, Ordering::Relaxed);
                }
            }
            let answer = result.map_err(|_| IngestError::Failed);
            for job in batch.drain(..) {
                // A waiter that gave up (its client hung up) simply gets no answer; whether its
                // delivery is stored is what `answer` says, and Meta retries what it never saw.
                let _ = job.done.send(answer);
            }
        }
        if let Some(conn) = self.conn.take() {
            if let Err(err) = sqlx::Connection::close(conn).await {
                tracing::warn!(%err, "closing the write connection");
            }
        }
        tracing::debug!("writer stopped");
    }

    async fn commit(&mut self, batch: &[Job]) -> Result<(), sqlx::Error> {
        let conn = match self.conn.as_mut() {
            Some(conn) => conn,
            None => {
                // The previous failure left no usable connection: reconnect.
                let mut conn = self.options.connect().await?;
                self.next_event_id = next_event_id(&mut conn).await?;
                self.conn.insert(conn)
            }
        };
        let first_id = self.next_event_id;
        let result = write_batch(conn, batch, first_id).await;
        match result {
            Ok(()) => {
                self.next_event_id = first_id + batch.len() as i64;
                Ok(())
            }
            Err(err) => {
                // Roll back, and re-read the next event id in case the failure was a collision
                // with a row written by someone else; a connection that cannot do either is
                // replaced before the next batch.
                let recovered = match sqlx::query("ROLLBACK").execute(&mut *conn).await {
                    Ok(_) => next_event_id(conn).await.ok(),
                    Err(_) => None,
                };
                match recovered {
                    Some(id) => self.next_event_id = id,
                    None => self.conn = None,
                }
                Err(err)
            }
        }
    }
}

/// Inserts `(event_id, received_at_ms, lead)` rows, skipping wamids already stored. Runs inside
/// the caller's transaction; returns how many leads were new.
pub(super) async fn insert_leads(
    conn: &mut SqliteConnection,
    leads: &[(i64, i64, &NewLead)],
) -> Result<u64, sqlx::Error> {
    let mut inserted = 0;
    for chunk in pow2_chunks(leads) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO leads (wamid, event_id, received_at, waba_id, phone_number_id, \
             display_phone_number, wa_id, user_id, profile_name, message_type, text, timestamp, \
             source_url, source_id, source_type, headline, body, media_type, image_url, \
             video_url, thumbnail_url, ctwa_clid, ref, welcome_message) ",
        );
        q.push_values(chunk, |mut row, (event_id, received_at, lead)| {
            let r = &lead.referral;
            row.push_bind(&lead.wamid)
                .push_bind(*event_id)
                .push_bind(*received_at)
                .push_bind(&lead.waba_id)
                .push_bind(&lead.phone_number_id)
                .push_bind(&lead.display_phone_number)
                .push_bind(&lead.wa_id)
                .push_bind(&lead.user_id)
                .push_bind(&lead.profile_name)
                .push_bind(&lead.message_type)
                .push_bind(&lead.text)
                .push_bind(lead.timestamp)
                .push_bind(&r.source_url)
                .push_bind(&r.source_id)
                .push_bind(&r.source_type)
                .push_bind(&r.headline)
                .push_bind(&r.body)
                .push_bind(&r.media_type)
                .push_bind(&r.image_url)
                .push_bind(&r.video_url)
                .push_bind(&r.thumbnail_url)
                .push_bind(&r.ctwa_clid)
                .push_bind(&r.ref_)
                .push_bind(&r.welcome_message);
        });
        q.push(" ON CONFLICT (wamid) DO NOTHING");
        inserted += q.build().execute(&mut *conn).await?.rows_affected();
    }
    Ok(inserted)
}

async fn next_event_id(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    let max: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM events")
        .fetch_one(&mut *conn)
        .await?;
    Ok(max.unwrap_or(0) + 1)
}

async fn write_batch(
    conn: &mut SqliteConnection,
    batch: &[Job],
    first_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let events: Vec<(i64, &Job)> = (first_id..).zip(batch).collect();
    for chunk in pow2_chunks(&events) {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO events (id, received_at, status, lead_count, body) ");
        q.push_values(chunk, |mut row, (id, job)| {
            row.push_bind(*id)
                .push_bind(job.event.received_at_ms)
                .push_bind(job.event.status.as_str())
                .push_bind(job.leads.len() as i64)
                .push_bind(&job.event.body[..]);
        });
        q.build().execute(&mut *conn).await?;
    }
    let leads: Vec<(i64, i64, &NewLead)> = events
        .iter()
        .flat_map(|(id, job)| {
            job.leads
                .iter()
                .map(move |lead| (*id, job.event.received_at_ms, lead))
        })
        .collect();
    insert_leads(conn, &leads).await?;
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_powers_of_two_and_cover_every_row() {
        for n in [0usize, 1, 2, 3, 30, 255, 256, 257, 1000] {
            let rows: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = pow2_chunks(&rows).collect();
            assert!(chunks
                .iter()
                .all(|c| c.len().is_power_of_two() && c.len() <= MAX_CHUNK));
            assert_eq!(chunks.concat(), rows, "{n}");
        }
        let sizes: Vec<usize> = pow2_chunks(&[0; 30]).map(<[_]>::len).collect();
        assert_eq!(sizes, [16, 8, 4, 2]);
    }
}
