//! All SQL lives here. SQLite in WAL mode, with one write connection owned by the group-commit
//! [`writer`] and a separate read pool, so reads never block writes. `open` creates the file and
//! its folder, applies the embedded migrations, and starts the writer.

pub mod leads;
pub mod writer;

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, SqliteConnection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{DatabaseSettings, IngestSettings};
pub use writer::{IngestError, NewEvent};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the database folder {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Handles to the database: cheap to clone.
#[derive(Clone)]
pub struct Store {
    read: SqlitePool,
    writer: writer::WriterHandle,
    healthy: Arc<AtomicBool>,
}

/// The writer task, stopped on shutdown.
pub struct WriterTask {
    handle: JoinHandle<()>,
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
    }
}

fn connect_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: an acknowledged lead survives power loss, not just a process crash. Group commit
        // makes the extra fsync per batch cheap (see the README's performance section).
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(false)
        .disable_statement_logging()
}

fn ensure_folder(path: &Path) -> Result<(), StoreError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Folder {
                path: dir.display().to_string(),
                source,
            })
        }
        _ => Ok(()),
    }
}

/// Opens the write connection and brings the schema up to date.
async fn open_writer(
    settings: &DatabaseSettings,
) -> Result<(SqliteConnection, SqliteConnectOptions), StoreError> {
    let path = settings
        .path()
        .map_err(|e| sqlx::Error::Configuration(e.to_string().into()))?;
    ensure_folder(&path)?;
    let options = connect_options(&path);
    let mut conn = options.connect().await?;
    MIGRATOR.run(&mut conn).await?;
    Ok((conn, options))
}

/// Applies migrations and closes: `ctwa-leads migrate`.
pub async fn migrate(settings: &DatabaseSettings) -> Result<(), StoreError> {
    let (conn, _) = open_writer(settings).await?;
    conn.close().await?;
    Ok(())
}

/// Opens the database, migrates it, and starts the writer.
pub async fn open(
    settings: &DatabaseSettings,
    ingest: &IngestSettings,
) -> Result<(Store, WriterTask), StoreError> {
    let (conn, options) = open_writer(settings).await?;
    let read_options = options
        .clone()
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
    let (writer, handle) = writer::Writer::new(conn, options, ingest.max_batch, healthy.clone())
        .await?
        .spawn(ingest.queue_capacity, stop.clone());
    Ok((
        Store {
            read,
            writer,
            healthy,
        },
        WriterTask { handle, stop },
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

/// Parses a connection URL without opening it, for error messages at start-up.
pub fn check_url(url: &str) -> Result<(), sqlx::Error> {
    SqliteConnectOptions::from_str(url).map(|_| ())
}
