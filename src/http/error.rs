//! The HTTP error type. Every error any route returns goes through [`ApiError`], which renders
//! the envelope Graph itself uses, `{"error": {"message", "type", "code"}}`. Use the small
//! constructors (`bad_request`, `not_found`, …) at the edge; 5xx details are logged once, by
//! [`ApiError::into_response`], and never sent. Graph's own errors pass through as
//! [`ApiError::Upstream`] with their status and `error` object intact.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// An error whose message is safe to send: a client mistake (naming what was wrong), or a
    /// gateway failure that says what happened.
    #[error("{message}")]
    Client {
        status: StatusCode,
        kind: &'static str,
        message: String,
    },
    /// Our fault or a dependency's: logged with `detail`, answered with `public` only.
    #[error("{public}: {detail}")]
    Server {
        status: StatusCode,
        kind: &'static str,
        public: &'static str,
        detail: String,
    },
    /// Graph answered with an error: passed back as it came.
    #[error("graph answered {status}")]
    Upstream { status: StatusCode, body: Value },
}

/// The envelope, for the OpenAPI document.
#[derive(Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub code: u16,
}

impl ApiError {
    pub fn client(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError::Client {
            status,
            kind,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::client(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::client(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::client(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::client(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// The database failed or timed out: 503, the cause logged, not shown.
    pub fn database(detail: impl std::fmt::Display) -> Self {
        Self::unavailable("the database did not answer, retry later", detail)
    }

    pub fn unavailable(public: &'static str, detail: impl std::fmt::Display) -> Self {
        ApiError::Server {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "unavailable",
            public,
            detail: detail.to_string(),
        }
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        ApiError::Server {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "internal",
            public: "internal error",
            detail: detail.to_string(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Client { status, .. }
            | ApiError::Server { status, .. }
            | ApiError::Upstream { status, .. } => *status,
        }
    }
}

/// Seconds a client is asked to wait after one of our 503s (shed, or the database failed):
/// load sheds and a failed commit pass in about that long; Meta retries on its own schedule.
const RETRY_AFTER_SECS: &str = "1";

fn envelope(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "code": status.as_u16()}});
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Client {
                status,
                kind,
                message,
            } => envelope(status, kind, &message),
            ApiError::Server {
                status,
                kind,
                public,
                detail,
            } => {
                tracing::error!(status = status.as_u16(), %detail, "{public}");
                envelope(status, kind, public)
            }
            ApiError::Upstream { status, body } => (status, Json(body)).into_response(),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "invalid_request"
        };
        Self::client(status, kind, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        // A missing JSON content type is 415; anything else that does not fit is 400 (axum
        // would answer 422 for a body of the wrong shape).
        match rejection {
            JsonRejection::MissingJsonContentType(r) => Self::client(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                r.body_text(),
            ),
            other => Self::bad_request(other.body_text()),
        }
    }
}

/// A JSON request body that must be an object, read into `T`: an array, a string or a body
/// that does not fit is one status, 400, never axum's 422.
pub fn object_body<T: serde::de::DeserializeOwned>(
    body: std::result::Result<Json<Value>, JsonRejection>,
) -> Result<T> {
    let Json(value) = body?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    serde_json::from_value(value)
        .map_err(|err| ApiError::bad_request(format!("request body: {err}")))
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

/// The envelope for a route nobody serves.
pub async fn fallback() -> ApiError {
    ApiError::not_found("no such route")
}

/// The `type` for an error status that no handler of ours named.
fn kind_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "invalid_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "invalid_request",
    }
}

/// Gives every error the envelope, whoever made it: axum's bare 405, a time-out's 408, an
/// extractor's `text/plain` rejection. Its headers (`Allow`, `Retry-After`) are kept, and a
/// short plain-text body becomes the message.
pub async fn envelope_every_error(response: Response) -> Response {
    if !lacks_envelope(&response) {
        return response;
    }
    let status = response.status();
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = std::str::from_utf8(&text).unwrap_or_default().trim();
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this route".to_owned(),
        StatusCode::REQUEST_TIMEOUT => {
            "the request was not received and answered within server.request_timeout_secs"
                .to_owned()
        }
        _ if !text.is_empty() && !status.is_server_error() => text.to_owned(),
        _ => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase(),
    };
    let fresh = envelope(status, kind_of(status), &message);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, fresh.into_body())
}

/// Whether `response` is an error that [`envelope_every_error`] would rewrite: a 4xx or 5xx
/// that is not JSON.
pub fn lacks_envelope(response: &Response) -> bool {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    (status.is_client_error() || status.is_server_error()) && !is_json
}

/// Longest request target we read (path and query). hyper itself refuses targets over 64 KiB
/// with a bare 414 before any of our code runs.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// A 414 for a request target over [`MAX_URI_BYTES`], before any handler reads it.
pub fn refuse_long_uri(request: &Request) -> Option<Response> {
    let len = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if len > MAX_URI_BYTES {
        return Some(
            ApiError::client(
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                format!("the request target is over {MAX_URI_BYTES} bytes"),
            )
            .into_response(),
        );
    }
    None
}
