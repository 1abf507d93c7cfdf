//! One destination's worker: takes due deliveries from the outbox in order (read on a
//! connection of its own, beside the sends), keeps at most `max_in_flight` requests open,
//! records each outcome (in batches), and waits for whatever comes first: a send finishing, new
//! deliveries, the next scheduled retry, or shutdown. Each destination has its own worker and
//! HTTP client, so a slow or dead one never delays another.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::attempt::{self, Target, Verdict};
use super::DestinationState;
use crate::store::outbox::{self, Attempted, Due, Mark, Reader};
use crate::store::Store;

/// The longest a worker sleeps without looking at the outbox (a safety net; it is woken).
const POLL: Duration = Duration::from_secs(1);
/// On shutdown, how long requests in flight may take to finish; the rest stay pending and are
/// sent again (same `webhook-id`) after the restart.
const DRAIN: Duration = Duration::from_secs(5);
/// Due deliveries read from the outbox at a time (kept in a buffer and sent as room frees up).
const FETCH: usize = 512;
/// Finished attempts are recorded in one transaction once this many are waiting…
const RECORD_BATCH: usize = 256;
/// …or once the oldest has waited this long (or nothing else is in flight).
const RECORD_EVERY: Duration = Duration::from_millis(20);
/// After a recording transaction failed, when it is tried again.
const RECORD_RETRY: Duration = Duration::from_millis(200);
/// How often failures that exhausted the schedule are summarised in the log, at most.
const FAILED_LOG_EVERY: Duration = Duration::from_secs(10);

pub(super) struct Worker {
    pub state: Arc<DestinationState>,
    /// What every attempt shares (client, URL, signer, schedule): one `Arc` per send.
    pub target: Arc<Target>,
    pub store: Store,
}

struct Finished {
    id: i64,
    webhook_id: String,
    mark: Mark,
    verdict: Verdict,
    elapsed: Duration,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Worker {
    pub(super) async fn run(self, stop: CancellationToken) {
        let name = self.state.settings.name.clone();
        let max = self.state.settings.max_in_flight;
        let mut wake = self.store.outbox_wake().subscribe();
        // Every delivery this worker holds: buffered, being sent, or sent and not yet recorded.
        // Rows the outbox still shows as pending but which are held here are never sent twice.
        let mut held: HashSet<i64> = HashSet::new();
        let mut buffer: VecDeque<Due> = VecDeque::new();
        let mut sends: JoinSet<Finished> = JoinSet::new();
        let mut finished: Vec<Finished> = Vec::new();
        let mut flush_at: Option<Instant> = None;
        // Whether the outbox may hold due rows this worker has not read yet.
        let mut maybe_more = true;
        // The highest delivery id read so far: new deliveries are read upward from it, cheaply.
        // `None` (at start, and at `rescan_at`) reads everything due again, retries included.
        let mut cursor: Option<i64> = None;
        let mut rescan_at = Instant::now();
        let mut rescans_seen = wake.borrow().rescans;
        let mut paused_until: Option<Instant> = None;
        let mut failing = false;
        let mut failed_since_log = 0_u64;
        let mut last_failed_log = Instant::now();
        let mut drain_deadline: Option<Instant> = None;
        // One recording transaction at a time runs beside the sends (it may wait for its turn
        // at the write lock behind a projector round), so sending never stops for it.
        let mut recording: Option<JoinHandle<Recorded>> = None;
        let mut recorded: Option<Recorded> = None;
        // One outbox read at a time, also beside the sends, on the worker's own connection
        // (away while a read runs).
        let mut reading: Option<JoinHandle<Read>> = None;
        let mut reader = open_reader(&self.store, &name);
        loop {
            while let Some(done) = sends.try_join_next() {
                if let Ok(done) = done {
                    flush_at.get_or_insert_with(|| Instant::now() + RECORD_EVERY);
                    finished.push(done);
                }
            }
            // A read in flight may have seen rows as still pending that this batch has since
            // recorded; they stay held until that read is handled, so they are not sent twice.
            if let Some((batch, result)) = recorded.take_if(|_| reading.is_none()) {
                match result {
                    Ok(()) => {
                        let now = now_ms();
                        for f in batch {
                            held.remove(&f.id);
                            if let Mark::Retry { at_ms, .. } = f.mark {
                                // Below the cursor: found again by a rescan at its time.
                                let wait = Duration::from_millis((at_ms - now).max(0) as u64);
                                rescan_at = rescan_at.min(Instant::now() + wait);
                            }
                            self.observe(
                                &f,
                                &mut failing,
                                &mut failed_since_log,
                                &mut paused_until,
                            );
                        }
                    }
                    Err(err) => {
                        // Kept, and recorded again shortly; their ids stay held, so they are
                        // not sent twice meanwhile.
                        tracing::warn!(destination = %name, %err, "could not record forwarding attempts; retrying");
                        finished.extend(batch);
                        flush_at = Some(Instant::now() + RECORD_RETRY);
                    }
                }
            }
            let stopping = drain_deadline.is_some();
            // (Not while the last batch's outcome waits to be handled.)
            let flush = recording.is_none()
                && recorded.is_none()
                && !finished.is_empty()
                && (finished.len() >= RECORD_BATCH
                    || sends.is_empty()
                    || stopping
                    || flush_at.is_some_and(|at| at <= Instant::now()));
            if flush {
                let batch = std::mem::take(&mut finished);
                let store = self.store.clone();
                flush_at = None;
                recording = Some(tokio::spawn(async move {
                    let result = record(&store, &batch).await.map_err(|e| e.to_string());
                    (batch, result)
                }));
            }
            if failed_since_log > 0 && last_failed_log.elapsed() >= FAILED_LOG_EVERY {
                tracing::warn!(destination = %name, deliveries = failed_since_log, "forwarding deliveries failed for good (retry schedule exhausted); see GET /v1/deliveries?status=failed");
                failed_since_log = 0;
                last_failed_log = Instant::now();
            }
            if stopping
                && sends.is_empty()
                && finished.is_empty()
                && recording.is_none()
                && recorded.is_none()
            {
                break;
            }
            let mut next_look = Instant::now() + POLL;
            let gone = self.state.gone.load(Ordering::Acquire);
            let paused = paused_until.is_some_and(|p| p > Instant::now());
            if let Some(p) = paused_until.filter(|_| paused) {
                next_look = next_look.min(p);
            }
            if gone || paused || stopping {
                // Buffered deliveries stay pending in the outbox; they are read again later.
                for d in buffer.drain(..) {
                    held.remove(&d.delivery_id);
                }
                cursor = None;
                maybe_more = true;
            } else {
                if Instant::now() >= rescan_at {
                    cursor = None;
                    maybe_more = true;
                }
                // Reads run beside the sends, and start while the buffer still holds a full
                // read's worth, so the sends never wait for the outbox.
                if reading.is_none() && maybe_more && buffer.len() < FETCH {
                    maybe_more = false;
                    let (after, limit) = match cursor {
                        Some(after) => (Some(after), FETCH),
                        None => {
                            rescan_at = Instant::now() + POLL;
                            (None, held.len() + FETCH)
                        }
                    };
                    if reader.is_none() {
                        reader = open_reader(&self.store, &name);
                    }
                    reading = reader
                        .take()
                        .map(|reader| read_due(reader, name.clone(), after, limit));
                }
                while sends.len() < max {
                    let Some(d) = buffer.pop_front() else { break };
                    sends.spawn(self.attempt(d));
                }
            }
            if let Some(deadline) = drain_deadline {
                next_look = next_look.min(deadline);
            }
            if let Some(at) = flush_at {
                next_look = next_look.min(at);
            }
            if buffer.is_empty() {
                next_look = next_look.min(rescan_at);
            }
            tokio::select! {
                done = finished_task(&mut recording), if recording.is_some() => {
                    recording = None;
                    recorded = Some(done.unwrap_or_else(|err| {
                        (Vec::new(), Err(format!("the recording task failed: {err}")))
                    }));
                }
                read = finished_task(&mut reading), if reading.is_some() => {
                    reading = None;
                    let read = match read {
                        Ok((back, read)) => {
                            reader = Some(back);
                            read
                        }
                        Err(err) => {
                            // The connection went with the task: open another.
                            reader = open_reader(&self.store, &name);
                            Err(format!("the read task failed: {err}"))
                        }
                    };
                    match read {
                        Ok((due, full, next)) => {
                            for d in due {
                                cursor = Some(cursor.unwrap_or(0).max(d.delivery_id));
                                if held.insert(d.delivery_id) {
                                    buffer.push_back(d);
                                }
                            }
                            // A full read may have left more behind.
                            maybe_more |= full;
                            if let Some(at) = next {
                                // The due rows are all here; sleep until the next one falls due.
                                let wait = Duration::from_millis((at - now_ms()).max(0) as u64);
                                rescan_at = rescan_at.min(Instant::now() + wait);
                            }
                        }
                        Err(err) => {
                            // Read again at the next wake-up or poll, not in a tight loop.
                            tracing::warn!(destination = %name, %err, "could not read the outbox; retrying");
                        }
                    }
                }
                Some(done) = sends.join_next(), if !sends.is_empty() => {
                    if let Ok(done) = done {
                        flush_at.get_or_insert_with(|| Instant::now() + RECORD_EVERY);
                        finished.push(done);
                    }
                }
                changed = wake.changed(), if !stopping => {
                    maybe_more = true;
                    let rescans = wake.borrow_and_update().rescans;
                    if rescans != rescans_seen {
                        rescans_seen = rescans;
                        rescan_at = Instant::now();
                    }
                    if changed.is_err() {
                        tokio::time::sleep(POLL).await;
                    }
                }
                _ = tokio::time::sleep_until(next_look) => {
                    maybe_more = true;
                    if drain_deadline.is_some_and(|d| Instant::now() >= d) {
                        if !sends.is_empty() {
                            tracing::info!(destination = %name, requests = sends.len(), "stopping with forwarding requests unanswered; they are sent again (same webhook-id) after the restart");
                        }
                        sends.abort_all();
                        break;
                    }
                }
                _ = stop.cancelled(), if !stopping => {
                    drain_deadline = Some(Instant::now() + DRAIN);
                }
            }
        }
        // Whatever finished while draining is recorded before the worker ends.
        if let Some((batch, Err(_))) = recorded.take() {
            finished.extend(batch);
        }
        if let Some(handle) = recording.take() {
            if let Ok((batch, Err(_))) = handle.await {
                finished.extend(batch);
            }
        }
        while let Some(done) = sends.try_join_next() {
            if let Ok(done) = done {
                finished.push(done);
            }
        }
        if !finished.is_empty() {
            if let Err(err) = record(&self.store, &finished).await {
                tracing::warn!(destination = %name, %err, "could not record the last forwarding attempts; they are sent again after the restart");
            }
        }
        tracing::debug!(destination = %name, "forwarding worker stopped");
    }

    /// The future that sends one delivery.
    fn attempt(&self, due: Due) -> impl std::future::Future<Output = Finished> + Send + 'static {
        let target = self.target.clone();
        async move {
            let started = std::time::Instant::now();
            let id = due.delivery_id;
            let webhook_id = due.webhook_id.clone();
            let (mark, verdict) = attempt::send(&target, due).await;
            Finished {
                id,
                webhook_id,
                mark,
                verdict,
                elapsed: started.elapsed(),
            }
        }
    }

    /// Logs state changes (not every failure), pauses on `Retry-After`, disables on 410, and
    /// counts.
    fn observe(
        &self,
        f: &Finished,
        failing: &mut bool,
        failed_since_log: &mut u64,
        paused_until: &mut Option<Instant>,
    ) {
        let name = &self.state.settings.name;
        let outcome = match (&f.mark, &f.verdict) {
            (Mark::Succeeded { .. }, _) => "succeeded",
            (_, Verdict::Gone) => "gone",
            (Mark::Failed { .. }, _) => "failed",
            _ => "retry",
        };
        crate::monitor::forward_attempt(name, outcome, f.elapsed);
        match (&f.mark, &f.verdict) {
            (Mark::Succeeded { .. }, _) if *failing => {
                tracing::info!(destination = %name, "forwarding recovered: the destination accepts deliveries again");
                *failing = false;
            }
            (Mark::Held { error, .. }, Verdict::Gone)
                if !self.state.gone.swap(true, Ordering::AcqRel) =>
            {
                crate::monitor::forward_disabled(name, true);
                tracing::error!(destination = %name, %error, "FORWARDING DISABLED: the destination answered 410 Gone; its deliveries stay pending. Fix or remove it in the config and restart");
            }
            (Mark::Retry { error, code, .. } | Mark::Failed { error, code }, verdict) => {
                if matches!(f.mark, Mark::Failed { .. }) {
                    *failed_since_log += 1;
                }
                if let Verdict::Pause(wait) = verdict {
                    let until = Instant::now() + *wait;
                    if paused_until.is_none_or(|p| p < until) {
                        *paused_until = Some(until);
                        tracing::warn!(destination = %name, status = code, wait_secs = wait.as_secs(), "the destination asked to wait (Retry-After); pausing it");
                    }
                }
                if !*failing {
                    *failing = true;
                    tracing::warn!(destination = %name, status = code, %error, "forwarding failing: retrying on the schedule");
                }
            }
            _ => {}
        }
    }
}

/// The task's result once it ends; never, while there is none (for a `select!` arm guarded by
/// `is_some()`).
async fn finished_task<T>(task: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match task.as_mut() {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// An outbox read: the reader back, then the due deliveries, whether the read was full (more
/// may be due), and when the next pending one falls due if it was not.
type Read = (Reader, Result<(Vec<Due>, bool, Option<i64>), String>);

/// Reads up to `limit` due deliveries on the blocking pool: those above `after` in id order
/// (what arrived since the last look), or with no `after` everything due, retries included,
/// oldest due first.
fn read_due(reader: Reader, name: String, after: Option<i64>, limit: usize) -> JoinHandle<Read> {
    tokio::task::spawn_blocking(move || {
        let now = now_ms();
        let read = || {
            let due = match after {
                Some(after) => reader.due_after(&name, after, now, limit)?,
                None => reader.due(&name, now, limit)?,
            };
            let full = due.len() >= limit;
            let next = if full {
                None
            } else {
                reader.next_due(&name, now).ok().flatten()
            };
            Ok::<_, crate::store::StoreError>((due, full, next))
        };
        let result = read().map_err(|e| e.to_string());
        (reader, result)
    })
}

/// The worker's read connection, or `None` (logged) when it could not be opened: then it
/// tries again on its next look.
fn open_reader(store: &Store, name: &str) -> Option<Reader> {
    store
        .outbox_reader()
        .inspect_err(|err| tracing::warn!(destination = %name, %err, "could not open a read connection to the outbox; retrying"))
        .ok()
}

/// A recorded batch, and whether its transaction committed.
type Recorded = (Vec<Finished>, Result<(), String>);

/// Records finished attempts in one transaction, in its turn at the leads file's write lock.
async fn record(store: &Store, finished: &[Finished]) -> Result<(), sqlx::Error> {
    let marks: Vec<Attempted> = finished
        .iter()
        .map(|f| Attempted {
            delivery_id: f.id,
            webhook_id: f.webhook_id.clone(),
            mark: f.mark.clone(),
        })
        .collect();
    outbox::record(store, &marks, now_ms()).await
}
