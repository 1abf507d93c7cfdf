//! The `/v1` bearer check: `Authorization: Bearer <api.token>`, compared in constant time
//! (`subtle`), before any handler (and so any Graph call) runs.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use secrecy::{ExposeSecret, SecretString};
use subtle::{Choice, ConstantTimeEq};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::Modify;

use crate::app::AppState;
use crate::http::error::ApiError;

/// Whether `header` is `Bearer <token>`, as a [`subtle::Choice`]: the comparison is
/// constant-time in the token's bytes by construction (only `subtle` can make a `Choice`).
/// The scheme is matched case-insensitively (RFC 7235), the token exactly.
pub fn bearer_matches(header: Option<&[u8]>, token: &SecretString) -> Choice {
    let Some(presented) = header.and_then(|h| {
        let (scheme, rest) = h.split_at_checked(7)?;
        scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
    }) else {
        return Choice::from(0);
    };
    presented.ct_eq(token.expose_secret().as_bytes())
}

pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let mut all = request.headers().get_all(AUTHORIZATION).iter();
    // Two Authorization headers are ambiguous: refused whatever their order.
    let header = match (all.next(), all.next()) {
        (Some(one), None) => Some(one.as_bytes()),
        _ => None,
    };
    if !bool::from(bearer_matches(header, state.api_token())) {
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

    fn matches(header: Option<&[u8]>, token: &SecretString) -> bool {
        bearer_matches(header, token).into()
    }

    #[test]
    fn only_the_exact_bearer_token_matches() {
        let token = SecretString::from("s3cret");
        assert!(matches(Some(b"Bearer s3cret"), &token));
        assert!(matches(Some(b"bearer s3cret"), &token));
        assert!(matches(Some(b"BEARER s3cret"), &token));
        for bad in [
            &b"Bearer s3cre"[..],
            b"Bearer s3cret2",
            b"Basic s3cret",
            b"Bearers3cret",
            b"s3cret",
            b"Bearer ",
            b"",
            b"Bearer t3cret",
            b"Bearer s3crex",
        ] {
            assert!(
                !matches(Some(bad), &token),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(!matches(None, &token));
    }

    #[test]
    fn the_token_comparison_is_constant_time_by_construction() {
        // The signature is the proof: the result is a `subtle::Choice`, which only subtle's
        // constant-time primitives produce; no early-returning `==` touches the token.
        let compare: fn(Option<&[u8]>, &SecretString) -> Choice = bearer_matches;
        let token = SecretString::from("abc");
        assert_eq!(compare(Some(b"Bearer abc"), &token).unwrap_u8(), 1);
        assert_eq!(compare(Some(b"Bearer abd"), &token).unwrap_u8(), 0);
    }
}
