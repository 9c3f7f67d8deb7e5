//! The crate-root paths of the signing items before they moved to
//! [`crate::signing`] (issue 26): thin, hidden, deprecated wrappers so that
//! code written against 0.1 keeps compiling, with a warning that names the
//! new path. `lib.rs` re-exports them at the root; delete this file and
//! that line when the old paths go.
//!
//! Wrappers rather than a deprecated `pub use`: `#[deprecated]` on a
//! re-export does not warn its users.

use std::time::Duration;

use crate::signing;

/// Moved to [`hookbus::signing::DEFAULT_TOLERANCE`](crate::signing::DEFAULT_TOLERANCE).
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "use hookbus::signing::DEFAULT_TOLERANCE")]
pub const DEFAULT_TOLERANCE: Duration = signing::DEFAULT_TOLERANCE;

/// Moved to [`hookbus::signing::VerifyError`](crate::signing::VerifyError).
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "use hookbus::signing::VerifyError")]
pub type VerifyError = signing::VerifyError;

/// Moved to [`hookbus::signing::sign_sha1`](crate::signing::sign_sha1).
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "use hookbus::signing::sign_sha1")]
pub fn sign_sha1(secret: &[u8], body: &[u8]) -> String {
    signing::sign_sha1(secret, body)
}

/// Moved to [`hookbus::signing::sign_sha256`](crate::signing::sign_sha256).
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "use hookbus::signing::sign_sha256")]
pub fn sign_sha256(secret: &[u8], body: &[u8]) -> String {
    signing::sign_sha256(secret, body)
}

/// Moved to [`hookbus::signing::verify_signature`](crate::signing::verify_signature).
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "use hookbus::signing::verify_signature")]
pub fn verify_signature(secret: &[u8], body: &[u8], header_value: &str) -> bool {
    signing::verify_signature(secret, body, header_value)
}

/// Moved to [`hookbus::signing::generate_secret`](crate::signing::generate_secret).
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "use hookbus::signing::generate_secret")]
pub fn generate_secret() -> String {
    signing::generate_secret()
}

/// Moved to [`hookbus::signing::decode_standard_secret`](crate::signing::decode_standard_secret).
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "use hookbus::signing::decode_standard_secret")]
pub fn decode_standard_secret(secret: &str) -> Result<Vec<u8>, signing::VerifyError> {
    signing::decode_standard_secret(secret)
}

/// Moved to [`hookbus::signing::sign_standard`](crate::signing::sign_standard).
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "use hookbus::signing::sign_standard")]
pub fn sign_standard(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    signing::sign_standard(key, id, timestamp, body)
}

/// Moved to [`hookbus::signing::verify_standard`](crate::signing::verify_standard).
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "use hookbus::signing::verify_standard")]
pub fn verify_standard<'a, I>(
    secret: &str,
    headers: I,
    body: &[u8],
    tolerance: Duration,
) -> Result<(), signing::VerifyError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    signing::verify_standard(secret, headers, body, tolerance)
}

/// Moved to [`hookbus::signing::verify_standard_at`](crate::signing::verify_standard_at).
#[doc(hidden)]
#[deprecated(since = "0.2.0", note = "use hookbus::signing::verify_standard_at")]
pub fn verify_standard_at<'a, I>(
    secret: &str,
    headers: I,
    body: &[u8],
    tolerance: Duration,
    now: u64,
) -> Result<(), signing::VerifyError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    signing::verify_standard_at(secret, headers, body, tolerance, now)
}
