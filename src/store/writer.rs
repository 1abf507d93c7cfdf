//! Group commit. One thread owns the write connection. Each request hands it a verified
//! delivery and awaits a oneshot; the thread drains whatever is queued (up to `max_batch`) into a
//! single `BEGIN IMMEDIATE … COMMIT`, then answers every waiter. Nobody is told "stored" before
//! the commit returned and, in FULL durability, before the WAL holding it was fsynced; when a
//! batch fails every waiter in it hears so. The fsync runs on flush threads of its own
//! ([`WalSync`]), so the next batch is written while the disk flushes the previous one.
//!
//! The writer talks to SQLite through rusqlite on a blocking thread rather than through sqlx:
//! sqlx runs each statement on its own worker thread and wakes the calling task for every
//! result, and on two busy cores those hand-offs (about ten per batch) left the write connection
//! idle half of the time. Here a batch is one uninterrupted run of cached prepared statements.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Durability;
use crate::leads::extract::{NewLead, ParseStatus};

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

type Waiter = oneshot::Sender<Result<(), IngestError>>;

struct Job {
    event: NewEvent,
    leads: Vec<NewLead>,
    done: Waiter,
}

enum Msg {
    Job(Job),
    /// Shutting down: refuse new jobs, commit the queued ones, then end.
    Stop,
}

/// Makes committed batches durable before they are acknowledged, off the writer's thread.
///
/// The write connection commits with `synchronous=NORMAL`: SQLite appends the batch's frames to
/// the WAL and returns without an fsync. The batch's waiters then come here, and are answered
/// only once an `fdatasync` of the WAL file, started after their commit returned, succeeded.
/// That is the guarantee `synchronous=FULL` gives an acknowledged commit, but the writer goes on
/// with the next batch during the flush, and one flush covers every batch committed before it.
/// SQLite itself still syncs the WAL before each checkpoint copies it into the database file.
struct WalSync {
    tx: std::sync::mpsc::Sender<Vec<Waiter>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Flush threads: while one waits for the disk, the next commit's waiters need not wait for
/// that flush to end before theirs starts.
const FLUSH_THREADS: usize = 2;

impl WalSync {
    fn start(wal: PathBuf, healthy: Arc<AtomicBool>) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<Waiter>>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let mut threads = Vec::with_capacity(FLUSH_THREADS);
        for _ in 0..FLUSH_THREADS {
            let (rx, wal, healthy) = (rx.clone(), wal.clone(), healthy.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("wal-sync".into())
                    .spawn(move || flush_loop(&rx, &wal, &healthy))?,
            );
        }
        Ok(Self { tx, threads })
    }

    fn submit(&self, waiters: Vec<Waiter>) {
        // The threads end only after `tx` is dropped, so this cannot fail.
        let _ = self.tx.send(waiters);
    }

    /// Flushes and answers what is pending, then stops the threads.
    fn finish(self) {
        let Self { tx, threads } = self;
        drop(tx);
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("a WAL sync thread failed");
            }
        }
    }
}

/// Takes every batch committed so far, flushes the WAL once for all of them, answers them.
/// The receiver is held only while waiting, so another thread can start the next flush while
/// this one is in progress; each waiter is answered by a flush that began after its commit.
fn flush_loop(
    rx: &std::sync::Mutex<std::sync::mpsc::Receiver<Vec<Waiter>>>,
    wal: &std::path::Path,
    healthy: &AtomicBool,
) {
    loop {
        let waiters = {
            let Ok(rx) = rx.lock() else { return };
            let Ok(mut waiters) = rx.recv() else { return };
            while let Ok(more) = rx.try_recv() {
                waiters.extend(more);
            }
            waiters
        };
        let started = std::time::Instant::now();
        let synced = sync_data(wal);
        crate::monitor::fsync(started.elapsed(), synced.is_ok());
        let answer = match synced {
            Ok(()) => Ok(()),
            Err(err) => {
                tracing::error!(%err, deliveries = waiters.len(), "WAL fsync failed");
                healthy.store(false, Ordering::Relaxed);
                Err(IngestError::Failed)
            }
        };
        for waiter in waiters {
            let _ = waiter.send(answer);
        }
    }
}

/// `fdatasync` of the file at `path`. Opened afresh each time, so a WAL that SQLite recreated
/// (after every connection closed it) is still the file synced.
fn sync_data(path: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_data()
}

#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Msg>,
}

impl WriterHandle {
    pub async fn submit(&self, event: NewEvent, leads: Vec<NewLead>) -> Result<(), IngestError> {
        crate::monitor::queue_depth(self.tx.max_capacity() - self.tx.capacity());
        let (done, rx) = oneshot::channel();
        self.tx
            .try_send(Msg::Job(Job { event, leads, done }))
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => IngestError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => IngestError::Closed,
            })?;
        rx.await.map_err(|_| IngestError::Closed)?
    }
}

/// Opens a write connection to the database at `path` (which must exist and be migrated).
/// `synchronous` is what SQLite itself does at commit; the ingest writer passes NORMAL and
/// keeps FULL durability with [`WalSync`].
pub(super) fn open_connection(
    path: &std::path::Path,
    synchronous: Durability,
) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!("journal_mode is {mode}, not WAL")),
        ));
    }
    let synchronous = match synchronous {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    // The writer's own page cache (KiB): index pages stay hot between batches.
    conn.pragma_update(None, "cache_size", -16384)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // A backstop only: the checkpointer task keeps the WAL short, off the writer's thread.
    conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(conn)
}

/// WAL pages after which the writer checkpoints by itself, should the checkpointer fall behind.
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 20_000;

pub(super) struct Writer {
    conn: Option<Connection>,
    path: PathBuf,
    max_batch: usize,
    healthy: Arc<AtomicBool>,
    /// Event ids are assigned here, so a batch's leads can point at their event without reading
    /// it back. Only this thread writes events.
    next_event_id: i64,
    /// FULL durability: the WAL to fsync before acknowledging. `None`: answer at commit.
    wal: Option<PathBuf>,
}

impl Writer {
    /// Opens the write connection to the (migrated) database at `path`.
    pub(super) fn new(
        path: PathBuf,
        durability: Durability,
        max_batch: usize,
        healthy: Arc<AtomicBool>,
    ) -> rusqlite::Result<Self> {
        let conn = open_connection(&path, Durability::Normal)?;
        let next_event_id = next_event_id(&conn)?;
        let wal = match durability {
            Durability::Full => {
                let mut wal = path.clone().into_os_string();
                wal.push("-wal");
                Some(PathBuf::from(wal))
            }
            Durability::Normal => None,
        };
        Ok(Self {
            conn: Some(conn),
            path,
            max_batch,
            healthy,
            next_event_id,
            wal,
        })
    }

    /// Starts the thread; it ends once `stop` fired (or every handle was dropped) and the queue
    /// is drained. After `stop`, new submissions fail fast and queued ones are still committed.
    pub(super) fn spawn(
        self,
        queue_capacity: usize,
        stop: CancellationToken,
    ) -> std::io::Result<(WriterHandle, JoinHandle<()>)> {
        let sync = match &self.wal {
            Some(wal) => Some(WalSync::start(wal.clone(), self.healthy.clone())?),
            None => None,
        };
        let (tx, rx) = mpsc::channel(queue_capacity);
        // A weak handle, so that this task does not keep the writer alive on its own.
        let stopper = tx.downgrade();
        tokio::spawn(async move {
            stop.cancelled().await;
            if let Some(tx) = stopper.upgrade() {
                // Waits for room in the queue; fails only if the writer already ended.
                let _ = tx.send(Msg::Stop).await;
            }
        });
        let handle = tokio::task::spawn_blocking(move || self.run(rx, sync));
        Ok((WriterHandle { tx }, handle))
    }

    fn run(mut self, mut rx: mpsc::Receiver<Msg>, sync: Option<WalSync>) {
        let mut batch: Vec<Job> = Vec::with_capacity(self.max_batch);
        while let Some(msg) = rx.blocking_recv() {
            let mut next = Some(msg);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Job(job) => batch.push(job),
                    // New submissions now fail fast; queued ones are still received.
                    Msg::Stop => rx.close(),
                }
                if batch.len() < self.max_batch {
                    next = rx.try_recv().ok();
                }
            }
            if batch.is_empty() {
                continue;
            }
            let started = std::time::Instant::now();
            let result = self.commit(&batch);
            crate::monitor::batch_committed(batch.len(), started.elapsed(), result.is_ok());
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
            let waiters = batch.drain(..).map(|job| job.done);
            match (&sync, result) {
                (Some(sync), Ok(())) => sync.submit(waiters.collect()),
                (_, result) => {
                    let answer = result.map_err(|_| IngestError::Failed);
                    for waiter in waiters {
                        // A waiter that gave up (its client hung up) simply gets no answer;
                        // whether its delivery is stored is what `answer` says, and Meta
                        // retries what it never saw.
                        let _ = waiter.send(answer);
                    }
                }
            }
        }
        if let Some(sync) = sync {
            sync.finish();
        }
        if let Some(conn) = self.conn.take() {
            if let Err((_, err)) = conn.close() {
                tracing::warn!(%err, "closing the write connection");
            }
        }
        tracing::debug!("writer stopped");
    }

    fn commit(&mut self, batch: &[Job]) -> rusqlite::Result<()> {
        let conn = match self.conn.as_mut() {
            Some(conn) => conn,
            None => {
                // The previous failure left no usable connection: reconnect.
                let conn = open_connection(&self.path, Durability::Normal)?;
                self.next_event_id = next_event_id(&conn)?;
                self.conn.insert(conn)
            }
        };
        let first_id = self.next_event_id;
        match write_batch(conn, batch, first_id) {
            Ok(()) => {
                self.next_event_id = first_id + batch.len() as i64;
                Ok(())
            }
            Err(err) => {
                // The transaction rolled back when it was dropped. Re-read the next event id in
                // case the failure was a collision with a row written by someone else; a
                // connection that cannot even do that is replaced before the next batch.
                match next_event_id(conn) {
                    Ok(id) => self.next_event_id = id,
                    Err(_) => self.conn = None,
                }
                Err(err)
            }
        }
    }
}

/// Inserts `(event_id, received_at_ms, lead)` rows, skipping wamids already stored. Runs inside
/// the caller's transaction; returns how many leads were new.
pub(super) fn insert_leads<'a>(
    conn: &Connection,
    leads: impl IntoIterator<Item = (i64, i64, &'a NewLead)>,
) -> rusqlite::Result<u64> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO leads (wamid, event_id, received_at, waba_id, phone_number_id, \
         display_phone_number, wa_id, user_id, profile_name, message_type, text, timestamp, \
         source_url, source_id, source_type, headline, body, media_type, image_url, \
         video_url, thumbnail_url, ctwa_clid, ref, welcome_message) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
         ?18, ?19, ?20, ?21, ?22, ?23, ?24) \
         ON CONFLICT (wamid) DO NOTHING",
    )?;
    let mut inserted = 0;
    for (event_id, received_at, lead) in leads {
        let r = &lead.referral;
        inserted += insert.execute(params![
            lead.wamid,
            event_id,
            received_at,
            lead.waba_id,
            lead.phone_number_id,
            lead.display_phone_number,
            lead.wa_id,
            lead.user_id,
            lead.profile_name,
            lead.message_type,
            lead.text,
            lead.timestamp,
            r.source_url,
            r.source_id,
            r.source_type,
            r.headline,
            r.body,
            r.media_type,
            r.image_url,
            r.video_url,
            r.thumbnail_url,
            r.ctwa_clid,
            r.ref_,
            r.welcome_message,
        ])? as u64;
    }
    Ok(inserted)
}

fn next_event_id(conn: &Connection) -> rusqlite::Result<i64> {
    let max: Option<i64> = conn.query_row("SELECT MAX(id) FROM events", [], |row| row.get(0))?;
    Ok(max.unwrap_or(0) + 1)
}

fn write_batch(conn: &mut Connection, batch: &[Job], first_id: i64) -> rusqlite::Result<()> {
    // Dropped without `commit`, the transaction rolls back.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO events (id, received_at, status, lead_count, body) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (id, job) in (first_id..).zip(batch) {
            insert.execute(params![
                id,
                job.event.received_at_ms,
                job.event.status.as_str(),
                job.leads.len() as i64,
                &job.event.body[..],
            ])?;
        }
    }
    let mut created = 0;
    let mut duplicates = 0;
    for (id, job) in (first_id..).zip(batch) {
        let leads = job
            .leads
            .iter()
            .map(|lead| (id, job.event.received_at_ms, lead));
        let new = insert_leads(&tx, leads)?;
        created += new;
        if new == 0 && !job.leads.is_empty() {
            duplicates += 1;
        }
    }
    tx.commit()?;
    use crate::monitor::{deliveries, leads_created, Outcome};
    leads_created(created);
    deliveries(Outcome::Duplicate, duplicates);
    deliveries(Outcome::Stored, batch.len() as u64 - duplicates);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseSettings;

    fn waiter() -> (Waiter, oneshot::Receiver<Result<(), IngestError>>) {
        oneshot::channel()
    }

    #[test]
    fn waiters_are_answered_by_the_flush_and_hear_when_it_fails() {
        let dir = tempfile::tempdir().expect("temp dir");
        let wal = dir.path().join("db-wal");
        std::fs::write(&wal, b"frames").expect("wal file");

        let healthy = Arc::new(AtomicBool::new(true));
        let sync = WalSync::start(wal.clone(), healthy.clone()).expect("thread");
        let (a, a_rx) = waiter();
        let (b, b_rx) = waiter();
        sync.submit(vec![a]);
        sync.submit(vec![b]);
        assert_eq!(a_rx.blocking_recv(), Ok(Ok(())));
        assert_eq!(b_rx.blocking_recv(), Ok(Ok(())));
        assert!(healthy.load(Ordering::Relaxed));

        // A flush that cannot happen must not be acknowledged as stored.
        std::fs::remove_file(&wal).expect("remove");
        let (c, c_rx) = waiter();
        sync.submit(vec![c]);
        assert_eq!(c_rx.blocking_recv(), Ok(Err(IngestError::Failed)));
        assert!(!healthy.load(Ordering::Relaxed));

        // Stopping answers what is still pending before the thread ends.
        std::fs::write(&wal, b"frames").expect("wal file");
        let (d, d_rx) = waiter();
        sync.submit(vec![d]);
        sync.finish();
        assert_eq!(d_rx.blocking_recv(), Ok(Ok(())));
    }

    async fn writer_on_a_fresh_database() -> (Writer, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = DatabaseSettings {
            url: format!("sqlite://{}", dir.path().join("leads.db").display()),
            ..DatabaseSettings::default()
        };
        let (path, _) = super::super::migrate_schema(&settings)
            .await
            .expect("migrate");
        let writer = Writer::new(path, Durability::Full, 64, Arc::new(AtomicBool::new(true)))
            .expect("writer");
        (writer, dir)
    }

    fn event() -> NewEvent {
        NewEvent {
            received_at_ms: 1,
            status: ParseStatus::Parsed,
            body: Bytes::from_static(b"{}"),
        }
    }

    #[tokio::test]
    async fn after_stop_the_writer_ends_and_refuses_new_deliveries() {
        let (writer, _dir) = writer_on_a_fresh_database().await;
        let stop = CancellationToken::new();
        let (handle, task) = writer.spawn(64, stop.clone()).expect("spawn");
        handle.submit(event(), Vec::new()).await.expect("stored");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the writer ends after stop")
            .expect("no panic");
        assert_eq!(
            handle.submit(event(), Vec::new()).await,
            Err(IngestError::Closed)
        );
    }

    #[tokio::test]
    async fn the_writer_ends_when_every_handle_is_dropped() {
        let (writer, _dir) = writer_on_a_fresh_database().await;
        let stop = CancellationToken::new(); // never fired
        let (handle, task) = writer.spawn(64, stop).expect("spawn");
        handle.submit(event(), Vec::new()).await.expect("stored");
        drop(handle);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("nothing else keeps the writer alive")
            .expect("no panic");
    }
}
