//! The operations surface: Prometheus metrics on their own listener, covering requests,
//! deliveries by outcome, leads, the writer and the Graph proxy.

use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::*;

/// The value of the first sample line starting with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_are_served_on_their_own_listener_and_cover_the_data_path() {
    let app = spawn_with(|s| s.metrics.listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let metrics_url = format!(
        "{}/metrics",
        app.metrics_addr.as_deref().expect("metrics listener")
    );
    assert_eq!(app.deliver(&one_lead("wamid.m1")).await.status(), 200);
    assert_eq!(app.deliver(&one_lead("wamid.m1")).await.status(), 200);
    let body = one_lead("wamid.m2");
    let forged = ctwa_leads::webhook::verify::sign("forger", &body);
    assert_eq!(app.deliver_signed(&body, Some(&forged)).await.status(), 401);
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []})))
        .mount(&app.graph)
        .await;
    assert_eq!(
        app.get("/v1/message_templates")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.erase("4915100000001").await["leads"],
        1,
        "the lead of wamid.m1"
    );

    let res = app.client.get(&metrics_url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    for (series, at_least) in [
        ("ctwa_erasures_total{outcome=\"done\"}", 1.0),
        ("ctwa_erasures_pending", 0.0),
        ("ctwa_erasures_oldest_pending_seconds", 0.0),
        ("ctwa_deliveries_total{outcome=\"stored\"}", 1.0),
        ("ctwa_deliveries_total{outcome=\"duplicate\"}", 1.0),
        ("ctwa_deliveries_total{outcome=\"bad_signature\"}", 1.0),
        ("ctwa_leads_created_total", 1.0),
        (
            "ctwa_http_requests_total{route=\"/webhook\",method=\"POST\",status=\"200\"}",
            2.0,
        ),
        (
            "ctwa_graph_requests_total{edge=\"message_templates\",status=\"200\"}",
            1.0,
        ),
        ("ctwa_writer_batch_deliveries_count", 2.0),
        ("ctwa_writer_commit_seconds_count", 2.0),
        ("ctwa_writer_fsync_seconds_count", 1.0),
        ("ctwa_http_request_duration_seconds_bucket", 0.0),
        ("ctwa_writer_queue_depth", 0.0),
        ("ctwa_writer_last_commit_ok", 1.0),
    ] {
        let value = sample(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"));
        assert!(value >= at_least, "{series} = {value}");
    }
    // Lead ids never become label values: routes are templates.
    assert!(!text.contains("wamid.m1"));
    assert!(!text.contains("4915100000001"), "nor a person erased");
    // Not on the public port.
    assert_eq!(
        app.client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}
