//! All SQL lives here. Two SQLite files in WAL mode, each with its own writer and WAL, so the
//! acknowledgement path never shares a write lock with the read side:
//! - the delivery [`log`], appended to by the group-commit [`writer`] (a delivery is
//!   acknowledged once its entry is durable);
//! - the leads database, built from the log by the [`projector`] and read through a separate
//!   read pool.
//!
//! `open` creates both files and their folder, applies the migrations, moves raw deliveries
//! left by earlier versions into the log, and starts the writer, the projector and the
//! background upkeep (checkpoints, retention). The rest of the crate holds a [`Store`] and
//! calls these modules' functions with it: no caller outside holds a pool or takes the leads
//! file's write lock, so a second backend (PostgreSQL, for several replicas) can sit beside
//! SQLite behind the same functions.

/// SQL for the id that a one-row insert into `$table` gives its row: above every stored id and
/// above `projection.$taken`, the highest id an erasure deleted. SQLite alone gives the highest
/// id again once its row is gone, and an id must never name two rows (an API client that read
/// `GET /v1/deliveries/{id}` before an erasure would read another person's row after it).
/// Uncorrelated, so SQLite evaluates it once per run of the statement: one row per run only.
macro_rules! next_id {
    ($table:literal, $taken:literal) => {
        concat!(
            "(SELECT max(coalesce((SELECT max(id) FROM ",
            $table,
            "), 0), coalesce((SELECT ",
            $taken,
            " FROM projection WHERE id = 1), 0)) + 1)"
        )
    };
}

mod checkpoint;
pub mod codec;
pub mod conversions;
pub mod erasure;
pub mod erasure_requests;
pub mod leads;
pub mod log;
pub mod maintenance;
pub mod outbox;
pub mod projector;
mod scan;
mod seen;
mod writeback;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{DatabaseSettings, Durability, IngestSettings, RetentionSettings};
pub use log::{Kind, LogRecord, Progress};
pub use writer::IngestError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the database folder {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the database {path}: {source} (running as {user}; the folder must be writable by that user, and the Docker image runs as uid 10001)")]
    Open {
        path: String,
        user: String,
        source: sqlx::Error,
    },
    #[error("cannot open the delivery log {path}: {source} (running as {user}; the folder must be writable by that user)")]
    OpenLog {
        path: String,
        user: String,
        source: rusqlite::Error,
    },
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The projection has not reached what a request needs (an erasure waits for it).
    #[error("the projection is behind the log")]
    ProjectionBehind,
    /// A long task (an erasure's search of the log) was stopped for a shutdown.
    #[error("stopped for a shutdown before it finished")]
    Interrupted,
}

/// Turns at the leads database's write lock, handed out in arrival order. Several connections
/// write that file (the projector, the outbox's attempts and retries, erasure), and SQLite's own
/// busy handler polls with growing sleeps: a writer that commits back to back, as the projector
/// does under load, would starve the others for seconds. Every writer of the leads file takes a
/// turn here first, so each waits at most for the transactions queued before it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Turns(Arc<tokio::sync::Mutex<()>>);

impl Turns {
    pub(crate) async fn take(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.0.clone().lock_owned().await
    }

    /// For threads outside the runtime (the projector).
    pub(crate) fn take_blocking(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.0.blocking_lock()
    }
}

/// A turn at the leads database's write lock, and the connection to write with.
pub(crate) struct WriteTurn<'a> {
    _turn: tokio::sync::OwnedMutexGuard<()>,
    pool: &'a SqlitePool,
}

impl WriteTurn<'_> {
    pub(crate) fn pool(&self) -> &SqlitePool {
        self.pool
    }
}

/// Handles to the database: cheap to clone.
#[derive(Clone)]
pub struct Store {
    read: SqlitePool,
    /// Writes to the leads database outside the projector (the outbox's attempts, retries and
    /// replays): one connection, so they queue here instead of contending among themselves.
    write: SqlitePool,
    /// Turns at the leads database's write lock, shared with the projector (see [`Turns`]).
    turns: Turns,
    /// Wakes the forwarding workers.
    wake: outbox::Wake,
    /// For work outside the ingest writer and the projector (erasure), on connections of its own.
    path: PathBuf,
    log_path: PathBuf,
    durability: Durability,
    progress: Arc<Progress>,
    writer: writer::WriterHandle,
    healthy: Arc<AtomicBool>,
}

/// The writer and the projector, stopped (and drained) on shutdown.
pub struct WriterTask {
    handle: JoinHandle<()>,
    projector: Option<std::thread::JoinHandle<()>>,
    projector_stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
    /// The checkpointers (log and leads), and the retention pruner when enabled.
    background: Vec<JoinHandle<()>>,
    stop: CancellationToken,
    /// Stops the [`writeback`] thread (both database files) when dropped without a shutdown.
    _writeback: tokio_util::sync::DropGuard,
}

impl WriterTask {
    /// Closes the queue, waits until the writer committed what it held, and closes its
    /// connection. Submissions after this get [`IngestError::Closed`].
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Err(err) = self.handle.await {
            tracing::error!(%err, "the writer task failed");
        }
        // The writer has committed and flushed what it held: the projector drains up to there.
        self.projector_stop.store(true, Ordering::Release);
        self.progress.wake();
        if let Some(projector) = self.projector {
            let joined = tokio::task::spawn_blocking(move || projector.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("the projector failed");
            }
        }
        for task in self.background {
            if let Err(err) = task.await {
                tracing::error!(%err, "a background store task failed");
            }
        }
    }
}

fn connect_options(path: &Path, synchronous: Durability) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL (the default): an acknowledged lead survives power loss, not just a process
        // crash; group commit makes it one fsync per batch (see the README's durability section).
        .synchronous(match synchronous {
            Durability::Full => SqliteSynchronous::Full,
            Durability::Normal => SqliteSynchronous::Normal,
        })
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(false)
        .disable_statement_logging()
}

fn ensure_folder(path: &Path) -> Result<(), StoreError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Folder {
                path: format!(
                    "{} (running as {})",
                    dir.display(),
                    crate::config::process_user()
                ),
                source,
            })
        }
        _ => Ok(()),
    }
}

/// A read connection to the log, for tools and tests (the projector keeps its own).
fn open_log_reader(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// Runs `sql`, an `UPDATE … FROM json_each(?1)` that joins one JSON array element to each row
/// it changes, with `rows` as that array and `now_ms` as `?2`: a batch of outcomes in one
/// statement (the outbox's forwarding attempts, the conversions' Conversions API events).
pub(crate) async fn update_each(
    pool: &SqlitePool,
    sql: &str,
    rows: &impl serde::Serialize,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    let rows = serde_json::to_string(rows).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(sql)
        .bind(rows)
        .bind(now_ms)
        .execute(pool)
        .await
        .map(drop)
}

/// Runs `f` (SQLite work through rusqlite) on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| StoreError::Io(std::io::Error::other(err)))?
}

/// The files a database configuration names, and the options every sqlx connection to the
/// leads file (reads) opens with.
pub(crate) struct Files {
    pub leads: PathBuf,
    pub log: PathBuf,
    pub options: SqliteConnectOptions,
}

/// Creates the files (and their folders) if needed and brings both schemas up to date.
pub(crate) async fn migrate_schema(settings: &DatabaseSettings) -> Result<Files, StoreError> {
    let path = settings
        .path()
        .map_err(|e| sqlx::Error::Configuration(e.to_string().into()))?;
    ensure_folder(&path)?;
    let log_path = settings
        .log_path()
        .map_err(|e| sqlx::Error::Configuration(e.to_string().into()))?;
    ensure_folder(&log_path)?;
    let creating = log_path.clone();
    blocking(move || {
        log::create(&creating).map_err(|source| StoreError::OpenLog {
            path: creating.display().to_string(),
            user: crate::config::process_user(),
            source,
        })
    })
    .await?;
    let options = connect_options(&path, settings.synchronous);
    let mut conn = options.connect().await.map_err(|source| StoreError::Open {
        path: path.display().to_string(),
        user: crate::config::process_user(),
        source,
    })?;
    MIGRATOR.run(&mut conn).await?;
    conn.close().await?;
    let (leads_path, moved_log) = (path.clone(), log_path.clone());
    let moved = blocking(move || maintenance::move_legacy_events(&leads_path, &moved_log)).await?;
    if moved > 0 {
        tracing::info!(
            deliveries = moved,
            "moved raw deliveries from the leads database into the delivery log"
        );
    }
    Ok(Files {
        leads: path,
        log: log_path,
        options,
    })
}

/// Applies migrations and closes: `ctwa-leads migrate`.
pub async fn migrate(settings: &DatabaseSettings) -> Result<(), StoreError> {
    migrate_schema(settings).await.map(drop)
}

/// Page cache, in KiB, of each read-pool connection (SQLite's default is 2,000). An export
/// takes each page of leads from whichever connection is free, so it fills every connection's
/// cache with pages it reads once; at the default that held ~8 MB more resident for as long
/// as the connections lived. The operating system's page cache keeps the file's hot pages
/// anyway, so a smaller cache per connection costs a `/v1` page a few more `pread` calls.
const READ_CACHE_KIB: u32 = 512;

/// Opens both databases, migrates them, and starts the writer, the projector and the upkeep.
pub async fn open(
    settings: &DatabaseSettings,
    ingest: &IngestSettings,
    retention: &RetentionSettings,
    routes: outbox::Routes,
) -> Result<(Store, WriterTask), StoreError> {
    let Files {
        leads: path,
        log: log_path,
        options,
    } = migrate_schema(settings).await?;
    let read_options = options
        .clone()
        .pragma("cache_size", format!("-{READ_CACHE_KIB}"))
        .create_if_missing(false)
        .pragma("query_only", "ON");
    // Its commits (forwarding and conversion outcomes, API writes) must not run the leads
    // file's checkpoint inside the write turn either: the checkpointer task does that.
    let write_options = options.clone().create_if_missing(false).pragma(
        "wal_autocheckpoint",
        writer::WRITER_AUTOCHECKPOINT_PAGES.to_string(),
    );
    let read = SqlitePoolOptions::new()
        .max_connections(settings.read_connections.max(1))
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(read_options)
        .await?;
    let write = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(write_options)
        .await?;
    let wake = outbox::Wake::default();
    let turns = Turns::default();
    let log_options = connect_options(&log_path, settings.synchronous);
    let healthy = Arc::new(AtomicBool::new(true));
    let progress = Arc::new(Progress::default());
    let stop = CancellationToken::new();
    let mut background = vec![tokio::spawn(checkpoint::run(
        log_options.clone(),
        checkpoint::LOG_EVERY,
        stop.clone(),
    ))];
    background.push(tokio::spawn(checkpoint::run(
        options.clone(),
        checkpoint::LEADS_EVERY,
        stop.clone(),
    )));
    if retention.raw_events_days > 0 {
        background.push(tokio::spawn(maintenance::prune_loop(
            log_options.clone(),
            retention.raw_events_days,
            Duration::from_secs(retention.interval_secs),
            progress.clone(),
            stop.clone(),
        )));
    }
    let max_batch = ingest.max_batch;
    let durability = settings.synchronous;
    let projector_stop = Arc::new(AtomicBool::new(false));
    let projector = projector::Projector::new(
        &log_path,
        &path,
        ingest.projection_batch,
        progress.clone(),
        projector_stop.clone(),
    )?
    .with_pace(Duration::from_millis(ingest.projection_pace_ms))
    .with_routes(routes, wake.clone())
    .with_turns(turns.clone());
    // The projector reads its watermark first: the writer numbers new log entries above it.
    let projected = projector.watermark();
    let (writer_healthy, writer_progress, writer_path) =
        (healthy.clone(), progress.clone(), log_path.clone());
    let writer = blocking(move || {
        Ok(writer::Writer::new(
            writer_path,
            durability,
            max_batch,
            writer_healthy,
            writer_progress,
            projected,
        )?)
    })
    .await?;
    let (writer, handle) = writer.spawn(ingest.queue_capacity, stop.clone())?;
    let projector = std::thread::Builder::new()
        .name("projector".into())
        .spawn(move || projector.run())?;
    let writeback = stop.child_token();
    writeback::spawn(
        vec![path.clone(), log_path.clone()],
        writeback::WalTail::new(&path),
        writeback.clone(),
    )?;
    Ok((
        Store {
            read,
            write,
            turns,
            wake,
            path,
            log_path,
            durability,
            progress: progress.clone(),
            writer,
            healthy,
        },
        WriterTask {
            handle,
            projector: Some(projector),
            projector_stop,
            progress,
            background,
            stop,
            _writeback: writeback.drop_guard(),
        },
    ))
}

/// How far the projection is behind the log, for `/readyz`.
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct Lag {
    /// Log entries durable but not yet turned into leads.
    pub entries: u64,
    /// Age of the oldest of them, in seconds.
    pub seconds: f64,
    /// The projector's last transaction failed (it retries).
    pub failing: bool,
}

/// How much each second of lag over the bound delays an acknowledgement: 100 ms per second.
const HOLD_BACK_PER_LAG_SECOND: f64 = 0.1;

/// How long to hold a new delivery back at `lag`: nothing under `above`, then in proportion to
/// the excess, at most `at_most`; nothing while the projector fails (waiting would not help
/// it). A closed loop of senders slows until the projector keeps up a little over `above`:
/// where 64 connections must slow by a few milliseconds each, the lag settles a few tens of
/// milliseconds over it, and many acknowledgements are a little late rather than a few very late.
pub fn hold_back_for(lag: &Lag, above: Duration, at_most: Duration) -> Option<Duration> {
    let excess = lag.seconds - above.as_secs_f64();
    if lag.failing || excess <= 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(excess * HOLD_BACK_PER_LAG_SECOND).min(at_most))
}

impl Store {
    /// Appends one verified delivery to the log; returns once it is durable.
    pub async fn ingest(&self, record: LogRecord) -> Result<(), IngestError> {
        self.writer.submit(record).await
    }

    /// How far the projection is behind.
    pub fn lag(&self) -> Lag {
        Lag {
            entries: self.progress.lag_entries(),
            seconds: self.progress.lag_seconds(),
            failing: self.progress.projector_failing.load(Ordering::Acquire),
        }
    }

    /// Waits until every entry durable now is projected, or `timeout` passes; returns whether
    /// it caught up. For tests and tools that read right after writing.
    pub async fn wait_projected(&self, timeout: Duration) -> bool {
        self.caught_up(timeout, false).await
    }

    /// Whether the projection reached every entry durable now within `timeout`. With
    /// `fail_fast`, a projector whose last round failed ends the wait at once (false).
    async fn caught_up(&self, timeout: Duration, fail_fast: bool) -> bool {
        let target = self.progress.durable.load(Ordering::Acquire);
        let deadline = tokio::time::Instant::now() + timeout;
        while self.progress.projected.load(Ordering::Acquire) < target {
            let failing = self.progress.projector_failing.load(Ordering::Acquire);
            if (fail_fast && failing) || tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    /// Log entries stored (each a delivery whose raw body is kept).
    pub async fn log_entries(&self) -> Result<u64, StoreError> {
        let path = self.log_path.clone();
        blocking(move || {
            let conn = open_log_reader(&path)?;
            let n: i64 = conn.query_row("SELECT COUNT(*) FROM log", [], |r| r.get(0))?;
            Ok(n as u64)
        })
        .await
    }

    pub fn log_path(&self) -> &std::path::Path {
        &self.log_path
    }

    /// Every log entry, oldest first, with its body as received: `(id, status, lead_count,
    /// body)`. For tests and tools; it reads the whole log.
    pub async fn raw_deliveries(&self) -> Result<Vec<(i64, String, i64, Vec<u8>)>, StoreError> {
        let path = self.log_path.clone();
        blocking(move || {
            let conn = open_log_reader(&path)?;
            let rows: Vec<(i64, i64, i64, i64, Vec<u8>)> = conn
                .prepare("SELECT id, status, lead_count, codec, body FROM log ORDER BY id")?
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut unpacker = log::Unpacker::new();
            rows.into_iter()
                .map(|(id, status, count, codec, body)| {
                    let body = unpacker.unpack(codec, body)?;
                    Ok((
                        id,
                        log::status_from_code(status).as_str().to_owned(),
                        count,
                        body,
                    ))
                })
                .collect()
        })
        .await
    }

    /// The database answers reads, and the writer's last commit succeeded.
    pub async fn ready(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && sqlx::query("SELECT 1").execute(&self.read).await.is_ok()
    }

    /// The read pool itself. The rest of the crate reads through this module's functions, which
    /// take the [`Store`]; the pool is public for what is this backend's own, a query plan
    /// ([`leads::page_plan`]), in the tests and the read-side benchmark.
    pub fn read_pool(&self) -> &SqlitePool {
        &self.read
    }

    /// The one connection for writes outside the projector (the outbox), once it is this
    /// caller's turn; hold the turn for one transaction only.
    pub(crate) async fn write_turn(&self) -> WriteTurn<'_> {
        WriteTurn {
            _turn: self.turns.take().await,
            pool: &self.write,
        }
    }

    pub(crate) fn turns(&self) -> &Turns {
        &self.turns
    }

    /// A read connection to the leads file of a forwarding worker's own.
    pub fn outbox_reader(&self) -> Result<outbox::Reader, StoreError> {
        Ok(outbox::Reader::open(&self.path)?)
    }

    /// Wakes the forwarding workers (deliveries became due).
    pub fn outbox_wake(&self) -> &outbox::Wake {
        &self.wake
    }

    /// Closes the pools; the writer closes its own connection when its queue ends.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

/// A store on fresh files in `dir`, as the service opens it (for the store's unit tests).
#[cfg(test)]
pub(crate) async fn test_store(dir: &std::path::Path) -> (Store, WriterTask) {
    let settings = crate::config::DatabaseSettings {
        url: format!("sqlite://{}/leads.db", dir.display()),
        ..Default::default()
    };
    open(
        &settings,
        &crate::config::IngestSettings::default(),
        &crate::config::RetentionSettings::default(),
        Default::default(),
    )
    .await
    .expect("open the store")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lag(seconds: f64, failing: bool) -> Lag {
        Lag {
            entries: 100,
            seconds,
            failing,
        }
    }

    #[test]
    fn a_delivery_is_held_back_in_proportion_to_the_lag_over_the_bound() {
        let (above, at_most) = (Duration::from_millis(500), Duration::from_secs(2));
        assert_eq!(hold_back_for(&lag(0.0, false), above, at_most), None);
        assert_eq!(hold_back_for(&lag(0.5, false), above, at_most), None);
        let a = hold_back_for(&lag(0.7, false), above, at_most).expect("held");
        let b = hold_back_for(&lag(2.5, false), above, at_most).expect("held");
        assert!((a.as_secs_f64() - 0.02).abs() < 1e-9, "{a:?}");
        assert!((b.as_secs_f64() - 0.2).abs() < 1e-9, "{b:?}");
        assert_eq!(
            hold_back_for(&lag(600.0, false), above, at_most),
            Some(at_most)
        );
        assert_eq!(hold_back_for(&lag(60.0, true), above, at_most), None);
    }
}
