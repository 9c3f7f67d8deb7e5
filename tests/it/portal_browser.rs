//! The customer portal page (`src/rest/page.html`) in a real browser:
//! Debian's Chromium, headless, driven over WebDriver through chromedriver
//! (the `fantoccini` crate).
//!
//! Without `/usr/bin/chromium` and `/usr/bin/chromedriver` (or the paths in
//! `HOOKBUS_CHROMIUM` / `HOOKBUS_CHROMEDRIVER`) the tests print a notice
//! and pass, except under CI (`CI` set), where they fail: `.ci/run`
//! installs both (`apt-get install chromium chromium-driver`).
//!
//! Screenshots of the main screens are written to
//! `target/portal-screenshots/` on every run, and also to `docs/portal/`
//! (the README links them) when `HOOKBUS_SCREENSHOTS=1`:
//! `HOOKBUS_SCREENSHOTS=1 cargo test --all-features --test it portal`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hookbus::catalog::EventType;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// How long any one wait in the browser may take.
const WAIT: Duration = Duration::from_secs(20);

/// The page, as the crate serves it.
const PAGE: &str = include_str!("../../src/rest/page.html");

/// Chromium and chromedriver, or `None` (after a notice) when they are not
/// installed; panics under CI instead.
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let path = |var: &str, default: &str| {
        PathBuf::from(std::env::var_os(var).unwrap_or_else(|| default.into()))
    };
    let chromium = path("HOOKBUS_CHROMIUM", "/usr/bin/chromium");
    let driver = path("HOOKBUS_CHROMEDRIVER", "/usr/bin/chromedriver");
    let missing: Vec<_> = [&chromium, &driver]
        .into_iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return Some((chromium, driver));
    }
    let what = format!(
        "the portal's browser test needs {} (apt-get install chromium chromium-driver)",
        missing.join(" and ")
    );
    assert!(
        std::env::var_os("CI").is_none(),
        "{what}; CI must have them"
    );
    eprintln!("NOTICE: skipped: {what}");
    None
}

/// chromedriver, in a process group of its own with the Chromium it
/// starts, and its fresh profile folder. Dropping it (also when a test
/// panics) ends the WebDriver session, which quits Chromium, then kills
/// that one group by its id.
struct Driver {
    child: Child,
    port: u16,
    session: Option<String>,
    profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            end_session(self.port, &session);
        }
        // The group chromedriver leads (`process_group(0)`), by its id:
        // chromedriver's, a child of this process, never 0 or 1 (a signal
        // to "group 1", kill(-1), reaches every process: no `kill`
        // command, whose parsing of `-<pgid>` did exactly that here).
        let pid = rustix::process::Pid::from_child(&self.child);
        if pid.as_raw_nonzero().get() > 1 && matches!(self.child.try_wait(), Ok(None)) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `DELETE /session/<id>` to chromedriver (blocking, 5 s at most): it
/// quits that session's Chromium.
fn end_session(port: u16, session: &str) {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let request = format!(
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if conn.write_all(request.as_bytes()).is_ok() {
        let _ = conn.read_to_end(&mut Vec::new());
    }
}

impl Driver {
    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.profile.path().join("chromedriver.log"))
            .unwrap_or_default();
        let lines: Vec<_> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("chromedriver's log ends with:\n{tail}")
    }
}

/// A WebDriver session in headless Chromium.
struct Browser {
    client: Client,
    driver: Driver,
}

impl Browser {
    async fn start(chromium: &Path, driver: &Path) -> Browser {
        use std::os::unix::process::CommandExt;
        let profile = tempfile::tempdir().unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let log = std::fs::File::create(profile.path().join("chromedriver.log")).unwrap();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let mut driver = Driver {
            child,
            port,
            session: None,
            profile,
        };
        let end = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < end,
                "chromedriver did not listen on {port}"
            );
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!("chromedriver exited: {status}; {}", driver.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let data_dir = driver.profile.path().join("chromium");
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--force-device-scale-factor=1".to_owned(),
            "--window-size=1100,900".to_owned(),
            format!("--user-data-dir={}", data_dir.display()),
        ];
        let caps = json!({
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "pageLoadStrategy": "normal",
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let url = format!("http://127.0.0.1:{port}");
        let client = tokio::time::timeout(
            WAIT,
            ClientBuilder::new(HttpConnector::new())
                .capabilities(caps)
                .connect(&url),
        )
        .await
        .unwrap_or_else(|_| panic!("no WebDriver session in {WAIT:?}; {}", driver.log()))
        .unwrap_or_else(|e| panic!("WebDriver session: {e}; {}", driver.log()));
        driver.session = client.session_id().await.ok().flatten();
        Browser { client, driver }
    }

    /// Ends the session (Chromium quits) before the group is killed.
    async fn close(mut self) {
        if tokio::time::timeout(WAIT, self.client.clone().close())
            .await
            .is_ok_and(|r| r.is_ok())
        {
            self.driver.session = None;
        }
    }

    /// Opens `url` as a new page load (from a blank page, so that a link
    /// differing from the current address only in its fragment loads too).
    async fn open(&self, url: &str) {
        self.client.goto("about:blank").await.unwrap();
        self.client.goto(url).await.unwrap();
    }

    /// The first element matching `css` that is displayed, waiting up to
    /// `WAIT`; panics with what the page shows.
    async fn shown(&self, css: &str) -> fantoccini::elements::Element {
        let end = Instant::now() + WAIT;
        loop {
            if let Ok(all) = self.client.find_all(Locator::Css(css)).await {
                for el in all {
                    if el.is_displayed().await.unwrap_or(false) {
                        return el;
                    }
                }
            }
            if Instant::now() >= end {
                self.fail(&format!("nothing shown matches {css}")).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `cond` holds on the page's state, read by `script`
    /// (JavaScript returning a JSON value).
    async fn until(&self, what: &str, script: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + WAIT;
        loop {
            if let Ok(v) = self.client.execute(script, vec![]).await
                && cond(&v)
            {
                return v;
            }
            if Instant::now() >= end {
                self.fail(&format!("timed out waiting for {what}")).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page's visible text.
    async fn body_text(&self) -> String {
        self.client
            .execute("return document.body.innerText", vec![])
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The whole DOM, as HTML (hidden parts too).
    async fn dom(&self) -> String {
        self.client
            .execute("return document.documentElement.outerHTML", vec![])
            .await
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn click(&self, css: &str) {
        self.shown(css).await.click().await.unwrap();
    }

    /// Types `text` into the input `css` (cleared first).
    async fn fill(&self, css: &str, text: &str) {
        let el = self.shown(css).await;
        el.clear().await.unwrap();
        el.send_keys(text).await.unwrap();
    }

    async fn fail(&self, what: &str) -> ! {
        let _ = self.screenshot("failure").await;
        panic!(
            "{what}\n--- the page shows:\n{}\n--- {}",
            self.body_text().await,
            self.driver.log()
        );
    }

    /// A Chrome DevTools Protocol command, through chromedriver.
    async fn cdp(&self, cmd: &'static str, params: Value) -> Value {
        self.client
            .issue_cmd(Cdp { cmd, params })
            .await
            .unwrap_or_else(|e| panic!("{cmd}: {e}"))
    }

    /// Saves a PNG of the whole page (beyond the window, up to 3000 px
    /// high) as `target/portal-screenshots/<name>.png`, and in
    /// `docs/portal/` when `HOOKBUS_SCREENSHOTS=1`.
    async fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine as _;
        use fantoccini::actions::InputSource as _;
        // The pointer out of the way (no hover style in the picture).
        let park = fantoccini::actions::MouseActions::new("mouse".into()).then(
            fantoccini::actions::PointerAction::MoveTo {
                duration: None,
                x: 0.0,
                y: 0.0,
            },
        );
        let _ = self.client.perform_actions(park).await;
        let size = self.cdp("Page.getLayoutMetrics", json!({})).await;
        let size = &size["cssContentSize"];
        let (w, h) = (size["width"].as_f64(), size["height"].as_f64());
        let shot = self
            .cdp(
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": {"x": 0, "y": 0, "width": w.unwrap_or(1100.0),
                             "height": h.unwrap_or(900.0).min(3000.0), "scale": 1},
                }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("a screenshot"))
            .unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &png).unwrap();
        if std::env::var("HOOKBUS_SCREENSHOTS").as_deref() == Ok("1") && name != "failure" {
            let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/portal");
            std::fs::create_dir_all(&docs).unwrap();
            std::fs::write(docs.join(format!("{name}.png")), &png).unwrap();
        }
        path
    }
}

/// chromedriver's `goog/cdp/execute`: one DevTools command.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!(
            "session/{}/goog/cdp/execute",
            session.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        let body = json!({"cmd": self.cmd, "params": self.params});
        (axum::http::Method::POST, Some(body.to_string()))
    }
}

/// `target/portal-screenshots/` (next to this test binary's profile folder).
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/it-…
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf);
    target.join("portal-screenshots")
}

/// One request the stand-in API saw.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
    content_type: Option<String>,
}

/// The page served at `/app/webhooks/portal` by a tiny server whose API
/// refuses every caller (401), as for a link the server does not take.
#[test]
fn the_portal_page_sends_the_links_token_and_shows_a_refused_link_as_invalid() {
    let Some((chromium, driver)) = browser_tools() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let record = seen.clone();
    let api = move |req: axum::extract::Request| {
        let record = record.clone();
        async move {
            let header = |n: &str| {
                req.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            record.lock().unwrap().push(Seen {
                path: req.uri().to_string(),
                authorization: header("authorization"),
                content_type: header("content-type"),
            });
            (
                axum::http::StatusCode::UNAUTHORIZED,
                [("content-type", "application/problem+json")],
                r#"{"type":"about:blank","title":"Unauthorized","status":401,"detail":"the link has expired","code":"unauthorized"}"#,
            )
        }
    };
    let app = axum::Router::new()
        .route(
            "/app/webhooks/portal",
            axum::routing::get(|| async { axum::response::Html(PAGE) }),
        )
        .fallback(api);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(async move { axum::serve(listener, app).await });

    rt.block_on(async {
        let b = Browser::start(&chromium, &driver).await;
        // A link: the token goes in the Authorization header, to the API
        // next to the page (`/portal` → `/v1`), and leaves the address bar.
        b.open(&format!(
            "{base}/app/webhooks/portal#token=hbp_not.valid&accent=%23ffcc00"
        ))
        .await;
        b.shown("[data-testid=link-invalid]").await;
        let text = b.body_text().await;
        assert!(
            text.contains("This link has expired or is not valid — ask for a new one"),
            "{text}"
        );
        assert!(!text.contains("Endpoints"), "{text}");
        let url = b.client.current_url().await.unwrap();
        assert_eq!(url.fragment(), None, "the token left the address bar");
        assert_eq!(url.path(), "/app/webhooks/portal");
        {
            let seen = seen.lock().unwrap();
            let first = seen.first().expect("the page called the API");
            assert!(
                first.path.starts_with("/app/webhooks/v1/endpoints"),
                "{seen:?}"
            );
            assert_eq!(first.authorization.as_deref(), Some("Bearer hbp_not.valid"));
            assert_eq!(first.content_type.as_deref(), Some("application/json"));
            assert!(seen.iter().all(|s| !s.path.contains("hbp_")), "{seen:?}");
        }
        // The accent from the link, and a dark text on that light accent.
        let accent = b
            .until(
                "the accent",
                "const s = document.documentElement.style; \
                 return [s.getPropertyValue('--hb-accent'), s.getPropertyValue('--hb-on-accent')]",
                |v| v[0].as_str().is_some(),
            )
            .await;
        assert_eq!(accent, json!(["#ffcc00", "#111111"]));

        // `api=` picks another same-origin base path; another origin is
        // not taken (the default stays); no token: the app's cookies, and
        // the invalid screen says to sign in.
        seen.lock().unwrap().clear();
        b.open(&format!(
            "{base}/app/webhooks/portal#api=https://elsewhere.example/x&accent=red"
        ))
        .await;
        b.shown("[data-testid=link-invalid]").await;
        assert!(b.body_text().await.contains("You are not signed in"));
        {
            let seen = seen.lock().unwrap();
            assert!(!seen.is_empty());
            assert!(
                seen.iter()
                    .all(|s| s.path.starts_with("/app/webhooks/v1/") && s.authorization.is_none()),
                "{seen:?}"
            );
        }
        seen.lock().unwrap().clear();
        b.open(&format!(
            "{base}/app/webhooks/portal?x=1#token=hbp_other&api=/custom/v1"
        ))
        .await;
        b.shown("[data-testid=link-invalid]").await;
        {
            let seen = seen.lock().unwrap();
            assert!(seen[0].path.starts_with("/custom/v1/endpoints"), "{seen:?}");
        }
        let url = b.client.current_url().await.unwrap();
        assert_eq!(url.query(), Some("x=1"));
        assert_eq!(url.fragment(), None);
        b.screenshot("invalid-link").await;
        b.close().await;
    });
}

/// The app under test: a bus on a sled folder, hookbus's routes with a
/// portal key, served by axum on 127.0.0.1 (the page at
/// `/webhooks/portal`, the API at `/webhooks/v1`), and a host page
/// `/host?w=<px>#<link fragment>` that embeds the portal in an iframe.
struct App {
    bus: hookbus::Bus,
    key: hookbus::portal::PortalKey,
    base: String,
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl App {
    fn start() -> App {
        let dir = tempfile::tempdir().unwrap();
        let bus = hookbus::Bus::builder()
            .path(dir.path())
            .allow_private_targets(true)
            .retry_schedule(vec![Duration::from_millis(10); 2])
            .request_timeout(Duration::from_secs(5))
            .event_type(
                EventType::new("order.created", "An order was placed.")
                    .example(json!({"order": 42, "total_cents": 4200})),
            )
            .event_type(EventType::new(
                "order.cancelled",
                "An order was cancelled before it shipped.",
            ))
            .open()
            .unwrap();
        let key =
            hookbus::portal::PortalKey::new(b"the portal browser test's key, 32+ bytes".to_vec())
                .unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // Only portal links call: the app's own authentication lets nobody in.
        let routes = hookbus::axum::Routes::new(bus.clone(), |_: &axum::http::request::Parts| None)
            .portal_key(key.clone());
        let app: axum::Router = axum::Router::new().merge(routes.router()).route(
            "/host",
            axum::routing::get(|| async { axum::response::Html(HOST) }),
        );
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        App {
            bus,
            key,
            base,
            rt,
            stop: Some(stop),
            _dir: dir,
        }
    }

    /// A portal link's fragment for `tenant`.
    fn link(&self, tenant: &str) -> String {
        let token = self.key.link(tenant, Duration::from_secs(600)).unwrap();
        format!("token={token}")
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.bus.shutdown(Duration::from_secs(2));
    }
}

/// An app's page that embeds the portal, as the README shows: an iframe
/// as wide as `?w=` (a phone: 375), given the link's fragment.
const HOST: &str = r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Host</title></head>
<body style="margin:0"><script>
const w = Number(new URLSearchParams(location.search).get("w")) || 800;
const f = document.createElement("iframe");
f.title = "Webhooks"; f.id = "portal";
f.style.cssText = "border:0;display:block;height:800px;width:" + w + "px";
f.src = "/webhooks/portal" + location.hash;
history.replaceState(null, "", location.pathname + location.search);
document.body.append(f);
</script></body></html>"#;

/// The whole flow of one tenant in the browser: a link opens the page (the
/// token leaves the address bar), an endpoint at a real receiver is added
/// from the catalog's checkboxes, its secret is shown once (and signs what
/// the receiver gets), a test event with a catalog example arrives, an
/// app's event shows in the log with its attempt, resend sends it again,
/// the catalog shows names, descriptions and examples, a 375 px iframe has
/// no horizontal scroll, rotate shows a new secret once, delete empties the
/// list; another tenant's link shows none of it; an expired and a tampered
/// link show the invalid-link screen.
#[test]
fn a_tenant_manages_its_webhooks_in_the_portal_page() {
    let Some((chromium, driver)) = browser_tools() else {
        return;
    };
    let app = App::start();
    let receiver = crate::receiver::TestReceiver::start();
    let acme = app.link("acme");
    let globex = app.link("globex");
    let base = app.base.clone();
    app.rt.block_on(async {
        let b = Browser::start(&chromium, &driver).await;

        // The link opens the (empty) endpoints screen; the token leaves the
        // address bar.
        b.open(&format!("{base}/webhooks/portal#{acme}")).await;
        b.shown("[data-testid=endpoints-empty]").await;
        let url = b.client.current_url().await.unwrap();
        assert_eq!(url.fragment(), None);

        // Add an endpoint at the receiver, for an event of the catalog.
        b.click("[data-testid=add-endpoint]").await;
        b.fill("[data-testid=field-name]", "orders").await;
        b.fill("[data-testid=field-url]", &receiver.url("/hooks/orders"))
            .await;
        // The catalog's types as checkboxes.
        b.click("[data-testid=event-checkbox][value='order.created']")
            .await;
        b.click("[data-testid=save-endpoint]").await;
        // The secret, once.
        let secret = b
            .shown("[data-testid=secret-value]")
            .await
            .text()
            .await
            .unwrap();
        assert!(secret.starts_with("whsec_"), "{secret}");
        assert!(
            b.body_text().await.contains("you will not see it again"),
            "{}",
            b.body_text().await
        );
        b.shown("[data-testid=endpoint][data-name=orders]").await;
        b.screenshot("create-secret").await;
        b.click("[data-testid=dismiss-secret]").await;
        b.until("the secret to go", "return document.documentElement.outerHTML", |v| {
            !v.as_str().unwrap_or("").contains(&secret)
        })
        .await;

        // The list: name, URL, events, enabled, health.
        let card = b.shown("[data-testid=endpoint][data-name=orders]").await;
        let text = card.text().await.unwrap();
        assert!(text.contains(&receiver.url("/hooks/orders")), "{text}");
        assert!(text.contains("order.created"), "{text}");
        assert!(text.contains("Enabled"), "{text}");
        b.until(
            "the health summary",
            "return document.querySelector('[data-testid=endpoint-health]').textContent",
            |v| !v.as_str().unwrap_or("Checking").starts_with("Checking"),
        )
        .await;

        // A test event, the catalog example of order.created: the receiver
        // gets it, signed with the secret shown, and the page shows the
        // outcome.
        b.click("[data-testid=endpoint][data-name=orders] [data-testid=endpoint-test]")
            .await;
        b.shown("[data-testid=test-type]")
            .await
            .select_by_value("order.created")
            .await
            .unwrap();
        b.click("[data-testid=test-send]").await;
        let got = receiver.wait_for(1, WAIT);
        assert_eq!(got[0].path, "/hooks/orders");
        assert_eq!(got[0].json(), json!({"order": 42, "total_cents": 4200}));
        let outcome = b.shown("[data-testid=test-outcome]").await;
        let outcome = outcome.text().await.unwrap();
        assert!(outcome.contains("Succeeded"), "{outcome}");
        assert!(outcome.contains("HTTP 204"), "{outcome}");
        hookbus::signing::verify_standard(
            &secret,
            got[0].header_pairs(),
            &got[0].body,
            hookbus::signing::DEFAULT_TOLERANCE,
        )
        .expect("signed with the secret the page showed");

        // An event of the app's: delivered, and in the log with its attempt.
        app.bus
            .publish_durable_to("acme", "order.created", &json!({"order": 7}))
            .unwrap();
        let got = receiver.wait_for(2, WAIT);
        assert_eq!(got[1].json(), json!({"order": 7}));
        b.click("[data-testid=tab-deliveries]").await;
        let end = Instant::now() + WAIT;
        let row = loop {
            let rows = b
                .client
                .find_all(Locator::Css(
                    "[data-testid=delivery][data-state=delivered]",
                ))
                .await
                .unwrap();
            let mut found = None;
            for r in rows {
                if r.text().await.unwrap().contains("order.created") {
                    found = Some(r);
                    break;
                }
            }
            if let Some(r) = found {
                break r;
            }
            if Instant::now() >= end {
                b.fail("no delivered order.created in the log").await;
            }
            b.click("[data-testid=apply-filters]").await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        row.find(Locator::Css("[data-testid=delivery-open]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let detail = b.shown("[data-testid=delivery-detail]").await;
        let attempt = b.shown("[data-testid=attempt]").await.text().await.unwrap();
        assert!(attempt.contains("HTTP 204"), "{attempt}");
        assert!(attempt.contains("ms"), "{attempt}");
        let payload = b
            .shown("[data-testid=delivery-payload]")
            .await
            .text()
            .await
            .unwrap();
        // The newest delivered order.created: the app's order, not the
        // test event's example (when both fall in one millisecond, either).
        let shown: Value = serde_json::from_str(&payload).expect("the payload as JSON");
        assert!(
            shown == json!({"order": 7}) || shown == got[0].json(),
            "{payload}"
        );
        let first_id = detail.attr("data-delivery-id").await.unwrap().unwrap();
        b.screenshot("delivery").await;

        // Resend: the receiver gets the event again.
        b.click("[data-testid=resend]").await;
        let got = receiver.wait_for(3, WAIT);
        assert_eq!(got[2].json(), shown, "the event shown, again");
        b.until(
            "the new delivery's detail",
            "const d = document.querySelector('[data-testid=delivery-detail]'); return d && d.dataset.deliveryId",
            |v| v.as_str().is_some_and(|id| id != first_id),
        )
        .await;

        // The list again, with the endpoint's health now.
        b.click("[data-testid=tab-endpoints]").await;
        b.until(
            "the health summary with the deliveries",
            "const e = document.querySelector('[data-testid=endpoint-health]'); return e && e.textContent",
            |v| v.as_str().is_some_and(|t| t.contains("attempts succeeded")),
        )
        .await;
        b.screenshot("endpoints").await;

        // The catalog: names, descriptions, examples.
        b.click("[data-testid=tab-catalog]").await;
        let ty = b
            .shown("[data-testid=event-type][data-name='order.created']")
            .await
            .text()
            .await
            .unwrap();
        assert!(ty.contains("An order was placed."), "{ty}");
        assert!(ty.contains("\"total_cents\": 4200"), "{ty}");
        let other = b
            .shown("[data-testid=event-type][data-name='order.cancelled']")
            .await
            .text()
            .await
            .unwrap();
        assert!(other.contains("cancelled before it shipped"), "{other}");
        b.screenshot("catalog").await;

        // On a phone, in an iframe of the app's page: no horizontal scroll.
        b.open(&format!("{base}/host?w=375#{acme}")).await;
        b.client.enter_frame(0).await.unwrap();
        b.shown("[data-testid=endpoint][data-name=orders]").await;
        for tab in ["endpoints", "deliveries", "catalog"] {
            b.click(&format!("[data-testid=tab-{tab}]")).await;
            let widths = b
                .until(
                    "the layout",
                    "const e = document.documentElement; return [e.scrollWidth, e.clientWidth]",
                    |v| v[1].as_u64().is_some_and(|w| w > 0),
                )
                .await;
            assert!(
                widths[0].as_u64() <= widths[1].as_u64(),
                "{tab}: wider than the phone: {widths}"
            );
        }
        b.client.enter_parent_frame().await.unwrap();

        // Rotate the secret (after a confirmation): a new one, shown once;
        // then delete the endpoint (after a confirmation too).
        b.open(&format!("{base}/webhooks/portal#{acme}")).await;
        b.click("[data-testid=endpoint][data-name=orders] [data-testid=endpoint-rotate]")
            .await;
        b.click("[data-testid=confirm-yes]").await;
        let rotated = b
            .shown("[data-testid=secret-value]")
            .await
            .text()
            .await
            .unwrap();
        assert!(rotated.starts_with("whsec_") && rotated != secret, "{rotated}");
        b.click("[data-testid=dismiss-secret]").await;
        b.until("the new secret to go", "return document.documentElement.outerHTML", |v| {
            !v.as_str().unwrap_or("").contains(&rotated)
        })
        .await;
        b.click("[data-testid=endpoint][data-name=orders] [data-testid=endpoint-delete]")
            .await;
        b.click("[data-testid=confirm-yes]").await;
        b.shown("[data-testid=endpoints-empty]").await;
        assert!(app.bus.subscriptions().list().unwrap().is_empty());

        // Another tenant's link: none of it.
        b.open(&format!("{base}/webhooks/portal#{globex}")).await;
        b.shown("[data-testid=endpoints-empty]").await;
        b.click("[data-testid=tab-deliveries]").await;
        b.shown("[data-testid=deliveries-empty]").await;
        let dom = b.dom().await;
        assert!(!dom.contains("orders"), "another tenant's endpoint shows");
        assert!(!dom.contains(&receiver.url("")), "another tenant's URL shows");

        // An expired link and a tampered one: refused.
        let expired = app.key.link("acme", Duration::from_secs(1)).unwrap();
        tokio::time::sleep(Duration::from_millis(2100)).await;
        for (what, token) in [("expired", expired), ("tampered", tampered(&acme))] {
            b.open(&format!("{base}/webhooks/portal#token={token}")).await;
            b.shown("[data-testid=link-invalid]").await;
            let text = b.body_text().await;
            assert!(
                text.contains("This link has expired or is not valid"),
                "{what}: {text}"
            );
            assert!(!text.contains("orders"), "{what}: {text}");
        }
        b.close().await;
    });
    assert_eq!(receiver.count(), 3);
}

/// The link's token with one character of its signature changed.
fn tampered(fragment: &str) -> String {
    let token = fragment.strip_prefix("token=").unwrap();
    let mut chars: Vec<char> = token.chars().collect();
    let i = chars.len() - 3;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}
