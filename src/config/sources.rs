//! Where settings come from besides the built-in defaults: the TOML file and the `CTWA_`
//! environment. Only `CTWA_<SECTION>__<KEY>` names are configuration; other `CTWA_*` names
//! (Kubernetes injects `CTWA_PORT`, `CTWA_SERVICE_HOST`, … for a Service named `ctwa`) are
//! ignored and reported by name. Secrets and ids are taken from the environment verbatim, as
//! strings, and no error message ever quotes the value of a secret key.

use figment::value::{Dict, Map, Value};
use figment::{Error, Metadata, Profile, Provider};

/// Keys whose values are secrets: never quoted in an error.
pub const SECRET_KEYS: &[&str] = &[
    "webhook.verify_token",
    "webhook.app_secrets",
    "api.token",
    "graph.access_token",
];

/// Keys read from the environment exactly as written: `CTWA_API__TOKEN=007` is `"007"`, not 7.
const VERBATIM_KEYS: &[&str] = &[
    "webhook.verify_token",
    "webhook.app_secrets",
    "api.token",
    "graph.access_token",
    "graph.waba_id",
    "graph.api_version",
    "server.public_url",
];

/// The environment's layer: built from `(name, value)` pairs so tests need not touch the
/// process environment.
pub struct EnvLayer {
    dict: Dict,
    /// `CTWA_*` names that are not `CTWA_<SECTION>__<KEY>` (names only, never values).
    pub ignored: Vec<String>,
}

impl EnvLayer {
    pub fn from_process() -> Self {
        Self::from_pairs(std::env::vars_os().filter_map(|(k, v)| {
            // A name or value that is not UTF-8 cannot be one of ours.
            Some((k.into_string().ok()?, v.into_string().ok()?))
        }))
    }

    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut dict = Dict::new();
        let mut ignored = Vec::new();
        for (name, value) in pairs {
            let Some(rest) = strip_prefix_ignore_case(&name, "CTWA_") else {
                continue;
            };
            if !rest.contains("__") {
                ignored.push(name);
                continue;
            }
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            let key = path.join(".");
            let value = if key == "webhook.app_secrets" {
                secret_list(&value)
            } else if VERBATIM_KEYS.contains(&key.as_str()) {
                Value::from(value)
            } else {
                // Numbers, booleans and `[a, b]` lists, as figment's own `Env` reads them.
                value
                    .parse::<Value>()
                    .unwrap_or_else(|_| Value::from(value))
            };
            insert(&mut dict, &path, value);
        }
        ignored.sort();
        Self { dict, ignored }
    }
}

fn strip_prefix_ignore_case<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &name[prefix.len()..])
}

/// `s`, or `[s1, s2]` while rotating: a list either way. Items may be quoted.
fn secret_list(raw: &str) -> Value {
    let trimmed = raw.trim();
    let items: Vec<Value> = match trimmed.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        Some(inner) => inner
            .split(',')
            .map(|item| {
                let item = item.trim();
                let unquoted = item
                    .strip_prefix('"')
                    .and_then(|i| i.strip_suffix('"'))
                    .unwrap_or(item);
                Value::from(unquoted.to_owned())
            })
            .collect(),
        None => vec![Value::from(raw.to_owned())],
    };
    Value::from(items)
}

fn insert(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [head, rest @ ..] => {
            let entry = dict
                .entry(head.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            } else {
                // `CTWA_A=1` and `CTWA_A__B=2` both set: the table wins, so the key is checked.
                let mut inner = Dict::new();
                insert(&mut inner, rest, value);
                *entry = Value::from(inner);
            }
        }
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named("`CTWA_` environment variable(s)")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let mut map = Map::new();
        map.insert(Profile::Default, self.dict.clone());
        Ok(map)
    }
}

/// One line naming the key, what was wrong and where it came from, without serde internals and
/// never with a secret's value.
pub fn describe(err: &Error) -> String {
    use figment::error::Kind;
    let key = err.path.join(".").to_ascii_lowercase();
    let secret = SECRET_KEYS
        .iter()
        .any(|k| key == *k || key.starts_with(&format!("{k}.")));
    let source = err
        .metadata
        .as_ref()
        .map(|m| match &m.source {
            Some(src) => format!(" in {} {src}", m.name),
            None => format!(" in {}", m.name),
        })
        .unwrap_or_default();
    let what = match &err.kind {
        Kind::UnknownField(field, expected) => {
            let field = field.to_ascii_lowercase();
            // figment's path already ends with the unknown field.
            let full = if key.is_empty() {
                field
            } else if key == field || key.ends_with(&format!(".{field}")) {
                key.clone()
            } else {
                format!("{key}.{field}")
            };
            let expected = if expected.is_empty() {
                String::new()
            } else {
                format!(" (expected one of: {})", expected.join(", "))
            };
            return format!("unknown key {full}{source}{expected}");
        }
        // A secret's value is never quoted: only what was expected.
        Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) if secret => {
            format!("expected {expected}")
        }
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            format!("found {actual}, expected {expected}")
        }
        Kind::Message(msg) if secret => {
            // Our own visitors never quote values; a message from elsewhere might.
            if msg.starts_with("expected") {
                msg.clone()
            } else {
                "invalid value".to_owned()
            }
        }
        Kind::Message(msg) => msg.clone(),
        Kind::UnknownVariant(actual, expected) => {
            format!("found {actual:?}, expected one of: {}", expected.join(", "))
        }
        _ if secret => "invalid value".to_owned(),
        other => other.to_string(),
    };
    if key.is_empty() {
        format!("{what}{source}")
    } else {
        format!("{key}: {what}{source}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(pairs: &[(&str, &str)]) -> EnvLayer {
        EnvLayer::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    }

    #[test]
    fn kubernetes_service_links_are_ignored_by_name() {
        let env = layer(&[
            ("CTWA_PORT", "tcp://10.0.0.1:8080"),
            ("CTWA_SERVICE_HOST", "10.0.0.1"),
            ("CTWA_PORT_8080_TCP_ADDR", "10.0.0.1"),
            ("CTWA_LEADS_PORT", "tcp://10.0.0.2:80"),
            ("CTWA_API__TOKEN", "t"),
            ("HOME", "/root"),
        ]);
        assert_eq!(
            env.ignored,
            [
                "CTWA_LEADS_PORT",
                "CTWA_PORT",
                "CTWA_PORT_8080_TCP_ADDR",
                "CTWA_SERVICE_HOST"
            ]
        );
        assert_eq!(env.dict.len(), 1, "only api.token: {:?}", env.dict);
    }

    #[test]
    fn secrets_are_verbatim_and_a_lone_app_secret_is_a_list_of_one() {
        let env = layer(&[
            ("CTWA_API__TOKEN", "007"),
            ("CTWA_WEBHOOK__VERIFY_TOKEN", "true"),
            ("CTWA_GRAPH__ACCESS_TOKEN", "1.5e3"),
            ("CTWA_WEBHOOK__APP_SECRETS", "my-real-app-secret-123"),
        ]);
        let get = |a: &str, b: &str| env.dict[a].find_ref(b).cloned();
        assert_eq!(get("api", "token"), Some(Value::from("007".to_owned())));
        assert_eq!(
            get("webhook", "verify_token"),
            Some(Value::from("true".to_owned()))
        );
        assert_eq!(
            get("graph", "access_token"),
            Some(Value::from("1.5e3".to_owned()))
        );
        assert_eq!(
            get("webhook", "app_secrets"),
            Some(Value::from(vec![Value::from(
                "my-real-app-secret-123".to_owned()
            )]))
        );
        let rotating = layer(&[("CTWA_WEBHOOK__APP_SECRETS", "[new, \"old\"]")]);
        assert_eq!(
            rotating.dict["webhook"].find_ref("app_secrets").cloned(),
            Some(Value::from(vec![
                Value::from("new".to_owned()),
                Value::from("old".to_owned())
            ]))
        );
    }
}
