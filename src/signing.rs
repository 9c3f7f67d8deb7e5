//! Request signatures: how hookbus signs what it sends, and how a receiver
//! written in Rust checks them.
//!
//! Every function here is pure (no I/O, no state) and tested against
//! published vectors (RFC 2202, RFC 4231, GitHub's documentation and the
//! Standard Webhooks specification). Comparisons are constant time.
//!
//! # The three signature headers
//!
//! A subscription with a secret gets its requests signed in one of two
//! modes, chosen by its [`Signing`](crate::Signing); a subscription
//! without a secret gets unsigned requests.
//!
//! * [`Signing::Hub`](crate::Signing::Hub), the default: two headers over
//!   the exact body bytes, keyed with the secret string's UTF-8 bytes as
//!   given (any secret, a `whsec_` one included, prefix and all):
//!   * `X-Hub-Signature: sha1=<hex HMAC-SHA1>`, GitHub's and
//!     ServiceStack.Webhooks' header ([`sign_sha1`]);
//!   * `X-Hub-Signature-256: sha256=<hex HMAC-SHA256>` ([`sign_sha256`]).
//!     Receivers should check this one; SHA-1 is there for older clients.
//!
//!   During a secret rotation they are signed with the new secret only.
//! * [`Signing::StandardWebhooks`](crate::Signing::StandardWebhooks)
//!   ([Standard Webhooks](https://www.standardwebhooks.com/)): three
//!   headers, `webhook-id` (the delivery id), `webhook-timestamp` (unix
//!   seconds) and `webhook-signature: v1,<base64 HMAC-SHA256 of
//!   "{id}.{timestamp}.{body}">` ([`sign_standard`]), keyed with the
//!   secret's decoded bytes: the secret is `whsec_` and the base64 of 24 to
//!   64 bytes ([`decode_standard_secret`]; [`generate_secret`] makes one).
//!   During a secret rotation the header holds one `v1,` entry per live
//!   secret, space-separated, so receivers holding either secret accept it.
//!
//! # Verifying a request
//!
//! Take the raw body bytes as received (the signature covers exactly
//! them: verify before parsing, never a re-serialized value), then:
//!
//! * `X-Hub-Signature-256` (or `X-Hub-Signature`): [`verify_signature`]
//!   with the secret's bytes, the body and the header's value; `false`
//!   means answer 401.
//! * Standard Webhooks: [`verify_standard`] with the secret, all the
//!   request's headers as `(name, value)` pairs (names in any case), the
//!   body and a replay window ([`DEFAULT_TOLERANCE`], 5 minutes); an `Err`
//!   ([`VerifyError`]) says why the request is refused.
//!   [`verify_standard_at`] takes "now" explicitly, for tests.
//!
//! A delivery keeps its id (`X-Webhook-Delivery`, and `webhook-id` in
//! Standard Webhooks mode) on every retry: de-duplicate on it, since
//! delivery is at least once.
//!
//! ```
//! use hookbus::signing::{self, DEFAULT_TOLERANCE, VerifyError};
//!
//! /// A receiver's check: the status to answer a request with.
//! fn check(secret: &str, headers: &[(&str, &str)], body: &[u8]) -> u16 {
//!     let header = |name: &str| {
//!         headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
//!     };
//!     let verified = if let Some(sig) = header("x-hub-signature-256") {
//!         signing::verify_signature(secret.as_bytes(), body, sig)
//!     } else {
//!         signing::verify_standard(secret, headers.iter().copied(), body, DEFAULT_TOLERANCE)
//!             .is_ok()
//!     };
//!     if verified { 204 } else { 401 }
//! }
//!
//! let body = br#"{"text":"I said hello"}"#;
//!
//! // What a subscription in the default (Hub) mode sends, with secret "shh".
//! let sig = signing::sign_sha256(b"shh", body);
//! let hub = [("X-Webhook-Delivery", "0190a1b2c3d4e5f60718293a4b5c6d7e"),
//!            ("X-Hub-Signature-256", sig.as_str())];
//! assert_eq!(check("shh", &hub, body), 204);
//! assert_eq!(check("another secret", &hub, body), 401);
//! assert_eq!(check("shh", &hub, br#"{"text":"changed"}"#), 401);
//!
//! // What a Standard Webhooks subscription sends.
//! let secret = signing::generate_secret(); // "whsec_…"
//! let key = signing::decode_standard_secret(&secret)?;
//! let id = "0190a1b2c3d4e5f60718293a4b5c6d7e";
//! let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
//! let ts = now.as_secs().to_string();
//! let sig = signing::sign_standard(&key, id, now.as_secs(), body);
//! let std = [("webhook-id", id), ("webhook-timestamp", ts.as_str()),
//!            ("webhook-signature", sig.as_str())];
//! assert_eq!(check(&secret, &std, body), 204);
//! assert_eq!(check(&signing::generate_secret(), &std, body), 401);
//!
//! // The error says why; an old timestamp is refused as a possible replay.
//! let old = (now.as_secs() - 3600).to_string();
//! let replayed = [("webhook-id", id), ("webhook-timestamp", old.as_str()),
//!                 ("webhook-signature", sig.as_str())];
//! assert_eq!(
//!     signing::verify_standard(&secret, replayed, body, DEFAULT_TOLERANCE),
//!     Err(VerifyError::Stale),
//! );
//! # Ok::<(), VerifyError>(())
//! ```
//!
//! The README shows a complete receiver with axum; `examples/demo.rs` runs
//! one on a plain socket.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

type HmacSha1 = Hmac<Sha1>;
type HmacSha256 = Hmac<Sha256>;

/// `sha1=<hex HMAC-SHA1(secret, body)>`, the `X-Hub-Signature` value.
pub fn sign_sha1(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha1::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`, the `X-Hub-Signature-256` value.
pub fn sign_sha256(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks an `X-Hub-Signature` (`sha1=…`) or `X-Hub-Signature-256`
/// (`sha256=…`) header value against the body, in constant time.
///
/// hookbus signs the exact body bytes with HMAC, keyed by the subscription
/// secret's UTF-8 bytes, and sends `X-Hub-Signature: sha1=<hex HMAC-SHA1>`
/// (GitHub's and ServiceStack.Webhooks' header) and `X-Hub-Signature-256:
/// sha256=<hex HMAC-SHA256>`. Receivers should check the SHA-256 one; this
/// function checks either. (Subscriptions with
/// [`Signing::StandardWebhooks`](crate::Signing::StandardWebhooks) are
/// checked with [`verify_standard`] instead.)
///
/// Returns `false` for a wrong secret, a changed body, an unknown algorithm
/// or a malformed value; it never panics.
///
/// ```
/// let body = br#"{"text":"I said hello"}"#;
/// let header = hookbus::signing::sign_sha256(b"shh", body);
/// assert!(hookbus::signing::verify_signature(b"shh", body, &header));
/// assert!(!hookbus::signing::verify_signature(b"wrong", body, &header));
/// ```
pub fn verify_signature(secret: &[u8], body: &[u8], header_value: &str) -> bool {
    let Some((algo, hex_mac)) = header_value.trim().split_once('=') else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_mac) else {
        return false;
    };
    match algo.to_ascii_lowercase().as_str() {
        "sha1" => {
            let mut mac = HmacSha1::new_from_slice(secret).expect("any key length");
            mac.update(body);
            mac.verify_slice(&expected).is_ok()
        }
        "sha256" => {
            let mut mac = HmacSha256::new_from_slice(secret).expect("any key length");
            mac.update(body);
            mac.verify_slice(&expected).is_ok()
        }
        _ => false,
    }
}

/// The prefix of Standard Webhooks secrets.
pub(crate) const SECRET_PREFIX: &str = "whsec_";
/// The default replay window of [`verify_standard`]: 5 minutes.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// A new random secret in the Standard Webhooks form: `whsec_` and the
/// base64 of 32 bytes from the operating system's CSPRNG. It works for both
/// signing modes.
pub fn generate_secret() -> String {
    let mut key = [0u8; 32];
    // The OS random source failing is not something a caller can handle;
    // it is also what every TLS connection relies on.
    getrandom::fill(&mut key).expect("the operating system's random source failed");
    format!("{SECRET_PREFIX}{}", B64.encode(key))
}

/// Decodes a Standard Webhooks secret (`whsec_` + base64, or the bare
/// base64) to its key bytes: 24 to 64 bytes.
pub fn decode_standard_secret(secret: &str) -> Result<Vec<u8>, VerifyError> {
    let b64 = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    let key = B64.decode(b64.trim()).map_err(|_| VerifyError::BadSecret)?;
    if !(24..=64).contains(&key.len()) {
        return Err(VerifyError::BadSecret);
    }
    Ok(key)
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`: one entry of
/// a `webhook-signature` header.
pub fn sign_standard(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

/// Why [`verify_standard`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A required header is missing.
    #[error("header `{0}` is missing")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not a unix time in seconds.
    #[error("header `webhook-timestamp` is not a unix time in seconds")]
    BadTimestamp,
    /// The timestamp is further from now than the tolerance (a replay, or a
    /// clock far off).
    #[error("the timestamp is outside the tolerance; the request may be a replay")]
    Stale,
    /// No signature matched.
    #[error("no signature matches")]
    BadSignature,
    /// The secret is not `whsec_` + base64 of 24 to 64 bytes.
    #[error("the secret is not a Standard Webhooks secret (`whsec_` + base64 of 24 to 64 bytes)")]
    BadSecret,
}

/// Verifies a Standard Webhooks request: `headers` are the request's
/// headers (names in any case), `body` its exact bytes, `tolerance` the
/// replay window ([`DEFAULT_TOLERANCE`] is the spec's 5 minutes), in whole
/// seconds: `Duration::ZERO` accepts the current second only,
/// `Duration::MAX` any timestamp.
///
/// Subscriptions with
/// [`Signing::StandardWebhooks`](crate::Signing::StandardWebhooks) get
/// `webhook-id` (the delivery id), `webhook-timestamp` (unix seconds) and
/// `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
/// keyed with the base64-decoded `whsec_` secret; during a secret rotation
/// one `v1,` entry per secret, space-separated.
///
/// Any one matching `v1,` signature passes, so requests signed during a
/// secret rotation verify with either secret. Comparison is constant time.
///
/// ```
/// use hookbus::signing::{generate_secret, decode_standard_secret, sign_standard, verify_standard, DEFAULT_TOLERANCE};
/// let secret = generate_secret();
/// let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
/// let sig = sign_standard(&decode_standard_secret(&secret).unwrap(), "msg_1", now, b"{}");
/// let ts = now.to_string();
/// let headers = [("webhook-id", "msg_1"), ("webhook-timestamp", ts.as_str()), ("webhook-signature", sig.as_str())];
/// assert!(verify_standard(&secret, headers, b"{}", DEFAULT_TOLERANCE).is_ok());
/// ```
pub fn verify_standard<'a, I>(
    secret: &str,
    headers: I,
    body: &[u8],
    tolerance: Duration,
) -> Result<(), VerifyError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    verify_standard_at(secret, headers, body, tolerance, now)
}

/// [`verify_standard`] with "now" given, in unix seconds.
pub fn verify_standard_at<'a, I>(
    secret: &str,
    headers: I,
    body: &[u8],
    tolerance: Duration,
    now: u64,
) -> Result<(), VerifyError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let key = decode_standard_secret(secret)?;
    let (mut id, mut ts, mut sigs) = (None, None, None);
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("webhook-id") {
            id = Some(value);
        } else if name.eq_ignore_ascii_case("webhook-timestamp") {
            ts = Some(value);
        } else if name.eq_ignore_ascii_case("webhook-signature") {
            sigs = Some(value);
        }
    }
    let id = id.ok_or(VerifyError::MissingHeader("webhook-id"))?;
    let ts = ts.ok_or(VerifyError::MissingHeader("webhook-timestamp"))?;
    let sigs = sigs.ok_or(VerifyError::MissingHeader("webhook-signature"))?;
    let ts: u64 = ts.trim().parse().map_err(|_| VerifyError::BadTimestamp)?;
    if now.abs_diff(ts) > tolerance.as_secs() {
        return Err(VerifyError::Stale);
    }
    let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC accepts keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(ts.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    for entry in sigs.split_whitespace() {
        if let Some(("v1", sig)) = entry.split_once(',')
            && let Ok(sig) = B64.decode(sig)
            && mac.clone().verify_slice(&sig).is_ok()
        {
            return Ok(());
        }
    }
    Err(VerifyError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 2202 test case 2 (HMAC-SHA1) and RFC 4231 test case 2 (HMAC-SHA256):
    // key "Jefe", data "what do ya want for nothing?".
    const KEY: &[u8] = b"Jefe";
    const DATA: &[u8] = b"what do ya want for nothing?";

    #[test]
    fn rfc_vectors() {
        assert_eq!(
            sign_sha1(KEY, DATA),
            "sha1=effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        assert_eq!(
            sign_sha256(KEY, DATA),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn github_documented_vector() {
        // GitHub's docs: secret "It's a Secret to Everybody", payload "Hello, World!".
        assert_eq!(
            sign_sha256(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn verify_accepts_both_and_rejects_tampering() {
        for sig in [sign_sha1(KEY, DATA), sign_sha256(KEY, DATA)] {
            assert!(verify_signature(KEY, DATA, &sig));
            assert!(verify_signature(
                KEY,
                DATA,
                &sig.to_uppercase().replacen("SHA", "sha", 1)
            ));
            assert!(!verify_signature(b"other", DATA, &sig));
            assert!(!verify_signature(
                KEY,
                b"what do ya want for nothing!",
                &sig
            ));
        }
        for bad in [
            "",
            "sha1",
            "sha1=",
            "sha1=zz",
            "md5=00",
            "sha256=abc",
            "=",
            "sha1=é",
        ] {
            assert!(!verify_signature(KEY, DATA, bad), "{bad:?} verified");
        }
    }

    // The Standard Webhooks specification's published test vector.
    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW_TS: u64 = 1_614_265_330;
    const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn sw_headers<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("Webhook-Id", id),
            ("webhook-timestamp", ts),
            ("WEBHOOK-SIGNATURE", sig),
        ]
    }

    #[test]
    fn standard_webhooks_spec_vector() {
        let key = decode_standard_secret(SW_SECRET).unwrap();
        assert_eq!(sign_standard(&key, SW_ID, SW_TS, SW_BODY), SW_SIG);
        let ts = SW_TS.to_string();
        let ok = |secret: &str, sig: &str, body: &[u8], now: u64| {
            verify_standard_at(
                secret,
                sw_headers(SW_ID, &ts, sig),
                body,
                DEFAULT_TOLERANCE,
                now,
            )
        };
        assert_eq!(ok(SW_SECRET, SW_SIG, SW_BODY, SW_TS), Ok(()));
        assert_eq!(
            ok(
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                SW_SIG,
                SW_BODY,
                SW_TS + 299
            ),
            Ok(())
        );
        // Rotation: any one entry matching passes.
        let other = sign_standard(&[7u8; 32], SW_ID, SW_TS, SW_BODY);
        assert_eq!(
            ok(SW_SECRET, &format!("{other} {SW_SIG}"), SW_BODY, SW_TS),
            Ok(())
        );
        assert_eq!(
            ok(SW_SECRET, &other, SW_BODY, SW_TS),
            Err(VerifyError::BadSignature)
        );
        // Tampering, stale and future timestamps, wrong secret.
        assert_eq!(
            ok(SW_SECRET, SW_SIG, br#"{"test": 2432232315}"#, SW_TS),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            ok(SW_SECRET, SW_SIG, SW_BODY, SW_TS + 301),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            ok(SW_SECRET, SW_SIG, SW_BODY, SW_TS - 301),
            Err(VerifyError::Stale)
        );
        let wrong = format!("whsec_{}", B64.encode([1u8; 24]));
        assert_eq!(
            ok(&wrong, SW_SIG, SW_BODY, SW_TS),
            Err(VerifyError::BadSignature)
        );
        let other_ts = (SW_TS + 1).to_string();
        assert_eq!(
            verify_standard_at(
                SW_SECRET,
                sw_headers(SW_ID, &other_ts, SW_SIG),
                SW_BODY,
                DEFAULT_TOLERANCE,
                SW_TS
            ),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn standard_webhooks_malformed_input_is_refused_without_panics() {
        let ts = SW_TS.to_string();
        let v = |secret: &str, headers: Vec<(&str, &str)>| {
            verify_standard_at(secret, headers, SW_BODY, DEFAULT_TOLERANCE, SW_TS)
        };
        assert_eq!(
            v(SW_SECRET, vec![]),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
        assert_eq!(
            v(
                SW_SECRET,
                vec![("webhook-id", SW_ID), ("webhook-signature", SW_SIG)]
            ),
            Err(VerifyError::MissingHeader("webhook-timestamp"))
        );
        assert_eq!(
            v(
                SW_SECRET,
                vec![("webhook-id", SW_ID), ("webhook-timestamp", &ts)]
            ),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );
        for bad_ts in ["", "abc", "-5", "1.5", "99999999999999999999999"] {
            assert_eq!(
                v(SW_SECRET, sw_headers(SW_ID, bad_ts, SW_SIG)),
                Err(VerifyError::BadTimestamp),
                "{bad_ts}"
            );
        }
        for bad_sig in [
            "",
            "v1",
            "v1,",
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "v1,!!!",
            ",,,",
            "v1,g0hM",
        ] {
            assert_eq!(
                v(SW_SECRET, sw_headers(SW_ID, &ts, bad_sig)),
                Err(VerifyError::BadSignature),
                "{bad_sig}"
            );
        }
        for bad_secret in [
            "",
            "whsec_",
            "whsec_!!!",
            "whsec_c2hvcnQ=",
            &format!("whsec_{}", B64.encode([0u8; 65])),
        ] {
            assert_eq!(
                v(bad_secret, sw_headers(SW_ID, &ts, SW_SIG)),
                Err(VerifyError::BadSecret),
                "{bad_secret}"
            );
        }
    }

    #[test]
    fn generated_secrets_are_random_whsec_keys() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        assert!(a.starts_with("whsec_"));
        assert_eq!(decode_standard_secret(&a).unwrap().len(), 32);
    }
}
