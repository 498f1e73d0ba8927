//! The analyst console end to end, in a real headless browser: Debian's
//! `chromium` driven by `chromedriver` over the WebDriver protocol (a small
//! client below, on loopback). `distill-guard demo --traffic` runs as a
//! child process with an admin token; the browser logs in with it, sees
//! the hydra appear as a cluster, opens its graph, blocks it, and sees the
//! next request of a member refused, in the live decisions and in the
//! audit tail; then downloads the indicator export and opens the member's
//! own page. Screenshots are kept in `target/tmp/console/`.
//!
//! The browser is required: without `chromium` and `chromedriver` this test
//! fails (`.ci/run` installs them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde_json::{json, Value};
use support::{client, TestClient};

const TOKEN: &str = "console-test-token-0123456789abcdef";
const SECRET: &str = "console-test-secret-0123456789abcdef";
/// A hydra account of the small scenario (`sim-{seed}-{population}-{n}`).
const HYDRA_KEY: &str = "sim-7-hydra-0";
/// The WebDriver protocol's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A child process killed (by its PID) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawn `cmd` with its stdout read line by line into the returned log.
fn spawn_logged(cmd: &mut Command) -> (Killed, Arc<Mutex<Vec<String>>>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let log = Arc::new(Mutex::new(Vec::new()));
    for out in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let mut log = log.lock().unwrap();
                if log.len() < 100_000 {
                    log.push(line);
                }
            }
        });
    }
    (Killed(child), log)
}

/// Poll `f` every 200 ms until it returns `Some`, at most `limit`.
async fn until<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The first word after `prefix` on a line of `log`.
fn logged(log: &Mutex<Vec<String>>, prefix: &str) -> Option<String> {
    log.lock().unwrap().iter().find_map(|l| {
        let rest = l.trim_start().strip_prefix(prefix)?;
        rest.split_whitespace().next().map(String::from)
    })
}

async fn http(
    client: &TestClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Bytes::from(b.to_string())
        }
        None => Bytes::new(),
    };
    let resp = tokio::time::timeout(
        Duration::from_secs(60),
        client.request(req.body(Full::new(body)).unwrap()),
    )
    .await
    .unwrap_or_else(|_| panic!("{method} {url}: no answer in 60 s"))
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, v)
}

/// A WebDriver session (W3C protocol) on a local chromedriver.
struct Browser {
    client: TestClient,
    base: String,
}

impl Browser {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let (status, v) = http(&self.client, method, &url, &[], body.as_ref()).await;
        assert_eq!(status, 200, "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).await;
    }

    async fn url(&self) -> String {
        self.call("GET", "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Run `script` (a function body; `arguments` are `args`) in the page.
    async fn js(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// The element `css` selects, if one does now.
    async fn find(&self, css: &str) -> Option<String> {
        let url = format!("{}/element", self.base);
        let body = json!({ "using": "css selector", "value": css });
        let (status, v) = http(&self.client, "POST", &url, &[], Some(&body)).await;
        (status == 200).then(|| v["value"][ELEMENT].as_str().unwrap().to_string())
    }

    /// Wait for `css` to select a displayed element, then click it (a real
    /// mouse click at its place, as a user's). The page redraws its tables
    /// as data arrive: an element that went stale is looked up again.
    async fn click(&self, css: &str) {
        until(
            &format!("{css} to be clicked"),
            Duration::from_secs(30),
            || async move {
                let id = self.find(css).await?;
                let (status, shown) = http(
                    &self.client,
                    "GET",
                    &format!("{}/element/{id}/displayed", self.base),
                    &[],
                    None,
                )
                .await;
                if status != 200 || shown["value"] != true {
                    return None;
                }
                let (status, _) = http(
                    &self.client,
                    "POST",
                    &format!("{}/element/{id}/click", self.base),
                    &[],
                    Some(&json!({})),
                )
                .await;
                (status == 200).then_some(())
            },
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await.unwrap_or_else(|| panic!("no {css}"));
        self.call("POST", &format!("/element/{id}/clear"), Some(json!({})))
            .await;
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn screenshot(&self, path: &Path) {
        let b64 = self.call("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
        println!("screenshot: {}", path.display());
    }
}

/// Ends a WebDriver session when dropped, so that chromedriver closes the
/// browser it started even when the test fails half way (a plain blocking
/// `DELETE /session/{id}` on loopback, with timeouts).
struct SessionGuard {
    driver_port: u16,
    id: String,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        use std::io::{Read as _, Write as _};
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.driver_port));
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
        let _ = write!(
            s,
            "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            self.id
        );
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
    }
}

/// The browser binaries: `DG_CHROMIUM` / `DG_CHROMEDRIVER`, or Debian's.
fn browser_binaries() -> (PathBuf, PathBuf) {
    let pick = |var: &str, default: &str| {
        std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from)
    };
    let chromium = pick("DG_CHROMIUM", "/usr/bin/chromium");
    let driver = pick("DG_CHROMEDRIVER", "/usr/bin/chromedriver");
    for p in [&chromium, &driver] {
        assert!(
            p.exists(),
            "{} is missing: this test needs a real browser \
             (apt-get install chromium chromium-driver; .ci/run installs them)",
            p.display()
        );
    }
    (chromium, driver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyst_blocks_a_hydra_from_the_console() {
    let (chromium, driver_bin) = browser_binaries();
    let artefacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    let _ = std::fs::remove_dir_all(&artefacts);
    std::fs::create_dir_all(&artefacts).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let downloads = scratch.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let http_client = client();

    // The demo: the small scenario through the real proxy, slowly enough
    // (20x: six real minutes) that the hydra is still sending when the
    // browser gets to it. The test stops it when done.
    let (_demo, demo_log) = spawn_logged(
        Command::new(env!("CARGO_BIN_EXE_distill-guard"))
            .args(["demo", "--traffic", "--speed", "20"])
            .env("DISTILL_GUARD_ADMIN_TOKEN", TOKEN)
            .env("DISTILL_GUARD_HASH_SECRET", SECRET)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG"),
    );
    let (console_url, proxy_url) = until("the demo's addresses", Duration::from_secs(60), || {
        let log = demo_log.clone();
        async move { Some((logged(&log, "console:")?, logged(&log, "proxy:")?)) }
    })
    .await;
    let admin = console_url.trim_end_matches("/console").to_string();
    let proxy_addr = proxy_url.trim_start_matches("https://").to_string();
    let hydra_account =
        distill_guard::identity::KeyHasher::new(SECRET.as_bytes()).account_id(HYDRA_KEY.as_bytes());
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];

    // The browser.
    let (_driver, driver_log) =
        spawn_logged(Command::new(&driver_bin).arg("--port=0").arg(format!(
            "--log-path={}",
            artefacts.join("chromedriver.log").display()
        )));
    let port = until("chromedriver to listen", Duration::from_secs(30), || {
        let log = driver_log.clone();
        async move {
            let log = log.lock().unwrap();
            log.iter()
                .find_map(|l| l.strip_prefix("ChromeDriver was started successfully on port "))
                .and_then(|p| p.trim_end_matches('.').parse::<u16>().ok())
        }
    })
    .await;
    let driver = format!("http://127.0.0.1:{port}");
    let profile = scratch.path().join("profile");
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1440,2300", "--hide-scrollbars", "--force-device-scale-factor=1",
                format!("--user-data-dir={}", profile.display()),
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--metrics-recording-only", "--lang=en-GB",
            ],
            "prefs": {
                "download.default_directory": downloads,
                "download.prompt_for_download": false,
            },
        },
    }}});
    let (status, session) = http(
        &http_client,
        "POST",
        &format!("{driver}/session"),
        &[],
        Some(&caps),
    )
    .await;
    assert_eq!(status, 200, "new session: {session}");
    let id = session["value"]["sessionId"].as_str().unwrap().to_string();
    // Dropped before chromedriver is killed (locals drop in reverse order).
    let _session = SessionGuard {
        driver_port: port,
        id: id.clone(),
    };
    let browser = Browser {
        client: http_client.clone(),
        base: format!("{driver}/session/{id}"),
    };
    // References, so that each polling closure's future can copy them.
    let (b, http_client, auth) = (&browser, &http_client, &auth[..]);
    let admin = admin.as_str();
    // Downloads go to the scratch directory, without asking.
    b.call(
        "POST",
        "/goog/cdp/execute",
        Some(json!({"cmd": "Browser.setDownloadBehavior",
                    "params": {"behavior": "allow", "downloadPath": downloads}})),
    )
    .await;

    // Log in: a wrong token is refused, the right one opens the console.
    b.goto(&console_url).await;
    until("the login form", Duration::from_secs(30), || async move {
        b.js("return !document.getElementById('login').hidden", json!([]))
            .await
            .as_bool()
            .filter(|x| *x)
    })
    .await;
    b.type_into("#token", "not-the-token-0123456789").await;
    b.click("#login-button").await;
    until(
        "the wrong token to be refused",
        Duration::from_secs(30),
        || async move {
            let t = b
                .js(
                    "return document.getElementById('login-error').textContent",
                    json!([]),
                )
                .await;
            t.as_str().filter(|t| t.contains("Wrong token")).map(|_| ())
        },
    )
    .await;
    b.type_into("#token", TOKEN).await;
    b.click("#login-button").await;
    until(
        "the console to open",
        Duration::from_secs(30),
        || async move {
            b.js("return !document.getElementById('app').hidden", json!([]))
                .await
                .as_bool()
                .filter(|x| *x)
        },
    )
    .await;
    // The token is in the tab's session storage, not in the URL.
    let stored = b
        .js(
            "return sessionStorage.getItem('distill-guard-admin-token')",
            json!([]),
        )
        .await;
    assert_eq!(stored, TOKEN);
    assert!(!b.url().await.contains(TOKEN));

    // The hydra appears as a cluster: its account's cluster (asked of the
    // admin API), once most of the hydra is in it, is a row of the top
    // clusters; the analyst opens it. (Pieces of the hydra linked apart
    // merge into it as it grows: the row is looked for until it is there.)
    let cluster = until(
        "the hydra's cluster on the page",
        Duration::from_secs(120),
        || async move {
            let (status, account) = http(
                http_client,
                "GET",
                &format!("{admin}/admin/accounts/{hydra_account}"),
                auth,
                None,
            )
            .await;
            if status != 200 || account["cluster"]["members"].as_u64()? < 150 {
                return None;
            }
            let cluster = account["cluster"]["id"].as_str()?.to_string();
            b.find(&format!("#clusters tbody tr[data-id='{cluster}']"))
                .await?;
            Some(cluster)
        },
    )
    .await;
    println!("hydra account {hydra_account} is in cluster {cluster}");
    let cluster = cluster.as_str();
    b.screenshot(&artefacts.join("overview.png")).await;
    b.click(&format!("#clusters tbody tr[data-id='{cluster}']"))
        .await;

    // Its page: the graph of linked accounts, edges labelled by link kind
    // and strength; the score and signals over time.
    let drawn = until(
        "the cluster's graph and history",
        Duration::from_secs(90),
        || async move {
            let v = b
                .js(
                    "const q = (s) => document.querySelectorAll(s);
                 const edges = [...q('#graph g.edge')];
                 return {
                   nodes: q('#graph g.node').length,
                   edges: edges.length,
                   kinds: [...new Set(edges.map(e => e.dataset.kinds + ' ' + e.dataset.strength))],
                   labels: [...q('#graph .edge-label')].map(t => t.textContent),
                   legend: q('#graph-legend .edge-kind').length,
                   history: q('#history path').length,
                   signals: q('#signals tbody tr').length,
                   title: document.getElementById('detail-title').textContent,
                 };",
                    json!([]),
                )
                .await;
            (v["nodes"].as_u64()? >= 10
                && v["edges"].as_u64()? >= 9
                && v["history"].as_u64()? >= 2
                && v["signals"].as_u64()? >= 3)
                .then_some(v)
        },
    )
    .await;
    println!(
        "drawn: {} accounts, {} links of kinds {}",
        drawn["nodes"], drawn["edges"], drawn["kinds"]
    );
    assert_eq!(drawn["title"], format!("cluster {cluster}"));
    let labels: Vec<&str> = drawn["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(labels.len() as u64, drawn["edges"].as_u64().unwrap());
    for l in &labels {
        // "ja4+ip_prefix+prompt · strong": the kinds, then the strength.
        let (kinds, strength) = l.split_once(" · ").unwrap();
        assert!(["weak", "medium", "strong"].contains(&strength), "{l}");
        assert!(kinds.split('+').all(|k| [
            "ja4",
            "http",
            "h2",
            "ip_prefix",
            "asn",
            "prompt",
            "shape"
        ]
        .contains(&k)));
    }
    assert!(drawn["legend"].as_u64().unwrap() >= 1);
    b.screenshot(&artefacts.join("cluster.png")).await;

    // Block it from the page (with its confirmation step).
    b.click("#actions button[data-action='block']").await;
    b.click("#confirm button.confirm").await;
    until(
        "the block to be applied",
        Duration::from_secs(30),
        || async move {
            let v = b
                .js(
                    "return [document.getElementById('detail').dataset.manual,
                         document.getElementById('action-result').textContent]",
                    json!([]),
                )
                .await;
            (v[0] == "block" && v[1].as_str()?.starts_with("block: done")).then_some(())
        },
    )
    .await;
    let (_, c) = http(
        http_client,
        "GET",
        &format!("{admin}/admin/clusters/{cluster}"),
        auth,
        None,
    )
    .await;
    assert_eq!(c["manual"], "block", "{c}");

    // The next request of a member is refused (curl: TLS after a PROXY
    // header, as the demo's clients send), as "this cluster is blocked".
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hello"}]}"#;
    let request_id = "console-test-after-block";
    let out = Command::new("curl")
        .args([
            "-sk",
            "--haproxy-protocol",
            "--max-time",
            "30",
            "-w",
            "\n%{http_code}",
        ])
        .arg(format!("https://{proxy_addr}/v1/messages"))
        .args(["-H", &format!("x-api-key: {HYDRA_KEY}")])
        .args(["-H", "anthropic-version: 2023-06-01"])
        .args(["-H", "content-type: application/json"])
        .args(["-H", &format!("x-request-id: {request_id}")])
        .args(["-d", body])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (answer, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "403", "{text}");
    assert!(answer.contains("this cluster is blocked"), "{answer}");

    // The page shows it among the live decisions, with its reason.
    let live = until("the refusal in the live decisions", Duration::from_secs(30), || async move {
        let v = b
            .js(
                "const li = document.querySelector(`#live li[data-request-id='${arguments[0]}']`);
                 return li && [li.dataset.decision, li.dataset.cluster, li.querySelector('.why').textContent];",
                json!([request_id]),
            )
            .await;
        (!v.is_null()).then_some(v)
    })
    .await;
    // Pause the feed, so that the refusal stays in view (the demo's own
    // hydra requests are being refused too, and the feed keeps 200).
    b.click("#pause").await;
    assert_eq!(live[0], "block");
    assert_eq!(live[1], cluster);
    assert!(
        live[2].as_str().unwrap().contains("manual block (cluster)"),
        "{live}"
    );
    // The audit log (its tail, shown on the cluster's page) has the admin's
    // decision, with who made it.
    until("the manual decision in the admin actions", Duration::from_secs(30), || async move {
        let rows = b
            .js(
                "return [...document.querySelectorAll('#admin-actions tbody tr')].map(r => r.textContent)",
                json!([]),
            )
            .await;
        rows.as_array()?
            .iter()
            .any(|r| {
                let r = r.as_str().unwrap_or("");
                r.contains("block") && r.contains(cluster) && r.contains("admin@127.0.0.1")
            })
            .then_some(())
    })
    .await;
    b.js("window.scrollTo(0, 0)", json!([])).await;
    b.screenshot(&artefacts.join("blocked.png")).await;

    // The indicator export downloads, and names the blocked cluster.
    b.click("#export").await;
    let downloads = downloads.as_path();
    let export = until(
        "the indicator export download",
        Duration::from_secs(30),
        || async move {
            let file = std::fs::read_dir(downloads)
                .ok()?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "json"))?;
            serde_json::from_slice::<Value>(&std::fs::read(file).ok()?).ok()
        },
    )
    .await;
    assert_eq!(export["format"], "distill-guard-indicators/1");
    assert!(
        export["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["cluster"] == cluster),
        "{export}"
    );

    // The member's own page, from its link in the live decisions: its
    // cluster, its signals now and over time, its refusal with the reason.
    b.click(&format!(
        "#live li[data-request-id='{request_id}'] a[data-kind='account']"
    ))
    .await;
    let account_title = format!("account {hydra_account}");
    let account_title = &account_title;
    let account = until(
        "the account's page",
        Duration::from_secs(60),
        || async move {
            let v = b
                .js(
                    "const q = (s) => document.querySelectorAll(s);
                 return {
                   title: document.getElementById('detail-title').textContent,
                   facts: document.getElementById('detail-facts').textContent,
                   signals: q('#signals tbody tr').length,
                   history: q('#history path').length,
                   recent: [...q('#recent tbody tr')].map(r => r.textContent),
                 };",
                    json!([]),
                )
                .await;
            // The page has switched from the cluster's (whose recent
            // decisions show the same block) to the account's. The score's
            // line is drawn (two samples or more); an account of the hydra
            // scores little on its own, so its signals' contributions may
            // all be 0 and have no line.
            (v["title"].as_str()? == account_title
                && v["signals"].as_u64()? >= 3
                && v["history"].as_u64()? >= 1
                && v["recent"].as_array()?.iter().any(|r| {
                    r.as_str()
                        .is_some_and(|r| r.contains("manual block (cluster)"))
                }))
            .then_some(v)
        },
    )
    .await;
    assert_eq!(account["title"], format!("account {hydra_account}"));
    assert!(
        account["facts"].as_str().unwrap().contains(cluster),
        "{account}"
    );
    b.screenshot(&artefacts.join("account.png")).await;

    // Logging out forgets the token.
    b.click("#logout").await;
    let stored = b
        .js(
            "return sessionStorage.getItem('distill-guard-admin-token')",
            json!([]),
        )
        .await;
    assert!(stored.is_null());
}

/// The JSON the console reads, over real sockets, without a browser: the
/// page and its assets need no token and load nothing from elsewhere; the
/// data needs it; a cluster's graph has its members and labelled links; a
/// block shows in the decisions, the audit log and the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_api() {
    let mock =
        distill_guard::mock::start("127.0.0.1:0".parse().unwrap(), Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let extra = format!(
        "token = \"{TOKEN}\"\n\n[audit]\npath = \"{}\"\n\n[identity]\nhash_secret = \"{SECRET}\"\n",
        audit.display()
    );
    let cfg = support::config_from(
        &support::basic_config(&format!("http://{}", mock.addr()), &extra),
        dir.path(),
    );
    let proxy = distill_guard::server::start(cfg).unwrap();
    let admin = format!("http://{}", proxy.admin_addr().unwrap());
    let url = format!("http://{}/v1/messages", proxy.local_addrs()[0]);
    let c = client();
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];

    // The page and its two assets: no token, no data, nothing external.
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let req = http::Request::get(format!("{admin}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = c.request(req).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert!(h["content-type"].to_str().unwrap().starts_with(kind));
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
        assert_eq!(h["x-content-type-options"], "nosniff");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        // The only URL is the SVG namespace (a name, never fetched).
        let urls: Vec<&str> = text
            .match_indices("http")
            .map(|(i, _)| &text[i..(i + 30).min(text.len())])
            .filter(|u| u.starts_with("http:") || u.starts_with("https:"))
            .filter(|u| !u.starts_with("http://www.w3.org/2000/svg"))
            .collect();
        assert!(urls.is_empty(), "{path} refers to {urls:?}");
        assert!(
            !text.contains("@import") && !text.contains("url("),
            "{path}"
        );
    }
    for path in [
        "/admin/summary",
        "/admin/clusters",
        "/admin/decisions",
        "/admin/audit",
    ] {
        let (status, _) = http(&c, "GET", &format!("{admin}{path}"), &[], None).await;
        assert_eq!(status, 401, "{path} without the token");
    }

    // Three accounts send one template from one client: one cluster.
    let prompt = |i: usize| {
        format!(
            "You are grading answers for a benchmark. Read the question and the reference \
             answer, then write out your reasoning step by step and give a score from one to \
             ten with a short justification for every criterion in the rubric below. \
             Question number {i}: explain how a hash map handles collisions."
        )
    };
    let send = |key: String, i: usize| {
        let c = c.clone();
        let url = url.clone();
        async move {
            let body = json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 32000,
                "messages": [{"role": "user", "content": prompt(i)}],
            });
            let req = http::Request::post(&url)
                .header("x-api-key", key)
                .header("anthropic-version", "2023-06-01")
                .header("content-type", "application/json")
                .header("x-request-id", format!("api-test-{i}"))
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
            let r = c.request(req).await.unwrap();
            let status = r.status().as_u16();
            let _ = r.into_body().collect().await;
            status
        }
    };
    for round in 0..3 {
        for k in 0..3 {
            send(format!("api-test-key-{k}"), round * 3 + k).await;
        }
    }
    let (status, list) = http(
        &c,
        "GET",
        &format!("{admin}/admin/clusters?by=members"),
        &auth,
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let clusters = list["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 1, "{list}");
    assert_eq!(clusters[0]["members"], 3);
    let cluster = clusters[0]["id"].as_str().unwrap().to_string();

    let (status, g) = http(
        &c,
        "GET",
        &format!("{admin}/admin/clusters/{cluster}/graph"),
        &auth,
        None,
    )
    .await;
    assert_eq!(status, 200, "{g}");
    let hasher = distill_guard::identity::KeyHasher::new(SECRET.as_bytes());
    let mut members: Vec<String> = (0..3)
        .map(|k| {
            hasher
                .account_id(format!("api-test-key-{k}").as_bytes())
                .to_string()
        })
        .collect();
    members.sort();
    let mut nodes: Vec<String> = g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect();
    nodes.sort();
    assert_eq!(nodes, members);
    let edges = g["edges"].as_array().unwrap();
    assert!(edges.len() >= 2, "{g}");
    for e in edges {
        assert!(members.contains(&e["from"].as_str().unwrap().to_string()));
        assert!(members.contains(&e["to"].as_str().unwrap().to_string()));
        assert_eq!(e["strength"], "strong", "{e}");
        let kinds: Vec<&str> = e["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        for k in ["ip_prefix", "prompt"] {
            assert!(kinds.contains(&k), "{e}");
        }
        assert!(e["rules"]
            .as_array()
            .unwrap()
            .contains(&json!("network+template")));
    }

    // Blocked: the next member request is refused, and the decisions, the
    // audit log and the summary say so.
    let (status, _) = http(
        &c,
        "POST",
        &format!("{admin}/admin/clusters/{cluster}/block"),
        &auth,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(send("api-test-key-1".into(), 100).await, 403);
    let (_, d) = http(
        &c,
        "GET",
        &format!("{admin}/admin/decisions?cluster={cluster}"),
        &auth,
        None,
    )
    .await;
    let rows = d["decisions"].as_array().unwrap();
    let last = rows.last().unwrap();
    assert_eq!(last["request_id"], "api-test-100");
    assert_eq!(last["decision"], "block");
    assert_eq!(last["reasons"][0]["manual_block"], "cluster");
    assert!(rows
        .iter()
        .any(|r| r["kind"] == "manual_decision" && r["decision"] == "block"));
    assert!(d["last"].as_u64().unwrap() >= last["seq"].as_u64().unwrap());
    let (_, newer) = http(
        &c,
        "GET",
        &format!("{admin}/admin/decisions?after={}", d["last"]),
        &auth,
        None,
    )
    .await;
    assert_eq!(newer["decisions"], json!([]));
    let line = until(
        "the manual decision in the audit file",
        Duration::from_secs(20),
        || {
            let c = c.clone();
            let admin = admin.clone();
            let cluster = cluster.clone();
            async move {
                let (_, a) = http(
                    &c,
                    "GET",
                    &format!("{admin}/admin/audit?cluster={cluster}&kind=manual_decision"),
                    &[("authorization", &format!("Bearer {TOKEN}"))],
                    None,
                )
                .await;
                a["lines"].as_array()?.last().cloned()
            }
        },
    )
    .await;
    assert_eq!(line["decision"], "block");
    assert!(line["mode"]
        .as_str()
        .unwrap()
        .starts_with("admin@127.0.0.1"));
    let (_, s) = http(&c, "GET", &format!("{admin}/admin/summary"), &auth, None).await;
    assert!(s["requests"]["block"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["clusters"], 1);

    // The history: sampled every two seconds once asked for.
    let points = until("two history samples", Duration::from_secs(30), || {
        let c = c.clone();
        let admin = admin.clone();
        let cluster = cluster.clone();
        async move {
            let (_, h) = http(
                &c,
                "GET",
                &format!("{admin}/admin/clusters/{cluster}/history"),
                &[("authorization", &format!("Bearer {TOKEN}"))],
                None,
            )
            .await;
            let p = h["points"].as_array()?.clone();
            (p.len() >= 2).then_some(p)
        }
    })
    .await;
    // Nine requests are too little evidence for a score above 0, but each
    // signal's value is there.
    let p = points.last().unwrap();
    assert!(p["score"].as_f64().unwrap() >= 0.0, "{p}");
    assert!(
        p["signals"]["template_reuse"]["value"].as_f64().unwrap() > 0.5,
        "{p}"
    );
    assert!(
        p["signals"]["template_reuse"]["contribution"].is_number(),
        "{p}"
    );
    assert!(points[0]["engine_ms"].as_u64() <= p["engine_ms"].as_u64());

    // Malformed ids are refused.
    for path in [
        "/admin/clusters/nothex/graph",
        "/admin/accounts/123/history",
        "/admin/decisions?account=xyz",
    ] {
        let (status, _) = http(&c, "GET", &format!("{admin}{path}"), &auth, None).await;
        assert_eq!(status, 400, "{path}");
    }
    proxy.shutdown();
}
