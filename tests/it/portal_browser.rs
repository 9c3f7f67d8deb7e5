//! The customer portal page (`src/portal/page.html`) in a real browser:
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
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// How long any one wait in the browser may take.
const WAIT: Duration = Duration::from_secs(20);

/// The page, as the crate serves it.
const PAGE: &str = include_str!("../../src/portal/page.html");

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
/// starts, and its fresh profile folder. Dropping it kills the group, also
/// when a test panics.
struct Driver {
    child: Child,
    profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group (its id is chromedriver's): chromedriver and the
        // browser it started.
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(format!("-{}", self.child.id()))
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
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
        let mut driver = Driver { child, profile };
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
        Browser { client, driver }
    }

    /// Ends the session (Chromium quits) before the group is killed.
    async fn close(self) {
        let _ = tokio::time::timeout(WAIT, self.client.clone().close()).await;
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
            if let Ok(v) = self.client.execute(script, vec![]).await {
                if cond(&v) {
                    return v;
                }
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

    /// Saves a PNG of the whole page (the window grown to its height) as
    /// `target/portal-screenshots/<name>.png`, and in `docs/portal/` when
    /// `HOOKBUS_SCREENSHOTS=1`.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let (w, h) = self.client.get_window_size().await.unwrap_or((1100, 900));
        let height = self
            .client
            .execute("return document.documentElement.scrollHeight", vec![])
            .await
            .ok()
            .and_then(|v| v.as_u64())
            .unwrap_or(900)
            .clamp(400, 2400) as u32;
        let _ = self.client.set_window_size(w as u32, height).await;
        let png = self.client.screenshot().await.unwrap();
        let _ = self.client.set_window_size(w as u32, h as u32).await;
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
