//! Portal links: short-lived signed tokens that let one tenant's people
//! manage that tenant's endpoints in the portal page, without an account in
//! your app's login (like hosted webhook services' magic links).
//!
//! Your backend makes a link for a customer it has authenticated, and
//! opens the portal page with it; the page sends the token as
//! `Authorization: Bearer hbp_…` to the v1 routes, where
//! [`PortalKey::caller`] (done for you by
//! `axum::Routes::portal_key`) turns it into a
//! [`Caller`] of that tenant with the [`MANAGE_ROLE`].
//!
//! ```
//! use std::time::Duration;
//! use hookbus::portal::PortalKey;
//!
//! # fn main() -> Result<(), hookbus::Error> {
//! // 32 bytes or more, from your secret store; the same on every instance.
//! let key = PortalKey::new(b"an example key of at least 32 bytes!".to_vec())?;
//! let token = key.link("acme", Duration::from_secs(3600))?;
//! let url = format!("/webhooks/portal#token={token}");
//! assert!(url.contains("hbp_"));
//!
//! let caller = key.caller(&token)?;
//! assert_eq!(caller.tenant.as_deref(), Some("acme"));
//! // Any change to it is refused.
//! assert!(key.caller(&token.replacen("hbp_", "hbp_x", 1)).is_err());
//! # Ok(()) }
//! ```
//!
//! A token holds its tenant and its expiry, signed with HMAC-SHA256 under
//! the key; it is not encrypted (the tenant id is readable), and it cannot
//! be revoked before it expires: keep links short-lived (minutes to hours;
//! at most [`MAX_LINK_TTL`]), and change the key to cut every link at once.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::rest::{Caller, MANAGE_ROLE, USER_TENANT_PREFIX};

/// The prefix of every portal token.
pub const TOKEN_PREFIX: &str = "hbp_";
/// The longest a portal link may live: 7 days.
pub const MAX_LINK_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The id of the [`Caller`] a portal token makes: what it creates has this
/// owner. Give none of your users this id (an app user with it would own
/// what was made through the portal).
pub const PORTAL_CALLER_ID: &str = "hookbus:portal";
pub use crate::rest::page::{PAGE, PAGE_PATH, page};

/// The shortest key taken, in bytes.
pub const MIN_KEY_BYTES: usize = 32;
/// The longest token looked at, in bytes (a longer one is refused before
/// any work).
const MAX_TOKEN_BYTES: usize = 1024;

/// The key that signs and checks portal links. Its `Debug` hides it.
#[derive(Clone)]
pub struct PortalKey {
    key: Vec<u8>,
}

impl fmt::Debug for PortalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PortalKey([redacted])")
    }
}

/// What a token says.
#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    /// The tenant.
    t: String,
    /// Expiry, seconds since the Unix epoch.
    e: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl PortalKey {
    /// A key from at least [`MIN_KEY_BYTES`] secret bytes (random ones:
    /// `openssl rand -hex 32`, kept in your secret store).
    ///
    /// Errors: [`Error::InvalidConfig`] for a shorter key.
    pub fn new(key: impl Into<Vec<u8>>) -> Result<PortalKey> {
        let key = key.into();
        if key.len() < MIN_KEY_BYTES {
            return Err(Error::InvalidConfig(format!(
                "a portal key needs at least {MIN_KEY_BYTES} bytes, got {}",
                key.len()
            )));
        }
        Ok(PortalKey { key })
    }

    fn mac(&self, payload: &str) -> Vec<u8> {
        // Any key length is valid for HMAC.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(b"hookbus-portal-v1.");
        mac.update(payload.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// A token for `tenant`'s portal, valid for `ttl` from now: put it in
    /// the page's URL fragment (`…/webhooks/portal#token=<token>`), which
    /// browsers do not send to servers or in `Referer`.
    ///
    /// Errors: [`Error::InvalidTenant`] for a tenant id hookbus refuses
    /// (empty, too long, control characters, or in the `user:` namespace of
    /// callers without a tenant); [`Error::InvalidConfig`] for a zero `ttl`
    /// or one over [`MAX_LINK_TTL`].
    pub fn link(&self, tenant: &str, ttl: Duration) -> Result<String> {
        crate::subscription::validate_tenant(tenant)?;
        if tenant.starts_with(USER_TENANT_PREFIX) {
            return Err(Error::InvalidTenant {
                reason: "starts with `user:`, the namespace of callers without a tenant",
            });
        }
        if ttl.is_zero() || ttl > MAX_LINK_TTL {
            return Err(Error::InvalidConfig(format!(
                "a portal link lives from 1 second to {} days",
                MAX_LINK_TTL.as_secs() / 86_400
            )));
        }
        let claims = Claims {
            t: tenant.to_owned(),
            e: unix_now().saturating_add(ttl.as_secs().max(1)),
        };
        let json = serde_json::to_vec(&claims).map_err(Error::Serialize)?;
        let payload = URL_SAFE_NO_PAD.encode(json);
        let sig = URL_SAFE_NO_PAD.encode(self.mac(&payload));
        Ok(format!("{TOKEN_PREFIX}{payload}.{sig}"))
    }

    /// The caller a token stands for: its tenant, with the
    /// [`MANAGE_ROLE`], id [`PORTAL_CALLER_ID`].
    ///
    /// Errors: [`Error::InvalidPortalLink`] when the token is malformed,
    /// was not signed with this key, or has expired.
    pub fn caller(&self, token: &str) -> Result<Caller> {
        self.caller_at(token, unix_now())
    }

    fn caller_at(&self, token: &str, now: u64) -> Result<Caller> {
        let bad = |reason| Err(Error::InvalidPortalLink { reason });
        if token.len() > MAX_TOKEN_BYTES {
            return bad("the token is too long");
        }
        let Some(rest) = token.strip_prefix(TOKEN_PREFIX) else {
            return bad("the token does not start with hbp_");
        };
        let Some((payload, sig)) = rest.split_once('.') else {
            return bad("the token is malformed");
        };
        let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
            return bad("the token is malformed");
        };
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(b"hookbus-portal-v1.");
        mac.update(payload.as_bytes());
        if mac.verify_slice(&sig).is_err() {
            return bad("the token's signature does not match");
        }
        let claims: Claims = match URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(c) => c,
            None => return bad("the token is malformed"),
        };
        if claims.e <= now {
            return bad("the link has expired");
        }
        Ok(Caller::new(PORTAL_CALLER_ID, [MANAGE_ROLE]).tenant(claims.t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PortalKey {
        PortalKey::new(vec![7u8; 32]).unwrap()
    }

    #[test]
    fn a_link_names_its_tenant_until_it_expires() {
        let k = key();
        let t = k.link("acme", Duration::from_secs(60)).unwrap();
        let c = k.caller(&t).unwrap();
        assert_eq!(c.tenant.as_deref(), Some("acme"));
        assert_eq!(c.roles, vec![MANAGE_ROLE.to_owned()]);
        assert!(k.caller_at(&t, unix_now() + 61).is_err());
    }

    #[test]
    fn another_key_or_a_changed_token_is_refused() {
        let k = key();
        let t = k.link("acme", Duration::from_secs(60)).unwrap();
        let other = PortalKey::new(vec![8u8; 32]).unwrap();
        assert!(matches!(
            other.caller(&t),
            Err(Error::InvalidPortalLink { .. })
        ));
        // The payload of another tenant with the first token's signature.
        let (_, sig) = t.split_once('.').unwrap();
        let forged = format!(
            "{TOKEN_PREFIX}{}.{sig}",
            URL_SAFE_NO_PAD.encode(br#"{"t":"globex","e":99999999999}"#)
        );
        assert!(k.caller(&forged).is_err());
        for junk in [
            "",
            "hbp_",
            "hbp_.",
            "hbp_x.y",
            "bearer",
            &"hbp_a".repeat(400),
        ] {
            assert!(k.caller(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn bad_keys_tenants_and_lifetimes_are_refused() {
        assert!(PortalKey::new(vec![1u8; 31]).is_err());
        let k = key();
        assert!(k.link("", Duration::from_secs(1)).is_err());
        assert!(k.link("user:bob", Duration::from_secs(1)).is_err());
        assert!(k.link("acme", Duration::ZERO).is_err());
        assert!(
            k.link("acme", MAX_LINK_TTL + Duration::from_secs(1))
                .is_err()
        );
        assert!(!format!("{k:?}").contains('7'));
    }
}
