//! HS256 JSON Web Tokens (RFC 7519, in the JWS compact form of RFC 7515),
//! signed and checked with `hmac` and `sha2`. HS256 is the one algorithm
//! conduit issues, so a general JOSE library's other algorithms (and their
//! dependencies' advisories) have no place in the tree, and a token is
//! refused before any JSON is read unless its signature is ours.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The longest token read at all; conduit's are about 200 bytes.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// `{"alg":"HS256","typ":"JWT"}` in base64url: the header of every token
/// issued here.
const HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts, too long, or a part that is not the JSON
    /// it should be; says which.
    Malformed(&'static str),
    /// The signature is not ours.
    Signature,
    /// Signed by us but declaring another algorithm, or extensions it
    /// requires us to understand (`crit`).
    Header,
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed(what) => write!(f, "malformed token: {what}"),
            Self::Signature => f.write_str("the signature does not match"),
            Self::Header => f.write_str("the header declares an algorithm or extension other than HS256"),
        }
    }
}

/// The header fields a verifier must look at.
#[derive(serde::Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// Signs and verifies HS256 tokens with one secret.
#[derive(Clone)]
pub struct Hs256 {
    keyed: HmacSha256,
}

impl std::fmt::Debug for Hs256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hs256")
    }
}

impl Hs256 {
    /// Tokens signed with `secret` (HMAC takes a key of any length).
    pub fn new(secret: &[u8]) -> Self {
        let keyed = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        Self { keyed }
    }

    /// A signed token carrying `claims`.
    pub fn sign(&self, claims: &impl Serialize) -> Result<String, serde_json::Error> {
        let payload = serde_json::to_vec(claims)?;
        let mut token = String::with_capacity(HEADER.len() + payload.len() * 4 / 3 + 48);
        token.push_str(HEADER);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let mut mac = self.keyed.clone();
        mac.update(token.as_bytes());
        let signature = mac.finalize().into_bytes();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(token)
    }

    /// The claims of `token` if we signed it: the signature is checked (in
    /// constant time) before the header or the claims are parsed. Times in
    /// the claims are the caller's to check.
    pub fn verify<C: DeserializeOwned>(&self, token: &str) -> Result<C, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed("longer than any token issued here"));
        }
        let (signed, signature) = token.rsplit_once('.').ok_or(JwtError::Malformed("not three parts"))?;
        let (header, payload) = signed.split_once('.').ok_or(JwtError::Malformed("not three parts"))?;
        if payload.contains('.') {
            return Err(JwtError::Malformed("more than three parts"));
        }
        let signature =
            URL_SAFE_NO_PAD.decode(signature).map_err(|_| JwtError::Malformed("signature is not base64url"))?;
        let mut mac = self.keyed.clone();
        mac.update(signed.as_bytes());
        mac.verify_slice(&signature).map_err(|_| JwtError::Signature)?;
        let header = URL_SAFE_NO_PAD.decode(header).map_err(|_| JwtError::Malformed("header is not base64url"))?;
        let header: Header = serde_json::from_slice(&header).map_err(|_| JwtError::Malformed("header is not JSON"))?;
        if header.alg != "HS256" || header.crit.is_some() {
            return Err(JwtError::Header);
        }
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| JwtError::Malformed("claims are not base64url"))?;
        serde_json::from_slice(&payload).map_err(|_| JwtError::Malformed("claims are not the expected JSON"))
    }
}

/// One fuzzing input (`fuzz/`, target `jwt`, and the replay of its kept
/// inputs in the tests): as a token it is refused or accepted, never a
/// panic, and what is accepted signs and verifies again to the same
/// claims; as JSON claims it signs and verifies to itself (unless the
/// token is over the length read at all), and one flipped bit anywhere in
/// that token is refused.
#[cfg(any(test, fuzzing))]
pub(crate) fn fuzz_one(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let keys = Hs256::new(b"fuzz-secret");
    if let Ok(claims) = keys.verify::<serde_json::Value>(text) {
        let again = keys.sign(&claims).expect("accepted claims sign");
        assert_eq!(keys.verify::<serde_json::Value>(&again), Ok(claims));
    }
    if let Ok(claims) = serde_json::from_str::<serde_json::Value>(text) {
        let token = keys.sign(&claims).expect("JSON signs");
        if token.len() > MAX_TOKEN_BYTES {
            // Claims too long for any token conduit reads (its own are ~200 bytes).
            let refused = JwtError::Malformed("longer than any token issued here");
            assert_eq!(keys.verify::<serde_json::Value>(&token), Err(refused));
            return;
        }
        assert_eq!(keys.verify::<serde_json::Value>(&token).as_ref(), Ok(&claims));
        let mut bytes = token.into_bytes();
        let at = data.len() % bytes.len();
        bytes[at] ^= 0x01;
        if let Ok(flipped) = String::from_utf8(bytes) {
            assert!(keys.verify::<serde_json::Value>(&flipped).is_err(), "a flipped bit was accepted: {flipped}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Claims {
        sub: String,
        exp: u64,
    }

    fn part(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    /// A token with any header and claims, signed with `secret`.
    fn forge(secret: &[u8], header: &str, claims: &str) -> String {
        let signed = format!("{}.{}", part(header), part(claims));
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn tokens_round_trip_and_match_the_rfc_7515_example() {
        let keys = Hs256::new(b"secret");
        let claims = Claims { sub: "7".into(), exp: 99 };
        let token = keys.sign(&claims).unwrap();
        assert!(token.starts_with(&format!("{}.", part(r#"{"alg":"HS256","typ":"JWT"}"#))));
        assert_eq!(keys.verify::<Claims>(&token).unwrap(), claims);
        // RFC 7515, appendix A.1: a token signed by another implementation.
        let key = URL_SAFE_NO_PAD
            .decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
            .unwrap();
        let example = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.\
            eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.\
            dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let claims: serde_json::Value = Hs256::new(&key).verify(example).unwrap();
        assert_eq!(claims["iss"], "joe");
    }

    #[test]
    fn anything_but_our_own_signature_and_header_is_refused() {
        let keys = Hs256::new(b"secret");
        let good = keys.sign(&Claims { sub: "7".into(), exp: 99 }).unwrap();
        let claims = r#"{"sub":"7","exp":99}"#;
        let cases: Vec<(String, JwtError)> = vec![
            (forge(b"other", r#"{"alg":"HS256"}"#, claims), JwtError::Signature),
            (format!("{}.{}.", part(r#"{"alg":"none"}"#), part(claims)), JwtError::Signature),
            (forge(b"secret", r#"{"alg":"none"}"#, claims), JwtError::Header),
            (forge(b"secret", r#"{"alg":"HS512"}"#, claims), JwtError::Header),
            (forge(b"secret", r#"{"alg":"HS256","crit":["exp"]}"#, claims), JwtError::Header),
            (forge(b"secret", "not json", claims), JwtError::Malformed("header is not JSON")),
            (
                forge(b"secret", r#"{"alg":"HS256"}"#, r#"{"sub":7}"#),
                JwtError::Malformed("claims are not the expected JSON"),
            ),
            (
                forge(b"secret", r#"{"alg":"HS256"}"#, r#"{"sub":"7","sub":"8","exp":1}"#),
                JwtError::Malformed("claims are not the expected JSON"),
            ),
            (good.replacen('.', "..", 1), JwtError::Malformed("more than three parts")),
            ("abc".into(), JwtError::Malformed("not three parts")),
            (format!("{good}="), JwtError::Malformed("signature is not base64url")),
            ("a".repeat(MAX_TOKEN_BYTES + 1), JwtError::Malformed("longer than any token issued here")),
        ];
        for (token, expected) in cases {
            assert_eq!(keys.verify::<Claims>(&token).unwrap_err(), expected, "{token}");
        }
        // A flipped bit anywhere is a signature that does not match.
        let mut bytes = good.into_bytes();
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        let flipped = String::from_utf8(bytes).unwrap();
        assert!(keys.verify::<Claims>(&flipped).is_err());
    }

    #[test]
    fn the_inputs_kept_by_fuzzing_replay() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut replayed = 0;
        for kept in ["seeds/jwt", "regressions/jwt"] {
            let Ok(entries) = std::fs::read_dir(root.join(kept)) else { continue };
            for entry in entries {
                fuzz_one(&std::fs::read(entry.unwrap().path()).unwrap());
                replayed += 1;
            }
        }
        assert!(replayed > 0, "no input kept");
    }
}
