//! Prometheus metrics: every name the service records is defined here, with a small function
//! per event, and [`serve`] answers `GET /metrics` on its own listener (`[metrics] listen`), so
//! internal figures are never on the public webhook port. Recording goes through the `metrics`
//! facade to one process-wide `metrics-exporter-prometheus` recorder.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use metrics::{counter, gauge, histogram, Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

pub const HTTP_REQUESTS: &str = "ctwa_http_requests_total";
pub const HTTP_DURATION: &str = "ctwa_http_request_duration_seconds";
pub const DELIVERIES: &str = "ctwa_deliveries_total";
pub const LEADS_CREATED: &str = "ctwa_leads_created_total";
pub const BATCH_SIZE: &str = "ctwa_writer_batch_deliveries";
pub const COMMIT_SECONDS: &str = "ctwa_writer_commit_seconds";
pub const FSYNC_SECONDS: &str = "ctwa_writer_fsync_seconds";
pub const QUEUE_DEPTH: &str = "ctwa_writer_queue_depth";
pub const LAST_COMMIT_OK: &str = "ctwa_writer_last_commit_ok";
pub const GRAPH_REQUESTS: &str = "ctwa_graph_requests_total";
pub const PROJECTION_LAG_ENTRIES: &str = "ctwa_projection_lag_entries";
pub const PROJECTION_LAG_SECONDS: &str = "ctwa_projection_lag_seconds";
pub const HELD_BACK_SECONDS: &str = "ctwa_ingest_held_back_seconds";
pub const PROJECTION_BATCH_SECONDS: &str = "ctwa_projection_batch_seconds";
pub const PROJECTION_ENTRIES: &str = "ctwa_projection_entries_total";
pub const FORWARD_ATTEMPTS: &str = "ctwa_forward_attempts_total";
pub const CAPI_EVENTS: &str = "ctwa_capi_events_total";
pub const CAPI_REQUESTS: &str = "ctwa_capi_requests_total";
pub const FORWARD_ATTEMPT_SECONDS: &str = "ctwa_forward_attempt_seconds";
pub const FORWARD_PENDING: &str = "ctwa_forward_pending";
pub const FORWARD_FAILED: &str = "ctwa_forward_failed";
pub const FORWARD_OLDEST_PENDING: &str = "ctwa_forward_oldest_pending_seconds";
pub const FORWARD_DISABLED: &str = "ctwa_forward_destination_disabled";
pub const ERASURES: &str = "ctwa_erasures_total";
pub const ERASURES_PENDING: &str = "ctwa_erasures_pending";
pub const ERASURES_OLDEST_PENDING: &str = "ctwa_erasures_oldest_pending_seconds";

/// What became of a `POST /webhook` delivery.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// Appended to the log (durable) and acknowledged.
    Stored,
    /// Of the stored ones: every lead in it was already stored (Meta re-delivered it). Counted
    /// by the projector, so it is a subset of `stored`, not an alternative to it.
    Duplicate,
    /// Status-only, parsed cleanly, and `keep_raw` does not keep those: acknowledged and
    /// counted, nothing written.
    StatusOnly,
    BadSignature,
    /// Refused with 503 before storing: the budgets or the queue were full.
    Shed,
    /// The database failed: 503.
    Failed,
    /// Too large, too slow, or encoded: 4xx.
    Refused,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Stored => "stored",
            Outcome::Duplicate => "duplicate",
            Outcome::StatusOnly => "status_only",
            Outcome::BadSignature => "bad_signature",
            Outcome::Shed => "shed",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
        }
    }
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once (later calls return the same handle). `None` if
/// another recorder was installed first.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ];
            let sizes = [
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &sizes));
            match builder.map(PrometheusBuilder::install_recorder) {
                Ok(Ok(handle)) => Some(handle),
                _ => None,
            }
        })
        .clone()
}

/// One request series' handles: what [`http_request`] records into.
struct HttpSeries {
    route: String,
    method: String,
    status: u16,
    requests: Counter,
    duration: Histogram,
}

/// Series this thread has recorded into, so a request does not build its labels and look them
/// up in the registry again (about a microsecond each time, thousands of times a second on
/// `/webhook`). Bounded: past it, requests take the uncached path.
const CACHED_SERIES: usize = 64;

thread_local! {
    static HTTP_SERIES: RefCell<Vec<HttpSeries>> = const { RefCell::new(Vec::new()) };
}

pub fn http_request(route: &str, method: &str, status: u16, elapsed: Duration) {
    let series = || {
        let requests = counter!(HTTP_REQUESTS, "route" => route.to_owned(), "method" => method.to_owned(), "status" => status.to_string());
        let duration =
            histogram!(HTTP_DURATION, "route" => route.to_owned(), "method" => method.to_owned());
        (requests, duration)
    };
    let record = |requests: &Counter, duration: &Histogram| {
        requests.increment(1);
        duration.record(elapsed.as_secs_f64());
    };
    match HANDLE.get() {
        // No recorder was asked for (`[metrics] listen` is unset): the facade would drop the
        // figures anyway, so do not build their labels.
        None => return,
        // Our recorder is installed: record through this thread's cached handles, below.
        Some(Some(_)) => {}
        // Another recorder was installed first: record through it, uncached.
        Some(None) => {
            let (requests, duration) = series();
            record(&requests, &duration);
            return;
        }
    }
    HTTP_SERIES.with_borrow_mut(|cache| {
        let found = cache
            .iter()
            .position(|s| s.status == status && s.route == route && s.method == method);
        let at = match found {
            Some(at) => at,
            None => {
                let (requests, duration) = series();
                if cache.len() >= CACHED_SERIES {
                    record(&requests, &duration);
                    return;
                }
                cache.push(HttpSeries {
                    route: route.to_owned(),
                    method: method.to_owned(),
                    status,
                    requests,
                    duration,
                });
                cache.len() - 1
            }
        };
        record(&cache[at].requests, &cache[at].duration);
    });
}

pub fn delivery(outcome: Outcome) {
    deliveries(outcome, 1);
}

pub fn deliveries(outcome: Outcome, n: u64) {
    counter!(DELIVERIES, "outcome" => outcome.label()).increment(n);
}

pub fn leads_created(n: u64) {
    counter!(LEADS_CREATED).increment(n);
}

pub fn batch_committed(deliveries: usize, elapsed: Duration, ok: bool) {
    histogram!(BATCH_SIZE).record(deliveries as f64);
    histogram!(COMMIT_SECONDS).record(elapsed.as_secs_f64());
    gauge!(LAST_COMMIT_OK).set(if ok { 1.0 } else { 0.0 });
}

pub fn fsync(elapsed: Duration, ok: bool) {
    histogram!(FSYNC_SECONDS).record(elapsed.as_secs_f64());
    if !ok {
        gauge!(LAST_COMMIT_OK).set(0.0);
    }
}

pub fn queue_depth(n: usize) {
    gauge!(QUEUE_DEPTH).set(n as f64);
}

pub fn projection_lag(entries: u64, seconds: f64) {
    gauge!(PROJECTION_LAG_ENTRIES).set(entries as f64);
    gauge!(PROJECTION_LAG_SECONDS).set(seconds);
}

/// A delivery held back while the projection lagged (`ingest.hold_back_lag_ms`).
pub fn held_back(waited: Duration) {
    histogram!(HELD_BACK_SECONDS).record(waited.as_secs_f64());
}

pub fn projection_batch(entries: usize, elapsed: Duration) {
    counter!(PROJECTION_ENTRIES).increment(entries as u64);
    histogram!(PROJECTION_BATCH_SECONDS).record(elapsed.as_secs_f64());
}

pub fn graph_request(edge: &str, status: u16) {
    counter!(GRAPH_REQUESTS, "edge" => edge.to_owned(), "status" => status.to_string())
        .increment(1);
}

/// One forwarding attempt: `succeeded`, `retry`, `failed` (schedule exhausted) or `gone` (410).
pub fn forward_attempt(destination: &str, outcome: &'static str, elapsed: Duration) {
    counter!(FORWARD_ATTEMPTS, "destination" => destination.to_owned(), "outcome" => outcome)
        .increment(1);
    histogram!(FORWARD_ATTEMPT_SECONDS, "destination" => destination.to_owned())
        .record(elapsed.as_secs_f64());
}

/// Conversion events by name and what became of an attempt: `sent`, `retry`, `failed`.
pub fn capi_event(event_name: &str, status: &'static str) {
    counter!(CAPI_EVENTS, "event_name" => event_name.to_owned(), "status" => status).increment(1);
}

/// Requests to the Conversions API by HTTP status (0: no answer).
pub fn capi_request(status: u16) {
    counter!(CAPI_REQUESTS, "status" => status.to_string()).increment(1);
}

/// A destination's backlog: pending and failed deliveries, and the oldest pending one's age.
pub fn forward_backlog(destination: &str, pending: i64, failed: i64, oldest_pending_secs: f64) {
    gauge!(FORWARD_PENDING, "destination" => destination.to_owned()).set(pending as f64);
    gauge!(FORWARD_FAILED, "destination" => destination.to_owned()).set(failed as f64);
    gauge!(FORWARD_OLDEST_PENDING, "destination" => destination.to_owned())
        .set(oldest_pending_secs);
}

/// An erasure attempt's end: `done`, or `retry` (it could not finish yet).
pub fn erasure_attempt(outcome: &'static str) {
    counter!(ERASURES, "outcome" => outcome).increment(1);
}

/// Erasure requests not yet done, and the oldest one's age.
pub fn erasures_pending(pending: i64, oldest_pending_secs: f64) {
    gauge!(ERASURES_PENDING).set(pending as f64);
    gauge!(ERASURES_OLDEST_PENDING).set(oldest_pending_secs);
}

/// 1 while a destination is disabled by a 410 Gone.
pub fn forward_disabled(destination: &str, disabled: bool) {
    gauge!(FORWARD_DISABLED, "destination" => destination.to_owned()).set(if disabled {
        1.0
    } else {
        0.0
    });
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                handle.run_upkeep();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn cached_request_series_count_every_request_in_its_own_series() {
        let handle = handle().expect("the recorder");
        let route = "/test/cached-series";
        for _ in 0..3 {
            http_request(route, "POST", 200, Duration::from_millis(1));
        }
        http_request(route, "POST", 401, Duration::from_millis(1));
        http_request(route, "GET", 200, Duration::from_millis(1));
        // The first thread's handles serve another thread too (the registry is shared).
        std::thread::spawn(move || http_request(route, "POST", 200, Duration::from_millis(1)))
            .join()
            .expect("the other thread");
        let text = handle.render();
        let series = |method: &str, status: u16| {
            let name = format!(
                "{HTTP_REQUESTS}{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}}"
            );
            sample(&text, &name).unwrap_or_else(|| panic!("{name} missing:\n{text}"))
        };
        assert_eq!(series("POST", 200), 4.0);
        assert_eq!(series("POST", 401), 1.0);
        assert_eq!(series("GET", 200), 1.0);
        let count = format!("{HTTP_DURATION}_count{{route=\"{route}\",method=\"POST\"}}");
        assert_eq!(sample(&text, &count), Some(5.0), "{text}");
    }
}
