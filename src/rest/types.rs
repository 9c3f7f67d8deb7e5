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

    /// Whether the caller may see and change `s`: it created it, in its
    /// tenant. A subscription without a tenant (made through the Rust API,
    /// or stored before tenants existed) is reachable only by a caller
    /// without a tenant and with the same owner id.
    pub(super) fn owns(&self, s: &Subscription) -> bool {
        if s.owner.as_deref() != Some(self.id.as_str()) {
            return false;
        }
        match (&s.tenant, &self.tenant) {
            (Some(t), _) => *t == self.tenant_id(),
            (None, None) => true,
            (None, Some(_)) => false,
        }
    }

    pub(super) fn has_role(&self, role: &str) -> bool {
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

/// What to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body; `Value::Null` means no body (204).
    pub body: Value,
}

impl ApiResponse {
    pub(super) fn ok(status: u16, body: Value) -> Self {
        ApiResponse { status, body }
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
        ApiResponse {
            status,
            body: json!({ "responseStatus": { "errorCode": code, "message": message, "errors": errors } }),
        }
    }
}
