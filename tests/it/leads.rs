//! `/v1/leads`: filters, keyset paging, look-up, export, stats, auth and the query plans.

use std::collections::BTreeSet;

use ctwa_leads::store::leads::{page_plan, LeadFilter};
use serde_json::{json, Value};

use crate::helpers::*;

struct L<'a> {
    wamid: &'a str,
    from: &'a str,
    user_id: Option<&'a str>,
    ad: &'a str,
    source_type: &'a str,
    ref_: &'a str,
    pn: &'a str,
    waba: &'a str,
}

/// Stores one lead through a signed delivery, with the given attributes.
async fn capture(app: &TestApp, l: L<'_>) {
    let mut msg = referral_message(l.wamid, l.from, l.ad);
    msg["referral"]["source_type"] = json!(l.source_type);
    msg["referral"]["ref"] = json!(l.ref_);
    if let Some(u) = l.user_id {
        msg["from_user_id"] = json!(u);
    }
    let body = delivery_of(vec![(
        l.waba,
        vec![(
            "messages",
            value(l.pn, json!([contact(l.from, "N")]), json!([msg])),
        )],
    )]);
    assert_eq!(app.deliver(&body).await.status(), 200);
}

async fn seed(app: &TestApp) {
    let rows = [
        L {
            wamid: "w1",
            from: "111",
            user_id: Some("US.1"),
            ad: "AD1",
            source_type: "ad",
            ref_: "r1",
            pn: "PN1",
            waba: "WA1",
        },
        L {
            wamid: "w2",
            from: "222",
            user_id: None,
            ad: "AD1",
            source_type: "post",
            ref_: "r2",
            pn: "PN1",
            waba: "WA1",
        },
        L {
            wamid: "w3",
            from: "333",
            user_id: None,
            ad: "AD2",
            source_type: "ad",
            ref_: "r1",
            pn: "PN2",
            waba: "WA1",
        },
        L {
            wamid: "w4",
            from: "111",
            user_id: Some("US.1"),
            ad: "AD2",
            source_type: "ad",
            ref_: "r3",
            pn: "PN2",
            waba: "WA2",
        },
        L {
            wamid: "w5",
            from: "555",
            user_id: None,
            ad: "AD3",
            source_type: "ad",
            ref_: "r1",
            pn: "PN3",
            waba: "WA2",
        },
    ];
    for l in rows {
        capture(app, l).await;
    }
}

async fn wamids(app: &TestApp, query: &str) -> Vec<String> {
    let res = app.get(&format!("/v1/leads?{query}")).send().await.unwrap();
    assert_eq!(res.status(), 200, "{query}");
    let page: Value = res.json().await.unwrap();
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["wamid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_filter_selects_exactly_its_leads_newest_first() {
    let app = spawn_app().await;
    seed(&app).await;
    let cases = [
        ("", vec!["w5", "w4", "w3", "w2", "w1"]),
        ("source_id=AD1", vec!["w2", "w1"]),
        ("ctwa_clid=clid-w3", vec!["w3"]),
        ("ref=r1", vec!["w5", "w3", "w1"]),
        ("source_type=post", vec!["w2"]),
        ("wa_id=111", vec!["w4", "w1"]),
        ("user_id=US.1", vec!["w4", "w1"]),
        ("phone_number_id=PN2", vec!["w4", "w3"]),
        ("waba_id=WA2", vec!["w5", "w4"]),
        ("ref=r1&waba_id=WA1", vec!["w3", "w1"]),
        ("source_id=NOPE", vec![]),
        ("since=0", vec!["w5", "w4", "w3", "w2", "w1"]),
        ("until=0", vec![]),
        ("since=2999-01-01T00:00:00Z", vec![]),
    ];
    for (query, expected) in cases {
        assert_eq!(wamids(&app, query).await, expected, "{query}");
    }
}

#[tokio::test]
async fn click_ids_that_share_their_indexed_tail_are_told_apart() {
    let app = spawn_app().await;
    // Meta-length click ids whose last 16 characters (what `leads_ctwa_clid_tail_by_range`
    // holds) match.
    let tail = "0123456789abcdef";
    let first = format!("ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7Jw-one-{tail}");
    let second =
        format!("ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7Jw-two-{tail}");
    for (wamid, clid) in [
        ("w.one", &first),
        ("w.two", &second),
        ("w.bare", &tail.to_owned()),
    ] {
        let mut message = referral_message(wamid, "4915", "AD1");
        message["referral"]["ctwa_clid"] = json!(clid);
        let body = delivery(value(
            "PN1",
            json!([contact("4915", "A")]),
            json!([message]),
        ));
        assert_eq!(app.deliver(&body).await.status(), 200);
    }
    assert_eq!(wamids(&app, &format!("ctwa_clid={first}")).await, ["w.one"]);
    assert_eq!(
        wamids(&app, &format!("ctwa_clid={second}")).await,
        ["w.two"]
    );
    assert_eq!(wamids(&app, &format!("ctwa_clid={tail}")).await, ["w.bare"]);
    assert!(wamids(&app, &format!("ctwa_clid=x{tail}")).await.is_empty());
    let found = ctwa_leads::store::leads::id_by_clid(&app.store, &second)
        .await
        .unwrap();
    assert_eq!(found, Some(app.lead("w.two").await.unwrap().id));
}

#[tokio::test]
async fn since_and_until_bound_the_received_time() {
    let app = spawn_app().await;
    assert_eq!(app.deliver(&one_lead("early")).await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    assert_eq!(app.deliver(&one_lead("late")).await.status(), 200);
    let page: Value = app.get_json("/v1/leads").await;
    let late_at = page["data"][0]["received_at"].as_str().unwrap().to_owned();
    let early_at = page["data"][1]["received_at"].as_str().unwrap().to_owned();
    assert_ne!(late_at, early_at);
    assert_eq!(wamids(&app, &format!("since={late_at}")).await, ["late"]);
    assert_eq!(wamids(&app, &format!("until={early_at}")).await, ["early"]);
    assert_eq!(
        wamids(&app, &format!("since={early_at}&until={late_at}")).await,
        ["late", "early"]
    );
}

#[tokio::test]
async fn a_lead_has_every_documented_field() {
    let app = spawn_app().await;
    let mut msg = referral_message("wamid.full", "4911", "AD1");
    msg["referral"]["welcome_message"] = json!({"text": "Welcome"});
    assert_eq!(
        app.deliver(&delivery(value(
            "PN1",
            json!([contact("4911", "Ana")]),
            json!([msg])
        )))
        .await
        .status(),
        200
    );
    let page: Value = app.get_json("/v1/leads").await;
    let lead = &page["data"][0];
    for key in [
        "id",
        "wamid",
        "waba_id",
        "phone_number_id",
        "display_phone_number",
        "wa_id",
        "user_id",
        "profile_name",
        "message_type",
        "text",
        "timestamp",
        "received_at",
        "referral",
    ] {
        assert!(lead.get(key).is_some(), "{key} missing in {lead}");
    }
    for key in [
        "source_url",
        "source_id",
        "source_type",
        "headline",
        "body",
        "media_type",
        "image_url",
        "video_url",
        "thumbnail_url",
        "ctwa_clid",
        "ref",
        "welcome_message",
    ] {
        assert!(
            lead["referral"].get(key).is_some(),
            "referral.{key} missing in {lead}"
        );
    }
    assert_eq!(lead["timestamp"], "2024-11-22T08:00:00Z");
    assert!(lead["received_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(lead["user_id"], Value::Null);
    assert_eq!(lead["referral"]["video_url"], Value::Null);
    assert_eq!(lead["referral"]["welcome_message"]["text"], "Welcome");
    assert!(
        page["paging"].get("next").is_none(),
        "no next on the last page"
    );
    let mut one: Value = app.get_json(&format!("/v1/leads/{}", lead["id"])).await;
    // One lead is the list's lead, plus what was reported to Meta and what Meta detected.
    let fields = one.as_object_mut().unwrap();
    assert_eq!(fields.remove("conversions"), Some(Value::Array(vec![])));
    assert_eq!(fields.remove("detected_events"), Some(Value::Array(vec![])));
    assert_eq!(&one, lead);
}

#[tokio::test]
async fn paging_visits_every_lead_once_even_while_leads_arrive() {
    let app = spawn_app().await;
    for i in 0..7 {
        assert_eq!(app.deliver(&one_lead(&format!("p{i}"))).await.status(), 200);
    }
    let mut seen = Vec::new();
    let mut url = app.url("/v1/leads?limit=2&source_id=AD1");
    let mut pages = 0;
    loop {
        let page: Value = app
            .client
            .get(&url)
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pages += 1;
        for l in page["data"].as_array().unwrap() {
            seen.push(l["wamid"].as_str().unwrap().to_owned());
        }
        // New leads land between page fetches.
        assert_eq!(
            app.deliver(&one_lead(&format!("new{pages}")))
                .await
                .status(),
            200
        );
        match page["paging"]["next"].as_str() {
            Some(next) => {
                assert!(
                    next.contains("limit=2") && next.contains("source_id=AD1"),
                    "{next}"
                );
                assert_eq!(
                    page["paging"]["cursors"]["after"]
                        .as_str()
                        .map(|a| next.contains(a)),
                    Some(true)
                );
                assert!(
                    next.starts_with("/v1/leads?"),
                    "relative by default: {next}"
                );
                url = app.url(next);
            }
            None => {
                assert!(page["paging"]["cursors"].get("after").is_none());
                break;
            }
        }
        assert!(pages < 20, "paging does not end");
    }
    let unique: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "duplicates in {seen:?}");
    for i in 0..7 {
        assert!(
            unique.contains(&format!("p{i}")),
            "p{i} skipped in {seen:?}"
        );
    }
    assert_eq!(pages, 4);
}

#[tokio::test]
async fn every_v1_route_needs_the_bearer_token() {
    let app = spawn_app().await;
    for path in [
        "/v1/leads",
        "/v1/leads/1",
        "/v1/leads/export",
        "/v1/leads/stats",
    ] {
        let none = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(none.status(), 401, "{path}");
        let err: Value = none.json().await.unwrap();
        assert_eq!(err["error"]["code"], 401);
        let wrong = app
            .client
            .get(app.url(path))
            .bearer_auth("not-it")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
        let basic = app
            .client
            .get(app.url(path))
            .header("authorization", format!("Basic {API_TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(basic.status(), 401, "{path}");
    }
}

#[tokio::test]
async fn unknown_lead_is_404() {
    let app = spawn_app().await;
    for id in ["999", "abc"] {
        let res = app.get(&format!("/v1/leads/{id}")).send().await.unwrap();
        assert_eq!(res.status(), 404, "{id}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["type"], "not_found");
    }
}

#[tokio::test]
async fn bad_parameters_get_400_naming_them() {
    let app = spawn_app().await;
    let cases = [
        ("/v1/leads?limit=0", "limit"),
        ("/v1/leads?limit=501", "limit"),
        ("/v1/leads?limit=ten", "limit"),
        ("/v1/leads?since=yesterday", "since"),
        ("/v1/leads?until=2024-13-01", "until"),
        ("/v1/leads?after=garbage!", "after"),
        ("/v1/leads?after=-5.-5", "after"),
        ("/v1/leads/export?format=xml", "format"),
        ("/v1/leads/stats?since=soon", "since"),
        ("/v1/leads/export?until=x", "until"),
    ];
    for (path, name) in cases {
        let res = app.get(path).send().await.unwrap();
        assert_eq!(res.status(), 400, "{path}");
        let err: Value = res.json().await.unwrap();
        assert!(
            err["error"]["message"].as_str().unwrap().contains(name),
            "{path}: {err}"
        );
    }
}

#[tokio::test]
async fn an_erasure_of_a_malformed_id_gets_400_naming_it_and_removes_nothing() {
    let app = spawn_app().await;
    let body = one_lead("wamid.kept");
    assert_eq!(app.deliver(&body).await.status(), 200);
    for path in [
        "/v1/contacts/%00",
        "/v1/contacts/49151%0A00",
        "/v1/contacts/%094915100000001",
        "/v1/contacts/%20%20",
        "/v1/contacts/%FF",
    ] {
        let res = app.delete(path).await;
        assert_eq!(res.status(), 400, "{path}");
        let err: Value = res.json().await.unwrap();
        assert!(
            err["error"]["message"].as_str().unwrap().contains("id"),
            "{path}: {err}"
        );
    }
    let leads = app.get_json("/v1/leads").await;
    assert_eq!(leads["data"].as_array().unwrap().len(), 1, "{leads}");
}

#[tokio::test]
async fn csv_export_round_trips_awkward_names() {
    let app = spawn_app().await;
    let awkward = "Smith, \"Jo\"\nsecond line";
    let body = delivery(value(
        "PN1",
        json!([contact("4911", awkward)]),
        json!([referral_message("w.csv", "4911", "AD1")]),
    ));
    assert_eq!(app.deliver(&body).await.status(), 200);
    assert_eq!(app.deliver(&one_lead("w.other")).await.status(), 200);
    let res = app.get("/v1/leads/export?format=csv").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let disposition = res.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        disposition.starts_with("attachment; filename=\"leads-") && disposition.ends_with(".csv\"")
    );
    let text = res.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    assert_eq!(headers.len(), 24);
    for col in [
        "wamid",
        "profile_name",
        "source_id",
        "ctwa_clid",
        "ref",
        "welcome_message",
        "received_at",
    ] {
        assert!(headers.iter().any(|h| h == col), "{col}");
    }
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(records.len(), 2);
    let name_col = headers.iter().position(|h| h == "profile_name").unwrap();
    let wamid_col = headers.iter().position(|h| h == "wamid").unwrap();
    let row = records.iter().find(|r| &r[wamid_col] == "w.csv").unwrap();
    assert_eq!(&row[name_col], awkward);
}

#[tokio::test]
async fn ndjson_export_has_one_line_per_matching_lead() {
    let app = spawn_app().await;
    seed(&app).await;
    let text = app
        .get("/v1/leads/export?format=ndjson&ref=r1")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["referral"]["ref"] == "r1"));
    let all = app
        .get("/v1/leads/export?format=ndjson")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(all.lines().count(), 5);
}

#[tokio::test]
async fn export_streams_past_one_page() {
    let app = spawn_app().await;
    let messages: Vec<Value> = (0..2500)
        .map(|i| referral_message(&format!("bulk{i}"), "4911", "AD1"))
        .collect();
    let body = delivery(value(
        "PN1",
        json!([contact("4911", "Bulk")]),
        Value::Array(messages),
    ));
    assert_eq!(app.deliver(&body).await.status(), 200);
    let text = app
        .get("/v1/leads/export?format=csv")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let ids: BTreeSet<String> = reader.records().map(|r| r.unwrap()[1].to_owned()).collect();
    assert_eq!(ids.len(), 2500);
}

#[tokio::test]
async fn stats_count_leads_per_ad_and_day() {
    let app = spawn_app().await;
    seed(&app).await;
    let stats: Value = app.get_json("/v1/leads/stats").await;
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let mut got: Vec<(String, i64)> = stats["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["day"], today.as_str());
            (
                r["source_id"].as_str().unwrap().to_owned(),
                r["leads"].as_i64().unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [("AD1".into(), 2), ("AD2".into(), 2), ("AD3".into(), 1)]
    );
    let filtered: Value = app.get_json("/v1/leads/stats?waba_id=WA2").await;
    assert_eq!(filtered["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn openapi_lists_every_route() {
    let app = spawn_app().await;
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let expected = [
        ("/webhook", "get"),
        ("/webhook", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/v1/leads", "get"),
        ("/v1/leads/{id}", "get"),
        ("/v1/leads/export", "get"),
        ("/v1/leads/stats", "get"),
        ("/v1/welcome_message_sequences", "get"),
        ("/v1/welcome_message_sequences", "post"),
        ("/v1/welcome_message_sequences", "delete"),
        ("/v1/message_templates", "get"),
        ("/v1/message_templates", "post"),
        ("/v1/message_templates", "delete"),
        ("/v1/leads/{id}/conversions", "post"),
        ("/v1/conversions", "post"),
        ("/v1/conversions", "get"),
        ("/v1/dataset", "post"),
    ];
    for (path, method) in expected {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from /openapi.json"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn every_single_filter_page_is_index_backed() {
    let app = spawn_app().await;
    let set = |f: fn(&mut LeadFilter)| {
        let mut filter = LeadFilter::default();
        f(&mut filter);
        filter
    };
    // Each filter, and the index its page must walk (not merely some index: a walk of
    // `leads_received_at` filtering row by row would pass "USING INDEX" and read the table).
    let filters = [
        (set(|_| {}), "leads_received_at"),
        (set(|f| f.source_id = Some("x".into())), "leads_source_id"),
        (
            set(|f| f.ctwa_clid = Some("ARAk-a-click-id-longer-than-its-tail".into())),
            "leads_ctwa_clid_tail_by_range",
        ),
        (set(|f| f.ref_ = Some("x".into())), "leads_ref"),
        (
            set(|f| f.source_type = Some("x".into())),
            "leads_source_type",
        ),
        (set(|f| f.wa_id = Some("x".into())), "leads_wa_id_by_range"),
        (
            set(|f| f.user_id = Some("x".into())),
            "leads_user_id_by_range",
        ),
        (
            set(|f| f.phone_number_id = Some("x".into())),
            "leads_phone_number_id",
        ),
        (set(|f| f.waba_id = Some("x".into())), "leads_waba_id"),
        (set(|f| f.since_ms = Some(0)), "leads_received_at"),
        (set(|f| f.until_ms = Some(0)), "leads_received_at"),
    ];
    let cursor = Some(ctwa_leads::store::leads::Cursor {
        received_at_ms: 1,
        id: 1,
    });
    // Once without statistics (a new database), once after ANALYZE over leads whose click ids
    // are Meta-length, as an operator's `sqlite3 … ANALYZE` or a later `PRAGMA optimize` would
    // leave them: the planner must still search each filter's index, not scan.
    let outside = app.outside_pool().await;
    for analyzed in [false, true] {
        if analyzed {
            sqlx::query(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000)
                 INSERT INTO leads (wamid, event_id, received_at, source_id, source_type,
                    ctwa_clid, ref, wa_id, user_id, phone_number_id, waba_id)
                 SELECT 'w.' || x, 0, x, 'AD' || (x % 50), 'ad',
                    'ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7JwFF4XvnO2E4-' || x,
                    'ref', '49' || x, 'US.' || x, 'PN', 'WABA' FROM c",
            )
            .execute(&outside)
            .await
            .unwrap();
            sqlx::query("ANALYZE").execute(&outside).await.unwrap();
        }
        let pool = if analyzed {
            // A new pool: it reads the statistics when it first loads the schema.
            app.outside_pool().await
        } else {
            app.store.read_pool().clone()
        };
        for (filter, index) in &filters {
            for before in [None, cursor] {
                let plan = page_plan(&pool, filter, before).await.unwrap().join(" | ");
                assert!(
                    plan.contains(&format!("USING INDEX {index} "))
                        || plan.ends_with(&format!("USING INDEX {index}"))
                        || plan.contains(&format!("USING COVERING INDEX {index}")),
                    "{filter:?} (analyzed: {analyzed}) should walk {index}: {plan}"
                );
                let filtered = !matches!(*index, "leads_received_at") || before.is_some();
                assert!(
                    !filtered || plan.starts_with("SEARCH leads"),
                    "{filter:?} (analyzed: {analyzed}) scans: {plan}"
                );
                // A contact key's matches (one contact's leads, gathered from every id range)
                // are sorted; everywhere else, a page walks its index in order and never sorts.
                let contact = index.ends_with("_by_range");
                assert!(
                    !plan.contains("TEMP B-TREE") || contact,
                    "{filter:?} (analyzed: {analyzed}) sorts: {plan}"
                );
            }
        }
    }
}

#[tokio::test]
async fn csv_export_neutralises_formulas_and_json_stays_exact() {
    let app = spawn_app().await;
    let formula = "=HYPERLINK(\"http://evil\",\"click\")";
    let mut message = referral_message("w.formula", "4912", "AD1");
    message["text"]["body"] = json!("+49 call me");
    message["referral"]["headline"] = json!("@SUM(A1:A9)");
    let body = delivery(value(
        "PN1",
        json!([contact("4912", formula)]),
        json!([message]),
    ));
    assert_eq!(app.deliver(&body).await.status(), 200);
    let text = app
        .get("/v1/leads/export?format=csv")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("\r\n"), "RFC 4180 line endings");
    assert!(!text.replace("\r\n", "").contains('\n'), "no bare LF");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let row = reader.records().next().unwrap().unwrap();
    assert_eq!(&row[col("profile_name")], format!("'{formula}"));
    assert_eq!(&row[col("text")], "'+49 call me");
    assert_eq!(&row[col("headline")], "'@SUM(A1:A9)");
    assert_eq!(&row[col("wamid")], "w.formula");
    let lines = app
        .get("/v1/leads/export?format=ndjson")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lead: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(lead["profile_name"], formula, "NDJSON is exact");
    assert_eq!(lead["text"], "+49 call me");
}

#[tokio::test]
async fn erasing_a_contact_removes_their_leads_and_every_raw_delivery_that_mentions_them() {
    // Keep every raw delivery, so the status update below is stored to be erased.
    let app = spawn_with(|s| s.retention.keep_raw = ctwa_leads::config::KeepRaw::All).await;
    // A batch: Ana's and Bo's leads in one delivery.
    let batch = batch_of_two(
        ("4915100000077", "Ana Erase", "w.ana"),
        ("4915100000088", "Bo Keep", "w.bo"),
    );
    assert_eq!(app.deliver(&batch).await.status(), 200);
    // A status update addressed to Ana: no lead, but it names her.
    let status = delivery(
        json!({"statuses": [{"id": "wamid.st", "status": "read", "recipient_id": "4915100000077"}]}),
    );
    assert_eq!(app.deliver(&status).await.status(), 200);
    // A BSUID-only lead, and an unrelated delivery whose number merely contains Ana's.
    let bsuid = delivery(json!({
        "contacts": [{"profile": {"name": "Cy"}, "user_id": "US.erase.1"}],
        "messages": [{"from_user_id": "US.erase.1", "id": "w.cy", "type": "text", "referral": {"source_id": "AD2"}}]
    }));
    assert_eq!(app.deliver(&bsuid).await.status(), 200);
    let unrelated = one_lead("w.other");
    let unrelated = String::from_utf8(unrelated)
        .unwrap()
        .replace("4915100000001", "49151000000770");
    assert_eq!(app.deliver(unrelated.as_bytes()).await.status(), 200);
    assert_eq!(app.event_count().await, 4);

    let res = app.delete("/v1/contacts/4915100000077").await;
    assert_eq!(res.status(), 200);
    let erasure: Value = res.json().await.unwrap();
    assert_eq!(erasure["status"], "done");
    assert_eq!(
        erasure_counts(&erasure),
        json!({"leads": 1, "raw_deliveries": 2, "unreadable_raw_deliveries": 0})
    );
    assert!(erasure["finished_at"].is_string(), "{erasure}");
    assert!(
        !erasure.to_string().contains("4915100000077"),
        "the request never names the person"
    );
    let recorded = app
        .get_json(&format!("/v1/erasures/{}", erasure["id"]))
        .await;
    assert_eq!(recorded, erasure, "the request's record is kept");
    assert!(app.lead("w.ana").await.is_none());
    assert!(
        app.lead("w.bo").await.is_some(),
        "the batch's other lead stays"
    );
    assert!(app.lead("w.other").await.is_some());
    assert_eq!(app.event_count().await, 2);

    assert_eq!(
        app.erase("US.erase.1").await,
        json!({"leads": 1, "raw_deliveries": 1, "unreadable_raw_deliveries": 0})
    );
    assert!(app.lead("w.cy").await.is_none());
    // Nothing left: zero counts, still 200.
    assert_eq!(
        app.erase("4915100000077").await,
        json!({"leads": 0, "raw_deliveries": 0, "unreadable_raw_deliveries": 0})
    );
    if let Some(logs) = captured_logs() {
        let audit: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("erasure request carried out"))
            .collect();
        assert!(audit.len() >= 3, "one audit line per erasure");
        for line in audit {
            assert!(
                !line.contains("4915100000077") && !line.contains("US.erase.1"),
                "{line}"
            );
        }
    }
    let res = app
        .client
        .delete(app.url("/v1/contacts/4915100000088"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "bearer-protected");
}

#[tokio::test]
async fn an_unreadable_raw_delivery_does_not_block_an_erasure_and_is_counted() {
    let app = spawn_app().await;
    for (wamid, other) in [("w.fa1", "w.gu"), ("w.fa2", "w.ha")] {
        let batch = batch_of_two(
            ("4915100000055", "Fa Erase", wamid),
            ("4915100000044", "Gu Keep", other),
        );
        assert_eq!(app.deliver(&batch).await.status(), 200);
    }
    app.settle().await;
    // The second entry's body no longer unpacks (a damaged page, or a codec of a later
    // version after a downgrade): this build cannot tell whether it names Fa.
    let log = app.outside_log().await;
    let damaged: i64 = sqlx::query_scalar("SELECT MAX(id) FROM log")
        .fetch_one(&log)
        .await
        .unwrap();
    sqlx::query("UPDATE log SET body = x'00010203' WHERE id = ?")
        .bind(damaged)
        .execute(&log)
        .await
        .unwrap();
    assert_eq!(
        app.erase("4915100000055").await,
        json!({"leads": 2, "raw_deliveries": 1, "unreadable_raw_deliveries": 1}),
        "the rest of the erasure is carried out"
    );
    assert!(app.lead("w.fa1").await.is_none() && app.lead("w.fa2").await.is_none());
    assert!(app.lead("w.ha").await.is_some());
    assert_eq!(app.event_count().await, 1, "the unreadable entry is kept");
    if let Some(logs) = captured_logs() {
        assert!(
            logs.lines()
                .any(|l| l.contains("could not read") && l.contains(&format!("entry={damaged}"))),
            "the entry is named for the operator"
        );
    }
}

#[tokio::test]
async fn an_erasure_right_after_a_delivery_waits_for_its_projection() {
    // The projector waits a second for company before its round, so the batch below is still in
    // the writer's hand-off, not yet a lead, when the erasure comes.
    let app = spawn_with(|s| s.ingest.projection_pace_ms = 1000).await;
    let batch = batch_of_two(
        ("4915100000066", "Di Erase", "w.di"),
        ("4915100000099", "Ed Keep", "w.ed"),
    );
    assert_eq!(app.deliver_no_wait(&batch).await.status(), 200);
    assert_eq!(app.lead_count().await, 0, "acknowledged, not yet projected");
    assert_eq!(
        app.erase("4915100000066").await,
        json!({"leads": 1, "raw_deliveries": 1, "unreadable_raw_deliveries": 0}),
        "the lead acknowledged before the erasure is counted and removed"
    );
    app.settle().await;
    assert!(
        app.lead("w.di").await.is_none(),
        "not built again from the hand-off after the erasure"
    );
    assert!(
        app.lead("w.ed").await.is_some(),
        "the batch's other lead is kept"
    );
    assert_eq!(app.event_count().await, 0, "the raw batch is gone");
}

/// Polls `GET {location}` until the erasure request is done; its record.
async fn erasure_done(app: &TestApp, location: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let erasure = app.get_json(location).await;
        if erasure["status"] == "done" {
            return erasure;
        }
        assert_eq!(erasure["status"], "pending", "{erasure}");
        assert!(
            std::time::Instant::now() < deadline,
            "the erasure was not done: {erasure}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_erasure_that_outlasts_its_request_is_answered_202_and_done_behind_it() {
    let app = spawn_with(|s| s.server.request_timeout_secs = 1).await;
    assert_eq!(app.deliver(&one_lead("w.slow")).await.status(), 200);
    // Another writer holds the log's write lock past the request's time, so the erasure
    // cannot remove the raw delivery it found.
    let log = app.outside_log().await;
    let mut held = log.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *held)
        .await
        .unwrap();
    let res = app
        .client
        .delete(app.url("/v1/contacts/4915100000001"))
        .bearer_auth(API_TOKEN)
        .header("x-request-id", "erasure-outlasted-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let accepted: Value = res.json().await.unwrap();
    assert_eq!(location, format!("/v1/erasures/{}", accepted["id"]));
    assert_eq!(accepted["status"], "pending", "{accepted}");
    assert_eq!(accepted["finished_at"], Value::Null);
    assert_eq!(
        accepted["attempts"], 1,
        "under way, as it stands: {accepted}"
    );
    assert!(app.lead("w.slow").await.is_some(), "nothing removed yet");
    sqlx::query("COMMIT").execute(&mut *held).await.unwrap();
    drop(held);

    let done = erasure_done(&app, &location).await;
    assert_eq!(
        erasure_counts(&done),
        json!({"leads": 1, "raw_deliveries": 1, "unreadable_raw_deliveries": 0})
    );
    assert!(app.lead("w.slow").await.is_none());
    assert_eq!(app.event_count().await, 0);
    if let Some(logs) = captured_logs() {
        // The request's line ties its request id to the erasure's, whose audit line follows.
        let erasure = format!("erasure={}", accepted["id"]);
        assert!(
            logs.lines()
                .any(|l| l.contains("request_id=erasure-outlasted-1")
                    && l.contains("erasure requested")
                    && l.contains(&erasure)),
            "the request is logged with its erasure's id"
        );
        assert!(
            logs.lines()
                .any(|l| l.contains("erasure request carried out") && l.contains(&erasure)),
            "an audit line for the erasure"
        );
    }
}

#[tokio::test]
async fn an_erasure_while_the_projection_fails_waits_for_it_and_is_done_once_it_recovers() {
    let app = spawn_app().await;
    // Break the read side: the projector's rounds fail, the log keeps acknowledging.
    let pool = app.break_leads_table().await;
    assert_eq!(
        app.deliver_no_wait(&one_lead("w.stuck")).await.status(),
        200
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.get_json("/readyz").await["projection"]["failing"] != true {
        assert!(
            std::time::Instant::now() < deadline,
            "the projector never failed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let res = app.delete("/v1/contacts/4915100000001").await;
    assert_eq!(res.status(), 202, "recorded, to be done when it can be");
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let pending: Value = res.json().await.unwrap();
    assert_eq!(pending["status"], "pending");
    assert!(
        pending["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("projection")),
        "says what it waits for: {pending}"
    );
    assert_eq!(
        app.event_count().await,
        1,
        "the raw delivery is not touched while its lead is not built"
    );
    assert_eq!(
        app.listed_ids("/v1/erasures?status=pending").await,
        [pending["id"].as_i64().unwrap()],
        "found among the pending ones"
    );

    mend_leads_table(&pool).await;
    let done = erasure_done(&app, &location).await;
    assert_eq!(
        erasure_counts(&done),
        json!({"leads": 1, "raw_deliveries": 1, "unreadable_raw_deliveries": 0}),
        "once the projection recovers, both are removed"
    );
    assert!(done["attempts"].as_i64().unwrap() > 1, "{done}");
    assert_eq!(done["last_error"], Value::Null);
    assert!(app.lead("w.stuck").await.is_none());
}

#[tokio::test]
async fn an_erasure_pending_at_shutdown_is_done_after_the_restart() {
    let app = spawn_app().await;
    assert_eq!(app.deliver(&one_lead("w.later")).await.status(), 200);
    // The projector fails, so the erasure cannot be done before the shutdown.
    let pool = app.break_leads_table().await;
    assert_eq!(app.deliver_no_wait(&one_lead("w.more")).await.status(), 200);
    let res = app.delete("/v1/contacts/4915100000001").await;
    assert_eq!(res.status(), 202);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let app = app.restart().await;
    assert_eq!(app.get_json(&location).await["status"], "pending");
    // Mended only now, so the erasure is done by the new instance, from the recorded request.
    mend_leads_table(&pool).await;
    let done = erasure_done(&app, &location).await;
    assert_eq!(
        erasure_counts(&done),
        json!({"leads": 2, "raw_deliveries": 2, "unreadable_raw_deliveries": 0}),
        "resumed from the recorded request"
    );
    assert!(app.lead("w.later").await.is_none() && app.lead("w.more").await.is_none());
    assert_eq!(app.event_count().await, 0);
}

#[tokio::test]
async fn erasure_requests_are_listed_newest_first_filtered_and_paged() {
    let app = spawn_app().await;
    let first = app.erase("4915100000001").await;
    let second = app.erase("4915100000002").await;
    assert_eq!(first, second, "zero counts both");
    assert_eq!(app.listed_ids("/v1/erasures").await, [2, 1], "newest first");
    assert_eq!(app.listed_ids("/v1/erasures?status=done").await, [2, 1]);
    assert!(app
        .listed_ids("/v1/erasures?status=pending")
        .await
        .is_empty());
    let page = app.get_json("/v1/erasures?limit=1").await;
    assert_eq!(page["data"][0]["id"], 2);
    let next = page["paging"]["next"].as_str().expect("a next page");
    let rest = app.get_json(next).await;
    assert_eq!(rest["data"][0]["id"], 1);
    assert_eq!(rest["paging"]["next"], Value::Null);
    for bad in ["status=gone", "limit=0", "after=x", "wa_id=4915100000001"] {
        let res = app
            .get(&format!("/v1/erasures?{bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn a_shutdown_does_not_wait_for_an_erasure_waiting_for_the_projection() {
    // A projection round every 30 s: the erasure below waits for it (up to 10 s an attempt).
    let mut app = spawn_with(|s| {
        s.ingest.projection_pace_ms = 30_000;
        s.server.request_timeout_secs = 1;
    })
    .await;
    assert_eq!(
        app.deliver_no_wait(&one_lead("w.paced")).await.status(),
        200
    );
    let res = app.delete("/v1/contacts/4915100000001").await;
    assert_eq!(res.status(), 202);
    let started = std::time::Instant::now();
    app.stop().await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "the shutdown took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_unknown_erasure_request_is_404() {
    let app = spawn_app().await;
    for path in ["/v1/erasures/7", "/v1/erasures/x", "/v1/erasures/-1"] {
        let res = app.get(path).send().await.unwrap();
        assert_eq!(res.status(), 404, "{path}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["type"], "not_found", "{err}");
    }
    let res = app
        .client
        .get(app.url("/v1/erasures/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "bearer-protected");
}

#[tokio::test]
async fn a_contacts_leads_are_found_paged_and_erased_across_id_ranges() {
    let app = spawn_app().await;
    // One contact's leads in three id ranges of the contact indexes (16,384 ids each), their
    // received times out of id order, between other people's leads.
    let outside = app.outside_pool().await;
    for (id, wamid, wa_id, received_at) in [
        (5, "w.a", "4917", 3_000),
        (70_000, "w.b", "4917", 1_000),
        (70_001, "w.other", "4918", 4_000),
        (200_000, "w.c", "4917", 2_000),
        (200_001, "w.d", "4917", 5_000),
    ] {
        sqlx::query(
            "INSERT INTO leads (id, wamid, event_id, received_at, wa_id, user_id, ctwa_clid)
             VALUES (?1, ?2, 0, ?3, ?4, 'US.' || ?4, 'ARAk-click-' || ?2)",
        )
        .bind(id)
        .bind(wamid)
        .bind(received_at)
        .bind(wa_id)
        .execute(&outside)
        .await
        .unwrap();
    }
    let newest_first = ["w.d", "w.a", "w.c", "w.b"];
    for key in ["wa_id=4917", "user_id=US.4917"] {
        assert_eq!(wamids(&app, key).await, newest_first, "{key}");
        let mut path = format!("/v1/leads?{key}&limit=3");
        let mut seen = Vec::new();
        loop {
            let page: Value = app.get_json(&path).await;
            for l in page["data"].as_array().unwrap() {
                seen.push(l["wamid"].as_str().unwrap().to_owned());
            }
            match page["paging"]["next"].as_str() {
                Some(next) => path = next.to_owned(),
                None => break,
            }
        }
        assert_eq!(seen, newest_first, "{key}, paged");
    }
    assert_eq!(wamids(&app, "ctwa_clid=ARAk-click-w.b").await, ["w.b"]);
    assert_eq!(
        wamids(&app, "wa_id=4917&user_id=US.4918").await,
        Vec::<String>::new()
    );
    let res = app.delete("/v1/contacts/US.4917").await;
    assert_eq!(res.status(), 200);
    let erased: Value = res.json().await.unwrap();
    assert_eq!(erased["leads"], 4);
    assert!(wamids(&app, "wa_id=4917").await.is_empty());
    assert_eq!(wamids(&app, "").await, ["w.other"]);
}
