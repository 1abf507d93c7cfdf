//! Settings, loaded in layers: built-in defaults, then the TOML file, then `CTWA_SECTION__KEY`
//! environment variables. Every secret is a [`SecretString`], so `Debug` never prints one, and
//! [`Settings::load`] refuses to start with a missing or empty secret, naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Values shipped in `config.example.toml`; a warning says so when they are in use.
const EXAMPLE_MARKER: &str = "example-";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} not found")]
    NotFound(PathBuf),
    #[error("config: {0}")]
    Invalid(String),
    #[error("config: {key} is missing or empty")]
    MissingSecret { key: &'static str },
}

impl From<figment::Error> for ConfigError {
    fn from(err: figment::Error) -> Self {
        // figment's Display names the key and the source ("for key `server.listen` in file …"),
        // and carries no secret: it only quotes values of mistyped keys.
        ConfigError::Invalid(err.to_string().replace('\n', " "))
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub webhook: WebhookSettings,
    pub api: ApiSettings,
    pub graph: GraphSettings,
    pub ingest: IngestSettings,
    pub retention: RetentionSettings,
    pub log: LogSettings,
}

/// How long raw deliveries are kept. Leads are never pruned.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Delete raw events older than this many days; 0 keeps them forever.
    pub raw_events_days: u32,
    /// Seconds between pruning passes.
    pub interval_secs: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            raw_events_days: 30,
            interval_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// Deadline for reading a request's body and answering it.
    pub request_timeout_secs: u64,
    /// Deadline for receiving a request's headers (slow-header clients are cut off).
    pub header_read_timeout_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 3 * 1024 * 1024,
            request_timeout_secs: 30,
            header_read_timeout_secs: 10,
        }
    }
}

/// How durable an acknowledged delivery is.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// The WAL is fsynced after the commit and before the 200: an acknowledged lead survives
    /// power loss (`synchronous=FULL`'s promise, kept by the writer's own flush thread).
    #[default]
    Full,
    /// Acknowledged at commit; fsync at checkpoints only: survives a process crash, may lose
    /// the last commits on power loss.
    Normal,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    /// Connections in the read pool (the single writer has its own).
    pub read_connections: u32,
    pub synchronous: Durability,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://data/ctwa-leads.db".into(),
            read_connections: 4,
            synchronous: Durability::Full,
        }
    }
}

impl DatabaseSettings {
    /// The file path inside `url` (`sqlite://path`, `sqlite:path` or a bare path).
    pub fn path(&self) -> Result<PathBuf, ConfigError> {
        let rest = self
            .url
            .strip_prefix("sqlite://")
            .or_else(|| self.url.strip_prefix("sqlite:"))
            .unwrap_or(&self.url);
        let rest = rest.split('?').next().unwrap_or_default();
        if rest.is_empty() || rest.contains(":memory:") {
            return Err(ConfigError::Invalid(
                "database.url must name a file, e.g. sqlite://data/ctwa-leads.db".into(),
            ));
        }
        Ok(PathBuf::from(rest))
    }
}

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub verify_token: SecretString,
    pub app_secrets: Vec<SecretString>,
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub token: SecretString,
}

#[derive(Debug, Clone)]
pub struct GraphSettings {
    pub base_url: String,
    pub api_version: String,
    pub access_token: SecretString,
    pub waba_id: String,
    pub timeout_secs: u64,
}

impl GraphSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// How verified deliveries reach the database.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// Deliveries waiting for the writer; past this, new ones get a fast 503.
    pub queue_capacity: usize,
    /// Deliveries committed together in one transaction, at most.
    pub max_batch: usize,
    /// Deliveries being received or awaiting their commit; past this, a fast 503.
    pub max_in_flight: usize,
    /// Body bytes those deliveries may hold (reserved from `Content-Length` before reading).
    pub max_in_flight_bytes: usize,
    /// Verify and parse, but store nothing: the benchmark's ceiling. Never for production.
    pub ceiling_mode: bool,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            queue_capacity: 4096,
            max_batch: 512,
            max_in_flight: 1024,
            max_in_flight_bytes: 64 * 1024 * 1024,
            ceiling_mode: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
}

/// The file's shape: secrets are optional here so that a missing one is reported by name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    server: ServerSettings,
    #[serde(default)]
    database: DatabaseSettings,
    #[serde(default)]
    webhook: RawWebhook,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    graph: RawGraph,
    #[serde(default)]
    ingest: IngestSettings,
    #[serde(default)]
    retention: RetentionSettings,
    #[serde(default)]
    log: LogSettings,
}

/// A string key whose value may look like a number: `CTWA_WEBHOOK__VERIFY_TOKEN=12345` reaches
/// us as an integer, and an all-digit token or WABA id is still a string to us.
#[derive(Deserialize)]
#[serde(untagged)]
enum Text {
    Str(String),
    Unsigned(u64),
    Signed(i64),
}

impl Text {
    fn into_string(self) -> String {
        match self {
            Text::Str(s) => s,
            Text::Unsigned(n) => n.to_string(),
            Text::Signed(n) => n.to_string(),
        }
    }
}

fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Text>::deserialize(d)?.map(Text::into_string))
}

fn secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    Ok(text(d)?.map(SecretString::from))
}

fn secrets<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SecretString>, D::Error> {
    Ok(Vec::<Text>::deserialize(d)?
        .into_iter()
        .map(|t| SecretString::from(t.into_string()))
        .collect())
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    #[serde(default, deserialize_with = "secret")]
    verify_token: Option<SecretString>,
    #[serde(default, deserialize_with = "secrets")]
    app_secrets: Vec<SecretString>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    #[serde(default, deserialize_with = "secret")]
    token: Option<SecretString>,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawGraph {
    base_url: String,
    api_version: String,
    #[serde(deserialize_with = "secret")]
    access_token: Option<SecretString>,
    #[serde(deserialize_with = "text")]
    waba_id: Option<String>,
    timeout_secs: u64,
}

impl Default for RawGraph {
    fn default() -> Self {
        Self {
            base_url: "https://graph.facebook.com".into(),
            api_version: "v21.0".into(),
            access_token: None,
            waba_id: None,
            timeout_secs: 10,
        }
    }
}

fn required(secret: Option<SecretString>, key: &'static str) -> Result<SecretString, ConfigError> {
    match secret {
        Some(s) if !s.expose_secret().trim().is_empty() => Ok(s),
        _ => Err(ConfigError::MissingSecret { key }),
    }
}

impl Settings {
    /// Loads `path`, then the `CTWA_` environment on top.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::NotFound(path.to_path_buf()));
        }
        Self::from_figment(
            Figment::new()
                .merge(Toml::file_exact(path))
                .merge(Env::prefixed("CTWA_").split("__")),
        )
    }

    /// Parses settings from a TOML string (no environment): for tests.
    pub fn from_toml(toml: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::new().merge(Toml::string(toml)))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let raw: RawSettings = figment.extract()?;
        let verify_token = required(raw.webhook.verify_token, "webhook.verify_token")?;
        if raw.webhook.app_secrets.is_empty()
            || raw
                .webhook
                .app_secrets
                .iter()
                .any(|s| s.expose_secret().trim().is_empty())
        {
            return Err(ConfigError::MissingSecret {
                key: "webhook.app_secrets",
            });
        }
        let api_token = required(raw.api.token, "api.token")?;
        let access_token = required(raw.graph.access_token, "graph.access_token")?;
        let waba_id = match raw.graph.waba_id {
            Some(id) if !id.trim().is_empty() => id,
            _ => {
                return Err(ConfigError::Invalid(
                    "graph.waba_id is missing or empty".into(),
                ))
            }
        };
        if raw.server.max_body_bytes == 0 {
            return Err(ConfigError::Invalid(
                "server.max_body_bytes must be above 0".into(),
            ));
        }
        if raw.ingest.max_batch == 0 || raw.ingest.queue_capacity == 0 {
            return Err(ConfigError::Invalid(
                "ingest.max_batch and ingest.queue_capacity must be above 0".into(),
            ));
        }
        if raw.server.request_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "server.request_timeout_secs must be above 0".into(),
            ));
        }
        if raw.ingest.max_in_flight == 0
            || raw.ingest.max_in_flight_bytes < raw.server.max_body_bytes
        {
            return Err(ConfigError::Invalid(
                "ingest.max_in_flight must be above 0 and ingest.max_in_flight_bytes at least server.max_body_bytes".into(),
            ));
        }
        if raw.retention.interval_secs == 0 {
            return Err(ConfigError::Invalid(
                "retention.interval_secs must be above 0".into(),
            ));
        }
        if raw.graph.timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "graph.timeout_secs must be above 0".into(),
            ));
        }
        raw.database.path()?;
        Ok(Settings {
            server: raw.server,
            database: raw.database,
            webhook: WebhookSettings {
                verify_token,
                app_secrets: raw.webhook.app_secrets,
            },
            api: ApiSettings { token: api_token },
            graph: GraphSettings {
                base_url: raw.graph.base_url.trim_end_matches('/').to_owned(),
                api_version: raw.graph.api_version,
                access_token,
                waba_id,
                timeout_secs: raw.graph.timeout_secs,
            },
            ingest: raw.ingest,
            retention: raw.retention,
            log: raw.log,
        })
    }

    /// Keys still holding the example file's placeholder values.
    pub fn example_keys(&self) -> Vec<&'static str> {
        let is_example = |s: &SecretString| s.expose_secret().starts_with(EXAMPLE_MARKER);
        let mut keys = Vec::new();
        if is_example(&self.webhook.verify_token) {
            keys.push("webhook.verify_token");
        }
        if self.webhook.app_secrets.iter().any(is_example) {
            keys.push("webhook.app_secrets");
        }
        if is_example(&self.api.token) {
            keys.push("api.token");
        }
        if is_example(&self.graph.access_token) {
            keys.push("graph.access_token");
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
        [webhook]
        verify_token = "vt"
        app_secrets = ["s1", "s2"]
        [api]
        token = "api"
        [graph]
        access_token = "gat"
        waba_id = "123"
    "#;

    #[test]
    fn defaults_fill_what_the_file_leaves_out() {
        let s = Settings::from_toml(FULL).expect("valid");
        assert_eq!(s.server.max_body_bytes, 3 * 1024 * 1024);
        assert_eq!(s.graph.api_version, "v21.0");
        assert_eq!(s.webhook.app_secrets.len(), 2);
        assert_eq!(
            s.database.path().unwrap(),
            PathBuf::from("data/ctwa-leads.db")
        );
    }

    #[test]
    fn missing_or_empty_secret_is_named() {
        let err = Settings::from_toml(&FULL.replace("token = \"api\"", "")).unwrap_err();
        assert_eq!(err.to_string(), "config: api.token is missing or empty");
        let err = Settings::from_toml(&FULL.replace("\"s1\", \"s2\"", "\"s1\", \"\"")).unwrap_err();
        assert!(err.to_string().contains("webhook.app_secrets"), "{err}");
        let err = Settings::from_toml(&FULL.replace("\"vt\"", "\"  \"")).unwrap_err();
        assert!(err.to_string().contains("webhook.verify_token"), "{err}");
    }

    #[test]
    fn malformed_value_names_the_key() {
        let toml = format!("{FULL}\n[server]\nmax_body_bytes = \"big\"\n");
        let err = Settings::from_toml(&toml).unwrap_err().to_string();
        assert!(err.contains("max_body_bytes"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn debug_hides_every_secret() {
        let s = Settings::from_toml(FULL).expect("valid");
        let dbg = format!("{s:?}");
        for secret in ["\"vt\"", "\"s1\"", "\"s2\"", "\"api\"", "\"gat\""] {
            assert!(!dbg.contains(secret), "{secret} leaked in {dbg}");
        }
    }

    #[test]
    fn numeric_looking_secrets_and_ids_are_strings() {
        let toml = FULL
            .replace("\"vt\"", "12345")
            .replace("\"123\"", "102290129340398")
            .replace("\"s1\", \"s2\"", "987, \"s2\"");
        let s = Settings::from_toml(&toml).expect("numbers are accepted as strings");
        assert_eq!(s.webhook.verify_token.expose_secret(), "12345");
        assert_eq!(s.webhook.app_secrets[0].expose_secret(), "987");
        assert_eq!(s.graph.waba_id, "102290129340398");
    }

    #[test]
    fn memory_database_is_refused() {
        let toml = format!("{FULL}\n[database]\nurl = \"sqlite::memory:\"\n");
        assert!(Settings::from_toml(&toml).is_err());
    }
}
