//! Lead-forwarding settings: the `[[forward]]` destinations (URL, signing secrets, filters,
//! time-out, concurrency) and the `[forwarding]` retry schedule, read from the file and checked
//! at start-up: names are unique path segments, URLs are https (or http to loopback, or with
//! `allow_http`), and every secret is a Standard Webhooks `whsec_` key. Errors name the
//! destination and the key, never a secret's value.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use super::ConfigError;

/// The retry schedule Standard Webhooks senders use: the delay before each attempt (the first
/// is immediate), then `failed`.
pub const DEFAULT_SCHEDULE_SECS: [f64; 8] =
    [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0];

/// One value or a list of them: `source_id = "1"` or `source_id = ["1", "2"]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum OneOrMany {
    #[default]
    Any,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The accepted values; empty means "any".
    fn values(self) -> Vec<String> {
        match self {
            OneOrMany::Any => Vec::new(),
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        }
    }
}

/// A `[[forward]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDestination {
    name: Option<String>,
    url: Option<String>,
    #[serde(default, deserialize_with = "super::values::secrets")]
    secret: Vec<SecretString>,
    #[serde(default)]
    source_id: OneOrMany,
    #[serde(default, rename = "ref")]
    ref_: OneOrMany,
    #[serde(default)]
    source_type: OneOrMany,
    #[serde(default = "default_timeout")]
    timeout_secs: u64,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    allow_http: bool,
    #[serde(default = "default_in_flight")]
    max_in_flight: usize,
}

fn default_timeout() -> u64 {
    15
}
fn yes() -> bool {
    true
}
fn default_in_flight() -> usize {
    16
}

/// `[forwarding]`: what all destinations share.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawForwarding {
    retry_schedule_secs: Vec<f64>,
}

impl Default for RawForwarding {
    fn default() -> Self {
        Self {
            retry_schedule_secs: DEFAULT_SCHEDULE_SECS.to_vec(),
        }
    }
}

/// Which leads a destination receives: a lead must match every list that is not empty (and
/// any one value within a list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeadFilters {
    pub source_id: Vec<String>,
    pub ref_: Vec<String>,
    pub source_type: Vec<String>,
}

impl LeadFilters {
    /// Whether a lead with these referral fields is for this destination.
    pub fn matches(
        &self,
        source_id: Option<&str>,
        ref_: Option<&str>,
        source_type: Option<&str>,
    ) -> bool {
        fn one(list: &[String], value: Option<&str>) -> bool {
            list.is_empty() || value.is_some_and(|v| list.iter().any(|x| x == v))
        }
        one(&self.source_id, source_id)
            && one(&self.ref_, ref_)
            && one(&self.source_type, source_type)
    }
}

/// A destination leads are pushed to.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Its name: a path segment (`/v1/forward/{name}/replay`) and a metrics label.
    pub name: String,
    pub url: reqwest::Url,
    /// Standard Webhooks secrets (`whsec_…`); every one signs each request (rotation).
    pub secrets: Vec<SecretString>,
    pub filters: LeadFilters,
    pub timeout: Duration,
    /// A disabled destination gets no deliveries and is not sent to.
    pub enabled: bool,
    /// Requests in flight to it at once, at most.
    pub max_in_flight: usize,
}

/// Every destination, and the retry schedule.
#[derive(Debug, Clone)]
pub struct ForwardingSettings {
    pub destinations: Vec<Destination>,
    /// The delay before each attempt; after the last one fails, the delivery is `failed`.
    pub retry_schedule: Vec<Duration>,
}

impl Default for ForwardingSettings {
    fn default() -> Self {
        Self {
            destinations: Vec::new(),
            retry_schedule: DEFAULT_SCHEDULE_SECS
                .iter()
                .map(|s| Duration::from_secs_f64(*s))
                .collect(),
        }
    }
}

fn invalid(text: String) -> ConfigError {
    ConfigError::Invalid(text)
}

fn is_loopback(url: &reqwest::Url) -> bool {
    url.host_str().is_some_and(|host| {
        host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

fn destination(index: usize, raw: RawDestination) -> Result<Destination, ConfigError> {
    let at = format!("forward[{index}]");
    let name = raw
        .name
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| invalid(format!("{at}.name is missing or empty")))?;
    if name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(invalid(format!(
            "{at}.name: use 1 to 64 letters, digits, '-' or '_' (it is a URL path segment), got {name:?}"
        )));
    }
    let at = format!("forward {name:?}");
    let text = raw
        .url
        .ok_or_else(|| invalid(format!("{at}: url is missing")))?;
    let url = reqwest::Url::parse(text.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| invalid(format!("{at}: url must be an http(s) URL")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(format!(
            "{at}: url must not carry credentials (the request is signed with the secret)"
        )));
    }
    if url.scheme() == "http" && !is_loopback(&url) && !raw.allow_http {
        return Err(invalid(format!(
            "{at}: url is plain http to another host; use https, or set allow_http = true"
        )));
    }
    if raw.secret.is_empty() {
        return Err(invalid(format!("{at}: secret is missing")));
    }
    for (i, secret) in raw.secret.iter().enumerate() {
        crate::forward::signing::key_bytes(secret)
            .map_err(|why| invalid(format!("{at}: secret #{}: {why}", i + 1)))?;
    }
    if raw.timeout_secs == 0 || raw.max_in_flight == 0 {
        return Err(invalid(format!(
            "{at}: timeout_secs and max_in_flight must be above 0"
        )));
    }
    Ok(Destination {
        name,
        url,
        secrets: raw.secret,
        filters: LeadFilters {
            source_id: raw.source_id.values(),
            ref_: raw.ref_.values(),
            source_type: raw.source_type.values(),
        },
        timeout: Duration::from_secs(raw.timeout_secs),
        enabled: raw.enabled,
        max_in_flight: raw.max_in_flight,
    })
}

pub(super) fn settings(
    raw: Vec<RawDestination>,
    forwarding: RawForwarding,
) -> Result<ForwardingSettings, ConfigError> {
    let mut destinations: Vec<Destination> = Vec::with_capacity(raw.len());
    for (i, d) in raw.into_iter().enumerate() {
        let d = destination(i, d)?;
        if destinations.iter().any(|o| o.name == d.name) {
            return Err(invalid(format!(
                "forward: two destinations are named {:?}",
                d.name
            )));
        }
        destinations.push(d);
    }
    let schedule = forwarding.retry_schedule_secs;
    if schedule.is_empty()
        || schedule
            .iter()
            .any(|s| !s.is_finite() || *s < 0.0 || *s > 7.0 * 86400.0)
    {
        return Err(invalid(
            "forwarding.retry_schedule_secs: one or more delays in seconds, each from 0 to 604800"
                .into(),
        ));
    }
    Ok(ForwardingSettings {
        destinations,
        retry_schedule: schedule.into_iter().map(Duration::from_secs_f64).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Settings;

    const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn load(forward: &str) -> Result<ForwardingSettings, String> {
        let toml = format!(
            "[webhook]\nverify_token = \"v\"\napp_secrets = \"s\"\n[api]\ntoken = \"t\"\n\
             [graph]\naccess_token = \"g\"\nwaba_id = \"1\"\n{forward}"
        );
        Settings::from_toml(&toml)
            .map(|s| s.forwarding)
            .map_err(|e| e.to_string())
    }

    fn one(url: &str, extra: &str) -> String {
        format!("[[forward]]\nname = \"crm\"\nurl = \"{url}\"\nsecret = \"{KEY}\"\n{extra}\n")
    }

    #[test]
    fn a_destination_gets_defaults() {
        let f = load(&one("https://crm.example.com/hook", "")).unwrap();
        let d = &f.destinations[0];
        assert_eq!(d.timeout, Duration::from_secs(15));
        assert!(d.enabled);
        assert_eq!(d.max_in_flight, 16);
        assert_eq!(d.filters, LeadFilters::default());
        assert_eq!(f.retry_schedule.len(), 8);
        assert_eq!(f.retry_schedule[2], Duration::from_secs(300));
        assert!(load("").unwrap().destinations.is_empty());
    }

    #[test]
    fn plain_http_is_refused_unless_loopback_or_allowed() {
        let err = load(&one("http://crm.example.com/hook", "")).unwrap_err();
        assert!(err.contains("allow_http"), "{err}");
        for ok in [
            "http://127.0.0.1:9/h",
            "http://localhost:9/h",
            "http://[::1]:9/h",
        ] {
            assert!(load(&one(ok, "")).is_ok(), "{ok}");
        }
        assert!(load(&one("http://crm.example.com/hook", "allow_http = true")).is_ok());
        assert!(load(&one("ftp://crm.example.com/hook", "")).is_err());
        assert!(load(&one("https://user:pw@crm.example.com/hook", "")).is_err());
    }

    #[test]
    fn bad_secrets_names_and_duplicates_are_refused_without_echo() {
        let err = load(&one("https://a.example/h", "").replace(KEY, "whsec_not-base64-sekrit"))
            .unwrap_err();
        assert!(
            err.contains("secret #1") && !err.contains("sekrit"),
            "{err}"
        );
        let err = load(&one("https://a.example/h", "").replace(KEY, "plain-sekrit")).unwrap_err();
        assert!(err.contains("whsec_") && !err.contains("sekrit"), "{err}");
        let err =
            load(&one("https://a.example/h", "").replace("\"crm\"", "\"c r m\"")).unwrap_err();
        assert!(err.contains("name"), "{err}");
        let twice = one("https://a.example/h", "") + &one("https://b.example/h", "");
        assert!(load(&twice).unwrap_err().contains("two destinations"));
        let err =
            load(&one("https://a.example/h", "").replace("secret = ", "secrt = ")).unwrap_err();
        assert!(err.contains("secrt"), "{err}");
        let err = load(&format!(
            "[forwarding]\nretry_schedule_secs = []\n{}",
            one("https://a.example/h", "")
        ))
        .unwrap_err();
        assert!(err.contains("retry_schedule_secs"), "{err}");
    }

    #[test]
    fn filters_take_a_value_or_a_list() {
        let f = load(&one(
            "https://a.example/h",
            "source_id = \"1\"\nref = [\"a\", \"b\"]",
        ))
        .unwrap();
        let filters = &f.destinations[0].filters;
        assert_eq!(filters.source_id, vec!["1"]);
        assert_eq!(filters.ref_, vec!["a", "b"]);
        assert!(format!("{f:?}").find(KEY).is_none(), "a secret in Debug");
    }

    #[test]
    fn filters_match_every_given_list() {
        let f = LeadFilters {
            source_id: vec!["1".into(), "2".into()],
            ref_: vec![],
            source_type: vec!["ad".into()],
        };
        assert!(f.matches(Some("2"), None, Some("ad")));
        assert!(!f.matches(Some("3"), None, Some("ad")));
        assert!(!f.matches(Some("1"), None, Some("post")));
        assert!(!f.matches(None, None, Some("ad")));
        assert!(LeadFilters::default().matches(None, None, None));
    }
}
