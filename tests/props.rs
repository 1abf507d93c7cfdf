//! Property tests over the untrusted path, verify → parse → extract: arbitrary bytes,
//! arbitrary JSON, and real deliveries mutated at the byte and the tree level. Nothing panics,
//! and a verified body's leads are always among its referral messages, checked against an
//! independent reading of the same bytes as `serde_json::Value`.

use std::collections::HashSet;

use bytes::Bytes;
use ctwa_leads::leads::extract::{extract, ParseStatus};
use ctwa_leads::simulate::meta_json;
use ctwa_leads::webhook::verify::{sign, SignatureVerifier, SIGNATURE_HEADER};
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use secrecy::SecretString;
use serde_json::{json, Value};

const SECRET: &str = "prop-secret";

/// The ids of inbound messages carrying a referral, read generically.
fn referral_ids(body: &[u8]) -> Option<HashSet<String>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let mut ids = HashSet::new();
    if v["object"] != "whatsapp_business_account" {
        return Some(ids);
    }
    for entry in v["entry"].as_array().into_iter().flatten() {
        for change in entry["changes"].as_array().into_iter().flatten() {
            if change["field"] != "messages" {
                continue;
            }
            for m in change["value"]["messages"].as_array().into_iter().flatten() {
                if m.get("referral").is_some_and(|r| !r.is_null()) {
                    // A numeric id is kept as its decimal text.
                    match &m["id"] {
                        Value::String(id) => {
                            ids.insert(id.clone());
                        }
                        Value::Number(n) => {
                            ids.insert(n.to_string());
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    Some(ids)
}

/// Verify, then extract; checks the invariants and returns how many leads came out.
fn check(body: &[u8]) -> usize {
    let verifier = SignatureVerifier::new(&[SecretString::from(SECRET)]);
    let mut headers = HeaderMap::new();
    headers.insert(
        SIGNATURE_HEADER,
        HeaderValue::from_str(&sign(SECRET, body)).unwrap(),
    );
    let verified = verifier
        .verify(&headers, Bytes::copy_from_slice(body))
        .expect("signed");
    let out = extract(verified.as_bytes());
    assert!(out.leads.len() <= out.messages);
    match referral_ids(body) {
        Some(ids) => {
            let mut seen = HashSet::new();
            for lead in &out.leads {
                let wamid = lead.view().wamid().to_owned();
                assert!(
                    ids.contains(&wamid),
                    "lead {wamid} is not a referral message of the body"
                );
                seen.insert(wamid);
            }
        }
        None => assert!(out.leads.is_empty() || out.status != ParseStatus::Invalid),
    }
    out.leads.len()
}

fn real_delivery() -> Vec<u8> {
    let msg = |i: u32, referral: bool| {
        let mut m = json!({"from": "4915112345678", "id": format!("wamid.P{i}"), "timestamp": "1763798400",
            "type": "text", "text": {"body": "Olá 😀 https://x/y"}});
        if referral {
            m["referral"] = json!({"source_url": "https://fb.me/x", "source_id": "AD1", "source_type": "ad",
                "headline": "H", "body": "B", "media_type": "image", "image_url": "https://i/1.jpg",
                "ctwa_clid": format!("clid{i}"), "ref": "r", "welcome_message": {"text": "w"}});
        }
        m
    };
    meta_json(&json!({"object": "whatsapp_business_account", "entry": [
        {"id": "W1", "changes": [{"field": "messages", "value": {
            "metadata": {"display_phone_number": "1555", "phone_number_id": "PN1"},
            "contacts": [{"profile": {"name": "Zoë"}, "wa_id": "4915112345678"}],
            "messages": [msg(1, true), msg(2, false), msg(3, true)]}}]},
        {"id": "W2", "changes": [{"field": "messages", "value": {"statuses": [{"id": "s", "status": "read"}]}},
                                  {"field": "messages", "value": {"messages": [msg(4, true)]}}]}]}))
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("whatsapp_business_account"),
            Just("messages"),
            Just("wamid.X"),
            Just("referral")
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            Just("object"),
            Just("entry"),
            Just("changes"),
            Just("field"),
            Just("value"),
            Just("messages"),
            Just("id"),
            Just("referral"),
            Just("contacts"),
            Just("from"),
            Just("text"),
            Just("x"),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key.prop_map(str::to_owned), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces the node at a pseudo-random position of the tree with `with`.
fn graft(v: &mut Value, mut pick: usize, with: &Value) -> bool {
    if pick == 0 {
        *v = with.clone();
        return true;
    }
    pick -= 1;
    let children: Vec<&mut Value> = match v {
        Value::Array(a) => a.iter_mut().collect(),
        Value::Object(o) => o.values_mut().collect(),
        _ => return false,
    };
    let n = children.len().max(1);
    for (i, child) in children.into_iter().enumerate() {
        if i == pick % n {
            return graft(child, pick / n, with);
        }
    }
    false
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        check(&bytes);
        // And as a hostile signature header.
        let verifier = SignatureVerifier::new(&[SecretString::from(SECRET)]);
        if let Ok(h) = HeaderValue::from_bytes(&bytes[..bytes.len().min(100)]) {
            let mut headers = HeaderMap::new();
            headers.insert(SIGNATURE_HEADER, h);
            let _ = verifier.verify(&headers, Bytes::from(bytes.clone()));
        }
    }

    #[test]
    fn arbitrary_json_never_panics(v in arb_json()) {
        check(v.to_string().as_bytes());
        check(&meta_json(&json!({"object": "whatsapp_business_account", "entry": [v]})));
    }

    #[test]
    fn byte_mutated_deliveries_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..8)
    ) {
        let mut body = real_delivery();
        for (at, op, byte) in edits {
            if body.is_empty() { break; }
            let i = at.index(body.len());
            match op {
                0 => body[i] = byte,
                1 => { body.remove(i); }
                _ => body.insert(i, byte),
            }
        }
        check(&body);
    }

    #[test]
    fn tree_mutated_deliveries_keep_leads_among_referrals(
        grafts in prop::collection::vec((0usize..200, arb_json()), 1..4)
    ) {
        let mut v: Value = serde_json::from_slice(&real_delivery()).unwrap();
        for (pick, with) in &grafts {
            graft(&mut v, *pick, with);
        }
        check(&meta_json(&v));
    }
}

/// Every scalar of the first referral message's path through the delivery, with the lead
/// field it feeds (empty: none directly).
const LEAF_FIELDS: &[(&str, &str)] = &[
    ("/entry/0/id", "waba_id"),
    (
        "/entry/0/changes/0/value/metadata/phone_number_id",
        "phone_number_id",
    ),
    (
        "/entry/0/changes/0/value/metadata/display_phone_number",
        "display_phone_number",
    ),
    ("/entry/0/changes/0/value/contacts/0/wa_id", "wa_id"),
    (
        "/entry/0/changes/0/value/contacts/0/profile/name",
        "profile_name",
    ),
    (
        "/entry/0/changes/0/value/contacts/0/profile",
        "profile_name",
    ),
    ("/entry/0/changes/0/value/messages/0/from", "wa_id"),
    ("/entry/0/changes/0/value/messages/0/timestamp", "timestamp"),
    ("/entry/0/changes/0/value/messages/0/type", "message_type"),
    ("/entry/0/changes/0/value/messages/0/text/body", "text"),
    ("/entry/0/changes/0/value/messages/0/text", "text"),
    (
        "/entry/0/changes/0/value/messages/0/referral/source_url",
        "source_url",
    ),
    (
        "/entry/0/changes/0/value/messages/0/referral/source_id",
        "source_id",
    ),
    (
        "/entry/0/changes/0/value/messages/0/referral/source_type",
        "source_type",
    ),
    (
        "/entry/0/changes/0/value/messages/0/referral/headline",
        "headline",
    ),
    ("/entry/0/changes/0/value/messages/0/referral/body", "body"),
    (
        "/entry/0/changes/0/value/messages/0/referral/media_type",
        "media_type",
    ),
    (
        "/entry/0/changes/0/value/messages/0/referral/image_url",
        "image_url",
    ),
    (
        "/entry/0/changes/0/value/messages/0/referral/ctwa_clid",
        "ctwa_clid",
    ),
    ("/entry/0/changes/0/value/messages/0/referral/ref", "ref"),
    (
        "/entry/0/changes/0/value/messages/0/referral/welcome_message",
        "welcome_message",
    ),
    (
        "/entry/0/changes/0/value/messages/0/referral/welcome_message/text",
        "welcome_message",
    ),
];

/// A lead's fields by name, for comparing all but one.
fn fields(lead: &ctwa_leads::leads::extract::NewLead) -> Vec<(&'static str, Option<String>)> {
    let r = &lead.referral;
    vec![
        ("waba_id", lead.waba_id.clone()),
        ("phone_number_id", lead.phone_number_id.clone()),
        ("display_phone_number", lead.display_phone_number.clone()),
        ("wa_id", lead.wa_id.clone()),
        ("user_id", lead.user_id.clone()),
        ("profile_name", lead.profile_name.clone()),
        ("message_type", lead.message_type.clone()),
        ("text", lead.text.clone()),
        ("timestamp", lead.timestamp.map(|t| t.to_string())),
        ("source_url", r.source_url.clone()),
        ("source_id", r.source_id.clone()),
        ("source_type", r.source_type.clone()),
        ("headline", r.headline.clone()),
        ("body", r.body.clone()),
        ("media_type", r.media_type.clone()),
        ("image_url", r.image_url.clone()),
        ("ctwa_clid", r.ctwa_clid.clone()),
        ("ref", r.ref_.clone()),
        ("welcome_message", r.welcome_message.clone()),
    ]
}

fn odd_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1e12f64..1e12).prop_map(|f| json!(f)),
        Just(json!(["a", 1])),
        Just(json!({"k": "v"})),
        Just(json!([])),
        Just(json!({})),
        Just(Value::Null),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any one field of a referral message given the wrong type: the lead survives, and every
    /// other field is what it was.
    #[test]
    fn one_mistyped_field_never_costs_the_lead_or_its_other_fields(
        which in 0..LEAF_FIELDS.len(),
        odd in odd_value(),
    ) {
        let (pointer, field) = LEAF_FIELDS[which];
        let baseline = extract(&real_delivery());
        let before = baseline.leads.iter().map(|l| l.unpack()).find(|l| l.wamid == "wamid.P1").expect("baseline lead");
        let mut v: Value = serde_json::from_slice(&real_delivery()).unwrap();
        *v.pointer_mut(pointer).expect(pointer) = odd.clone();
        let out = extract(&meta_json(&v));
        prop_assert_eq!(out.leads.len(), 3, "{} = {}: every lead survives", pointer, odd);
        let after = out.leads.iter().map(|l| l.unpack()).find(|l| l.wamid == "wamid.P1").expect("the lead survives");
        for ((name, was), (_, now)) in fields(&before).into_iter().zip(fields(&after)) {
            if name != field {
                prop_assert_eq!(was, now, "{} = {}: {} changed", pointer, odd, name);
            }
        }
        let object_field = ["contacts/0/profile", "messages/0/text", "referral/welcome_message"]
            .iter()
            .any(|end| pointer.ends_with(end));
        let wrong_type = if object_field {
            !odd.is_object() && !odd.is_null()
        } else {
            odd.is_boolean() || odd.is_array() || odd.is_object()
        };
        if wrong_type {
            prop_assert_eq!(out.status, ParseStatus::Partial, "{} = {}", pointer, odd);
        }
    }
}

#[test]
fn the_unmutated_delivery_yields_its_three_referrals() {
    assert_eq!(check(&real_delivery()), 3);
}
