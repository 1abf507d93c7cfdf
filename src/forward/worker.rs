//! One destination's worker: takes due deliveries from the outbox in order, keeps at most
//! `max_in_flight` requests open, records each outcome (in batches), and waits for whatever
//! comes first: a send finishing, new deliveries, the next scheduled retry, or shutdown. Each
//! destination has its own worker and HTTP client, so a slow or dead one never delays another.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::attempt::{self, Target, Verdict};
use super::signing::Signer;
use super::DestinationState;
use crate::store::outbox::{self, Attempted, Due, Mark};
use crate::store::Store;

/// The longest a worker sleeps without looking at the outbox (a safety net; it is woken).
const POLL: Duration = Duration::from_secs(1);
/// On shutdown, how long requests in flight may take to finish; the rest stay pending and are
/// sent again (same `webhook-id`) after the restart.
const DRAIN: Duration = Duration::from_secs(5);
/// How often failures that exhausted the schedule are summarised in the log, at most.
const FAILED_LOG_EVERY: Duration = Duration::from_secs(10);

pub(super) struct Worker {
    pub state: Arc<DestinationState>,
    pub client: reqwest::Client,
    pub signer: Signer,
    pub schedule: Arc<[Duration]>,
    pub store: Store,
}

struct Finished {
    id: i64,
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
        let mut in_flight: HashSet<i64> = HashSet::new();
        let mut sends: JoinSet<Finished> = JoinSet::new();
        let mut finished: Vec<Finished> = Vec::new();
        let mut paused_until: Option<Instant> = None;
        let mut failing = false;
        let mut failed_since_log = 0_u64;
        let mut last_failed_log = Instant::now();
        let mut drain_deadline: Option<Instant> = None;
        loop {
            while let Some(done) = sends.try_join_next() {
                if let Ok(done) = done {
                    finished.push(done);
                }
            }
            if !finished.is_empty() {
                let marks: Vec<Attempted> = finished
                    .iter()
                    .map(|f| Attempted {
                        delivery_id: f.id,
                        mark: f.mark.clone(),
                    })
                    .collect();
                match outbox::record(self.store.write_pool(), &marks, now_ms()).await {
                    Ok(()) => {
                        for f in finished.drain(..) {
                            in_flight.remove(&f.id);
                            self.observe(
                                &f,
                                &mut failing,
                                &mut failed_since_log,
                                &mut paused_until,
                            );
                        }
                    }
                    Err(err) => {
                        // Kept, and recorded on the next round; their ids stay in flight, so
                        // they are not sent twice meanwhile.
                        tracing::warn!(destination = %name, %err, "could not record forwarding attempts; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            if failed_since_log > 0 && last_failed_log.elapsed() >= FAILED_LOG_EVERY {
                tracing::warn!(destination = %name, deliveries = failed_since_log, "forwarding deliveries failed for good (retry schedule exhausted); see GET /v1/deliveries?status=failed");
                failed_since_log = 0;
                last_failed_log = Instant::now();
            }
            let stopping = drain_deadline.is_some();
            if stopping && in_flight.is_empty() {
                break;
            }
            let mut next_look = Instant::now() + POLL;
            let gone = self.state.gone.load(Ordering::Acquire);
            let paused = paused_until.is_some_and(|p| p > Instant::now());
            if let Some(p) = paused_until.filter(|_| paused) {
                next_look = next_look.min(p);
            }
            if !stopping && !gone && !paused && in_flight.len() < max {
                let now = now_ms();
                match outbox::due(self.store.read_pool(), &name, now, max + in_flight.len()).await {
                    Ok(due) => {
                        for d in due {
                            if in_flight.len() >= max {
                                break;
                            }
                            if in_flight.insert(d.delivery_id) {
                                sends.spawn(self.attempt(d));
                            }
                        }
                        if in_flight.len() < max {
                            if let Ok(Some(at)) =
                                outbox::next_due(self.store.read_pool(), &name, now).await
                            {
                                let wait = Duration::from_millis((at - now).max(0) as u64);
                                next_look = next_look.min(Instant::now() + wait);
                            }
                        }
                    }
                    Err(err) => {
                        tracing::warn!(destination = %name, %err, "could not read the outbox; retrying");
                    }
                }
            }
            if let Some(deadline) = drain_deadline {
                next_look = next_look.min(deadline);
            }
            tokio::select! {
                Some(done) = sends.join_next(), if !sends.is_empty() => {
                    if let Ok(done) = done {
                        finished.push(done);
                    }
                }
                changed = wake.changed(), if !stopping => {
                    if changed.is_err() {
                        tokio::time::sleep(POLL).await;
                    }
                }
                _ = tokio::time::sleep_until(next_look) => {
                    if drain_deadline.is_some_and(|d| Instant::now() >= d) {
                        if !in_flight.is_empty() {
                            tracing::info!(destination = %name, requests = in_flight.len(), "stopping with forwarding requests unanswered; they are sent again (same webhook-id) after the restart");
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
        while let Some(done) = sends.try_join_next() {
            if let Ok(done) = done {
                finished.push(done);
            }
        }
        if !finished.is_empty() {
            let marks: Vec<Attempted> = finished
                .iter()
                .map(|f| Attempted {
                    delivery_id: f.id,
                    mark: f.mark.clone(),
                })
                .collect();
            if let Err(err) = outbox::record(self.store.write_pool(), &marks, now_ms()).await {
                tracing::warn!(destination = %name, %err, "could not record the last forwarding attempts; they are sent again after the restart");
            }
        }
        tracing::debug!(destination = %name, "forwarding worker stopped");
    }

    /// The future that sends one delivery.
    fn attempt(&self, due: Due) -> impl std::future::Future<Output = Finished> + Send + 'static {
        let client = self.client.clone();
        let signer = self.signer.clone();
        let schedule = self.schedule.clone();
        let url = self.state.settings.url.clone();
        let timeout = self.state.settings.timeout;
        async move {
            let started = std::time::Instant::now();
            let target = Target {
                client: &client,
                url: &url,
                signer: &signer,
                timeout,
                schedule: &schedule,
            };
            let (mark, verdict) = attempt::send(&target, &due).await;
            Finished {
                id: due.delivery_id,
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
