//! Conversions API for Business Messaging: conversion events (with the click's `ctwa_clid`)
//! reported to Meta so that ads optimise for people who convert. A conversion is one more kind
//! of outbox row (`store::conversions`): [`api`] checks and queues them, the projector queues
//! `LeadSubmitted` itself when `capi.auto_lead_submitted` is on, and [`worker`] sends them to
//! `{graph}/{dataset_id}/events` in batches. This file holds Meta's rules: the event names it
//! accepts (in one place, to follow Meta), the 7-day window and the shape of an event.

pub mod api;
pub mod views;
mod worker;

use std::time::Duration;

use serde_json::{json, Value};

pub use worker::Sender;

use crate::store::conversions::DueConversion;

/// Event names confirmed against the live API (by one vendor).
pub const CONFIRMED_EVENTS: &[&str] = &[
    "LeadSubmitted",
    "Purchase",
    "AddToCart",
    "InitiateCheckout",
    "ViewContent",
];

/// Event names listed by one other source, not yet confirmed; accepted too.
pub const LISTED_EVENTS: &[&str] = &[
    "QualifiedLead",
    "OrderCreated",
    "OrderShipped",
    "OrderDelivered",
    "OrderCanceled",
    "OrderReturned",
    "CartAbandoned",
    "RatingProvided",
    "ReviewProvided",
];

/// Whether Meta takes `name` for business messaging. (`Lead`, `CompleteRegistration`,
/// `Contact` and custom names are refused with subcode 2804066.)
pub fn is_allowed(name: &str) -> bool {
    CONFIRMED_EVENTS.contains(&name) || LISTED_EVENTS.contains(&name)
}

/// How far back an `event_time` may be: Meta rejects a whole request holding an older event.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The largest `value` taken.
pub const MAX_VALUE: f64 = 1e12;
/// The longest caller-given `event_id`, in characters.
pub const MAX_EVENT_ID: usize = 128;
/// At most this many events per request (Meta's limit).
pub const MAX_BATCH: usize = 1000;
/// Meta's recommended client time-out.
pub const TIMEOUT: Duration = Duration::from_millis(1500);

/// Whether an event at `event_time` (unix s) is still inside Meta's window at `at_ms`.
pub fn within_window(event_time: i64, at_ms: i64) -> bool {
    event_time * 1000 >= at_ms - MAX_AGE.as_millis() as i64
}

/// ISO 4217 currency codes: three capital letters. (The list itself changes; Meta checks it.)
pub fn is_currency(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// One event as Meta takes it. `ctwa_clid` goes as is (never hashed) beside the WABA id, which
/// Meta requires.
pub fn event_json(due: &DueConversion, ctwa_clid: &str, waba_id: &str) -> Value {
    let mut event = json!({
        "event_name": due.event_name,
        "event_time": due.event_time,
        "event_id": due.event_id,
        "action_source": "business_messaging",
        "messaging_channel": "whatsapp",
        "user_data": {
            "whatsapp_business_account_id": waba_id,
            "ctwa_clid": ctwa_clid,
        },
    });
    if due.value.is_some() || due.currency.is_some() {
        let mut custom = serde_json::Map::new();
        if let Some(currency) = &due.currency {
            custom.insert("currency".into(), json!(currency));
        }
        if let Some(value) = due.value {
            custom.insert("value".into(), json!(value));
        }
        event["custom_data"] = Value::Object(custom);
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowlist_takes_both_lists_and_refuses_what_meta_refuses() {
        for name in CONFIRMED_EVENTS.iter().chain(LISTED_EVENTS) {
            assert!(is_allowed(name), "{name}");
        }
        for name in [
            "Lead",
            "CompleteRegistration",
            "Contact",
            "purchase",
            "MyEvent",
            "",
        ] {
            assert!(!is_allowed(name), "{name}");
        }
    }

    #[test]
    fn the_window_is_seven_days() {
        let now_ms = 1_763_800_000_000;
        let now = now_ms / 1000;
        assert!(within_window(now, now_ms));
        assert!(within_window(now - 7 * 86_400 + 60, now_ms));
        assert!(!within_window(now - 7 * 86_400 - 1, now_ms));
    }

    #[test]
    fn currencies_are_three_capitals() {
        assert!(is_currency("USD") && is_currency("BRL"));
        for bad in ["usd", "US", "USDT", "U$D", ""] {
            assert!(!is_currency(bad), "{bad}");
        }
    }

    #[test]
    fn an_event_carries_both_user_data_fields_and_custom_data_only_when_given() {
        let due = DueConversion {
            id: 1,
            event_id: "e1".into(),
            event_name: "Purchase".into(),
            event_time: 1_763_800_000,
            value: Some(123.45),
            currency: Some("USD".into()),
            step: 0,
            ctwa_clid: Some("ARAkLk".into()),
            waba_id: Some("102290129340398".into()),
        };
        let event = event_json(&due, "ARAkLk", "102290129340398");
        assert_eq!(event["action_source"], "business_messaging");
        assert_eq!(event["messaging_channel"], "whatsapp");
        assert_eq!(event["user_data"]["ctwa_clid"], "ARAkLk");
        assert_eq!(
            event["user_data"]["whatsapp_business_account_id"],
            "102290129340398"
        );
        assert_eq!(event["custom_data"]["value"], 123.45);
        let bare = event_json(
            &DueConversion {
                value: None,
                currency: None,
                ..due
            },
            "c",
            "w",
        );
        assert!(bare.get("custom_data").is_none());
    }
}
