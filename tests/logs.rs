//! Logs never hold a secret: this binary installs its own subscriber at DEBUG, drives every
//! path that handles a secret (the challenge's query string, signatures, bearer tokens, a Graph
//! call, a `Debug` print of the settings), and searches what was logged.

#[path = "it/helpers.rs"]
mod helpers;

use helpers::*;

#[tokio::test]
async fn no_secret_reaches_a_log_line() {
    let capture = LogCapture::default();
    tracing_subscriber::fmt()
        // wiremock is the fake Graph: it logs what *it* received, which is not our logging.
        .with_env_filter("debug,wiremock=off")
        .with_writer(capture.clone())
        .with_ansi(false)
        .init();
    let app = spawn_app().await;
    let challenge =
        format!("/webhook?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=42");
    assert_eq!(
        app.client
            .get(app.url(&challenge))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let wrong = "/webhook?hub.mode=subscribe&hub.verify_token=guess&hub.challenge=42";
    assert_eq!(
        app.client
            .get(app.url(wrong))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let body = one_lead("wamid.logs");
    assert_eq!(app.deliver(&body).await.status(), 200);
    let forged = ctwa_leads::webhook::verify::sign("forger", &body);
    assert_eq!(app.deliver_signed(&body, Some(&forged)).await.status(), 401);
    let _ = app.get("/v1/leads").send().await.unwrap();
    let _ = app
        .client
        .get(app.url("/v1/leads"))
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    // A Graph call carries the access token; wiremock's default 404 is not JSON: a 502.
    assert_eq!(
        app.get("/v1/message_templates")
            .send()
            .await
            .unwrap()
            .status(),
        502
    );
    tracing::info!(settings = ?helpers::settings(std::path::Path::new("x.db"), "http://g"), "settings debug print");

    let logs = capture.contents();
    assert!(logs.contains("/webhook"), "the capture works: {logs}");
    let expected_tag = ctwa_leads::webhook::verify::sign(APP_SECRET, &body);
    for secret in [
        VERIFY_TOKEN,
        APP_SECRET,
        ROTATED_SECRET,
        API_TOKEN,
        GRAPH_TOKEN,
        &expected_tag[7..],
    ] {
        assert!(
            !logs.contains(secret),
            "{secret} leaked into the logs:\n{logs}"
        );
    }
    assert!(
        !logs.contains("hub.challenge"),
        "query strings are not logged"
    );
}
