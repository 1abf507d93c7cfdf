//! Standard Webhooks v1 signatures (github.com/standard-webhooks/standard-webhooks): a secret is
//! `whsec_` + base64 of 24 to 64 random bytes, and a request carries `webhook-id`,
//! `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{ts}.{body}">`,
//! one signature per secret, space-separated, so a receiver keeps verifying while a secret
//! rotates. [`verify`] is the receiving side, for tests and the example receiver.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "whsec_";

/// The key bytes of a `whsec_` secret, or why it is not one (never echoing the value).
pub fn key_bytes(secret: &SecretString) -> Result<Vec<u8>, &'static str> {
    let encoded = secret
        .expose_secret()
        .trim()
        .strip_prefix(PREFIX)
        .ok_or("expected whsec_ followed by base64 (a Standard Webhooks secret)")?;
    let bytes = STANDARD
        .decode(encoded)
        .map_err(|_| "the part after whsec_ is not valid base64")?;
    if !(24..=64).contains(&bytes.len()) {
        return Err("the key must be 24 to 64 bytes (Standard Webhooks); generate one with `openssl rand -base64 32`");
    }
    Ok(bytes)
}

/// Signs with every secret of a destination. Keyed once; `Debug` shows no key.
#[derive(Clone)]
pub struct Signer {
    keys: Vec<HmacSha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} keys)", self.keys.len())
    }
}

impl Signer {
    pub fn new(secrets: &[SecretString]) -> Result<Self, &'static str> {
        let keys = secrets
            .iter()
            .map(|s| {
                let bytes = key_bytes(s)?;
                HmacSha256::new_from_slice(&bytes).map_err(|_| "unusable key")
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err("no secret");
        }
        Ok(Self { keys })
    }

    /// The `webhook-signature` value for one attempt.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut out = String::with_capacity(self.keys.len() * 48);
        for key in &self.keys {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str("v1,");
            out.push_str(&STANDARD.encode(mac(key, id, timestamp, body)));
        }
        out
    }
}

fn mac(key: &HmacSha256, id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut mac = key.clone();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// The receiving side: whether any `v1,` signature in `header` is `secret`'s over the
/// message. Compared in constant time. (Checking the timestamp's age is the receiver's job.)
pub fn verify(secret: &SecretString, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let Ok(bytes) = key_bytes(secret) else {
        return false;
    };
    let Ok(key) = HmacSha256::new_from_slice(&bytes) else {
        return false;
    };
    header.split(' ').any(|sig| {
        sig.strip_prefix("v1,")
            .and_then(|b64| STANDARD.decode(b64).ok())
            .is_some_and(|given| {
                let mut mac = key.clone();
                mac.update(format!("{id}.{timestamp}.").as_bytes());
                mac.update(body);
                mac.verify_slice(&given).is_ok()
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The vector every Standard Webhooks library tests its signing against.
    const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_spec_vector() {
        let signer = Signer::new(&[SecretString::from(KEY)]).unwrap();
        assert_eq!(signer.sign(ID, TS, BODY), EXPECTED);
        assert!(verify(&SecretString::from(KEY), ID, TS, BODY, EXPECTED));
    }

    #[test]
    fn rotation_sends_one_signature_per_secret_and_either_verifies() {
        let other = SecretString::from(format!("whsec_{}", STANDARD.encode([7u8; 32])));
        let signer = Signer::new(&[other.clone(), SecretString::from(KEY)]).unwrap();
        let header = signer.sign(ID, TS, BODY);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1], EXPECTED);
        assert!(verify(&other, ID, TS, BODY, &header));
        assert!(verify(&SecretString::from(KEY), ID, TS, BODY, &header));
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let key = SecretString::from(KEY);
        assert!(!verify(&key, ID, TS + 1, BODY, EXPECTED));
        assert!(!verify(&key, "msg_other", TS, BODY, EXPECTED));
        assert!(!verify(&key, ID, TS, br#"{"test": 2432232315}"#, EXPECTED));
        assert!(!verify(
            &key,
            ID,
            TS,
            BODY,
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        ));
    }

    #[test]
    fn bad_secrets_are_refused_without_echo() {
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_!!!",
            "whsec_c2hvcnQ=",
        ] {
            let err = key_bytes(&SecretString::from(bad)).unwrap_err();
            assert!(!err.contains(bad), "{err}");
        }
        assert!(
            format!("{:?}", Signer::new(&[SecretString::from(KEY)]).unwrap())
                .starts_with("Signer(1")
        );
    }
}
