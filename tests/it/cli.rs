//! The `hookbus` CLI (`src/bin/hookbus/`, feature `cli`), run as a
//! process against a store this test prepares.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use hookbus::{DeliveryState, NewSubscription};
use serde_json::{Value, json};

use crate::receiver::{Reply, TestReceiver};
use crate::{LONG, builder, wait_until};

/// The `hookbus` binary (feature `cli`), which cargo builds for this test
/// target.
pub(crate) fn outbox_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hookbus"))
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(outbox_bin())
        .args(crate::cli_store_args(dir))
        .args(args)
        .output()
        .unwrap()
}

pub(crate) fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub(crate) fn ok_json(dir: &Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&ok(dir, &a)).unwrap()
}

/// A store with 3 delivered and 2 dead deliveries over two subscriptions.
fn prepare(dir: &Path, rx: &TestReceiver) -> (String, String) {
    let bus = builder(dir)
        .retry_schedule(vec![Duration::from_millis(5)])
        .open()
        .unwrap();
    let good = bus
        .subscribe(
            NewSubscription::new("Good", rx.url("/ok"))
                .events(["hello"])
                .owner("alice"),
        )
        .unwrap();
    let bad = bus
        .subscribe(NewSubscription::new("Bad", rx.url("/fail")).events(["oops"]))
        .unwrap();
    for i in 0..3 {
        bus.publish("hello", &json!({ "i": i })).unwrap();
    }
    bus.publish("oops", &json!({"n": 1})).unwrap();
    bus.publish("oops", &json!({"n": 2})).unwrap();
    wait_until(LONG, "3 delivered, 2 dead", || {
        let s = bus.outbox().stats().unwrap();
        s.delivered == 3 && s.dead == 2
    });
    bus.shutdown(Duration::from_secs(2)).unwrap();
    (good.id.to_string(), bad.id.to_string())
}

#[test]
fn outbox_cli_reads_repairs_and_purges() {
    let rx = TestReceiver::failing_under("/fail", Reply::status(500).body(b"nope"));
    let dir = crate::test_dir();
    let d = dir.path();
    let (good, bad) = prepare(d, &rx);

    let text = ok(d, &["stats"]);
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().eq(["delivered", "3"])),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.split_whitespace().eq(["dead", "2"])),
        "{text}"
    );
    let j = ok_json(d, &["stats"]);
    assert_eq!(
        (
            j["pending"].as_u64(),
            j["delivered"].as_u64(),
            j["dead"].as_u64()
        ),
        (Some(0), Some(3), Some(2))
    );

    let text = ok(d, &["subscriptions"]);
    assert!(
        text.contains("Good") && text.contains("Bad") && text.contains(&good),
        "{text}"
    );
    let header = text.lines().next().unwrap();
    assert!(header.starts_with("id") && header.contains("url"));
    assert!(!text.contains("secret"));
    let j = ok_json(d, &["subscriptions"]);
    assert_eq!(j.as_array().unwrap().len(), 2);
    assert_eq!(j[0]["id"], good.as_str());

    assert!(ok(d, &["quarantined"]).contains("(none)"));
    assert_eq!(ok_json(d, &["quarantined"]), json!([]));

    // Lists, filters and pages.
    let j = ok_json(d, &["list", "--state", "dead"]);
    let dead = j["deliveries"].as_array().unwrap();
    assert_eq!(dead.len(), 2);
    assert!(
        dead.iter()
            .all(|x| x["state"] == "dead" && x["subscription_id"] == bad.as_str())
    );
    let j = ok_json(d, &["list", "--subscription", &good]);
    assert_eq!(j["deliveries"].as_array().unwrap().len(), 3);
    let page1 = ok_json(d, &["list", "--limit", "2"]);
    assert_eq!(page1["deliveries"].as_array().unwrap().len(), 2);
    let next = page1["next"].as_str().unwrap().to_owned();
    let page2 = ok_json(d, &["list", "--limit", "2", "--after", &next]);
    let page3 = ok_json(
        d,
        &[
            "list",
            "--limit",
            "2",
            "--after",
            page2["next"].as_str().unwrap(),
        ],
    );
    assert_eq!(page3["deliveries"].as_array().unwrap().len(), 1);
    assert!(page3["next"].is_null());
    let all: Vec<String> = [&page1, &page2, &page3]
        .iter()
        .flat_map(|p| {
            p["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["id"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(all.len(), 5);
    let text = ok(d, &["list", "--limit", "2"]);
    assert!(text.contains(&format!("--after {next}")), "{text}");

    // Show: the delivery, its payload and every attempt. (The two dead ones
    // may have died in either order.)
    let id = dead[0]["id"].as_str().unwrap();
    let j = ok_json(d, &["show", id]);
    let n = j["payload"]["n"].as_i64().unwrap();
    assert!(n == 1 || n == 2, "{j}");
    assert_eq!(j["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(j["attempts"][0]["status"], 500);
    assert_eq!(j["delivery"]["id"], id);
    // Issue 10: times are RFC 3339 strings and the response excerpt is text,
    // not arrays of numbers.
    assert_eq!(j["attempts"][0]["response_excerpt"], "nope", "{j}");
    for t in [&j["attempts"][0]["at"], &j["delivery"]["created_at"]] {
        assert!(
            t.as_str().unwrap().parse::<hookbus::Timestamp>().is_ok(),
            "{j}"
        );
    }
    let text = ok(d, &["show", id]);
    assert!(
        text.contains(&format!(r#"{{"n":{n}}}"#)) && text.contains("500") && text.contains("nope"),
        "{text}"
    );

    // Retry one, then all; the store records it (this tool sends nothing).
    assert!(ok(d, &["retry", id]).contains("due again"));
    assert!(ok(d, &["retry", "--all-dead"]).contains("1 dead"));
    let j = ok_json(d, &["stats"]);
    assert_eq!(
        (j["pending"].as_u64(), j["dead"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(
        rx.requests().iter().filter(|r| r.path == "/fail").count(),
        4,
        "the CLI delivered nothing"
    );

    // Purge delivered ones.
    assert!(ok(d, &["purge", "--delivered-before", "1h"]).contains("purged 0"));
    assert!(ok(d, &["purge", "--delivered-before", "0s"]).contains("purged 3"));
    let j = ok_json(d, &["stats"]);
    assert_eq!(j["delivered"].as_u64(), Some(0));
    assert!(
        ok_json(d, &["list", "--state", "delivered"])["deliveries"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // The application delivers what the CLI revived once it runs again.
    rx.respond(|_| Reply::ok());
    let bus = builder(d).open().unwrap();
    wait_until(LONG, "revived ones delivered", || {
        bus.outbox().stats().unwrap().delivered == 2
    });
    assert!(
        bus.outbox()
            .all()
            .all(|x| x.unwrap().state == DeliveryState::Delivered)
    );
}

#[test]
fn outbox_cli_errors_are_clear_and_exit_non_zero() {
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    let bus = builder(dir.path()).open().unwrap();
    bus.subscribe(NewSubscription::new("s", rx.url("/")).events(["a"]))
        .unwrap();
    // Held by this process (sled's file lock; a PostgreSQL store is
    // shared): the CLI must say so.
    if !crate::on_postgres() {
        let out = run(dir.path(), &["stats"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("is in use by another process; stop it, or use the in-process API")
                && err.contains("/webhooks/admin"),
            "{err}"
        );
    }
    drop(bus);

    for (args, needle) in [
        (vec!["show", "nope"], "not a valid id"),
        (
            vec!["show", "0192a6f0c4b27c3e8f1e2d3c4b5a6978"],
            "no delivery",
        ),
        (
            vec!["retry", "0192a6f0c4b27c3e8f1e2d3c4b5a6978"],
            "no delivery with id",
        ),
        (vec!["list", "--state", "lost"], "unknown state"),
        (
            vec!["purge", "--delivered-before", "soon"],
            "not a duration",
        ),
        (vec!["retry"], "required"),
    ] {
        let out = run(dir.path(), &args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    if !crate::on_postgres() {
        let out = run(&dir.path().join("missing"), &["stats"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("no store at"));
    }
}

#[test]
fn outbox_cli_shows_health_replays_tails_and_purges_dead_letters() {
    let rx = TestReceiver::failing_under("/fail", Reply::status(500).body(b"nope"));
    let dir = crate::test_dir();
    let d = dir.path();
    let (good, bad) = prepare(d, &rx);

    // Health: the failing subscription on top.
    let text = ok(d, &["health"]);
    let first_row = text.lines().nth(2).unwrap();
    assert!(
        first_row.starts_with("failing")
            && first_row.contains("Bad")
            && first_row.contains("HTTP 500"),
        "{text}"
    );
    let j = ok_json(d, &["health"]);
    assert_eq!(
        (j[0]["name"].as_str(), j[0]["status"].as_str()),
        (Some("Bad"), Some("failing"))
    );
    assert_eq!(
        (j[1]["name"].as_str(), j[1]["successes"].as_u64()),
        (Some("Good"), Some(3))
    );

    // Tail from an hour ago, bounded: the 5 finished ones, oldest first.
    let out = ok(d, &["tail", "--since", "1h", "--for", "0s", "--json"]);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{out}");
    let states: Vec<&str> = lines.iter().map(|l| l["state"].as_str().unwrap()).collect();
    assert_eq!(states.iter().filter(|s| **s == "dead").count(), 2);
    let finished: Vec<&str> = lines
        .iter()
        .map(|l| l["finished_at"].as_str().unwrap())
        .collect();
    assert!(finished.windows(2).all(|w| w[0] <= w[1]), "{finished:?}");
    // Without --since only what finishes from now on is shown: nothing.
    assert_eq!(ok(d, &["tail", "--for", "0s"]), "");

    // Replay: the good subscription's last hour, and one dead event.
    let out = ok(d, &["replay", "--subscription", &good, "--since", "1h"]);
    assert!(out.starts_with("3 deliveries from"), "{out}");
    let dead = ok_json(d, &["list", "--state", "dead"]);
    let event = dead["deliveries"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let j = ok_json(d, &["replay", "--event", &event]);
    assert_eq!(j["deliveries"].as_array().unwrap().len(), 1, "{j}");
    let j = ok_json(d, &["stats"]);
    assert_eq!(
        (j["pending"].as_u64(), j["dead"].as_u64()),
        (Some(4), Some(2))
    );

    // Purge the dead letters.
    assert!(ok(d, &["purge", "--dead-before", "0s"]).contains("purged 2 dead letters"));
    assert_eq!(ok_json(d, &["stats"])["dead"].as_u64(), Some(0));

    // Clear errors.
    for (args, needle) in [
        (vec!["replay", "--since", "1h"], "required"),
        (
            vec!["replay", "--subscription", bad.as_str(), "--since", "30d"],
            "longer than 14 days",
        ),
        (
            vec!["replay", "--subscription", bad.as_str(), "--since", "soon"],
            "neither an age",
        ),
        (
            vec!["replay", "--event", "0192a6f0c4b27c3e8f1e2d3c4b5a6978"],
            "no stored event",
        ),
    ] {
        let out = run(d, &args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }

    // The application sends what the CLI replayed once it runs.
    let before = rx.count();
    let bus = builder(d).open().unwrap();
    rx.wait_for(before + 4, LONG);
    drop(bus);
}

#[test]
fn outbox_cli_ends_quietly_when_its_reader_goes_away() {
    let rx = TestReceiver::start();
    let dir = crate::test_dir();
    {
        let bus = builder(dir.path()).deliver(false).open().unwrap();
        bus.subscribe(NewSubscription::new("s", rx.url("/")).events(["a"]))
            .unwrap();
        bus.subscribe(
            NewSubscription::new("theirs", rx.url("/t"))
                .events(["a"])
                .tenant("acme"),
        )
        .unwrap();
        for n in 0..50 {
            bus.publish("a", &json!({ "n": n })).unwrap();
        }
        bus.flush().unwrap();
        bus.shutdown(Duration::from_secs(2)).unwrap();
    }
    // The reader of its output is gone before it writes (`outbox … | head`
    // after head has had enough).
    let mut child = Command::new(outbox_bin())
        .args(crate::cli_store_args(dir.path()))
        .args(["--json", "subscriptions"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(err.is_empty(), "nothing to say on a closed pipe: {err}");
    // The table shows whose each subscription is.
    let text = ok(dir.path(), &["subscriptions"]);
    let header = text.lines().next().unwrap();
    assert!(header.contains("tenant"), "{text}");
    let theirs = text.lines().find(|l| l.contains("theirs")).unwrap();
    assert!(theirs.contains("acme"), "{text}");
}
