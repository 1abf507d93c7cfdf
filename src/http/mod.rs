//! Assembles the HTTP surface: each feature's router merged in one place, the `/v1` bearer
//! check, health probes, the OpenAPI document, and the layers every request passes (request
//! id, tracing without query strings, panic catching).

pub mod auth;
pub mod contract;
pub mod error;
pub mod front;
pub mod id_paging;
pub mod links;
pub mod query;
pub mod request_id;
pub mod trace;

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tracing::Level;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use auth::BearerScheme;
use error::ApiError;

use request_id::REQUEST_ID;
use trace::trace;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ctwa-leads",
        description = "Captures leads from WhatsApp Click-to-WhatsApp ads, serves them, and proxies the ads' Graph assets."
    ),
    modifiers(&BearerScheme),
    components(schemas(error::ErrorEnvelope, error::ErrorBody))
)]
struct ApiDoc;

/// The whole application: routes, state and layers. The OpenAPI document is built from the
/// same routers, so it cannot drift from what is served.
pub fn router(state: AppState) -> Router {
    let (webhook, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(crate::webhook::router())
        .split_for_parts();
    let (probes, probes_doc) = OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .split_for_parts();
    doc.merge(probes_doc);
    let (v1, v1_doc) = OpenApiRouter::new()
        .merge(crate::leads::api::router())
        .merge(crate::leads::erasure::router())
        .merge(crate::forward::api::router())
        .merge(crate::capi::api::router())
        .merge(crate::graph::router())
        .split_for_parts();
    doc.merge(v1_doc);
    let v1 = v1.layer(middleware::from_fn_with_state(
        state.clone(),
        auth::require_token,
    ));
    let mut doc = serde_json::to_value(&doc).unwrap_or_default();
    contract::refine(&mut doc);
    // Built once; only the conversion window (it moves with the clock) is set per request.
    let doc = std::sync::Arc::new(doc);
    // Every route gets the same outer stack. `Router::layer` wraps each route in one more boxed
    // service, cloned per request, so `/webhook`, thousands a second, is layered once with the
    // whole stack and its own tracing; the other routes keep their tracing as a layer of its own
    // (tower-http's response body cannot go under the timeout's).
    let outer = ServiceBuilder::new()
        .layer(front::Front)
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(CatchPanicLayer::custom(on_panic))
        // A deadline for reading the body and answering (a streamed export's body is not held
        // to it). A client that trickles its body gets 408.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.request_timeout(),
        ));
    // Meta's deliveries arrive thousands a second: their span and a 200's request line are
    // DEBUG (they are counted in the metrics), any other response's line INFO.
    let webhook = webhook.layer(outer.clone().layer(trace::Deliveries));
    let served = Router::new()
        .merge(v1)
        .route(
            "/openapi.json",
            get(move || {
                let mut doc = (*doc).clone();
                async move {
                    contract::conversion_window(&mut doc, chrono::Utc::now().timestamp());
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        doc.to_string(),
                    )
                }
            }),
        )
        .fallback(error::fallback)
        .layer(trace(Level::INFO, Level::INFO))
        .layer(outer.clone());
    // Probes answer every few seconds: their request lines are DEBUG, not INFO.
    let probes = probes.layer(trace(Level::DEBUG, Level::DEBUG)).layer(outer);
    Router::new()
        .merge(served)
        .merge(webhook)
        .merge(probes)
        .with_state(state)
}

/// The route of a request that matched none (a 404): one series and span value for all of them.
const UNMATCHED: &str = "(unmatched)";

fn matched_path(req: &Request) -> Option<&axum::extract::MatchedPath> {
    req.extensions().get::<axum::extract::MatchedPath>()
}

fn route_of(req: &Request) -> &str {
    matched_path(req).map_or(UNMATCHED, |p| p.as_str())
}

fn on_panic(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::internal("a handler panicked").into_response()
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive", body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// What `/readyz` answers.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Readiness {
    /// `ready`, or `unavailable`.
    status: &'static str,
    /// How far the leads (`GET /v1/leads`) are behind acknowledged deliveries.
    projection: crate::store::Lag,
}

/// Readiness: the database answers reads and the last commit succeeded. The body tells how far
/// the projection is behind (a lead acknowledged by `POST /webhook` appears in `/v1/leads`
/// within that lag); so does the `X-Projection-Lag` header, in entries.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready", body = Readiness),
    (status = 503, description = "The database is not usable", body = error::ErrorEnvelope, headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
))]
async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    let lag = state.store().lag();
    if state.ceiling_mode() || state.store().ready().await {
        let mut response = Json(Readiness {
            status: "ready",
            projection: lag,
        })
        .into_response();
        if let Ok(value) = axum::http::HeaderValue::from_str(&lag.entries.to_string()) {
            response.headers_mut().insert("x-projection-lag", value);
        }
        Ok(response)
    } else {
        Err(ApiError::client(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "database not ready",
        ))
    }
}

/// How long a graceful shutdown waits for in-flight requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
