//! Property tests: no input makes the codec, the validators, the SSRF check
//! or the verifiers panic, and what is written reads back the same.

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use crate::codec;
use crate::delivery::{Delivery, DeliveryState};
use crate::ids::{DeliveryId, EventId, SubscriptionId, Timestamp};
use crate::record::{Attempt, AttemptError, AttemptErrorKind, Event};
use crate::signing;
use crate::ssrf::{TargetPolicy, is_global};
use crate::storage::SubscriptionRecord;
use crate::subscription::validate::{validate_event_name, validate_url};

fn id_bytes() -> impl Strategy<Value = [u8; 16]> {
    any::<[u8; 16]>()
}

fn state() -> impl Strategy<Value = DeliveryState> {
    prop_oneof![
        Just(DeliveryState::Pending),
        Just(DeliveryState::Delivered),
        Just(DeliveryState::Dead)
    ]
}

prop_compose! {
    fn delivery()(id in id_bytes(), ev in id_bytes(), sub in id_bytes(), name in "[a-z.]{1,20}", state in state(),
                   attempts in any::<u32>(), t in any::<u64>(), next in any::<Option<u64>>(), fin in any::<Option<u64>>(),
                   status in any::<Option<u16>>(), err in any::<Option<String>>(), seq in any::<u64>()) -> Delivery {
        Delivery {
            id: DeliveryId::from_bytes(id), event_id: EventId::from_bytes(ev), event_name: name,
            subscription_id: SubscriptionId::from_bytes(sub), state, attempts, created_at: Timestamp::from_millis(t),
            next_attempt_at: next.map(Timestamp::from_millis), finished_at: fin.map(Timestamp::from_millis),
            last_status: status, last_error: err, sequence: seq,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn codec_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = codec::decode::<Delivery>(&bytes);
        let _ = codec::decode::<Event>(&bytes);
        let _ = codec::decode::<Attempt>(&bytes);
        let _ = codec::decode::<SubscriptionRecord>(&bytes);
        let _ = codec::decode::<crate::record::OutboxStats>(&bytes);
    }

    #[test]
    fn deliveries_round_trip(d in delivery()) {
        let bytes = codec::encode(&d).unwrap();
        prop_assert_eq!(codec::decode::<Delivery>(&bytes).unwrap(), d);
        // Every truncation is an error, never a panic or a wrong record.
        for cut in 0..bytes.len() {
            prop_assert!(codec::decode::<Delivery>(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn events_and_attempts_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..2000), name in "[A-Za-z0-9_.-]{1,100}",
                                      n in any::<u32>(), status in any::<Option<u16>>(), msg in ".{0,50}", tp in proptest::option::of("[0-9a-f-]{0,55}")) {
        let e = Event { id: EventId::generate(), name, payload: payload.clone(), created_at: Timestamp::now(), traceparent: tp.clone(), tenant: tp, scope_unknown: false };
        prop_assert_eq!(codec::decode::<Event>(&codec::encode(&e).unwrap()).unwrap(), e);
        let a = Attempt {
            number: n, at: Timestamp::now(), duration_ms: 3, status,
            error: Some(AttemptError { kind: AttemptErrorKind::Timeout, message: msg }),
            response_excerpt: payload.into_iter().take(1024).collect(),
        };
        prop_assert_eq!(codec::decode::<Attempt>(&codec::encode(&a).unwrap()).unwrap(), a);
    }

    #[test]
    fn validators_never_panic(s in ".{0,300}") {
        let _ = validate_event_name(&s, true);
        let _ = validate_url(&s, &TargetPolicy::default(), false);
        let _ = validate_url(&format!("http://{s}"), &TargetPolicy::default(), true);
        let _ = s.parse::<crate::ssrf::IpNet>();
        let _ = s.parse::<DeliveryId>();
    }

    #[test]
    fn accepted_event_names_follow_the_rules(s in "[A-Za-z0-9_.*/ -]{0,110}") {
        if validate_event_name(&s, false).is_ok() {
            prop_assert!((1..=100).contains(&s.len()));
            prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)));
        }
    }

    #[test]
    fn mapped_addresses_are_judged_like_their_ipv4(v4 in any::<u32>()) {
        let ip = Ipv4Addr::from(v4);
        prop_assert_eq!(is_global(IpAddr::V4(ip)), is_global(IpAddr::V6(ip.to_ipv6_mapped())));
        let policy = TargetPolicy::default();
        if let Ok(u) = url::Url::parse(&format!("http://{ip}/")) {
            let blocked = policy.literal_host_blocked(&u.host().unwrap()).is_some();
            prop_assert_eq!(blocked, !is_global(IpAddr::V4(ip)));
        }
    }

    #[test]
    fn networks_never_panic_and_agree_with_prefix_arithmetic(net in any::<[u8; 16]>(), v4 in any::<bool>(),
                                                            prefix in 0u8..=140, addr in any::<[u8; 16]>(), mapped in any::<bool>()) {
        let net_ip = if v4 { IpAddr::from([net[0], net[1], net[2], net[3]]) } else { IpAddr::from(net) };
        let text = format!("{net_ip}/{prefix}");
        let target = if mapped { IpAddr::V6(Ipv4Addr::from([addr[0], addr[1], addr[2], addr[3]]).to_ipv6_mapped()) } else { IpAddr::from(addr) };
        if let Ok(n) = text.parse::<crate::ssrf::IpNet>() {
            let _ = n.contains(target);
            let _ = n.contains(IpAddr::from([addr[0], addr[1], addr[2], addr[3]]));
            // Whatever parses prints a network that parses to itself.
            prop_assert_eq!(n.to_string().parse::<crate::ssrf::IpNet>().unwrap(), n);
            // An IPv4 network never takes in every address unless it is /0.
            if n.to_string().ends_with("/0") {
                prop_assert!(prefix == 0 || prefix == 96);
            }
        }
        // The mapped form of an IPv4 network is the same network.
        let v4net = Ipv4Addr::from([net[0], net[1], net[2], net[3]]);
        let p4 = prefix % 33;
        if let (Ok(a), Ok(b)) = (format!("{v4net}/{p4}").parse::<crate::ssrf::IpNet>(),
                                 format!("{}/{}", v4net.to_ipv6_mapped(), u32::from(p4) + 96).parse::<crate::ssrf::IpNet>()) {
            prop_assert_eq!(a.contains(target), b.contains(target));
        }
    }

    #[test]
    fn timestamps_round_trip_through_text_and_json(ms in any::<u64>(), s in ".{0,40}") {
        let t = Timestamp::from_millis(ms);
        prop_assert_eq!(t.to_string().parse::<Timestamp>(), Ok(t));
        let json = serde_json::to_string(&t).unwrap();
        prop_assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        let _ = s.parse::<Timestamp>();
    }

    #[test]
    fn signatures_verify_and_garbage_never_panics(secret in proptest::collection::vec(any::<u8>(), 1..64),
                                                  body in proptest::collection::vec(any::<u8>(), 0..500),
                                                  header in ".{0,120}") {
        prop_assert!(signing::verify_signature(&secret, &body, &signing::sign_sha1(&secret, &body)));
        prop_assert!(signing::verify_signature(&secret, &body, &signing::sign_sha256(&secret, &body)));
        let _ = signing::verify_signature(&secret, &body, &header);
        let ts = header.chars().take(12).collect::<String>();
        let _ = signing::verify_standard_at("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            [("webhook-id", header.as_str()), ("webhook-timestamp", ts.as_str()), ("webhook-signature", header.as_str())],
            &body, signing::DEFAULT_TOLERANCE, 1_700_000_000);
    }

    #[test]
    fn standard_signatures_round_trip(key in proptest::collection::vec(any::<u8>(), 24..64), id in "[a-z0-9_]{1,40}",
                                      ts in 1_000_000_000u64..4_000_000_000, body in proptest::collection::vec(any::<u8>(), 0..500)) {
        use base64::Engine;
        let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(&key));
        let sig = signing::sign_standard(&key, &id, ts, &body);
        let t = ts.to_string();
        let headers = [("webhook-id", id.as_str()), ("webhook-timestamp", t.as_str()), ("webhook-signature", sig.as_str())];
        prop_assert_eq!(signing::verify_standard_at(&secret, headers, &body, signing::DEFAULT_TOLERANCE, ts), Ok(()));
    }
}
