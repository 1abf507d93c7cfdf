//! The eraser: one task that carries out erasure requests one at a time, oldest first. It
//! resumes at start-up what a restart cut short, and retries what could not be done yet (the
//! projection behind the log, the database failing) after a pause that doubles up to a minute.
//! Handlers wake it when they record a request, and wait for it through [`Erasures::wait`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::erasure_requests::{self, ErasureRow};
use crate::store::{Store, StoreError};

/// How long one attempt waits for the projection to catch up with the log.
const CATCH_UP: Duration = Duration::from_secs(10);
/// The pause after a failed attempt, doubled each time up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const MAX_PAUSE: Duration = Duration::from_secs(60);
/// How often the eraser looks for requests without being woken (a safety net: each request
/// wakes it).
const POLL: Duration = Duration::from_secs(30);

/// What handlers share with the eraser: a wake-up, and a count of the attempts it has made.
#[derive(Clone)]
pub struct Erasures {
    wake: Arc<Notify>,
    attempted: Arc<watch::Sender<u64>>,
}

impl Default for Erasures {
    fn default() -> Self {
        Self {
            wake: Arc::new(Notify::new()),
            attempted: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl Erasures {
    /// Tells the eraser a request was recorded.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Request `id` once it is done or an attempt at it has failed (its `last_error` says why),
    /// else as it stands when `within` has passed.
    pub async fn wait(
        &self,
        store: &Store,
        id: i64,
        within: Duration,
    ) -> Result<ErasureRow, sqlx::Error> {
        let deadline = tokio::time::Instant::now() + within;
        // Subscribed before the first read, so that an attempt ended in between still wakes.
        let mut attempted = self.attempted.subscribe();
        loop {
            let row = erasure_requests::by_id(store, id)
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            if row.finished_at.is_some() || row.last_error.is_some() {
                return Ok(row);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(row);
            }
            // Woken by an attempt's end, or at the deadline: either way the row is read again,
            // so that the answer shows the request as it stands (begun, say).
            if let Ok(Err(_)) = tokio::time::timeout_at(deadline, attempted.changed()).await {
                // The eraser is gone (a shutdown): nothing more will change.
                return erasure_requests::by_id(store, id)
                    .await?
                    .ok_or(sqlx::Error::RowNotFound);
            }
        }
    }
}

/// The running eraser; stopped with [`Eraser::shutdown`].
pub struct Eraser {
    task: JoinHandle<()>,
    stop: CancellationToken,
}

impl Eraser {
    pub fn start(store: Store, erasures: Erasures) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(store, erasures, stop.clone()));
        Self { task, stop }
    }

    /// Stops between two pages of the log's search; the request in hand stays pending and is
    /// resumed after the next start.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Err(err) = self.task.await {
            tracing::error!(%err, "the eraser failed");
        }
    }
}

async fn run(store: Store, erasures: Erasures, stop: CancellationToken) {
    let mut pause = FIRST_PAUSE;
    while !stop.is_cancelled() {
        let now = chrono::Utc::now().timestamp_millis();
        report_backlog(&store, now).await;
        let request = match erasure_requests::take_next(&store, now).await {
            Ok(Some(request)) => request,
            Ok(None) => {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = erasures.wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
                continue;
            }
            Err(err) => {
                tracing::warn!(%err, "could not read the erasure requests; retrying");
                if pause_or_stop(&stop, &mut pause).await {
                    break;
                }
                continue;
            }
        };
        // A shutdown does not wait for the projection to catch up: the attempt is dropped
        // (its search stops at the next page; each of its steps is one transaction).
        let outcome = tokio::select! {
            _ = stop.cancelled() => break,
            outcome = store.erase_contact(&request, CATCH_UP, &stop) => outcome,
        };
        match outcome {
            Ok(erased) => {
                // The audit trail: that an erasure happened and what it removed, never whose.
                tracing::info!(
                    target: "audit",
                    erasure = request.id,
                    leads = erased.leads,
                    raw_deliveries = erased.raw_deliveries,
                    unreadable_raw_deliveries = erased.unreadable_raw_deliveries,
                    "erasure request carried out"
                );
                crate::monitor::erasure_attempt("done");
                erasures.attempted.send_modify(|n| *n += 1);
                pause = FIRST_PAUSE;
            }
            Err(StoreError::Interrupted) => break,
            Err(err) => {
                let why = match err {
                    StoreError::ProjectionBehind => {
                        "waiting for the projection to catch up with the log".to_owned()
                    }
                    err => err.to_string(),
                };
                tracing::warn!(
                    erasure = request.id,
                    error = %why,
                    retry_in_ms = pause.as_millis() as u64,
                    "an erasure could not be carried out yet; it stays pending"
                );
                if let Err(err) = erasure_requests::attempt_failed(&store, request.id, &why).await {
                    tracing::warn!(%err, erasure = request.id, "could not record why");
                }
                crate::monitor::erasure_attempt("retry");
                erasures.attempted.send_modify(|n| *n += 1);
                if pause_or_stop(&stop, &mut pause).await {
                    break;
                }
            }
        }
    }
}

/// Sets the backlog's gauges: before each attempt, and at least every [`POLL`] when idle.
async fn report_backlog(store: &Store, now_ms: i64) {
    match erasure_requests::backlog(store).await {
        Ok((pending, oldest)) => {
            let age = oldest.map_or(0.0, |at| (now_ms - at).max(0) as f64 / 1000.0);
            crate::monitor::erasures_pending(pending, age);
        }
        Err(err) => tracing::debug!(%err, "could not count the erasure requests"),
    }
}

/// Sleeps `pause` (then doubles it), unless stopped first: true when stopped.
async fn pause_or_stop(stop: &CancellationToken, pause: &mut Duration) -> bool {
    let stopped = tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(*pause) => false,
    };
    *pause = (*pause * 2).min(MAX_PAUSE);
    stopped
}
