//! The shared harness: `spawn_app()` starts the real application on a temporary database with
//! wiremock standing in for Graph, and the delivery builders sign bodies exactly as Meta does.
//! Set `TEST_LOG=1` to see the application's logs.

// Not every test module uses every helper.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use ctwa_leads::simulate::meta_json;
use ctwa_leads::store::leads::LeadRow;
use ctwa_leads::store::Store;
use ctwa_leads::webhook::verify::{sign, SIGNATURE_HEADER};
use ctwa_leads::{Application, Settings};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wiremock::MockServer;

pub const APP_SECRET: &str = "test-app-secret-1";
pub const ROTATED_SECRET: &str = "test-app-secret-2";
pub const VERIFY_TOKEN: &str = "test-verify-token";
pub const API_TOKEN: &str = "test-api-token";
pub const GRAPH_TOKEN: &str = "test-graph-token";
pub const WABA_ID: &str = "102290129340398";
/// A forwarding destination's Standard Webhooks secret (the key is 32 bytes of 0x2a).
pub const FORWARD_SECRET: &str = "whsec_KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

pub struct TestApp {
    pub addr: String,
    /// `http://127.0.0.1:PORT` of `/metrics`, when `[metrics] listen` was set.
    pub metrics_addr: Option<String>,
    pub client: reqwest::Client,
    pub store: Store,
    pub graph: MockServer,
    pub dir: Arc<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

pub fn settings(db: &std::path::Path, graph_url: &str) -> Settings {
    let toml = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        max_body_bytes = 3145728
        [database]
        url = "sqlite://{db}"
        [webhook]
        verify_token = "{VERIFY_TOKEN}"
        app_secrets = ["{APP_SECRET}", "{ROTATED_SECRET}"]
        [api]
        token = "{API_TOKEN}"
        [graph]
        base_url = "{graph_url}"
        api_version = "v21.0"
        access_token = "{GRAPH_TOKEN}"
        waba_id = "{WABA_ID}"
        timeout_secs = 2
        [ingest]
        # Tests read right after writing: no pacing of the projection.
        projection_pace_ms = 0
        "#,
        db = db.display()
    );
    Settings::from_toml(&toml).expect("test settings are valid")
}

/// A port free on loopback right now, for a server process a test starts.
/// The `[[forward]]` / `[forwarding]` part of a config, parsed as the service would.
pub fn forwarding(snippet: &str) -> ctwa_leads::config::ForwardingSettings {
    let toml = format!(
        r#"
        [webhook]
        verify_token = "v"
        app_secrets = ["s"]
        [api]
        token = "t"
        [graph]
        access_token = "g"
        waba_id = "1"
        {snippet}
        "#
    );
    Settings::from_toml(&toml)
        .expect("the forwarding snippet is valid")
        .forwarding
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A config file in `dir` for the real binary: listening on 127.0.0.1:`port`, its database
/// in `dir`, the suite's secrets.
pub fn binary_config(dir: &std::path::Path, port: u16) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            r#"
            [server]
            listen = "127.0.0.1:{port}"
            [database]
            url = "sqlite://{db}"
            [webhook]
            verify_token = "{VERIFY_TOKEN}"
            app_secrets = ["{APP_SECRET}"]
            [api]
            token = "{API_TOKEN}"
            [graph]
            access_token = "{GRAPH_TOKEN}"
            waba_id = "1"
            "#,
            db = dir.join("leads.db").display()
        ),
    )
    .expect("config written");
    path
}

pub async fn spawn_app() -> TestApp {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    spawn_in(dir, MockServer::start().await, tweak).await
}

pub fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("nested").join("leads.db")
}

/// Everything the suite logs at DEBUG (wiremock's own request logs aside: it is the fake
/// Graph), so that each test can check no secret and no payload reached a log line.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<std::sync::Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn contents(&self) -> String {
        self.0
            .lock()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

static CAPTURE: std::sync::OnceLock<Option<LogCapture>> = std::sync::OnceLock::new();

fn init_logs() {
    CAPTURE.get_or_init(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            ctwa_leads::telemetry::init(ctwa_leads::config::LogFormat::Text);
            return None;
        }
        let capture = LogCapture::default();
        tracing_subscriber::fmt()
            .with_env_filter("debug,wiremock=off")
            .with_writer(capture.clone())
            .with_ansi(false)
            .try_init()
            .ok()
            .map(|_| capture)
    });
}

/// Personal data sent in wrongly typed fields (see `hardening`): never logged either.
pub const MISTYPED_NAME: &str = "Jane Mistyped-Doe";
pub const MISTYPED_PHONE: &str = "4915187654321";

/// Secrets and payload content that must never appear in a log line.
pub const NEVER_LOGGED: &[&str] = &[
    MISTYPED_NAME,
    MISTYPED_PHONE,
    VERIFY_TOKEN,
    APP_SECRET,
    ROTATED_SECRET,
    API_TOKEN,
    GRAPH_TOKEN,
    FORWARD_SECRET,
    "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio",
    "Hi, is this still available?",
    "hub.verify_token",
];

/// What the suite has logged so far; `None` when logs go to the terminal (`TEST_LOG`).
pub fn captured_logs() -> Option<String> {
    let capture = CAPTURE.get()?.as_ref()?;
    capture
        .0
        .lock()
        .ok()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Panics if the suite's captured logs hold a secret or payload text.
pub fn assert_logs_clean() {
    let Some(Some(capture)) = CAPTURE.get() else {
        return;
    };
    let logs = capture.contents();
    for needle in NEVER_LOGGED {
        if let Some(at) = logs.find(needle) {
            let start = logs[..at].rfind('\n').map_or(0, |i| i + 1);
            let end = logs[at..].find('\n').map_or(logs.len(), |i| at + i);
            panic!("{needle:?} reached a log line: {}", &logs[start..end]);
        }
    }
}

pub async fn spawn_in(
    dir: Arc<TempDir>,
    graph: MockServer,
    tweak: impl FnOnce(&mut Settings),
) -> TestApp {
    init_logs();
    let mut s = settings(&db_path(&dir), &graph.uri());
    tweak(&mut s);
    let app = Application::build(s).await.expect("the app builds");
    let addr = format!("http://127.0.0.1:{}", app.port());
    let metrics_addr = app.metrics_addr().map(|a| format!("http://{a}"));
    let store = app.store();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        app.run_until(async {
            let _ = stopped.await;
        })
        .await
        .expect("the server runs");
    });
    TestApp {
        addr,
        metrics_addr,
        client: reqwest::Client::new(),
        store,
        graph,
        dir,
        stop: Some(stop),
        handle: Some(handle),
    }
}

impl TestApp {
    /// Stops gracefully and waits until the writer has closed the database.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("the server task ends cleanly");
        }
    }

    /// Stops, then starts a new instance on the same database.
    pub async fn restart(self) -> TestApp {
        self.restart_with(|_| {}).await
    }

    /// Stops, then starts a new instance on the same database with `tweak`ed settings.
    /// The fake Graph, with its mocks and the requests it has seen, carries over.
    pub async fn restart_with(mut self, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        self.stop().await;
        let dir = self.dir.clone();
        let graph = std::mem::replace(&mut self.graph, MockServer::start().await);
        spawn_in(dir, graph, tweak).await
    }

    /// An authorized `/v1` POST without a body.
    pub async fn post(&self, path: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .expect("request sent")
    }

    /// Polls `GET path` until `done` holds for its JSON (or panics after `secs`).
    pub async fn wait_for_json(
        &self,
        path: &str,
        secs: u64,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let v = self.get_json(path).await;
            if done(&v) {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{path} never got there: {v}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    /// POSTs `body` signed, without waiting for the projection.
    pub async fn deliver_no_wait(&self, body: &[u8]) -> reqwest::Response {
        self.deliver_signed_no_wait(body, Some(&sign(APP_SECRET, body)))
            .await
    }

    /// POSTs `body` signed with the primary app secret.
    pub async fn deliver(&self, body: &[u8]) -> reqwest::Response {
        self.deliver_signed(body, Some(&sign(APP_SECRET, body)))
            .await
    }

    /// POSTs `body` with `signature`; after a 200, waits until the projector has built the
    /// leads of everything acknowledged so far, so a test reads what it just delivered.
    pub async fn deliver_signed(&self, body: &[u8], signature: Option<&str>) -> reqwest::Response {
        let res = self.deliver_signed_no_wait(body, signature).await;
        if res.status().is_success() {
            self.settle().await;
        }
        res
    }

    /// POSTs without waiting for the projection (the acknowledgement alone).
    pub async fn deliver_signed_no_wait(
        &self,
        body: &[u8],
        signature: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .post(self.url("/webhook"))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(sig) = signature {
            req = req.header(SIGNATURE_HEADER, sig);
        }
        req.send().await.expect("request sent")
    }

    /// Waits until the projection has caught up with every acknowledged delivery.
    pub async fn settle(&self) {
        assert!(
            self.store
                .wait_projected(std::time::Duration::from_secs(20))
                .await,
            "the projection did not catch up"
        );
    }

    pub async fn lead(&self, wamid: &str) -> Option<LeadRow> {
        ctwa_leads::store::leads::by_wamid(&self.store, wamid)
            .await
            .expect("query")
    }

    pub async fn lead_count(&self) -> i64 {
        ctwa_leads::store::leads::count(&self.store)
            .await
            .expect("count")
    }

    /// A connection of its own to the app's database, as another process would open one.
    pub async fn outside_pool(&self) -> sqlx::SqlitePool {
        sqlx::SqlitePool::connect(&format!("sqlite://{}", db_path(&self.dir).display()))
            .await
            .expect("open the database")
    }

    /// A connection of its own to the app's leads file that holds the file's write lock
    /// (`BEGIN IMMEDIATE`), as another writer would, until the test sends `COMMIT` on it.
    pub async fn outside_writer(&self) -> sqlx::pool::PoolConnection<sqlx::Sqlite> {
        let mut conn = self
            .outside_pool()
            .await
            .acquire()
            .await
            .expect("a connection");
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .expect("the write lock");
        conn
    }

    /// Breaks the read side: the leads table is renamed away, so the projector's rounds fail
    /// while the log keeps acknowledging. Returns the pool to [`mend_leads_table`] with.
    pub async fn break_leads_table(&self) -> sqlx::SqlitePool {
        let pool = self.outside_pool().await;
        sqlx::query("ALTER TABLE leads RENAME TO leads_away")
            .execute(&pool)
            .await
            .expect("the leads table renamed away");
        pool
    }

    /// A connection of its own to the app's delivery log.
    pub async fn outside_log(&self) -> sqlx::SqlitePool {
        sqlx::SqlitePool::connect(&format!("sqlite://{}", self.store.log_path().display()))
            .await
            .expect("open the log")
    }

    /// Log entries, i.e. raw deliveries kept.
    pub async fn event_count(&self) -> usize {
        self.store.log_entries().await.expect("log entries") as usize
    }

    /// An authorized `/v1` GET.
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(API_TOKEN)
    }

    /// An authorized `/v1` GET that must answer JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.get(path)
            .send()
            .await
            .expect("request sent")
            .json()
            .await
            .expect("a JSON answer")
    }

    /// The `id`s of the rows a `/v1` listing (`/v1/deliveries`, `/v1/conversions`) answers, in
    /// its order (newest first).
    pub async fn listed_ids(&self, path: &str) -> Vec<i64> {
        self.get_json(path).await["data"]
            .as_array()
            .expect("a data array")
            .iter()
            .map(|row| row["id"].as_i64().expect("a numeric id"))
            .collect()
    }

    /// An authorized `/v1` POST of `body` as JSON.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(API_TOKEN)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// An authorized `/v1` DELETE.
    /// `DELETE /v1/contacts/{id}`, answered done (200): the counts of what it removed.
    pub async fn erase(&self, id: &str) -> serde_json::Value {
        let res = self.delete(&format!("/v1/contacts/{id}")).await;
        assert_eq!(
            res.status(),
            200,
            "the erasure is done in the request's time"
        );
        let erasure: serde_json::Value = res.json().await.expect("a JSON answer");
        assert_eq!(erasure["status"], "done", "{erasure}");
        erasure_counts(&erasure)
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .expect("request sent")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if !std::thread::panicking() {
            assert_logs_clean();
        }
    }
}

/// A referral message from `from`, as in the seed's webhook example.
pub fn referral_message(wamid: &str, from: &str, ad: &str) -> Value {
    json!({
        "from": from,
        "id": wamid,
        "timestamp": "1732262400",
        "type": "text",
        "text": {"body": "Hi, is this still available?"},
        "referral": {
            "source_url": "https://fb.me/2ZulEu42P",
            "source_id": ad,
            "source_type": "ad",
            "headline": "Summer sale",
            "body": "Chat with us",
            "media_type": "image",
            "image_url": "https://scontent.example/ad.jpg",
            "ctwa_clid": format!("clid-{wamid}"),
            "ref": "spring-campaign"
        }
    })
}

/// A plain message with no referral.
pub fn plain_message(wamid: &str, from: &str) -> Value {
    json!({"from": from, "id": wamid, "timestamp": "1732262400", "type": "text", "text": {"body": "hello"}})
}

/// One `messages` change value.
pub fn value(phone_number_id: &str, contacts: Value, messages: Value) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": format!("1555{phone_number_id}"), "phone_number_id": phone_number_id},
        "contacts": contacts,
        "messages": messages
    })
}

pub fn contact(wa_id: &str, name: &str) -> Value {
    json!({"profile": {"name": name}, "wa_id": wa_id})
}

/// A delivery of one entry with one `messages` change.
pub fn delivery(value: Value) -> Vec<u8> {
    delivery_of(vec![(WABA_ID, vec![("messages", value)])])
}

/// A delivery of several entries, each with several changes.
pub fn delivery_of(entries: Vec<(&str, Vec<(&str, Value)>)>) -> Vec<u8> {
    let entry: Vec<Value> = entries
        .into_iter()
        .map(|(id, changes)| {
            let changes: Vec<Value> = changes
                .into_iter()
                .map(|(field, value)| json!({"field": field, "value": value}))
                .collect();
            json!({"id": id, "changes": changes})
        })
        .collect();
    meta_json(&json!({"object": "whatsapp_business_account", "entry": entry}))
}

/// The simplest lead-carrying delivery.
/// One delivery holding two people's referral messages, each `(wa_id, name, wamid)`, on ad AD1.
pub fn batch_of_two(a: (&str, &str, &str), b: (&str, &str, &str)) -> Vec<u8> {
    delivery(value(
        "PN1",
        json!([contact(a.0, a.1), contact(b.0, b.1)]),
        json!([
            referral_message(a.2, a.0, "AD1"),
            referral_message(b.2, b.0, "AD1"),
        ]),
    ))
}

pub fn one_lead(wamid: &str) -> Vec<u8> {
    delivery(value(
        "PN1",
        json!([contact("4915100000001", "Ana")]),
        json!([referral_message(wamid, "4915100000001", "AD1")]),
    ))
}

/// The counts of an erasure request (`DELETE /v1/contacts/{id}`, `GET /v1/erasures/{id}`).
pub fn erasure_counts(erasure: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "leads": erasure["leads"],
        "raw_deliveries": erasure["raw_deliveries"],
        "unreadable_raw_deliveries": erasure["unreadable_raw_deliveries"],
    })
}

/// Undoes [`TestApp::break_leads_table`].
pub async fn mend_leads_table(pool: &sqlx::SqlitePool) {
    sqlx::query("ALTER TABLE leads_away RENAME TO leads")
        .execute(pool)
        .await
        .expect("the leads table renamed back");
}
