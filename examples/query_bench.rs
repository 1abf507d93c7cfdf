//! Read-side benchmark: seeds a store with N leads (default 1,000,000), starts the real server,
//! and measures `GET /v1/leads` pages (p50/p99 per filter, over HTTP on loopback) and the export
//! rate (rows/s, CSV and NDJSON). Prints each filter's `EXPLAIN QUERY PLAN` too.
//!
//! cargo run --release --example query_bench -- [--leads 1000000] [--requests 300]

use std::time::{Duration, Instant};

use clap::Parser;
use ctwa_leads::store::leads::{page_plan, LeadFilter};
use ctwa_leads::{Application, Settings};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    leads: u64,
    #[arg(long, default_value_t = 300)]
    requests: usize,
}

const TOKEN: &str = "bench-token";
/// Click ids are as long as Meta's: this head, then the lead's number.
const CLID: &str = "ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7JwFF4XvnO2E4Nx0-eM-";

fn settings(db: &std::path::Path) -> Settings {
    Settings::from_toml(&format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [database]
        url = "sqlite://{}"
        [webhook]
        verify_token = "v"
        app_secrets = ["s"]
        [api]
        token = "{TOKEN}"
        [graph]
        access_token = "g"
        waba_id = "1"
        "#,
        db.display()
    ))
    .expect("valid settings")
}

/// One INSERT … SELECT over a recursive CTE: ids and received times ascend, values vary.
async fn seed(db: &std::path::Path, n: u64) {
    let s = settings(db);
    ctwa_leads::store::migrate(&s.database)
        .await
        .expect("migrate");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("open");
    let base_ms: i64 = chrono::Utc::now().timestamp_millis() - (n as i64) * 100;
    let sql = format!(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n})
         INSERT INTO leads (wamid, event_id, waba_id, phone_number_id, display_phone_number, wa_id,
            user_id, profile_name, message_type, text, timestamp, received_at, source_url, source_id,
            source_type, headline, body, media_type, image_url, ctwa_clid, ref)
         SELECT 'wamid.' || x, x, 'WABA' || (x % 3), 'PN' || (x % 7), '1555000' || (x % 7),
            '49151' || (x % 200000), CASE WHEN x % 5 = 0 THEN 'US.' || (x % 100000) END,
            'Name ' || x, 'text', 'Hello, is this available?', {base_s} + x / 10,
            {base_ms} + x * 100, 'https://fb.me/' || (x % 500), 'AD' || (x % 500),
            CASE WHEN x % 10 = 0 THEN 'post' ELSE 'ad' END, 'Headline ' || (x % 500),
            'Body text', 'image', 'https://scontent.example/' || (x % 500) || '.jpg',
            '{CLID}' || x, 'ref-' || (x % 50)
         FROM c",
        base_s = base_ms / 1000
    );
    sqlx::query(&sql).execute(&pool).await.expect("seed");
    sqlx::query("ANALYZE")
        .execute(&pool)
        .await
        .expect("analyze");
    pool.close().await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("bench.db");
    let started = Instant::now();
    seed(&db, args.leads).await;
    println!("seeded {} leads in {:.1?}", args.leads, started.elapsed());

    let app = Application::build(settings(&db)).await.expect("build");
    let base = format!("http://127.0.0.1:{}", app.port());
    let store = app.store();
    tokio::spawn(app.run_until(std::future::pending()));
    let client = reqwest::Client::new();
    let n = args.leads;
    let since_ms = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let since = chrono::DateTime::from_timestamp_millis(since_ms)
        .unwrap()
        .to_rfc3339();
    let filters: Vec<(&str, String, LeadFilter)> = vec![
        ("none", String::new(), LeadFilter::default()),
        (
            "source_id",
            "source_id=AD42".into(),
            LeadFilter {
                source_id: Some("AD42".into()),
                ..Default::default()
            },
        ),
        (
            "ctwa_clid",
            format!("ctwa_clid={CLID}{}", n / 2),
            LeadFilter {
                ctwa_clid: Some(format!("{CLID}{}", n / 2)),
                ..Default::default()
            },
        ),
        (
            "ref",
            "ref=ref-7".into(),
            LeadFilter {
                ref_: Some("ref-7".into()),
                ..Default::default()
            },
        ),
        (
            "source_type",
            "source_type=post".into(),
            LeadFilter {
                source_type: Some("post".into()),
                ..Default::default()
            },
        ),
        (
            "wa_id",
            "wa_id=4915142".into(),
            LeadFilter {
                wa_id: Some("4915142".into()),
                ..Default::default()
            },
        ),
        (
            "user_id",
            "user_id=US.420".into(),
            LeadFilter {
                user_id: Some("US.420".into()),
                ..Default::default()
            },
        ),
        (
            "phone_number_id",
            "phone_number_id=PN3".into(),
            LeadFilter {
                phone_number_id: Some("PN3".into()),
                ..Default::default()
            },
        ),
        (
            "waba_id",
            "waba_id=WABA1".into(),
            LeadFilter {
                waba_id: Some("WABA1".into()),
                ..Default::default()
            },
        ),
        (
            "since (1 h)",
            format!("since={}", urlencode(&since)),
            LeadFilter {
                since_ms: Some(since_ms),
                ..Default::default()
            },
        ),
    ];
    println!(
        "\nGET /v1/leads?limit=50&<filter>, {} requests each, sequential, loopback",
        args.requests
    );
    println!("| filter | p50 | p99 | rows/page | plan |");
    println!("|---|---|---|---|---|");
    let mut all = Vec::new();
    for (name, query, filter) in &filters {
        let plan = page_plan(store.read_pool(), filter, None)
            .await
            .expect("plan")
            .join("; ");
        let mut times = Vec::with_capacity(args.requests);
        let mut rows = 0;
        for _ in 0..args.requests {
            let t = Instant::now();
            let res = client
                .get(format!("{base}/v1/leads?limit=50&{query}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .expect("request");
            assert_eq!(res.status(), 200);
            let body: serde_json::Value = res.json().await.expect("json");
            times.push(t.elapsed());
            rows = body["data"].as_array().map_or(0, Vec::len);
        }
        times.sort();
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {rows} | {plan} |",
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3
        );
        all.extend(times);
    }
    all.sort();
    println!(
        "| **all filters** | {:.2} ms | {:.2} ms | | |",
        percentile(&all, 0.5).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3
    );

    println!("\nGET /v1/leads/export (all {n} leads)");
    for format in ["csv", "ndjson"] {
        let t = Instant::now();
        let res = client
            .get(format!("{base}/v1/leads/export?format={format}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("export");
        let mut res = res;
        let (mut bytes, mut lines) = (0usize, 0usize);
        while let Some(chunk) = res.chunk().await.expect("chunk") {
            bytes += chunk.len();
            lines += chunk.iter().filter(|b| **b == b'\n').count();
        }
        let secs = t.elapsed().as_secs_f64();
        let rows = if format == "csv" { lines - 1 } else { lines };
        println!(
            "{format}: {rows} rows, {:.0} MB in {secs:.2} s = {:.0} rows/s",
            bytes as f64 / 1e6,
            rows as f64 / secs
        );
    }
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}
