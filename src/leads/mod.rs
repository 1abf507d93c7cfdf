//! Leads: [`extract`] turns a verified delivery into leads (pure, no I/O), each [`packed`] into one
//! buffer for the store, [`api`] serves the
//! stored ones over `/v1/leads` ([`export`] streams them as CSV or NDJSON), [`erasure`] takes requests to remove one person's data, and [`eraser`] carries them out.

pub mod api;
pub mod detected;
pub mod eraser;
pub mod erasure;
mod export;
pub mod extract;
pub mod packed;

/// RFC 3339, or whole unix seconds, to unix milliseconds: how `since` and `until` are written
/// everywhere (API and CLI). The error says what is accepted.
pub fn parse_time(value: &str) -> Result<i64, String> {
    // Unix seconds: an optional minus and at most 12 digits (the document's pattern).
    let digits = value.strip_prefix('-').unwrap_or(value);
    if !digits.is_empty() && digits.len() <= 12 && digits.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse::<i64>()
            .map(|secs| secs * 1000)
            .map_err(|_| "out of range".to_owned());
    }
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|_| "expected an RFC 3339 time (2026-11-22T08:00:00Z) or unix seconds".to_owned())
}
