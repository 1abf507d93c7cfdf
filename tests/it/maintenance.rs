//! Raw events after the fact: re-extraction rebuilds leads idempotently, and retention prunes
//! old raw events without touching leads.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn reextract_recovers_leads_from_deliveries_that_failed_to_parse_and_is_idempotent() {
    let app = spawn_app().await;
    let db = app.outside_pool().await;
    // A delivery stored while extraction was broken: kept raw, flagged, no lead.
    let body = delivery(value(
        "PN1",
        json!([contact("4911", "Ana")]),
        json!([
            referral_message("wamid.lost1", "4911", "AD1"),
            referral_message("wamid.lost2", "4911", "AD2")
        ]),
    ));
    sqlx::query("INSERT INTO events (id, received_at, status, lead_count, body) VALUES (1000000, 1732262400000, 'invalid', 0, ?)")
        .bind(&body)
        .execute(&db)
        .await
        .unwrap();
    // One lead of it was stored some other way already: no duplicate may appear.
    assert_eq!(app.deliver(&one_lead("wamid.lost1")).await.status(), 200);

    let settings = settings(&db_path(&app.dir), "http://unused");
    let report = ctwa_leads::store::maintenance::reextract(&settings.database, None)
        .await
        .unwrap();
    assert_eq!(report.events, 2);
    assert_eq!(report.new_leads, 1, "only wamid.lost2 was missing");
    assert_eq!(report.restatused, 1);
    let lead = app.lead("wamid.lost2").await.expect("recovered");
    assert_eq!(lead.source_id.as_deref(), Some("AD2"));
    assert_eq!(
        lead.received_at, 1_732_262_400_000,
        "the original receipt time is kept"
    );
    let status: String = sqlx::query_scalar("SELECT status FROM events WHERE id = 1000000")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(status, "parsed");

    let again = ctwa_leads::store::maintenance::reextract(&settings.database, None)
        .await
        .unwrap();
    assert_eq!(again.new_leads, 0);
    assert_eq!(again.restatused, 0);
    assert_eq!(app.lead_count().await, 2);
    // --since skips older deliveries.
    let since =
        ctwa_leads::store::maintenance::reextract(&settings.database, Some(1_800_000_000_000))
            .await
            .unwrap();
    assert_eq!(since.events, 0);
    // Ingest still works after rows it did not write appeared in its table.
    assert_eq!(app.deliver(&one_lead("wamid.after")).await.status(), 200);
    assert_eq!(app.deliver(&one_lead("wamid.after2")).await.status(), 200);
}

#[tokio::test]
async fn retention_prunes_old_raw_events_in_the_background_and_never_leads() {
    let app = spawn_with(|s| {
        s.retention.raw_events_days = 30;
        s.retention.interval_secs = 1;
    })
    .await;
    let db = app.outside_pool().await;
    assert_eq!(app.deliver(&one_lead("wamid.recent")).await.status(), 200);
    let old_ms = chrono::Utc::now().timestamp_millis() - 40 * 86_400_000;
    for i in 0..1200_i64 {
        sqlx::query("INSERT INTO events (id, received_at, status, lead_count, body) VALUES (?, ?, 'parsed', 1, x'7b7d')")
            .bind(2_000_000 + i)
            .bind(old_ms)
            .execute(&db)
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO leads (wamid, event_id, received_at) VALUES ('wamid.old', 2000000, ?)",
    )
    .bind(old_ms)
    .execute(&db)
    .await
    .unwrap();
    let mut left = i64::MAX;
    for _ in 0..100 {
        left = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE received_at < ?")
            .bind(old_ms + 1)
            .fetch_one(&db)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "old raw events were not pruned");
    assert!(app.lead("wamid.old").await.is_some(), "a lead was pruned");
    assert!(app.lead("wamid.recent").await.is_some());
    assert_eq!(app.event_count().await, 1, "the recent raw event is kept");
    // Ingest went on meanwhile.
    assert_eq!(app.deliver(&one_lead("wamid.during")).await.status(), 200);
}
