//! Group commit into the delivery [`log`](super::log). One thread owns the log's write
//! connection. Each request hands it a verified, compressed delivery and awaits a oneshot; the
//! thread drains whatever is queued (up to `max_batch`) into a single `BEGIN IMMEDIATE … COMMIT`
//! of one row per delivery (no lead row, no secondary index), then answers every waiter. Nobody is told "stored" before
//! the commit returned and, in FULL durability, before the WAL holding it was fsynced; when a
//! batch fails every waiter in it hears so. The fsync runs on flush threads of its own
//! ([`WalSync`]), so the next batch is written while the disk flushes the previous one; once it
//! succeeded, the batch's ids are published as durable and the projector is woken.
//!
//! The writer talks to SQLite through rusqlite on a blocking thread rather than through sqlx:
//! sqlx runs each statement on its own worker thread and wakes the calling task for every
//! result, and on two busy cores those hand-offs (about ten per batch) left the write connection
//! idle half of the time. Here a batch is one uninterrupted run of cached prepared statements.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::log::{LogRecord, Progress};
use crate::config::Durability;

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
    record: LogRecord,
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
    /// Waiters of committed batches, with the last log id they hold.
    tx: std::sync::mpsc::Sender<(Vec<Waiter>, i64)>,
    threads: Vec<std::thread::JoinHandle<()>>,
    slots: Arc<Slots>,
}

/// Committed batches not yet answered by a flush, and a bell rung when one is.
///
/// With every flush thread busy, a batch committed now would only wait for one of them to end;
/// the writer waits for that instead ([`WalSync::wait_for_slot`]) and commits whatever queued
/// meanwhile as one transaction. Under load that turns runs of one-delivery commits (a WAL page,
/// a commit's CPU and later a checkpoint copy each) into one commit per flush, at no cost in
/// latency: the flush that answers them starts no later than it would have.
#[derive(Default)]
struct Slots {
    unanswered: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

impl Slots {
    fn add(&self) {
        if let Ok(mut n) = self.unanswered.lock() {
            *n += 1;
        }
    }

    fn answered(&self, batches: usize) {
        if let Ok(mut n) = self.unanswered.lock() {
            *n = n.saturating_sub(batches);
            self.freed.notify_all();
        }
    }

    /// Waits (at most `timeout`) until fewer than `FLUSH_THREADS` batches are unanswered;
    /// returns whether it had to wait.
    fn wait(&self, timeout: Duration) -> bool {
        let Ok(n) = self.unanswered.lock() else {
            return false;
        };
        if *n < FLUSH_THREADS {
            return false;
        }
        let _ = self
            .freed
            .wait_timeout_while(n, timeout, |n| *n >= FLUSH_THREADS);
        true
    }
}

/// Flush threads: while one waits for the disk, the next commit's waiters need not wait for
/// that flush to end before theirs starts.
const FLUSH_THREADS: usize = 2;
/// A backstop: a flush that takes this long does not hold the next commit back any further.
const SLOT_WAIT_MAX: Duration = Duration::from_millis(50);

impl WalSync {
    fn start(
        wal: PathBuf,
        healthy: Arc<AtomicBool>,
        progress: Arc<Progress>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<(Vec<Waiter>, i64)>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let slots = Arc::new(Slots::default());
        let mut threads = Vec::with_capacity(FLUSH_THREADS);
        for _ in 0..FLUSH_THREADS {
            let (rx, wal, healthy, progress, slots) = (
                rx.clone(),
                wal.clone(),
                healthy.clone(),
                progress.clone(),
                slots.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name("wal-sync".into())
                    .spawn(move || flush_loop(&rx, &wal, &healthy, &progress, &slots))?,
            );
        }
        Ok(Self { tx, threads, slots })
    }

    fn submit(&self, waiters: Vec<Waiter>, last_id: i64) {
        self.slots.add();
        // The threads end only after `tx` is dropped, so this cannot fail.
        let _ = self.tx.send((waiters, last_id));
    }

    /// Waits until a flush thread is free to take the next batch; see [`Slots`].
    fn wait_for_slot(&self) -> bool {
        self.slots.wait(SLOT_WAIT_MAX)
    }

    /// Flushes and answers what is pending, then stops the threads.
    fn finish(self) {
        let Self { tx, threads, .. } = self;
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
    rx: &std::sync::Mutex<std::sync::mpsc::Receiver<(Vec<Waiter>, i64)>>,
    wal: &std::path::Path,
    healthy: &AtomicBool,
    progress: &Progress,
    slots: &Slots,
) {
    loop {
        let (waiters, last_id, batches) = {
            let Ok(rx) = rx.lock() else { return };
            let Ok((mut waiters, mut last_id)) = rx.recv() else {
                return;
            };
            let mut batches = 1;
            while let Ok((more, id)) = rx.try_recv() {
                waiters.extend(more);
                last_id = last_id.max(id);
                batches += 1;
            }
            (waiters, last_id, batches)
        };
        let started = std::time::Instant::now();
        let synced = sync_data(wal);
        crate::monitor::fsync(started.elapsed(), synced.is_ok());
        let answer = match synced {
            Ok(()) => {
                // fdatasync covers the whole file: every batch committed before it started.
                // Published before the answers (a reader told "stored" may wait for its
                // projection), but the projector is rung only after them, below.
                progress.publish_durable(last_id);
                Ok(())
            }
            Err(err) => {
                tracing::error!(%err, deliveries = waiters.len(), "WAL fsync failed");
                healthy.store(false, Ordering::Relaxed);
                Err(IngestError::Failed)
            }
        };
        for waiter in waiters {
            let _ = waiter.send(answer);
        }
        slots.answered(batches);
        progress.ring();
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
    pub async fn submit(&self, record: LogRecord) -> Result<(), IngestError> {
        crate::monitor::queue_depth(self.tx.max_capacity() - self.tx.capacity());
        let (done, rx) = oneshot::channel();
        self.tx
            .try_send(Msg::Job(Job { record, done }))
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
    // A small page cache (KiB): the log has no index, and a writer appends. The projector
    // raises its own for the leads' indexes.
    conn.pragma_update(None, "cache_size", -2048)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // The checkpointer task copies the WAL off the writer's thread. Under steady load only
    // this checkpoint completes (a commit lands while the checkpointer copies), and the WAL
    // starts over from its first frame only after one that completed; see `writeback::spawn`.
    conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(conn)
}

/// WAL pages after which the writer checkpoints by itself: what the checkpointer left, so
/// that the WAL can start over. With none (0), the WAL only grew, and fewer deliveries were
/// acknowledged: 16,308–17,323/s against 17,926–19,174 in three alternating pairs of 20 s at 64
/// connections on the production-shaped mix (2026-12-07).
pub(super) const WRITER_AUTOCHECKPOINT_PAGES: u32 = 20_000;

pub(super) struct Writer {
    conn: Option<Connection>,
    path: PathBuf,
    max_batch: usize,
    healthy: Arc<AtomicBool>,
    progress: Arc<Progress>,
    /// Log ids are assigned here: only this thread writes the log. It never goes down, and
    /// never to an id at or below the projection's watermark (see [`Writer::new`]).
    next_event_id: i64,
    /// FULL durability: the WAL to fsync before acknowledging. `None`: answer at commit.
    wal: Option<PathBuf>,
}

impl Writer {
    /// Opens the write connection to the (migrated) database at `path`. `projected` is the
    /// projection's watermark: ids up to it stay taken even once retention or an erasure has
    /// deleted their entries, and the log's highest id with them, since the projector reads
    /// only above it. An id given again there would be acknowledged and never projected.
    pub(super) fn new(
        path: PathBuf,
        durability: Durability,
        max_batch: usize,
        healthy: Arc<AtomicBool>,
        progress: Arc<Progress>,
        projected: i64,
    ) -> rusqlite::Result<Self> {
        let conn = open_connection(&path, Durability::Normal)?;
        let next_event_id = next_event_id(&conn)?.max(projected + 1);
        // Everything already in the file survived whatever stopped the last run: durable.
        progress.mark_durable(next_event_id - 1);
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
            progress,
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
            Some(wal) => Some(WalSync::start(
                wal.clone(),
                self.healthy.clone(),
                self.progress.clone(),
            )?),
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
            self.gather(&mut rx, &mut batch, Some(msg));
            // Every flush thread busy: what arrives until one is free joins this commit.
            if let Some(sync) = &sync {
                if batch.len() < self.max_batch && sync.wait_for_slot() {
                    self.gather(&mut rx, &mut batch, None);
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
            let last_id = self.next_event_id - 1;
            if result.is_ok() {
                // Committed: the projector may take these leads from memory once they are
                // durable, instead of reading and parsing the bodies back from the log.
                let first_id = last_id - batch.len() as i64 + 1;
                for (id, job) in (first_id..).zip(batch.iter_mut()) {
                    self.progress.offer(super::log::Handed {
                        id,
                        received_at: job.record.received_at_ms,
                        leads: std::mem::take(&mut job.record.leads),
                        detected: std::mem::take(&mut job.record.detected),
                    });
                }
            }
            let waiters = batch.drain(..).map(|job| job.done);
            match (&sync, result) {
                (Some(sync), Ok(())) => sync.submit(waiters.collect(), last_id),
                (_, result) => {
                    if result.is_ok() {
                        self.progress.mark_durable(last_id);
                    }
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

    /// Adds `first` and whatever else is queued to `batch`, up to `max_batch`.
    fn gather(&self, rx: &mut mpsc::Receiver<Msg>, batch: &mut Vec<Job>, first: Option<Msg>) {
        let mut next = first.or_else(|| rx.try_recv().ok());
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
    }

    fn commit(&mut self, batch: &[Job]) -> rusqlite::Result<()> {
        let conn = match self.conn.as_mut() {
            Some(conn) => conn,
            None => {
                // The previous failure left no usable connection: reconnect.
                let conn = open_connection(&self.path, Durability::Normal)?;
                self.next_event_id = self.next_event_id.max(next_event_id(&conn)?);
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
                // case the failure was a collision with a row written by someone else (never
                // going down: the ids below may have been projected and deleted); a connection
                // that cannot even do that is replaced before the next batch.
                match next_event_id(conn) {
                    Ok(id) => self.next_event_id = self.next_event_id.max(id),
                    Err(_) => self.conn = None,
                }
                Err(err)
            }
        }
    }
}

fn next_event_id(conn: &Connection) -> rusqlite::Result<i64> {
    let max: Option<i64> = conn.query_row("SELECT MAX(id) FROM log", [], |row| row.get(0))?;
    Ok(max.unwrap_or(0) + 1)
}

fn write_batch(conn: &mut Connection, batch: &[Job], first_id: i64) -> rusqlite::Result<()> {
    // Dropped without `commit`, the transaction rolls back.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (id, job) in (first_id..).zip(batch) {
        super::log::insert(&tx, id, &job.record)?;
    }
    tx.commit()?;
    crate::monitor::deliveries(crate::monitor::Outcome::Stored, batch.len() as u64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter() -> (Waiter, oneshot::Receiver<Result<(), IngestError>>) {
        oneshot::channel()
    }

    #[test]
    fn waiters_are_answered_by_the_flush_and_hear_when_it_fails() {
        let dir = tempfile::tempdir().expect("temp dir");
        let wal = dir.path().join("db-wal");
        std::fs::write(&wal, b"frames").expect("wal file");

        let healthy = Arc::new(AtomicBool::new(true));
        let progress = Arc::new(Progress::default());
        let sync = WalSync::start(wal.clone(), healthy.clone(), progress.clone()).expect("thread");
        let (a, a_rx) = waiter();
        let (b, b_rx) = waiter();
        sync.submit(vec![a], 1);
        sync.submit(vec![b], 2);
        assert_eq!(a_rx.blocking_recv(), Ok(Ok(())));
        assert_eq!(b_rx.blocking_recv(), Ok(Ok(())));
        assert!(healthy.load(Ordering::Relaxed));
        assert_eq!(
            progress.durable.load(Ordering::Acquire),
            2,
            "durable after the flush"
        );

        // A flush that cannot happen must not be acknowledged as stored.
        std::fs::remove_file(&wal).expect("remove");
        let (c, c_rx) = waiter();
        sync.submit(vec![c], 3);
        assert_eq!(c_rx.blocking_recv(), Ok(Err(IngestError::Failed)));
        assert!(!healthy.load(Ordering::Relaxed));
        assert_eq!(
            progress.durable.load(Ordering::Acquire),
            2,
            "a failed flush publishes nothing"
        );

        // Stopping answers what is still pending before the thread ends.
        std::fs::write(&wal, b"frames").expect("wal file");
        let (d, d_rx) = waiter();
        sync.submit(vec![d], 4);
        sync.finish();
        assert_eq!(d_rx.blocking_recv(), Ok(Ok(())));
    }

    async fn writer_on_a_fresh_database() -> (Writer, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("log.db");
        super::super::log::create(&path).expect("log");
        let writer = Writer::new(
            path,
            Durability::Full,
            64,
            Arc::new(AtomicBool::new(true)),
            Arc::new(Progress::default()),
            0,
        )
        .expect("writer");
        (writer, dir)
    }

    fn event() -> LogRecord {
        LogRecord::new(
            1,
            crate::leads::extract::ParseStatus::Parsed,
            super::super::log::Kind::Other,
            0,
            b"{}",
        )
    }

    #[test]
    fn log_ids_never_go_back_to_the_watermark_or_to_ids_already_given() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("log.db");
        super::super::log::create(&path).expect("log");
        let progress = Arc::new(Progress::default());
        let healthy = Arc::new(AtomicBool::new(true));
        // An empty log whose entries up to 7 were projected, then deleted.
        let mut writer = Writer::new(
            path.clone(),
            Durability::Normal,
            64,
            healthy,
            progress.clone(),
            7,
        )
        .expect("writer");
        assert_eq!(progress.durable.load(Ordering::Acquire), 7);
        let job = || Job {
            record: event(),
            done: waiter().0,
        };
        let ids = || -> Vec<i64> {
            let conn = Connection::open(&path).expect("open");
            let mut stmt = conn
                .prepare("SELECT id FROM log ORDER BY id")
                .expect("query");
            let ids = stmt.query_map([], |r| r.get(0)).expect("rows");
            ids.collect::<rusqlite::Result<_>>().expect("ids")
        };
        writer.commit(&[job(), job()]).expect("committed");
        assert_eq!(ids(), [8, 9]);
        // Every entry deleted meanwhile (retention, an erasure), then the connection replaced.
        Connection::open(&path)
            .expect("open")
            .execute("DELETE FROM log", [])
            .expect("deleted");
        writer.conn = None;
        writer.commit(&[job()]).expect("committed");
        assert_eq!(ids(), [10]);
    }

    #[tokio::test]
    async fn after_stop_the_writer_ends_and_refuses_new_deliveries() {
        let (writer, _dir) = writer_on_a_fresh_database().await;
        let stop = CancellationToken::new();
        let (handle, task) = writer.spawn(64, stop.clone()).expect("spawn");
        handle.submit(event()).await.expect("stored");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the writer ends after stop")
            .expect("no panic");
        assert_eq!(handle.submit(event()).await, Err(IngestError::Closed));
    }

    #[tokio::test]
    async fn the_writer_ends_when_every_handle_is_dropped() {
        let (writer, _dir) = writer_on_a_fresh_database().await;
        let stop = CancellationToken::new(); // never fired
        let (handle, task) = writer.spawn(64, stop).expect("spawn");
        handle.submit(event()).await.expect("stored");
        drop(handle);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("nothing else keeps the writer alive")
            .expect("no panic");
    }
}
