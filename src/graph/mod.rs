//! The Graph API proxy. [`GraphClient`] holds the access token and is the only code that talks
//! to Graph: `{base_url}/{api_version}/{waba_id}/<edge>`, with a time-out, one retry for a GET
//! whose connection failed, and none for writes. [`sequences`] and [`templates`] check requests
//! against the seeds' rules before spending a call. Graph's own errors come back with Graph's
//! status and `error` object intact; transport failures become 502 or 504 in our envelope.

pub mod dataset;
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
        .merge(dataset::router())
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

impl GraphResponse {
    /// Replaces Graph's `paging.next` / `paging.previous` (which carry our access token) with
    /// links to our own `route`: the caller's own parameters plus Graph's cursor only.
    pub fn with_own_paging(
        mut self,
        links: &crate::http::links::Links,
        headers: &axum::http::HeaderMap,
        route: &str,
        ours: &crate::http::query::Params,
    ) -> Self {
        let Some(paging) = self.body.get_mut("paging").and_then(Value::as_object_mut) else {
            return self;
        };
        for (key, cursor_name) in [("next", "after"), ("previous", "before")] {
            let Some(Value::String(graph_link)) = paging.get(key) else {
                continue;
            };
            let cursor = reqwest::Url::parse(graph_link).ok().and_then(|u| {
                u.query_pairs()
                    .find(|(k, _)| k == cursor_name)
                    .map(|(_, v)| v.into_owned())
            });
            let Some(cursor) = cursor else {
                paging.remove(key);
                continue;
            };
            let link = links.page(headers, route, ours, (cursor_name, &cursor));
            paging.insert(key.to_owned(), Value::String(link));
        }
        self
    }
}

/// Replaces every occurrence of `token` in the strings of `value` (Graph echoes it in links).
fn scrub(value: &mut Value, token: &str) {
    match value {
        Value::String(s) if s.contains(token) => *s = s.replace(token, "[redacted]"),
        Value::Array(items) => items.iter_mut().for_each(|v| scrub(v, token)),
        Value::Object(map) => map.values_mut().for_each(|v| scrub(v, token)),
        _ => {}
    }
}

/// Graph refused *our* token: its 401/403, or OAuth error code 190.
fn is_credentials_error(status: StatusCode, body: &Value) -> bool {
    status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
        || body.pointer("/error/code").and_then(Value::as_i64) == Some(190)
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
                Ok(response) => {
                    crate::monitor::graph_request(edge, response.status().as_u16());
                    return self.read(response).await;
                }
                Err(err) if err.is_timeout() => {
                    crate::monitor::graph_request(edge, StatusCode::GATEWAY_TIMEOUT.as_u16());
                    return Err(self.timed_out());
                }
                Err(err) => {
                    tracing::warn!(attempt, %method, edge, error = %without_url(&err), "graph request failed");
                    last_err = Some(err);
                }
            }
        }
        crate::monitor::graph_request(edge, StatusCode::BAD_GATEWAY.as_u16());
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
        let mut body: Value = serde_json::from_slice(&bytes).map_err(|_| {
            ApiError::client(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                format!(
                    "Graph answered {} with a body that is not JSON",
                    status.as_u16()
                ),
            )
        })?;
        let token = self.access_token.expose_secret();
        if !token.is_empty() {
            scrub(&mut body, token);
        }
        if status.is_success() {
            Ok(GraphResponse { status, body })
        } else if is_credentials_error(status, &body) {
            // Not the caller's 401: our own Graph credentials are the problem.
            tracing::error!(
                status = status.as_u16(),
                "Graph refused the service's access token (graph.access_token)"
            );
            let graph_error = body.get("error").cloned().unwrap_or(body);
            Err(ApiError::Upstream {
                status: StatusCode::BAD_GATEWAY,
                body: serde_json::json!({"error": {
                    "message": "Graph refused this service's Graph credentials (graph.access_token): ask the operator to renew the token",
                    "type": "graph_credentials_refused",
                    "code": 502,
                    "graph_error": graph_error,
                }}),
            })
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

/// Blank: empty or only ASCII spaces, tabs and line breaks. Kept to that set so the OpenAPI
/// document's `[^ \t\r\n]` pattern means the same in every regex engine.
pub fn is_blank(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// The largest integer every JSON parser reads exactly (2⁵³ − 1): whole numbers are taken up
/// to this size, either sign, and the document states the same bounds.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// A JSON number that is whole, as JSON Schema's `integer` means it: `60` and `60.0` alike
/// (JSON has one number type, and clients such as Python's may write either), within
/// ±[`MAX_SAFE_INTEGER`]. Beyond it a float cannot say which integer it was
/// (`-9223372036854775809` reads as the same float as `i64::MIN`).
pub fn whole_number(value: &Value) -> Option<i64> {
    let Value::Number(n) = value else {
        return None;
    };
    let safe = -MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER;
    n.as_i64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() <= MAX_SAFE_INTEGER as f64)
                .map(|f| f as i64)
        })
        .filter(|v| safe.contains(v))
}

/// The pattern of a value that is not blank (see [`is_blank`]).
pub const NOT_BLANK: &str = "[^ \t\r\n]";

/// A JSON value as a query or form string: strings as they are, numbers as digits.
pub(crate) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_are_whole_whatever_their_spelling() {
        let parse = |s: &str| whole_number(&serde_json::from_str::<Value>(s).unwrap());
        assert_eq!(parse("60"), Some(60));
        assert_eq!(parse("60.0"), Some(60));
        assert_eq!(parse("-52627329740499.0"), Some(-52_627_329_740_499));
        assert_eq!(parse("60.5"), None);
        assert_eq!(parse("1e300"), None);
        assert_eq!(parse("-9223372036854775809"), None);
        assert_eq!(parse("-9223372036854775808"), None);
        assert_eq!(parse("9007199254740991"), Some(MAX_SAFE_INTEGER));
        assert_eq!(parse("9007199254740992"), None);
        assert_eq!(parse("\"60\""), None);
    }
}
