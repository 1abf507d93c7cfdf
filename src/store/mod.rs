//! All SQL lives here. SQLite in WAL mode, with one write connection owned by the group-commit
//! [`writer`] and a separate read pool, so reads never block writes. `open` creates the file and
//! its folder, applies the embedded migrations, and starts the writer.

pub mod erasure;
pub mod leads;
pub mod maintenance;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, SqliteConnection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{DatabaseSettings, Durability, IngestSettings, RetentionSettings};
pub use writer::{IngestError, NewEvent};

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
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Handles to the database: cheap to clone.
#[derive(Clone)]
pub struct Store {
    read: SqlitePool,
    /// For work outside the ingest writer (erasure), on a connection of its own.
    path: PathBuf,
    durability: Durability,
    writer: writer::WriterHandle,
    healthy: Arc<AtomicBool>,
}

/// The writer task, stopped on shutdown.
pub struct WriterTask {
    handle: JoinHandle<()>,
    /// The checkpointer, and the retention pruner when enabled.
    background: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl WriterTask {
    /// Closes the queue, waits until the writer committed what it held, and closes its
    /// connection. Submissions after this get [`IngestError::Closed`].
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Err(err) = self.handle.await {
            tracing::error!(%err, "the writer task failed");
        }
        for task in self.background {
            if let Err(err) = task.await {
                tracing::error!(%err, "a background store task failed");
            }
        }
    }
}

/// Copies WAL frames into the database file from its own connection, so the writer's thread
/// spends its time on commits. PASSIVE never waits for, nor blocks, readers or the writer.
async fn checkpoint_loop(options: SqliteConnectOptions, stop: CancellationToken) {
    let mut conn: Option<SqliteConnection> = None;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(CHECKPOINT_EVERY) => {}
        }
        if conn.is_none() {
            conn = options.connect().await.ok();
        }
        let Some(c) = conn.as_mut() else { continue };
        match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut *c)
            .await
        {
            Ok(_) => failing = false,
            Err(err) => {
                if !failing {
                    tracing::warn!(%err, "WAL checkpoint failed; the writer's own checkpoints take over");
                }
                failing = true;
                conn = None;
            }
        }
    }
    if let Some(c) = conn {
        let _ = c.close().await;
    }
}

/// How often the checkpointer copies WAL frames into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

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

/// Creates the file (and its folder) if needed and brings the schema up to date; returns the
/// file's path and the options every sqlx connection (reads, checkpoints, retention) opens with.
pub(crate) async fn migrate_schema(
    settings: &DatabaseSettings,
) -> Result<(PathBuf, SqliteConnectOptions), StoreError> {
    let path = settings
        .path()
        .map_err(|e| sqlx::Error::Configuration(e.to_string().into()))?;
    ensure_folder(&path)?;
    let options = connect_options(&path, settings.synchronous);
    let mut conn = options.connect().await.map_err(|source| StoreError::Open {
        path: path.display().to_string(),
        user: crate::config::process_user(),
        source,
    })?;
    MIGRATOR.run(&mut conn).await?;
    conn.close().await?;
    Ok((path, options))
}

/// Applies migrations and closes: `ctwa-leads migrate`.
pub async fn migrate(settings: &DatabaseSettings) -> Result<(), StoreError> {
    migrate_schema(settings).await.map(drop)
}

/// Opens the database, migrates it, and starts the writer.
pub async fn open(
    settings: &DatabaseSettings,
    ingest: &IngestSettings,
    retention: &RetentionSettings,
) -> Result<(Store, WriterTask), StoreError> {
    let (path, options) = migrate_schema(settings).await?;
    let read_options = options
        .clone()
        .pragma("cache_size", "-2000")
        .create_if_missing(false)
        .pragma("query_only", "ON");
    let read = SqlitePoolOptions::new()
        .max_connections(settings.read_connections.max(1))
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(read_options)
        .await?;
    let healthy = Arc::new(AtomicBool::new(true));
    let stop = CancellationToken::new();
    let mut background = vec![tokio::spawn(checkpoint_loop(options.clone(), stop.clone()))];
    if retention.raw_events_days > 0 {
        background.push(tokio::spawn(maintenance::prune_loop(
            options.clone(),
            retention.raw_events_days,
            Duration::from_secs(retention.interval_secs),
            stop.clone(),
        )));
    }
    let max_batch = ingest.max_batch;
    let durability = settings.synchronous;
    let writer_healthy = healthy.clone();
    let writer_path = path.clone();
    let writer = tokio::task::spawn_blocking(move || {
        writer::Writer::new(writer_path, durability, max_batch, writer_healthy)
    })
    .await
    .map_err(|err| StoreError::Io(std::io::Error::other(err)))??;
    let (writer, handle) = writer.spawn(ingest.queue_capacity, stop.clone())?;
    Ok((
        Store {
            read,
            path,
            durability,
            writer,
            healthy,
        },
        WriterTask {
            handle,
            background,
            stop,
        },
    ))
}

impl Store {
    /// Stores one verified delivery and its leads; returns once they are committed.
    pub async fn ingest(
        &self,
        event: NewEvent,
        leads: Vec<crate::leads::extract::NewLead>,
    ) -> Result<(), IngestError> {
        self.writer.submit(event, leads).await
    }

    /// The database answers reads, and the writer's last commit succeeded.
    pub async fn ready(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && sqlx::query("SELECT 1").execute(&self.read).await.is_ok()
    }

    pub fn read_pool(&self) -> &SqlitePool {
        &self.read
    }

    /// Closes the read pool; the writer closes its own connection when its queue ends.
    pub async fn close(&self) {
        self.read.close().await;
    }
}
