//! Fingerprints of real clients on loopback against a TLS listener: rustls
//! (hyper), curl (HTTP/1.1 and HTTP/2) and Python's `ssl`; plus the
//! ClientHello capture's failure modes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use distill_guard::fingerprint::tls::HelloError;
use distill_guard::mock::MockHandle;
use distill_guard::server::Handle;
use distill_guard::telemetry::metrics::ConnReject;
use support::*;

const FORWARD: &str = r#"
[fingerprint]
forward_ja4_header = "x-dg-ja4"
forward_http_header = "x-dg-http"
forward_h2_header = "x-dg-h2"
"#;

struct TlsEnv {
    pki: TestPki,
    mock: MockHandle,
    proxy: Handle,
    addr: SocketAddr,
}

fn tls_env(extra: &str) -> TlsEnv {
    let pki = TestPki::new();
    let mock =
        distill_guard::mock::start("127.0.0.1:0".parse().unwrap(), Default::default()).unwrap();
    let text = pki.listener_config(mock.addr(), extra);
    let proxy = distill_guard::server::start(config_from(&text, pki.dir.path())).unwrap();
    let addr = proxy.local_addrs()[0];
    TlsEnv {
        pki,
        mock,
        proxy,
        addr,
    }
}

/// The fingerprint headers of the mock's last request.
fn last_fingerprints(mock: &MockHandle) -> HashMap<String, String> {
    mock.requests()
        .last()
        .unwrap()
        .headers
        .iter()
        .filter(|(k, _)| k.starts_with("x-dg-"))
        .cloned()
        .collect()
}

fn curl(env: &TlsEnv, extra: &[&str]) -> HashMap<String, String> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-f",
            "--max-time",
            "10",
            "-H",
            "x-api-key: curl-key",
            "--cacert",
        ])
        .arg(&env.pki.ca_pem)
        .args(extra)
        .args([
            "-H",
            "content-type: application/json",
            "-d",
            SMALL_MESSAGE,
            &format!("https://localhost:{}/v1/messages", env.addr.port()),
        ])
        .output()
        .expect("curl must be installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    last_fingerprints(&env.mock)
}

fn python(env: &TlsEnv) -> HashMap<String, String> {
    let script = format!(
        r#"
import json, socket, ssl
ctx = ssl.create_default_context(cafile={ca:?})
ctx.set_alpn_protocols(["http/1.1"])
body = {body:?}
with socket.create_connection(("127.0.0.1", {port})) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(("POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nX-Api-Key: py-key\r\nContent-Type: application/json\r\n"
                   "Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
print(data.split(b"\r\n")[0].decode())
"#,
        ca = env.pki.ca_pem.display().to_string(),
        body = SMALL_MESSAGE,
        port = env.addr.port()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("HTTP/1.1 200"));
    last_fingerprints(&env.mock)
}

async fn rustls_client(env: &TlsEnv, h2: bool) -> HashMap<String, String> {
    let c = tls_client(&env.pki, h2);
    let url = format!("https://localhost:{}/v1/messages", env.addr.port());
    let resp = timeout(c.request(messages_request(&url, SMALL_MESSAGE)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = body_json(resp).await;
    last_fingerprints(&env.mock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_have_stable_and_distinct_fingerprints() {
    let env = tls_env(FORWARD);
    let mut by_client: Vec<(&str, HashMap<String, String>)> = vec![];
    for _ in 0..3 {
        by_client.push(("rustls-h1", rustls_client(&env, false).await));
        by_client.push(("rustls-h2", rustls_client(&env, true).await));
        by_client.push(("curl-h1", curl(&env, &["--http1.1"])));
        by_client.push(("curl-h2", curl(&env, &["--http2"])));
        by_client.push(("python", python(&env)));
    }
    // Stable: every connection of one client gives the same JA4.
    let mut ja4_of: HashMap<&str, BTreeSet<String>> = HashMap::new();
    let mut h2_of: HashMap<&str, BTreeSet<String>> = HashMap::new();
    let mut http_of: HashMap<&str, BTreeSet<String>> = HashMap::new();
    for (name, fp) in &by_client {
        let ja4 = fp
            .get("x-dg-ja4")
            .unwrap_or_else(|| panic!("{name}: no JA4 forwarded: {fp:?}"));
        assert!(
            ja4.starts_with("t13d") || ja4.starts_with("t12d"),
            "{name}: {ja4}"
        );
        ja4_of.entry(name).or_default().insert(ja4.clone());
        http_of
            .entry(name)
            .or_default()
            .insert(fp.get("x-dg-http").cloned().unwrap_or_default());
        if let Some(h2) = fp.get("x-dg-h2") {
            h2_of.entry(name).or_default().insert(h2.clone());
        }
    }
    for (name, set) in &ja4_of {
        assert_eq!(set.len(), 1, "{name}: JA4 not stable: {set:?}");
    }
    for (name, set) in &http_of {
        assert_eq!(set.len(), 1, "{name}: HTTP fingerprint not stable: {set:?}");
        assert!(
            !set.iter().next().unwrap().is_empty(),
            "{name}: no HTTP fingerprint"
        );
    }
    // curl's two modes share a TLS stack (same JA4 apart from ALPN); the
    // three stacks differ from each other.
    let one = |n: &str| ja4_of[n].iter().next().unwrap().clone();
    assert_ne!(one("rustls-h2"), one("curl-h2"));
    assert_ne!(one("rustls-h1"), one("python"));
    assert_ne!(one("curl-h1"), one("python"));
    assert!(one("curl-h2").contains("h2_"), "{}", one("curl-h2"));
    // HTTP/2 fingerprints: curl and hyper's client differ.
    let h2 = |n: &str| {
        h2_of
            .get(n)
            .and_then(|s| s.iter().next().cloned())
            .unwrap_or_default()
    };
    assert!(!h2("curl-h2").is_empty() && !h2("rustls-h2").is_empty());
    assert_ne!(h2("curl-h2"), h2("rustls-h2"));
    assert_eq!(h2_of["curl-h2"].len(), 1);
    // HTTP/1 fingerprints differ between the stacks.
    let http = |n: &str| http_of[n].iter().next().unwrap().clone();
    assert_ne!(http("curl-h1"), http("python"));
    assert_ne!(http("curl-h1"), http("rustls-h1"));
    env.proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_spoof_forwarded_fingerprints() {
    let env = tls_env(FORWARD);
    let c = tls_client(&env.pki, false);
    let url = format!("https://localhost:{}/v1/messages", env.addr.port());
    let mut req = messages_request(&url, SMALL_MESSAGE);
    req.headers_mut()
        .insert("x-dg-ja4", "spoofed".parse().unwrap());
    let resp = timeout(c.request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let fp = last_fingerprints(&env.mock);
    assert_ne!(fp["x-dg-ja4"], "spoofed");
}

#[test]
fn non_tls_bytes_on_a_tls_listener_are_closed_and_counted() {
    let env = tls_env("");
    let mut s = TcpStream::connect(env.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut buf = vec![];
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty());
    let deadline = Instant::now() + Duration::from_secs(5);
    while env
        .proxy
        .shared()
        .metrics
        .rejected(ConnReject::Hello(HelloError::NotTls))
        == 0
    {
        assert!(Instant::now() < deadline, "rejection not counted");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_dribbled_client_hello_is_cut_off_at_the_handshake_deadline() {
    let env = tls_env("[limits]\nhandshake_timeout_ms = 600\n");
    // A real ClientHello, sent 8 bytes every 100 ms: ~6 s in all.
    let line = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/ja4/client_hellos_live.jsonl"
    ))
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    let hex = v["record_hex"].as_str().unwrap();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let mut s = TcpStream::connect(env.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let start = Instant::now();
    let mut closed_at = None;
    for chunk in bytes.chunks(8) {
        if s.write_all(chunk).is_err() {
            closed_at = Some(start.elapsed());
            break;
        }
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Ok(0) => {
                closed_at = Some(start.elapsed());
                break;
            }
            Ok(_) => panic!("server answered a partial ClientHello"),
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(50));
        if start.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let at = closed_at.expect("connection was not cut off");
    assert!(
        at >= Duration::from_millis(550) && at < Duration::from_secs(3),
        "{at:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while env
        .proxy
        .shared()
        .metrics
        .rejected(ConnReject::HandshakeTimeout)
        == 0
    {
        assert!(Instant::now() < deadline, "timeout not counted");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `ip_prefix` of every traffic-record line, in order, once `n` lines
/// have been written (the record is written from a queue: poll until a
/// deadline).
fn recorded_prefixes(record: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(record).unwrap_or_default();
        // Whole lines only: the writer may be half-way through one.
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        let lines: Vec<serde_json::Value> = whole
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= n {
            return lines
                .iter()
                .map(|l| l["ip_prefix"].as_str().unwrap_or_default().to_string())
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} record lines",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_prefix_is_the_forwarded_clients_behind_a_trusted_front() {
    let send = |env: &Env, xff: &'static str| {
        let req = {
            let mut req = messages_request(&env.url("/v1/messages"), SMALL_MESSAGE);
            req.headers_mut()
                .insert("x-forwarded-for", xff.parse().unwrap());
            req
        };
        async move {
            let r = timeout(client().request(req)).await.unwrap();
            assert_eq!(r.status(), 200);
            let _ = body_json(r).await;
        }
    };
    for (trusted, want) in [
        (
            "trusted_proxies = [\"127.0.0.1/32\"]\n",
            ["198.51.100.0/24", "203.0.113.0/24"],
        ),
        // From an untrusted peer the header is ignored: the peer's prefix.
        ("", ["127.0.0.0/24", "127.0.0.0/24"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("traffic.jsonl");
        let env = Env::start(&format!(
            "[identity]\n{trusted}[record]\npath = \"{}\"\n",
            record.display()
        ));
        send(&env, "198.51.100.7").await;
        send(&env, "203.0.113.9").await;
        assert_eq!(recorded_prefixes(&record, 2), want, "{trusted}");
    }
}

#[test]
fn the_network_prefix_is_the_proxy_protocol_source_from_a_trusted_peer() {
    let mock =
        distill_guard::mock::start("127.0.0.1:0".parse().unwrap(), Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("traffic.jsonl");
    let text = basic_config(
        &format!("http://{}", mock.addr()),
        &format!(
            "[identity]\ntrusted_proxies = [\"127.0.0.1\"]\n[record]\npath = \"{}\"\n",
            record.display()
        ),
    )
    .replacen(
        "address = \"127.0.0.1:0\"",
        "address = \"127.0.0.1:0\"\nproxy_protocol = true",
        1,
    );
    let proxy = distill_guard::server::start(config_from(&text, dir.path())).unwrap();
    for source in ["198.51.100.7", "203.0.113.9"] {
        let mut s = TcpStream::connect(proxy.local_addrs()[0]).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "PROXY TCP4 {source} 127.0.0.1 40000 443\r\nPOST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: k\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
            SMALL_MESSAGE.len(),
            SMALL_MESSAGE
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
    assert_eq!(
        recorded_prefixes(&record, 2),
        ["198.51.100.0/24", "203.0.113.0/24"]
    );
    proxy.shutdown();
}
