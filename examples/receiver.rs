//! A small receiver for forwarded leads, for trying `[[forward]]` locally: it verifies each
//! request's Standard Webhooks signature the way any receiver should (HMAC-SHA256 of
//! `{webhook-id}.{webhook-timestamp}.{body}` with the key after `whsec_`, a timestamp within
//! five minutes, constant-time comparison), prints the lead, and answers 204 (401 when the
//! signature is wrong). It deduplicates on `webhook-id`, as a real receiver should.
//!
//!     cargo run --example receiver -- 127.0.0.1:9000 whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How old (or how far ahead) a `webhook-timestamp` may be: replayed captures are refused.
const TOLERANCE_SECS: i64 = 300;

struct Receiver {
    key: Vec<u8>,
    seen: Mutex<HashSet<String>>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn verified(key: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let (id, ts) = (
        header(headers, "webhook-id"),
        header(headers, "webhook-timestamp"),
    );
    let Ok(seconds) = ts.parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - seconds).abs() > TOLERANCE_SECS {
        return false;
    }
    header(headers, "webhook-signature")
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        .any(|given| {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
                return false;
            };
            mac.update(format!("{id}.{ts}.").as_bytes());
            mac.update(body);
            mac.verify_slice(&given).is_ok()
        })
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if !verified(&receiver.key, &headers, &body) {
        eprintln!("refused: bad signature or stale timestamp");
        return StatusCode::UNAUTHORIZED;
    }
    let id = header(&headers, "webhook-id").to_owned();
    let first = receiver
        .seen
        .lock()
        .map(|mut seen| seen.insert(id.clone()))
        .unwrap_or(true);
    if !first {
        println!("{id}: already handled (a retry); acknowledged again");
        return StatusCode::NO_CONTENT;
    }
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let lead = &event["data"];
    println!(
        "{id}: verified {} — lead {} (wamid {}) from ad {} ({}), ctwa_clid {}",
        event["type"],
        lead["id"],
        lead["wamid"],
        lead["referral"]["source_id"],
        lead["referral"]["headline"],
        lead["referral"]["ctwa_clid"],
    );
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(secret)) = (args.next(), args.next()) else {
        eprintln!("usage: receiver <host:port> <whsec_ secret>");
        std::process::exit(2);
    };
    let key = STANDARD.decode(secret.trim().trim_start_matches("whsec_"))?;
    let receiver = Arc::new(Receiver {
        key,
        seen: Mutex::new(HashSet::new()),
    });
    let app = Router::new()
        .route("/{*path}", post(receive))
        .route("/", post(receive))
        .with_state(receiver);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("receiving forwarded leads on http://{listen}/");
    axum::serve(listener, app).await?;
    Ok(())
}
