//! Losing nothing, proved against the real binary: SIGKILL at a random moment under 16
//! concurrent clients (landing during projection too), restart on the same files, let the
//! projector catch up, and every acknowledged lead is there exactly once with both databases
//! intact; and SIGTERM under 64 busy connections exits 0 within 10 s, with the projector
//! drained and nothing acknowledged lost.
//!
//! With lead forwarding and auto LeadSubmitted on, every lead has its outbox delivery and its
//! one conversion across the kills, and a send cut off by SIGKILL before its answer was
//! recorded is sent again with the same `webhook-id`.
//!
//! CRASH_ITERATIONS (default 5) sets the kill rounds; `scripts/crash-test` runs 20 on release.

#[path = "it/helpers.rs"]
mod helpers;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use helpers::{binary_config, free_port, one_lead, APP_SECRET, FORWARD_SECRET};

/// Adds a forwarding destination at `url` to the config file.
fn forward_to(config: &Path, url: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(config)
        .expect("config file");
    writeln!(
        file,
        "[forwarding]\nretry_schedule_secs = [0, 0.5, 0.5]\n[[forward]]\nname = \"crm\"\nurl = \"{url}\"\nsecret = \"{FORWARD_SECRET}\""
    )
    .expect("config written");
}

/// Turns on the Conversions API with auto `LeadSubmitted`, its Graph at `url`.
fn capi_to(config: &Path, url: &str) {
    let text = std::fs::read_to_string(config).expect("config file");
    let text = text.replacen("[graph]", &format!("[graph]\nbase_url = \"{url}\""), 1)
        + "\n[capi]\ndataset_id = \"1234567890\"\nauto_lead_submitted = true\n";
    std::fs::write(config, text).expect("config written");
}

/// A destination on loopback that records each request's `webhook-id`; it never answers the
/// first request (the connection hangs, as a slow receiver's would) and answers 200 to the rest.
async fn hanging_destination() -> (String, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let ids = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let ids = ids.clone();
            tokio::spawn(async move {
                loop {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 8192];
                    let body_start = loop {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&request[..body_start]).to_lowercase();
                    let field = |name: &str| {
                        head.lines()
                            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
                    };
                    let length: usize = field("content-length:")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while request.len() < body_start + length {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let first = {
                        let mut ids = ids.lock().expect("ids");
                        ids.push(field("webhook-id:").unwrap_or_default());
                        ids.len() == 1
                    };
                    if first {
                        std::future::pending::<()>().await;
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if sock.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, seen)
}

fn start(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ctwa-leads"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the server starts")
}

/// Starts the server on `config` for the first time and waits until it is ready; returns it
/// and the port it listens on. `free_port` only finds a port that was free a moment ago: a
/// listener or a connection elsewhere in the suite can take it before the server binds, and
/// then the server exits at once ("address already in use"). It is then moved to another
/// port, by rewriting the `listen` line, up to five times.
async fn start_ready(client: &reqwest::Client, config: &Path, mut port: u16) -> (Child, u16) {
    for _ in 0..5 {
        let mut server = start(config);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if server.try_wait().expect("server status").is_some() {
                break;
            }
            // With a deadline: whatever took the port may accept and never answer.
            if let Ok(r) = client
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .timeout(Duration::from_secs(1))
                .send()
                .await
            {
                if r.status() == 200 {
                    return (server, port);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = server.kill();
        let _ = server.wait();
        let next = free_port();
        let text = std::fs::read_to_string(config).expect("config read");
        let moved = text.replace(
            &format!("listen = \"127.0.0.1:{port}\""),
            &format!("listen = \"127.0.0.1:{next}\""),
        );
        assert_ne!(moved, text, "the config names the port");
        std::fs::write(config, moved).expect("config written");
        port = next;
    }
    panic!("the server did not become ready on any of five ports");
}

/// `clients` tasks send unique deliveries until `stop`; acknowledged wamids land in `acked`.
fn drive(
    port: u16,
    clients: usize,
    round: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (stop, acked) = (stop.clone(), acked.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .expect("client");
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let wamid = format!("wamid.r{round}c{c}n{n}");
                    n += 1;
                    let body = one_lead(&wamid);
                    let sig = ctwa_leads::webhook::verify::sign(APP_SECRET, &body);
                    let res = client
                        .post(format!("http://127.0.0.1:{port}/webhook"))
                        .header("x-hub-signature-256", sig)
                        .body(body)
                        .send()
                        .await;
                    match res {
                        Ok(r) if r.status() == 200 => acked.lock().expect("acked").push(wamid),
                        Ok(_) => {}
                        // The server is gone (killed or stopping): not acknowledged.
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            })
        })
        .collect()
}

/// Waits until `/readyz` says the projection has caught up with the log.
async fn wait_caught_up(client: &reqwest::Client, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
        {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                if v["projection"]["entries"] == 0 {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the projection did not catch up");
}

/// Every acknowledged wamid stored exactly once, and `PRAGMA integrity_check` is ok on both
/// files.
async fn verify(dir: &Path, acked: &[String], capi: bool) -> usize {
    for file in ["leads-log.db", "leads.db"] {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.join(file).display()))
            .await
            .expect("open the database");
        let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&pool)
            .await
            .expect("integrity_check");
        assert_eq!(integrity, "ok", "{file}");
        pool.close().await;
    }
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.join("leads.db").display()))
        .await
        .expect("open the database");
    let stored: Vec<(String, i64)> =
        sqlx::query_as("SELECT wamid, COUNT(*) FROM leads GROUP BY wamid")
            .fetch_all(&pool)
            .await
            .expect("leads");
    assert!(
        stored.iter().all(|(_, n)| *n == 1),
        "a lead is stored twice"
    );
    let stored: std::collections::HashSet<String> = stored.into_iter().map(|(w, _)| w).collect();
    // Forwarding is on: each lead has exactly one delivery, and no delivery lacks its lead.
    let (without, orphans, deliveries): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM leads l WHERE NOT EXISTS \
                 (SELECT 1 FROM deliveries d WHERE d.lead_id = l.id)), \
                (SELECT COUNT(*) FROM deliveries d WHERE NOT EXISTS \
                 (SELECT 1 FROM leads l WHERE l.id = d.lead_id)), \
                (SELECT COUNT(*) FROM deliveries)",
    )
    .fetch_one(&pool)
    .await
    .expect("outbox");
    assert_eq!(
        (without, orphans),
        (0, 0),
        "a lead without its delivery, or the reverse"
    );
    assert_eq!(deliveries as usize, stored.len(), "one delivery per lead");
    if capi {
        // auto_lead_submitted: exactly one LeadSubmitted per lead, none without its lead.
        let (not_one, orphans): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM leads l WHERE l.ctwa_clid IS NOT NULL AND \
                     (SELECT COUNT(*) FROM conversions c WHERE c.lead_id = l.id) != 1), \
                    (SELECT COUNT(*) FROM conversions c WHERE NOT EXISTS \
                     (SELECT 1 FROM leads l WHERE l.id = c.lead_id))",
        )
        .fetch_one(&pool)
        .await
        .expect("conversions");
        assert_eq!(
            (not_one, orphans),
            (0, 0),
            "a lead without exactly one LeadSubmitted"
        );
    }
    pool.close().await;
    acked.iter().filter(|w| !stored.contains(*w)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_lead() {
    let rounds: usize = std::env::var("CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut port = free_port();
    let config = binary_config(dir.path(), port);
    let receiver = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    forward_to(&config, &format!("{}/hook", receiver.uri()));
    capi_to(&config, &receiver.uri());
    let client = reqwest::Client::new();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(7)
        | 1;
    for round in 0..rounds {
        let (mut server, moved) = start_ready(&client, &config, port).await;
        port = moved;
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = drive(port, 16, round, stop.clone(), acked.clone());
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(150 + seed % 600)).await;
        server.kill().expect("SIGKILL");
        server.wait().expect("reaped");
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("client task");
        }
    }
    // Restart once more on the same database: recovery must keep everything acknowledged.
    let (mut server, moved) = start_ready(&client, &config, port).await;
    port = moved;
    wait_caught_up(&client, port).await;
    let acked = acked.lock().expect("acked").clone();
    let lost = verify(dir.path(), &acked, true).await;
    server.kill().expect("SIGKILL");
    let _ = server.wait();
    eprintln!(
        "crash test: {rounds} SIGKILLs under 16 clients: {} acknowledged, {lost} lost",
        acked.len()
    );
    assert!(
        !acked.is_empty(),
        "nothing was acknowledged: the test proved nothing"
    );
    assert_eq!(lost, 0, "acknowledged leads were lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_and_exits_zero_within_ten_seconds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut port = free_port();
    let config = binary_config(dir.path(), port);
    let receiver = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    forward_to(&config, &format!("{}/hook", receiver.uri()));
    let client = reqwest::Client::new();
    let (mut server, moved) = start_ready(&client, &config, port).await;
    port = moved;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = drive(port, 64, 0, stop.clone(), acked.clone());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let signalled = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = loop {
        if let Some(exit) = server.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("client task");
    }
    assert!(exit.success(), "exit status {exit:?}");
    let acked = acked.lock().expect("acked").clone();
    let lost = verify(dir.path(), &acked, false).await;
    eprintln!(
        "graceful shutdown: exited in {took:?}, {} acknowledged, {lost} lost",
        acked.len()
    );
    assert!(!acked.is_empty());
    assert_eq!(lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_cut_off_by_a_crash_is_sent_again_with_the_same_webhook_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut port = free_port();
    let config = binary_config(dir.path(), port);
    let (url, seen) = hanging_destination().await;
    forward_to(&config, &url);
    let client = reqwest::Client::new();
    let (mut server, moved) = start_ready(&client, &config, port).await;
    port = moved;
    let body = one_lead("wamid.crash-forward");
    let res = client
        .post(format!("http://127.0.0.1:{port}/webhook"))
        .header(
            "x-hub-signature-256",
            ctwa_leads::webhook::verify::sign(APP_SECRET, &body),
        )
        .body(body)
        .send()
        .await
        .expect("delivered");
    assert_eq!(res.status(), 200);
    // The destination has the request; its answer never comes; the service dies.
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().expect("ids").is_empty() {
        assert!(Instant::now() < deadline, "the lead was never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill().expect("SIGKILL");
    server.wait().expect("reaped");
    let (mut server, moved) = start_ready(&client, &config, port).await;
    port = moved;
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.lock().expect("ids").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "not sent again after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Recorded as delivered, once, and not sent a third time.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list: serde_json::Value = client
            .get(format!("http://127.0.0.1:{port}/v1/deliveries"))
            .bearer_auth(helpers::API_TOKEN)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        if list["data"][0]["status"] == "succeeded" {
            assert_eq!(list["data"].as_array().map(Vec::len), Some(1));
            break;
        }
        assert!(Instant::now() < deadline, "never recorded: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill().expect("SIGKILL");
    let _ = server.wait();
    let ids = seen.lock().expect("ids").clone();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids[0].starts_with("msg_"), "{ids:?}");
    assert_eq!(ids[0], ids[1], "the re-send carries a new webhook-id");
}
