//! Erasure of one person (GDPR art. 17): their leads, and every raw delivery in the log that
//! mentions them. A raw delivery is removed whole (a batch may hold other people's messages:
//! their leads stay, only the raw copy goes). "Mentions" is exact: some string (or number) in
//! the delivery's JSON equals the id, so a longer number that merely contains it is not hit.
//! An erasure covers what was acknowledged before it: it first waits for the projection to take
//! that in, then removes the raw deliveries the projection has read (searching the log while the
//! projection goes on) and the leads it built from them.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rusqlite::{params, Connection};

use tokio_util::sync::CancellationToken;

use super::erasure_requests::Pending;
use super::leads::CONTACT_LEAD_IDS;
use super::scan::{Entry, LogScan};
use super::writer::open_connection;
use super::{Store, StoreError};

/// What one erasure removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
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
    /// Carries out erasure `request`: removes everything stored about its subject (a `wa_id`
    /// or a BSUID `user_id`) that was acknowledged before this call, first the raw deliveries
    /// in the log, then the leads. Each part is one transaction; the second also marks the
    /// request done, with its counts, and forgets the subject. An attempt cut short (a restart,
    /// an error) leaves the request pending, and the next attempt finishes it.
    ///
    /// It waits for the projection to reach every delivery acknowledged before it
    /// ([`StoreError::ProjectionBehind`] if the projector is failing, or has not within
    /// `catch_up`; the lag is about a second under full load). Without that wait, a delivery
    /// still waiting for its round would lose its raw copy here and then have its leads built
    /// anyway (the projector takes them from the writer's hand-off, not from the log), or, read
    /// back from the log, lose the other people's leads it held.
    ///
    /// The erasure then covers the log up to the watermark that wait reached, and the leads
    /// built from it. The log is searched without holding the projection up (on a log of a
    /// million deliveries that takes seconds, and a projector held that long would hold back
    /// acknowledgements); only the leads' removal takes a turn at the leads file's write lock.
    /// Deliveries past that watermark, acknowledged since this erasure began, are left to their
    /// round, raw copy and leads alike. `stop` ends the search between two pages of the log
    /// ([`StoreError::Interrupted`]), so that a shutdown need not wait for a long scan.
    pub async fn erase_contact(
        &self,
        request: &Pending,
        catch_up: Duration,
        stop: &CancellationToken,
    ) -> Result<Erased, StoreError> {
        if !self.caught_up(catch_up, true).await {
            return Err(StoreError::ProjectionBehind);
        }
        let upto = self.progress.projected.load(Ordering::Acquire);
        let (path, log_path, durability) =
            (self.path.clone(), self.log_path.clone(), self.durability);
        let (contact, stop) = (request.subject.clone(), stop.clone());
        let raw = super::blocking(move || {
            let mut log = open_connection(&log_path, durability)?;
            let raw = erase_raw(&mut log, &contact, upto, &stop)?;
            log.close().map_err(|(_, err)| err)?;
            Ok(raw)
        })
        .await?;
        let turn = self.turns().take().await;
        let (id, subject) = (request.id, request.subject.clone());
        let leads = super::blocking(move || {
            let _turn = turn;
            let mut conn = open_connection(&path, durability)?;
            let done = Done {
                request: id,
                raw,
                now_ms: chrono::Utc::now().timestamp_millis(),
            };
            let removed = erase_leads(&mut conn, &subject, upto, &done)?;
            conn.close().map_err(|(_, err)| err)?;
            Ok(removed)
        })
        .await?;
        Ok(Erased {
            leads,
            raw_deliveries: raw.removed,
            unreadable_raw_deliveries: raw.unreadable,
        })
    }
}

/// What the leads' transaction records on the request it finishes.
struct Done {
    request: i64,
    raw: RawErased,
    now_ms: i64,
}

/// Deletes the leads of `id` built from log entries up to `upto`, in one transaction, with
/// their forwarding deliveries and conversion events (none exists without its lead) and the
/// events Meta detected in their chats (linked by the leads' click ids), and marks request
/// `done.request` finished; returns how many leads. The raw deliveries' counts are added to
/// what earlier attempts recorded, but a process that dies between the log's commit and this
/// one leaves those entries uncounted (they are gone all the same). The caller holds a turn at
/// the leads file's write lock.
fn erase_leads(conn: &mut Connection, id: &str, upto: i64, done: &Done) -> Result<u64, StoreError> {
    let erased =
        format!("SELECT id FROM leads WHERE id IN ({CONTACT_LEAD_IDS}) AND event_id <= ?2");
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // New rows are numbered above these, so an erased row's id is never given to another
    // person's: a lead's would repeat its forwarded `id`, its auto LeadSubmitted `event_id` and
    // its API URL; a delivery's or a conversion's, their API URLs.
    tx.execute(
        "UPDATE projection SET \
         lead_ids_taken = max(lead_ids_taken, (SELECT coalesce(max(id), 0) FROM leads)), \
         delivery_ids_taken = \
           max(delivery_ids_taken, (SELECT coalesce(max(id), 0) FROM deliveries)), \
         conversion_ids_taken = \
           max(conversion_ids_taken, (SELECT coalesce(max(id), 0) FROM conversions))",
        [],
    )?;
    for sql in [
        format!("DELETE FROM deliveries WHERE lead_id IN ({erased})"),
        format!("DELETE FROM conversions WHERE lead_id IN ({erased})"),
        format!(
            "DELETE FROM detected_events WHERE ctwa_clid IN (SELECT ctwa_clid FROM leads \
             WHERE id IN ({erased}) AND ctwa_clid IS NOT NULL)"
        ),
    ] {
        tx.execute(&sql, params![id, upto])?;
    }
    let removed = tx.execute(
        &format!("DELETE FROM leads WHERE id IN ({erased})"),
        params![id, upto],
    )? as u64;
    tx.execute(
        "UPDATE erasures SET subject = NULL, finished_at = ?2, last_error = NULL, \
         leads = leads + ?3, raw_deliveries = raw_deliveries + ?4, \
         unreadable_raw_deliveries = ?5 WHERE id = ?1",
        params![
            done.request,
            done.now_ms,
            removed as i64,
            done.raw.removed as i64,
            done.raw.unreadable as i64
        ],
    )?;
    tx.commit()?;
    Ok(removed)
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
#[derive(Clone, Copy)]
struct RawErased {
    removed: u64,
    unreadable: u64,
}

/// Deletes every log entry up to id `upto` that mentions `id`. Bodies are compressed, so each
/// is unpacked and read as JSON: a full scan of the log, page by page (erasure is rare;
/// retention bounds the log). An entry that does not unpack is counted and logged, not
/// guessed at: failing on it would refuse every erasure until someone repaired the log, and
/// removing it would lose a delivery that a later build might read.
fn erase_raw(
    log: &mut Connection,
    id: &str,
    upto: i64,
    stop: &CancellationToken,
) -> Result<RawErased, StoreError> {
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
    while scan.next_page(log, &mut search)? > 0 {
        if stop.is_cancelled() {
            return Err(StoreError::Interrupted);
        }
    }
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
    use crate::store::erasure_requests;

    /// Acknowledges the simulator's one-lead delivery (wa_id 4915112345678) as the webhook does.
    async fn deliver(store: &Store, unique: &str) {
        let raw = crate::simulate::meta_json(&crate::simulate::sample_delivery("1", unique));
        let extracted = crate::leads::extract::extract(&raw);
        let record = super::super::LogRecord::new(
            0,
            extracted.status,
            super::super::Kind::of(&extracted),
            extracted.leads.len(),
            &raw,
        )
        .with_leads(extracted.leads);
        store.ingest(record).await.expect("acknowledged");
    }

    /// A store on fresh files holding the simulator's one lead (wa_id 4915112345678), projected.
    async fn one_lead_projected() -> (tempfile::TempDir, Store, super::super::WriterTask) {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = crate::store::test_store(dir.path()).await;
        deliver(&store, "1").await;
        assert!(store.wait_projected(Duration::from_secs(10)).await);
        (dir, store, writer)
    }

    /// Records a request to erase `subject` and takes it, as the eraser does.
    async fn requested(store: &Store, subject: &str) -> Pending {
        let row = erasure_requests::request(store, subject, 1).await.unwrap();
        let taken = erasure_requests::take_next(store, 2).await.unwrap();
        assert_eq!(taken.as_ref().map(|p| p.id), Some(row.id));
        taken.unwrap()
    }

    async fn count(store: &Store, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(store.read_pool())
            .await
            .expect("count")
    }

    #[tokio::test]
    async fn the_log_is_searched_and_cleared_while_the_projection_holds_the_leads_file() {
        let (_dir, store, writer) = one_lead_projected().await;
        assert_eq!(count(&store, "SELECT COUNT(*) FROM leads").await, 1);

        // A projection round in progress: it holds the turn at the leads file's write lock.
        let request = requested(&store, "4915112345678").await;
        let round = store.turns().take().await;
        let erasure = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .erase_contact(&request, Duration::from_secs(5), &CancellationToken::new())
                    .await
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.log_entries().await.unwrap() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the erasure waited for the round before it searched the log"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!erasure.is_finished(), "its leads wait for the round's end");
        assert_eq!(count(&store, "SELECT COUNT(*) FROM leads").await, 1);

        drop(round);
        let erased = erasure.await.unwrap().expect("erased");
        assert_eq!(
            erased,
            Erased {
                leads: 1,
                raw_deliveries: 1,
                unreadable_raw_deliveries: 0
            }
        );
        assert_eq!(count(&store, "SELECT COUNT(*) FROM leads").await, 0);
        writer.shutdown().await;
    }

    #[tokio::test]
    async fn only_leads_built_from_the_searched_part_of_the_log_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = crate::store::test_store(dir.path()).await;
        deliver(&store, "1").await;
        deliver(&store, "2").await;
        assert!(store.wait_projected(Duration::from_secs(10)).await);
        let event_ids: Vec<i64> = sqlx::query_scalar("SELECT event_id FROM leads ORDER BY id")
            .fetch_all(store.read_pool())
            .await
            .unwrap();
        assert_eq!(event_ids.len(), 2, "one lead each, same person");

        // As if the second delivery came in after the erasure had searched the log up to the
        // first: its lead stays, as its raw copy does.
        let (path, upto) = (store.path.clone(), event_ids[0]);
        let turn = store.turns().take().await;
        let removed = super::super::blocking(move || {
            let _turn = turn;
            let mut conn = open_connection(&path, crate::config::Durability::Full)?;
            let done = Done {
                request: 0,
                raw: RawErased {
                    removed: 0,
                    unreadable: 0,
                },
                now_ms: 3,
            };
            erase_leads(&mut conn, "4915112345678", upto, &done)
        })
        .await
        .unwrap();
        assert_eq!(removed, 1);
        let left: Vec<i64> = sqlx::query_scalar("SELECT event_id FROM leads")
            .fetch_all(store.read_pool())
            .await
            .unwrap();
        assert_eq!(left, vec![event_ids[1]]);
        writer.shutdown().await;
    }

    #[tokio::test]
    async fn a_request_is_finished_with_its_counts_and_forgets_whom_it_erased() {
        let (_dir, store, writer) = one_lead_projected().await;
        let request = requested(&store, "4915112345678").await;
        let stored = |sql: &'static str| {
            let store = store.clone();
            async move {
                sqlx::query_scalar::<_, Option<String>>(sql)
                    .fetch_one(store.read_pool())
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            stored("SELECT subject FROM erasures").await.as_deref(),
            Some("4915112345678"),
            "kept while pending, so that a restart resumes it"
        );
        store
            .erase_contact(&request, Duration::from_secs(5), &CancellationToken::new())
            .await
            .expect("erased");
        let row = erasure_requests::by_id(&store, request.id)
            .await
            .unwrap()
            .unwrap();
        assert!(row.finished_at.is_some());
        assert_eq!(
            (row.attempts, row.leads, row.raw_deliveries),
            (1, 1, 1),
            "{row:?}"
        );
        assert_eq!(stored("SELECT subject FROM erasures").await, None);
        assert_eq!(
            erasure_requests::take_next(&store, 4).await.unwrap(),
            None,
            "nothing left to do"
        );
        writer.shutdown().await;
    }

    #[tokio::test]
    async fn a_stopped_search_removes_nothing_and_leaves_the_request_pending() {
        let (_dir, store, writer) = one_lead_projected().await;
        let request = requested(&store, "4915112345678").await;
        let stop = CancellationToken::new();
        stop.cancel();
        let err = store
            .erase_contact(&request, Duration::from_secs(5), &stop)
            .await
            .expect_err("stopped");
        assert!(matches!(err, StoreError::Interrupted), "{err}");
        assert_eq!(store.log_entries().await.unwrap(), 1);
        assert_eq!(count(&store, "SELECT COUNT(*) FROM leads").await, 1);
        let row = erasure_requests::by_id(&store, request.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.finished_at, None);
        let resumed = erasure_requests::take_next(&store, 5).await.unwrap();
        assert_eq!(resumed.map(|p| p.id), Some(request.id), "taken again");
        writer.shutdown().await;
    }

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
