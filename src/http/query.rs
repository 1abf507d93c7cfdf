//! Query strings, read one way on every route: `+` and `%XX` are decoded strictly (a malformed
//! escape or invalid UTF-8 is a 400, never silently replaced), an empty value is a 400 naming
//! the parameter (leave it out instead; the document says `minLength: 1`), and a route names
//! the parameters it takes, so an unknown one is a 400 naming it instead of a filter silently
//! dropped.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::http::error::ApiError;

/// The request's query parameters, decoded, in order.
#[derive(Debug, Default, Clone)]
pub struct Params(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Params::parse_query(parts.uri.query().unwrap_or_default())
    }
}

fn decode(raw: &str, what: &str) -> Result<String, ApiError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "malformed query string: {what} has a % not followed by two hex digits"
                        ))
                    })?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::bad_request(format!("query parameter {what}: not valid UTF-8")))
}

impl Params {
    pub fn parse_query(query: &str) -> Result<Self, ApiError> {
        let mut pairs = Vec::new();
        for piece in query.split('&').filter(|p| !p.is_empty()) {
            let (raw_name, raw_value) = piece.split_once('=').unwrap_or((piece, ""));
            let name = decode(raw_name, "a parameter name")?;
            let value = decode(raw_value, &name)?;
            if name.is_empty() {
                return Err(ApiError::bad_request(
                    "malformed query string: a parameter has no name",
                ));
            }
            if value.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "{name}: empty value (leave the parameter out instead)"
                )));
            }
            pairs.push((name, value));
        }
        Ok(Self(pairs))
    }

    /// 400 naming the first parameter not in `allowed`.
    pub fn only(&self, allowed: &[&str]) -> Result<&Self, ApiError> {
        self.only_in(&[allowed])
    }

    /// 400 naming the first parameter in none of the `allowed` lists.
    pub fn only_in(&self, allowed: &[&[&str]]) -> Result<&Self, ApiError> {
        let known = |name: &str| allowed.iter().any(|list| list.contains(&name));
        if let Some((name, _)) = self.0.iter().find(|(n, _)| !known(n)) {
            return Err(ApiError::bad_request(format!(
                "{name}: unknown query parameter (expected one of {})",
                allowed.concat().join(", ")
            )));
        }
        Ok(self)
    }

    /// The parameters as a struct of `Option<String>` fields; a repeated one is a 400.
    pub fn to<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        for (i, (name, _)) in self.0.iter().enumerate() {
            if self.0[..i].iter().any(|(n, _)| n == name) {
                return Err(ApiError::bad_request(format!(
                    "{name}: given more than once"
                )));
            }
        }
        let map: serde_json::Map<String, serde_json::Value> = self
            .0
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|err| ApiError::bad_request(format!("query: {err}")))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

/// Checks that the parameter `name`, if given, is one of `allowed` (a 400 listing them if not).
pub fn one_of(name: &str, value: Option<&str>, allowed: &[&str]) -> Result<(), ApiError> {
    match value {
        Some(v) if !allowed.contains(&v) => {
            let list = match allowed.split_last() {
                Some((last, [])) => (*last).to_owned(),
                Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                None => String::new(),
            };
            Err(ApiError::bad_request(format!("{name}: expected {list}")))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_is_strict_and_empty_values_are_refused() {
        let p = Params::parse_query("a=x+y%21&c=%C3%A9&&").unwrap();
        assert_eq!(p.get("a"), Some("x y!"));
        assert_eq!(p.get("c"), Some("é"));
        let err = Params::parse_query("a=1&b=").unwrap_err().to_string();
        assert!(err.starts_with("b: empty value"), "{err}");
        for bad in ["name=%FF%FE", "after=<%zz>", "x=%4", "=v", "flag"] {
            let err = Params::parse_query(bad).unwrap_err();
            assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn one_of_lists_the_values_it_takes() {
        assert!(one_of("status", None, &["a", "b"]).is_ok());
        assert!(one_of("status", Some("b"), &["a", "b"]).is_ok());
        let err = one_of("status", Some("c"), &["pending", "sent", "failed"]).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
        assert!(
            err.to_string()
                .starts_with("status: expected pending, sent or failed"),
            "{err}"
        );
    }

    #[test]
    fn unknown_parameters_are_named() {
        let p = Params::parse_query("source_id=1&sourceid=2").unwrap();
        let err = p.only(&["source_id"]).unwrap_err().to_string();
        assert!(err.starts_with("sourceid:"), "{err}");
    }

    #[test]
    fn a_repeated_parameter_is_refused() {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct P {
            a: Option<String>,
        }
        let p = Params::parse_query("a=1&a=2").unwrap();
        assert!(p.to::<P>().is_err());
        assert!(Params::parse_query("a=1").unwrap().to::<P>().is_ok());
    }
}
