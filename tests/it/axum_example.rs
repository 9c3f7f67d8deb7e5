//! `examples/axum_server.rs`, run as a process: its documented requests
//! (the curl lines in its docs, sent here over a plain TCP connection to
//! 127.0.0.1, with a local receiver instead of example.com), the
//! operators' routes, a signed delivery arriving, and a graceful stop on
//! SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::receiver::TestReceiver;
use crate::{LONG, wait_until};

/// One HTTP/1.1 request; the status and the body.
pub(crate) fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let (status, _, body) = http_head(addr, method, path, headers, body);
    (status, body)
}

/// One request; the status, the response head (lower-cased) and body.
pub(crate) fn http_head(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

#[test]
fn the_axum_example_serves_its_documented_requests_and_stops_on_sigterm() {
    if crate::sled_only("the example opens a sled store of its own") {
        return;
    }
    let dir = crate::test_dir();
    let store = dir.path().join("store");
    serves_and_stops(&[store.to_str().unwrap()], &[]);
}

/// The same, with `--postgres` and `HOOKBUS_SCHEMA` (run once, in the
/// sled pass: it names its store itself).
#[cfg(feature = "postgres")]
#[test]
fn the_axum_example_runs_on_postgres() {
    if crate::sled_only("the example is given its PostgreSQL store here") {
        return;
    }
    let Some(schema) = crate::postgres::Schema::new("axum_example") else {
        return;
    };
    let url = crate::postgres::url();
    serves_and_stops(&["--postgres", &url], &[("HOOKBUS_SCHEMA", &schema.0)]);
}

/// Runs the example with `args` and `env`, sends its documented requests,
/// checks the delivery, and stops it with SIGTERM.
fn serves_and_stops(args: &[&str], env: &[(&str, &str)]) {
    let rx = TestReceiver::start();
    let mut child = Command::new(crate::example_bin("axum_server"))
        .args(args)
        .arg("--allow-private")
        .envs(env.iter().copied())
        .env("HOOKBUS_EXAMPLE_ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();

    let json = ("content-type", "application/json");
    let alice = [json, ("x-user-id", "alice"), ("x-tenant-id", "acme")];
    let sub = format!(
        r#"{{"name":"mine","events":["order.created"],"config":{{"url":"{}","secret":"shh"}}}}"#,
        rx.url("/hook")
    );
    let (status, body) = http(&addr, "POST", "/webhooks/subscriptions", &alice, &sub);
    assert_eq!(status, 201, "{body}");
    let (status, body) = http(
        &addr,
        "POST",
        "/orders",
        &[json, ("x-tenant-id", "acme")],
        r#"{"id":1}"#,
    );
    assert_eq!(status, 202, "{body}");
    let (status, body) = http(&addr, "GET", "/webhooks/subscriptions", &alice[1..], "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"mine\""), "{body}");
    let ops = [("x-user-id", "ops"), ("x-roles", "admin")];
    let (status, body) = http(&addr, "GET", "/webhooks/admin/health", &ops, "");
    assert_eq!(status, 200, "the operators' routes are mounted: {body}");
    // Another tenant's order reaches nobody; acme's arrives, signed.
    let (status, _) = http(
        &addr,
        "POST",
        "/orders",
        &[json, ("x-tenant-id", "other")],
        "{}",
    );
    assert_eq!(status, 202);
    wait_until(LONG, "the order delivered", || !rx.requests().is_empty());
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].header("x-webhook-event"), Some("order.created"));
    assert!(
        reqs[0].signed_with(b"shh", "x-hub-signature-256"),
        "{:?}",
        reqs[0]
    );

    // SIGTERM: the server drains, the bus shuts down, the process ends well.
    // (The shell's own `kill`: no procps needed.)
    let killed = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status()
        .unwrap();
    assert!(killed.success());
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "the example did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status:?}");
    assert!(rest.contains("stopped"), "the bus's shutdown ran: {rest:?}");
}
