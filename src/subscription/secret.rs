//! A subscription's secret and how its requests are signed: [`Secret`],
//! which never shows itself, and [`Signing`]. A leaf: it uses no other room.

use std::fmt;

use serde::Serialize;

/// A subscription secret. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(super) String);

impl Secret {
    /// The secret itself, for signing or verifying.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// How a subscription's requests are signed (when it has a secret).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Signing {
    /// `X-Hub-Signature: sha1=…` and `X-Hub-Signature-256: sha256=…`, HMACs
    /// of the body keyed with the secret's bytes (GitHub's and
    /// ServiceStack.Webhooks' headers); receivers check them with
    /// [`signing::verify_signature`](crate::signing::verify_signature).
    /// Requests are unsigned when the subscription has no secret.
    #[default]
    Hub,
    /// [Standard Webhooks](https://www.standardwebhooks.com/): `webhook-id`,
    /// `webhook-timestamp` and `webhook-signature`; receivers check them
    /// with [`signing::verify_standard`](crate::signing::verify_standard).
    /// Needs a `whsec_` secret (see
    /// [`NewSubscription::generate_secret`](crate::NewSubscription::generate_secret)).
    StandardWebhooks,
}

impl Signing {
    /// The stored form is a flag (`SubscriptionRecord::standard_webhooks`).
    pub(super) fn from_flag(standard_webhooks: bool) -> Self {
        if standard_webhooks {
            Signing::StandardWebhooks
        } else {
            Signing::Hub
        }
    }

    pub(super) fn is_standard(self) -> bool {
        self == Signing::StandardWebhooks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let s = Secret("hunter2".into());
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        let n = crate::subscription::NewSubscription::new("n", "http://x/").secret("hunter2");
        assert!(!format!("{n:?}").contains("hunter2"));
    }
}
