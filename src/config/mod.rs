//! Settings, loaded in layers: built-in defaults, then the TOML file, then `CTWA_SECTION__KEY`
//! environment variables. Every secret is a [`SecretString`], so `Debug` never prints one, and
//! [`Settings::load`] refuses to start with a missing or empty secret, naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod capi;
mod forward;
pub mod sources;
mod values;

pub use capi::CapiSettings;
pub use forward::{Destination, ForwardingSettings, LeadFilters};

use figment::providers::{Format, Toml};
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
        ConfigError::Invalid(sources::describe(&err).replace('\n', " "))
    }
}

/// Reads the config file, naming the path and (when permission is the problem) the user.
fn read_file(path: &Path) -> Result<String, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            Err(ConfigError::NotFound(path.to_path_buf()))
        }
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(ConfigError::Invalid(format!(
                "cannot read {}: permission denied for {} (make the file readable by that user; the Docker image runs as uid 10001)",
                path.display(),
                crate::config::process_user()
            )))
        }
        Err(err) => Err(ConfigError::Invalid(format!(
            "cannot read {}: {err}",
            path.display()
        ))),
    }
}

/// "uid N" of this process (read from `/proc/self`, so no libc call is needed).
pub fn process_user() -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::metadata("/proc/self") {
            return format!("uid {} (gid {})", meta.uid(), meta.gid());
        }
    }
    "the current user".to_owned()
}

/// `host:port`, where host may be a name (`localhost:8080`), resolved once at start-up.
fn listen_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    use std::net::ToSocketAddrs;
    let text = String::deserialize(d)?;
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let mut addrs = text.to_socket_addrs().map_err(|_| {
        serde::de::Error::custom(format!(
            "expected host:port (e.g. 0.0.0.0:8080 or localhost:8080), got {text:?}"
        ))
    })?;
    // IPv4 first: `localhost` should mean 127.0.0.1 where both exist.
    let all: Vec<SocketAddr> = addrs.by_ref().collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or_else(|| all.first())
        .copied()
        .ok_or_else(|| serde::de::Error::custom(format!("{text:?} resolves to no address")))
}

fn optional_listen_addr<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    listen_addr(d).map(Some)
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
    pub metrics: MetricsSettings,
    /// `[[forward]]` destinations and the `[forwarding]` retry schedule.
    pub forwarding: ForwardingSettings,
    /// `[capi]`: conversions reported to Meta.
    pub capi: CapiSettings,
    /// `CTWA_*` environment names that are not configuration (logged at debug on start-up).
    pub ignored_env: Vec<String>,
}

/// The Prometheus endpoint, on its own listener so internal figures never share the public port.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Where `GET /metrics` is served; absent: no metrics listener.
    #[serde(deserialize_with = "optional_listen_addr")]
    pub listen: Option<SocketAddr>,
}

/// Which verified deliveries keep their raw body in the log.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeepRaw {
    /// Everything but status-only deliveries that parsed cleanly (most of a busy number's
    /// traffic, and no lead in them): those are counted, not kept.
    #[default]
    NoStatuses,
    /// Every verified delivery: a full audit log.
    All,
}

/// How long raw deliveries are kept. Leads are never pruned.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Which deliveries keep their raw body at all. Deliveries that parsed `partial` or
    /// `invalid` are always kept.
    pub keep_raw: KeepRaw,
    /// Delete raw events older than this many days; 0 keeps them forever.
    pub raw_events_days: u32,
    /// Seconds between pruning passes.
    pub interval_secs: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            keep_raw: KeepRaw::NoStatuses,
            raw_events_days: 30,
            interval_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    #[serde(deserialize_with = "listen_addr")]
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// Deadline for reading a request's body and answering it.
    pub request_timeout_secs: u64,
    /// Deadline for receiving a request's headers (slow-header clients are cut off).
    pub header_read_timeout_secs: u64,
    /// The service's public base URL (e.g. `https://leads.example.com`): absolute paging links
    /// are built only from it; without it they are relative.
    pub public_url: Option<String>,
    /// Build paging links from `X-Forwarded-Proto` / `X-Forwarded-Host` (only behind a proxy
    /// that sets them; a client could otherwise point links at any host).
    pub trust_forwarded_headers: bool,
    /// A webhook body must arrive at least this fast (bytes per second, after the first
    /// second); a slower sender gets 408. Meta sends a body at once.
    pub min_body_rate: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 3 * 1024 * 1024,
            request_timeout_secs: 30,
            header_read_timeout_secs: 10,
            public_url: None,
            trust_forwarded_headers: false,
            min_body_rate: 16 * 1024,
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
    /// The leads database (the read side, built by the projector).
    pub url: String,
    /// The delivery log, acknowledged from; default: beside `url`, `<name>-log.db`.
    pub log_url: Option<String>,
    /// Connections in the read pool (the single writer has its own).
    pub read_connections: u32,
    pub synchronous: Durability,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://data/ctwa-leads.db".into(),
            log_url: None,
            read_connections: 4,
            synchronous: Durability::Full,
        }
    }
}

/// The file path inside a `sqlite://path`, `sqlite:path` or bare-path URL.
fn sqlite_path(url: &str, key: &str) -> Result<PathBuf, ConfigError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let rest = rest.split('?').next().unwrap_or_default();
    if rest.is_empty() || rest.contains(":memory:") {
        return Err(ConfigError::Invalid(format!(
            "{key} must name a file, e.g. sqlite://data/ctwa-leads.db"
        )));
    }
    Ok(PathBuf::from(rest))
}

impl DatabaseSettings {
    /// The leads database's file.
    pub fn path(&self) -> Result<PathBuf, ConfigError> {
        sqlite_path(&self.url, "database.url")
    }

    /// The delivery log's file: `log_url`, or `<leads file stem>-log.db` beside the leads file.
    pub fn log_path(&self) -> Result<PathBuf, ConfigError> {
        if let Some(url) = &self.log_url {
            return sqlite_path(url, "database.log_url");
        }
        let leads = self.path()?;
        let stem = leads
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "ctwa-leads".into());
        Ok(leads.with_file_name(format!("{stem}-log.db")))
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
    /// Fully received deliveries awaiting their answer; past this, a fast 503.
    pub max_in_flight: usize,
    /// Body bytes that bodies being received may hold, counted as they arrive.
    pub max_in_flight_bytes: usize,
    /// Verify and parse, but store nothing: the benchmark's ceiling. Never for production.
    pub ceiling_mode: bool,
    /// Log entries the projector may be behind; past this, new deliveries get a fast 503
    /// (Meta retries), so the lag and the log stay bounded under sustained overload.
    pub max_projection_lag: u64,
    /// Log entries the projector turns into leads per transaction, at most.
    pub projection_batch: usize,
    /// Milliseconds a few new entries may wait for more before the projector takes them:
    /// larger transactions write fewer bytes per lead. Adds at most this to the lag.
    pub projection_pace_ms: u64,
    /// Milliseconds the projection may lag (the age of the oldest entry not yet turned into
    /// leads) before new deliveries are held back, 100 ms for each second over it: the
    /// acknowledgements slow down to the pace the projector keeps, instead of the lag growing
    /// until the 503s of `max_projection_lag`. 0 never holds back.
    pub hold_back_lag_ms: u64,
    /// The longest one delivery is held back; it is then stored and acknowledged.
    pub max_hold_back_ms: u64,
}

/// When and how long `POST /webhook` holds a delivery back (see
/// [`IngestSettings::hold_back_lag_ms`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldBack {
    pub above: Duration,
    pub at_most: Duration,
}

impl IngestSettings {
    /// `None` when holding back is off.
    pub fn hold_back(&self) -> Option<HoldBack> {
        (self.hold_back_lag_ms > 0 && self.max_hold_back_ms > 0).then(|| HoldBack {
            above: Duration::from_millis(self.hold_back_lag_ms),
            at_most: Duration::from_millis(self.max_hold_back_ms),
        })
    }
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            queue_capacity: 4096,
            max_batch: 512,
            max_in_flight: 1024,
            max_in_flight_bytes: 64 * 1024 * 1024,
            ceiling_mode: false,
            max_projection_lag: 200_000,
            projection_batch: 4096,
            projection_pace_ms: 100,
            hold_back_lag_ms: 500,
            max_hold_back_ms: 2000,
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
    #[serde(default)]
    metrics: MetricsSettings,
    #[serde(default)]
    forward: Vec<forward::RawDestination>,
    #[serde(default)]
    forwarding: forward::RawForwarding,
    #[serde(default)]
    capi: CapiSettings,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    #[serde(default, deserialize_with = "values::secret")]
    verify_token: Option<SecretString>,
    #[serde(default, deserialize_with = "values::secrets")]
    app_secrets: Vec<SecretString>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    #[serde(default, deserialize_with = "values::secret")]
    token: Option<SecretString>,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawGraph {
    base_url: String,
    api_version: String,
    #[serde(deserialize_with = "values::secret")]
    access_token: Option<SecretString>,
    #[serde(deserialize_with = "values::text")]
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

impl Settings {
    /// Loads `path`, then the `CTWA_` environment on top.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        // Read once here for a clear error (path, user); figment reads it again to track
        // where each value came from.
        read_file(path)?;
        Self::from_sources(Toml::file_exact(path), sources::EnvLayer::from_process())
    }

    /// Parses settings from a TOML string (no environment): for tests.
    pub fn from_toml(toml: &str) -> Result<Self, ConfigError> {
        Self::from_sources(Toml::string(toml), sources::EnvLayer::from_pairs([]))
    }

    /// The file, then `env` on top.
    pub fn from_sources(
        file: figment::providers::Data<Toml>,
        env: sources::EnvLayer,
    ) -> Result<Self, ConfigError> {
        let ignored_env = env.ignored.clone();
        let mut settings = Self::from_figment(Figment::new().merge(file).merge(env))?;
        settings.ignored_env = ignored_env;
        Ok(settings)
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let raw: RawSettings = figment.extract()?;
        let verify_token = values::required(raw.webhook.verify_token, "webhook.verify_token")?;
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
        let api_token = values::required(raw.api.token, "api.token")?;
        let access_token = values::required(raw.graph.access_token, "graph.access_token")?;
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
        if raw.server.min_body_rate == 0 {
            return Err(ConfigError::Invalid(
                "server.min_body_rate must be above 0".into(),
            ));
        }
        if raw.graph.timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "graph.timeout_secs must be above 0".into(),
            ));
        }
        raw.database.path()?;
        if raw.database.log_path()? == raw.database.path()? {
            return Err(ConfigError::Invalid(
                "database.log_url must name a file other than database.url".into(),
            ));
        }
        if raw.ingest.projection_batch == 0 || raw.ingest.max_projection_lag == 0 {
            return Err(ConfigError::Invalid(
                "ingest.projection_batch and ingest.max_projection_lag must be above 0".into(),
            ));
        }
        if raw.ingest.hold_back_lag_ms > 0
            && raw.ingest.hold_back_lag_ms <= raw.ingest.projection_pace_ms
        {
            return Err(ConfigError::Invalid(
                "ingest.hold_back_lag_ms must be above ingest.projection_pace_ms (or 0: never hold back)".into(),
            ));
        }
        if raw.ingest.max_hold_back_ms >= raw.server.request_timeout_secs.saturating_mul(1000) {
            return Err(ConfigError::Invalid(
                "ingest.max_hold_back_ms must be below server.request_timeout_secs".into(),
            ));
        }
        let forwarding = forward::settings(raw.forward, raw.forwarding)?;
        let capi = raw.capi.checked()?;
        let mut server = raw.server;
        if let Some(url) = server.public_url.take() {
            let trimmed = url.trim().trim_end_matches('/').to_owned();
            let ok = reqwest::Url::parse(&trimmed).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https") && u.query().is_none() && u.host().is_some()
            });
            if !ok {
                return Err(ConfigError::Invalid(
                    "server.public_url: expected an http(s) URL without a query, e.g. https://leads.example.com".into(),
                ));
            }
            server.public_url = (!trimmed.is_empty()).then_some(trimmed);
        }
        Ok(Settings {
            server,
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
            metrics: raw.metrics,
            forwarding,
            capi,
            ignored_env: Vec::new(),
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
    fn holding_back_must_leave_room_for_the_pace_and_the_request_timeout() {
        let s = Settings::from_toml(FULL).expect("valid");
        let hold = s.ingest.hold_back().expect("on by default");
        assert!(hold.above > Duration::from_millis(s.ingest.projection_pace_ms));
        let at = |extra: &str| Settings::from_toml(&format!("{FULL}\n[ingest]\n{extra}\n"));
        let err = at("hold_back_lag_ms = 100\nprojection_pace_ms = 100").unwrap_err();
        assert!(err.to_string().contains("ingest.hold_back_lag_ms"), "{err}");
        let err = at("max_hold_back_ms = 30000").unwrap_err();
        assert!(err.to_string().contains("ingest.max_hold_back_ms"), "{err}");
        let off = at("hold_back_lag_ms = 0").expect("0 turns it off");
        assert_eq!(off.ingest.hold_back(), None);
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

    fn with_env(toml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_sources(
            Toml::string(toml),
            sources::EnvLayer::from_pairs(
                env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            ),
        )
    }

    #[test]
    fn kubernetes_service_variables_do_not_stop_start_up() {
        let s = with_env(
            FULL,
            &[
                ("CTWA_PORT", "tcp://10.0.0.1:8080"),
                ("CTWA_SERVICE_HOST", "10.0.0.1"),
                ("CTWA_PORT_8080_TCP_ADDR", "10.0.0.1"),
                ("CTWA_LEADS_PORT", "tcp://10.0.0.2:80"),
                ("CTWA_SERVER__LISTEN", "0.0.0.0:9090"),
            ],
        )
        .expect("service links are not configuration");
        assert_eq!(s.server.listen.port(), 9090);
        assert_eq!(s.ignored_env.len(), 4);
    }

    #[test]
    fn unknown_keys_still_stop_start_up_naming_the_key() {
        let err = with_env(FULL, &[("CTWA_SERVER__PORT", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key server.port"), "{err}");
        assert!(err.contains("CTWA_"), "{err}");
        let err = Settings::from_toml(&FULL.replace("verify_token", "verify_tokn"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config: unknown key webhook.verify_tokn in TOML"),
            "{err}"
        );
        assert!(!err.contains("default."), "{err}");
        let err = with_env(FULL, &[("CTWA_API__TOKN", "x")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config: unknown key api.tokn in"), "{err}");
        assert!(!err.contains("untagged"), "{err}");
    }

    #[test]
    fn secrets_from_the_environment_are_read_verbatim() {
        for value in ["007", "true", "1.5e3", "[x]"] {
            let s = with_env(FULL, &[("CTWA_API__TOKEN", value)]).expect(value);
            assert_eq!(s.api.token.expose_secret(), value);
        }
        let s = with_env(FULL, &[("CTWA_GRAPH__WABA_ID", "0042")]).unwrap();
        assert_eq!(s.graph.waba_id, "0042");
    }

    #[test]
    fn a_lone_app_secret_is_a_list_of_one_and_never_echoed() {
        let s = with_env(
            FULL,
            &[("CTWA_WEBHOOK__APP_SECRETS", "my-real-app-secret-123")],
        )
        .expect("a single secret is accepted");
        assert_eq!(s.webhook.app_secrets.len(), 1);
        assert_eq!(
            s.webhook.app_secrets[0].expose_secret(),
            "my-real-app-secret-123"
        );
        let s = Settings::from_toml(&FULL.replace("[\"s1\", \"s2\"]", "\"only-one\""))
            .expect("a single string in the file too");
        assert_eq!(s.webhook.app_secrets[0].expose_secret(), "only-one");
        // Wrong shapes of secret keys: the error names the key, never the value.
        for (from, to) in [
            ("token = \"api\"", "token = { v = \"sekrit-1\" }"),
            ("token = \"api\"", "token = [\"sekrit-1\"]"),
            ("access_token = \"gat\"", "access_token = 12.5"),
            ("[\"s1\", \"s2\"]", "{ a = \"sekrit-1\" }"),
        ] {
            let err = Settings::from_toml(&FULL.replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(!err.contains("sekrit"), "{err}");
            assert!(!err.contains("12.5"), "{err}");
            assert!(
                err.contains("token") || err.contains("app_secrets"),
                "{err}"
            );
        }
    }

    #[test]
    fn listen_accepts_a_host_name() {
        let s = Settings::from_toml(&format!("{FULL}\n[server]\nlisten = \"localhost:8080\"\n"))
            .expect("localhost resolves");
        assert!(s.server.listen.ip().is_loopback());
        assert_eq!(s.server.listen.port(), 8080);
        let err = Settings::from_toml(&format!("{FULL}\n[server]\nlisten = \"8080\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.listen"), "{err}");
    }

    #[test]
    fn an_unreadable_config_names_the_path_and_the_user() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let err = Settings::load(&missing).unwrap_err().to_string();
        assert!(err.contains("nope.toml"), "{err}");
        // A directory cannot be read as a file: the path is named.
        let err = Settings::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }
}
