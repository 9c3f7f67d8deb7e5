//! Damaged records on disk: typed errors naming the key, quarantine, and
//! delivery of everything else. The damage is done with sled itself, on a
//! closed store, the way a disk or a bug would leave it.

use std::path::Path;
use std::time::{Duration, Instant};

use hookbus::{DeliveryState, Error, NewSubscription};
use serde_json::json;

use crate::receiver::TestReceiver;
use crate::{LONG, builder, wait_until};

/// Opens the raw sled tree of a closed store (waiting for its lock).
pub(crate) fn raw_tree(dir: &Path) -> (sled::Db, sled::Tree) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match sled::open(dir) {
            Ok(db) => {
                let t = db.open_tree("hookbus").unwrap();
                return (db, t);
            }
            Err(e) => {
                assert!(Instant::now() < end, "{e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A record key: prefix byte and 16-byte id.
pub(crate) fn key(prefix: u8, id: [u8; 16]) -> Vec<u8> {
    let mut k = vec![prefix];
    k.extend_from_slice(&id);
    k
}

#[test]
fn damaged_records_are_typed_errors_quarantined_and_the_rest_delivered() {
    if crate::sled_only("records damaged in sled") {
        return;
    }
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let ids: Vec<hookbus::Delivery> = {
        let bus = builder(dir.path()).deliver(false).open().unwrap();
        bus.subscribe(NewSubscription::new("s", rx.url("/")).events(["e"]))
            .unwrap();
        for i in 0..10 {
            bus.publish("e", &json!({ "i": i })).unwrap();
        }
        bus.flush().unwrap();
        let ds = bus.outbox().all().collect::<Result<Vec<_>, _>>().unwrap();
        bus.shutdown(Duration::from_secs(1)).unwrap();
        ds
    };
    assert_eq!(ids.len(), 10);
    let (bad_version, truncated, bad_event) = (&ids[2], &ids[5], &ids[7]);
    {
        let (db, t) = raw_tree(dir.path());
        let k = key(b'd', bad_version.id.to_bytes());
        let mut v = t.get(&k).unwrap().unwrap().to_vec();
        v[0] = 99;
        t.insert(&k, v).unwrap();
        let k = key(b'd', truncated.id.to_bytes());
        let v = t.get(&k).unwrap().unwrap().to_vec();
        t.insert(&k, &v[..v.len() / 2]).unwrap();
        t.insert(
            key(b'e', bad_event.event_id.to_bytes()),
            &[1u8, 0xff, 0xff, 0xff][..],
        )
        .unwrap();
        db.flush().unwrap();
    }

    // Reading them is a typed error naming the key; nothing panics.
    {
        let bus = builder(dir.path()).deliver(false).open().unwrap();
        for d in [bad_version, truncated] {
            match bus.outbox().get(d.id) {
                Err(Error::Corrupt { key, reason }) => {
                    assert!(key.contains(&hex::encode(d.id.to_bytes())), "{key}");
                    assert!(!reason.is_empty());
                }
                other => panic!("expected a corruption error, got {other:?}"),
            }
        }
        assert!(matches!(
            bus.outbox().event(bad_event.event_id),
            Err(Error::Corrupt { .. })
        ));
        let listed: Vec<_> = bus.outbox().pending().collect();
        assert_eq!(listed.len(), 10);
        assert_eq!(listed.iter().filter(|r| r.is_err()).count(), 2);
        bus.shutdown(Duration::from_secs(1)).unwrap();
    }

    // Delivering: the damaged deliveries are moved aside, the one whose
    // event is damaged dies with the reason, all others arrive.
    let bus = builder(dir.path()).open().unwrap();
    wait_until(LONG, "the outbox to settle", || {
        bus.outbox().stats().unwrap().pending == 0
    });
    let stats = bus.outbox().stats().unwrap();
    assert_eq!(
        (stats.delivered, stats.dead, stats.quarantined),
        (7, 1, 2),
        "{stats:?}"
    );
    assert_eq!(rx.count(), 7);
    let dead = bus.outbox().get(bad_event.id).unwrap().unwrap();
    assert_eq!(dead.state, DeliveryState::Dead);
    assert!(dead.last_error.unwrap().contains("event record is damaged"));
    assert!(
        bus.outbox().get(bad_version.id).unwrap().is_none(),
        "quarantined"
    );
    let q: Vec<(String, Vec<u8>)> = bus
        .outbox()
        .quarantined()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(q.len(), 2);
    assert!(
        q.iter()
            .any(|(k, v)| *k == hex::encode(key(b'd', bad_version.id.to_bytes())) && v[0] == 99)
    );
    let got: Vec<i64> = rx
        .requests()
        .iter()
        .map(|r| r.json()["i"].as_i64().unwrap())
        .collect();
    assert!(!got.contains(&2) && !got.contains(&5) && !got.contains(&7));
    drop(bus);

    // The quarantined bytes are kept under their own prefix.
    let (_db, t) = raw_tree(dir.path());
    let mut q = vec![b'z'];
    q.extend_from_slice(&key(b'd', truncated.id.to_bytes()));
    assert!(t.get(q).unwrap().is_some());
}

#[test]
fn foreign_or_newer_stores_are_refused_clearly() {
    if crate::sled_only("a foreign or newer sled folder") {
        return;
    }
    // A newer format version.
    let dir = crate::test_dir();
    drop(builder(dir.path()).open().unwrap());
    {
        let (db, t) = raw_tree(dir.path());
        t.insert(b"mformat", &[9u8][..]).unwrap();
        db.flush().unwrap();
    }
    let err = builder(dir.path()).open().unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnsupportedFormat {
                found: 9,
                supported: 6,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("upgrade hookbus"));

    // A damaged format marker.
    {
        let (db, t) = raw_tree(dir.path());
        t.insert(b"mformat", &[][..]).unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(
        builder(dir.path()).open(),
        Err(Error::NotAStore { .. })
    ));

    // A sled database of someone else.
    let other = crate::test_dir();
    {
        let db = sled::open(other.path()).unwrap();
        db.insert(b"k", b"v").unwrap();
        db.flush().unwrap();
    }
    let err = builder(other.path()).open().unwrap_err();
    assert!(matches!(err, Error::NotAStore { .. }), "{err:?}");
    assert!(err.to_string().contains("without hookbus data"), "{err}");
}

#[test]
fn a_recount_reports_a_delivery_missing_from_its_state_index() {
    if crate::sled_only("an index entry removed in sled") {
        return;
    }
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    {
        let bus = builder(dir.path()).deliver(false).open().unwrap();
        bus.subscribe(NewSubscription::new("s", rx.url("/")).events(["e"]))
            .unwrap();
        for i in 0..3 {
            bus.publish("e", &json!({ "i": i })).unwrap();
        }
        bus.flush().unwrap();
        let stats = bus.outbox().recount().unwrap();
        assert_eq!(stats.pending, 3, "intact, the recount agrees");
        bus.shutdown(Duration::from_secs(1)).unwrap();
    }
    {
        // The pending index (due time by subscription) loses one entry.
        let (db, t) = raw_tree(dir.path());
        let (k, _) = t.scan_prefix([b'r']).next().unwrap().unwrap();
        t.remove(k).unwrap();
        db.flush().unwrap();
    }
    let bus = builder(dir.path()).deliver(false).open().unwrap();
    match bus.outbox().recount() {
        Err(Error::Inconsistent(m)) => assert!(m.contains("in no state index"), "{m}"),
        other => panic!("a quiet outbox's real disagreement is reported: {other:?}"),
    }
    bus.shutdown(Duration::from_secs(1)).unwrap();
}
