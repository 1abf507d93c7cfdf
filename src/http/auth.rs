//! The `/v1` bearer check: `Authorization: Bearer <api.token>`, compared in constant time
//! (`subtle`), before any handler (and so any Graph call) runs.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::Modify;

use crate::app::AppState;
use crate::http::error::ApiError;

/// True when `header` is `Bearer <token>`. Constant-time in the token's bytes.
pub fn bearer_matches(header: Option<&[u8]>, token: &SecretString) -> bool {
    let Some(presented) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
        return false;
    };
    presented.ct_eq(token.expose_secret().as_bytes()).into()
}

pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    if !bearer_matches(header, state.api_token()) {
        return Err(ApiError::unauthorized(
            "missing or wrong bearer token (Authorization: Bearer <api.token>)",
        ));
    }
    Ok(next.run(request).await)
}

/// Declares the bearer scheme in the OpenAPI document.
pub struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_matches() {
        let token = SecretString::from("s3cret");
        assert!(bearer_matches(Some(b"Bearer s3cret"), &token));
        for bad in [
            &b"Bearer s3cre"[..],
            b"Bearer s3cret2",
            b"bearer s3cret",
            b"s3cret",
            b"Bearer ",
            b"",
        ] {
            assert!(
                !bearer_matches(Some(bad), &token),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(!bearer_matches(None, &token));
    }
}
