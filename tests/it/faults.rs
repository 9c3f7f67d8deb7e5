//! The receiver fault matrix: every kind of bad receiver ends delivered or
//! dead with every attempt recorded, while a healthy subscriber keeps
//! receiving.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use hookbus::{AttemptErrorKind, Delivery, DeliveryState, NewSubscription};
use serde_json::json;

use crate::receiver::{Reply, Request, TestReceiver};
use crate::{LONG, builder, dead_url, wait_until};

#[derive(Clone, Copy, Debug)]
enum Raw {
    /// Headers promise 100 bytes; 3 come, then the connection closes.
    TruncatedBody,
    /// 200 with a 10 MB body.
    Enormous,
    /// 200 with a chunked body that never ends.
    Endless,
    /// The response, one byte every 100 ms.
    Slow,
    /// 503 with `Retry-After`, then 3 of 100 promised bytes and silence
    /// (the connection stays open up to 10 s).
    StatusThenStall,
}

/// A raw TCP receiver misbehaving as told; every loop is bounded.
fn raw_server(kind: Raw) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || serve_raw(conn, kind));
        }
    });
    url
}

fn serve_raw(conn: TcpStream, kind: Raw) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    if read_request(&mut r).is_none() {
        return;
    }
    let end = Instant::now() + Duration::from_secs(30);
    match kind {
        Raw::TruncatedBody => {
            let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc");
        }
        Raw::Enormous => {
            let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10485760\r\n\r\n");
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..160 {
                if w.write_all(&chunk).is_err() {
                    return;
                }
            }
        }
        Raw::Endless => {
            let _ = w.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
            while Instant::now() < end
                && w.write_all(b"4000\r\n").is_ok()
                && w.write_all(&[b'y'; 0x4000]).is_ok()
                && w.write_all(b"\r\n").is_ok()
            {}
        }
        Raw::StatusThenStall => {
            let _ = w.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 100\r\n\r\nabc",
            );
            let _ = w.flush();
            std::thread::sleep(Duration::from_secs(10));
        }
        Raw::Slow => {
            for b in b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n" {
                if Instant::now() > end || w.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn deliveries_of(bus: &hookbus::Bus, sub: hookbus::SubscriptionId) -> Vec<Delivery> {
    bus.outbox()
        .for_subscription(sub, false)
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn every_bad_receiver_ends_delivered_or_dead_and_the_healthy_one_keeps_receiving() {
    let healthy = TestReceiver::start();
    let statuses = TestReceiver::with(|r| match r.path.as_str() {
        "/500" => Reply::status(500).body(b"internal"),
        "/503" => Reply::status(503).header("Retry-After", "1"),
        "/429" => Reply::status(429),
        "/302" => Reply::status(302).header("Location", "http://10.0.0.1/internal"),
        "/hang" => Reply::ok().delay(Duration::from_secs(20)),
        _ => Reply::status(404),
    });
    let cases: Vec<(&str, String)> = vec![
        ("refused", dead_url()),
        ("500", statuses.url("/500")),
        ("503-retry-after", statuses.url("/503")),
        ("429", statuses.url("/429")),
        ("302-to-private", statuses.url("/302")),
        ("hang", statuses.url("/hang")),
        ("truncated", raw_server(Raw::TruncatedBody)),
        ("enormous", raw_server(Raw::Enormous)),
        ("endless", raw_server(Raw::Endless)),
        ("slow", raw_server(Raw::Slow)),
    ];
    let dir = crate::test_dir();
    let bus = builder(dir.path())
        .senders(4)
        .request_timeout(Duration::from_secs(1))
        .retry_schedule(vec![Duration::from_millis(10), Duration::from_millis(10)])
        .open()
        .unwrap();
    let mut subs = Vec::new();
    for (name, url) in &cases {
        subs.push((
            *name,
            bus.subscribe(NewSubscription::new(*name, url).events(["e"]))
                .unwrap()
                .id,
        ));
    }
    bus.subscribe(NewSubscription::new("healthy", healthy.url("/")).events(["e"]))
        .unwrap();
    const EVENTS: usize = 2;
    for i in 0..EVENTS {
        bus.publish("e", &json!({ "i": i })).unwrap();
    }
    // The healthy subscriber gets everything, while the bad ones are still
    // being retried.
    healthy.wait_for(EVENTS, LONG);
    wait_until(Duration::from_secs(90), "every delivery to finish", || {
        bus.outbox().stats().unwrap().pending == 0
    });

    for (name, sub) in subs {
        let ds = deliveries_of(&bus, sub);
        assert_eq!(ds.len(), EVENTS, "{name}");
        for d in ds {
            let attempts = bus.outbox().attempts(d.id).unwrap();
            assert_eq!(
                attempts.len() as u32,
                d.attempts,
                "{name}: every attempt is recorded"
            );
            assert!(
                attempts
                    .iter()
                    .all(|a| a.status.is_some() != a.error.is_some()),
                "{name}: {attempts:?}"
            );
            let kinds: Vec<_> = attempts
                .iter()
                .map(|a| a.error.as_ref().map(|e| e.kind))
                .collect();
            let codes: Vec<_> = attempts.iter().map(|a| a.status).collect();
            match name {
                "enormous" | "endless" => {
                    assert_eq!(d.state, DeliveryState::Delivered, "{name}: {attempts:?}");
                    assert_eq!(
                        attempts.last().unwrap().response_excerpt.len(),
                        1024,
                        "{name}: the excerpt is capped"
                    );
                }
                _ => {
                    assert_eq!(d.state, DeliveryState::Dead, "{name}: {d:?}");
                    assert_eq!(d.attempts, 3, "{name}: 1 + schedule.len() attempts");
                }
            }
            match name {
                "refused" => assert!(
                    kinds.iter().all(|k| *k == Some(AttemptErrorKind::Connect)),
                    "{name}: {kinds:?}"
                ),
                "500" => assert!(codes.iter().all(|c| *c == Some(500))),
                "429" => assert!(codes.iter().all(|c| *c == Some(429))),
                "302-to-private" => assert!(codes.iter().all(|c| *c == Some(302))),
                "503-retry-after" => {
                    assert!(codes.iter().all(|c| *c == Some(503)));
                    let gaps: Vec<u64> = attempts
                        .windows(2)
                        .map(|w| w[1].at.as_millis() - w[0].at.as_millis())
                        .collect();
                    assert!(
                        gaps.iter().all(|g| *g >= 950),
                        "Retry-After: 1 respected: {gaps:?}"
                    );
                }
                "hang" | "slow" => {
                    assert!(
                        kinds.iter().all(|k| *k == Some(AttemptErrorKind::Timeout)),
                        "{name}: {kinds:?}"
                    )
                }
                "truncated" => assert!(kinds.iter().all(|k| k.is_some()), "{name}: {attempts:?}"),
                _ => {}
            }
        }
    }
    assert_eq!(
        healthy.count(),
        EVENTS,
        "the healthy one got each event once"
    );
    crate::consistent(&bus);
}

/// Reads one HTTP/1.1 request off a raw socket (headers and a Content-Length body); `None`
/// when the connection closes or the request is malformed.
pub fn read_request(r: &mut impl BufRead) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
        at: Instant::now(),
    })
}

/// A receiver that answers a status and then stalls its body: the status
/// is what is recorded (not a timeout, which would count towards the
/// circuit breaker), on both transports, once the request timeout ends
/// the read.
#[test]
fn a_status_whose_body_stalls_is_recorded_as_that_status_on_both_transports() {
    for blocking in [false, true] {
        let url = raw_server(Raw::StatusThenStall);
        let dir = crate::test_dir();
        let bus = builder(dir.path())
            .blocking_senders(blocking)
            .request_timeout(Duration::from_secs(1))
            .retry_schedule(vec![Duration::from_secs(60)])
            .open()
            .unwrap();
        let sub = bus
            .subscribe(NewSubscription::new("s", url).event("e"))
            .unwrap();
        bus.publish_durable("e", &json!({})).unwrap();
        wait_until(LONG, "the first attempt recorded", || {
            deliveries_of(&bus, sub.id)
                .first()
                .is_some_and(|d| bus.outbox().attempts(d.id).unwrap().len() == 1)
        });
        let d = deliveries_of(&bus, sub.id).remove(0);
        let a = bus.outbox().attempts(d.id).unwrap().remove(0);
        assert_eq!(a.status, Some(503), "blocking {blocking}: {a:?}");
        assert!(a.error.is_none(), "blocking {blocking}: {a:?}");
        assert_eq!(a.response_excerpt, b"abc", "blocking {blocking}: {a:?}");
        bus.shutdown(Duration::from_secs(2)).unwrap();
    }
}
