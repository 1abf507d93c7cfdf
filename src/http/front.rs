//! The outermost step of every request, as a tower layer of its own ([`Front`]). It drops an
//! unsafe caller request id before the id layer runs, refuses a request target over
//! `error::MAX_URI_BYTES` (414) before anything reads it, gives every error the envelope
//! whoever made it (axum's 405, a rejection, the time-out), and counts the request by route
//! template (never the raw path, which would make a series per lead id), method and status,
//! with its latency. It was an `axum::middleware::from_fn` step; that boxes the rest of the
//! stack and its future for every request, which under Meta's thousands of deliveries a
//! second is allocator work this layer does not do (it boxes only to envelope an error).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use axum::body::{Body, HttpBody};
use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tower::{Layer, Service};
use tower_http::request_id::{MakeRequestId, MakeRequestUuid, RequestId};

use super::error::{self, ApiError};
use super::request_id::{self, REQUEST_ID};

/// See the module comment.
#[derive(Clone, Copy, Default)]
pub struct Front;

impl<S> Layer<S> for Front {
    type Service = FrontService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FrontService { inner }
    }
}

#[derive(Clone)]
pub struct FrontService<S> {
    inner: S,
}

impl<S, B, E> Service<Request> for FrontService<S>
where
    S: Service<Request, Response = http::Response<B>, Error = E>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = E;
    type Future = Answered<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        request_id::keep_only_safe_ids(&mut request);
        let count = Count {
            started: Instant::now(),
            // The template, shared with the router (an `Arc`), not copied.
            route: super::matched_path(&request).cloned(),
            method: request.method().clone(),
        };
        let step = match error::refuse_long_uri(&request) {
            Some(refused) => Step::Refused {
                response: Some(with_request_id(refused, &request)),
            },
            None => Step::Inner {
                future: self.inner.call(request),
            },
        };
        Answered {
            step,
            count: Some(count),
        }
    }
}

/// A request refused here, before the id layer ran, still carries an id: the caller's, or
/// one from the same generator.
fn with_request_id(mut refused: Response, request: &Request) -> Response {
    let id = request.headers().get(&REQUEST_ID).cloned().or_else(|| {
        MakeRequestUuid
            .make_request_id(request)
            .map(RequestId::into_header_value)
    });
    if let Some(id) = id {
        refused.headers_mut().insert(REQUEST_ID, id);
    }
    refused
}

/// What the request's count needs once the request itself has been handed on.
struct Count {
    started: Instant,
    route: Option<MatchedPath>,
    method: Method,
}

impl Count {
    fn of(self, response: Response) -> Response {
        crate::monitor::http_request(
            self.route.as_ref().map_or(super::UNMATCHED, |p| p.as_str()),
            self.method.as_str(),
            response.status().as_u16(),
            self.started.elapsed(),
        );
        response
    }
}

type Enveloping = Pin<Box<dyn Future<Output = Response> + Send>>;

pin_project_lite::pin_project! {
    #[project = StepProj]
    enum Step<F> {
        // The rest of the stack is answering.
        Inner { #[pin] future: F },
        // An error without the envelope is being given one (its body is read first).
        Enveloping { future: Enveloping },
        // Refused here; not yet counted.
        Refused { response: Option<Response> },
    }
}

pin_project_lite::pin_project! {
    /// The answer to one request, enveloped if it is an error and counted when it is ready.
    pub struct Answered<F> {
        #[pin]
        step: Step<F>,
        count: Option<Count>,
    }
}

impl<F, B, E> Future for Answered<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let response = loop {
            match this.step.as_mut().project() {
                StepProj::Inner { future } => {
                    let response = ready!(future.poll(cx))?.map(Body::new);
                    if !error::lacks_envelope(&response) {
                        break response;
                    }
                    let future = Box::pin(error::envelope_every_error(response));
                    this.step.set(Step::Enveloping { future });
                }
                StepProj::Enveloping { future } => break ready!(future.as_mut().poll(cx)),
                StepProj::Refused { response } => {
                    break response.take().unwrap_or_else(|| {
                        ApiError::internal("a refused request was answered twice").into_response()
                    })
                }
            }
        };
        Poll::Ready(Ok(match this.count.take() {
            Some(count) => count.of(response),
            None => response,
        }))
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;

    async fn answer(uri: &str) -> (StatusCode, Option<String>, String) {
        let app = Router::new()
            .route("/ok", get(|| async { "fine" }))
            .route(
                "/plain",
                get(|| async { (StatusCode::BAD_REQUEST, "no good") }),
            )
            .layer(Front);
        let response = app
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let kind = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, kind, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_success_passes_untouched_and_a_bare_error_gets_the_envelope() {
        let (status, _, body) = answer("/ok").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "fine"));

        let (status, kind, body) = answer("/plain").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(kind.as_deref(), Some("application/json"));
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["message"], "no good", "{body}");

        // No route: axum's bare 404 gets the envelope too.
        let (status, kind, _) = answer("/nowhere").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(kind.as_deref(), Some("application/json"));
    }

    #[tokio::test]
    async fn a_request_target_over_the_bound_is_refused_with_a_request_id() {
        let long = format!("/ok?{}", "a".repeat(error::MAX_URI_BYTES));
        let app = Router::new()
            .route("/ok", get(|| async { "fine" }))
            .layer(Front);
        let response = app
            .oneshot(Request::get(long).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::URI_TOO_LONG);
        assert!(response.headers().contains_key(&REQUEST_ID));
    }
}
