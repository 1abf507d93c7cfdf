//! Fuzzes what untrusted bytes go through: the signature check (with hostile headers), then
//! parse and extract on a verified body. Nothing may panic, and a body never yields more leads
//! than it has inbound messages.
//!
//! RUSTC_BOOTSTRAP=1 cargo fuzz run ingest --sanitizer none -- -max_total_time=600

#![no_main]

use bytes::Bytes;
use ctwa_leads::leads::extract::extract;
use ctwa_leads::webhook::verify::{sign, SignatureVerifier, SIGNATURE_HEADER};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

const SECRET: &str = "fuzz-secret";

fuzz_target!(|data: &[u8]| {
    let verifier = SignatureVerifier::new(&[SecretString::from(SECRET)]);
    let body = Bytes::copy_from_slice(data);

    // A hostile header made of the input itself must be refused, never panic.
    let mut hostile = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(&data[..data.len().min(200)]) {
        hostile.insert(SIGNATURE_HEADER, v);
        let _ = verifier.verify(&hostile, body.clone());
    }

    // The same bytes, properly signed: verified, then parsed and extracted.
    let mut headers = HeaderMap::new();
    headers.insert(
        SIGNATURE_HEADER,
        HeaderValue::from_str(&sign(SECRET, data)).expect("hex is a valid header"),
    );
    let verified = verifier.verify(&headers, body).expect("a correct signature verifies");
    let extracted = extract(verified.as_bytes());
    assert!(extracted.leads.len() <= extracted.messages);
    assert!(extracted.leads.iter().all(|l| !l.view().wamid().is_empty()));
});
