//! The Meta-facing endpoint. `GET /webhook` answers the subscription challenge; `POST /webhook`
//! receives the body under [`admission`] control, verifies the signature over the raw bytes,
//! only then parses (to classify the delivery and count its leads), and acknowledges once the
//! delivery is durable in the store's log; the projector builds its leads behind it. Flow:
//! [`admission`] → [`verify`] → [`payload`] / `leads::extract` → `store` (log).

pub mod admission;
pub mod payload;
pub mod verify;

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use secrecy::ExposeSecret;
use serde::Serialize;
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::config::KeepRaw;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::query::Params;
use crate::http::request_id;
use crate::leads::extract::{extract, ParseStatus};
use crate::monitor::{self, Outcome};
use crate::store::{hold_back_for, IngestError, Kind, LogRecord};
use admission::BodyError;

/// Bodies above this are parsed on the blocking pool.
const LARGE_BODY: usize = 64 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    // The request is taken whole (an extractor would copy its headers), and its plain `Body`
    // (no extractor limit applies to it) read by `admission`, which enforces the size limit
    // itself. No layer here: each `Router::layer`
    // wraps every route in one more boxed service, cloned for each delivery.
    OpenApiRouter::new().routes(routes!(challenge, receive))
}

/// Answers Meta's subscription check with `hub.challenge` when mode and token match.
#[utoipa::path(
    get,
    path = "/webhook",
    tag = "webhook",
    params(
        ("hub.mode" = String, Query, description = "Must be `subscribe`"),
        ("hub.verify_token" = String, Query, description = "The token set in Meta's webhook settings"),
        ("hub.challenge" = String, Query, description = "Echoed back on success"),
    ),
    responses(
        (status = 200, description = "The challenge, as text/plain", body = String, content_type = "text/plain"),
        (status = 400, description = "A parameter is missing", body = ErrorEnvelope),
        (status = 403, description = "Wrong mode or token", body = ErrorEnvelope),
    )
)]
async fn challenge(State(state): State<AppState>, params: Params) -> Result<Response, ApiError> {
    let get = |key: &str| {
        params
            .get(key)
            .ok_or_else(|| ApiError::bad_request(format!("missing query parameter {key}")))
    };
    let mode = get("hub.mode")?;
    let token = get("hub.verify_token")?;
    let challenge = get("hub.challenge")?;
    let expected = state.verify_token().expose_secret().as_bytes();
    let token_ok: bool = token.as_bytes().ct_eq(expected).into();
    if mode != "subscribe" || !token_ok {
        return Err(ApiError::forbidden("verification failed"));
    }
    // Once per webhook registration: worth a line at the default level (the request line of
    // a 200 on this route is DEBUG).
    tracing::info!("answered Meta's subscription challenge");
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        challenge.to_owned(),
    )
        .into_response())
}

/// What `POST /webhook` answers once a delivery is stored. Meta ignores the body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ack {
    /// Always `ok`.
    pub status: &'static str,
    /// Referral messages found in the delivery (duplicates of stored ones included).
    pub leads: usize,
    /// `parsed`, `partial` (some part did not fit the model) or `invalid` (not JSON).
    pub parse: &'static str,
}

/// Receives a signed delivery, makes it durable in the log, then acknowledges.
#[utoipa::path(
    post,
    path = "/webhook",
    tag = "webhook",
    request_body(content = String, description = "A `whatsapp_business_account` delivery, signed", content_type = "application/json"),
    params(("X-Hub-Signature-256" = String, Header, description = "sha256=<hex HMAC-SHA256 of the raw body with the app secret>")),
    responses(
        (status = 200, description = "Stored (or safely ignored)", body = Ack),
        (status = 401, description = "Missing, malformed or wrong signature", body = ErrorEnvelope),
        (status = 408, description = "The body arrived slower than server.min_body_rate", body = ErrorEnvelope),
        (status = 413, description = "Body over server.max_body_bytes", body = ErrorEnvelope),
        (status = 415, description = "A Content-Encoding other than identity; nothing is stored", body = ErrorEnvelope),
        (status = 503, description = "Not stored: overloaded (shed before reading the body) or the database failed; Meta retries", body = ErrorEnvelope, headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
    )
)]
async fn receive(State(state): State<AppState>, request: Request) -> Result<Json<Ack>, ApiError> {
    let received_at_ms = chrono::Utc::now().timestamp_millis();
    // The request taken apart rather than its headers extracted, which would copy them.
    let (Parts { headers, .. }, body) = request.into_parts();
    // Meta signs and sends plain bytes; an encoded body would be verified and stored as
    // something it is not.
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        if !encoding.as_bytes().eq_ignore_ascii_case(b"identity") {
            monitor::delivery(Outcome::Refused);
            return Err(ApiError::client(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Content-Encoding is not supported on /webhook: send the body as it was signed",
            ));
        }
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let (body, _ticket) =
        state
            .admission()
            .receive(body, declared)
            .await
            .map_err(|err| match err {
                BodyError::TooLarge => ApiError::client(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!(
                        "the body is over server.max_body_bytes ({} bytes)",
                        state.max_body_bytes()
                    ),
                ),
                BodyError::Overloaded => ApiError::client(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "too many deliveries in flight, retry later",
                ),
                BodyError::TooSlow => ApiError::client(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    "the body arrived slower than server.min_body_rate",
                ),
                BodyError::Broken => ApiError::bad_request("the body was cut off"),
            })?;
    let verified = state.verifier().verify(&headers, body).map_err(|err| {
        monitor::delivery(Outcome::BadSignature);
        tracing::warn!(reason = %err, request_id = request_id::in_headers(&headers), "refused an unsigned or forged delivery");
        ApiError::client(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            err.to_string(),
        )
    })?;
    // A large batch (up to 1000 messages, 3 MB) takes milliseconds to parse: off the async
    // workers, so it does not stall other connections.
    let (verified, extracted) = if verified.as_bytes().len() > LARGE_BODY {
        tokio::task::spawn_blocking(move || {
            let extracted = extract(verified.as_bytes());
            (verified, extracted)
        })
        .await
        .map_err(ApiError::internal)?
    } else {
        let extracted = extract(verified.as_bytes());
        (verified, extracted)
    };
    if extracted.status == ParseStatus::Invalid {
        tracing::warn!(
            request_id = request_id::in_headers(&headers),
            "a verified delivery is not JSON; stored raw and flagged"
        );
    }
    let ack = Ack {
        status: "ok",
        leads: extracted.leads.len(),
        parse: extracted.status.as_str(),
    };
    if state.ceiling_mode() {
        return Ok(Json(ack));
    }
    if extracted.is_status_only() && state.keep_raw() == KeepRaw::NoStatuses {
        // Most of a busy number's traffic: no lead, nothing to recover later. Counted only.
        monitor::delivery(Outcome::StatusOnly);
        return Ok(Json(ack));
    }
    let lag = state.store().lag();
    if lag.entries > state.max_projection_lag() {
        monitor::delivery(Outcome::Shed);
        return Err(ApiError::client(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the projection is too far behind the log, retry later",
        ));
    }
    if let Some(hold) = state.hold_back() {
        // Behind, but working: slow this acknowledgement to the projector's pace rather than
        // let the lag grow to the 503s above.
        if let Some(wait) = hold_back_for(&lag, hold.above, hold.at_most) {
            tokio::time::sleep(wait).await;
            monitor::held_back(wait);
        }
    }
    let kind = Kind::of(&extracted);
    let raw = verified.into_bytes();
    // Compression costs microseconds for a typical body; a large batch goes to the blocking
    // pool like its parse did.
    let record = if raw.len() > LARGE_BODY {
        let status = extracted.status;
        let (leads, detected) = (extracted.leads, extracted.detected);
        tokio::task::spawn_blocking(move || {
            LogRecord::new(
                received_at_ms,
                status,
                kind,
                leads.len() + detected.len(),
                &raw,
            )
            .with_leads(leads)
            .with_detected(detected)
        })
        .await
        .map_err(ApiError::internal)?
    } else {
        // `lead_count` counts what the projector builds from the entry: leads and detected
        // events (the projector reads back the bodies of entries that hold some).
        LogRecord::new(
            received_at_ms,
            extracted.status,
            kind,
            extracted.leads.len() + extracted.detected.len(),
            &raw,
        )
        .with_leads(extracted.leads)
        .with_detected(extracted.detected)
    };
    state
        .store()
        .ingest(record)
        .await
        .map_err(|err| match err {
            IngestError::Overloaded => {
                monitor::delivery(Outcome::Shed);
                ApiError::unavailable("overloaded, retry later", err)
            }
            IngestError::Failed | IngestError::Closed => {
                monitor::delivery(Outcome::Failed);
                ApiError::unavailable("not stored, retry later", err)
            }
        })?;
    tracing::debug!(leads = ack.leads, "delivery stored");
    Ok(Json(ack))
}
