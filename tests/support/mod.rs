//! Shared helpers for end-to-end tests: a test CA, the proxy and the mock
//! upstream on 127.0.0.1:0, and HTTP clients (plain, h2 prior knowledge,
//! TLS with the test CA).
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use distill_guard::config;
use distill_guard::mock::{self, MockHandle, MockOptions};
use distill_guard::proxy::body::RequestBody;
use distill_guard::server::{self, Handle};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub type TestClient = Client<HttpConnector, Full<Bytes>>;
pub type TlsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A throwaway CA with one server certificate for `localhost` / 127.0.0.1,
/// written as PEM files in a temp dir.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

impl TestPki {
    pub fn new() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "distill-guard test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
        let ca_pem = dir.path().join("ca.pem");
        let cert_pem = dir.path().join("server.pem");
        let key_pem = dir.path().join("server.key");
        std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
        std::fs::write(&cert_pem, leaf_cert.pem()).unwrap();
        std::fs::write(&key_pem, leaf_key.serialize_pem()).unwrap();
        TestPki {
            dir,
            ca_pem,
            cert_pem,
            key_pem,
        }
    }

    /// A config with one TLS listener (this PKI's certificate) on
    /// 127.0.0.1:0 in front of `upstream`, plus `extra` TOML appended.
    pub fn listener_config(&self, upstream: std::net::SocketAddr, extra: &str) -> String {
        format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[listener.tls]\ncert_path = \"{}\"\nkey_path = \"{}\"\n\n\
             [upstream]\nurl = \"http://{upstream}\"\n\n[server]\nworkers = 1\n\n\
             [admin]\naddress = \"127.0.0.1:0\"\n{extra}\n",
            self.cert_pem.display(),
            self.key_pem.display(),
        )
    }

    /// rustls client settings trusting only the test CA.
    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_file_iter(&self.ca_pem).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        cfg
    }
}

/// Parse a config from text; `{upstream}` is replaced by the URL given.
pub fn config_from(text: &str, dir: &Path) -> config::Config {
    let path = dir.join("test.toml");
    std::fs::write(&path, text).unwrap();
    config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// A minimal config: one plain listener on 127.0.0.1:0 in front of `upstream`,
/// plus `extra` TOML appended.
pub fn basic_config(upstream: &str, extra: &str) -> String {
    format!(
        r#"
[[listener]]
address = "127.0.0.1:0"

[upstream]
url = "{upstream}"
connect_timeout_ms = 1000
first_byte_timeout_ms = 2000
idle_timeout_ms = 2000

[server]
workers = 1
shutdown_grace_ms = 2000

[admin]
address = "127.0.0.1:0"
{extra}
"#
    )
}

pub struct Env {
    pub mock: MockHandle,
    pub proxy: Handle,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Env {
    /// Mock upstream + proxy with `basic_config` plus `extra`.
    pub fn start(extra: &str) -> Env {
        let mock = mock::start("127.0.0.1:0".parse().unwrap(), MockOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = config_from(
            &basic_config(&format!("http://{}", mock.addr()), extra),
            dir.path(),
        );
        let proxy = server::start(cfg).unwrap();
        let addr = proxy.local_addrs()[0];
        Env {
            mock,
            proxy,
            addr,
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.proxy.shutdown();
    }
}

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub fn tls_client(pki: &TestPki, alpn_h2: bool) -> TlsClient {
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(pki.client_config(&[]))
        .https_only();
    let conn = if alpn_h2 {
        b.enable_http2().build()
    } else {
        b.enable_http1().build()
    };
    Client::builder(TokioExecutor::new())
        .http2_only(alpn_h2)
        .build(conn)
}

pub fn messages_request(url: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .header("x-api-key", "test-key-1")
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

pub const SMALL_MESSAGE: &str =
    r#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"Hello there"}]}"#;

pub async fn body_json(resp: Response<Incoming>) -> serde_json::Value {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

pub async fn timeout<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test step took longer than 20 s")
}

/// Keep the compiler from flagging RequestBody as unused in some test crates.
pub fn _unused(_: RequestBody) {}

/// A child process started with port-0 listeners, and the addresses it
/// chose, read back from its log: no port is picked by the test and then
/// raced for.
pub struct Spawned {
    pub child: std::process::Child,
    /// Client listeners, in the order they were logged.
    pub listeners: Vec<SocketAddr>,
    /// The admin listener, when one was asked for.
    pub admin: Option<SocketAddr>,
    /// Its log lines so far (colour codes removed; the first 10,000).
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
    /// Its stderr byte for byte, colour codes included (the first 64 MiB).
    pub raw: Arc<std::sync::Mutex<Vec<u8>>>,
    /// The thread draining stderr (ends when the child closes it).
    pub drain: std::thread::JoinHandle<()>,
}

/// At most this much of a child's stderr is kept byte for byte.
const RAW_CAP: usize = 64 << 20;

impl Spawned {
    /// Send `sig` (e.g. `-TERM`), wait until the child exits (20 s at
    /// most) and its stderr is drained; its stderr, byte for byte.
    pub fn stop(mut self, sig: &str) -> Vec<u8> {
        let sent = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(sent, "kill {sig} failed");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().expect("try_wait").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("no exit within 20 s of {sig}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.drain.join().expect("stderr drain");
        let raw = self.raw.lock().unwrap();
        raw.clone()
    }
}

/// Drop terminal colour codes (`ESC [ ... m`) from a log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The address logged on a `listening` line (text or JSON format).
fn logged_address(line: &str) -> Option<SocketAddr> {
    let rest = line
        .split_once("address=")
        .or_else(|| line.split_once("\"address\":\""))?
        .1;
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"' || c == ',')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Spawn `cmd` (a `serve` with port-0 listeners; its stderr is taken over
/// and drained) and wait, until a 20 s deadline, for `listeners` client
/// listeners and, when `admin`, the admin listener to be logged.
pub fn spawn_listening(cmd: &mut std::process::Command, listeners: usize, admin: bool) -> Spawned {
    use std::io::BufRead;
    let mut child = cmd
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let raw = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (kept, kept_raw) = (log.clone(), raw.clone());
    let drain = std::thread::spawn(move || {
        let mut stderr = std::io::BufReader::new(stderr);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match stderr.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            {
                let mut kept_raw = kept_raw.lock().unwrap();
                if kept_raw.len() + buf.len() <= RAW_CAP {
                    kept_raw.extend_from_slice(&buf);
                }
            }
            let line = strip_ansi(String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']));
            if line.contains("listening") {
                if let Some(a) = logged_address(&line) {
                    let _ = tx.send((line.contains("admin API"), a));
                }
            }
            let mut kept = kept.lock().unwrap();
            if kept.len() < 10_000 {
                kept.push(line);
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut got = Spawned {
        child,
        listeners: Vec::new(),
        admin: None,
        log,
        raw,
        drain,
    };
    while got.listeners.len() < listeners || (admin && got.admin.is_none()) {
        if let Some(status) = got.child.try_wait().expect("try_wait") {
            panic!("exited before listening: {status}");
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "not listening within 20 s");
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok((true, a)) => got.admin = Some(a),
            Ok((false, a)) => got.listeners.push(a),
            Err(_) => {}
        }
    }
    got
}

/// Two templates of a distillation hydra (chain of thought, grading with
/// justifications), filled by [`fill`].
pub const TEMPLATES: [&str; 2] = [
    "Imagine and articulate the internal reasoning behind the completed response below, and write it out step by step before the final answer. Question: {} Answer: {}",
    "You are a strict grader. Grade the following answer on a 1-10 rubric for correctness, completeness and clarity, and justify every point you deduct. Task: {} Candidate answer: {}",
];

/// Twenty made-up words, the same for the same `i`.
pub fn fill(i: usize) -> String {
    const SYL: [&str; 12] = [
        "ka", "lo", "mi", "ter", "an", "su", "vel", "ro", "din", "pa", "qui", "es",
    ];
    (0..20)
        .map(|k| {
            let x = i * 31 + k * 7;
            format!(
                "{}{}{}",
                SYL[x % 12],
                SYL[(x / 12) % 12],
                SYL[(x / 144) % 12]
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Tiers far above what the hydra sends, and a strong cluster of three
/// or more sharing a small budget (20 requests a minute, burst 5).
pub const HYDRA_POLICY: &str = r#"
[tiers.default]
requests_per_minute = 600
burst_requests = 100
input_tokens_per_minute = 10000000
output_tokens_per_minute = 10000000
max_concurrent = 16

[cluster]
min_strength = "strong"
min_members = 3
# The shared budget's mechanics, not its gate: a few requests do not raise
# the cluster's detection level to the default gate's "slow".
budget_min_level = "allow"
[cluster.budget]
requests_per_minute = 20
burst_requests = 5
input_tokens_per_minute = 10000000
output_tokens_per_minute = 10000000
max_concurrent = 100
"#;

/// Sends a hydra's requests (12 keys, one client, [`TEMPLATES`]) to
/// `messages_url`, at most 60, until one is refused: how many were served,
/// and the refusal's `ratelimit-policy` and body.
pub async fn hydra_until_refused(messages_url: &str) -> (u32, Option<(String, serde_json::Value)>) {
    hydra_over_until_refused(&[messages_url], |i| i % 2).await
}

/// The hydra's request `i`: key `sk-hydra-{i mod 12}`, its prompt
/// template `template(i)` of [`TEMPLATES`] filled with `i`'s words.
pub fn hydra_request(
    messages_url: &str,
    i: usize,
    template: fn(usize) -> usize,
) -> Request<Full<Bytes>> {
    let key = format!("sk-hydra-{:02}", i % 12);
    let prompt = TEMPLATES[template(i) % TEMPLATES.len()]
        .replacen("{}", &fill(i), 1)
        .replacen("{}", &fill(i + 1000), 1);
    let body = serde_json::json!({
        "model": "m", "max_tokens": 16,
        "messages": [{"role": "user", "content": prompt}]
    })
    .to_string();
    let mut req = messages_request(messages_url, &body);
    req.headers_mut().insert("x-api-key", key.parse().unwrap());
    req
}

/// [`hydra_until_refused`] with request `i` sent to `messages_urls[i % n]`
/// (a hydra spread over replicas behind a load balancer) and filled into
/// template `template(i)`.
pub async fn hydra_over_until_refused(
    messages_urls: &[&str],
    template: fn(usize) -> usize,
) -> (u32, Option<(String, serde_json::Value)>) {
    let c = client();
    let mut served = 0;
    for i in 0..60 {
        let messages_url = messages_urls[i % messages_urls.len()];
        let r = timeout(c.request(hydra_request(messages_url, i, template)))
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => {
                served += 1;
                let _ = body_json(r).await;
            }
            429 => {
                let policy = r.headers()["ratelimit-policy"]
                    .to_str()
                    .unwrap()
                    .to_string();
                return (served, Some((policy, body_json(r).await)));
            }
            other => panic!("unexpected status {other}"),
        }
    }
    (served, None)
}

/// The repository's root (the crate's manifest directory).
pub fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file of the repository, by its path from the root.
pub fn read_repo_file(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}
