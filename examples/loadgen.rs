//! Load generator for `POST /webhook`: unique, realistically varied, signed deliveries over
//! keep-alive connections, then an exactly-once check of every acknowledged referral through
//! `/v1/leads/export`. Prints requests/s and latency percentiles (and one JSON line with
//! `--json`, for `bench/run.sh`).
//!
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8080 --connections 64 \
//!     --duration 10 --secret example-app-secret --api-token example-api-token
//!
//! Mix: ~80% one referral message, ~10% of those batches of 2–5 messages, ~10% a message with
//! no referral, ~10% statuses only; names with non-ASCII; bodies of 1–3 KB, escaped like Meta's.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use ctwa_leads::simulate::meta_json;
use ctwa_leads::webhook::verify::{sign, SIGNATURE_HEADER};
use serde_json::{json, Value};

#[derive(Parser, Clone)]
struct Args {
    /// The server's base URL (no path).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Seconds to send for.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// The app secret the server verifies with.
    #[arg(long)]
    secret: String,
    /// The server's api.token, for the exactly-once check; without it the check is skipped.
    #[arg(long)]
    api_token: Option<String>,
    /// Print one JSON summary line at the end.
    #[arg(long)]
    json: bool,
    /// Label for the JSON line.
    #[arg(long, default_value = "")]
    label: String,
    /// Instead of the load run: send this many deliveries of 1000 referral messages each, one
    /// at a time, and report how long each took to be acknowledged.
    #[arg(long)]
    batch_probes: Option<usize>,
}

/// xorshift64*: enough variety for payloads, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const NAMES: &[&str] = &[
    "Zoë Müller",
    "José Álvarez",
    "Łukasz Wiśniewski",
    "Søren Kierkegaard",
    "王芳",
    "محمد علي",
    "Дмитрий Иванов",
    "Ana 😀",
    "Chloé O'Brien",
    "Nguyễn Văn An",
    "Ayşe Yılmaz",
    "Plain Name",
];
const LOREM: &str = "Hi! I saw your ad and would like to know more about the offer, the prices, \
    delivery times and whether you ship to my city. ";

/// A delivery as a template: `{ID}` is replaced by a unique id for each request.
struct Template {
    body: String,
    /// How many referral messages it carries (their wamids are `wamid.{ID}-{k}`).
    referrals: usize,
}

fn templates(rng: &mut Rng) -> Vec<Template> {
    (0..256)
        .map(|_| {
            let kind = rng.below(100);
            let name = NAMES[rng.below(NAMES.len() as u64) as usize];
            let text_len = 600 + rng.below(1800) as usize;
            let text: String = LOREM.chars().cycle().take(text_len).collect();
            let ad = format!("1202084519307{:05}", rng.below(500));
            let message = |k: usize, referral: bool| {
                let mut m = json!({
                    "from": "4915112345678", "id": format!("wamid.{{ID}}-{k}"),
                    "timestamp": "1763798400", "type": "text", "text": {"body": text}
                });
                if referral {
                    m["referral"] = json!({
                        "source_url": "https://fb.me/3cr4Wqqkp", "source_id": ad, "source_type": "ad",
                        "headline": "Summer sale — 25% off", "body": "Tap to chat on WhatsApp",
                        "media_type": "image", "image_url": "https://scontent.xx.fbcdn.net/v/ad.jpg",
                        "ctwa_clid": "ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7JwFF4-{ID}",
                        "ref": "summer-sale"
                    });
                }
                m
            };
            let (value, referrals) = if kind < 10 {
                (json!({"messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "15550001234", "phone_number_id": "106540352242922"},
                    "statuses": [{"id": "wamid.{ID}-s", "status": "delivered", "timestamp": "1763798400",
                        "recipient_id": "4915112345678", "pricing": {"billable": true, "category": "service"},
                        "padding": text}]}), 0)
            } else {
                let (messages, referrals) = if kind < 20 {
                    (vec![message(0, false)], 0)
                } else if kind < 28 {
                    let n = 2 + rng.below(4) as usize;
                    ((0..n).map(|k| message(k, true)).collect(), n)
                } else {
                    (vec![message(0, true)], 1)
                };
                (json!({"messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "15550001234", "phone_number_id": "106540352242922"},
                    "contacts": [{"profile": {"name": name}, "wa_id": "4915112345678"}],
                    "messages": messages}), referrals)
            };
            let delivery = json!({"object": "whatsapp_business_account",
                "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}]});
            Template {
                body: String::from_utf8(meta_json(&delivery)).expect("ascii"),
                referrals,
            }
        })
        .collect()
}

#[derive(Default)]
struct Outcome {
    latencies_us: Vec<u32>,
    ok: u64,
    shed: u64,
    other: u64,
    errors: u64,
    acked_referrals: Vec<String>,
    bytes: u64,
    sent: u64,
}

/// What every connection's worker shares.
#[derive(Clone)]
struct Shared {
    client: reqwest::Client,
    url: String,
    secret: String,
    templates: Arc<Vec<Template>>,
    nonce: u64,
    deadline: Instant,
    collect: bool,
}

async fn worker(conn: usize, shared: Shared) -> Outcome {
    let Shared {
        client,
        url,
        secret,
        templates,
        nonce,
        deadline,
        collect,
    } = shared;
    let mut rng = Rng(nonce ^ (conn as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut out = Outcome::default();
    let mut n = 0u64;
    while Instant::now() < deadline {
        let t = &templates[rng.below(templates.len() as u64) as usize];
        let id = format!("{nonce:x}.{conn}.{n}");
        n += 1;
        let body = t.body.replace("{ID}", &id);
        let signature = sign(&secret, body.as_bytes());
        out.bytes += body.len() as u64;
        out.sent += 1;
        let started = Instant::now();
        let res = client
            .post(&url)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await;
        match res {
            Ok(res) => {
                let status = res.status();
                let _ = res.bytes().await;
                out.latencies_us
                    .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                if status == 200 {
                    out.ok += 1;
                    if collect {
                        out.acked_referrals
                            .extend((0..t.referrals).map(|k| format!("wamid.{id}-{k}")));
                    }
                } else if status == 503 {
                    out.shed += 1;
                } else {
                    out.other += 1;
                }
            }
            Err(_) => {
                // Connection refused or reset: don't spin; the server may be restarting.
                out.errors += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    out
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let templates = Arc::new(templates(&mut Rng(nonce | 1)));
    let client = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(args.connections)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let url = format!("{}/webhook", args.url.trim_end_matches('/'));
    if let Some(probes) = args.batch_probes {
        batch_probe(&client, &url, &args.secret, probes, nonce).await;
        return;
    }
    let collect = args.api_token.is_some();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let shared = Shared {
        client: client.clone(),
        url: url.clone(),
        secret: args.secret.clone(),
        templates: templates.clone(),
        nonce,
        deadline,
        collect,
    };
    let tasks: Vec<_> = (0..args.connections)
        .map(|c| tokio::spawn(worker(c, shared.clone())))
        .collect();
    let mut total = Outcome::default();
    for t in tasks {
        let o = t.await.expect("worker");
        total.latencies_us.extend(o.latencies_us);
        total.ok += o.ok;
        total.shed += o.shed;
        total.other += o.other;
        total.errors += o.errors;
        total.bytes += o.bytes;
        total.sent += o.sent;
        total.acked_referrals.extend(o.acked_referrals);
    }
    let elapsed = started.elapsed().as_secs_f64();
    total.latencies_us.sort_unstable();
    let l = &total.latencies_us;
    let rps = total.ok as f64 / elapsed;
    println!(
        "{} connections, {:.1} s: {} acknowledged ({:.0}/s), {} shed (503), {} other, {} errors; avg body {:.0} B",
        args.connections, elapsed, total.ok, rps, total.shed, total.other, total.errors,
        total.bytes as f64 / total.sent.max(1) as f64
    );
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        pct(l, 0.5),
        pct(l, 0.9),
        pct(l, 0.99),
        pct(l, 1.0)
    );
    let mut check = "skipped".to_owned();
    if let Some(token) = &args.api_token {
        check = exactly_once(&client, &args.url, token, &total.acked_referrals).await;
        println!("exactly-once check: {check}");
    }
    if args.json {
        println!(
            "{}",
            json!({"label": args.label, "connections": args.connections, "rps": rps, "ok": total.ok,
                "shed": total.shed, "other": total.other, "errors": total.errors,
                "p50_ms": pct(l, 0.5), "p90_ms": pct(l, 0.9), "p99_ms": pct(l, 0.99), "max_ms": pct(l, 1.0),
                "check": check})
        );
    }
    if check.starts_with("FAILED") || total.other > 0 {
        std::process::exit(1);
    }
}

/// Acknowledgement latency of 1000-message deliveries (about 1 MB each), sent one at a time.
async fn batch_probe(client: &reqwest::Client, url: &str, secret: &str, probes: usize, nonce: u64) {
    let mut times = Vec::with_capacity(probes);
    for p in 0..probes {
        let messages: Vec<Value> = (0..1000)
            .map(|k| json!({"from": "4915112345678", "id": format!("wamid.B{nonce:x}.{p}.{k}"),
                "timestamp": "1763798400", "type": "text", "text": {"body": "Hola, ¿sigue disponible? Quiero más información."},
                "referral": {"source_url": "https://fb.me/3cr4Wqqkp", "source_id": format!("12020845193{:04}", k % 40),
                    "source_type": "ad", "headline": "Summer sale", "body": "Tap to chat", "media_type": "image",
                    "image_url": "https://scontent.xx.fbcdn.net/v/ad.jpg",
                    "ctwa_clid": format!("ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7JwFF4-{nonce:x}-{p}-{k}"),
                    "ref": "summer-sale"}}))
            .collect();
        let delivery = json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398",
            "changes": [{"field": "messages", "value": {"messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550001234", "phone_number_id": "106540352242922"},
                "contacts": [{"profile": {"name": "Zoë Müller"}, "wa_id": "4915112345678"}], "messages": messages}}]}]});
        let body = meta_json(&delivery);
        let signature = sign(secret, &body);
        let len = body.len();
        let started = Instant::now();
        let res = client
            .post(url)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = res.status();
        let _ = res.bytes().await;
        times.push(started.elapsed().as_micros() as u32);
        assert_eq!(
            status, 200,
            "a 1000-message delivery of {len} bytes was refused"
        );
    }
    times.sort_unstable();
    println!(
        "1000-message deliveries ({probes}, sequential): acknowledged in p50 {:.2} ms, max {:.2} ms",
        pct(&times, 0.5),
        pct(&times, 1.0)
    );
}

/// Every acknowledged referral is stored, and no wamid is stored twice.
async fn exactly_once(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    acked: &[String],
) -> String {
    let res = match client
        .get(format!(
            "{}/v1/leads/export?format=ndjson",
            base.trim_end_matches('/')
        ))
        .bearer_auth(token)
        .timeout(Duration::from_secs(600))
        .send()
        .await
    {
        Ok(r) if r.status() == 200 => r,
        Ok(r) => return format!("FAILED: export answered {}", r.status()),
        Err(e) => return format!("FAILED: export: {e}"),
    };
    let text = match res.text().await {
        Ok(t) => t,
        Err(e) => return format!("FAILED: export body: {e}"),
    };
    let mut stored = HashSet::new();
    let mut dupes = 0;
    for line in text.lines() {
        let lead: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => return format!("FAILED: bad export line: {e}"),
        };
        if !stored.insert(lead["wamid"].as_str().unwrap_or_default().to_owned()) {
            dupes += 1;
        }
    }
    let missing = acked.iter().filter(|w| !stored.contains(*w)).count();
    if missing == 0 && dupes == 0 {
        format!(
            "ok ({} acknowledged referrals all stored once; {} leads in store)",
            acked.len(),
            stored.len()
        )
    } else {
        format!("FAILED: {missing} acknowledged referrals missing, {dupes} duplicates")
    }
}
