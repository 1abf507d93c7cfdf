//! One attempt to hand one lead to one destination: the Standard Webhooks request (the
//! `lead.created` event, signed), the response read at most [`MAX_RESPONSE_BYTES`] deep, and the
//! decision it leads to ([`Mark`]): done, retry on the schedule (or at `Retry-After`), failed
//! for good, or held because the destination answered 410 Gone.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::signing::Signer;
use crate::leads::api::Lead;
use crate::store::outbox::{Due, Mark};

/// Bytes of a response read, at most: enough for an error's first lines; a 5 MB error page
/// costs no more memory than a short one.
pub const MAX_RESPONSE_BYTES: usize = 4096;
/// Characters of a response kept as the delivery's `last_error`.
const ERROR_CHARS: usize = 300;
/// The longest `Retry-After` honoured; a longer one is cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The event a destination receives.
#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: String,
    data: &'a Lead,
}

/// The request body: `{"type": "lead.created", "timestamp", "data": <the lead as GET
/// /v1/leads/{id} returns it>}`. The same bytes on every attempt (the timestamp is when the
/// delivery was created).
pub fn body(due: Due) -> Result<Vec<u8>, serde_json::Error> {
    let lead = Lead::from(due.lead);
    let timestamp = DateTime::<Utc>::from_timestamp_millis(due.queued_at)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true);
    serde_json::to_vec(&Event {
        kind: "lead.created",
        timestamp,
        data: &lead,
    })
}

/// What an attempt found out, beyond the delivery's own mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Not delivered; retried later.
    NotDelivered,
    /// 429/503 with `Retry-After`: the whole destination waits this long.
    Pause(Duration),
    /// 410 Gone: the destination is disabled.
    Gone,
}

/// The next step after a failed attempt at schedule position `step`: a retry at the next
/// position's delay (±10% jitter), or `failed` when the schedule is exhausted. `wait`
/// (`Retry-After`) replaces the schedule's delay.
pub fn after_failure(
    schedule: &[Duration],
    step: i64,
    code: Option<u16>,
    error: String,
    wait: Option<Duration>,
    now_ms: i64,
) -> Mark {
    let next = step + 1;
    let Some(delay) = schedule.get(next as usize) else {
        return Mark::Failed { code, error };
    };
    let delay = wait.unwrap_or_else(|| jitter(*delay));
    Mark::Retry {
        code,
        error,
        at_ms: now_ms + delay.as_millis() as i64,
        step: next,
    }
}

/// `delay` ±10%, uniformly.
pub fn jitter(delay: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let unit = (random >> 11) as f64 / (1u64 << 53) as f64;
    delay.mul_f64(0.9 + 0.2 * unit)
}

/// `Retry-After` as seconds or an HTTP date, capped.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&Utc) - Utc::now())
                .to_std()
                .unwrap_or_default()
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Reads at most [`MAX_RESPONSE_BYTES`] of a response body, then stops (the rest is never
/// read; the connection is dropped).
pub async fn read_capped(response: reqwest::Response) -> Vec<u8> {
    read_capped_to(response, MAX_RESPONSE_BYTES).await
}

/// Reads at most `max` bytes of a response body.
pub async fn read_capped_to(mut response: reqwest::Response, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < max {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = max - out.len();
                out.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            _ => break,
        }
    }
    out
}

/// A response's first characters, on one line, for `last_error`.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.chars().count() > ERROR_CHARS {
        out = out.chars().take(ERROR_CHARS).collect::<String>() + "…";
    }
    out
}

/// The request, as a destination worker sends it.
pub struct Target {
    pub client: reqwest::Client,
    pub url: reqwest::Url,
    pub signer: Signer,
    pub timeout: Duration,
    pub schedule: std::sync::Arc<[Duration]>,
}

/// Sends `due` once and decides what follows.
pub async fn send(target: &Target, due: Due) -> (Mark, Verdict) {
    let now = Utc::now();
    let (step, webhook_id) = (due.step, due.webhook_id.clone());
    let fail = |code: Option<u16>, error: String, wait: Option<Duration>| {
        after_failure(
            &target.schedule,
            step,
            code,
            error,
            wait,
            now.timestamp_millis(),
        )
    };
    let body = match body(due) {
        Ok(body) => body,
        Err(err) => {
            let error = format!("the lead could not be serialized: {err}");
            return (Mark::Failed { code: None, error }, Verdict::NotDelivered);
        }
    };
    let timestamp = now.timestamp();
    let signature = target.signer.sign(&webhook_id, timestamp, &body);
    let sent = target
        .client
        .post(target.url.clone())
        .timeout(target.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", webhook_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(err) => {
            // Never the URL: a hook URL often carries a token in its path.
            let error = if err.is_timeout() {
                format!("no answer within {} s", target.timeout.as_secs())
            } else if err.is_connect() {
                "could not connect".to_owned()
            } else {
                format!("request failed: {}", err.without_url())
            };
            return (fail(None, error, None), Verdict::NotDelivered);
        }
    };
    let status = response.status();
    let code = status.as_u16();
    if status.is_success() {
        return (Mark::Succeeded { code }, Verdict::Delivered);
    }
    let wait = matches!(code, 429 | 503)
        .then(|| retry_after(response.headers()))
        .flatten();
    if status.is_redirection() {
        return (
            fail(
                Some(code),
                format!("HTTP {code}: redirects are not followed"),
                None,
            ),
            Verdict::NotDelivered,
        );
    }
    let text = excerpt(&read_capped(response).await);
    let error = if text.is_empty() {
        format!("HTTP {code}")
    } else {
        format!("HTTP {code}: {text}")
    };
    if code == 410 {
        let error = format!("{error} (410 Gone: the destination is disabled until restart)");
        return (Mark::Held { code, error }, Verdict::Gone);
    }
    match wait {
        Some(wait) => (fail(Some(code), error, Some(wait)), Verdict::Pause(wait)),
        None => (fail(Some(code), error, None), Verdict::NotDelivered),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Vec<Duration> {
        [0, 5, 300]
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect()
    }

    #[test]
    fn failures_walk_the_schedule_then_fail() {
        let s = schedule();
        match after_failure(&s, 0, Some(500), "x".into(), None, 1_000_000) {
            Mark::Retry { at_ms, step, .. } => {
                assert_eq!(step, 1);
                assert!((1_004_500..=1_005_500).contains(&at_ms), "{at_ms}");
            }
            other => panic!("{other:?}"),
        }
        match after_failure(&s, 1, None, "x".into(), None, 0) {
            Mark::Retry { at_ms, step, .. } => {
                assert_eq!(step, 2);
                assert!((270_000..=330_000).contains(&at_ms), "{at_ms}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            after_failure(&s, 2, Some(500), "x".into(), None, 0),
            Mark::Failed {
                code: Some(500),
                ..
            }
        ));
    }

    #[test]
    fn retry_after_replaces_the_delay() {
        let mark = after_failure(
            &schedule(),
            0,
            Some(429),
            "x".into(),
            Some(Duration::from_secs(42)),
            0,
        );
        assert!(
            matches!(
                mark,
                Mark::Retry {
                    at_ms: 42_000,
                    step: 1,
                    ..
                }
            ),
            "{mark:?}"
        );
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_varies() {
        let d = Duration::from_secs(100);
        let all: Vec<Duration> = (0..200).map(|_| jitter(d)).collect();
        assert!(all
            .iter()
            .all(|j| *j >= Duration::from_secs(90) && *j <= Duration::from_secs(110)));
        assert!(all.iter().any(|j| *j != all[0]));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = (Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        h.insert("retry-after", later.parse().unwrap());
        let got = retry_after(&h).unwrap();
        assert!(
            got > Duration::from_secs(100) && got <= Duration::from_secs(120),
            "{got:?}"
        );
        h.insert("retry-after", "999999999".parse().unwrap());
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn excerpts_are_one_short_line() {
        let long = "<html>\n  <body>".to_owned() + &"x".repeat(5000);
        let e = excerpt(long.as_bytes());
        assert!(!e.contains('\n'));
        assert!(e.chars().count() <= ERROR_CHARS + 1);
    }
}
