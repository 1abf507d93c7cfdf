//! The Graph API proxy: a small client holding the access token, and the `/v1` routes for
//! welcome message sequences and message templates.

use std::time::Duration;

use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;
use crate::config::GraphSettings;

/// Talks to `{base_url}/{api_version}/{waba_id}/…` with the configured token.
#[derive(Clone, Debug)]
#[allow(dead_code)] // read by the proxy routes, which come next
pub struct GraphClient {
    http: reqwest::Client,
    edge_base: String,
    access_token: secrecy::SecretString,
    timeout: Duration,
}

impl GraphClient {
    pub fn new(settings: &GraphSettings) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout())
            .connect_timeout(settings.timeout())
            .build()?;
        Ok(Self {
            http,
            edge_base: format!(
                "{}/{}/{}",
                settings.base_url, settings.api_version, settings.waba_id
            ),
            access_token: settings.access_token.clone(),
            timeout: settings.timeout(),
        })
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
