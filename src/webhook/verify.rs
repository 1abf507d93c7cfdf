//! Signature checks: the only way to turn received bytes into a [`VerifiedBody`]. Meta signs the
//! raw body with HMAC-SHA256 and the app secret (`X-Hub-Signature-256: sha256=<hex>`); several
//! secrets may be configured so that one can be rotated. The tag comparison is hmac's
//! constant-time `verify_slice`, and no error says what the expected tag was.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
const PREFIX: &str = "sha256=";
/// "sha256=" and 64 hex digits; anything longer is refused before decoding.
const HEADER_LEN: usize = PREFIX.len() + 64;

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery was refused. The messages are safe to send back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    #[error("more than one X-Hub-Signature-256 header")]
    Duplicate,
    #[error("malformed X-Hub-Signature-256 header: expected sha256=<64 hex digits>")]
    Malformed,
    #[error("signature does not match the body")]
    Mismatch,
}

/// A body whose signature matched one of the app secrets. Only [`SignatureVerifier`] makes one.
#[derive(Debug, Clone)]
pub struct VerifiedBody(Bytes);

impl VerifiedBody {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

/// Keyed HMAC states, one per app secret, so a check costs no key schedule.
#[derive(Clone)]
pub struct SignatureVerifier {
    keys: Vec<HmacSha256>,
}

impl std::fmt::Debug for SignatureVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureVerifier")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl SignatureVerifier {
    pub fn new(secrets: &[SecretString]) -> Self {
        let keys = secrets
            .iter()
            .map(|s| {
                // HMAC takes a key of any length, so this cannot fail.
                HmacSha256::new_from_slice(s.expose_secret().as_bytes())
                    .expect("HMAC accepts keys of any length")
            })
            .collect();
        Self { keys }
    }

    /// Checks the signature header against the raw body, exactly as received.
    pub fn verify(&self, headers: &HeaderMap, body: Bytes) -> Result<VerifiedBody, SignatureError> {
        let mut values = headers.get_all(SIGNATURE_HEADER).iter();
        let value = values.next().ok_or(SignatureError::Missing)?;
        if values.next().is_some() {
            return Err(SignatureError::Duplicate);
        }
        let value = value.as_bytes();
        if value.len() != HEADER_LEN || !value.starts_with(PREFIX.as_bytes()) {
            return Err(SignatureError::Malformed);
        }
        let mut tag = [0u8; 32];
        hex::decode_to_slice(&value[PREFIX.len()..], &mut tag)
            .map_err(|_| SignatureError::Malformed)?;
        let matched = self.keys.iter().any(|key| {
            let mut mac = key.clone();
            mac.update(&body);
            mac.verify_slice(&tag).is_ok()
        });
        if matched {
            Ok(VerifiedBody(body))
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

/// `sha256=<hex>` for `body` under `secret`: what Meta sends, for the simulator and tests.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("{PREFIX}{}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn verifier() -> SignatureVerifier {
        SignatureVerifier::new(&[SecretString::from("old"), SecretString::from("new")])
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(SIGNATURE_HEADER, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn any_configured_secret_verifies() {
        let body = Bytes::from_static(b"{\"a\":1}");
        for secret in ["old", "new"] {
            let got = verifier().verify(&headers(&sign(secret, &body)), body.clone());
            assert_eq!(got.unwrap().as_bytes(), &body[..]);
        }
        let forged = verifier().verify(&headers(&sign("other", &body)), body);
        assert_eq!(forged.unwrap_err(), SignatureError::Mismatch);
    }

    #[test]
    fn malformed_headers_are_refused_without_panicking() {
        let body = Bytes::from_static(b"x");
        let good = sign("old", &body);
        for bad in [
            "",
            "sha256=",
            "sha1=abcd",
            &good.to_uppercase(),
            &good[..good.len() - 1],
            &format!("{good}0"),
            &good.replace("sha256=", "sha256:"),
            &format!("sha256={}", "zz".repeat(32)),
        ] {
            let err = verifier().verify(&headers(bad), body.clone()).unwrap_err();
            assert!(
                matches!(err, SignatureError::Malformed),
                "{bad:?} gave {err:?}"
            );
        }
        assert_eq!(
            verifier()
                .verify(&HeaderMap::new(), body.clone())
                .unwrap_err(),
            SignatureError::Missing
        );
        let mut twice = headers(&good);
        twice.append(SIGNATURE_HEADER, HeaderValue::from_str(&good).unwrap());
        assert_eq!(
            verifier().verify(&twice, body).unwrap_err(),
            SignatureError::Duplicate
        );
    }

    #[test]
    fn debug_does_not_print_keys() {
        assert_eq!(format!("{:?}", verifier()), "SignatureVerifier { keys: 2 }");
    }
}
