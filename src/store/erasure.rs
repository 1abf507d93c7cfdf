//! Erasure of one person (GDPR art. 17): their leads, and every raw delivery in the log that
//! mentions them. A raw delivery is removed whole (a batch may hold other people's messages:
//! their leads stay, only the raw copy goes). "Mentions" is exact: some string (or number) in
//! the delivery's JSON equals the id, so a longer number that merely contains it is not hit.
//! An erasure covers what was acknowledged before it: it first waits for the projection to take
//! that in, then removes the raw deliveries the projection has read and the leads it built.

use std::time::Duration;

use rusqlite::{params, Connection};

use super::leads::CONTACT_LEAD_IDS;
use super::projector::watermark;
use super::scan::{Entry, LogScan};
use super::writer::open_connection;
use super::{Store, StoreError};

/// What one erasure removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Erased {
    /// Leads whose `wa_id` or `user_id` was the id.
    pub leads: u64,
    /// Raw deliveries that mentioned the id.
    pub raw_deliveries: u64,
    /// Raw deliveries whose stored body no longer unpacks (a damaged page, or a codec of a
    /// later version), so this erasure could not tell whether they mention the id. They are
    /// kept, and an error log line names each one's log id. Zero on a sound log.
    pub unreadable_raw_deliveries: u64,
}

impl Store {
    /// Removes everything stored about `id` (a `wa_id` or a BSUID `user_id`) that was
    /// acknowledged before this call: first the raw deliveries in the log, then the leads. Each
    /// part is one transaction; repeating a half-done erasure finishes it.
    ///
    /// It waits for the projection to reach every delivery acknowledged before it
    /// ([`StoreError::ProjectionBehind`] if the projector is failing, or has not within
    /// `catch_up`; the lag is about a second under full load). Without that wait, a delivery
    /// still waiting for its round would lose its raw copy here and then have its leads built
    /// anyway (the projector takes them from the writer's hand-off, not from the log), or, read
    /// back from the log, lose the other people's leads it held.
    pub async fn erase_contact(
        &self,
        id: String,
        catch_up: Duration,
    ) -> Result<Erased, StoreError> {
        if !self.caught_up(catch_up, true).await {
            return Err(StoreError::ProjectionBehind);
        }
        let (path, log_path, durability) =
            (self.path.clone(), self.log_path.clone(), self.durability);
        let turn = self.turns().take().await;
        super::blocking(move || {
            let _turn = turn;
            let mut leads = open_connection(&path, durability)?;
            // The projector commits nothing while this turn is held, so its watermark holds
            // still. Deliveries past it (acknowledged since this erasure began) are left to
            // their round, raw copy and leads alike.
            let projected = watermark(&leads)?;
            let mut log = open_connection(&log_path, durability)?;
            let raw = erase_raw(&mut log, &id, projected)?;
            log.close().map_err(|(_, err)| err)?;
            // Their forwarding deliveries and conversion events go with the leads (none exists
            // without its lead), and so do the events Meta detected in their chats (linked by
            // the leads' click ids).
            let tx = leads.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            // New leads are numbered above this, so an erased lead's id is never given to
            // another person's (whose forwarded lead, auto LeadSubmitted `event_id` and API
            // URL would then repeat it).
            tx.execute(
                "UPDATE projection SET lead_ids_taken = \
                 max(lead_ids_taken, (SELECT coalesce(max(id), 0) FROM leads))",
                [],
            )?;
            for sql in [
                format!("DELETE FROM deliveries WHERE lead_id IN ({CONTACT_LEAD_IDS})"),
                format!("DELETE FROM conversions WHERE lead_id IN ({CONTACT_LEAD_IDS})"),
                format!(
                    "DELETE FROM detected_events WHERE ctwa_clid IN (SELECT ctwa_clid FROM leads \
                     WHERE id IN ({CONTACT_LEAD_IDS}) AND ctwa_clid IS NOT NULL)"
                ),
            ] {
                tx.execute(&sql, params![id])?;
            }
            let removed = tx.execute(
                &format!("DELETE FROM leads WHERE id IN ({CONTACT_LEAD_IDS})"),
                params![id],
            )? as u64;
            tx.commit()?;
            leads.close().map_err(|(_, err)| err)?;
            Ok(Erased {
                leads: removed,
                raw_deliveries: raw.removed,
                unreadable_raw_deliveries: raw.unreadable,
            })
        })
        .await
    }
}

/// Log entries read per page while searching.
const PAGE: i64 = 1000;

/// Whether any string or number in `value` is exactly `id`.
fn mentions(value: &serde_json::Value, id: &str) -> bool {
    match value {
        serde_json::Value::String(s) => s == id,
        serde_json::Value::Number(n) => n.to_string() == id,
        serde_json::Value::Array(items) => items.iter().any(|v| mentions(v, id)),
        serde_json::Value::Object(map) => map.values().any(|v| mentions(v, id)),
        _ => false,
    }
}

/// Rules out, from its bytes alone, a body that cannot mention the id, so that the scan parses
/// only the rest (parsing was most of an erasure's time). A JSON string equal to the id holds
/// the id's bytes as they are unless some of its characters were written as escapes, and a
/// number equal to it is written as its digits. For an id of printable ASCII without `"`, `\`
/// or `/` (a wa_id, a BSUID) the only escape that can stand for one of its characters is
/// `\u00XX` with `XX` from 20 to 7E. So a body with neither the id's bytes nor such an escape
/// is ruled out; one with such an escape is parsed (Meta escapes `/` and characters beyond ASCII,
/// so that is rare). Any other id rules nothing out.
struct ByteFilter<'a> {
    id: memchr::memmem::Finder<'a>,
    plain: bool,
}

impl<'a> ByteFilter<'a> {
    fn new(id: &'a str) -> Self {
        Self {
            id: memchr::memmem::Finder::new(id.as_bytes()),
            plain: id
                .bytes()
                .all(|b| (0x20..=0x7e).contains(&b) && !b"\"\\/".contains(&b)),
        }
    }

    fn holds_id(&self, raw: &[u8]) -> bool {
        self.id.find(raw).is_some()
    }

    /// False only when `raw` certainly does not mention the id.
    fn might_mention(&self, raw: &[u8]) -> bool {
        !self.plain
            || self.holds_id(raw)
            || memchr::memmem::find_iter(raw, b"\\u00")
                .any(|at| raw.get(at + 4).is_some_and(|c| (b'2'..=b'7').contains(c)))
    }
}

/// What [`erase_raw`] did: entries removed, and entries it could not read.
struct RawErased {
    removed: u64,
    unreadable: u64,
}

/// Deletes every log entry up to id `upto` that mentions `id`. Bodies are compressed, so each
/// is unpacked and read as JSON: a full scan of the log, page by page (erasure is rare;
/// retention bounds the log). An entry that does not unpack is counted and logged, not
/// guessed at: failing on it would refuse every erasure until someone repaired the log, and
/// removing it would lose a delivery that a later build might read.
fn erase_raw(log: &mut Connection, id: &str, upto: i64) -> Result<RawErased, StoreError> {
    let mut hits = Vec::new();
    let mut unreadable = 0;
    let bytes = ByteFilter::new(id);
    let mut search = |entry: Entry| {
        let raw = match entry.body {
            Ok(raw) => raw,
            Err(err) => {
                unreadable += 1;
                tracing::error!(
                    entry = entry.id,
                    %err,
                    "an erasure could not read this log entry, so could not check whether it \
                     mentions the person; it is kept (remove it by hand if it may)"
                );
                return Ok::<_, StoreError>(());
            }
        };
        // Most bodies are ruled out by their bytes; only the others are parsed. A body that is
        // not JSON but holds the id's bytes is removed too: nothing is kept that might name
        // the person.
        let hit = bytes.might_mention(&raw)
            && match serde_json::from_slice::<serde_json::Value>(&raw) {
                Ok(value) => mentions(&value, id),
                Err(_) => bytes.holds_id(&raw),
            };
        if hit {
            hits.push(entry.id);
        }
        Ok(())
    };
    let mut scan = LogScan::new(PAGE).upto(upto);
    while scan.next_page(log, &mut search)? > 0 {}
    let tx = log.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut removed = 0;
    for entry in hits {
        removed += tx.execute("DELETE FROM log WHERE id = ?1", params![entry])? as u64;
    }
    tx.commit()?;
    Ok(RawErased {
        removed,
        unreadable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_exact() {
        let v = serde_json::json!({"a": [{"wa_id": "4917"}], "n": 4918, "s": "x49170"});
        assert!(mentions(&v, "4917"));
        assert!(mentions(&v, "4918"));
        assert!(!mentions(&v, "491"));
        assert!(!mentions(&v, "49170"));
    }

    /// Writes `text` as a JSON string, each character escaped as `\u00XX` where `escape` says.
    fn json_string(text: &str, escape: &[bool]) -> String {
        let mut out = String::from("\"");
        for (i, c) in text.chars().enumerate() {
            if escape.get(i).copied().unwrap_or(false) {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            } else {
                let quoted = serde_json::to_string(&c.to_string()).unwrap();
                out.push_str(&quoted[1..quoted.len() - 1]);
            }
        }
        out.push('"');
        out
    }

    #[test]
    fn the_byte_filter_rules_out_only_bodies_that_cannot_mention_the_id() {
        let filter = ByteFilter::new("4915100000077");
        let body = |s: &str| format!(r#"{{"from":{s},"text":"\u00bfHola? https:\/\/fb.me"}}"#);
        let plain = body(&json_string("4915100000077", &[]));
        let escaped = body(&json_string("4915100000077", &[false, false, true]));
        let other = body(&json_string("4915100000078", &[]));
        for (raw, mentioned) in [(&plain, true), (&escaped, true), (&other, false)] {
            let value: serde_json::Value = serde_json::from_str(raw).unwrap();
            assert_eq!(mentions(&value, "4915100000077"), mentioned, "{raw}");
        }
        assert!(filter.might_mention(plain.as_bytes()));
        assert!(filter.might_mention(escaped.as_bytes()), "an escaped digit");
        assert!(
            !filter.might_mention(other.as_bytes()),
            "only Meta's own escapes: ruled out"
        );
        assert!(!filter.might_mention(b"4915100000078 not JSON"));
        // An id that could hide behind other escapes is never ruled out.
        assert!(ByteFilter::new("a/b").might_mention(br#"{"x":"a\/b"}"#));
        assert!(ByteFilter::new("é").might_mention(b"{}"));
    }

    proptest::proptest! {
        #[test]
        fn no_mention_is_ever_ruled_out(
            id in "[0-9]{6,15}|US\\.[A-Za-z0-9]{4,20}|[ -~]{1,12}",
            before in "[ -~\u{a0}-\u{2fff}]{0,20}",
            escape in proptest::collection::vec(proptest::bool::ANY, 0..24),
            as_number in proptest::bool::ANY,
        ) {
            let written = if as_number && id.bytes().all(|b| b.is_ascii_digit()) && !id.starts_with('0') {
                id.clone()
            } else {
                json_string(&id, &escape)
            };
            let raw = format!(
                r#"{{"note":{},"entry":[{{"wa_id":{written}}}]}}"#,
                serde_json::to_string(&before).unwrap()
            );
            let value: serde_json::Value = serde_json::from_str(&raw).unwrap();
            proptest::prop_assert!(mentions(&value, &id), "{}", raw);
            proptest::prop_assert!(ByteFilter::new(&id).might_mention(raw.as_bytes()), "{}", raw);
        }
    }
}
