//! Turns a verified delivery into leads: a pure function, no I/O. Every inbound message that
//! carries a `referral`, in every entry and change of the batch, becomes one [`NewLead`],
//! whatever its type. What is absent stays `None`; nothing is invented. Parts that fail to
//! parse are counted, not fatal, so the raw event can be re-extracted later.

use serde_json::value::RawValue;

use crate::webhook::payload::{Contact, Delivery, Message, MessagesValue, Str};

/// One lead, owned, ready for the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewLead {
    pub wamid: String,
    pub waba_id: Option<String>,
    pub phone_number_id: Option<String>,
    pub display_phone_number: Option<String>,
    pub wa_id: Option<String>,
    pub user_id: Option<String>,
    pub profile_name: Option<String>,
    pub message_type: Option<String>,
    pub text: Option<String>,
    /// Message time, unix seconds.
    pub timestamp: Option<i64>,
    pub referral: NewReferral,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewReferral {
    pub source_url: Option<String>,
    pub source_id: Option<String>,
    pub source_type: Option<String>,
    pub headline: Option<String>,
    pub body: Option<String>,
    pub media_type: Option<String>,
    pub image_url: Option<String>,
    pub video_url: Option<String>,
    pub thumbnail_url: Option<String>,
    pub ctwa_clid: Option<String>,
    pub ref_: Option<String>,
    pub welcome_message: Option<String>,
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
    pub leads: Vec<NewLead>,
    /// Inbound messages seen, with or without a referral.
    pub messages: usize,
}

fn own(s: &Option<Str<'_>>) -> Option<String> {
    s.as_deref().map(str::to_owned)
}

/// Reads `body` (a verified delivery) and returns its leads.
pub fn extract(body: &[u8]) -> Extracted {
    let Ok(text) = std::str::from_utf8(body) else {
        return invalid();
    };
    let delivery: Delivery<'_> = match serde_json::from_str(text) {
        Ok(d) => d,
        Err(_) => return invalid(),
    };
    let mut out = Extracted {
        status: ParseStatus::Parsed,
        leads: Vec::new(),
        messages: 0,
    };
    if delivery.object.as_deref() != Some("whatsapp_business_account") {
        return out;
    }
    for entry in &delivery.entry {
        for change in &entry.changes {
            if change.field.as_deref() != Some("messages") {
                continue;
            }
            let Some(raw) = change.value else { continue };
            match serde_json::from_str::<MessagesValue<'_>>(raw.get()) {
                Ok(value) => extract_value(entry.id.as_deref(), &value, &mut out),
                Err(err) => {
                    tracing::warn!(%err, "a messages change did not fit the model");
                    out.status = ParseStatus::Partial;
                }
            }
        }
    }
    out
}

fn invalid() -> Extracted {
    Extracted {
        status: ParseStatus::Invalid,
        leads: Vec::new(),
        messages: 0,
    }
}

fn extract_value(waba_id: Option<&str>, value: &MessagesValue<'_>, out: &mut Extracted) {
    let metadata = value.metadata.as_ref();
    for raw in &value.messages {
        out.messages += 1;
        let message = match parse_message(raw) {
            Ok(m) => m,
            Err(err) => {
                tracing::warn!(%err, "a message did not fit the model");
                out.status = ParseStatus::Partial;
                continue;
            }
        };
        let Some(referral) = &message.referral else {
            continue;
        };
        let Some(wamid) = message.id.as_deref().filter(|id| !id.is_empty()) else {
            // Without a message id the lead could not be de-duplicated; the raw event keeps it.
            tracing::warn!("a referral message without an id was kept only in the raw event");
            out.status = ParseStatus::Partial;
            continue;
        };
        let contact = sender_contact(&value.contacts, &message);
        out.leads.push(NewLead {
            wamid: wamid.to_owned(),
            waba_id: waba_id.map(str::to_owned),
            phone_number_id: metadata.and_then(|m| own(&m.phone_number_id)),
            display_phone_number: metadata.and_then(|m| own(&m.display_phone_number)),
            wa_id: own(&message.from).or_else(|| contact.and_then(|c| own(&c.wa_id))),
            user_id: own(&message.from_user_id).or_else(|| contact.and_then(|c| own(&c.user_id))),
            profile_name: contact.and_then(|c| c.profile.as_ref().and_then(|p| own(&p.name))),
            message_type: own(&message.kind),
            text: message.text.as_ref().and_then(|t| own(&t.body)),
            timestamp: message.timestamp.as_deref().and_then(|t| t.parse().ok()),
            referral: to_referral(referral),
        });
    }
}

fn parse_message<'a>(raw: &'a RawValue) -> Result<Message<'a>, serde_json::Error> {
    serde_json::from_str(raw.get())
}

/// The contact who sent `message`: matched on `wa_id` = `from`, else on the BSUID.
fn sender_contact<'c, 'a>(
    contacts: &'c [Contact<'a>],
    message: &Message<'_>,
) -> Option<&'c Contact<'a>> {
    let by_wa_id = message
        .from
        .as_deref()
        .and_then(|from| contacts.iter().find(|c| c.wa_id.as_deref() == Some(from)));
    by_wa_id.or_else(|| {
        let user = message.from_user_id.as_deref()?;
        contacts.iter().find(|c| c.user_id.as_deref() == Some(user))
    })
}

fn to_referral(r: &crate::webhook::payload::Referral<'_>) -> NewReferral {
    NewReferral {
        source_url: own(&r.source_url),
        source_id: own(&r.source_id),
        source_type: own(&r.source_type),
        headline: own(&r.headline),
        body: own(&r.body),
        media_type: own(&r.media_type),
        image_url: own(&r.image_url),
        video_url: own(&r.video_url),
        thumbnail_url: own(&r.thumbnail_url),
        ctwa_clid: own(&r.ctwa_clid),
        ref_: own(&r.ref_),
        welcome_message: r.welcome_message.as_ref().and_then(|w| own(&w.text)),
    }
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
        let lead = &out.leads[0];
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
        let lead = &extract(&body).leads[0];
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
        let lead = &extract(&body).leads[0];
        assert_eq!(lead.user_id.as_deref(), Some("US.1"));
        assert_eq!(lead.wa_id, None);
        assert_eq!(lead.profile_name.as_deref(), Some("Ana"));
    }

    #[test]
    fn a_malformed_message_does_not_cost_its_neighbours() {
        let body = delivery(json!({"messages": [
            {"id": 5, "referral": {}},
            {"id": "wamid.D", "referral": {"source_id": "AD"}},
            {"id": "wamid.E", "type": "text"}
        ]}));
        let out = extract(&body);
        assert_eq!(out.status, ParseStatus::Partial);
        assert_eq!(out.messages, 3);
        assert_eq!(
            out.leads
                .iter()
                .map(|l| l.wamid.as_str())
                .collect::<Vec<_>>(),
            ["wamid.D"]
        );
    }

    #[test]
    fn non_json_and_foreign_objects_yield_no_leads() {
        assert_eq!(extract(b"not json").status, ParseStatus::Invalid);
        assert_eq!(extract(&[0xff, 0xfe]).status, ParseStatus::Invalid);
        let page = extract(br#"{"object":"page","entry":[{"changes":[{"field":"messages","value":{"messages":[{"id":"x","referral":{}}]}}]}]}"#);
        assert_eq!(page.status, ParseStatus::Parsed);
        assert!(page.leads.is_empty());
    }
}
