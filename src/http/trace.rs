//! Request tracing: a span per request (method, route template, request id) and a
//! "finished processing request" line, never with query strings or headers. `POST /webhook`
//! gets a lighter kind ([`Deliveries`]): at the default level an acknowledged delivery builds
//! no span at all, and a refused one still logs its line, with the same fields, at INFO.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderValue, Method};
use axum::response::Response;
use tower::{Layer, Service};
use tower_http::trace::{DefaultOnResponse, OnResponse, TraceLayer};
use tracing::instrument::Instrumented;
use tracing::{Instrument, Level};

use super::request_id::{self, REQUEST_ID};

pub type Trace = TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    fn(&Request) -> tracing::Span,
    tower_http::trace::DefaultOnRequest,
    ResponseLine,
>;

/// Request tracing: the span and every response line at `level` (DEBUG or INFO), except a
/// 2xx's line, which is at `ok`.
pub fn trace(level: Level, ok: Level) -> Trace {
    let make_span: fn(&Request) -> tracing::Span = if level == Level::DEBUG {
        make_debug_span
    } else {
        make_span
    };
    TraceLayer::new_for_http()
        .make_span_with(make_span)
        .on_response(ResponseLine { ok, other: level })
}

/// The "finished processing request" line: at `ok` for a 2xx and at `other` for any other
/// status, so a refused delivery shows at the default level while the steady stream of
/// acknowledged ones can be quieter.
#[derive(Clone, Copy)]
pub struct ResponseLine {
    ok: Level,
    other: Level,
}

impl<B> OnResponse<B> for ResponseLine {
    fn on_response(self, response: &http::Response<B>, latency: Duration, span: &tracing::Span) {
        let level = if response.status().is_success() {
            self.ok
        } else {
            self.other
        };
        DefaultOnResponse::new()
            .level(level)
            .on_response(response, latency, span);
    }
}

/// The request span: method, route and request id. The route is the template
/// (`/v1/contacts/{id}`), so a path parameter (a phone number to erase) never reaches a log
/// line. Never the query string (the challenge carries the verify token) and never headers
/// (they carry signatures and bearer tokens).
fn make_span(req: &Request) -> tracing::Span {
    tracing::info_span!("request", method = %req.method(), path = %super::route_of(req), request_id = %request_id::of(req))
}

fn make_debug_span(req: &Request) -> tracing::Span {
    tracing::debug_span!("request", method = %req.method(), path = %super::route_of(req), request_id = %request_id::of(req))
}

/// Tracing for Meta's deliveries, thousands a second. The span is DEBUG, so at the default
/// level an acknowledged delivery costs a level check instead of a span (1.035× the CPU per
/// delivery of `RUST_LOG=warn` when it was INFO). Its line is DEBUG for a 2xx and INFO for
/// anything else; when the span is off, that line carries the span's fields itself.
#[derive(Clone, Copy, Default)]
pub struct Deliveries;

impl<S> Layer<S> for Deliveries {
    type Service = DeliveriesService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeliveriesService { inner }
    }
}

#[derive(Clone)]
pub struct DeliveriesService<S> {
    inner: S,
}

impl<S, E> Service<Request> for DeliveriesService<S>
where
    S: Service<Request, Response = Response, Error = E>,
{
    type Response = Response;
    type Error = E;
    type Future = Logged<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let span = make_debug_span(&request);
        let line = Line {
            started: Instant::now(),
            method: request.method().clone(),
            path: super::matched_path(&request).cloned(),
            request_id: request.headers().get(&REQUEST_ID).cloned(),
        };
        Logged {
            inner: self.inner.call(request).instrument(span),
            line: Some(line),
        }
    }
}

/// What a delivery's response line needs once the request itself has been handed on.
struct Line {
    started: Instant,
    method: Method,
    path: Option<axum::extract::MatchedPath>,
    request_id: Option<HeaderValue>,
}

impl Line {
    fn log(self, response: &Response, span: &tracing::Span) {
        let status = response.status().as_u16();
        let latency = self.started.elapsed().as_millis();
        let _entered = span.enter();
        if response.status().is_success() {
            tracing::debug!(status, latency_ms = latency, "finished processing request");
        } else if !span.is_disabled() {
            tracing::info!(status, latency_ms = latency, "finished processing request");
        } else {
            let request_id = self.request_id.as_ref().and_then(|v| v.to_str().ok());
            let request_id = request_id.unwrap_or("-");
            let path = self.path.as_ref().map_or(super::UNMATCHED, |p| p.as_str());
            tracing::info!(method = %self.method, path, request_id, status, latency_ms = latency, "finished processing request");
        }
    }
}

pin_project_lite::pin_project! {
    /// The handler's future, in its span, logging the response line when it completes.
    pub struct Logged<F> {
        #[pin]
        inner: Instrumented<F>,
        line: Option<Line>,
    }
}

impl<F, E> Future for Logged<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result = ready!(this.inner.as_mut().poll(cx));
        if let (Ok(response), Some(line)) = (&result, this.line.take()) {
            line.log(response, this.inner.span());
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What one delivery answered with `status` logs at `level`.
    async fn logged(level: Level, status: StatusCode) -> String {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let app = Router::new()
            .route("/webhook", post(move || async move { status }))
            .layer(Deliveries);
        let request = Request::post("/webhook")
            .header(REQUEST_ID, "delivery-7")
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), status);
        let logged = capture.0.lock().unwrap().clone();
        String::from_utf8(logged).unwrap()
    }

    #[tokio::test]
    async fn an_acknowledged_delivery_logs_nothing_at_info() {
        assert_eq!(logged(Level::INFO, StatusCode::OK).await, "");
    }

    /// Counts the spans a subscriber is asked to build.
    #[derive(Clone, Default)]
    struct SpansBuilt(Arc<std::sync::atomic::AtomicUsize>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpansBuilt {
        fn on_new_span(
            &self,
            _: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn a_delivery_builds_no_span_at_info_and_one_at_debug() {
        use tracing_subscriber::layer::SubscriberExt;
        for (level, spans) in [(Level::INFO, 0), (Level::DEBUG, 1)] {
            let built = SpansBuilt::default();
            let subscriber = tracing_subscriber::registry()
                .with(tracing_subscriber::filter::LevelFilter::from_level(level))
                .with(built.clone());
            let _default = tracing::subscriber::set_default(subscriber);
            let app = Router::new()
                .route("/webhook", post(|| async { StatusCode::OK }))
                .layer(Deliveries);
            let request = Request::post("/webhook").body(Body::empty()).unwrap();
            assert_eq!(app.oneshot(request).await.unwrap().status(), 200);
            let counted = built.0.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(counted, spans, "at {level}");
        }
    }

    #[tokio::test]
    async fn a_refused_delivery_logs_its_line_with_the_span_fields_at_info() {
        let logs = logged(Level::INFO, StatusCode::UNAUTHORIZED).await;
        assert!(logs.contains(" INFO "), "{logs}");
        for field in [
            "method=POST",
            "path=\"/webhook\"",
            "request_id=\"delivery-7\"",
            "status=401",
        ] {
            assert!(logs.contains(field), "{field} missing from {logs}");
        }
        assert_eq!(logs.lines().count(), 1, "{logs}");
    }

    #[tokio::test]
    async fn at_debug_every_delivery_has_its_span_and_line() {
        let logs = logged(Level::DEBUG, StatusCode::OK).await;
        assert!(logs.contains("DEBUG"), "{logs}");
        assert!(
            logs.contains("request{method=POST path=/webhook request_id=delivery-7}"),
            "{logs}"
        );
        assert!(logs.contains("status=200"), "{logs}");
    }
}
