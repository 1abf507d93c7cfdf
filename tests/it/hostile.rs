//! Hostile HTTP against the real server, over raw TCP where a well-behaved client can't go:
//! slow headers and bodies, lying Content-Length, chunked bodies over the limit, oversized
//! signature headers, and bodies of exactly the limit and one byte more.

use std::time::{Duration, Instant};

use ctwa_leads::webhook::verify::sign;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.addr.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes or `limit` passes; returns what arrived.
async fn read_all(stream: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let app = spawn_with(|s| s.server.header_read_timeout_secs = 1).await;
    let mut stream = connect(&app).await;
    stream
        .write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_all(&mut stream, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "connection held for {:?}",
        started.elapsed()
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_trickled_body_gets_408_and_nothing_is_stored() {
    let app = spawn_with(|s| s.server.request_timeout_secs = 1).await;
    let body = one_lead("wamid.slow");
    let head = format!(
        "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Hub-Signature-256: {}\r\nContent-Length: {}\r\n\r\n",
        sign(APP_SECRET, &body),
        body.len()
    );
    let mut stream = connect(&app).await;
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..10]).await.unwrap();
    let answer = read_all(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""type":"request_timeout""#), "{answer}");
    assert_eq!(app.event_count().await, 0);
}

#[tokio::test]
async fn a_content_length_that_lies_never_stores_anything() {
    let app = spawn_app().await;
    let body = one_lead("wamid.lie");
    let sig = sign(APP_SECRET, &body);
    // Claims more than it sends, then stops sending.
    let mut stream = connect(&app).await;
    let head = format!(
        "POST /webhook HTTP/1.1\r\nHost: x\r\nX-Hub-Signature-256: {sig}\r\nContent-Length: {}\r\n\r\n",
        body.len() + 100
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    stream.shutdown().await.unwrap();
    let answer = read_all(&mut stream, Duration::from_secs(5)).await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Claims less than it sends: the signed bytes are cut, so the signature fails.
    let mut stream = connect(&app).await;
    let head = format!(
        "POST /webhook HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Hub-Signature-256: {sig}\r\nContent-Length: {}\r\n\r\n",
        body.len() - 20
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let answer = read_all(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert_eq!(app.event_count().await, 0);
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_gets_413() {
    let app = spawn_with(|s| s.server.max_body_bytes = 4096).await;
    let mut stream = connect(&app).await;
    let head = "POST /webhook HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nX-Hub-Signature-256: sha256=00\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'a'; 1000];
    for _ in 0..6 {
        let _ = stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await;
        let _ = stream.write_all(&chunk).await;
        let _ = stream.write_all(b"\r\n").await;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let answer = read_all(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(app.event_count().await, 0);
}

#[tokio::test]
async fn an_oversized_signature_header_is_refused() {
    let app = spawn_app().await;
    let body = one_lead("wamid.bighdr");
    let huge = format!("sha256={}", "ab".repeat(16 * 1024));
    let res = app.deliver_signed(&body, Some(&huge)).await;
    assert!(
        res.status() == 401 || res.status() == 431,
        "{}",
        res.status()
    );
    assert_eq!(app.event_count().await, 0);
}

/// A valid delivery padded to exactly `len` bytes.
fn delivery_of_len(wamid: &str, len: usize) -> Vec<u8> {
    let mut msg = referral_message(wamid, "4911", "AD1");
    msg["text"]["body"] = json!("");
    let base = delivery(value("PN1", json!([]), json!([msg.clone()]))).len();
    msg["text"]["body"] = json!("x".repeat(len - base));
    let body = delivery(value("PN1", json!([]), json!([msg])));
    assert_eq!(body.len(), len);
    body
}

#[tokio::test]
async fn a_body_of_exactly_3_mb_is_stored_and_one_byte_more_is_413() {
    let app = spawn_app().await;
    let limit = 3 * 1024 * 1024;
    let exact = delivery_of_len("wamid.exact", limit);
    assert_eq!(app.deliver(&exact).await.status(), 200);
    assert!(app.lead("wamid.exact").await.is_some());
    let over = delivery_of_len("wamid.over", limit + 1);
    assert_eq!(app.deliver(&over).await.status(), 413);
    assert!(app.lead("wamid.over").await.is_none());
}
