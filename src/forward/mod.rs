//! Lead forwarding: every new lead is pushed to the team's own systems (CRM, Slack, Zapier, a
//! backend) as a signed Standard Webhooks request, at least once, retried on a schedule. The
//! projector writes the deliveries (the outbox, `store::outbox`) with the leads; here a
//! [`Dispatcher`] runs one [`worker`] per destination, [`attempt`] sends one request,
//! [`signing`] signs it, and [`api`] serves `/v1/deliveries` and replays.

pub mod api;
pub mod attempt;
pub mod signing;
mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Destination, ForwardingSettings};
use crate::store::Store;

/// How often backlog gauges are refreshed.
const BACKLOG_EVERY: Duration = Duration::from_secs(10);
/// How often a backlog is worth a log line, at most.
const BACKLOG_LOG_EVERY: Duration = Duration::from_secs(60);

/// A configured destination and what the service learned about it at run time.
#[derive(Debug)]
pub struct DestinationState {
    pub settings: Destination,
    /// It answered 410 Gone: not sent to until the next start.
    pub gone: AtomicBool,
}

/// Every destination, shared by the workers and the API.
#[derive(Debug, Default)]
pub struct Forwarding {
    pub destinations: Vec<Arc<DestinationState>>,
    pub schedule: Vec<Duration>,
}

impl Forwarding {
    pub fn new(settings: &ForwardingSettings) -> Self {
        Self {
            destinations: settings
                .destinations
                .iter()
                .map(|d| {
                    Arc::new(DestinationState {
                        settings: d.clone(),
                        gone: AtomicBool::new(false),
                    })
                })
                .collect(),
            schedule: settings.retry_schedule.clone(),
        }
    }

    pub fn destination(&self, name: &str) -> Option<&Arc<DestinationState>> {
        self.destinations.iter().find(|d| d.settings.name == name)
    }
}

/// The running workers; stopped with [`Dispatcher::shutdown`].
pub struct Dispatcher {
    tasks: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("forward {name:?}: {why}")]
    Destination { name: String, why: String },
}

impl Dispatcher {
    /// Starts a worker per enabled destination, and the backlog reporter.
    pub fn start(forwarding: &Forwarding, store: Store) -> Result<Self, DispatchError> {
        let stop = CancellationToken::new();
        let schedule: Arc<[Duration]> = forwarding.schedule.clone().into();
        let mut tasks = Vec::new();
        for state in &forwarding.destinations {
            let d = &state.settings;
            crate::monitor::forward_disabled(&d.name, false);
            if !d.enabled {
                tracing::info!(destination = %d.name, "forwarding destination disabled in the config");
                continue;
            }
            let bad = |why: String| DispatchError::Destination {
                name: d.name.clone(),
                why,
            };
            let signer = signing::Signer::new(&d.secrets).map_err(|why| bad(why.to_owned()))?;
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("ctwa-leads/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(d.timeout.min(Duration::from_secs(10)))
                .pool_max_idle_per_host(d.max_in_flight)
                .build()
                .map_err(|err| bad(err.without_url().to_string()))?;
            let worker = worker::Worker {
                state: state.clone(),
                target: Arc::new(attempt::Target {
                    client,
                    url: d.url.clone(),
                    signer,
                    timeout: d.timeout,
                    schedule: schedule.clone(),
                }),
                store: store.clone(),
            };
            tasks.push(tokio::spawn(worker.run(stop.clone())));
        }
        if !forwarding.destinations.is_empty() {
            let names = forwarding
                .destinations
                .iter()
                .map(|d| d.settings.name.clone())
                .collect();
            tasks.push(tokio::spawn(report_backlog(store, names, stop.clone())));
        }
        Ok(Self { tasks, stop })
    }

    /// Stops taking deliveries, lets requests in flight finish (briefly), records them.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for task in self.tasks {
            if let Err(err) = task.await {
                tracing::error!(%err, "a forwarding task failed");
            }
        }
    }
}

/// Refreshes the backlog gauges, and logs a destination's backlog now and then.
async fn report_backlog(store: Store, names: Vec<String>, stop: CancellationToken) {
    let mut last_log: Option<tokio::time::Instant> = None;
    loop {
        match crate::store::outbox::backlog(&store).await {
            Ok(rows) => {
                let now = chrono::Utc::now().timestamp_millis();
                let log = last_log.is_none_or(|t| t.elapsed() >= BACKLOG_LOG_EVERY);
                for name in &names {
                    let row = rows.iter().find(|r| &r.destination == name);
                    let (pending, failed, oldest) =
                        row.map_or((0, 0, None), |r| (r.pending, r.failed, r.oldest_pending_ms));
                    let age = oldest.map_or(0.0, |at| (now - at).max(0) as f64 / 1000.0);
                    crate::monitor::forward_backlog(name, pending, failed, age);
                    if log && (pending > 0 || failed > 0) {
                        tracing::info!(destination = %name, pending, failed, oldest_pending_seconds = age, "forwarding backlog");
                        last_log = Some(tokio::time::Instant::now());
                    }
                }
            }
            Err(err) => tracing::debug!(%err, "could not read the forwarding backlog"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(BACKLOG_EVERY) => {}
        }
    }
}

/// Whether `name` is configured and enabled; `Err` says why not (for the API).
pub fn usable<'a>(forwarding: &'a Forwarding, name: &str) -> Result<&'a DestinationState, String> {
    match forwarding.destination(name) {
        None => Err(format!("no forwarding destination named {name:?}")),
        Some(d) if !d.settings.enabled => Err(format!(
            "forwarding destination {name:?} is disabled in the config"
        )),
        Some(d) if d.gone.load(Ordering::Acquire) => Err(format!(
            "forwarding destination {name:?} answered 410 Gone and is disabled until restart"
        )),
        Some(d) => Ok(d),
    }
}
