//! Request signing and verification: pure functions, tested against fixed
//! vectors.
//!
//! hookbus signs the exact body bytes with HMAC, keyed by the subscription
//! secret's UTF-8 bytes, and sends
//!
//! * `X-Hub-Signature: sha1=<hex HMAC-SHA1>` (GitHub's and
//!   ServiceStack.Webhooks' header), and
//! * `X-Hub-Signature-256: sha256=<hex HMAC-SHA256>`.
//!
//! Receivers should check the SHA-256 one; [`verify_signature`] checks either.

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
/// Returns `false` for a wrong secret, a changed body, an unknown algorithm
/// or a malformed value; it never panics.
///
/// ```
/// let body = br#"{"text":"I said hello"}"#;
/// let header = hookbus::signing::sign_sha256(b"shh", body);
/// assert!(hookbus::verify_signature(b"shh", body, &header));
/// assert!(!hookbus::verify_signature(b"wrong", body, &header));
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
}
