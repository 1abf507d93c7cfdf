//! How the settings file's scalar values are read when they may hold a secret or an id: a
//! string, or a number written without quotes, and for `app_secrets` (and a destination's
//! `secret`) one string or a list of them. No value read here ever appears in an error, since
//! the key may hold a secret, and every secret comes out as a [`SecretString`].

use secrecy::{ExposeSecret, SecretString};

use super::ConfigError;

/// A string, or a number written without quotes (`verify_token = 12345` in the file); its
/// value never appears in an error, since the key may hold a secret.
struct TextVisitor;

impl<'de> serde::de::Visitor<'de> for TextVisitor {
    type Value = String;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<String, E> {
        Err(E::custom("expected a string"))
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<String, E> {
        Err(E::custom("expected a string (quote it)"))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(serde::de::Error::custom("expected a string, not a list"))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(serde::de::Error::custom("expected a string, not a table"))
    }
}

pub(super) fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    d.deserialize_any(TextVisitor).map(Some)
}

pub(super) fn secret<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SecretString>, D::Error> {
    Ok(text(d)?.map(SecretString::from))
}

/// One secret or a list of them: `app_secrets = "s"` is read as `["s"]`.
pub(super) fn secrets<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<SecretString>, D::Error> {
    struct Secrets;
    impl<'de> serde::de::Visitor<'de> for Secrets {
        type Value = Vec<SecretString>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![SecretString::from(v)])
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(vec![SecretString::from(v.to_string())])
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(vec![SecretString::from(v.to_string())])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element_seed(TextSeed)? {
                out.push(SecretString::from(item));
            }
            Ok(out)
        }
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Err(E::custom("expected a string or a list of strings"))
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(E::custom("expected a string or a list of strings"))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(serde::de::Error::custom(
                "expected a string or a list of strings",
            ))
        }
    }
    struct TextSeed;
    impl<'de> serde::de::DeserializeSeed<'de> for TextSeed {
        type Value = String;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
            d.deserialize_any(TextVisitor)
        }
    }
    d.deserialize_any(Secrets)
}

/// `secret`, unless it is missing or blank: then an error naming `key`.
pub(super) fn required(
    secret: Option<SecretString>,
    key: &'static str,
) -> Result<SecretString, ConfigError> {
    match secret {
        Some(s) if !s.expose_secret().trim().is_empty() => Ok(s),
        _ => Err(ConfigError::MissingSecret { key }),
    }
}
