//! Micro-benchmarks of the ingest hot path, without HTTP or the database: signature check,
//! parse + extract, for a typical 2 KB delivery and a 1000-message batch (about 1 MB).
//!
//! cargo bench --bench ingest

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ctwa_leads::leads::extract::extract;
use ctwa_leads::simulate::meta_json;
use ctwa_leads::webhook::verify::{sign, SignatureVerifier, SIGNATURE_HEADER};
use http::{HeaderMap, HeaderValue};
use secrecy::SecretString;
use serde_json::{json, Value};

const SECRET: &str = "bench-app-secret";

fn message(i: usize, text: &str) -> Value {
    json!({
        "from": "4915112345678", "id": format!("wamid.HBgLNDkxNTExMjM0NTY3OBUCABIYFjNFQjA{i:08}"),
        "timestamp": "1763798400", "type": "text", "text": {"body": text},
        "referral": {"source_url": "https://fb.me/3cr4Wqqkp", "source_id": "120208451930730123",
            "source_type": "ad", "headline": "Summer sale — 25% off", "body": "Tap to chat",
            "media_type": "image", "image_url": "https://scontent.xx.fbcdn.net/v/t45.1600-4/ad.jpg",
            "ctwa_clid": format!("ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7Jw-{i}"),
            "ref": "summer-sale"}
    })
}

fn delivery(messages: usize, text_len: usize) -> Bytes {
    let text: String = "Olá! Quero saber mais sobre a oferta. "
        .chars()
        .cycle()
        .take(text_len)
        .collect();
    let contacts: Vec<Value> = (0..messages.min(50))
        .map(|_| json!({"profile": {"name": "Zoë Müller 🎉"}, "wa_id": "4915112345678"}))
        .collect();
    let msgs: Vec<Value> = (0..messages).map(|i| message(i, &text)).collect();
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398",
        "changes": [{"field": "messages", "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001234", "phone_number_id": "106540352242922"},
            "contacts": contacts, "messages": msgs}}]}]});
    Bytes::from(meta_json(&body))
}

fn bench(c: &mut Criterion) {
    let verifier = SignatureVerifier::new(&[SecretString::from(SECRET)]);
    for (name, body) in [
        ("2KB delivery", delivery(1, 1200)),
        ("1000-message batch", delivery(1000, 200)),
    ] {
        let mut headers = HeaderMap::new();
        headers.insert(
            SIGNATURE_HEADER,
            HeaderValue::from_str(&sign(SECRET, &body)).expect("ascii"),
        );
        let mut group = c.benchmark_group(format!("{name} ({} bytes)", body.len()));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("verify", |b| {
            b.iter(|| {
                verifier
                    .verify(black_box(&headers), body.clone())
                    .expect("valid")
            })
        });
        group.bench_function("parse+extract", |b| b.iter(|| extract(black_box(&body))));
        group.bench_function("verify+parse+extract", |b| {
            b.iter(|| {
                let verified = verifier
                    .verify(black_box(&headers), body.clone())
                    .expect("valid");
                extract(verified.as_bytes())
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
