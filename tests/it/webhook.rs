//! `GET` and `POST /webhook`: the challenge, signatures, parsing and exactly-once storage.

use ctwa_leads::webhook::verify::{sign, SIGNATURE_HEADER};
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn challenge_with_the_right_token_is_echoed_as_text() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url(&format!(
            "/webhook?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(res.text().await.unwrap(), "1158201444");
}

#[tokio::test]
async fn challenge_with_a_wrong_token_or_mode_is_refused_without_echo() {
    let app = spawn_app().await;
    for query in [
        "hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=SECRETCHALLENGE",
        &format!(
            "hub.mode=unsubscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=SECRETCHALLENGE"
        ),
        &format!(
            "hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}x&hub.challenge=SECRETCHALLENGE"
        ),
    ] {
        let res = app
            .client
            .get(app.url(&format!("/webhook?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{query}");
        let body = res.text().await.unwrap();
        assert!(!body.contains("SECRETCHALLENGE"), "{body}");
        assert!(!body.contains(VERIFY_TOKEN), "{body}");
    }
    for query in [
        "",
        "hub.mode=subscribe&hub.challenge=1",
        &format!("hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}"),
    ] {
        let res = app
            .client
            .get(app.url(&format!("/webhook?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{query}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request");
    }
}

#[tokio::test]
async fn valid_signature_stores_the_lead_before_answering() {
    let app = spawn_app().await;
    let res = app.deliver(&one_lead("wamid.valid")).await;
    assert_eq!(res.status(), 200);
    let ack: Value = res.json().await.unwrap();
    assert_eq!(ack["leads"], 1);
    // No waiting: the 200 means it is committed.
    let lead = app
        .lead("wamid.valid")
        .await
        .expect("stored before the 200");
    assert_eq!(lead.source_id.as_deref(), Some("AD1"));
    assert_eq!(lead.ctwa_clid.as_deref(), Some("clid-wamid.valid"));
    assert_eq!(lead.ref_.as_deref(), Some("spring-campaign"));
    assert_eq!(lead.profile_name.as_deref(), Some("Ana"));
    assert_eq!(lead.timestamp, Some(1_732_262_400));
    assert_eq!(app.event_count().await, 1);
}

#[tokio::test]
async fn forged_missing_sha1_and_malformed_signatures_are_rejected_and_nothing_is_stored() {
    let app = spawn_app().await;
    let body = one_lead("wamid.forged");
    let sha1_only = app
        .client
        .post(app.url("/webhook"))
        .header(
            "x-hub-signature",
            "sha1=0123456789abcdef0123456789abcdef01234567",
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(sha1_only.status(), 401);
    let cases: Vec<Option<String>> = vec![
        None,
        Some(sign("not-the-secret", &body)),
        Some("sha256=".into()),
        Some("sha256=xyz".into()),
        Some(sign(APP_SECRET, &body).replace("sha256=", "sha1=")),
        Some(format!("{}ff", sign(APP_SECRET, &body))),
        Some(sign(APP_SECRET, &body)[..40].to_string()),
    ];
    for sig in cases {
        let res = app.deliver_signed(&body, sig.as_deref()).await;
        assert_eq!(res.status(), 401, "{sig:?}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["type"], "invalid_signature");
        let text = err.to_string();
        assert!(
            !text.contains(&sign(APP_SECRET, &body)[7..]),
            "the expected tag leaked"
        );
    }
    assert_eq!(app.lead_count().await, 0);
    assert_eq!(app.event_count().await, 0);
}

#[tokio::test]
async fn duplicate_signature_headers_are_rejected() {
    let app = spawn_app().await;
    let body = one_lead("wamid.dupheader");
    let sig = sign(APP_SECRET, &body);
    let res = app
        .client
        .post(app.url("/webhook"))
        .header("x-hub-signature-256", &sig)
        .header("x-hub-signature-256", &sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(app.event_count().await, 0);
}

#[tokio::test]
async fn body_tampered_after_signing_is_rejected() {
    let app = spawn_app().await;
    let body = one_lead("wamid.tamper");
    let sig = sign(APP_SECRET, &body);
    let tampered = String::from_utf8(body)
        .unwrap()
        .replace("AD1", "AD2")
        .into_bytes();
    let res = app.deliver_signed(&tampered, Some(&sig)).await;
    assert_eq!(res.status(), 401);
    assert_eq!(app.lead_count().await, 0);
}

#[tokio::test]
async fn meta_escaped_bytes_verify_and_are_stored_decoded() {
    let app = spawn_app().await;
    let mut message = referral_message("wamid.escape", "4915100000002", "AD9");
    message["referral"]["headline"] = json!("Café 🎉 deals");
    let body = delivery(value(
        "PN1",
        json!([contact("4915100000002", "José 😀")]),
        json!([message]),
    ));
    let text = std::str::from_utf8(&body).unwrap();
    assert!(
        text.contains(r"\u00e9")
            && text.contains(r"\ud83d\ude00")
            && text.contains(r"https:\/\/fb.me")
    );
    let res = app.deliver(&body).await;
    assert_eq!(res.status(), 200);
    let lead = app.lead("wamid.escape").await.unwrap();
    assert_eq!(lead.profile_name.as_deref(), Some("José 😀"));
    assert_eq!(lead.headline.as_deref(), Some("Café 🎉 deals"));
    assert_eq!(lead.source_url.as_deref(), Some("https://fb.me/2ZulEu42P"));
}

#[tokio::test]
async fn a_rotated_second_secret_is_accepted() {
    let app = spawn_app().await;
    let body = one_lead("wamid.rotated");
    let res = app
        .deliver_signed(&body, Some(&sign(ROTATED_SECRET, &body)))
        .await;
    assert_eq!(res.status(), 200);
    assert!(app.lead("wamid.rotated").await.is_some());
}

#[tokio::test]
async fn redelivery_and_in_batch_duplicates_make_one_lead() {
    let app = spawn_app().await;
    let body = one_lead("wamid.dup");
    for _ in 0..3 {
        assert_eq!(app.deliver(&body).await.status(), 200);
    }
    let msg = referral_message("wamid.dup2", "4915100000001", "AD1");
    let twice = delivery(value(
        "PN1",
        json!([contact("4915100000001", "Ana")]),
        json!([msg, msg]),
    ));
    assert_eq!(app.deliver(&twice).await.status(), 200);
    assert_eq!(app.lead_count().await, 2);
    // Every delivery is kept raw, duplicates included.
    assert_eq!(app.event_count().await, 4);
}

#[tokio::test]
async fn racing_deliveries_of_one_message_make_one_lead() {
    let app = spawn_app().await;
    let body = one_lead("wamid.race");
    let sends = (0..20).map(|_| app.deliver(&body));
    for res in futures_util::future::join_all(sends).await {
        assert_eq!(res.status(), 200);
    }
    assert_eq!(app.lead_count().await, 1);
}

#[tokio::test]
async fn every_entry_change_and_message_of_a_batch_becomes_a_lead_with_its_own_context() {
    let app = spawn_app().await;
    let body = delivery_of(vec![
        (
            "WABA_A",
            vec![
                (
                    "messages",
                    value(
                        "PN_A1",
                        json!([contact("111", "Alice"), contact("222", "Bob")]),
                        json!([
                            referral_message("wamid.a1", "111", "AD_A"),
                            plain_message("wamid.a1plain", "111"),
                            referral_message("wamid.a2", "222", "AD_A")
                        ]),
                    ),
                ),
                (
                    "messages",
                    value(
                        "PN_A2",
                        json!([contact("333", "Carol")]),
                        json!([referral_message("wamid.a3", "333", "AD_B")]),
                    ),
                ),
            ],
        ),
        (
            "WABA_B",
            vec![(
                "messages",
                value(
                    "PN_B1",
                    json!([contact("444", "Dan")]),
                    json!([referral_message("wamid.b1", "444", "AD_C")]),
                ),
            )],
        ),
    ]);
    let res = app.deliver(&body).await;
    assert_eq!(res.status(), 200);
    let expect = [
        ("wamid.a1", "WABA_A", "PN_A1", "Alice", "111"),
        ("wamid.a2", "WABA_A", "PN_A1", "Bob", "222"),
        ("wamid.a3", "WABA_A", "PN_A2", "Carol", "333"),
        ("wamid.b1", "WABA_B", "PN_B1", "Dan", "444"),
    ];
    for (wamid, waba, pn, name, wa_id) in expect {
        let lead = app
            .lead(wamid)
            .await
            .unwrap_or_else(|| panic!("{wamid} missing"));
        assert_eq!(lead.waba_id.as_deref(), Some(waba), "{wamid}");
        assert_eq!(lead.phone_number_id.as_deref(), Some(pn), "{wamid}");
        assert_eq!(
            lead.display_phone_number,
            Some(format!("1555{pn}")),
            "{wamid}"
        );
        assert_eq!(lead.profile_name.as_deref(), Some(name), "{wamid}");
        assert_eq!(lead.wa_id.as_deref(), Some(wa_id), "{wamid}");
    }
    assert_eq!(app.lead_count().await, 4, "the plain message is not a lead");
}

#[tokio::test]
async fn referral_on_any_message_type_is_a_lead() {
    let app = spawn_app().await;
    let image = json!({"from": "555", "id": "wamid.img", "timestamp": "1", "type": "image",
        "image": {"id": "MEDIA", "mime_type": "image/jpeg"}, "referral": {"source_id": "AD_IMG", "ctwa_clid": "c1"}});
    let welcome = json!({"from": "555", "id": "wamid.welcome", "timestamp": "1", "type": "request_welcome",
        "referral": {"source_id": "AD_W", "welcome_message": {"text": "Hello there"}}});
    let body = delivery(value(
        "PN1",
        json!([contact("555", "Eve")]),
        json!([image, welcome]),
    ));
    assert_eq!(app.deliver(&body).await.status(), 200);
    let img = app.lead("wamid.img").await.unwrap();
    assert_eq!(img.message_type.as_deref(), Some("image"));
    assert_eq!(img.text, None);
    assert_eq!(img.headline, None, "absent fields stay null");
    let w = app.lead("wamid.welcome").await.unwrap();
    assert_eq!(w.message_type.as_deref(), Some("request_welcome"));
    assert_eq!(w.welcome_message.as_deref(), Some("Hello there"));
}

#[tokio::test]
async fn a_bsuid_only_message_is_a_lead() {
    let app = spawn_app().await;
    let msg = json!({"from_user_id": "US.13491208655302741918", "id": "wamid.bsuid", "timestamp": "1732262400",
        "type": "text", "text": {"body": "hi"}, "referral": {"source_id": "AD_BS", "ctwa_clid": "clid-bs"}});
    let contacts = json!([{"profile": {"name": "Zoë"}, "user_id": "US.13491208655302741918"}]);
    let res = app
        .deliver(&delivery(value("PN1", contacts, json!([msg]))))
        .await;
    assert_eq!(res.status(), 200);
    let lead = app
        .lead("wamid.bsuid")
        .await
        .expect("a BSUID-only lead is kept");
    assert_eq!(lead.user_id.as_deref(), Some("US.13491208655302741918"));
    assert_eq!(lead.wa_id, None);
    assert_eq!(lead.profile_name.as_deref(), Some("Zoë"));
}

#[tokio::test]
async fn deliveries_without_leads_are_acknowledged_and_kept_raw() {
    let app = spawn_app().await;
    let statuses = delivery(json!({"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "1555", "phone_number_id": "PN1"},
        "statuses": [{"id": "wamid.s", "status": "delivered", "timestamp": "1", "recipient_id": "111"}]}));
    let unknown_object =
        meta_json_bytes(json!({"object": "instagram", "entry": [{"id": "1", "changes": []}]}));
    let unknown_field = delivery_of(vec![(
        WABA_ID,
        vec![("account_review_update", json!({"decision": "APPROVED"}))],
    )]);
    let template_status = delivery_of(vec![(
        WABA_ID,
        vec![(
            "message_template_status_update",
            json!({"event": "APPROVED", "message_template_id": 12345678, "message_template_name": "x", "message_template_language": "en_US", "reason": null}),
        )],
    )]);
    let unsupported = delivery(value(
        "PN1",
        json!([contact("111", "A")]),
        json!([{"from": "111", "id": "wamid.unsup",
        "timestamp": "1", "type": "unsupported", "errors": [{"code": 131051, "title": "Message type unknown"}]}]),
    ));
    for body in [
        statuses,
        unknown_object,
        unknown_field,
        template_status,
        unsupported,
    ] {
        let res = app.deliver(&body).await;
        assert_eq!(res.status(), 200, "{}", String::from_utf8_lossy(&body));
        let ack: Value = res.json().await.unwrap();
        assert_eq!(ack["leads"], 0);
        assert_eq!(ack["parse"], "parsed");
    }
    assert_eq!(app.lead_count().await, 0);
    // Clean status-only deliveries are counted, not kept (retention.keep_raw = "no_statuses").
    assert_eq!(app.event_count().await, 4);
}

#[tokio::test]
async fn status_only_bodies_are_kept_only_when_asked_and_odd_ones_always() {
    let statuses =
        delivery(json!({"statuses": [{"id": "wamid.s", "status": "read", "recipient_id": "111"}]}));
    let odd =
        delivery(json!({"statuses": [{"id": "wamid.s2", "status": "read"}], "metadata": "odd"}));
    let app = spawn_app().await;
    assert_eq!(app.deliver(&statuses).await.status(), 200);
    assert_eq!(
        app.event_count().await,
        0,
        "a clean status-only body is not kept"
    );
    let res = app.deliver(&odd).await;
    assert_eq!(res.json::<Value>().await.unwrap()["parse"], "partial");
    assert_eq!(app.event_count().await, 1, "a partial one always is");
    let all = spawn_with(|s| s.retention.keep_raw = ctwa_leads::config::KeepRaw::All).await;
    assert_eq!(all.deliver(&statuses).await.status(), 200);
    assert_eq!(
        all.event_count().await,
        1,
        "keep_raw = all keeps everything"
    );
}

fn meta_json_bytes(v: Value) -> Vec<u8> {
    ctwa_leads::simulate::meta_json(&v)
}

#[tokio::test]
async fn verified_non_json_is_stored_raw_flagged_and_acknowledged() {
    let app = spawn_app().await;
    let body = b"this is {not json".to_vec();
    let res = app.deliver(&body).await;
    assert_eq!(res.status(), 200);
    let ack: Value = res.json().await.unwrap();
    assert_eq!(ack["parse"], "invalid");
    let events = app.store.raw_deliveries().await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1, "invalid");
    assert_eq!(events[0].3, body);
}

#[tokio::test]
async fn an_oversized_body_gets_413_and_nothing_is_stored() {
    let app = spawn_with(|s| s.server.max_body_bytes = 1024).await;
    let mut message = referral_message("wamid.big", "111", "AD");
    message["text"]["body"] = json!("x".repeat(2000));
    let body = delivery(value("PN1", json!([]), json!([message])));
    let res = app.deliver(&body).await;
    assert_eq!(res.status(), 413);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["code"], 413);
    assert_eq!(app.event_count().await, 0);
}

#[tokio::test]
async fn a_restart_keeps_the_leads() {
    let app = spawn_app().await;
    assert_eq!(app.deliver(&one_lead("wamid.persist")).await.status(), 200);
    let app = app.restart().await;
    assert!(app.lead("wamid.persist").await.is_some());
    // Event ids continue after the restart instead of colliding.
    assert_eq!(app.deliver(&one_lead("wamid.after")).await.status(), 200);
    assert_eq!(app.lead_count().await, 2);
    assert_eq!(app.event_count().await, 2);
    // A re-delivery of a lead stored before the restart is still a duplicate: what the
    // projector knows of the stored wamids is read back from the file.
    assert_eq!(app.deliver(&one_lead("wamid.persist")).await.status(), 200);
    assert_eq!(app.lead_count().await, 2);
}

#[tokio::test]
async fn a_lead_another_writer_stored_is_not_stored_twice() {
    let app = spawn_app().await;
    assert_eq!(app.deliver(&one_lead("wamid.first")).await.status(), 200);
    // As an offline `reextract` would, while the server runs: a lead the projector never saw.
    let pool = app.outside_pool().await;
    sqlx::query(
        "INSERT INTO leads (wamid, event_id, received_at) \
         SELECT 'wamid.behind', event_id, received_at FROM leads",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(app.lead_count().await, 2);
    assert_eq!(app.deliver(&one_lead("wamid.behind")).await.status(), 200);
    assert_eq!(app.lead_count().await, 2, "the re-delivery is a duplicate");
    assert_eq!(app.deliver(&one_lead("wamid.new")).await.status(), 200);
    assert_eq!(app.lead_count().await, 3);
}

#[tokio::test]
async fn two_hundred_concurrent_deliveries_are_all_stored() {
    let app = spawn_app().await;
    let bodies: Vec<Vec<u8>> = (0..200).map(|i| one_lead(&format!("wamid.c{i}"))).collect();
    let results = futures_util::future::join_all(bodies.iter().map(|b| app.deliver(b))).await;
    assert!(results.iter().all(|r| r.status() == 200));
    assert_eq!(app.lead_count().await, 200);
    assert_eq!(app.event_count().await, 200);
}

#[tokio::test]
async fn a_failed_commit_answers_503_and_the_next_one_recovers() {
    let app = spawn_app().await;
    // Break the log's schema behind the writer's back: its inserts now fail.
    let pool = app.outside_log().await;
    sqlx::query("ALTER TABLE log RENAME TO log_away")
        .execute(&pool)
        .await
        .unwrap();
    let res = app.deliver(&one_lead("wamid.fail")).await;
    assert_eq!(res.status(), 503);
    assert_eq!(
        res.headers()["retry-after"],
        "1",
        "a 503 says when to retry"
    );
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["type"], "unavailable");
    assert_eq!(
        app.client
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    sqlx::query("ALTER TABLE log_away RENAME TO log")
        .execute(&pool)
        .await
        .unwrap();
    // Nothing of the refused delivery was half-stored.
    assert_eq!(app.event_count().await, 0);
    // Meta's retry succeeds without a restart.
    assert_eq!(app.deliver(&one_lead("wamid.fail")).await.status(), 200);
    assert!(app.lead("wamid.fail").await.is_some());
    assert_eq!(
        app.client
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn an_event_id_taken_behind_the_writers_back_fails_one_batch_and_nothing_else() {
    let app = spawn_app().await;
    assert_eq!(app.deliver(&one_lead("wamid.first")).await.status(), 200);
    // Another process (say, a manual repair) writes the log id the writer would use next.
    let pool = app.outside_log().await;
    sqlx::query(
        "INSERT INTO log (id, received_at, status, kind, lead_count, codec, body) \
         SELECT MAX(id) + 1, 0, 0, 3, 0, 0, x'7b7d' FROM log",
    )
    .execute(&pool)
    .await
    .unwrap();
    // That batch is refused whole: no 200 for a delivery whose event did not go in.
    assert_eq!(app.deliver(&one_lead("wamid.second")).await.status(), 503);
    assert!(app.lead("wamid.second").await.is_none());
    // The writer re-reads the next id, and Meta's retry is stored.
    assert_eq!(app.deliver(&one_lead("wamid.second")).await.status(), 200);
    assert!(app.lead("wamid.second").await.is_some());
    assert_eq!(
        app.event_count().await,
        3,
        "the first delivery, the foreign row, the retry"
    );
}

#[tokio::test]
async fn a_failing_projection_keeps_acknowledging_and_catches_up_exactly_once() {
    let app = spawn_app().await;
    assert_eq!(app.deliver(&one_lead("wamid.before")).await.status(), 200);
    // Break the read side: the projector's inserts fail, the log does not.
    let pool = app.break_leads_table().await;
    for i in 0..5 {
        let res = app
            .deliver_no_wait(&one_lead(&format!("wamid.behind{i}")))
            .await;
        assert_eq!(
            res.status(),
            200,
            "the acknowledgement does not depend on the leads"
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let ready: Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["projection"]["entries"], 5, "{ready}");
    assert_eq!(ready["projection"]["failing"], true, "{ready}");
    mend_leads_table(&pool).await;
    app.settle().await;
    for i in 0..5 {
        assert!(app.lead(&format!("wamid.behind{i}")).await.is_some());
    }
    assert_eq!(app.lead_count().await, 6, "every lead exactly once");
    let ready: Value = app.get_json("/readyz").await;
    assert_eq!(ready["projection"]["entries"], 0);
}

#[tokio::test]
async fn health_probes_answer() {
    let app = spawn_app().await;
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.client
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert!(res.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn a_flood_past_the_limits_is_shed_with_503_and_nothing_acknowledged_is_lost() {
    let limits: [fn(&mut ctwa_leads::Settings); 2] = [
        |s| s.ingest.max_in_flight = 3,
        |s| {
            s.ingest.queue_capacity = 1;
            s.ingest.max_batch = 1;
        },
    ];
    for limit in limits {
        let app = spawn_with(limit).await;
        let bodies: Vec<Vec<u8>> = (0..300)
            .map(|i| one_lead(&format!("wamid.flood{i}")))
            .collect();
        // Another connection holds the log's write lock while the flood arrives, so the
        // writer is stalled (in its busy wait, well within its timeout) however fast this
        // machine's disk is: the limits, not the timing, decide what is shed.
        let lock = rusqlite::Connection::open(app.store.log_path()).unwrap();
        lock.execute_batch("BEGIN IMMEDIATE").unwrap();
        let release = async {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            lock.execute_batch("COMMIT").unwrap();
        };
        let flood = futures_util::future::join_all(bodies.iter().map(|b| app.deliver(b)));
        let (results, ()) = tokio::join!(flood, release);
        let mut acked = Vec::new();
        let mut shed = 0;
        for (i, res) in results.into_iter().enumerate() {
            match res.status().as_u16() {
                200 => acked.push(format!("wamid.flood{i}")),
                503 => {
                    let err: Value = res.json().await.unwrap();
                    assert_eq!(err["error"]["code"], 503);
                    shed += 1;
                }
                other => panic!("unexpected status {other}"),
            }
        }
        assert!(
            shed > 0,
            "300 concurrent deliveries against a tiny limit shed none"
        );
        for wamid in &acked {
            assert!(
                app.lead(wamid).await.is_some(),
                "{wamid} was acknowledged but is not stored"
            );
        }
        assert_eq!(
            app.lead_count().await as usize,
            acked.len(),
            "a refused delivery was stored"
        );
        // The flood is over: the next delivery goes through.
        assert_eq!(
            app.deliver(&one_lead("wamid.after-flood")).await.status(),
            200
        );
    }
}

#[tokio::test]
async fn the_suite_log_capture_sees_the_service_so_its_secrecy_check_is_real() {
    let app = spawn_app().await;
    let challenge =
        format!("/webhook?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=7");
    assert_eq!(
        app.client
            .get(app.url(&challenge))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(app.deliver(&one_lead("wamid.logged")).await.status(), 200);
    if let Some(logs) = captured_logs() {
        assert!(
            logs.contains("path=/webhook"),
            "the capture missed the request log"
        );
        assert!(logs.contains("finished processing request"));
        assert!(
            logs.contains("INFO request{method=GET path=/webhook"),
            "the challenge's own line"
        );
    }
    // TestApp's drop then checks NEVER_LOGGED against everything captured.
}

#[tokio::test]
async fn health_probes_are_logged_at_debug_not_info() {
    let app = spawn_app().await;
    for probe in ["/healthz", "/readyz"] {
        let res = app
            .client
            .get(app.url(probe))
            .header("x-request-id", format!("probe-level-check{}", &probe[1..]))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let Some(logs) = captured_logs() else { return };
    for probe in ["healthz", "readyz"] {
        let lines: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(&format!("probe-level-check{probe}")))
            .collect();
        assert!(!lines.is_empty(), "the probe was logged at all");
        for line in lines {
            assert!(line.contains("DEBUG"), "{line}");
            assert!(!line.contains(" INFO "), "{line}");
        }
    }
}

#[tokio::test]
async fn acknowledged_deliveries_are_logged_at_debug_refused_ones_at_info() {
    let app = spawn_app().await;
    let body = one_lead("wamid.line-level");
    for (id, signature, status) in [
        ("delivery-level-ok", sign(APP_SECRET, &body), 200),
        ("delivery-level-refused", sign("not-the-secret", &body), 401),
    ] {
        let res = app
            .client
            .post(app.url("/webhook"))
            .header("content-type", "application/json")
            .header("x-request-id", id)
            .header(SIGNATURE_HEADER, signature)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status);
    }
    let Some(logs) = captured_logs() else { return };
    let finished = |id: &str| -> Vec<String> {
        logs.lines()
            .filter(|l| l.contains(id) && l.contains("finished processing request"))
            .map(str::to_owned)
            .collect()
    };
    let ok = finished("request_id=delivery-level-ok}");
    assert_eq!(ok.len(), 1, "{ok:?}");
    assert!(ok[0].contains("DEBUG"), "{}", ok[0]);
    let refused = finished("request_id=delivery-level-refused}");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains(" INFO "), "{}", refused[0]);
}

#[tokio::test]
async fn past_the_projection_lag_bound_deliveries_get_a_fast_503() {
    let app = spawn_with(|s| s.ingest.max_projection_lag = 2).await;
    let pool = app.break_leads_table().await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        let res = app
            .deliver_no_wait(&one_lead(&format!("wamid.lag{i}")))
            .await;
        statuses.push(res.status().as_u16());
        if res.status() == 503 {
            assert_eq!(res.headers()["retry-after"], "1");
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["error"]["type"], "overloaded");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 503, 503],
        "bounded at 2 entries behind"
    );
    mend_leads_table(&pool).await;
    app.settle().await;
    assert_eq!(
        app.deliver(&one_lead("wamid.lag-after")).await.status(),
        200
    );
    assert_eq!(
        app.lead_count().await,
        4,
        "the three acknowledged and the one after"
    );
}

#[tokio::test]
async fn while_the_projection_lags_new_deliveries_are_held_back_in_proportion() {
    // A projector that waits 3 s for more entries before a round: the lag passes the bound
    // by itself, which is what holding back reacts to.
    let app = spawn_with(|s| {
        s.ingest.projection_pace_ms = 3000;
        s.ingest.hold_back_lag_ms = 200;
        s.ingest.max_hold_back_ms = 10_000;
    })
    .await;
    assert_eq!(
        app.deliver_no_wait(&one_lead("wamid.hold-a"))
            .await
            .status(),
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    assert_eq!(
        app.lead_count().await,
        0,
        "the first still waits for its round"
    );
    // About 2 s behind, 1.8 s over the bound: held back about 180 ms.
    let started = std::time::Instant::now();
    assert_eq!(
        app.deliver_no_wait(&one_lead("wamid.hold-b"))
            .await
            .status(),
        200
    );
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_millis(150), "{took:?}");
    app.settle().await;
    assert_eq!(app.lead_count().await, 2, "held back, then stored as usual");
}
