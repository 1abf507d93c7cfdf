//! The Graph proxy, against wiremock: what reaches Graph (method, path, query, body, token),
//! what comes back, Graph's errors passed through, local validation, and transport failures.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use wiremock::matchers::{
    any, bearer_token, body_json, method, path, query_param, query_param_is_missing,
};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::*;

const SEQ_PATH: &str = "/v21.0/102290129340398/welcome_message_sequences";
const TPL_PATH: &str = "/v21.0/102290129340398/message_templates";

fn graph_error(code: i64, subcode: Option<i64>, message: &str) -> Value {
    let mut e = json!({"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "AbCdEf123"});
    if let Some(s) = subcode {
        e["error_subcode"] = json!(s);
    }
    json!({"error": e})
}

/// The fields of a multipart/form-data body, in order.
fn form_fields(content_type: &str, body: &[u8]) -> Vec<(String, String)> {
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .expect("a boundary")
        .trim_matches('"');
    let text = String::from_utf8(body.to_vec()).unwrap();
    text.split(&format!("--{boundary}"))
        .filter_map(|part| {
            let (head, value) = part.split_once("\r\n\r\n")?;
            let name = head.split("name=\"").nth(1)?.split('"').next()?.to_owned();
            Some((name, value.trim_end_matches("\r\n").to_owned()))
        })
        .collect()
}

async fn no_graph_calls(app: &TestApp) {
    Mock::given(any())
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&app.graph)
        .await;
}

#[tokio::test]
async fn creating_a_sequence_forwards_a_form_with_the_sequence_as_a_json_string() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .and(path(SEQ_PATH))
        .and(bearer_token(GRAPH_TOKEN))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"sequence_id": "186473890"})))
        .expect(1)
        .mount(&app.graph)
        .await;
    let seq = json!({"text": "Welcome", "autofill_message": {"content": "Hello!"}, "ice_breakers": [{"title": "Quick reply 1"}]});
    let res = app
        .post_json(
            "/v1/welcome_message_sequences",
            &json!({"name": "Driver sign-up", "welcome_message_sequence": seq}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"sequence_id": "186473890"})
    );
    let requests = app.graph.received_requests().await.unwrap();
    let req = &requests[0];
    let ct = req.headers.get("content-type").unwrap().to_str().unwrap();
    assert!(ct.starts_with("multipart/form-data"), "{ct}");
    let fields = form_fields(ct, &req.body);
    assert_eq!(fields[0], ("name".into(), "Driver sign-up".into()));
    assert_eq!(fields[1].0, "welcome_message_sequence");
    assert_eq!(serde_json::from_str::<Value>(&fields[1].1).unwrap(), seq);
}

#[tokio::test]
async fn updating_a_sequence_forwards_its_id_and_the_changed_fields() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .and(path(SEQ_PATH))
        .and(bearer_token(GRAPH_TOKEN))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"success": true})))
        .expect(1)
        .mount(&app.graph)
        .await;
    let res = app
        .post_json(
            "/v1/welcome_message_sequences",
            &json!({"sequence_id": "186473890", "name": "Driver sign-up updated name"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"success": true}));
    let req = &app.graph.received_requests().await.unwrap()[0];
    let fields = form_fields(
        req.headers.get("content-type").unwrap().to_str().unwrap(),
        &req.body,
    );
    assert_eq!(
        fields,
        [
            ("sequence_id".into(), "186473890".into()),
            ("name".into(), "Driver sign-up updated name".into())
        ]
    );
}

#[tokio::test]
async fn listing_sequences_passes_the_bare_array_through() {
    let app = spawn_app().await;
    let list = json!([{"sequence_id": "6987565", "name": "Driver Sign up", "welcome_message_sequence": "{}", "is_used_in_ad": false}]);
    Mock::given(method("GET"))
        .and(path(SEQ_PATH))
        .and(bearer_token(GRAPH_TOKEN))
        .and(query_param("sequence_id", "6987565"))
        .and(query_param("limit", "5"))
        .respond_with(ResponseTemplate::new(200).set_body_json(list.clone()))
        .expect(1)
        .mount(&app.graph)
        .await;
    let res = app
        .get("/v1/welcome_message_sequences?sequence_id=6987565&limit=5")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), list);
}

#[tokio::test]
async fn deleting_a_sequence_forwards_its_id_and_requires_it() {
    let app = spawn_app().await;
    Mock::given(method("DELETE"))
        .and(path(SEQ_PATH))
        .and(bearer_token(GRAPH_TOKEN))
        .and(query_param("sequence_id", "1234567890"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"success": true})))
        .expect(1)
        .mount(&app.graph)
        .await;
    let ok = app
        .delete("/v1/welcome_message_sequences?sequence_id=1234567890")
        .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.unwrap(), json!({"success": true}));
    let missing = app.delete("/v1/welcome_message_sequences").await;
    assert_eq!(missing.status(), 400);
    let err: Value = missing.json().await.unwrap();
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("sequence_id"));
}

#[tokio::test]
async fn every_seed_sequence_error_code_is_passed_through_intact() {
    let app = spawn_app().await;
    for (code, status) in [
        (4027001, 400),
        (4027005, 400),
        (4027006, 400),
        (4027007, 503),
        (4027010, 400),
        (4027012, 400),
        (4027017, 404),
    ] {
        app.graph.reset().await;
        let err = graph_error(code, Some(2494010), "sequence error");
        Mock::given(method("DELETE"))
            .and(path(SEQ_PATH))
            .respond_with(ResponseTemplate::new(status).set_body_json(err.clone()))
            .mount(&app.graph)
            .await;
        let res = app
            .delete("/v1/welcome_message_sequences?sequence_id=1")
            .await;
        assert_eq!(res.status(), status, "{code}");
        assert_eq!(res.json::<Value>().await.unwrap(), err, "{code}");
    }
}

#[tokio::test]
async fn sequence_validation_failures_make_no_graph_call() {
    let app = spawn_app().await;
    no_graph_calls(&app).await;
    let cases = [
        (json!({"welcome_message_sequence": {"text": "x"}}), "name"),
        (json!({"name": "x"}), "welcome_message_sequence"),
        (
            json!({"sequence_id": "1"}),
            "name or welcome_message_sequence",
        ),
        (
            json!({"name": "x", "welcome_message_sequence": {"text": 1}}),
            "welcome_message_sequence.text",
        ),
        (
            json!({"name": "x", "welcome_message_sequence": {"autofill_message": {"content": 3}}}),
            "autofill_message.content",
        ),
        (
            json!({"name": "x", "welcome_message_sequence": {"ice_breakers": [{"title": "1"}, {"title": "2"}, {"title": "3"}, {"title": "4"}]}}),
            "ice_breakers",
        ),
        (
            json!({"name": "x", "welcome_message_sequence": {"ice_breakers": [{}]}}),
            "ice_breakers[0].title",
        ),
        (json!({"name": "", "welcome_message_sequence": {}}), "name"),
    ];
    for (body, field) in cases {
        let res = app.post_json("/v1/welcome_message_sequences", &body).await;
        assert_eq!(res.status(), 400, "{body}");
        let err: Value = res.json().await.unwrap();
        assert!(
            err["error"]["message"].as_str().unwrap().contains(field),
            "{body}: {err}"
        );
        assert_eq!(err["error"]["code"], 400);
    }
    let not_json = app
        .client
        .post(app.url("/v1/welcome_message_sequences"))
        .bearer_auth(API_TOKEN)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    let bad_limit = app
        .get("/v1/welcome_message_sequences?limit=0")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_limit.status(), 400);
    app.graph.verify().await;
}

#[tokio::test]
async fn listing_templates_forwards_filters_and_paging_and_passes_data_paging_summary() {
    let app = spawn_app().await;
    let answer = json!({"data": [{"name": "order_delivery_update", "language": "en_US", "status": "APPROVED", "category": "UTILITY", "id": "1667192013751005"}],
        "paging": {"cursors": {"before": "MAZDZD", "after": "MjQZD"}}, "summary": {"total_count": 1}});
    Mock::given(method("GET"))
        .and(path(TPL_PATH))
        .and(bearer_token(GRAPH_TOKEN))
        .and(query_param("category", "UTILITY,MARKETING"))
        .and(query_param("status", "APPROVED"))
        .and(query_param("quality_score", "GREEN"))
        .and(query_param("language", "en_US"))
        .and(query_param("name_or_content", "order"))
        .and(query_param("limit", "10"))
        .and(query_param("after", "MjQZD"))
        .and(query_param("summary", "total_count"))
        .and(query_param("fields", "name,status"))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer.clone()))
        .expect(1)
        .mount(&app.graph)
        .await;
    let res = app.get("/v1/message_templates?category=UTILITY,MARKETING&status=APPROVED&quality_score=GREEN&language=en_US&name_or_content=order&limit=10&after=MjQZD&summary=total_count&fields=name,status").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), answer);
}

#[tokio::test]
async fn template_list_enums_are_checked_without_a_graph_call() {
    let app = spawn_app().await;
    no_graph_calls(&app).await;
    for (query, field) in [
        ("category=PROMO", "category"),
        ("quality_score=BLUE", "quality_score"),
        ("status=LIVE", "status"),
        ("limit=-3", "limit"),
        ("colour=red", "colour"),
    ] {
        let res = app
            .get(&format!("/v1/message_templates?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{query}");
        let err: Value = res.json().await.unwrap();
        assert!(
            err["error"]["message"].as_str().unwrap().starts_with(field),
            "{err}"
        );
    }
    app.graph.verify().await;
}

fn template() -> Value {
    json!({"name": "seasonal_promotion", "language": "en", "category": "MARKETING", "allow_category_change": true, "components": [
        {"type": "HEADER", "format": "TEXT", "text": "Our {{1}} is on!", "example": {"header_text": ["Summer Sale"]}},
        {"type": "BODY", "text": "Shop now through {{1}} and use code {{2}}", "example": {"body_text": [["the end of August", "25OFF"]]}},
        {"type": "FOOTER", "text": "Use the buttons below to manage your marketing subscriptions"},
        {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Unsubcribe from Promos"}, {"type": "URL", "text": "Shop", "url": "https://example.com/{{1}}", "example": ["summer"]}]}]})
}

#[tokio::test]
async fn creating_a_template_forwards_the_json_body() {
    let app = spawn_app().await;
    let answer = json!({"id": "594425479261596", "status": "PENDING", "category": "MARKETING"});
    Mock::given(method("POST"))
        .and(path(TPL_PATH))
        .and(bearer_token(GRAPH_TOKEN))
        .and(body_json(template()))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer.clone()))
        .expect(1)
        .mount(&app.graph)
        .await;
    let res = app.post_json("/v1/message_templates", &template()).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), answer);
}

#[tokio::test]
async fn template_validation_failures_make_no_graph_call() {
    let app = spawn_app().await;
    no_graph_calls(&app).await;
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|t| t["name"] = json!("Seasonal-Promo")), "name"),
        (
            Box::new(|t| {
                t.as_object_mut().unwrap().remove("category");
            }),
            "category",
        ),
        (
            Box::new(|t| t["category"] = json!("PROMOTIONAL")),
            "category",
        ),
        (Box::new(|t| t["components"] = json!([])), "components"),
        (
            Box::new(|t| t["components"][0]["format"] = json!("GIF")),
            "components[0].format",
        ),
        (
            Box::new(|t| {
                t["components"][1].as_object_mut().unwrap().remove("text");
            }),
            "components[1].text",
        ),
        (
            Box::new(|t| t["components"][3]["buttons"][1]["type"] = json!("LINK")),
            "components[3].buttons[1].type",
        ),
        (
            Box::new(|t| t["message_send_ttl_seconds"] = json!(600)),
            "message_send_ttl_seconds",
        ),
    ];
    for (mutate, field) in cases {
        let mut body = template();
        mutate(&mut body);
        let res = app.post_json("/v1/message_templates", &body).await;
        assert_eq!(res.status(), 400, "{field}");
        let err: Value = res.json().await.unwrap();
        assert!(
            err["error"]["message"].as_str().unwrap().starts_with(field),
            "{field}: {err}"
        );
    }
    let no_name = app.delete("/v1/message_templates?hsm_id=1").await;
    assert_eq!(no_name.status(), 400);
    app.graph.verify().await;
}

#[tokio::test]
async fn deleting_a_template_forwards_name_and_optional_hsm_id() {
    let app = spawn_app().await;
    Mock::given(method("DELETE"))
        .and(path(TPL_PATH))
        .and(bearer_token(GRAPH_TOKEN))
        .and(query_param("name", "order_confirmation"))
        .and(query_param_is_missing("hsm_id"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"success": true})))
        .expect(1)
        .mount(&app.graph)
        .await;
    Mock::given(method("DELETE"))
        .and(path(TPL_PATH))
        .and(bearer_token(GRAPH_TOKEN))
        .and(query_param("name", "order_confirmation"))
        .and(query_param("hsm_id", "1667192013751005"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"success": true})))
        .expect(1)
        .mount(&app.graph)
        .await;
    for q in [
        "name=order_confirmation",
        "name=order_confirmation&hsm_id=1667192013751005",
    ] {
        let res = app.delete(&format!("/v1/message_templates?{q}")).await;
        assert_eq!(res.status(), 200, "{q}");
        assert_eq!(res.json::<Value>().await.unwrap(), json!({"success": true}));
    }
}

#[tokio::test]
async fn template_error_codes_are_passed_through_with_graphs_status() {
    let app = spawn_app().await;
    for (code, status, sub) in [(100, 400, Some(33)), (80008, 400, Some(2494049))] {
        app.graph.reset().await;
        let err = graph_error(code, sub, "template error");
        Mock::given(method("GET"))
            .and(path(TPL_PATH))
            .respond_with(ResponseTemplate::new(status).set_body_json(err.clone()))
            .mount(&app.graph)
            .await;
        let res = app.get("/v1/message_templates").send().await.unwrap();
        assert_eq!(res.status(), status, "{code}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body, err, "{code}");
        assert_eq!(body["error"]["code"], code);
        assert_eq!(body["error"]["fbtrace_id"], "AbCdEf123");
    }
}

#[tokio::test]
async fn without_the_token_nothing_reaches_graph() {
    let app = spawn_app().await;
    no_graph_calls(&app).await;
    let routes = [
        ("GET", "/v1/welcome_message_sequences"),
        ("POST", "/v1/welcome_message_sequences"),
        ("DELETE", "/v1/welcome_message_sequences?sequence_id=1"),
        ("GET", "/v1/message_templates"),
        ("POST", "/v1/message_templates"),
        ("DELETE", "/v1/message_templates?name=x"),
    ];
    for (m, p) in routes {
        let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
        let res = app
            .client
            .request(method.clone(), app.url(p))
            .json(&template())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{m} {p}");
        let wrong = app
            .client
            .request(method, app.url(p))
            .bearer_auth(GRAPH_TOKEN)
            .json(&template())
            .send()
            .await
            .unwrap();
        assert_eq!(
            wrong.status(),
            401,
            "{m} {p}: the Graph token is not an API token"
        );
    }
    app.graph.verify().await;
}

#[tokio::test]
async fn a_non_json_graph_answer_is_502_naming_the_status() {
    let app = spawn_app().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(500).set_body_string("<html>oops</html>"))
        .mount(&app.graph)
        .await;
    let res = app.get("/v1/message_templates").send().await.unwrap();
    assert_eq!(res.status(), 502);
    let err: Value = res.json().await.unwrap();
    assert!(
        err["error"]["message"].as_str().unwrap().contains("500"),
        "{err}"
    );
}

#[tokio::test]
async fn a_slow_graph_is_504_within_the_timeout() {
    let app = spawn_with(|s| s.graph.timeout_secs = 1).await;
    Mock::given(any())
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([]))
                .set_delay(Duration::from_secs(5)),
        )
        .mount(&app.graph)
        .await;
    let started = Instant::now();
    let res = app
        .get("/v1/welcome_message_sequences")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        started.elapsed()
    );
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["type"], "gateway_timeout");
}

/// A "Graph" that accepts connections and resets them at once, counting them.
async fn resetting_graph() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            // Dropping without answering closes the connection before any response.
            drop(socket);
        }
    });
    (format!("http://{addr}"), count)
}

#[tokio::test]
async fn a_reset_connection_is_502_and_only_a_get_is_retried() {
    let (url, attempts) = resetting_graph().await;
    let app = spawn_with(|s| s.graph.base_url = url.clone()).await;
    let res = app.get("/v1/message_templates").send().await.unwrap();
    assert_eq!(res.status(), 502);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["type"], "bad_gateway");
    assert!(!err.to_string().contains(GRAPH_TOKEN));
    assert_eq!(attempts.load(Ordering::SeqCst), 2, "a GET is tried twice");
    attempts.store(0, Ordering::SeqCst);
    let res = app.post_json("/v1/message_templates", &template()).await;
    assert_eq!(res.status(), 502);
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "a POST is never retried"
    );
    attempts.store(0, Ordering::SeqCst);
    let res = app
        .delete("/v1/welcome_message_sequences?sequence_id=1")
        .await;
    assert_eq!(res.status(), 502);
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "a DELETE is never retried"
    );
}

#[tokio::test]
async fn an_unreachable_graph_is_502() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let app = spawn_with(|s| s.graph.base_url = url.clone()).await;
    let res = app
        .get("/v1/welcome_message_sequences")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
}
