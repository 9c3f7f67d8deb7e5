//! Issue 25, defects 4 and 7e: no public type's `Debug` dumps the store or
//! shows a secret (signing secrets, custom header values, the secret path
//! and query of a webhook URL, payloads in handles, a PostgreSQL
//! password), and no log line shows a webhook URL's path or query.

use std::fmt::{Debug, Write as _};
use std::sync::Mutex;
use std::time::Duration;

use hookbus::{Message, NewSubscription, SubscriptionPatch};

use crate::receiver::{Reply, TestReceiver};
use crate::{LONG, builder, wait_until};

const SECRET: &str = "s3cr3t-SIGNING-key";
const ROTATED: &str = "r0tated-SIGNING-key";
const HEADER_VALUE: &str = "hdr-SECRET-value";
const PATH_SECRET: &str = "PATHSECRET";
const QUERY_SECRET: &str = "QUERYSECRET";
const PAYLOAD: &str = "payload-SECRET";
const PG_PASSWORD: &str = "PG-PASSWORD-secret";
/// A webhook URL's path and query as Slack, Teams and Discord make them:
/// the secret is in the URL.
const SECRET_PATH: &str = "/services/T0/B0/PATHSECRET?token=QUERYSECRET";

/// The strings no `Debug` output may contain: the secrets, the payload,
/// and each also as the decimal byte list a derived `Debug` of `Vec<u8>`
/// prints (sled's `Debug` shows stored records that way).
fn needles() -> Vec<String> {
    let plain = [
        SECRET,
        ROTATED,
        HEADER_VALUE,
        PATH_SECRET,
        QUERY_SECRET,
        PAYLOAD,
        PG_PASSWORD,
    ];
    let bytes = plain.map(|s| {
        let list = format!("{:?}", s.as_bytes());
        list[1..list.len() - 1].to_owned()
    });
    plain.map(String::from).into_iter().chain(bytes).collect()
}

/// Formats values with `{:?}` and `{:#?}` and collects what they show that
/// they should not: a secret, or a long text (a handle that walks the
/// store prints kilobytes). Every finding is reported at the end.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, what: &str, value: &dyn Debug, max_len: usize) {
        for (style, text) in [
            ("{:?}", format!("{value:?}")),
            ("{:#?}", format!("{value:#?}")),
        ] {
            let head: String = text.chars().take(400).collect();
            for needle in needles() {
                if text.contains(&needle) {
                    self.0.push(format!(
                        "{what} ({style}) shows `{needle}`; its first 400 of {} chars: {head}",
                        text.len()
                    ));
                }
            }
            if text.len() > max_len {
                self.0.push(format!(
                    "{what} ({style}) is {} chars long (at most {max_len}): {head}",
                    text.len()
                ));
            }
        }
    }

    fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} findings:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

/// Everything the crate logs, for as long as the test binary runs (a
/// global subscriber: the dispatcher logs from its own thread).
static LOG: Mutex<String> = Mutex::new(String::new());

struct Capture;

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut line = String::new();
        span.record(&mut Fields(&mut line));
        LOG.lock().unwrap().push_str(&line);
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut line = String::new();
        values.record(&mut Fields(&mut line));
        LOG.lock().unwrap().push_str(&line);
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = format!("{} ", event.metadata().level());
        event.record(&mut Fields(&mut line));
        line.push('\n');
        LOG.lock().unwrap().push_str(&line);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn capture_logs() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        tracing::subscriber::set_global_default(Capture)
            .expect("no other test sets a global subscriber");
    });
}

#[test]
fn debug_output_shows_no_secret_and_no_store() {
    capture_logs();
    let mut f = Findings::default();
    // 410 Gone on the first delivery: the subscription is disabled (a
    // WARN line names it), its delivery dead-lettered, and notices made.
    let rx = TestReceiver::with(|_| Reply::status(410).body(b"gone"));
    // A second endpoint where nothing listens: its delivery keeps failing
    // with a connection error.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}{SECRET_PATH}")
    };
    let dir = crate::test_dir();
    let b = builder(dir.path());
    f.check("Builder", &b, 4096);
    let bus = b.open().unwrap();

    let new = NewSubscription::new("slack", rx.url(SECRET_PATH))
        .events(["order.paid"])
        .secret(SECRET)
        .header("X-Custom-Auth", HEADER_VALUE)
        .owner("alice");
    f.check("NewSubscription", &new, 4096);
    let sub = bus.subscribe(new).unwrap();
    assert_eq!(sub.url, rx.url(SECRET_PATH), "the field keeps the real URL");
    assert_eq!(sub.headers[0].1.expose(), HEADER_VALUE);
    let other = bus
        .subscribe(
            NewSubscription::new("teams", dead.clone())
                .events(["order.paid"])
                .secret(SECRET)
                .header("X-Custom-Auth", HEADER_VALUE),
        )
        .unwrap();

    let patch = SubscriptionPatch::new()
        .url(dead.clone())
        .secret(SECRET)
        .rotate_secret(ROTATED, Duration::from_secs(60))
        .headers([("X-Custom-Auth", HEADER_VALUE)]);
    f.check("SubscriptionPatch", &patch, 4096);

    let message = Message::new("order.paid", &serde_json::json!({ "note": PAYLOAD }));
    f.check("Message", &message, 4096);
    let event_id = bus
        .publish("order.paid", &serde_json::json!({ "note": PAYLOAD }))
        .unwrap();
    bus.flush().unwrap();
    wait_until(LONG, "the 410 and a failed attempt", || {
        let stats = bus.outbox().stats().unwrap();
        stats.dead == 1
            && bus
                .outbox()
                .for_subscription(other.id, false)
                .next()
                .is_some_and(|d| d.unwrap().attempts > 0)
    });
    // A rotation in place, so the stored subscription has a previous
    // secret too.
    let other = bus
        .subscriptions()
        .update(
            other.id,
            SubscriptionPatch::new().rotate_secret(ROTATED, Duration::from_secs(60)),
        )
        .unwrap();

    // The handles: small, whatever the store holds.
    f.check("Bus", &bus, 512);
    f.check("Outbox", &bus.outbox(), 512);
    f.check("Subscriptions", &bus.subscriptions(), 512);
    f.check("Notices", &bus.notices(), 512);
    f.check("Deliveries", &bus.outbox().all(), 512);
    f.check("Config", bus.config(), 4096);
    let listener = bus.on_notice(|_| false).unwrap();
    f.check("NoticeListener", &listener, 512);
    listener.stop();

    // The records.
    f.check("Subscription", &sub, 4096);
    f.check("Subscription (rotated)", &other, 4096);
    f.check("Secret", &other.secret, 512);
    f.check(
        "subscriptions.list()",
        &bus.subscriptions().list().unwrap(),
        8192,
    );
    f.check(
        "health_all",
        &bus.subscriptions().health_all().unwrap(),
        8192,
    );
    f.check("health", &bus.subscriptions().health(sub.id).unwrap(), 4096);
    f.check("BusHealth", &bus.health(Duration::from_secs(5)), 4096);
    f.check("OutboxStats", &bus.outbox().stats().unwrap(), 512);
    let deliveries: Vec<_> = bus.outbox().all().map(Result::unwrap).collect();
    assert_eq!(deliveries.len(), 2);
    f.check("Delivery", &deliveries, 8192);
    for d in &deliveries {
        f.check("Attempt", &bus.outbox().attempts(d.id).unwrap(), 8192);
    }
    f.check(
        "Event",
        &bus.outbox().event(event_id).unwrap().unwrap(),
        4096,
    );
    let notices = bus.notices().pending(100).unwrap();
    assert!(!notices.is_empty(), "the 410 left notices");
    f.check("Notice", &notices, 8192);
    f.check("ping", &bus.subscriptions().ping(sub.id).unwrap(), 4096);

    // What is shown instead.
    assert_eq!(format!("{:?}", bus.outbox()), "Outbox { .. }");
    assert_eq!(format!("{:?}", bus.subscriptions()), "Subscriptions { .. }");
    assert_eq!(format!("{:?}", bus.notices()), "Notices { .. }");
    let shown = format!("{sub:?}");
    let host = format!("url: \"http://{}/…\"", rx.addr());
    assert!(shown.contains(&host), "{shown}");
    assert!(shown.contains("secret: Some([redacted])"), "{shown}");
    assert!(
        shown.contains("(\"X-Custom-Auth\", [redacted])"),
        "header names show: {shown}"
    );
    let health = format!("{:?}", bus.subscriptions().health(sub.id).unwrap());
    assert!(health.contains(&host), "{health}");
    let event = format!("{:?}", bus.outbox().event(event_id).unwrap().unwrap());
    assert!(event.contains("payload: [25 bytes]"), "{event}");

    // The REST adapter's request (its body carries the secrets).
    let caller = hookbus::rest::Caller::new("alice", ["user"]);
    let body = format!(
        r#"{{"name":"n","events":["a"],"config":{{"url":"{}","secret":"{SECRET}"}}}}"#,
        rx.url(SECRET_PATH)
    );
    let req = hookbus::rest::ApiRequest {
        method: "POST",
        path: "/webhooks/subscriptions",
        query: "",
        caller: Some(&caller),
        body: body.as_bytes(),
    };
    f.check("ApiRequest", &req, 1024);
    // (An `ApiResponse` is the JSON body the caller is answered with: it
    // shows the subscription's URL to its owner by design.)

    bus.shutdown(Duration::from_secs(2)).unwrap();
    f.check("Bus (shut down)", &bus, 512);

    // The logs: the WARN of the disabled subscription names it, without
    // the URL's secrets.
    let log = LOG.lock().unwrap().clone();
    assert!(log.contains("subscription disabled"), "{log}");
    let shown: Vec<String> = needles()
        .into_iter()
        .filter(|n| log.contains(n.as_str()))
        .collect();
    let redacted = format!("url=http://{}/…", rx.addr());
    if !shown.is_empty() || !log.contains(&redacted) {
        f.0.push(format!(
            "the log shows {shown:?} and {} `{redacted}`:\n{log}",
            if log.contains(&redacted) {
                "has"
            } else {
                "lacks"
            }
        ));
    }
    f.assert_none();
}

/// A PostgreSQL URL's password is shown neither by the builder nor by the
/// settings it makes.
#[cfg(feature = "postgres")]
#[test]
fn debug_output_hides_the_postgres_password() {
    let mut f = Findings::default();
    let url = format!("postgres://app:{PG_PASSWORD}@db.example:5432/hooks?password={PG_PASSWORD}");
    let b = hookbus::Bus::builder().postgres(url);
    f.check("Builder (postgres)", &b, 4096);
    let config = b.build().unwrap();
    f.check("Config (postgres)", &config, 4096);
    let kv = hookbus::Bus::builder().postgres(format!("host=db user=app password={PG_PASSWORD}"));
    f.check("Builder (postgres key=value)", &kv, 4096);
    f.assert_none();
}
