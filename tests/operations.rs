//! Operations end to end: the admin API's token, Prometheus metrics parsed
//! by a real parser, manual blocks across reloads and restarts, reloads
//! (valid and invalid) under load, TLS certificates reloaded without
//! dropping connections, and the Grafana dashboard.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use support::*;

const TOKEN: &str = "admin-token-0123456789abcdef";
const SECRET: &str = "ops-test-secret-0123456789abcdef";

async fn admin(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = timeout(client().request(req.body(Full::new(Bytes::new())).unwrap()))
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn with_admin(extra: &str, state: &Path) -> String {
    format!(
        "{extra}\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\nstate_path = \"{}\"\n",
        state.display()
    )
}

/// Like `Env::start` but with our own `[admin]` table.
fn start_with_admin(
    extra: &str,
    dir: &Path,
) -> (
    distill_guard::mock::MockHandle,
    distill_guard::server::Handle,
) {
    let mock =
        distill_guard::mock::start("127.0.0.1:0".parse().unwrap(), Default::default()).unwrap();
    let text = basic_config(&format!("http://{}", mock.addr()), "")
        .replace("[admin]\naddress = \"127.0.0.1:0\"\n", "")
        + &with_admin(extra, &dir.join("state.json"));
    let proxy = distill_guard::server::start(config_from(&text, dir)).unwrap();
    (mock, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_needs_the_token_and_metrics_parse_as_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let (_mock, proxy) = start_with_admin("", dir.path());
    let a = proxy.admin_addr().unwrap();
    let url = format!("http://{}/v1/messages", proxy.local_addrs()[0]);
    for _ in 0..3 {
        let r = timeout(client().request(messages_request(&url, SMALL_MESSAGE)))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = body_json(r).await;
    }
    // Probes are open; everything else needs the token.
    assert_eq!(admin(a, "GET", "/healthz", None).await.0, 200);
    assert_eq!(admin(a, "GET", "/readyz", None).await.0, 200);
    for path in [
        "/metrics",
        "/admin/top?by=requests",
        "/admin/accounts/0000000000000001",
    ] {
        assert_eq!(admin(a, "GET", path, None).await.0, 401, "{path}");
        assert_eq!(
            admin(a, "GET", path, Some("wrong-token-0123456789abcdef"))
                .await
                .0,
            401,
            "{path}"
        );
    }
    assert_eq!(
        admin(a, "POST", "/admin/accounts/0000000000000001/block", None)
            .await
            .0,
        401
    );

    let (status, text) = admin(a, "GET", "/metrics", Some(TOKEN)).await;
    assert_eq!(status, 200);
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
    };
    assert_eq!(
        value("distill_guard_requests_total", Some(("decision", "allow"))),
        3.0
    );
    assert_eq!(
        value(
            "distill_guard_upstream_responses_total",
            Some(("class", "2xx"))
        ),
        3.0
    );
    assert!(value("distill_guard_tracked_accounts", None) >= 1.0);
    assert!(value("distill_guard_tracked_behaviour_states", None) >= 1.0);
    assert!(value("distill_guard_connections_accepted_total", None) >= 1.0);
    let hist = scrape
        .samples
        .iter()
        .find(|s| s.metric == "distill_guard_proxy_overhead_seconds")
        .expect("overhead histogram");
    assert!(matches!(hist.value, prometheus_parse::Value::Histogram(_)));
    // Every series the dashboard queries exists.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/grafana/distill-guard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("distill_guard_"))
                .collect();
            assert!(!names.is_empty(), "{expr}");
            // The Redis backend's series exist only with that backend:
            // tests/distributed.rs checks them.
            for n in names
                .into_iter()
                .filter(|n| !n.starts_with("distill_guard_state_"))
            {
                let base = n.trim_end_matches("_bucket");
                assert!(
                    text.contains(base),
                    "dashboard queries {n}, which /metrics lacks"
                );
            }
        }
    }
    proxy.shutdown();
}

#[test]
fn grafana_dashboard_is_valid_dashboard_json() {
    let d: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/grafana/distill-guard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(d["title"], "distill-guard");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 30);
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let mut ids = std::collections::HashSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        assert!(p["title"].is_string() && p["type"].is_string());
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_u64(), "{k}");
        }
        assert!(!p["targets"].as_array().unwrap().is_empty());
    }
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert!(titles.iter().any(|t| t.contains("decision")));
    assert!(titles.iter().any(|t| t.contains("Cluster")));
    assert!(titles.iter().any(|t| t.contains("adds")));
}

/// `serve` on `cfg` (port-0 listeners): the child, its client URL for
/// `/v1/messages` and its admin address, as it logged them.
fn spawn_serve(cfg: &Path) -> (Child, String, std::net::SocketAddr) {
    let Spawned {
        child,
        listeners,
        admin,
        ..
    } = spawn_listening(
        Command::new(env!("CARGO_BIN_EXE_distill-guard"))
            .args(["serve", "--config"])
            .arg(cfg)
            .env("DISTILL_GUARD_HASH_SECRET", SECRET)
            .stdout(Stdio::null()),
        1,
        true,
    );
    let url = format!("http://{}/v1/messages", listeners[0]);
    (child, url, admin.expect("admin address"))
}

/// The status of one request with `key` to `url`.
async fn status(url: &str, key: &'static str) -> u16 {
    let mut req = messages_request(url, SMALL_MESSAGE);
    req.headers_mut().insert("x-api-key", key.parse().unwrap());
    let r = timeout(client().request(req)).await.unwrap();
    let s = r.status().as_u16();
    let _ = r.into_body().collect().await;
    s
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_block_survives_a_reload_and_a_restart() {
    let mock =
        distill_guard::mock::start("127.0.0.1:0".parse().unwrap(), Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("dg.toml");
    let write_cfg = |rpm: u64| {
        let text = basic_config(&format!("http://{}", mock.addr()), "")
            .replace("[admin]\naddress = \"127.0.0.1:0\"\n", "")
            + &format!(
                "[tiers.default]\nrequests_per_minute = {rpm}\nburst_requests = 100\ninput_tokens_per_minute = 10000000\n\
                 output_tokens_per_minute = 10000000\nmax_concurrent = 10\n"
            )
            + &with_admin("", &dir.path().join("state.json"));
        std::fs::write(&cfg, text).unwrap();
    };
    write_cfg(600);
    let (child, url, admin_addr) = spawn_serve(&cfg);
    assert_eq!(status(&url, "sk-bad-actor").await, 200);
    let id = distill_guard::identity::KeyHasher::new(SECRET.as_bytes()).account_id(b"sk-bad-actor");
    let (s, body) = admin(
        admin_addr,
        "POST",
        &format!("/admin/accounts/{id}/block"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("\"persisted\":true"), "{body}");
    assert_eq!(status(&url, "sk-bad-actor").await, 403);
    assert_eq!(status(&url, "sk-someone-else").await, 200);
    let (s, body) = admin(
        admin_addr,
        "GET",
        &format!("/admin/accounts/{id}"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(s, 200);
    assert!(body.contains("\"manual\":\"block\""), "{body}");

    // Reload (changed tier) by SIGHUP: still blocked.
    write_cfg(500);
    let _ = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status();
    // Wait until the reload is counted, then: still blocked.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = admin(admin_addr, "GET", "/metrics", Some(TOKEN)).await;
        if metrics.contains("distill_guard_config_reloads_total{result=\"ok\"} ")
            && !metrics.contains("distill_guard_config_reloads_total{result=\"ok\"} 0\n")
        {
            break;
        }
        assert!(Instant::now() < deadline, "reload not counted: {metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(&url, "sk-bad-actor").await, 403);

    // Restart: the state file brings the block back.
    stop(child);
    let (child, url, admin_addr) = spawn_serve(&cfg);
    assert_eq!(status(&url, "sk-bad-actor").await, 403);
    let (s, _) = admin(
        admin_addr,
        "POST",
        &format!("/admin/accounts/{id}/unblock"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(status(&url, "sk-bad-actor").await, 200);
    stop(child);
}

/// The accounts' tenure is written at shutdown to `[accounts] tenure_path`
/// and read back at start: the restarted proxy remembers the accounts before
/// any of them sends again (the gauge counts them), and a tenure file
/// written under another hash secret is set aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_tenure_survives_a_restart() {
    let mock =
        distill_guard::mock::start("127.0.0.1:0".parse().unwrap(), Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("dg.toml");
    let tenure = dir.path().join("tenure.bin");
    let text = basic_config(&format!("http://{}", mock.addr()), "")
        .replace("[admin]\naddress = \"127.0.0.1:0\"\n", "")
        + &format!("[accounts]\ntenure_path = \"{}\"\n", tenure.display())
        + &with_admin("", &dir.path().join("state.json"));
    std::fs::write(&cfg, text).unwrap();
    let tracked = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("distill_guard_tracked_tenure_accounts "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };

    let (child, url, admin_addr) = spawn_serve(&cfg);
    for key in ["sk-tenure-a", "sk-tenure-b", "sk-tenure-c"] {
        assert_eq!(status(&url, key).await, 200);
    }
    let (_, metrics) = admin(admin_addr, "GET", "/metrics", Some(TOKEN)).await;
    assert_eq!(tracked(&metrics), Some(3.0), "{metrics}");
    stop(child);
    assert!(tenure.exists(), "no tenure file written at shutdown");

    // Restarted: the three accounts are remembered before they send.
    let (child, _url, admin_addr) = spawn_serve(&cfg);
    let (_, metrics) = admin(admin_addr, "GET", "/metrics", Some(TOKEN)).await;
    assert_eq!(tracked(&metrics), Some(3.0), "{metrics}");
    stop(child);

    // Under another secret the file's account ids mean nothing: set aside.
    let mut other = Command::new(env!("CARGO_BIN_EXE_distill-guard"));
    other
        .args(["serve", "--config"])
        .arg(&cfg)
        .env(
            "DISTILL_GUARD_HASH_SECRET",
            "another-secret-0123456789abcdef",
        )
        .stdout(Stdio::null());
    let spawned = spawn_listening(&mut other, 1, true);
    let (child, other_admin) = (spawned.child, spawned.admin.expect("admin address"));
    let (_, metrics) = admin(other_admin, "GET", "/metrics", Some(TOKEN)).await;
    assert_eq!(tracked(&metrics), Some(0.0), "{metrics}");
    stop(child);
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("tenure.bin.bad-")
        });
    assert!(aside, "the foreign tenure file was not set aside");
}

/// Idle account state is swept by the proxy's housekeeping, not by the
/// request that happens to find the sweep due (it walks every tracked
/// account: milliseconds at hundreds of thousands): an idle account is
/// forgotten while no request arrives at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_accounts_are_swept_without_a_request_to_trigger_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_mock, proxy) = start_with_admin("[accounts]\nidle_evict_ms = 300\n", dir.path());
    let a = proxy.admin_addr().unwrap();
    let url = format!("http://{}/v1/messages", proxy.local_addrs()[0]);
    let tracked = || async move {
        let (_, m) = admin(a, "GET", "/metrics", Some(TOKEN)).await;
        m.lines()
            .find_map(|l| l.strip_prefix("distill_guard_tracked_accounts "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let r = timeout(client().request(messages_request(&url, SMALL_MESSAGE)))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = body_json(r).await;
    assert_eq!(tracked().await, Some(1.0));
    // The sweep runs every 10 s of engine time; no request from here on.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tracked().await != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "the idle account was never swept"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The sweep that did it was timed.
    let (_, m) = admin(a, "GET", "/metrics", Some(TOKEN)).await;
    let sweeps = m
        .lines()
        .find_map(|l| l.strip_prefix("distill_guard_sweep_seconds_count "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(sweeps.is_some_and(|n| n >= 1.0), "sweeps timed: {sweeps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_valid_and_invalid_under_load_fail_no_request() {
    let dir = tempfile::tempdir().unwrap();
    // Budgets out of reach: only a reload could fail a request here.
    let (mock, proxy) = start_with_admin(
        "[tiers.default]\nrequests_per_minute = 1000000\nburst_requests = 100000\n\
         input_tokens_per_minute = 1000000000\noutput_tokens_per_minute = 1000000000\nmax_concurrent = 100\n",
        dir.path(),
    );
    let cfg_path = dir.path().join("test.toml");
    let good = std::fs::read_to_string(&cfg_path).unwrap();
    let url = format!("http://{}/v1/messages", proxy.local_addrs()[0]);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut tasks = vec![];
    for c in 0..4 {
        let (url, ok, failed) = (url.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let cl = client();
            let mut n = 0;
            while Instant::now() < deadline && n < 5000 {
                n += 1;
                let mut req = messages_request(&url, SMALL_MESSAGE);
                req.headers_mut().insert(
                    "x-api-key",
                    format!("sk-load-{c}-{}", n % 50).parse().unwrap(),
                );
                match tokio::time::timeout(Duration::from_secs(5), cl.request(req)).await {
                    Ok(Ok(r)) if r.status() == 200 => {
                        let _ = r.into_body().collect().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            match other {
                                Ok(Ok(r)) => eprintln!("failed: status {}", r.status()),
                                Ok(Err(e)) => eprintln!("failed: {e}"),
                                Err(_) => eprintln!("failed: timeout"),
                            }
                        }
                    }
                }
            }
        }));
    }
    // Meanwhile: valid and invalid reloads, by file change (watched) and by call.
    let mut valid = 0;
    let mut invalid = 0;
    let mut i = 0;
    while Instant::now() < deadline {
        i += 1;
        if i % 2 == 0 {
            std::fs::write(&cfg_path, format!("{good}\n# edit {i}\n")).unwrap();
            assert!(proxy.reload().is_ok());
            valid += 1;
        } else {
            std::fs::write(
                &cfg_path,
                format!("{good}\n[limits]\nmax_request_body_bytes = \"lots\"\n"),
            )
            .unwrap();
            let e = proxy.reload().unwrap_err();
            assert!(e.to_string().contains("test.toml:"), "{e}");
            invalid += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    std::fs::write(&cfg_path, &good).unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 100, "only {ok} requests");
    assert_eq!(failed, 0, "{failed} requests failed during reloads");
    let (applied, rejected) = proxy.shared().metrics.reloads();
    assert!(
        applied >= valid && rejected >= invalid,
        "{applied}/{valid} {rejected}/{invalid}"
    );
    drop(mock);
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificates_reload_without_dropping_connections() {
    let pki = TestPki::new();
    let mock =
        distill_guard::mock::start("127.0.0.1:0".parse().unwrap(), Default::default()).unwrap();
    let text = pki.listener_config(mock.addr(), "watch_config = false");
    let proxy = distill_guard::server::start(config_from(&text, pki.dir.path())).unwrap();
    let url = format!(
        "https://localhost:{}/v1/messages",
        proxy.local_addrs()[0].port()
    );
    // One client: its pooled connection stays open across the reload.
    let c = tls_client(&pki, true);
    let r = timeout(c.request(messages_request(&url, SMALL_MESSAGE)))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = body_json(r).await;
    let before = std::fs::read(&pki.cert_pem).unwrap();
    // A new certificate from the same CA replaces the files; reload.
    let fresh = TestPki::new();
    std::fs::copy(&fresh.ca_pem, &pki.ca_pem).unwrap();
    std::fs::copy(&fresh.cert_pem, &pki.cert_pem).unwrap();
    std::fs::copy(&fresh.key_pem, &pki.key_pem).unwrap();
    assert_ne!(before, std::fs::read(&pki.cert_pem).unwrap());
    proxy.reload().unwrap();
    // The open HTTP/2 connection keeps working (no reconnect: same client,
    // and its old CA would reject the new certificate on a new handshake).
    for _ in 0..3 {
        let r = timeout(c.request(messages_request(&url, SMALL_MESSAGE)))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = body_json(r).await;
    }
    // New connections get the new certificate: a client trusting only the
    // new CA (which did not sign the old certificate) succeeds.
    let c2 = tls_client(&fresh, true);
    let r = timeout(c2.request(messages_request(&url, SMALL_MESSAGE)))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    proxy.shutdown();
}
