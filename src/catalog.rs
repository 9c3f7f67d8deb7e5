//! The event catalog: the event types an app registers on the
//! [`Builder`](crate::Builder) with
//! [`event_type`](crate::Builder::event_type) ([`EventType`]), checked
//! once when the bus opens and listed by
//! [`Bus::event_types`](crate::Bus::event_types). While it is not empty,
//! subscriptions may only name its types (or `*`); with
//! [`Builder::validate_payloads`](crate::Builder::validate_payloads)
//! (feature `json-schema`) published payloads must satisfy their type's
//! JSON Schema.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::event::ALL_EVENTS;
use crate::subscription::validate::validate_event_name;
use crate::util::clip;

/// One entry of the app's event catalog: an event type's name, what it
/// means, and optionally the JSON Schema of its payload and an example
/// payload. Register them with
/// [`Builder::event_type`](crate::Builder::event_type); read them back, in
/// registration order, with [`Bus::event_types`](crate::Bus::event_types)
/// (a tenant-facing API can list them). It serializes as
/// `{"name", "description", "schema", "example"}` (`null` when absent).
///
/// Not to be confused with the [`EventType`](crate::EventType) *trait* at
/// the crate root, which ties an event name to a Rust payload type for
/// [`Bus::emit`](crate::Bus::emit); this struct describes an event type to
/// subscribers and is what the catalog checks subscriptions (and,
/// optionally, payloads) against.
///
/// When the catalog is not empty, a subscription may only name registered
/// event types (or `*`); see [`Builder::event_type`](crate::Builder::event_type).
///
/// ```
/// # fn main() -> Result<(), hookbus::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// use hookbus::catalog::EventType;
/// use hookbus::NewSubscription;
/// use serde_json::json;
///
/// let bus = hookbus::Bus::builder()
///     .path(dir.path())
///     .allow_private_targets(true)
///     .event_type(
///         EventType::new("order.created", "An order was placed.")
///             .example(json!({"id": 42, "total_cents": 1999})),
///     )
///     .event_type(EventType::new("order.paid", "An order was paid in full."))
///     .open()?;
///
/// let names: Vec<&str> = bus.event_types().iter().map(|t| t.name.as_str()).collect();
/// assert_eq!(names, ["order.created", "order.paid"]);
///
/// // Subscriptions name registered types (or `*`) only.
/// let url = "http://127.0.0.1:9/hook";
/// bus.subscribe(NewSubscription::new("orders", url).event("order.created"))?;
/// let refused = bus.subscribe(NewSubscription::new("typo", url).event("order.craeted"));
/// assert!(matches!(refused, Err(hookbus::Error::InvalidEventName { .. })));
/// # Ok(()) }
/// ```
///
/// With the `json-schema` feature a type may carry a schema; the example,
/// if any, must satisfy it, and
/// [`Builder::validate_payloads`](crate::Builder::validate_payloads)
/// checks every published payload of the type against it:
///
/// ```
/// # #[cfg(feature = "json-schema")]
/// # fn main() -> Result<(), hookbus::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// use hookbus::catalog::EventType;
/// use serde_json::json;
///
/// let bus = hookbus::Bus::builder()
///     .path(dir.path())
///     .validate_payloads(true)
///     .event_type(
///         EventType::new("order.created", "An order was placed.")
///             .schema(json!({
///                 "type": "object",
///                 "properties": {"id": {"type": "integer"}},
///                 "required": ["id"]
///             }))
///             .example(json!({"id": 42})),
///     )
///     .open()?;
/// bus.publish("order.created", &json!({"id": 43}))?;
/// let refused = bus.publish("order.created", &json!({"id": "43"}));
/// assert!(matches!(refused, Err(hookbus::Error::PayloadInvalid { .. })));
/// # Ok(()) }
/// # #[cfg(not(feature = "json-schema"))]
/// # fn main() {}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct EventType {
    /// The event name, as published and subscribed to (the rules of
    /// [`Bus::publish`](crate::Bus::publish): 1 to 100 letters, digits,
    /// `_`, `-` and `.`; not `*`).
    pub name: String,
    /// What the event means, for the people who subscribe to it.
    pub description: String,
    /// The JSON Schema of the payload (feature `json-schema`; without it,
    /// a schema is refused when the bus opens). Compiled once, at open;
    /// it may not refer to anything outside itself (nothing is fetched).
    pub schema: Option<Value>,
    /// An example payload, shown to subscribers; it must satisfy the
    /// schema, if there is one.
    pub example: Option<Value>,
}

impl EventType {
    /// An event type with a name and a description, without a schema or
    /// an example.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        EventType {
            name: name.into(),
            description: description.into(),
            schema: None,
            example: None,
        }
    }

    /// The JSON Schema of its payload (needs the `json-schema` feature: a
    /// bus without it refuses to open with a schema registered).
    #[must_use]
    pub fn schema(mut self, schema: Value) -> Self {
        self.schema = Some(schema);
        self
    }

    /// An example payload (checked against the schema at open).
    #[must_use]
    pub fn example(mut self, example: Value) -> Self {
        self.example = Some(example);
        self
    }
}

/// The catalog of an open bus: the registered types in registration
/// order, their names for lookups, and (feature `json-schema`) the
/// compiled schemas of the types that have one — only when payloads are
/// validated, so that a publish with validation off looks at nothing more
/// than one `Option`.
#[derive(Clone, Default)]
pub(crate) struct Catalog {
    types: Vec<EventType>,
    /// A name's position in `types`.
    index: HashMap<String, usize>,
    /// The compiled schemas by event name; `None` unless
    /// `validate_payloads` is on and some type has a schema.
    #[cfg(feature = "json-schema")]
    validating: Option<HashMap<String, jsonschema::Validator>>,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.types.iter().map(|t| t.name.as_str()).collect();
        let mut s = f.debug_struct("Catalog");
        s.field("types", &names);
        #[cfg(feature = "json-schema")]
        s.field("validating", &self.validating.is_some());
        s.finish()
    }
}

/// An [`Error::InvalidConfig`] about the catalog entry `name`.
fn bad<T>(name: &str, what: impl fmt::Display) -> Result<T> {
    Err(Error::InvalidConfig(format!(
        "event_type `{}`: {what}",
        clip(name).escape_debug()
    )))
}

impl Catalog {
    /// Checks the registered types and compiles their schemas: valid,
    /// distinct names; schemas that compile (only with the `json-schema`
    /// feature); examples that satisfy their schema. Errors are
    /// [`Error::InvalidConfig`] naming the type.
    pub(crate) fn compile(types: Vec<EventType>, validate_payloads: bool) -> Result<Catalog> {
        let mut index = HashMap::with_capacity(types.len());
        #[cfg(feature = "json-schema")]
        let mut schemas = HashMap::new();
        for (i, t) in types.iter().enumerate() {
            if let Err(e) = validate_event_name(&t.name, false) {
                return Err(Error::InvalidConfig(format!("event_type: {e}")));
            }
            if index.insert(t.name.clone(), i).is_some() {
                return bad(&t.name, "is registered twice; each event type once");
            }
            let Some(schema) = &t.schema else {
                continue;
            };
            #[cfg(not(feature = "json-schema"))]
            {
                let _ = schema;
                return bad(
                    &t.name,
                    "has a schema, but hookbus was built without the `json-schema` feature that checks schemas; enable it or leave the schema out",
                );
            }
            #[cfg(feature = "json-schema")]
            {
                let validator = match schema::compile(schema) {
                    Ok(v) => v,
                    Err(e) => {
                        return bad(&t.name, format_args!("its schema does not compile: {e}"));
                    }
                };
                if let Some(example) = &t.example
                    && let Err(e) = schema::check(&validator, example)
                {
                    return bad(
                        &t.name,
                        format_args!("its example does not satisfy its schema: {e}"),
                    );
                }
                schemas.insert(t.name.clone(), validator);
            }
        }
        #[cfg(not(feature = "json-schema"))]
        let _ = validate_payloads;
        Ok(Catalog {
            #[cfg(feature = "json-schema")]
            validating: (validate_payloads && !schemas.is_empty()).then_some(schemas),
            types,
            index,
        })
    }

    /// The registered types, in registration order.
    pub(crate) fn types(&self) -> &[EventType] {
        &self.types
    }

    /// Whether `event` may be subscribed to: any name while the catalog is
    /// empty; otherwise a registered one, or `*`.
    /// [`Error::InvalidEventName`] names the first unknown one.
    pub(crate) fn check_subscribed(&self, events: &[String]) -> Result<()> {
        if self.types.is_empty() {
            return Ok(());
        }
        match events
            .iter()
            .find(|e| *e != ALL_EVENTS && !self.index.contains_key(e.as_str()))
        {
            None => Ok(()),
            Some(unknown) => Err(Error::InvalidEventName {
                name: clip(unknown),
                reason: "is not in the app's event catalog (Builder::event_type); subscribe to a registered event type or `*`",
            }),
        }
    }

    /// Checks a published payload (serialized JSON) of event `name`
    /// against its type's schema, when payloads are validated and the
    /// type has one: [`Error::PayloadInvalid`] otherwise.
    #[inline]
    pub(crate) fn check_payload(&self, name: &str, payload: &[u8]) -> Result<()> {
        #[cfg(feature = "json-schema")]
        if let Some(schemas) = &self.validating
            && let Some(validator) = schemas.get(name)
        {
            return schema::check_payload(validator, name, payload);
        }
        let _ = (name, payload);
        Ok(())
    }
}

/// JSON Schema through the `jsonschema` crate (feature `json-schema`).
#[cfg(feature = "json-schema")]
mod schema {
    use serde_json::Value;

    use crate::error::{Error, Result};
    use crate::util::clip;

    /// Compiles a schema, never fetching: `offline` refuses every
    /// reference outside the schema itself, even if another crate of the
    /// app turns on jsonschema's HTTP or file retrieval.
    pub(super) fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
        jsonschema::options()
            .offline()
            .build(schema)
            .map_err(|e| e.to_string())
    }

    /// The first way `instance` breaks the schema: the JSON pointer of the
    /// failing value (`/` for the root) and the rule it breaks, with the
    /// value itself masked (a payload's content stays out of errors and
    /// logs).
    pub(super) fn first_failure(
        validator: &jsonschema::Validator,
        instance: &Value,
    ) -> Option<(String, String)> {
        let e = validator.validate(instance).err()?;
        let pointer = match e.instance_path().as_str() {
            "" => "/".to_owned(),
            p => p.to_owned(),
        };
        Some((clip(&pointer), clip(&e.masked().to_string())))
    }

    /// [`first_failure`] as a message for the catalog's checks.
    pub(super) fn check(validator: &jsonschema::Validator, instance: &Value) -> Result<(), String> {
        match first_failure(validator, instance) {
            None => Ok(()),
            Some((pointer, message)) => Err(format!("at {pointer}: {message}")),
        }
    }

    /// Checks a published payload; [`Error::PayloadInvalid`] names the
    /// first failing JSON pointer.
    pub(super) fn check_payload(
        validator: &jsonschema::Validator,
        name: &str,
        payload: &[u8],
    ) -> Result<()> {
        let invalid = |pointer: String, message: String| {
            Err(Error::PayloadInvalid {
                event: clip(name),
                pointer,
                message,
            })
        };
        let instance: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => return invalid("/".into(), format!("is not JSON: {e}")),
        };
        match first_failure(validator, &instance) {
            None => Ok(()),
            Some((pointer, message)) => invalid(pointer, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config_error(r: Result<Catalog>) -> String {
        match r {
            Err(Error::InvalidConfig(m)) => m,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn names_are_checked_and_distinct() {
        let ok = Catalog::compile(
            vec![EventType::new("a.b", "x"), EventType::new("c", "y")],
            false,
        )
        .unwrap();
        assert_eq!(ok.types().len(), 2);
        let m = config_error(Catalog::compile(vec![EventType::new("a b", "x")], false));
        assert!(m.contains("a b") && m.contains("letters"), "{m}");
        let m = config_error(Catalog::compile(vec![EventType::new("*", "x")], false));
        assert!(m.contains('*'), "{m}");
        let m = config_error(Catalog::compile(
            vec![EventType::new("a", "x"), EventType::new("a", "y")],
            false,
        ));
        assert!(m.contains("`a`") && m.contains("twice"), "{m}");
    }

    #[test]
    fn subscriptions_name_registered_types() {
        let empty = Catalog::default();
        empty.check_subscribed(&["anything".into()]).unwrap();
        let c = Catalog::compile(vec![EventType::new("a", "x")], false).unwrap();
        c.check_subscribed(&["a".into(), "*".into()]).unwrap();
        match c.check_subscribed(&["a".into(), "b".into()]) {
            Err(Error::InvalidEventName { name, reason }) => {
                assert_eq!(name, "b");
                assert!(reason.contains("catalog"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn serializes_with_nulls() {
        let t = EventType::new("a", "x").example(json!({"k": 1}));
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            json!({"name": "a", "description": "x", "schema": null, "example": {"k": 1}})
        );
    }

    #[cfg(not(feature = "json-schema"))]
    #[test]
    fn a_schema_needs_the_feature() {
        let m = config_error(Catalog::compile(
            vec![EventType::new("a", "x").schema(json!({"type": "object"}))],
            false,
        ));
        assert!(m.contains("json-schema"), "{m}");
    }

    #[cfg(feature = "json-schema")]
    #[test]
    fn schemas_compile_and_examples_satisfy_them() {
        let schema = json!({"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]});
        let m = config_error(Catalog::compile(
            vec![EventType::new("a", "x").schema(json!({"type": 12}))],
            false,
        ));
        assert!(m.contains("schema does not compile"), "{m}");
        let m = config_error(Catalog::compile(
            vec![
                EventType::new("a", "x")
                    .schema(schema.clone())
                    .example(json!({"id": "secret-value"})),
            ],
            false,
        ));
        assert!(m.contains("example") && m.contains("/id"), "{m}");
        assert!(!m.contains("secret-value"), "the value is masked: {m}");
        // Nothing is fetched: a remote reference does not compile.
        let m = config_error(Catalog::compile(
            vec![EventType::new("a", "x").schema(json!({"$ref": "https://example.com/s.json"}))],
            false,
        ));
        assert!(m.contains("does not compile"), "{m}");
        // Validation off: nothing compiled is kept for publishing.
        let off =
            Catalog::compile(vec![EventType::new("a", "x").schema(schema.clone())], false).unwrap();
        assert!(off.validating.is_none());
        off.check_payload("a", br#"{"id":"x"}"#).unwrap();
        let on = Catalog::compile(vec![EventType::new("a", "x").schema(schema)], true).unwrap();
        on.check_payload("a", br#"{"id":1}"#).unwrap();
        on.check_payload("other", br#"{"id":"x"}"#).unwrap();
        match on.check_payload("a", br#"{"id":"x"}"#) {
            Err(Error::PayloadInvalid {
                event,
                pointer,
                message,
            }) => {
                assert_eq!((event.as_str(), pointer.as_str()), ("a", "/id"));
                assert!(message.contains("integer"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        match on.check_payload("a", b"{}") {
            Err(Error::PayloadInvalid { pointer, .. }) => assert_eq!(pointer, "/"),
            other => panic!("{other:?}"),
        }
    }
}
