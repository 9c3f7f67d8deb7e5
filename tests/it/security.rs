use std::time::Duration;

use hookbus::signing::{self, DEFAULT_TOLERANCE};
use hookbus::{AttemptErrorKind, Error, NewSubscription, Signing, SubscriptionPatch};
use serde_json::json;

use crate::receiver::TestReceiver;
use crate::{LONG, builder, open, wait_until};

#[test]
fn standard_webhooks_mode_signs_per_the_spec_and_rotation_signs_with_both() {
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let sub = bus
        .subscribe(
            NewSubscription::new("std", rx.url("/std"))
                .events(["invoice.paid"])
                .generate_secret()
                .signing(Signing::StandardWebhooks),
        )
        .unwrap();
    assert_eq!(sub.signing, Signing::StandardWebhooks);
    assert_eq!(
        serde_json::to_value(&sub).unwrap()["signing"],
        "standard_webhooks"
    );
    let old_secret = sub.secret.clone().unwrap().expose().to_owned();
    assert!(old_secret.starts_with("whsec_"));
    bus.publish("invoice.paid", &json!({"amount": 42})).unwrap();
    let r = rx.wait_for(1, LONG).remove(0);
    assert_eq!(r.header("webhook-id"), Some(r.delivery_id().as_str()));
    let ts: u64 = r.header("webhook-timestamp").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(ts) < 60);
    assert_eq!(r.header("x-hub-signature"), None);
    assert_eq!(r.header("webhook-signature").unwrap().split(' ').count(), 1);
    signing::verify_standard(&old_secret, r.header_pairs(), &r.body, DEFAULT_TOLERANCE).unwrap();
    let mut tampered = r.body.clone();
    tampered[0] = b' ';
    assert_eq!(
        signing::verify_standard(&old_secret, r.header_pairs(), &tampered, DEFAULT_TOLERANCE),
        Err(signing::VerifyError::BadSignature)
    );

    // Rotate: both secrets sign until the old one expires.
    let new_secret = signing::generate_secret();
    let rotated = bus
        .subscriptions()
        .update(
            sub.id,
            SubscriptionPatch::new().rotate_secret(&new_secret, Duration::from_secs(3600)),
        )
        .unwrap();
    assert!(rotated.previous_secret_until.is_some());
    bus.publish("invoice.paid", &json!({"amount": 43})).unwrap();
    let r = rx.wait_for(2, LONG).remove(1);
    assert_eq!(r.header("webhook-signature").unwrap().split(' ').count(), 2);
    signing::verify_standard(&old_secret, r.header_pairs(), &r.body, DEFAULT_TOLERANCE).unwrap();
    signing::verify_standard(&new_secret, r.header_pairs(), &r.body, DEFAULT_TOLERANCE).unwrap();

    // An expired previous secret no longer signs.
    bus.subscriptions()
        .update(
            sub.id,
            SubscriptionPatch::new().rotate_secret(signing::generate_secret(), Duration::ZERO),
        )
        .unwrap();
    bus.publish("invoice.paid", &json!({"amount": 44})).unwrap();
    let r = rx.wait_for(3, LONG).remove(2);
    assert_eq!(r.header("webhook-signature").unwrap().split(' ').count(), 1);
    assert!(
        signing::verify_standard(&new_secret, r.header_pairs(), &r.body, DEFAULT_TOLERANCE)
            .is_err()
    );
}

#[test]
fn hub_mode_rotation_signs_with_the_current_secret() {
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let bus = open(dir.path());
    let sub = bus
        .subscribe(
            NewSubscription::new("hub", rx.url("/"))
                .events(["a"])
                .secret("old"),
        )
        .unwrap();
    bus.subscriptions()
        .update(
            sub.id,
            SubscriptionPatch::new().rotate_secret("new", Duration::from_secs(60)),
        )
        .unwrap();
    bus.publish("a", &json!(1)).unwrap();
    let r = rx.wait_for(1, LONG).remove(0);
    assert!(r.signed_with(b"new", "x-hub-signature-256"));
    assert!(r.signed_with(b"new", "x-hub-signature"));
    assert!(!r.signed_with(b"old", "x-hub-signature-256"));
}

#[test]
fn malformed_secrets_are_typed_errors_and_secrets_never_print() {
    let dir = crate::test_dir();
    let bus = open(dir.path());
    for (secret, signing) in [
        (None, Signing::StandardWebhooks),
        (Some("plain-text"), Signing::StandardWebhooks),
        (Some("whsec_c2hvcnQ="), Signing::StandardWebhooks),
        (Some(""), Signing::Hub),
    ] {
        let mut n = NewSubscription::new("n", "http://127.0.0.1:1/")
            .events(["a"])
            .signing(signing);
        if let Some(s) = secret {
            n = n.secret(s);
        }
        let err = bus.subscribe(n).unwrap_err();
        assert!(
            matches!(err, Error::InvalidSecret { .. }),
            "{secret:?}: {err:?}"
        );
    }
    let sub = bus
        .subscribe(
            NewSubscription::new("n", "http://127.0.0.1:1/")
                .events(["a"])
                .secret("hunter2-secret"),
        )
        .unwrap();
    assert!(!format!("{sub:?}").contains("hunter2"));
    let json = serde_json::to_string(&sub).unwrap();
    assert!(
        !json.contains("hunter2") && !json.contains("secret\""),
        "{json}"
    );
    // Switching an existing subscription to Standard Webhooks needs a whsec_ secret.
    let err = bus
        .subscriptions()
        .update(
            sub.id,
            SubscriptionPatch::new().signing(Signing::StandardWebhooks),
        )
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSecret { .. }));
    assert_eq!(sub.signing, Signing::default());
    assert_eq!(
        bus.subscriptions().get(sub.id).unwrap().unwrap().signing,
        Signing::Hub
    );
}

#[test]
fn https_only_refuses_plain_http() {
    let dir = crate::test_dir();
    let bus = hookbus::Bus::builder()
        .path(dir.path())
        .https_only(true)
        .open()
        .unwrap();
    let err = bus
        .subscribe(NewSubscription::new("n", "http://example.com/").events(["a"]))
        .unwrap_err();
    assert!(err.to_string().contains("must use https"), "{err}");
    bus.subscribe(NewSubscription::new("n", "https://example.com/").events(["a"]))
        .unwrap();
}

/// A host name set up in the bus's own resolver that points at loopback:
/// refused by default without a request, delivered when allowed.
#[test]
fn names_resolving_to_loopback_are_refused_unless_allowed() {
    let rx = TestReceiver::start();
    let port = rx.addr().port();
    let url = format!("http://hooks.example.test:{port}/in");
    let loopback = [std::net::IpAddr::from([127, 0, 0, 1])];

    let dir = crate::test_dir();
    let strict = builder(dir.path())
        .allow_private_targets(false)
        .dns_override("hooks.example.test", loopback)
        .open()
        .unwrap();
    // The URL names no internal address, so subscribing works...
    strict
        .subscribe(NewSubscription::new("n", &url).events(["a"]))
        .unwrap();
    strict.publish("a", &json!(1)).unwrap();
    wait_until(LONG, "dead", || strict.outbox().stats().unwrap().dead == 1);
    // ... but delivery checks the resolved address.
    let d = strict.outbox().dead().next().unwrap().unwrap();
    let attempts = strict.outbox().attempts(d.id).unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        attempts[0].error.as_ref().unwrap().kind,
        AttemptErrorKind::Blocked
    );
    assert_eq!(rx.count(), 0);
    drop(strict);

    // The same URL with an allowed network, and with private targets allowed.
    for b in [
        builder(dir.path())
            .allow_private_targets(false)
            .allowed_networks(["127.0.0.0/8"]),
        builder(dir.path()).allow_private_targets(true),
    ] {
        let before = rx.count();
        let bus = b
            .dns_override("hooks.example.test", loopback)
            .open()
            .unwrap();
        bus.publish("a", &json!(2)).unwrap();
        rx.wait_for(before + 1, LONG);
        bus.shutdown(Duration::from_secs(1)).unwrap();
    }
    assert_eq!(
        rx.requests()
            .iter()
            .map(|r| r.header("host").unwrap().to_owned())
            .collect::<Vec<_>>(),
        vec![
            format!("hooks.example.test:{port}"),
            format!("hooks.example.test:{port}")
        ]
    );
}

#[test]
fn bad_network_configs_are_refused() {
    let dir = crate::test_dir();
    let err = hookbus::Bus::builder()
        .path(dir.path())
        .allowed_networks(["10.0.0.0/40"])
        .open()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(m) if m.contains("CIDR")));
}

/// Issue 10: `::ffff:10.0.0.0/104` allowed every IPv4 address (release) or
/// panicked in `subscribe` (debug). It is the IPv4 network 10/8.
#[test]
fn mapped_allowed_networks_allow_only_their_own_addresses() {
    for net in ["::ffff:10.0.0.0/104", "::ffff:10.1.2.3"] {
        let dir = crate::test_dir();
        let bus = hookbus::Bus::builder()
            .path(dir.path())
            .allowed_networks([net])
            .open()
            .unwrap();
        for target in [
            "http://127.0.0.1/",
            "http://169.254.169.254/",
            "http://[::1]/",
        ] {
            let r = bus.subscribe(NewSubscription::new("n", target).events(["a"]));
            assert!(
                matches!(r, Err(Error::InvalidUrl { .. })),
                "{net} let {target} through: {r:?}"
            );
        }
        bus.subscribe(NewSubscription::new("n", "http://10.1.2.3/").events(["a"]))
            .unwrap();
    }
}
