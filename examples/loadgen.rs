//! Load generator for `POST /webhook`: unique, realistically varied, signed deliveries over
//! keep-alive connections, then an exactly-once check of every acknowledged referral through
//! `/v1/leads/export`. Prints requests/s and latency percentiles (and one JSON line with
//! `--json`, for `bench/run.sh`).
//!
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8080 --connections 64 \
//!     --duration 10 --secret example-app-secret --api-token example-api-token
//!
//! Traffic shaped like production: every contact has its own `wa_id` and BSUID `user_id`, every
//! click its own `ctwa_clid`, every message a random `wamid` (as Meta's are, so the unique index
//! takes them in random order), across 50 ads; message text drawn from a vocabulary (not one
//! repeated sentence, which would compress unrealistically well); names with non-ASCII; bodies
//! of 1.5–2.5 KB, escaped like Meta's.
//! - `--mix real` (default): ~80% referral deliveries (a tenth of them batches of 2–5
//!   messages), ~10% a message with no referral, ~10% statuses only.
//! - `--mix statuses`: 75% statuses only, as a busy sending number produces.
//!
//! `--prefill N` first stores N leads (in 1,000-message deliveries) and waits for the projection,
//! to measure on a grown database. During the run `/readyz` is sampled every 100 ms for the
//! projection lag; the exactly-once check waits for the projection to catch up first.

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
    /// `real` or `statuses` (75% status-only).
    #[arg(long, default_value = "real")]
    mix: String,
    /// Store this many leads before measuring (then wait for the projection).
    #[arg(long, default_value_t = 0)]
    prefill: usize,
    /// Seconds to send before measuring (not counted).
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Send at most this many deliveries a second in all (spread over the connections), to hold
    /// a sustained rate instead of the most the server takes; 0 is no limit.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
}

/// Seeds the delivery templates (see `main`).
const TEMPLATE_SEED: u64 = 0x5eed_c7a1_ead5_0001;

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
const WORDS: &[&str] = &[
    "hi",
    "hello",
    "ola",
    "hola",
    "bonjour",
    "saw",
    "your",
    "ad",
    "on",
    "instagram",
    "facebook",
    "price",
    "prices",
    "delivery",
    "shipping",
    "to",
    "my",
    "city",
    "is",
    "it",
    "still",
    "available",
    "can",
    "I",
    "get",
    "more",
    "info",
    "about",
    "the",
    "offer",
    "discount",
    "size",
    "color",
    "blue",
    "red",
    "black",
    "white",
    "M",
    "L",
    "XL",
    "how",
    "much",
    "does",
    "cost",
    "when",
    "open",
    "tomorrow",
    "today",
    "thanks",
    "obrigado",
    "gracias",
    "merci",
    "please",
    "send",
    "catalog",
    "photos",
    "address",
    "pickup",
    "store",
    "near",
    "Berlin",
    "Madrid",
    "Lisboa",
    "São",
    "Paulo",
    "México",
    "order",
    "pay",
    "card",
    "cash",
    "transfer",
    "installments",
    "warranty",
    "return",
    "exchange",
    "quality",
    "original",
    "model",
    "2025",
    "2026",
    "pro",
    "max",
    "mini",
    "kit",
    "set",
    "pair",
    "box",
    "gift",
    "wrap",
    "urgent",
    "weekend",
    "Monday",
    "Friday",
    "evening",
    "morning",
    "number",
    "call",
    "me",
    "WhatsApp",
    "here",
    "yes",
    "no",
    "maybe",
    "ok",
    "great",
    "perfect",
    "😀",
    "👍",
    "🙏",
    "❤️",
    "¿",
    "?",
    "!",
    ",",
    ".",
];

/// Message text of about `len` characters, drawn from [`WORDS`] with numbers mixed in.
fn text(rng: &mut Rng, len: usize) -> String {
    let mut out = String::with_capacity(len + 16);
    while out.len() < len {
        if rng.below(8) == 0 {
            out.push_str(&rng.below(100_000).to_string());
        } else {
            out.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
        }
        out.push(' ');
    }
    out
}

/// A delivery as a template: `{ID}` is replaced by a unique id for each request.
struct Template {
    body: String,
    /// How many referral messages it carries (their wamids are `wamid.{ID}-{k}`).
    referrals: usize,
}

/// Templates: `{ID}` is unique per request; `{WA}` and `{US}` (the contact's `wa_id` and BSUID)
/// and the click id are derived from it, so every contact and every click is new.
///
/// The mix is dealt, not drawn: template `i` of 512 has kind `i × 100 / 512`, so each kind of
/// delivery has its share of the templates exactly (384 of 512 status-only for `--mix
/// statuses`), and batches hold 2, 3, 4 and 5 messages in turn. Drawn, one seed's set had 363
/// status-only templates and a quarter more referral messages than the mix describes.
fn templates(rng: &mut Rng, statuses_share: u64) -> Vec<Template> {
    let mut batches = 0;
    (0..512_u64)
        .map(|i| {
            let kind = i * 100 / 512;
            let name = NAMES[rng.below(NAMES.len() as u64) as usize];
            let text_len = 300 + rng.below(900) as usize;
            let text = text(rng, text_len);
            let ad = format!("1202084519307{:05}", rng.below(50));
            let message = |k: usize, referral: bool| {
                let mut m = json!({
                    "from": "{WA}", "id": format!("wamid.{{ID}}-{k}"),
                    "timestamp": "1763798400", "type": "text", "text": {"body": text}
                });
                if referral {
                    m["referral"] = json!({
                        "source_url": "https://fb.me/3cr4Wqqkp", "source_id": ad, "source_type": "ad",
                        "headline": "Summer sale — 25% off", "body": "Tap to chat on WhatsApp",
                        "media_type": "image", "image_url": "https://scontent.xx.fbcdn.net/v/ad.jpg",
                        "ctwa_clid": format!("ARAk{{CL}}{k}"),
                        "ref": "summer-sale"
                    });
                }
                m
            };
            let rest = 100 - statuses_share;
            let (value, referrals) = if kind < statuses_share {
                let status = ["sent", "delivered", "read"][rng.below(3) as usize];
                (json!({"messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "15550001234", "phone_number_id": "106540352242922"},
                    "statuses": [{"id": "wamid.{ID}-s", "status": status, "timestamp": "1763798400",
                        "recipient_id": "{WA}", "recipient_user_id": "{US}",
                        "conversation": {"id": "CONV{ID}", "origin": {"type": "marketing"}},
                        "pricing": {"billable": true, "pricing_model": "PMP", "category": "marketing"}}]}), 0)
            } else {
                let kind = (kind - statuses_share) * 100 / rest;
                let (messages, referrals) = if kind < 11 {
                    (vec![message(0, false)], 0)
                } else if kind < 20 {
                    let n = 2 + batches % 4;
                    batches += 1;
                    ((0..n).map(|k| message(k, true)).collect(), n)
                } else {
                    (vec![message(0, true)], 1)
                };
                (json!({"messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "15550001234", "phone_number_id": "106540352242922"},
                    "contacts": [{"profile": {"name": name}, "wa_id": "{WA}", "user_id": "{US}"}],
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

/// The varying part of a click id. Meta's `ctwa_clid`s are opaque tokens of about a hundred
/// characters (`ARAkLkA8rmlFeiCk…Jb8vE7g`), random from end to end; their length is what the
/// `ctwa_clid` index pays for, so the generated ones are as long, and unique by `n`.
fn click_id(unique: u64, n: u64) -> String {
    let mut out = format!("{unique:016x}{n}-");
    let mut x = unique;
    while out.len() < 96 {
        x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29) ^ n;
        out.push_str(&format!("{x:016x}"));
    }
    out.truncate(96);
    out
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
    /// Seconds between one connection's sends, when paced.
    interval: Option<Duration>,
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
        interval,
    } = shared;
    let paced_from = Instant::now();
    let mut rng = Rng(nonce ^ (conn as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut out = Outcome::default();
    let mut n = 0u64;
    while Instant::now() < deadline {
        if let Some(every) = interval {
            let at = paced_from + every.mul_f64(n as f64);
            if at > Instant::now() {
                tokio::time::sleep_until(at.into()).await;
            }
        }
        let t = &templates[rng.below(templates.len() as u64) as usize];
        // Real wamids are random (`wamid.HBgL…` with a random message id), so the `wamid`
        // index takes them in random order; a random head keeps that, the tail keeps it unique.
        let id = format!("{:012x}.{nonce:x}.{conn}.{n}", rng.next() >> 16);
        n += 1;
        // Every request a new contact (wa_id and BSUID) and a new click.
        let unique = rng.next();
        let body = t
            .body
            .replace("{ID}", &id)
            .replace("{WA}", &format!("49{:011}", unique % 100_000_000_000))
            .replace("{US}", &format!("US.{unique:016x}"))
            .replace("{CL}", &click_id(unique, n));
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
    let statuses_share = match args.mix.as_str() {
        "statuses" => 75,
        _ => 10,
    };
    // The same 512 templates every run: drawn from the clock, their mean body size moved by
    // ±4% from run to run (1,760–1,900 B), which two builds compared side by side, each under
    // its own load generator, read as a difference in CPU per delivery. Ids, contacts and click
    // ids still come from `nonce`, so every run's deliveries are new.
    let templates = Arc::new(templates(&mut Rng(TEMPLATE_SEED), statuses_share));
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
    if args.prefill > 0 {
        if let Err(err) = prefill(&client, &url, &args.secret, args.prefill, nonce).await {
            eprintln!("prefill failed: {err}");
            std::process::exit(1);
        }
        wait_caught_up(&client, &args.url).await;
    }
    let interval =
        (args.rate > 0.0).then(|| Duration::from_secs_f64(args.connections as f64 / args.rate));
    if args.warmup > 0 {
        let warm = Shared {
            client: client.clone(),
            url: url.clone(),
            secret: args.secret.clone(),
            templates: templates.clone(),
            nonce: nonce ^ 0x5eed,
            deadline: Instant::now() + Duration::from_secs(args.warmup),
            collect: false,
            interval,
        };
        let tasks: Vec<_> = (0..args.connections)
            .map(|c| tokio::spawn(worker(c, warm.clone())))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        wait_caught_up(&client, &args.url).await;
    }
    let collect = args.api_token.is_some();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let sampler = tokio::spawn(sample_lag(client.clone(), args.url.clone(), deadline));
    let shared = Shared {
        client: client.clone(),
        url: url.clone(),
        secret: args.secret.clone(),
        templates: templates.clone(),
        nonce,
        deadline,
        collect,
        interval,
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
    let mut lags = sampler.await.unwrap_or_default();
    lags.sort_by(f64::total_cmp);
    let lag_pct = |p: f64| {
        lags.get(((lags.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let drained_at = Instant::now();
    wait_caught_up(&client, &args.url).await;
    let drain_s = drained_at.elapsed().as_secs_f64();
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
    println!(
        "projection lag s: p50 {:.3}  p99 {:.3}  max {:.3}; caught up {:.2} s after the run",
        lag_pct(0.5),
        lag_pct(0.99),
        lag_pct(1.0),
        drain_s
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
                "lag_p50_s": lag_pct(0.5), "lag_p99_s": lag_pct(0.99), "lag_max_s": lag_pct(1.0),
                "drain_s": drain_s, "check": check})
        );
    }
    if check.starts_with("FAILED") || total.other > 0 {
        std::process::exit(1);
    }
}

/// The projection lag in seconds from `/readyz`, every 100 ms until `deadline`.
async fn sample_lag(client: reqwest::Client, base: String, deadline: Instant) -> Vec<f64> {
    let url = format!("{}/readyz", base.trim_end_matches('/'));
    let mut out = Vec::new();
    while Instant::now() < deadline {
        if let Ok(r) = client.get(&url).send().await {
            if let Ok(v) = r.json::<Value>().await {
                if let Some(s) = v["projection"]["seconds"].as_f64() {
                    out.push(s);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out
}

/// Waits (up to 10 minutes) until `/readyz` reports the projection caught up.
async fn wait_caught_up(client: &reqwest::Client, base: &str) {
    let url = format!("{}/readyz", base.trim_end_matches('/'));
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(&url).send().await {
            match r.json::<Value>().await {
                Ok(v) if v["projection"]["entries"] == 0 => return,
                // A server without a projection (ceiling mode, or a peer): nothing to wait for.
                Ok(v) if v.get("projection").is_none() => return,
                Err(_) => return,
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stores `leads` leads in deliveries of 1,000 referral messages, 4 at a time. A delivery is
/// tried 20 times, 200 ms apart (a server that sheds load answers 503); past that
/// the error names the last answer.
async fn prefill(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    leads: usize,
    nonce: u64,
) -> Result<(), String> {
    let started = Instant::now();
    let batches = leads.div_ceil(1000);
    let mut rng = Rng(nonce ^ 0xfeed);
    let mut pending = Vec::new();
    for p in 0..batches {
        let messages: Vec<Value> = (0..1000)
            .map(|k| {
                let unique = rng.next();
                json!({"from": format!("49{:011}", unique % 100_000_000_000),
                "from_user_id": format!("US.{unique:016x}"),
                // Random-headed like the measured run's wamids (and Meta's), so that the run's
                // inserts land among the prefilled ones in the `wamid` index, not beside them.
                "id": format!("wamid.{:012x}.P{nonce:x}.{p}.{k}", rng.next() >> 16),
                "timestamp": "1763798400", "type": "text", "text": {"body": text(&mut rng, 200)},
                "referral": {"source_url": "https://fb.me/3cr4Wqqkp", "source_id": format!("1202084519307{:05}", unique % 50),
                    "source_type": "ad", "headline": "Summer sale", "body": "Tap to chat", "media_type": "image",
                    "image_url": "https://scontent.xx.fbcdn.net/v/ad.jpg",
                    "ctwa_clid": format!("ARAkP{unique:016x}{p}{k}"), "ref": "summer-sale"}})
            })
            .collect();
        let delivery = json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398",
            "changes": [{"field": "messages", "value": {"messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550001234", "phone_number_id": "106540352242922"},
                "messages": messages}}]}]});
        let body = meta_json(&delivery);
        let signature = sign(secret, &body);
        let client = client.clone();
        let url = url.to_owned();
        pending.push(tokio::spawn(async move {
            let mut last = String::new();
            for _ in 0..20 {
                let res = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header(SIGNATURE_HEADER, signature.clone())
                    .body(body.clone())
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == 200 => return Ok(()),
                    Ok(r) => last = format!("HTTP {}", r.status()),
                    Err(err) => last = err.to_string(),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(format!(
                "delivery {p} of {batches} was refused 20 times, last: {last}"
            ))
        }));
        if pending.len() >= 4 {
            for t in pending.drain(..) {
                t.await.map_err(|err| err.to_string())??;
            }
        }
    }
    for t in pending {
        t.await.map_err(|err| err.to_string())??;
    }
    println!(
        "prefilled {} leads in {:.1} s",
        batches * 1000,
        started.elapsed().as_secs_f64()
    );
    Ok(())
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
        "1000-message deliveries ({probes}, sequential): acknowledged in p50 {:.2} ms, max {:.2} ms \
         (p90 {:.2}, p99 {:.2}; {} over 10 ms)",
        pct(&times, 0.5),
        pct(&times, 1.0),
        pct(&times, 0.9),
        pct(&times, 0.99),
        times.iter().filter(|&&us| us > 10_000).count()
    );
}

/// Every acknowledged referral is stored, and no wamid is stored twice.
async fn exactly_once(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    acked: &[String],
) -> String {
    wait_caught_up(client, base).await;
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
