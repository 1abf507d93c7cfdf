//! The Conversions API sender: one task that takes due conversion events from the outbox, up
//! to [`MAX_BATCH`] per request, posts them to `{graph}/{dataset_id}/events`, and records what
//! happened. A batch Meta rejects with a client error is split in halves until the bad event is
//! alone, so only it fails (Meta rejects a whole request for one invalid event). Server errors,
//! time-outs and Graph's rate-limit codes are retried on the forwarding schedule, but never past
//! the 7-day window: an event that would be older than that at its next attempt fails instead.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{event_json, within_window, MAX_BATCH, TIMEOUT};
use crate::config::{CapiSettings, GraphSettings};
use crate::store::conversions::{self, DueConversion, GraphError, Outcome};
use crate::store::Store;

/// The longest the sender sleeps without looking at the outbox (it is woken).
const POLL: Duration = Duration::from_secs(5);
/// After being woken, how long to wait for company, so that events queued together go in one
/// request.
const GATHER: Duration = Duration::from_millis(50);
/// Characters of Graph's message kept.
const MESSAGE_CHARS: usize = 500;
/// Bytes of a response read, at most.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Graph error codes that mean "later", not "never": unknown/temporary errors and rate limits.
const TRANSIENT_CODES: &[i64] = &[1, 2, 4, 17, 32, 341, 613, 80004];

/// The running sender; stopped with [`Sender::shutdown`].
pub struct Sender {
    task: Option<JoinHandle<()>>,
    stop: CancellationToken,
}

struct Worker {
    client: reqwest::Client,
    url: String,
    token: SecretString,
    test_event_code: Option<String>,
    /// The WABA to name when a lead's own is unknown.
    waba_id: String,
    schedule: Arc<[Duration]>,
    store: Store,
}

/// How a request went.
enum Answer {
    Accepted {
        fbtrace_id: Option<String>,
    },
    /// A client error: something in the batch is wrong.
    Rejected(GraphError),
    /// Worth trying again later.
    Transient(GraphError),
}

impl Sender {
    /// Starts the sender when `capi.dataset_id` is set; otherwise nothing runs.
    pub fn start(
        capi: &CapiSettings,
        graph: &GraphSettings,
        schedule: &[Duration],
        store: Store,
    ) -> Result<Self, reqwest::Error> {
        let stop = CancellationToken::new();
        let Some(dataset) = &capi.dataset_id else {
            return Ok(Self { task: None, stop });
        };
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let worker = Worker {
            client,
            url: format!("{}/{}/{dataset}/events", graph.base_url, graph.api_version),
            token: graph.access_token.clone(),
            test_event_code: capi.test_event_code.clone(),
            waba_id: graph.waba_id.clone(),
            schedule: schedule.to_vec().into(),
            store,
        };
        let task = tokio::spawn(worker.run(stop.clone()));
        Ok(Self {
            task: Some(task),
            stop,
        })
    }

    /// Stops after the request in flight, if any, is recorded.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Some(task) = self.task {
            if let Err(err) = task.await {
                tracing::error!(%err, "the conversions sender failed");
            }
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Worker {
    async fn run(self, stop: CancellationToken) {
        let mut wake = self.store.outbox_wake().subscribe();
        loop {
            if stop.is_cancelled() {
                break;
            }
            let now = now_ms();
            let due = match conversions::due(&self.store, now, MAX_BATCH).await {
                Ok(due) => due,
                Err(err) => {
                    tracing::warn!(%err, "could not read the conversions outbox; retrying");
                    Vec::new()
                }
            };
            if !due.is_empty() {
                let full = due.len() == MAX_BATCH;
                let outcomes = self.send(due).await;
                self.record(&outcomes).await;
                if full {
                    continue;
                }
            }
            let next = match conversions::next_due(&self.store).await {
                Ok(Some(at)) => {
                    Duration::from_millis((at - now_ms()).clamp(0, POLL.as_millis() as i64) as u64)
                }
                _ => POLL,
            };
            if next.is_zero() {
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = wake.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(POLL).await;
                    } else {
                        tokio::time::sleep(GATHER).await;
                    }
                }
                _ = tokio::time::sleep(next) => {}
            }
        }
        tracing::debug!("conversions sender stopped");
    }

    /// Sends `due` (split as needed) and returns every event's outcome, with its name.
    async fn send(&self, due: Vec<DueConversion>) -> Vec<(DueConversion, Outcome)> {
        let now = now_ms();
        let mut out = Vec::with_capacity(due.len());
        let mut ready = Vec::with_capacity(due.len());
        for d in due {
            let local = |message: &str| Outcome::Failed {
                error: GraphError {
                    message: message.to_owned(),
                    ..GraphError::default()
                },
            };
            if !within_window(d.event_time, now) {
                let failed = local(
                    "event_time is more than 7 days ago: Meta rejects such events (not sent)",
                );
                out.push((d, failed));
            } else if d.ctwa_clid.is_none() {
                let failed = local("the lead has no ctwa_clid (not sent)");
                out.push((d, failed));
            } else {
                ready.push(d);
            }
        }
        // Batches to send, the next on top; a rejected one comes back as two halves.
        let mut stack = vec![ready];
        while let Some(mut batch) = stack.pop() {
            if batch.is_empty() {
                continue;
            }
            match self.post(&batch).await {
                Answer::Accepted { fbtrace_id } => {
                    out.extend(batch.into_iter().map(|d| {
                        let sent = Outcome::Sent {
                            fbtrace_id: fbtrace_id.clone(),
                        };
                        (d, sent)
                    }));
                }
                Answer::Rejected(_) if batch.len() > 1 => {
                    let right = batch.split_off(batch.len() / 2);
                    stack.push(right);
                    stack.push(batch);
                }
                Answer::Rejected(error) => {
                    out.extend(batch.into_iter().map(|d| {
                        let failed = Outcome::Failed {
                            error: error.clone(),
                        };
                        (d, failed)
                    }));
                }
                Answer::Transient(error) => {
                    let now = now_ms();
                    out.extend(batch.into_iter().map(|d| {
                        let next = self.after_failure(&d, error.clone(), now);
                        (d, next)
                    }));
                }
            }
        }
        out
    }

    /// A retry at the schedule's next step, unless the schedule is exhausted or the event would
    /// have left Meta's 7-day window by then.
    fn after_failure(&self, d: &DueConversion, error: GraphError, now: i64) -> Outcome {
        let next = d.step + 1;
        let Some(delay) = self.schedule.get(next as usize) else {
            return Outcome::Failed { error };
        };
        let at_ms = now + crate::forward::attempt::jitter(*delay).as_millis() as i64;
        if !within_window(d.event_time, at_ms) {
            let message = format!(
                "{} (given up: at the next attempt the event would be more than 7 days old)",
                error.message
            );
            return Outcome::Failed {
                error: GraphError { message, ..error },
            };
        }
        Outcome::Retry {
            error,
            at_ms,
            step: next,
        }
    }

    async fn post(&self, batch: &[DueConversion]) -> Answer {
        let data: Vec<Value> = batch
            .iter()
            .map(|d| {
                let waba = d.waba_id.as_deref().unwrap_or(&self.waba_id);
                event_json(d, d.ctwa_clid.as_deref().unwrap_or_default(), waba)
            })
            .collect();
        let mut body = json!({ "data": data });
        if let Some(code) = &self.test_event_code {
            body["test_event_code"] = json!(code);
        }
        let sent = self
            .client
            .post(&self.url)
            .bearer_auth(self.token.expose_secret())
            .json(&body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(err) => {
                crate::monitor::capi_request(0);
                let message = if err.is_timeout() {
                    format!("no answer within {} ms", TIMEOUT.as_millis())
                } else if err.is_connect() {
                    "could not connect to Graph".to_owned()
                } else {
                    format!("request failed: {}", err.without_url())
                };
                return Answer::Transient(GraphError {
                    message,
                    ..GraphError::default()
                });
            }
        };
        let status = response.status().as_u16();
        crate::monitor::capi_request(status);
        let bytes = crate::forward::attempt::read_capped_to(response, MAX_RESPONSE_BYTES).await;
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            let fbtrace_id = answer["fbtrace_id"].as_str().map(str::to_owned);
            return Answer::Accepted { fbtrace_id };
        }
        let error = &answer["error"];
        let message = error["message"]
            .as_str()
            .map(|m| m.chars().take(MESSAGE_CHARS).collect::<String>())
            .unwrap_or_else(|| format!("HTTP {status}"));
        let graph_error = GraphError {
            status: Some(status),
            message,
            code: error["code"].as_i64(),
            subcode: error["error_subcode"].as_i64(),
            fbtrace_id: error["fbtrace_id"].as_str().map(str::to_owned),
        };
        let transient = status >= 500
            || status == 429
            || error["is_transient"].as_bool() == Some(true)
            || graph_error
                .code
                .is_some_and(|c| TRANSIENT_CODES.contains(&c));
        if transient {
            Answer::Transient(graph_error)
        } else {
            Answer::Rejected(graph_error)
        }
    }

    /// Records outcomes (retrying the write briefly: an event sent but not recorded would be
    /// sent again, which Meta deduplicates on `event_id`).
    async fn record(&self, outcomes: &[(DueConversion, Outcome)]) {
        for attempt in 1..=5 {
            let result = conversions::record(&self.store, outcomes, now_ms()).await;
            match result {
                Ok(()) => break,
                Err(err) if attempt < 5 => {
                    tracing::warn!(%err, "could not record conversion outcomes; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => {
                    tracing::error!(%err, "could not record conversion outcomes; they are sent again (Meta deduplicates on event_id)");
                    return;
                }
            }
        }
        for (d, o) in outcomes {
            let status = match o {
                Outcome::Sent { .. } => "sent",
                Outcome::Retry { .. } => "retry",
                Outcome::Failed { .. } => "failed",
            };
            crate::monitor::capi_event(&d.event_name, status);
            if let Outcome::Failed { error } = o {
                tracing::warn!(event_id = %d.event_id, event_name = %d.event_name, code = ?error.code, subcode = ?error.subcode, message = %error.message, "a conversion event failed; see GET /v1/conversions?status=failed");
            }
        }
    }
}
