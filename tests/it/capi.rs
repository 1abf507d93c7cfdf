//! Conversions API for Business Messaging against a wiremock Graph: the exact request, batching
//! and isolating a bad event, the 7-day guard (locally and on retry), idempotency under
//! concurrent requests, a lead without a click id, test_event_code, retried and kept errors,
//! auto LeadSubmitted exactly once across a restart, Meta's detected events, an outcome recorded
//! after its event was erased and its id taken, and the dataset proxy.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::helpers::*;

const DATASET: &str = "987654321012345";
const EVENTS_PATH: &str = "/v21.0/987654321012345/events";

fn capi(s: &mut ctwa_leads::config::Settings, auto: bool) {
    s.capi.dataset_id = Some(DATASET.into());
    s.capi.auto_lead_submitted = auto;
    s.forwarding.retry_schedule = [0.0, 0.3, 0.3]
        .iter()
        .map(|d| Duration::from_secs_f64(*d))
        .collect();
}

fn accepted() -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(json!({"events_received": 1, "messages": [], "fbtrace_id": "AbCtrace"}))
}

fn graph_error(status: u16, code: i64, subcode: i64) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({"error": {
        "message": "Invalid parameter", "type": "OAuthException", "code": code,
        "error_subcode": subcode, "fbtrace_id": "ErrTrace"}}))
}

/// A referral message sent now (Meta takes events of the last 7 days only).
fn fresh_referral(wamid: &str, from: &str) -> Value {
    let mut m = referral_message(wamid, from, "AD1");
    m["timestamp"] = json!(chrono::Utc::now().timestamp().to_string());
    m
}

fn leads_delivery(messages: Vec<Value>) -> Vec<u8> {
    delivery(value(
        "PN1",
        json!([contact("4915100000001", "Ana")]),
        json!(messages),
    ))
}

/// Graph's events edge accepts every request.
async fn graph_accepts(app: &TestApp) {
    Mock::given(method("POST"))
        .and(path(EVENTS_PATH))
        .respond_with(accepted())
        .mount(&app.graph)
        .await;
}

/// Delivers one referral message sent now, from `from`.
async fn deliver_fresh(app: &TestApp, wamid: &str, from: &str) {
    app.deliver(&leads_delivery(vec![fresh_referral(wamid, from)]))
        .await;
}

/// A delivery of one `automatic_events` change with this value.
fn detected_delivery(value: Value) -> Vec<u8> {
    delivery_of(vec![(WABA_ID, vec![("automatic_events", value)])])
}

async fn lead_id(app: &TestApp, wamid: &str) -> i64 {
    app.lead(wamid).await.expect("the lead is stored").id
}

async fn events_requests(graph: &MockServer, at_least: usize, secs: u64) -> Vec<Request> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got: Vec<Request> = graph
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.url.path() == EVENTS_PATH)
            .collect();
        if got.len() >= at_least {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "only {} event requests",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn events_of(req: &Request) -> Vec<Value> {
    let body: Value = serde_json::from_slice(&req.body).expect("JSON");
    body["data"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_conversion_reaches_graph_exactly_as_meta_documents_it() {
    let app = spawn_with(|s| {
        capi(s, false);
        s.capi.test_event_code = Some("TEST4242".into());
    })
    .await;
    Mock::given(method("POST"))
        .and(path(EVENTS_PATH))
        .and(header(
            "authorization",
            format!("Bearer {GRAPH_TOKEN}").as_str(),
        ))
        .respond_with(accepted())
        .mount(&app.graph)
        .await;
    deliver_fresh(&app, "wamid.C1", "4915100000001").await;
    let id = lead_id(&app, "wamid.C1").await;
    let at = chrono::Utc::now().timestamp() - 3600;
    let r = app
        .post_json(
            &format!("/v1/leads/{id}/conversions"),
            &json!({"event_name": "Purchase", "value": 123.45, "currency": "USD", "event_time": at}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let queued: Value = r.json().await.unwrap();
    assert_eq!(queued["status"], "pending");
    assert_eq!(queued["event_id"], format!("ctwa-leads.{id}.Purchase"));

    let reqs = events_requests(&app.graph, 1, 10).await;
    let body: Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(body["test_event_code"], "TEST4242");
    assert_eq!(
        body["data"],
        json!([{
            "event_name": "Purchase",
            "event_time": at,
            "event_id": format!("ctwa-leads.{id}.Purchase"),
            "action_source": "business_messaging",
            "messaging_channel": "whatsapp",
            "user_data": {"whatsapp_business_account_id": WABA_ID, "ctwa_clid": "clid-wamid.C1"},
            "custom_data": {"currency": "USD", "value": 123.45}
        }])
    );
    let lead = app
        .wait_for_json(&format!("/v1/leads/{id}"), 10, |v| {
            v["conversions"][0]["status"] == "sent"
        })
        .await;
    assert_eq!(lead["conversions"][0]["fbtrace_id"], "AbCtrace");
    assert_eq!(lead["conversions"][0]["attempts"], 1);
    assert_eq!(lead["wamid"], "wamid.C1", "the lead's own fields stay");
    let sent = app.get_json("/v1/conversions?status=sent").await;
    assert_eq!(sent["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.get_json("/v1/conversions?status=pending").await["data"],
        json!([])
    );
}

#[tokio::test]
async fn events_are_checked_locally_before_anything_is_queued() {
    let app = spawn_with(|s| capi(s, false)).await;
    deliver_fresh(&app, "wamid.C2", "4915100000001").await;
    let id = lead_id(&app, "wamid.C2").await;
    let now = chrono::Utc::now().timestamp();
    let url = format!("/v1/leads/{id}/conversions");
    for (body, field) in [
        (json!({"event_name": "Lead"}), "event_name"),
        (json!({"event_name": "CompleteRegistration"}), "event_name"),
        (json!({"event_name": "Purchase", "value": 10}), "currency"),
        (
            json!({"event_name": "Purchase", "currency": "USD"}),
            "value",
        ),
        (
            json!({"event_name": "Purchase", "value": 10, "currency": "usd"}),
            "currency",
        ),
        (
            json!({"event_name": "Purchase", "value": -1, "currency": "USD"}),
            "value",
        ),
        (
            json!({"event_name": "Purchase", "event_time": now + 3600}),
            "event_time",
        ),
        (
            json!({"event_name": "Purchase", "event_time": now - 8 * 86_400}),
            "event_time",
        ),
        (
            json!({"event_name": "Purchase", "event_time": "yesterday"}),
            "event_time",
        ),
        (json!({"event_name": "Purchase", "colour": "red"}), "colour"),
    ] {
        let r = app.post_json(&url, &body).await;
        assert_eq!(r.status(), 400, "{body}");
        let e: Value = r.json().await.unwrap();
        let message = e["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{body}: {message}");
    }
    let r = app
        .post_json(
            "/v1/leads/999999/conversions",
            &json!({"event_name": "Purchase"}),
        )
        .await;
    assert_eq!(r.status(), 404);
    let r = app
        .post_json(
            "/v1/conversions",
            &json!({"ctwa_clid": "nobody", "event_name": "Purchase"}),
        )
        .await;
    assert_eq!(r.status(), 404);
    // Unix seconds, as Meta takes them.
    let r = app
        .post_json(
            &url,
            &json!({"event_name": "AddToCart", "event_time": now - 60}),
        )
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(
        app.get_json("/v1/conversions").await["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_lead_without_a_click_id_is_422_and_graph_is_never_called() {
    let app = spawn_with(|s| capi(s, true)).await;
    let mut m = fresh_referral("wamid.NOCLID", "4915100000001");
    m["referral"].as_object_mut().unwrap().remove("ctwa_clid");
    app.deliver(&leads_delivery(vec![m])).await;
    let id = lead_id(&app, "wamid.NOCLID").await;
    let r = app
        .post_json(
            &format!("/v1/leads/{id}/conversions"),
            &json!({"event_name": "Purchase"}),
        )
        .await;
    assert_eq!(r.status(), 422);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("ctwa_clid"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.graph.received_requests().await.unwrap().is_empty());
    assert_eq!(
        app.get_json("/v1/conversions").await["data"],
        json!([]),
        "auto skips it too"
    );
}

#[tokio::test]
async fn concurrent_identical_requests_are_one_event() {
    let app = spawn_with(|s| capi(s, false)).await;
    graph_accepts(&app).await;
    deliver_fresh(&app, "wamid.C3", "4915100000001").await;
    let url = format!("/v1/leads/{}/conversions", lead_id(&app, "wamid.C3").await);
    let body = json!({"event_name": "Purchase", "value": 5, "currency": "EUR"});
    let answers = futures_util::future::join_all((0..12).map(|_| app.post_json(&url, &body))).await;
    let mut codes: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    codes.sort();
    assert_eq!(codes.iter().filter(|c| **c == 202).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 11, "{codes:?}");
    // The caller's own event ids make separate events; a repeat of one is the same event.
    for id in ["order-1", "order-2", "order-2"] {
        let r = app
            .post_json(
                &url,
                &json!({"event_name": "Purchase", "value": 5, "currency": "EUR", "event_id": id}),
            )
            .await;
        assert!(r.status() == 202 || r.status() == 200);
    }
    app.wait_for_json("/v1/conversions?status=sent", 10, |v| {
        v["data"].as_array().is_some_and(|a| a.len() == 3)
    })
    .await;
    let sent: usize = events_requests(&app.graph, 1, 5)
        .await
        .iter()
        .map(|r| events_of(r).len())
        .sum();
    assert_eq!(sent, 3, "one event per event_id reached Graph");
}

#[tokio::test]
async fn events_go_in_batches_and_a_bad_event_fails_alone() {
    let app = spawn_with(|s| capi(s, true)).await;
    Mock::given(method("POST"))
        .and(path(EVENTS_PATH))
        .and(body_string_contains("clid-wamid.BAD"))
        .respond_with(graph_error(400, 100, 2_804_066))
        .with_priority(1)
        .mount(&app.graph)
        .await;
    graph_accepts(&app).await;
    let messages = ["wamid.B1", "wamid.B2", "wamid.BAD", "wamid.B4", "wamid.B5"]
        .iter()
        .enumerate()
        .map(|(i, w)| fresh_referral(w, &format!("49151000000{i}")))
        .collect();
    app.deliver(&leads_delivery(messages)).await;
    let all = app
        .wait_for_json("/v1/conversions", 10, |v| {
            v["data"]
                .as_array()
                .is_some_and(|a| a.len() == 5 && a.iter().all(|c| c["status"] != "pending"))
        })
        .await;
    let reqs = events_requests(&app.graph, 1, 5).await;
    assert_eq!(events_of(&reqs[0]).len(), 5, "the five went in one request");
    let data = all["data"].as_array().unwrap();
    let failed: Vec<&Value> = data.iter().filter(|c| c["status"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{all}");
    assert_eq!(data.iter().filter(|c| c["status"] == "sent").count(), 4);
    let bad = lead_id(&app, "wamid.BAD").await;
    assert_eq!(failed[0]["lead_id"], bad);
    assert_eq!(failed[0]["event_name"], "LeadSubmitted");
    assert_eq!(failed[0]["error"]["code"], 100);
    assert_eq!(failed[0]["error"]["subcode"], 2_804_066);
    assert_eq!(failed[0]["error"]["status"], 400);
    assert_eq!(failed[0]["error"]["message"], "Invalid parameter");
    assert_eq!(failed[0]["fbtrace_id"], "ErrTrace");
    // Halves until the bad event is alone: 5 (rejected) → 2 (sent) + 3 (rejected) → 1 (the
    // bad one, rejected) + 2 (sent).
    let sizes: Vec<usize> = reqs.iter().map(|r| events_of(r).len()).collect();
    assert_eq!(sizes, [5, 2, 3, 1, 2]);
    let alone = &events_of(&reqs[3])[0];
    assert_eq!(alone["user_data"]["ctwa_clid"], "clid-wamid.BAD");
}

#[tokio::test]
async fn server_errors_and_rate_limits_are_retried() {
    let app = spawn_with(|s| capi(s, false)).await;
    Mock::given(method("POST"))
        .and(path(EVENTS_PATH))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&app.graph)
        .await;
    Mock::given(method("POST"))
        .and(path(EVENTS_PATH))
        .respond_with(graph_error(400, 4, 0))
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&app.graph)
        .await;
    Mock::given(method("POST"))
        .and(path(EVENTS_PATH))
        .respond_with(accepted())
        .with_priority(3)
        .mount(&app.graph)
        .await;
    deliver_fresh(&app, "wamid.R1", "4915100000001").await;
    let id = lead_id(&app, "wamid.R1").await;
    let r = app
        .post_json(
            &format!("/v1/leads/{id}/conversions"),
            &json!({"event_name": "InitiateCheckout"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let lead = app
        .wait_for_json(&format!("/v1/leads/{id}"), 10, |v| {
            v["conversions"][0]["status"] == "sent"
        })
        .await;
    assert_eq!(
        lead["conversions"][0]["attempts"], 3,
        "503, then rate limit (code 4), then sent"
    );
    assert_eq!(events_requests(&app.graph, 3, 5).await.len(), 3);
}

#[tokio::test]
async fn the_seven_day_window_is_kept_locally_and_on_retry() {
    let app = spawn_with(|s| {
        capi(s, true);
        // The next attempt comes after 5 s: beyond the window of an event 6 d 23:59:58 old.
        s.forwarding.retry_schedule = vec![Duration::ZERO, Duration::from_secs(5)];
    })
    .await;
    Mock::given(method("POST"))
        .and(path(EVENTS_PATH))
        .respond_with(ResponseTemplate::new(503))
        .mount(&app.graph)
        .await;
    // The helper's message is from 2024: its auto LeadSubmitted is too old to send at all.
    app.deliver(&one_lead("wamid.OLD")).await;
    let old = lead_id(&app, "wamid.OLD").await;
    let lead = app
        .wait_for_json(&format!("/v1/leads/{old}"), 10, |v| {
            v["conversions"][0]["status"] == "failed"
        })
        .await;
    assert!(lead["conversions"][0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("7 days"));
    assert!(
        app.graph.received_requests().await.unwrap().is_empty(),
        "never sent"
    );

    deliver_fresh(&app, "wamid.EDGE", "4915100000009").await;
    let edge = lead_id(&app, "wamid.EDGE").await;
    let at = chrono::Utc::now().timestamp() - 7 * 86_400 + 2;
    let r = app
        .post_json(
            &format!("/v1/leads/{edge}/conversions"),
            &json!({"event_name": "Purchase", "event_time": at, "value": 1, "currency": "USD"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let done = app
        .wait_for_json("/v1/conversions?status=failed", 10, |v| {
            v["data"]
                .as_array()
                .is_some_and(|a| a.iter().any(|c| c["event_name"] == "Purchase"))
        })
        .await;
    let purchase = done["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["event_name"] == "Purchase")
        .unwrap()
        .clone();
    assert_eq!(
        purchase["attempts"], 1,
        "given up instead of retrying past the window"
    );
    assert!(purchase["error"]["message"]
        .as_str()
        .unwrap()
        .contains("7 days"));
    assert_eq!(purchase["error"]["status"], 503);
}

#[tokio::test]
async fn auto_lead_submitted_is_one_event_per_lead_across_a_restart() {
    let mut app = spawn_with(|s| capi(s, true)).await;
    // Graph (the same one across the restart) accepts whenever the events go out.
    graph_accepts(&app).await;
    let batch = leads_delivery(vec![
        fresh_referral("wamid.A1", "4915100000001"),
        fresh_referral("wamid.A2", "4915100000002"),
    ]);
    app.deliver(&batch).await;
    app = app.restart_with(|s| capi(s, true)).await;
    // Meta re-delivers the same messages after the restart.
    app.deliver(&batch).await;
    let all = app
        .wait_for_json("/v1/conversions?status=sent", 10, |v| {
            v["data"].as_array().is_some_and(|a| a.len() == 2)
        })
        .await;
    for c in all["data"].as_array().unwrap() {
        assert_eq!(c["event_name"], "LeadSubmitted");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.get_json("/v1/conversions").await["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let sent: usize = events_requests(&app.graph, 1, 5)
        .await
        .iter()
        .map(|r| events_of(r).len())
        .sum();
    assert_eq!(sent, 2);
}

#[tokio::test]
async fn meta_s_detected_events_are_stored_once_and_shown_on_the_lead() {
    let app = spawn_app().await;
    deliver_fresh(&app, "wamid.D1", "4915100000001").await;
    let id = lead_id(&app, "wamid.D1").await;
    // Shaped like Meta's automatic_events reference.
    let detected = detected_delivery(json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": "PN1"},
        "automatic_events": [{
            "id": "wamid.HBgLMTIzNDU2Nzg5MAA=",
            "event_name": "Purchase",
            "timestamp": 1_763_800_000,
            "ctwa_clid": "clid-wamid.D1",
            "custom_data": {"currency": "USD", "value": 25.5}
        }]
    }));
    assert_eq!(app.deliver(&detected).await.status(), 200);
    assert_eq!(app.deliver(&detected).await.status(), 200, "a re-delivery");
    let lead = app
        .wait_for_json(&format!("/v1/leads/{id}"), 10, |v| {
            v["detected_events"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        })
        .await;
    let events = lead["detected_events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "stored once per Meta id");
    assert_eq!(events[0]["event_name"], "Purchase");
    assert_eq!(events[0]["custom_data"]["value"], 25.5);
    assert_eq!(events[0]["timestamp"], "2025-11-22T08:26:40.000Z");
    assert_eq!(lead["conversions"], json!([]));
}

#[tokio::test]
async fn the_dataset_is_created_through_graph() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .and(path(format!("/v21.0/{WABA_ID}/dataset")))
        .and(body_string_contains("ctwa-leads conversions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": DATASET})))
        .mount(&app.graph)
        .await;
    let r = app
        .post_json(
            "/v1/dataset",
            &json!({"dataset_name": "ctwa-leads conversions"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"id": DATASET}));
    let r = app
        .post_json("/v1/dataset", &json!({"dataset_name": ""}))
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        app.graph.received_requests().await.unwrap().len(),
        1,
        "the bad body never reached Graph"
    );
    // Without [capi] dataset_id, conversions are refused clearly.
    app.deliver(&one_lead("wamid.N1")).await;
    let id = lead_id(&app, "wamid.N1").await;
    let r = app
        .post_json(
            &format!("/v1/leads/{id}/conversions"),
            &json!({"event_name": "Purchase"}),
        )
        .await;
    assert_eq!(r.status(), 409);
}

#[tokio::test]
async fn erasure_takes_a_person_s_conversions_and_detected_events_along() {
    let app = spawn_with(|s| capi(s, true)).await;
    graph_accepts(&app).await;
    deliver_fresh(&app, "wamid.E1", "4915100000001").await;
    let detected = detected_delivery(
        json!({"automatic_events": [{"id": "wamid.DET", "event_name": "LeadSubmitted",
                   "timestamp": 1_763_800_000, "ctwa_clid": "clid-wamid.E1"}]}),
    );
    app.deliver(&detected).await;
    let id = lead_id(&app, "wamid.E1").await;
    app.wait_for_json(&format!("/v1/leads/{id}"), 10, |v| {
        v["conversions"].as_array().is_some_and(|a| a.len() == 1)
            && v["detected_events"]
                .as_array()
                .is_some_and(|a| a.len() == 1)
    })
    .await;
    assert_eq!(app.delete("/v1/contacts/4915100000001").await.status(), 200);
    assert_eq!(app.get_json("/v1/conversions").await["data"], json!([]));
    let pool = app.outside_pool().await;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM detected_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn an_erased_event_s_id_is_never_given_to_a_new_one_even_after_a_restart() {
    let app = spawn_with(|s| capi(s, true)).await;
    graph_accepts(&app).await;
    deliver_fresh(&app, "wamid.I1", "4915100000031").await;
    deliver_fresh(&app, "wamid.I2", "4915100000032").await;
    let ids = app.listed_ids("/v1/conversions").await;
    assert_eq!(ids.len(), 2, "one auto LeadSubmitted each");
    let erased = ids[0];
    assert_eq!(app.delete("/v1/contacts/4915100000032").await.status(), 200);
    assert_eq!(
        app.listed_ids("/v1/conversions").await.len(),
        1,
        "the newest event is gone"
    );

    // The highest id is gone; SQLite alone would give it to the next event.
    let app = app.restart_with(|s| capi(s, true)).await;
    graph_accepts(&app).await;
    deliver_fresh(&app, "wamid.I3", "4915100000033").await;
    let ids = app.listed_ids("/v1/conversions").await;
    assert_eq!(ids.len(), 2);
    assert!(
        ids[0] > erased,
        "the new event took id {}, the erased one had {erased}",
        ids[0]
    );
    // An event posted through the API is numbered above it too.
    let lead = lead_id(&app, "wamid.I1").await;
    let res = app
        .post_json(
            &format!("/v1/leads/{lead}/conversions"),
            &json!({"event_name": "Purchase", "value": 10.0, "currency": "EUR"}),
        )
        .await;
    assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    let ids = app.listed_ids("/v1/conversions").await;
    assert_eq!(ids.len(), 3);
    assert!(ids[0] > erased, "{ids:?}");
}

#[tokio::test]
async fn an_event_for_a_lead_erased_since_its_look_up_is_not_queued() {
    let app = spawn_with(|s| capi(s, false)).await;
    deliver_fresh(&app, "wamid.G1", "4915100000002").await;
    let id = lead_id(&app, "wamid.G1").await;
    assert_eq!(app.delete("/v1/contacts/4915100000002").await.status(), 200);
    // What the handler does after it found the lead: here the erasure came in between.
    let new = ctwa_leads::store::conversions::NewConversion {
        event_id: "late".into(),
        lead_id: id,
        event_name: "Purchase".into(),
        event_time: 1_763_800_000,
        value: None,
        currency: None,
    };
    let queued = ctwa_leads::store::conversions::insert(&app.store, &new, 1)
        .await
        .unwrap();
    assert!(queued.is_none(), "no event without its lead");
    let pool = app.outside_pool().await;
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM conversions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn an_outcome_recorded_after_its_event_was_erased_leaves_the_one_that_took_its_id() {
    let app = spawn_with(|s| capi(s, false)).await;
    // Graph answers late, so the worker records the outcome only after the erasure below.
    Mock::given(method("POST"))
        .and(path(EVENTS_PATH))
        .respond_with(accepted().set_delay(Duration::from_millis(800)))
        .mount(&app.graph)
        .await;
    deliver_fresh(&app, "wamid.T1", "4915100000001").await;
    deliver_fresh(&app, "wamid.T2", "4915100000002").await;
    let first = lead_id(&app, "wamid.T1").await;
    let second = lead_id(&app, "wamid.T2").await;
    let at = chrono::Utc::now().timestamp() - 3600;
    let r = app
        .post_json(
            &format!("/v1/leads/{first}/conversions"),
            &json!({"event_name": "Purchase", "event_time": at}),
        )
        .await;
    assert_eq!(r.status(), 202);
    events_requests(&app.graph, 1, 10).await;
    // While that request waits for its answer: the first lead's event is erased, and an
    // event for the second lead is queued, which takes the highest id just freed (as SQLite
    // numbers it alone, and as ids freed before migration 0011 may still be taken).
    let mut conn = app.outside_writer().await;
    let erased: i64 = sqlx::query_scalar("SELECT MAX(id) FROM conversions")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    sqlx::query("DELETE FROM conversions WHERE lead_id = ?")
        .bind(first)
        .execute(&mut *conn)
        .await
        .unwrap();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let taken: i64 = sqlx::query_scalar(
        "INSERT INTO conversions (event_id, lead_id, event_name, event_time, next_attempt_at, \
         created_at, updated_at) VALUES ('took-the-id', ?1, 'Purchase', ?2, ?3, ?3, ?3) \
         RETURNING id",
    )
    .bind(second)
    .bind(at)
    .bind(now_ms)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(taken, erased, "the new event took the erased one's id");
    // The answer arrives while this holds the write lock: the worker's record waits for it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
    let reqs = events_requests(&app.graph, 2, 10).await;
    let sent: Vec<Value> = events_of(&reqs[1]);
    assert_eq!(
        sent[0]["event_id"], "took-the-id",
        "the new event is sent, not marked sent by the erased one's outcome"
    );
    let pool = app.outside_pool().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, attempts): (String, i64) =
            sqlx::query_as("SELECT status, attempts FROM conversions WHERE id = ?")
                .bind(taken)
                .fetch_one(&pool)
                .await
                .unwrap();
        if status == "sent" {
            assert_eq!(attempts, 1, "its own attempt only");
            break;
        }
        assert!(Instant::now() < deadline, "the new event stays {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
