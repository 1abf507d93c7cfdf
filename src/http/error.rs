//! The HTTP error type. Every error any route returns goes through [`ApiError`], which renders
//! the envelope Graph itself uses, `{"error": {"message", "type", "code"}}`. Use the small
//! constructors (`bad_request`, `not_found`, …) at the edge; 5xx details are logged once, by
//! [`ApiError::into_response`], and never sent. Graph's own errors pass through as
//! [`ApiError::Upstream`] with their status and `error` object intact.

use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::http::StatusCode;
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

fn envelope(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "code": status.as_u16()}});
    (status, Json(body)).into_response()
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
        let status = rejection.status();
        let status = if status.is_client_error() {
            status
        } else {
            StatusCode::BAD_REQUEST
        };
        Self::client(status, "invalid_request", rejection.body_text())
    }
}

/// The envelope for a route nobody serves.
pub async fn fallback() -> ApiError {
    ApiError::not_found("no such route")
}
