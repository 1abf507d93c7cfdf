//! Lead forwarding against wiremock destinations on loopback: the signed request, the retry
//! schedule (scaled to fractions of a second), Retry-After, 410, isolation between
//! destinations, filters, replay, retry, the response cap, the outbox committing with the
//! leads, and an attempt recorded after its delivery was erased and its id taken.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::helpers::*;

/// A config with one destination per `(name, url, extra lines)`, and a retry schedule.
fn forward_config(
    destinations: &[(&str, &str, &str)],
    schedule: &str,
) -> ctwa_leads::config::ForwardingSettings {
    let mut toml = format!("[forwarding]\nretry_schedule_secs = {schedule}\n");
    for (name, url, extra) in destinations {
        toml.push_str(&format!(
            "[[forward]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret = \"{FORWARD_SECRET}\"\n{extra}\n"
        ));
    }
    forwarding(&toml)
}

async fn destination() -> MockServer {
    MockServer::start().await
}

async fn answer(server: &MockServer, response: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(response)
        .mount(server)
        .await;
}

/// A destination "crm" that answers 200, and an app forwarding each new lead to it at once.
async fn app_forwarding_to_crm() -> (MockServer, TestApp) {
    let dest = destination().await;
    answer(&dest, ResponseTemplate::new(200)).await;
    let url = format!("{}/hook", dest.uri());
    let app = spawn_with(|s| s.forwarding = forward_config(&[("crm", &url, "")], "[0]")).await;
    (dest, app)
}

async fn received(server: &MockServer, at_least: usize, secs: u64) -> Vec<Request> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = server.received_requests().await.unwrap_or_default();
        if got.len() >= at_least {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {at_least} requests arrived",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header<'a>(req: &'a Request, name: &str) -> &'a str {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Verifies a Standard Webhooks signature written out from the spec, independently of the
/// service's own signing code.
fn signature_valid(req: &Request, secret: &str) -> bool {
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .expect("base64 key");
    let signed = format!(
        "{}.{}.{}",
        header(req, "webhook-id"),
        header(req, "webhook-timestamp"),
        String::from_utf8_lossy(&req.body)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
    mac.update(signed.as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    header(req, "webhook-signature")
        .split(' ')
        .any(|s| s == expected)
}

fn lead_delivery(wamid: &str, from: &str, ad: &str) -> Vec<u8> {
    delivery(value(
        "106540352242922",
        serde_json::json!([contact(from, "Ada")]),
        serde_json::json!([referral_message(wamid, from, ad)]),
    ))
}

#[tokio::test]
async fn a_new_lead_arrives_signed_with_the_lead_exactly_as_the_api_shows_it() {
    let dest = destination().await;
    answer(&dest, ResponseTemplate::new(204)).await;
    let url = format!("{}/hook", dest.uri());
    let app = spawn_with(|s| s.forwarding = forward_config(&[("crm", &url, "")], "[0, 1]")).await;
    assert_eq!(
        app.deliver(&lead_delivery("wamid.F1", "491", "ad-1"))
            .await
            .status(),
        200
    );

    let got = received(&dest, 1, 10).await;
    let req = &got[0];
    assert!(signature_valid(req, FORWARD_SECRET), "bad signature");
    assert_eq!(header(req, "content-type"), "application/json");
    let id = header(req, "webhook-id");
    assert!(id.starts_with("msg_") && id.len() > 20, "{id}");
    let ts: i64 = header(req, "webhook-timestamp")
        .parse()
        .expect("unix seconds");
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 30);
    let body: Value = serde_json::from_slice(&req.body).expect("JSON body");
    assert_eq!(body["type"], "lead.created");
    assert!(chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).is_ok());
    let lead_id = body["data"]["id"].as_i64().expect("lead id");
    let mut shown = app.get_json(&format!("/v1/leads/{lead_id}")).await;
    // The lead as the API shows it; its conversions and Meta's detected events come later,
    // and are not part of the event.
    assert_eq!(shown["conversions"], serde_json::json!([]));
    assert_eq!(shown["detected_events"], serde_json::json!([]));
    let fields = shown.as_object_mut().unwrap();
    fields.remove("conversions");
    fields.remove("detected_events");
    assert_eq!(body["data"], shown);
    assert_eq!(shown["wamid"], "wamid.F1");

    let list = app
        .wait_for_json("/v1/deliveries", 10, |v| {
            v["data"][0]["status"] == "succeeded"
        })
        .await;
    let d = &list["data"][0];
    assert_eq!(d["destination"], "crm");
    assert_eq!(d["lead_id"], lead_id);
    assert_eq!(d["webhook_id"], id);
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["last_status_code"], 204);
    assert!(d["next_attempt_at"].is_null());
    let by_lead = app
        .get_json(&format!(
            "/v1/deliveries?lead_id={lead_id}&status=succeeded&destination=crm"
        ))
        .await;
    assert_eq!(by_lead["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_rotating_secret_sends_a_signature_for_each() {
    let dest = destination().await;
    answer(&dest, ResponseTemplate::new(200)).await;
    let old = format!("whsec_{}", STANDARD.encode([7u8; 32]));
    let url = format!("{}/hook", dest.uri());
    let app = spawn_with(|s| {
        s.forwarding = forwarding(&format!(
            "[[forward]]\nname = \"crm\"\nurl = \"{url}\"\nsecret = [\"{FORWARD_SECRET}\", \"{old}\"]\n"
        ))
    })
    .await;
    app.deliver(&lead_delivery("wamid.R1", "492", "ad-1")).await;
    let got = received(&dest, 1, 10).await;
    assert_eq!(header(&got[0], "webhook-signature").split(' ').count(), 2);
    assert!(signature_valid(&got[0], FORWARD_SECRET));
    assert!(signature_valid(&got[0], &old));
}

#[tokio::test]
async fn failures_are_retried_on_the_schedule_with_the_same_id_then_fail() {
    let dest = destination().await;
    answer(
        &dest,
        ResponseTemplate::new(400).set_body_string("<html>\n bad   request </html>"),
    )
    .await;
    let url = format!("{}/hook", dest.uri());
    let app =
        spawn_with(|s| s.forwarding = forward_config(&[("crm", &url, "")], "[0, 0.4, 0.8]")).await;
    app.deliver(&lead_delivery("wamid.S1", "493", "ad-1")).await;
    let list = app
        .wait_for_json("/v1/deliveries", 15, |v| v["data"][0]["status"] == "failed")
        .await;
    let d = &list["data"][0];
    assert_eq!(d["attempts"], 3);
    assert_eq!(d["last_status_code"], 400);
    assert_eq!(d["last_error"], "HTTP 400: <html> bad request </html>");
    // No tight loop: exactly the schedule's three attempts, spaced by its delays (±10%).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = dest.received_requests().await.unwrap();
    assert_eq!(got.len(), 3);
    let ids: Vec<&str> = got.iter().map(|r| header(r, "webhook-id")).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    let failed = app.get_json("/v1/deliveries?status=failed").await;
    assert_eq!(failed["data"].as_array().unwrap().len(), 1);
    assert!(app.get_json("/v1/deliveries?status=pending").await["data"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn the_schedule_spaces_attempts_by_its_delays() {
    let dest = destination().await;
    answer(&dest, ResponseTemplate::new(500)).await;
    let url = format!("{}/hook", dest.uri());
    let app =
        spawn_with(|s| s.forwarding = forward_config(&[("crm", &url, "")], "[0, 1.0, 2.0]")).await;
    let started = Instant::now();
    app.deliver(&lead_delivery("wamid.T1", "494", "ad-1")).await;
    app.wait_for_json("/v1/deliveries", 15, |v| v["data"][0]["status"] == "failed")
        .await;
    // First at once, then ~1 s, then ~2 s later (±10%): at least 2.7 s in all.
    assert!(
        started.elapsed() >= Duration::from_millis(2700),
        "{:?}",
        started.elapsed()
    );
    let pending_view = app.get_json("/v1/deliveries").await;
    assert_eq!(pending_view["data"][0]["attempts"], 3);
}

#[tokio::test]
async fn retry_after_is_honoured_over_the_schedule() {
    let dest = destination().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "2"))
        .up_to_n_times(1)
        .mount(&dest)
        .await;
    answer(&dest, ResponseTemplate::new(200)).await;
    let url = format!("{}/hook", dest.uri());
    let app =
        spawn_with(|s| s.forwarding = forward_config(&[("crm", &url, "")], "[0, 0.1, 0.1]")).await;
    app.deliver(&lead_delivery("wamid.RA1", "495", "ad-1"))
        .await;
    let pending = app
        .wait_for_json("/v1/deliveries", 10, |v| {
            v["data"][0]["last_status_code"] == 429
        })
        .await;
    assert_eq!(pending["data"][0]["status"], "pending");
    let got = received(&dest, 2, 10).await;
    let gap = got[1]
        .headers
        .get("webhook-timestamp")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap()
        - header(&got[0], "webhook-timestamp").parse::<i64>().unwrap();
    assert!(
        gap >= 2,
        "the second attempt came {gap} s after the first, not after Retry-After"
    );
    app.wait_for_json("/v1/deliveries", 10, |v| {
        v["data"][0]["status"] == "succeeded"
    })
    .await;
}

#[tokio::test]
async fn gone_disables_the_destination_and_keeps_its_deliveries() {
    let dest = destination().await;
    answer(&dest, ResponseTemplate::new(410)).await;
    let url = format!("{}/hook", dest.uri());
    let app = spawn_with(|s| s.forwarding = forward_config(&[("crm", &url, "")], "[0, 0.1]")).await;
    app.deliver(&lead_delivery("wamid.G1", "496", "ad-1")).await;
    let list = app
        .wait_for_json("/v1/deliveries", 10, |v| {
            v["data"][0]["last_status_code"] == 410
        })
        .await;
    let d = &list["data"][0];
    assert_eq!(d["status"], "pending");
    assert!(d["last_error"].as_str().unwrap().contains("410 Gone"));
    app.deliver(&lead_delivery("wamid.G2", "497", "ad-1")).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        dest.received_requests().await.unwrap().len(),
        1,
        "sent after a 410"
    );
    let id = d["id"].as_i64().unwrap();
    let res = app.post(&format!("/v1/deliveries/{id}/retry")).await;
    assert_eq!(res.status(), 409);
    let res = app.post("/v1/forward/crm/replay").await;
    assert_eq!(res.status(), 409);
    if let Some(logs) = captured_logs() {
        assert!(logs.contains("FORWARDING DISABLED"), "not logged loudly");
    }
    // After a restart the destination is tried again, and both leads go.
    let dest2_url = url.clone();
    dest.reset().await;
    answer(&dest, ResponseTemplate::new(200)).await;
    let app = app
        .restart_with(|s| s.forwarding = forward_config(&[("crm", &dest2_url, "")], "[0, 0.1]"))
        .await;
    app.wait_for_json("/v1/deliveries?status=succeeded", 10, |v| {
        v["data"].as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
}

#[tokio::test]
async fn a_dead_destination_does_not_delay_a_healthy_one() {
    let dead = destination().await;
    answer(
        &dead,
        ResponseTemplate::new(200).set_delay(Duration::from_secs(30)),
    )
    .await;
    let healthy = destination().await;
    answer(&healthy, ResponseTemplate::new(200)).await;
    let (dead_url, healthy_url) = (
        format!("{}/hook", dead.uri()),
        format!("{}/hook", healthy.uri()),
    );
    let app = spawn_with(|s| {
        s.forwarding = forward_config(
            &[
                ("dead", &dead_url, "timeout_secs = 20\nmax_in_flight = 2"),
                ("healthy", &healthy_url, ""),
            ],
            "[0, 1]",
        )
    })
    .await;
    let started = Instant::now();
    for i in 0..10 {
        app.deliver(&lead_delivery(
            &format!("wamid.D{i}"),
            &format!("50{i}"),
            "ad-1",
        ))
        .await;
    }
    received(&healthy, 10, 10).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // The dead one holds at most its concurrency bound.
    let at_dead = dead.received_requests().await.unwrap().len();
    assert!(
        at_dead <= 2,
        "{at_dead} requests open to the dead destination"
    );
}

#[tokio::test]
async fn filters_choose_which_leads_a_destination_gets() {
    let dest = destination().await;
    answer(&dest, ResponseTemplate::new(200)).await;
    let url = format!("{}/hook", dest.uri());
    let app = spawn_with(|s| {
        s.forwarding = forward_config(
            &[(
                "crm",
                &url,
                "source_id = [\"ad-2\", \"ad-3\"]\nsource_type = \"ad\"",
            )],
            "[0]",
        )
    })
    .await;
    app.deliver(&lead_delivery("wamid.FI1", "601", "ad-1"))
        .await;
    app.deliver(&lead_delivery("wamid.FI2", "602", "ad-2"))
        .await;
    app.deliver(&lead_delivery("wamid.FI3", "603", "ad-3"))
        .await;
    let got = received(&dest, 2, 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_now = dest.received_requests().await.unwrap();
    assert_eq!(got_now.len(), 2, "{}", got.len());
    let ads: Vec<String> = got_now
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            v["data"]["referral"]["source_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        ads.contains(&"ad-2".to_owned()) && ads.contains(&"ad-3".to_owned()),
        "{ads:?}"
    );
    assert_eq!(
        app.get_json("/v1/deliveries").await["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn replay_sends_every_lead_in_the_range_again_with_new_ids() {
    let (dest, app) = app_forwarding_to_crm().await;
    for i in 0..3 {
        app.deliver(&lead_delivery(
            &format!("wamid.RP{i}"),
            &format!("70{i}"),
            "ad-1",
        ))
        .await;
    }
    received(&dest, 3, 10).await;
    let res = app
        .post("/v1/forward/crm/replay?since=2020-01-01T00:00:00Z")
        .await;
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"destination": "crm", "enqueued": 3})
    );
    let got = received(&dest, 6, 10).await;
    let mut ids: Vec<&str> = got.iter().map(|r| header(r, "webhook-id")).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 6, "replays carry new webhook ids");
    // A range with nothing in it, an unknown destination, a bad time.
    let res = app
        .post("/v1/forward/crm/replay?until=2020-01-01T00:00:00Z")
        .await;
    assert_eq!(res.json::<Value>().await.unwrap()["enqueued"], 0);
    assert_eq!(app.post("/v1/forward/nope/replay").await.status(), 404);
    let res = app.post("/v1/forward/crm/replay?since=yesterday").await;
    assert_eq!(res.status(), 400);
    assert!(res.json::<Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("since:"));
}

#[tokio::test]
async fn a_lead_erased_while_a_replay_waits_for_the_write_lock_gets_no_delivery() {
    let (dest, app) = app_forwarding_to_crm().await;
    app.deliver(&lead_delivery("wamid.RE0", "800", "ad-1"))
        .await;
    app.deliver(&lead_delivery("wamid.RE1", "801", "ad-1"))
        .await;
    received(&dest, 2, 10).await;
    // Another writer takes the leads file's write lock and erases a lead, as an erasure does,
    // but commits only after the replay has read its page of leads (readers see the file as
    // it was) and is waiting for that lock.
    let mut conn = app.outside_writer().await;
    for sql in [
        "DELETE FROM deliveries WHERE lead_id IN (SELECT id FROM leads WHERE wamid = 'wamid.RE1')",
        "DELETE FROM leads WHERE wamid = 'wamid.RE1'",
    ] {
        sqlx::query(sql).execute(&mut *conn).await.unwrap();
    }
    let (res, ()) = tokio::join!(
        app.post("/v1/forward/crm/replay?since=2020-01-01T00:00:00Z"),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
        }
    );
    assert_eq!(res.status(), 202);
    assert_eq!(
        res.json::<Value>().await.unwrap()["enqueued"],
        1,
        "only the lead that still exists"
    );
    received(&dest, 3, 10).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pending = app.get_json("/v1/deliveries?status=pending").await["data"]
            .as_array()
            .map_or(0, Vec::len);
        if pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a delivery stays pending without its lead"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_attempt_recorded_after_its_delivery_was_erased_leaves_the_one_that_took_its_id() {
    let dest = destination().await;
    // The answers come late, so the worker records both attempts only after the erasure below.
    answer(
        &dest,
        ResponseTemplate::new(200).set_delay(Duration::from_millis(1500)),
    )
    .await;
    let url = format!("{}/hook", dest.uri());
    let app = spawn_with(|s| s.forwarding = forward_config(&[("crm", &url, "")], "[0]")).await;
    app.deliver(&lead_delivery("wamid.ID0", "810", "ad-1"))
        .await;
    app.deliver(&lead_delivery("wamid.ID1", "811", "ad-1"))
        .await;
    received(&dest, 2, 10).await;
    // While both requests wait for their answers: the second lead is erased, and a replay of
    // the first inserts a delivery, which takes the highest id just freed (as SQLite numbers
    // it alone, and as ids freed before migration 0011 may still be taken).
    let mut conn = app.outside_writer().await;
    let erased: i64 = sqlx::query_scalar("SELECT MAX(id) FROM deliveries")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    for sql in [
        "DELETE FROM deliveries WHERE lead_id IN (SELECT id FROM leads WHERE wamid = 'wamid.ID1')",
        "DELETE FROM leads WHERE wamid = 'wamid.ID1'",
    ] {
        sqlx::query(sql).execute(&mut *conn).await.unwrap();
    }
    let (taken, webhook_id): (i64, String) = sqlx::query_as(
        "INSERT INTO deliveries (destination, lead_id, next_attempt_at, created_at, updated_at) \
         SELECT 'crm', id, 0, 0, 0 FROM leads WHERE wamid = 'wamid.ID0' RETURNING id, webhook_id",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(taken, erased, "the new delivery took the erased one's id");
    // The answers arrive while this holds the write lock: the worker's record waits for it.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
    let got = received(&dest, 3, 10).await;
    assert_eq!(
        header(&got[2], "webhook-id"),
        webhook_id,
        "the new delivery is sent, not marked done by the erased one's attempt"
    );
    let row = app
        .wait_for_json(&format!("/v1/deliveries/{taken}"), 10, |v| {
            v["status"] == "succeeded"
        })
        .await;
    assert_eq!(row["webhook_id"], webhook_id.as_str());
    assert_eq!(row["attempts"], 1, "its own attempt only");
}

#[tokio::test]
async fn an_erased_delivery_s_id_is_never_given_to_a_new_one_even_after_a_restart() {
    let (dest, app) = app_forwarding_to_crm().await;
    app.deliver(&lead_delivery("wamid.N1", "4915100000021", "ad-1"))
        .await;
    app.deliver(&lead_delivery("wamid.N2", "4915100000022", "ad-1"))
        .await;
    received(&dest, 2, 10).await;
    let erased = app.listed_ids("/v1/deliveries").await[0];
    assert_eq!(app.delete("/v1/contacts/4915100000022").await.status(), 200);
    assert_eq!(
        app.listed_ids("/v1/deliveries").await.len(),
        1,
        "the newest delivery is gone"
    );

    // The highest id is gone; SQLite alone would give it to the next delivery.
    let url = format!("{}/hook", dest.uri());
    let app = app
        .restart_with(|s| s.forwarding = forward_config(&[("crm", &url, "")], "[0]"))
        .await;
    app.deliver(&lead_delivery("wamid.N3", "4915100000023", "ad-1"))
        .await;
    received(&dest, 3, 10).await;
    let ids = app.listed_ids("/v1/deliveries").await;
    assert_eq!(ids.len(), 2);
    assert!(
        ids[0] > erased,
        "the new delivery took id {}, the erased one had {erased}",
        ids[0]
    );
    // A replay numbers its deliveries above it too.
    let res = app.post("/v1/forward/crm/replay").await;
    assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    let ids = app.listed_ids("/v1/deliveries").await;
    assert_eq!(ids.len(), 4);
    assert!(ids[1] > erased, "{ids:?}");
}

#[tokio::test]
async fn retry_makes_a_failed_delivery_due_now() {
    let dest = destination().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(1)
        .mount(&dest)
        .await;
    answer(&dest, ResponseTemplate::new(200)).await;
    let url = format!("{}/hook", dest.uri());
    let app = spawn_with(|s| s.forwarding = forward_config(&[("crm", &url, "")], "[0]")).await;
    app.deliver(&lead_delivery("wamid.RT1", "801", "ad-1"))
        .await;
    let list = app
        .wait_for_json("/v1/deliveries", 10, |v| v["data"][0]["status"] == "failed")
        .await;
    let id = list["data"][0]["id"].as_i64().unwrap();
    let res = app.post(&format!("/v1/deliveries/{id}/retry")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "pending");
    let done = app
        .wait_for_json(&format!("/v1/deliveries/{id}"), 10, |v| {
            v["status"] == "succeeded"
        })
        .await;
    assert_eq!(done["attempts"], 2);
    let got = dest.received_requests().await.unwrap();
    assert_eq!(header(&got[0], "webhook-id"), header(&got[1], "webhook-id"));
    assert_eq!(
        app.post(&format!("/v1/deliveries/{id}/retry"))
            .await
            .status(),
        409
    );
    assert_eq!(app.post("/v1/deliveries/999999/retry").await.status(), 404);
    assert_eq!(
        app.get("/v1/deliveries?status=done")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        app.get("/v1/deliveries?lead_id=x")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
}

#[tokio::test]
async fn a_huge_error_page_is_not_read_past_the_cap() {
    let dest = destination().await;
    answer(
        &dest,
        ResponseTemplate::new(500).set_body_string("E".repeat(5 * 1024 * 1024)),
    )
    .await;
    let url = format!("{}/hook", dest.uri());
    let app = spawn_with(|s| s.forwarding = forward_config(&[("crm", &url, "")], "[0]")).await;
    app.deliver(&lead_delivery("wamid.BIG1", "901", "ad-1"))
        .await;
    let list = app
        .wait_for_json("/v1/deliveries", 10, |v| v["data"][0]["status"] == "failed")
        .await;
    let error = list["data"][0]["last_error"].as_str().unwrap();
    assert!(
        error.starts_with("HTTP 500: EEEE") && error.chars().count() < 400,
        "{}",
        error.len()
    );
}

/// A raw server that answers with an endless error body and counts what it managed to write
/// before the client hung up: the client reads only the cap, so the rest is never taken.
#[tokio::test]
async fn the_response_cap_stops_reading_an_endless_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 65536];
        let _ = sock.read(&mut buf).await;
        let _ = sock
            .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 1073741824\r\n\r\n")
            .await;
        let chunk = vec![b'x'; 65536];
        while sock.write_all(&chunk).await.is_ok() {
            counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
            if counter.load(std::sync::atomic::Ordering::Relaxed) > 256 * 1024 * 1024 {
                break;
            }
        }
    });
    let response = reqwest::get(format!("http://{addr}/")).await.unwrap();
    let body = ctwa_leads::forward::attempt::read_capped(response).await;
    assert_eq!(body.len(), ctwa_leads::forward::attempt::MAX_RESPONSE_BYTES);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = written.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sent < 64 * 1024 * 1024,
        "{sent} bytes were taken from the destination"
    );
}

#[tokio::test]
async fn every_new_lead_has_its_delivery_and_duplicates_get_none() {
    let dest = destination().await;
    answer(&dest, ResponseTemplate::new(200)).await;
    let url = format!("{}/hook", dest.uri());
    let app = spawn_with(|s| {
        s.forwarding = forward_config(&[("a", &url, ""), ("b", &url, "ref = \"other\"")], "[0]")
    })
    .await;
    for i in 0..20 {
        let body = lead_delivery(&format!("wamid.E{i}"), &format!("11{i}"), "ad-1");
        app.deliver(&body).await;
        // Meta re-delivers: no second lead, no second delivery.
        app.deliver(&body).await;
    }
    let pool = app.outside_pool().await;
    let (leads, deliveries, orphans): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM leads), (SELECT COUNT(*) FROM deliveries), \
         (SELECT COUNT(*) FROM deliveries d LEFT JOIN leads l ON l.id = d.lead_id WHERE l.id IS NULL)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((leads, deliveries, orphans), (20, 20, 0));
    received(&dest, 20, 10).await;
    // Erasing a person removes their deliveries with their leads.
    let res = app.delete("/v1/contacts/113").await;
    assert_eq!(res.status(), 200);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 19);
}

#[tokio::test]
async fn a_busy_destination_gets_every_lead_exactly_once() {
    // More leads than one outbox read holds, arriving while sends, reads and the recording of
    // outcomes overlap: none is lost, none is sent twice.
    let dest = destination().await;
    answer(
        &dest,
        ResponseTemplate::new(200).set_delay(Duration::from_millis(5)),
    )
    .await;
    let url = format!("{}/hook", dest.uri());
    let app = spawn_with(|s| {
        s.forwarding = forward_config(&[("a", &url, "max_in_flight = 8")], "[0, 1]")
    })
    .await;
    let total = 700;
    for batch in 0..7 {
        let (contacts, messages): (Vec<Value>, Vec<Value>) = (0..100)
            .map(|i| {
                let n = batch * 100 + i;
                let from = format!("12{n}");
                (
                    contact(&from, "Ada"),
                    referral_message(&format!("wamid.B{n}"), &from, "ad-1"),
                )
            })
            .unzip();
        let body = delivery(value(
            "106540352242922",
            Value::Array(contacts),
            Value::Array(messages),
        ));
        assert_eq!(app.deliver_no_wait(&body).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let got = received(&dest, total, 30).await;
    // Everything is recorded as delivered, then nothing more is sent.
    let pool = app.outside_pool().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let succeeded: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE status = 'succeeded'")
                .fetch_one(&pool)
                .await
                .unwrap();
        if succeeded == total as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "{succeeded} of {total} recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_after = dest.received_requests().await.unwrap_or_default();
    let ids: std::collections::HashSet<&str> =
        got_after.iter().map(|r| header(r, "webhook-id")).collect();
    assert!(got.len() >= total);
    assert_eq!(got_after.len(), total, "some lead was sent twice");
    assert_eq!(ids.len(), total);
}
