//! Meta's detected events: an `automatic_events` change reports leads and purchases that Meta
//! itself found in CTWA chats (`{"id", "event_name", "timestamp", "ctwa_clid", "custom_data"}`
//! per event). Read here, without I/O, for the projector to store once per id beside the leads.

use serde_json::Value;

/// One event Meta detected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDetected {
    /// Meta's id of the event (the message it was detected in).
    pub id: String,
    pub event_name: String,
    /// Unix seconds.
    pub event_time: Option<i64>,
    pub ctwa_clid: Option<String>,
    /// The WABA (the entry's id).
    pub waba_id: Option<String>,
    /// `custom_data` as Meta sent it, as JSON text (purchases: currency and value).
    pub custom_data: Option<String>,
}

/// The events of one `automatic_events` change (`events`: the JSON text of its value's
/// `automatic_events`, if it has one), and how many items were unreadable (no `id` or
/// `event_name`). Never logs values.
pub fn read(
    events: Option<&str>,
    waba_id: Option<&str>,
) -> Result<(Vec<NewDetected>, usize), String> {
    let Some(events) = events else {
        return Err("no automatic_events array".into());
    };
    let events: Value = serde_json::from_str(events).map_err(|e| format!("{:?}", e.classify()))?;
    let Some(items) = events.as_array() else {
        return Err("no automatic_events array".into());
    };
    let mut out = Vec::with_capacity(items.len());
    let mut unreadable = 0;
    for item in items {
        let text = |key: &str| item.get(key).and_then(Value::as_str).map(str::to_owned);
        let (Some(id), Some(event_name)) = (text("id"), text("event_name")) else {
            unreadable += 1;
            continue;
        };
        let event_time = match item.get("timestamp") {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        };
        out.push(NewDetected {
            id,
            event_name,
            event_time,
            ctwa_clid: text("ctwa_clid"),
            waba_id: waba_id.map(str::to_owned),
            custom_data: item
                .get("custom_data")
                .filter(|c| c.is_object())
                .map(Value::to_string),
        });
    }
    Ok((out, unreadable))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_meta_s_reference_shape() {
        let events = r#"[
              {"id": "wamid.HBgL1", "event_name": "Purchase", "timestamp": 1763800000,
               "ctwa_clid": "ARAkLkA8", "custom_data": {"currency": "USD", "value": 25.5}},
              {"id": "wamid.HBgL2", "event_name": "LeadSubmitted", "timestamp": "1763800100",
               "ctwa_clid": "ARAkLkA9"},
              {"event_name": "Purchase"}
            ]"#;
        let (events, unreadable) = read(Some(events), Some("102290129340398")).unwrap();
        assert_eq!(unreadable, 1);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event_name, "Purchase");
        assert_eq!(events[0].event_time, Some(1_763_800_000));
        assert_eq!(events[0].waba_id.as_deref(), Some("102290129340398"));
        let custom: Value =
            serde_json::from_str(events[0].custom_data.as_deref().unwrap()).unwrap();
        assert_eq!(custom["value"], 25.5);
        assert_eq!(events[1].event_time, Some(1_763_800_100));
        assert_eq!(events[1].custom_data, None);
        assert!(read(Some("{}"), None).is_err(), "not an array");
        assert!(read(None, None).is_err(), "no automatic_events");
    }
}
