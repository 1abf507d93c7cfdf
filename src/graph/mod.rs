//! The Graph API proxy. [`GraphClient`] holds the access token and is the only code that talks
//! to Graph: `{base_url}/{api_version}/{waba_id}/<edge>`, with a time-out, one retry for a GET
//! whose connection failed, and none for writes. [`sequences`] and [`templates`] check requests
//! against the seeds' rules before spending a call. Graph's own errors come back with Graph's
//! status and `error` object intact; transport failures become 502 or 504 in our envelope.

pub mod sequences;
pub mod templates;

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use reqwest::{Method, RequestBuilder};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;
use crate::config::GraphSettings;
use crate::http::error::ApiError;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(sequences::router())
        .merge(templates::router())
}

/// Talks to `{base_url}/{api_version}/{waba_id}/…` with the configured token.
#[derive(Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    edge_base: String,
    access_token: SecretString,
    timeout: Duration,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("edge_base", &self.edge_base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What a request to Graph sends besides the method and edge.
pub enum Payload {
    None,
    Query(Vec<(String, String)>),
    Json(Value),
    Form(Vec<(String, String)>),
}

/// Graph's answer, passed back to our caller with Graph's status.
#[derive(Debug)]
pub struct GraphResponse {
    pub status: StatusCode,
    pub body: Value,
}

impl IntoResponse for GraphResponse {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl GraphClient {
    pub fn new(settings: &GraphSettings) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout())
            .connect_timeout(settings.timeout())
            .build()?;
        Ok(Self {
            http,
            edge_base: format!(
                "{}/{}/{}",
                settings.base_url, settings.api_version, settings.waba_id
            ),
            access_token: settings.access_token.clone(),
            timeout: settings.timeout(),
        })
    }

    fn request(&self, method: &Method, edge: &str, payload: &Payload) -> RequestBuilder {
        let builder = self
            .http
            .request(method.clone(), format!("{}/{edge}", self.edge_base))
            .bearer_auth(self.access_token.expose_secret());
        match payload {
            Payload::None => builder,
            Payload::Query(pairs) => builder.query(pairs),
            Payload::Json(body) => builder.json(body),
            Payload::Form(fields) => {
                let form = fields
                    .iter()
                    .fold(reqwest::multipart::Form::new(), |form, (k, v)| {
                        form.text(k.clone(), v.clone())
                    });
                builder.multipart(form)
            }
        }
    }

    /// Calls `edge` and returns Graph's JSON answer. A GET is tried once more if the connection
    /// failed; a POST or DELETE never is, since Graph may have acted on it.
    pub async fn call(
        &self,
        method: Method,
        edge: &str,
        payload: Payload,
    ) -> Result<GraphResponse, ApiError> {
        let attempts = if method == Method::GET { 2 } else { 1 };
        let mut last_err = None;
        for attempt in 1..=attempts {
            match self.request(&method, edge, &payload).send().await {
                Ok(response) => return self.read(response).await,
                Err(err) if err.is_timeout() => return Err(self.timed_out()),
                Err(err) => {
                    tracing::warn!(attempt, %method, edge, error = %without_url(&err), "graph request failed");
                    last_err = Some(err);
                }
            }
        }
        let detail = last_err.map(|e| without_url(&e)).unwrap_or_default();
        Err(ApiError::Server {
            status: StatusCode::BAD_GATEWAY,
            kind: "bad_gateway",
            public: "Graph could not be reached",
            detail,
        })
    }

    async fn read(&self, response: reqwest::Response) -> Result<GraphResponse, ApiError> {
        let status =
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(err) if err.is_timeout() => return Err(self.timed_out()),
            Err(err) => {
                return Err(ApiError::Server {
                    status: StatusCode::BAD_GATEWAY,
                    kind: "bad_gateway",
                    public: "Graph's answer was cut off",
                    detail: without_url(&err),
                })
            }
        };
        let body: Value = serde_json::from_slice(&bytes).map_err(|_| {
            ApiError::client(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                format!(
                    "Graph answered {} with a body that is not JSON",
                    status.as_u16()
                ),
            )
        })?;
        if status.is_success() {
            Ok(GraphResponse { status, body })
        } else {
            Err(ApiError::Upstream { status, body })
        }
    }

    fn timed_out(&self) -> ApiError {
        ApiError::client(
            StatusCode::GATEWAY_TIMEOUT,
            "gateway_timeout",
            format!("Graph did not answer within {} s", self.timeout.as_secs()),
        )
    }
}

/// reqwest's error text without the URL (it holds no token, but keeps logs short).
fn without_url(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    if let Some(url) = err.url() {
        text = text.replace(url.as_str(), "<graph>");
    }
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A JSON value as a query or form string: strings as they are, numbers as digits.
pub(crate) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
