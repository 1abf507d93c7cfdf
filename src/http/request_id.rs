//! `x-request-id`: a caller's id is kept only if it is short and plain (at most 128 characters
//! of `[A-Za-z0-9._:-]`), so it can neither forge log fields or lines nor bloat every log line;
//! any other value is dropped and a fresh UUID is made by `SetRequestIdLayer`.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const MAX_LEN: usize = 128;

/// Whether a caller's id may be kept as it is.
pub fn is_safe(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Drops unsafe (or repeated) ids before the id layer runs.
pub fn keep_only_safe_ids(request: &mut Request) {
    let headers = request.headers();
    let mut values = headers.get_all(&REQUEST_ID).iter();
    let keep = match (values.next(), values.next()) {
        (Some(one), None) => is_safe(one.as_bytes()),
        (None, _) => true,
        _ => false,
    };
    if !keep {
        request.headers_mut().remove(&REQUEST_ID);
    }
}

/// The request's id for its span (set by then).
pub fn of(req: &Request) -> &str {
    in_headers(req.headers())
}

/// The id among a request's headers, or `-`: for a log line that has no request span.
pub fn in_headers(headers: &HeaderMap) -> &str {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_ids_are_kept() {
        assert!(is_safe(b"abc-123_X.y:z"));
        assert!(is_safe(&[b'a'; 128]));
        assert!(!is_safe(&[b'a'; 129]));
        assert!(!is_safe(b""));
        assert!(!is_safe(b"a b"));
        assert!(!is_safe(b"x\" level=ERROR msg=\"forged"));
        assert!(!is_safe("é".as_bytes()));
    }
}
