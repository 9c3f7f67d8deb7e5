//! The values `handle` takes and returns: the [`Caller`]
//! and its roles, the [`ApiRequest`], the [`ApiResponse`] (with the
//! ServiceStack-style error body).

use serde_json::{Value, json};

use crate::subscription::{Subscription, USER_TENANT_PREFIX};

/// The role that may search subscribers (the seed's relay role).
pub const RELAY_ROLE: &str = "relay";
/// The role of operators: the `/webhooks/admin` routes (every
/// subscription's health, replay, retries, notices).
pub const ADMIN_ROLE: &str = "admin";
/// The role that may read and change every subscription of the caller's
/// tenant, whoever created it (a team's administrators; a portal link's
/// caller has it).
pub const MANAGE_ROLE: &str = "webhooks:manage";
/// The role that may read every subscription of the caller's tenant and
/// its deliveries, but change nothing.
pub const READ_ROLE: &str = "webhooks:read";

/// What a caller may do with one subscription of its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Access {
    /// Nothing: another tenant's, or another user's without a tenant role.
    None,
    /// Read it and its deliveries.
    Read,
    /// Read and change it, and act on its deliveries.
    Manage,
}

/// Who is calling, as the application's authentication says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's user id; it becomes the owner of what it creates.
    pub id: String,
    /// The caller's roles.
    pub roles: Vec<String>,
    /// The caller's tenant (customer, organisation); `None` means the
    /// caller is a tenant of its own, with its `id` as tenant id. What a
    /// caller creates belongs to this tenant: it receives the events
    /// published for it ([`Bus::publish_to`](crate::Bus::publish_to)) and
    /// never another tenant's.
    pub tenant: Option<String>,
}

impl Caller {
    /// A caller with an id and roles.
    pub fn new<I, S>(id: impl Into<String>, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Caller {
            id: id.into(),
            roles: roles.into_iter().map(Into::into).collect(),
            tenant: None,
        }
    }

    /// The caller belongs to this tenant.
    #[must_use]
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// The tenant whose subscriptions this caller sees and creates: its
    /// [`tenant`](Caller::tenant), or `user:<id>` when it has none (a
    /// tenant of its own, in a namespace explicit tenants cannot use). Publish
    /// for it with [`Bus::publish_to`](crate::Bus::publish_to) and this id.
    pub fn tenant_id(&self) -> String {
        match &self.tenant {
            Some(t) => t.clone(),
            None => format!("{USER_TENANT_PREFIX}{}", self.id),
        }
    }

    /// What the caller may do with `s`. Only subscriptions of its own
    /// tenant are reachable. Inside it, [`MANAGE_ROLE`] reads and changes
    /// all of them, [`READ_ROLE`] reads all of them (and changes none, not
    /// even its own), and a caller with neither (per-user ownership) reads
    /// and changes the ones it created. A caller whose explicit tenant is
    /// in the `user:` namespace reaches nothing.
    /// A subscription without a tenant (made through the Rust API, or
    /// stored before tenants existed) is reachable only by its owner, as a
    /// caller without a tenant.
    pub(crate) fn access(&self, s: &Subscription) -> Access {
        // An explicit tenant in the namespace of callers without one would
        // reach that user's own subscriptions.
        if self
            .tenant
            .as_deref()
            .is_some_and(|t| t.starts_with(USER_TENANT_PREFIX))
        {
            return Access::None;
        }
        let owner = s.owner.as_deref() == Some(self.id.as_str());
        let same_tenant = match (&s.tenant, &self.tenant) {
            (Some(t), _) => *t == self.tenant_id(),
            // No tenant: its owner only, as before tenants existed.
            (None, None) => owner,
            (None, Some(_)) => false,
        };
        if !same_tenant {
            Access::None
        } else if self.has_role(MANAGE_ROLE) {
            Access::Manage
        } else if self.has_role(READ_ROLE) {
            // A reader changes nothing, not even what it created.
            Access::Read
        } else if owner {
            Access::Manage
        } else {
            Access::None
        }
    }

    /// Whether the caller may create subscriptions: not a reader (role
    /// [`READ_ROLE`] without [`MANAGE_ROLE`]).
    pub(crate) fn may_create(&self) -> bool {
        self.has_role(MANAGE_ROLE) || !self.has_role(READ_ROLE)
    }

    /// Whether the caller may read `s` (see [`access`](Caller::access)).
    pub(crate) fn owns(&self, s: &Subscription) -> bool {
        self.access(s) != Access::None
    }

    pub(crate) fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// One HTTP request, as the web framework received it.
///
/// Its `Debug` shows the body's length only: a body can carry a
/// subscription secret.
#[derive(Clone, Copy)]
pub struct ApiRequest<'a> {
    /// `GET`, `POST`, `PUT`, `DELETE`.
    pub method: &'a str,
    /// The path, such as `/webhooks/subscriptions/0192…`.
    pub path: &'a str,
    /// The query string without `?` (may be empty).
    pub query: &'a str,
    /// The authenticated caller, or `None`.
    pub caller: Option<&'a Caller>,
    /// The request body (JSON for POST and PUT).
    pub body: &'a [u8],
}

impl std::fmt::Debug for ApiRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("caller", &self.caller)
            .field(
                "body",
                &format_args!("[{} bytes, redacted]", self.body.len()),
            )
            .finish()
    }
}

/// What to answer: send `status`, `headers`, a `content-type` of
/// [`content_type`](ApiResponse::content_type) and the bytes of
/// [`body_bytes`](ApiResponse::body_bytes) (none when the body is
/// `Value::Null`).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    /// The HTTP status.
    pub status: u16,
    /// The body; `Value::Null` means no body (204). For a `content_type`
    /// that is not JSON (the portal page's `text/html`) it is a string sent
    /// as it is.
    pub body: Value,
    /// The body's media type: `application/json`, `application/problem+json`
    /// (the v1 routes' errors) or `text/html` (the portal page).
    pub content_type: &'static str,
    /// More headers to send, such as `location` after a create or
    /// `retry-after` with a 429 (lower-case names).
    pub headers: Vec<(&'static str, String)>,
}

impl ApiResponse {
    pub(crate) fn ok(status: u16, body: Value) -> Self {
        ApiResponse {
            status,
            body,
            content_type: "application/json",
            headers: Vec::new(),
        }
    }

    /// The body as bytes to send; empty when `body` is `Value::Null`.
    pub fn body_bytes(&self) -> Vec<u8> {
        match &self.body {
            Value::Null => Vec::new(),
            Value::String(s) if !self.content_type.contains("json") => s.as_bytes().to_vec(),
            v => serde_json::to_vec(v).unwrap_or_default(),
        }
    }

    /// Adds a header.
    pub(crate) fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub(crate) fn error(
        status: u16,
        code: &str,
        message: impl Into<String>,
        field: Option<&str>,
    ) -> Self {
        let message = message.into();
        let errors = match field {
            Some(f) => json!([{ "fieldName": f, "errorCode": code, "message": message }]),
            None => json!([]),
        };
        ApiResponse::ok(
            status,
            json!({ "responseStatus": { "errorCode": code, "message": message, "errors": errors } }),
        )
    }
}
