//! Turns a verified delivery into leads: a pure function, no I/O. Every inbound message that
//! carries a `referral`, in every entry and change of the batch, becomes one [`NewLead`],
//! whatever its type. What is absent stays `None`; nothing is invented. A field of the wrong type
//! is read as null and flags the delivery `partial` (the raw event keeps it); the lead is kept
//! with every field that did parse.

use std::borrow::Cow;
use std::cell::OnceCell;

use serde::Deserialize;

use super::packed::PackedLead;
use crate::webhook::payload::{
    ChangeValue, Contact, Delivery, Field, Found, List, Message, Obj, Referral,
};

/// One lead: owned (`String`, the default), or borrowed from the parsed body (`&str`) while
/// extraction packs it ([`PackedLead::pack`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewLead<S = String> {
    pub wamid: S,
    pub waba_id: Option<S>,
    pub phone_number_id: Option<S>,
    pub display_phone_number: Option<S>,
    pub wa_id: Option<S>,
    pub user_id: Option<S>,
    pub profile_name: Option<S>,
    pub message_type: Option<S>,
    pub text: Option<S>,
    /// Message time, unix seconds.
    pub timestamp: Option<i64>,
    pub referral: NewReferral<S>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewReferral<S = String> {
    pub source_url: Option<S>,
    pub source_id: Option<S>,
    pub source_type: Option<S>,
    pub headline: Option<S>,
    pub body: Option<S>,
    pub media_type: Option<S>,
    pub image_url: Option<S>,
    pub video_url: Option<S>,
    pub thumbnail_url: Option<S>,
    pub ctwa_clid: Option<S>,
    pub ref_: Option<S>,
    pub welcome_message: Option<S>,
}

/// How far a delivery could be read. Stored with the raw event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseStatus {
    /// Every part we model parsed.
    Parsed,
    /// Valid JSON, but some change or message did not fit the model (see the log).
    Partial,
    /// Not a JSON delivery at all.
    Invalid,
}

impl ParseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ParseStatus::Parsed => "parsed",
            ParseStatus::Partial => "partial",
            ParseStatus::Invalid => "invalid",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub status: ParseStatus,
    /// One per referral message, packed (`PackedLead::unpack` gives a [`NewLead`]).
    pub leads: Vec<PackedLead>,
    /// Events Meta detected itself (`automatic_events` changes).
    pub detected: Vec<super::detected::NewDetected>,
    /// Inbound messages seen, with or without a referral.
    pub messages: usize,
    /// Status updates (sent, delivered, read, failed) seen.
    pub statuses: usize,
    /// Anything else: changes of other fields, `messages` changes with neither messages nor
    /// statuses, or a delivery for another object.
    pub other: usize,
}

impl Extracted {
    /// Only status updates, all read cleanly: no lead, nothing a later parser could recover.
    pub fn is_status_only(&self) -> bool {
        self.status == ParseStatus::Parsed
            && self.messages == 0
            && self.statuses > 0
            && self.other == 0
    }
}

/// Where odd fields are reported: sets `partial` and logs the JSON path and what was found,
/// never the value (it may be a name or a phone number).
struct Report<'o> {
    out: &'o mut Extracted,
}

impl Report<'_> {
    fn odd(&mut self, path: impl FnOnce() -> String, found: Found) {
        tracing::warn!(path = %path(), found, "a field had the wrong type; read as null");
        self.out.status = ParseStatus::Partial;
    }

    fn text<'t>(&mut self, field: &'t Field<'_>, path: impl FnOnce() -> String) -> Option<&'t str> {
        match field {
            Field::Text(t) => Some(t.as_ref()),
            Field::Absent => None,
            Field::Odd(found) => {
                self.odd(path, found);
                None
            }
        }
    }

    fn obj<'t, T>(&mut self, obj: &'t Obj<T>, path: impl FnOnce() -> String) -> Option<&'t T> {
        match obj {
            Obj::Some(t) => Some(t),
            Obj::Absent => None,
            Obj::Odd(found) => {
                self.odd(path, found);
                None
            }
        }
    }

    fn list<'t, T>(&mut self, list: &'t List<T>, path: impl FnOnce() -> String) -> &'t [T] {
        if let Some(found) = list.odd {
            self.odd(path, found);
        }
        &list.items
    }
}

/// Parses `text` into `T`; if a duplicate key (or another data error) stops the typed parse,
/// parses it as a `serde_json::Value` (where the last duplicate wins) and reads that instead.
fn parse<'a, T: Deserialize<'a>>(
    text: &'a str,
    canonical: &'a OnceCell<String>,
) -> Result<T, serde_json::Error> {
    match serde_json::from_str(text) {
        Ok(v) => Ok(v),
        Err(err) if err.is_data() => {
            let value: serde_json::Value = serde_json::from_str(text)?;
            serde_json::from_str(canonical.get_or_init(|| value.to_string()))
        }
        Err(err) => Err(err),
    }
}

/// A lone UTF-16 surrogate escape (`\ud800` without its pair) cannot be a Rust string, so it is
/// rewritten to `\ufffd` (U+FFFD) before parsing; both escapes are six bytes. Meta escapes every
/// non-ASCII character, so most bodies hold escapes and many hold valid pairs (emoji): the body is
/// walked from backslash to backslash, and copied only once a lone surrogate is found.
pub fn replace_lone_surrogates(text: &str) -> Cow<'_, str> {
    let b = text.as_bytes();
    let hex4 = |at: usize| -> Option<u32> {
        let digits = std::str::from_utf8(b.get(at..at + 4)?).ok()?;
        u32::from_str_radix(digits, 16).ok()
    };
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while let Some(found) = b.get(i..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        i += found;
        if b.get(i + 1) != Some(&b'u') {
            i += 2;
            continue;
        }
        let Some(unit) = hex4(i + 2) else {
            i += 2;
            continue;
        };
        if !(0xD800..0xE000).contains(&unit) {
            i += 6;
            continue;
        }
        let paired = unit < 0xDC00
            && b.get(i + 6) == Some(&b'\\')
            && b.get(i + 7) == Some(&b'u')
            && hex4(i + 8).is_some_and(|low| (0xDC00..0xE000).contains(&low));
        if paired {
            i += 12;
        } else {
            out.get_or_insert_with(|| b.to_vec())[i..i + 6].copy_from_slice(b"\\ufffd");
            i += 6;
        }
    }
    match out {
        None => Cow::Borrowed(text),
        Some(out) => String::from_utf8(out).map_or(Cow::Borrowed(text), Cow::Owned),
    }
}

/// Reads `body` (a verified delivery) and returns its leads.
pub fn extract(body: &[u8]) -> Extracted {
    let Ok(text) = std::str::from_utf8(body) else {
        tracing::warn!("a verified delivery is not UTF-8");
        return invalid();
    };
    let text = replace_lone_surrogates(text);
    let canonical = OnceCell::new();
    let delivery: Delivery<'_> = match parse::<Obj<Delivery<'_>>>(&text, &canonical) {
        Ok(Obj::Some(d)) => d,
        Ok(not_an_object) => {
            // JSON, but not a delivery: flagged (and so kept raw), never read positionally.
            let found = match not_an_object {
                Obj::Odd(found) => found,
                _ => "null",
            };
            tracing::warn!(found, "a verified delivery is not a JSON object");
            return Extracted {
                status: ParseStatus::Partial,
                ..invalid()
            };
        }
        Err(err) => {
            tracing::warn!(line = err.line(), column = err.column(), kind = ?err.classify(), "a verified delivery is not JSON");
            return invalid();
        }
    };
    let mut out = Extracted {
        status: ParseStatus::Parsed,
        leads: Vec::new(),
        detected: Vec::new(),
        messages: 0,
        statuses: 0,
        other: 0,
    };
    if delivery.object.as_str() != Some("whatsapp_business_account") {
        out.other += 1;
        return out;
    }
    let mut report = Report { out: &mut out };
    for (ei, entry) in report
        .list(&delivery.entry, || "entry".into())
        .iter()
        .enumerate()
    {
        let Some(entry) = report.obj(entry, || format!("entry[{ei}]")) else {
            continue;
        };
        let waba_id = report.text(&entry.id, || format!("entry[{ei}].id"));
        for (ci, change) in report
            .list(&entry.changes, || format!("entry[{ei}].changes"))
            .iter()
            .enumerate()
        {
            let Some(change) = report.obj(change, || format!("entry[{ei}].changes[{ci}]")) else {
                continue;
            };
            if change.field.as_str() == Some("automatic_events") {
                report.out.other += 1;
                // A value that is not an object has no events, and `read` says so.
                let read = match &change.value {
                    Obj::Absent => None,
                    value => {
                        let events = value.get().and_then(|v| v.automatic_events);
                        Some(super::detected::read(events.map(|raw| raw.get()), waba_id))
                    }
                };
                match read {
                    Some(Ok((events, unreadable))) => {
                        if unreadable > 0 {
                            tracing::warn!(path = %format!("entry[{ei}].changes[{ci}].value.automatic_events"), unreadable, "detected events without an id or event_name; skipped");
                            report.out.status = ParseStatus::Partial;
                        }
                        report.out.detected.extend(events);
                    }
                    Some(Err(why)) => {
                        tracing::warn!(path = %format!("entry[{ei}].changes[{ci}].value"), %why, "an automatic_events change could not be read");
                        report.out.status = ParseStatus::Partial;
                    }
                    None => report.out.status = ParseStatus::Partial,
                }
                continue;
            }
            if change.field.as_str() != Some("messages") {
                report.out.other += 1;
                continue;
            }
            let at = || format!("entry[{ei}].changes[{ci}].value");
            if let Some(value) = report.obj(&change.value, at) {
                report.out.statuses += value.statuses.items.len();
                if value.messages.items.is_empty() && value.statuses.items.is_empty() {
                    report.out.other += 1;
                }
                extract_value(waba_id, value, &mut report, &at);
            } else {
                report.out.other += 1;
            }
        }
    }
    out
}

fn invalid() -> Extracted {
    Extracted {
        status: ParseStatus::Invalid,
        leads: Vec::new(),
        detected: Vec::new(),
        messages: 0,
        statuses: 0,
        other: 1,
    }
}

fn extract_value(
    waba_id: Option<&str>,
    value: &ChangeValue<'_>,
    report: &mut Report<'_>,
    at: &dyn Fn() -> String,
) {
    let metadata = report.obj(&value.metadata, || format!("{}.metadata", at()));
    let phone_number_id = metadata.and_then(|m| {
        report.text(&m.phone_number_id, || {
            format!("{}.metadata.phone_number_id", at())
        })
    });
    let display_phone_number = metadata.and_then(|m| {
        report.text(&m.display_phone_number, || {
            format!("{}.metadata.display_phone_number", at())
        })
    });
    let contacts = report.list(&value.contacts, || format!("{}.contacts", at()));
    let messages = report.list(&value.messages, || format!("{}.messages", at()));
    for (mi, message) in messages.iter().enumerate() {
        report.out.messages += 1;
        let here = || format!("{}.messages[{mi}]", at());
        let Some(message) = report.obj(message, here) else {
            continue;
        };
        let referral = match &message.referral {
            Obj::Absent => continue,
            other => report.obj(other, || format!("{}.referral", here())),
        };
        let Some(wamid) = report
            .text(&message.id, || format!("{}.id", here()))
            .filter(|id| !id.is_empty())
        else {
            // Without a message id the lead could not be de-duplicated; the raw event keeps it.
            tracing::warn!(path = %here(), "a referral message without an id was kept only in the raw event");
            report.out.status = ParseStatus::Partial;
            continue;
        };
        let contact = sender_contact(contacts, message, report, at);
        let from = report.text(&message.from, || format!("{}.from", here()));
        let from_user = report.text(&message.from_user_id, || format!("{}.from_user_id", here()));
        let (contact_wa_id, contact_user_id, profile_name) = match contact {
            Some((ki, c)) => {
                let cat = || format!("{}.contacts[{ki}]", at());
                let profile = report.obj(&c.profile, || format!("{}.profile", cat()));
                (
                    report.text(&c.wa_id, || format!("{}.wa_id", cat())),
                    report.text(&c.user_id, || format!("{}.user_id", cat())),
                    profile
                        .and_then(|p| report.text(&p.name, || format!("{}.profile.name", cat()))),
                )
            }
            None => (None, None, None),
        };
        let text = report
            .obj(&message.text, || format!("{}.text", here()))
            .and_then(|t| report.text(&t.body, || format!("{}.text.body", here())));
        let lead = NewLead {
            wamid,
            waba_id,
            phone_number_id,
            display_phone_number,
            wa_id: from.or(contact_wa_id),
            user_id: from_user.or(contact_user_id),
            profile_name,
            message_type: report.text(&message.kind, || format!("{}.type", here())),
            text,
            timestamp: report
                .text(&message.timestamp, || format!("{}.timestamp", here()))
                .and_then(|t| t.parse().ok()),
            referral: referral
                .map(|r| to_referral(r, report, &|| format!("{}.referral", here())))
                .unwrap_or_default(),
        };
        report.out.leads.push(PackedLead::pack(&lead));
    }
}

/// The contact who sent `message`, with its index: matched on `wa_id` = `from`, else on the
/// BSUID, else the change's only contact. Contacts that are not objects are skipped (and reported).
fn sender_contact<'c, 'a>(
    contacts: &'c [Obj<Contact<'a>>],
    message: &Message<'_>,
    report: &mut Report<'_>,
    at: &dyn Fn() -> String,
) -> Option<(usize, &'c Contact<'a>)> {
    let objects: Vec<(usize, &'c Contact<'a>)> = contacts
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            report
                .obj(c, || format!("{}.contacts[{i}]", at()))
                .map(|c| (i, c))
        })
        .collect();
    let by_wa_id = message.from.as_str().and_then(|from| {
        objects
            .iter()
            .copied()
            .find(|(_, c)| c.wa_id.as_str() == Some(from))
    });
    by_wa_id
        .or_else(|| {
            let user = message.from_user_id.as_str()?;
            objects
                .iter()
                .copied()
                .find(|(_, c)| c.user_id.as_str() == Some(user))
        })
        // A change with one contact names its sender, even when an id field is odd.
        .or(match objects.as_slice() {
            [only] => Some(*only),
            _ => None,
        })
}

fn to_referral<'r>(
    r: &'r Referral<'_>,
    report: &mut Report<'_>,
    at: &dyn Fn() -> String,
) -> NewReferral<&'r str> {
    let mut f = |field: &'r Field<'_>, name: &str| -> Option<&'r str> {
        report.text(field, || format!("{}.{name}", at()))
    };
    let mut referral = NewReferral {
        source_url: f(&r.source_url, "source_url"),
        source_id: f(&r.source_id, "source_id"),
        source_type: f(&r.source_type, "source_type"),
        headline: f(&r.headline, "headline"),
        body: f(&r.body, "body"),
        media_type: f(&r.media_type, "media_type"),
        image_url: f(&r.image_url, "image_url"),
        video_url: f(&r.video_url, "video_url"),
        thumbnail_url: f(&r.thumbnail_url, "thumbnail_url"),
        ctwa_clid: f(&r.ctwa_clid, "ctwa_clid"),
        ref_: f(&r.ref_, "ref"),
        welcome_message: None,
    };
    referral.welcome_message = report
        .obj(&r.welcome_message, || format!("{}.welcome_message", at()))
        .and_then(|w| report.text(&w.text, || format!("{}.welcome_message.text", at())));
    referral
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn delivery(value: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "object": "whatsapp_business_account",
            "entry": [{"id": "WABA1", "changes": [{"field": "messages", "value": value}]}]
        }))
        .unwrap()
    }

    #[test]
    fn referral_message_becomes_a_lead_with_every_field() {
        let body = delivery(json!({
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": "PN1"},
            "contacts": [{"profile": {"name": "Other"}, "wa_id": "999"},
                         {"profile": {"name": "Zoë"}, "wa_id": "4917"}],
            "messages": [{
                "from": "4917", "id": "wamid.A", "timestamp": "1700000000", "type": "text",
                "text": {"body": "hi"},
                "referral": {"source_url": "https://fb.me/x", "source_id": "AD1", "source_type": "ad",
                    "headline": "H", "body": "B", "media_type": "image", "image_url": "https://i",
                    "video_url": "https://v", "thumbnail_url": "https://t", "ctwa_clid": "CLID",
                    "ref": "R1", "welcome_message": {"text": "Welcome!"}},
                "future_field": {"nested": [1, 2]}
            }]
        }));
        let out = extract(&body);
        assert_eq!(out.status, ParseStatus::Parsed);
        assert_eq!(out.leads.len(), 1);
        let lead = &out.leads[0].unpack();
        assert_eq!(lead.wamid, "wamid.A");
        assert_eq!(lead.waba_id.as_deref(), Some("WABA1"));
        assert_eq!(lead.phone_number_id.as_deref(), Some("PN1"));
        assert_eq!(lead.display_phone_number.as_deref(), Some("15550001111"));
        assert_eq!(lead.profile_name.as_deref(), Some("Zoë"));
        assert_eq!(lead.timestamp, Some(1_700_000_000));
        assert_eq!(lead.text.as_deref(), Some("hi"));
        assert_eq!(lead.referral.ref_.as_deref(), Some("R1"));
        assert_eq!(lead.referral.ctwa_clid.as_deref(), Some("CLID"));
        assert_eq!(lead.referral.welcome_message.as_deref(), Some("Welcome!"));
        assert_eq!(lead.referral.thumbnail_url.as_deref(), Some("https://t"));
    }

    #[test]
    fn absent_fields_stay_none() {
        let body = delivery(
            json!({"messages": [{"id": "wamid.B", "type": "request_welcome", "referral": {}}]}),
        );
        let lead = &extract(&body).leads[0].unpack();
        assert_eq!(lead.message_type.as_deref(), Some("request_welcome"));
        assert_eq!(
            lead,
            &NewLead {
                wamid: "wamid.B".into(),
                waba_id: Some("WABA1".into()),
                message_type: Some("request_welcome".into()),
                ..NewLead::default()
            }
        );
    }

    #[test]
    fn bsuid_only_sender_is_matched_by_user_id() {
        let body = delivery(json!({
            "contacts": [{"profile": {"name": "Ana"}, "user_id": "US.1"}],
            "messages": [{"from_user_id": "US.1", "id": "wamid.C", "type": "text", "referral": {"source_id": "AD"}}]
        }));
        let lead = &extract(&body).leads[0].unpack();
        assert_eq!(lead.user_id.as_deref(), Some("US.1"));
        assert_eq!(lead.wa_id, None);
        assert_eq!(lead.profile_name.as_deref(), Some("Ana"));
    }

    #[test]
    fn a_malformed_message_does_not_cost_its_neighbours() {
        let body = delivery(json!({"messages": [
            "not an object",
            {"id": 5, "referral": {}},
            {"id": "wamid.D", "referral": {"source_id": "AD"}},
            {"id": "wamid.E", "type": "text"}
        ]}));
        let out = extract(&body);
        assert_eq!(out.status, ParseStatus::Partial);
        assert_eq!(out.messages, 4);
        assert_eq!(
            out.leads
                .iter()
                .map(|l| l.view().wamid())
                .collect::<Vec<_>>(),
            ["5", "wamid.D"]
        );
    }

    fn full() -> serde_json::Value {
        json!({
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": "PN1"},
            "contacts": [{"profile": {"name": "Zoë"}, "wa_id": "4917"}],
            "messages": [{
                "from": "4917", "id": "wamid.A", "timestamp": "1700000000", "type": "text",
                "text": {"body": "hi"},
                "referral": {"source_url": "https://fb.me/x", "source_id": "AD1", "source_type": "ad",
                    "headline": "H", "body": "B", "ctwa_clid": "CLID", "ref": "R1",
                    "welcome_message": {"text": "Welcome!"}}
            }]
        })
    }

    #[test]
    fn one_odd_field_keeps_the_lead_and_the_other_fields() {
        let cases: Vec<(&str, serde_json::Value, ParseStatus)> = vec![
            ("/messages/0/referral/ref", json!(5), ParseStatus::Parsed),
            (
                "/messages/0/referral/source_id",
                json!(120_000_001),
                ParseStatus::Parsed,
            ),
            (
                "/messages/0/timestamp",
                json!(1_700_000_000),
                ParseStatus::Parsed,
            ),
            (
                "/messages/0/referral/ctwa_clid",
                json!(["a"]),
                ParseStatus::Partial,
            ),
            (
                "/messages/0/referral/welcome_message",
                json!("x"),
                ParseStatus::Partial,
            ),
            ("/contacts/0/wa_id", json!(4917), ParseStatus::Parsed),
            (
                "/metadata/phone_number_id",
                json!(106_540_352_242_922_u64),
                ParseStatus::Parsed,
            ),
            (
                "/contacts/0/profile",
                json!("Jane Doe"),
                ParseStatus::Partial,
            ),
        ];
        for (pointer, odd, status) in cases {
            let mut value = full();
            *value.pointer_mut(pointer).expect(pointer) = odd.clone();
            let out = extract(&delivery(value));
            assert_eq!(out.status, status, "{pointer}");
            assert_eq!(out.leads.len(), 1, "{pointer}: the lead survives");
            let lead = &out.leads[0].unpack();
            assert_eq!(lead.wamid, "wamid.A", "{pointer}");
            assert_eq!(lead.text.as_deref(), Some("hi"), "{pointer}");
            assert_eq!(lead.referral.headline.as_deref(), Some("H"), "{pointer}");
            if let Some(n) = odd.as_u64() {
                let field = match pointer {
                    "/messages/0/referral/ref" => lead.referral.ref_.clone(),
                    "/messages/0/referral/source_id" => lead.referral.source_id.clone(),
                    "/messages/0/timestamp" => lead.timestamp.map(|t| t.to_string()),
                    "/contacts/0/wa_id" => lead.wa_id.clone(),
                    _ => lead.phone_number_id.clone(),
                };
                assert_eq!(field, Some(n.to_string()), "{pointer}: numbers become text");
            }
        }
    }

    #[test]
    fn a_numeric_entry_id_is_text() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":102290129340398,"changes":[{"field":"messages","value":{"messages":[{"id":"wamid.N","referral":{"ref":"r"}}]}}]}]}"#;
        let out = extract(body);
        assert_eq!(out.status, ParseStatus::Parsed);
        assert_eq!(
            out.leads[0].unpack().waba_id.as_deref(),
            Some("102290129340398")
        );
    }

    #[test]
    fn a_lone_surrogate_becomes_the_replacement_character() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"W","changes":[{"field":"messages","value":{"messages":[{"id":"wamid.S","referral":{"headline":"a\ud800b","body":"\ud83d\ude00","ref":"x\\ud800"}}]}}]}]}"#;
        let out = extract(body);
        assert_eq!(out.leads.len(), 1);
        let r = &out.leads[0].unpack().referral;
        assert_eq!(r.headline.as_deref(), Some("a\u{FFFD}b"));
        assert_eq!(r.body.as_deref(), Some("😀"), "a valid pair is kept");
        assert_eq!(
            r.ref_.as_deref(),
            Some("x\\ud800"),
            "an escaped backslash is text"
        );
    }

    #[test]
    fn only_a_body_with_a_lone_surrogate_is_copied() {
        use std::borrow::Cow;
        for kept in [
            r#"{"n":"Zo\u00eb \ud83c\udf89","t":"\\ud800","e":"\\"}"#,
            r#"{"plain":"ascii only"}"#,
            r#"\u"#,
            "\\",
            "\\u",
        ] {
            assert!(
                matches!(replace_lone_surrogates(kept), Cow::Borrowed(_)),
                "{kept}"
            );
        }
        for (lone, fixed) in [
            (r#""\ud800""#, r#""\ufffd""#),
            (r#""\udc00\ud800x""#, r#""\ufffd\ufffdx""#),
            (r#""\ud83c\udf89\uDBFF""#, r#""\ud83c\udf89\ufffd""#),
            (r#""\ud800\u0041""#, r#""\ufffd\u0041""#),
            (r#"\ud83c\udf8"#, r#"\ufffd\udf8"#),
        ] {
            assert_eq!(replace_lone_surrogates(lone), fixed, "{lone}");
        }
    }

    #[test]
    fn for_a_duplicate_key_the_last_value_wins() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"W","changes":[{"field":"messages","value":{"messages":[{"id":"wamid.D","referral":{"ref":"first","ref":"last","source_id":"AD"}}]}}]}]}"#;
        let out = extract(body);
        assert_eq!(out.leads.len(), 1);
        assert_eq!(out.leads[0].view().ref_(), Some("last"));
        assert_eq!(out.leads[0].view().source_id(), Some("AD"));
        let top = br#"{"object":"whatsapp_business_account","object":"whatsapp_business_account","entry":[{"id":"W","changes":[{"field":"messages","value":{"messages":[{"id":"wamid.T","referral":{}}]}}]}]}"#;
        assert_eq!(extract(top).leads.len(), 1);
    }

    #[test]
    fn detected_events_are_read_in_the_same_pass_whatever_the_key_order() {
        // `value` before `field` (Meta's order), after it, and with a duplicate key beside the
        // events (the whole delivery then takes the last-wins fallback).
        for body in [
            r#"{"object":"whatsapp_business_account","entry":[{"id":"W","changes":[{"value":{"automatic_events":[{"id":"wamid.E","event_name":"Purchase"}]},"field":"automatic_events"}]}]}"#,
            r#"{"object":"whatsapp_business_account","entry":[{"id":"W","changes":[{"field":"automatic_events","value":{"automatic_events":[{"id":"wamid.E","event_name":"Purchase"}]}}]}]}"#,
            r#"{"object":"whatsapp_business_account","entry":[{"id":"W","changes":[{"value":{"x":1,"x":2,"automatic_events":[{"id":"wamid.E","event_name":"Purchase"}]},"field":"automatic_events"}]}]}"#,
        ] {
            let out = extract(body.as_bytes());
            assert_eq!(out.status, ParseStatus::Parsed, "{body}");
            assert_eq!(out.detected.len(), 1, "{body}");
            assert_eq!(out.detected[0].id, "wamid.E");
            assert_eq!(out.detected[0].waba_id.as_deref(), Some("W"));
        }
        // A value that is not an object, or has no events: flagged, nothing read.
        for value in [r#""x""#, r#"{"messages":[]}"#] {
            let body = format!(
                r#"{{"object":"whatsapp_business_account","entry":[{{"id":"W","changes":[{{"value":{value},"field":"automatic_events"}}]}}]}}"#
            );
            let out = extract(body.as_bytes());
            assert_eq!(out.status, ParseStatus::Partial, "{body}");
            assert!(out.detected.is_empty());
        }
    }

    #[test]
    fn non_json_and_foreign_objects_yield_no_leads() {
        assert_eq!(extract(b"not json").status, ParseStatus::Invalid);
        assert_eq!(extract(&[0xff, 0xfe]).status, ParseStatus::Invalid);
        let page = extract(br#"{"object":"page","entry":[{"changes":[{"field":"messages","value":{"messages":[{"id":"x","referral":{}}]}}]}]}"#);
        assert_eq!(page.status, ParseStatus::Parsed);
        assert!(page.leads.is_empty());
    }

    #[test]
    fn json_that_is_not_an_object_is_flagged_and_never_read_by_position() {
        // Read as a sequence, a derived struct would take its fields in order: this array
        // would become a delivery with a lead.
        let array = br#"["whatsapp_business_account",[{"id":"W","changes":[{"field":"messages","value":{"messages":[{"id":"wamid.A","referral":{"ref":"r"}}]}}]}]]"#;
        for body in [&array[..], b"[]", b"null", b"5", br#""text""#, b"true"] {
            let out = extract(body);
            assert_eq!(
                out.status,
                ParseStatus::Partial,
                "{}",
                String::from_utf8_lossy(body)
            );
            assert!(out.leads.is_empty());
            assert_eq!(out.other, 1);
        }
    }
}
