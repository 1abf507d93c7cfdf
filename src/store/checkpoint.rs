//! The checkpointers: one loop per SQLite file copies its WAL frames into the database file
//! from a connection of its own, on a timer, so that the file's writer (the log's group-commit
//! writer, or the projector for the leads) spends its time on commits rather than on
//! checkpoints. The writers keep SQLite's autocheckpoint for what is left: under steady load a
//! commit lands while this loop copies, so only theirs completes and lets the WAL start over.

use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, SqliteConnection};
use tokio_util::sync::CancellationToken;

/// Copies WAL frames into the database file from its own connection, so that the writer of
/// that file (the log's writer, or the projector for the leads) spends its time on commits.
/// PASSIVE never waits for, nor blocks, readers or the writer. The writers keep an
/// autocheckpoint for what this leaves (see the module's note).
pub(super) async fn run(options: SqliteConnectOptions, every: Duration, stop: CancellationToken) {
    let mut conn: Option<SqliteConnection> = None;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
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

/// How often the checkpointer copies the log's WAL frames into its database file.
pub(super) const LOG_EVERY: Duration = Duration::from_millis(200);
/// The same for the leads file. Left to the projector's autocheckpoint, each checkpoint (tens
/// of MB of random index pages under load) stalled projection for its length: at 64
/// connections the lag p99 was 0.7–2.7 s, against 0.53–0.69 s with this loop (interleaved
/// runs of 20–30 s on one machine, in issue 12's note). A shorter period writes more, since
/// an index page is copied once per checkpoint: 250 ms cost ~22 KB per delivery, against ~16
/// without the loop and ~18–20 at one second. Two seconds, against one (three interleaved pairs
/// of 20–25 s at 64 connections, after the contact indexes' ranges shrank): the checkpointer
/// wrote 1.8–2.2 KB per delivery instead of 2.8–3.0, 0.5 KB less in all; throughput, lag p99
/// (0.41–0.44 s), peak RSS and the leads WAL's high-water mark (~0.1 GB) did not grow.
pub(super) const LEADS_EVERY: Duration = Duration::from_secs(2);
