//! A realistic Click-to-WhatsApp delivery, encoded and signed the way Meta does it, for
//! `ctwa-leads simulate` (and the tests): users check their set-up before registering the URL.

use serde_json::{json, Value};

/// Serializes `value` as Meta does: non-ASCII as `\uXXXX` (surrogate pairs above the BMP) and
/// `/` as `\/`. The signature covers these exact bytes.
pub fn meta_json(value: &Value) -> Vec<u8> {
    let plain = value.to_string();
    let mut out = String::with_capacity(plain.len() + plain.len() / 8);
    for c in plain.chars() {
        match c {
            '/' => out.push_str("\\/"),
            c if c.is_ascii() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.into_bytes()
}

/// A delivery with one referral message from an ad, with a unique `wamid` and `ctwa_clid`.
pub fn sample_delivery(waba_id: &str, unique: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": waba_id,
            "changes": [{
                "field": "messages",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "15550001234", "phone_number_id": "106540352242922"},
                    "contacts": [{"profile": {"name": "Zoë Müller 🎉"}, "wa_id": "4915112345678"}],
                    "messages": [{
                        "from": "4915112345678",
                        "id": format!("wamid.SIM{unique}"),
                        "timestamp": now.to_string(),
                        "type": "text",
                        "text": {"body": "Hi! I'd like more info about this offer."},
                        "referral": {
                            "source_url": "https://fb.me/3cr4Wqqkp",
                            "source_id": "120208451930730123",
                            "source_type": "ad",
                            "headline": "Summer sale — 25% off",
                            "body": "Tap to chat with us on WhatsApp",
                            "media_type": "image",
                            "image_url": "https://scontent.xx.fbcdn.net/v/t45.1600-4/ad.jpg",
                            "ctwa_clid": format!("ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7JwFF4XvnO2E4Nx0-eM-{unique}"),
                            "ref": "summer-sale-2026",
                            "welcome_message": {"text": "Welcome! How can we help?"}
                        }
                    }]
                }
            }]
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_escaping_round_trips() {
        let value = json!({"name": "é 🎉", "url": "https://a/b"});
        let bytes = meta_json(&value);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.is_ascii());
        assert!(
            text.contains(r"\u00e9")
                && text.contains(r"\ud83c\udf89")
                && text.contains(r"https:\/\/a\/b"),
            "{text}"
        );
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), value);
    }
}
