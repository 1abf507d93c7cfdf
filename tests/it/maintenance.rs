//! The delivery log after the fact: re-extraction rebuilds leads idempotently, retention prunes
//! old projected entries without touching leads, raw deliveries an earlier version kept in
//! the leads database are moved into the log once, the leads WAL is checkpointed in the
//! background, and no log or lead id is given twice after the newest were deleted.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

/// `ctwa-leads reextract` on the app's files, received at or after `since_ms` if given.
async fn reextract(
    app: &TestApp,
    since_ms: Option<i64>,
) -> ctwa_leads::store::maintenance::ReextractReport {
    let settings = settings(&db_path(&app.dir), "http://unused");
    ctwa_leads::store::maintenance::reextract(
        &settings.database,
        ctwa_leads::store::outbox::Routes::new(&settings.forwarding, false),
        since_ms,
    )
    .await
    .expect("reextract")
}

#[tokio::test]
async fn reextract_recovers_leads_from_deliveries_that_failed_to_parse_and_is_idempotent() {
    let app = spawn_app().await;
    let log = app.outside_log().await;
    // A delivery stored while extraction was broken: kept raw, flagged, no lead.
    let body = delivery(value(
        "PN1",
        json!([contact("4911", "Ana")]),
        json!([
            referral_message("wamid.lost1", "4911", "AD1"),
            referral_message("wamid.lost2", "4911", "AD2")
        ]),
    ));
    sqlx::query("INSERT INTO log (id, received_at, status, kind, lead_count, codec, body) VALUES (1000000, 1732262400000, 2, 3, 0, 0, ?)")
        .bind(&body)
        .execute(&log)
        .await
        .unwrap();
    // One lead of it was stored some other way already: no duplicate may appear.
    assert_eq!(app.deliver(&one_lead("wamid.lost1")).await.status(), 200);

    let report = reextract(&app, None).await;
    assert_eq!(report.events, 2);
    assert_eq!(report.new_leads, 1, "only wamid.lost2 was missing");
    assert_eq!(report.restatused, 1);
    let lead = app.lead("wamid.lost2").await.expect("recovered");
    assert_eq!(lead.source_id.as_deref(), Some("AD2"));
    assert_eq!(
        lead.received_at, 1_732_262_400_000,
        "the original receipt time is kept"
    );
    let status: i64 = sqlx::query_scalar("SELECT status FROM log WHERE id = 1000000")
        .fetch_one(&log)
        .await
        .unwrap();
    assert_eq!(status, 0, "re-flagged parsed");

    let again = reextract(&app, None).await;
    assert_eq!(again.new_leads, 0);
    assert_eq!(again.restatused, 0);
    assert_eq!(app.lead_count().await, 2);
    // --since skips older deliveries.
    let since = reextract(&app, Some(1_800_000_000_000)).await;
    assert_eq!(since.events, 0);
    // Ingest still works after rows it did not write appeared in its table.
    assert_eq!(app.deliver(&one_lead("wamid.after")).await.status(), 200);
    assert_eq!(app.deliver(&one_lead("wamid.after2")).await.status(), 200);
}

#[tokio::test]
async fn retention_prunes_old_projected_log_entries_and_never_leads() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let log_path = settings(&db_path(&dir), "http://unused")
        .database
        .log_path()
        .unwrap();
    std::fs::create_dir_all(log_path.parent().unwrap()).unwrap();
    ctwa_leads::store::log::create(&log_path).unwrap();
    let old_ms = chrono::Utc::now().timestamp_millis() - 40 * 86_400_000;
    {
        let log = sqlx::SqlitePool::connect(&format!("sqlite://{}", log_path.display()))
            .await
            .unwrap();
        for i in 1..=1200_i64 {
            sqlx::query("INSERT INTO log (id, received_at, status, kind, lead_count, codec, body) VALUES (?, ?, 0, 3, 0, 0, x'7b7d')")
                .bind(i)
                .bind(old_ms)
                .execute(&log)
                .await
                .unwrap();
        }
        log.close().await;
    }
    let app = spawn_in(dir, wiremock::MockServer::start().await, |s| {
        s.retention.raw_events_days = 30;
        s.retention.interval_secs = 1;
    })
    .await;
    let db = app.outside_pool().await;
    sqlx::query("INSERT INTO leads (wamid, event_id, received_at) VALUES ('wamid.old', 1, ?)")
        .bind(old_ms)
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(app.deliver(&one_lead("wamid.recent")).await.status(), 200);
    let log = app.outside_log().await;
    let mut left = i64::MAX;
    for _ in 0..100 {
        left = sqlx::query_scalar("SELECT COUNT(*) FROM log WHERE received_at < ?")
            .bind(old_ms + 1)
            .fetch_one(&log)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "old log entries were not pruned");
    assert!(app.lead("wamid.old").await.is_some(), "a lead was pruned");
    assert!(app.lead("wamid.recent").await.is_some());
    assert_eq!(app.event_count().await, 1, "the recent entry is kept");
    // Ingest went on meanwhile.
    assert_eq!(app.deliver(&one_lead("wamid.during")).await.status(), 200);
}

#[tokio::test]
async fn raw_deliveries_of_an_earlier_version_move_into_the_log_once() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let body = one_lead("wamid.legacy");
    {
        // An earlier version's database: leads and their raw deliveries in one file.
        let app = spawn_in(dir.clone(), wiremock::MockServer::start().await, |_| {}).await;
        let db = app.outside_pool().await;
        sqlx::query(
            "INSERT INTO events (id, received_at, status, lead_count, body) VALUES (7, 1732262400000, 'parsed', 1, ?)",
        )
        .bind(&body)
        .execute(&db)
        .await
        .unwrap();
        sqlx::query("INSERT INTO leads (wamid, event_id, received_at) VALUES ('wamid.legacy', 7, 1732262400000)")
            .execute(&db)
            .await
            .unwrap();
        let mut app = app;
        app.stop().await;
    }
    let app = spawn_in(dir, wiremock::MockServer::start().await, |_| {}).await;
    let raw = app.store.raw_deliveries().await.unwrap();
    assert_eq!(raw.len(), 1);
    assert_eq!(
        (raw[0].0, raw[0].1.as_str(), raw[0].3.as_slice()),
        (7, "parsed", body.as_slice())
    );
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&app.outside_pool().await)
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(app.lead_count().await, 1, "not projected a second time");
    assert_eq!(app.deliver(&one_lead("wamid.next")).await.status(), 200);
    assert_eq!(app.lead_count().await, 2);
}

#[tokio::test]
async fn projected_leads_reach_the_database_file_without_waiting_for_a_big_wal() {
    let app = spawn_app().await;
    assert_eq!(
        app.deliver(&one_lead("wamid.ckpt-probe")).await.status(),
        200
    );
    assert!(app.lead("wamid.ckpt-probe").await.is_some());
    // The projector's own autocheckpoint fires only past thousands of WAL pages; a handful of
    // leads reaches the database file itself only through the checkpoint loop.
    let file = db_path(&app.dir);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let bytes = std::fs::read(&file).unwrap();
        if bytes.windows(16).any(|w| w == b"wamid.ckpt-probe") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lead stayed in the WAL: the leads file is not checkpointed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn reextract_skips_and_counts_an_entry_it_cannot_read() {
    let app = spawn_app().await;
    for wamid in ["wamid.ur1", "wamid.ur2", "wamid.ur3"] {
        assert_eq!(app.deliver(&one_lead(wamid)).await.status(), 200);
    }
    app.settle().await;
    sqlx::query("DELETE FROM leads")
        .execute(&app.outside_pool().await)
        .await
        .unwrap();
    // The middle entry's body no longer unpacks (a damaged page, or a later version's codec).
    let log = app.outside_log().await;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM log ORDER BY id")
        .fetch_all(&log)
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);
    sqlx::query("UPDATE log SET body = x'00010203' WHERE id = ?")
        .bind(ids[1])
        .execute(&log)
        .await
        .unwrap();
    let report = reextract(&app, None).await;
    assert_eq!(
        (report.events, report.new_leads, report.unreadable),
        (2, 2, 1)
    );
    assert!(app.lead("wamid.ur1").await.is_some());
    assert!(app.lead("wamid.ur2").await.is_none());
    assert!(
        app.lead("wamid.ur3").await.is_some(),
        "the scan went on past it"
    );
}

#[tokio::test]
async fn reextract_over_pages_restores_only_the_missing_leads_and_never_duplicates() {
    let app = spawn_app().await;
    // More deliveries than one reextract page (500), one lead each.
    for i in 0..1_100 {
        let res = app
            .deliver_no_wait(&one_lead(&format!("wamid.page{i}")))
            .await;
        assert_eq!(res.status(), 200);
    }
    app.settle().await;
    let pool = app.outside_pool().await;
    // Lost from the leads, kept in the log: one in each page.
    for wamid in ["wamid.page10", "wamid.page600", "wamid.page1050"] {
        sqlx::query("DELETE FROM leads WHERE wamid = ?")
            .bind(wamid)
            .execute(&pool)
            .await
            .unwrap();
    }
    assert_eq!(app.lead_count().await, 1_097);
    let report = reextract(&app, None).await;
    assert_eq!(report.events, 1_100);
    assert_eq!(report.new_leads, 3);
    // The restored leads now stand after every other, out of log order: a second run must
    // still find them stored.
    assert_eq!(reextract(&app, None).await.new_leads, 0);
    assert_eq!(app.lead_count().await, 1_100);
    let repeated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT wamid FROM leads GROUP BY wamid HAVING count(*) > 1)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(repeated, 0);
    for wamid in ["wamid.page10", "wamid.page600", "wamid.page1050"] {
        assert!(app.lead(wamid).await.is_some(), "{wamid} restored");
    }
}

#[tokio::test]
async fn a_log_emptied_by_retention_or_erasure_still_projects_what_comes_after_a_restart() {
    let app = spawn_app().await;
    for wamid in ["wamid.before1", "wamid.before2"] {
        assert_eq!(app.deliver(&one_lead(wamid)).await.status(), 200);
    }
    assert!(app.lead("wamid.before2").await.is_some());
    // Retention, or an erasure of the newest entries, leaves the log empty: its highest id is
    // gone, while the projection's watermark stays where it was.
    let log = app.outside_log().await;
    sqlx::query("DELETE FROM log").execute(&log).await.unwrap();
    log.close().await;
    let app = app.restart().await;
    for wamid in ["wamid.after1", "wamid.after2", "wamid.after3"] {
        assert_eq!(app.deliver(&one_lead(wamid)).await.status(), 200);
    }
    for wamid in ["wamid.after1", "wamid.after2", "wamid.after3"] {
        let mut found = false;
        for _ in 0..100 {
            if app.lead(wamid).await.is_some() {
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(found, "{wamid} was acknowledged but never became a lead");
    }
    assert_eq!(app.lead_count().await, 5);
}

#[tokio::test]
async fn an_erased_lead_s_id_is_never_given_to_a_new_lead_even_after_a_restart() {
    let app = spawn_app().await;
    assert_eq!(app.deliver(&one_lead("wamid.keep")).await.status(), 200);
    let other = delivery(value(
        "PN1",
        json!([contact("4915100000002", "Bo")]),
        json!([referral_message("wamid.erase", "4915100000002", "AD1")]),
    ));
    assert_eq!(app.deliver(&other).await.status(), 200);
    let erased = app.lead("wamid.erase").await.expect("stored");
    let kept = app.lead("wamid.keep").await.expect("stored");
    assert!(erased.id > kept.id, "the lead to erase is the newest");
    let res = app.delete("/v1/contacts/4915100000002").await;
    assert_eq!(res.status(), 200);
    assert!(app.lead("wamid.erase").await.is_none());
    assert!(app.lead("wamid.keep").await.is_some());
    // The highest id is gone; SQLite alone would give it to the next lead.
    let app = app.restart().await;
    assert_eq!(app.deliver(&one_lead("wamid.next")).await.status(), 200);
    let next = app.lead("wamid.next").await.expect("stored");
    assert!(
        next.id > erased.id,
        "the new lead took id {}, the erased one had {}",
        next.id,
        erased.id
    );
}
