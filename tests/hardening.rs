//! Hardening over real sockets: no connection holds a slot forever, on any
//! protocol, on the client listeners or the admin listener.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use distill_guard::app::deadline::Expired;
use distill_guard::telemetry::metrics::ConnReject;
use support::*;

/// Short deadlines so that the tests run in about a second each.
const SHORT: &str = r#"
[limits]
request_head_timeout_ms = 300
idle_connection_timeout_ms = 400
body_read_timeout_ms = 400
min_body_bytes_per_second = 1024
write_stall_timeout_ms = 500
max_connections_per_address = 4
"#;

/// Deadlines long enough that "closed at once" (a cap) and "closed by the
/// deadline" cannot be confused on a loaded machine.
const CAPPED: &str = r#"
[limits]
request_head_timeout_ms = 3000
idle_connection_timeout_ms = 3000
max_connections_per_address = 4
"#;

/// Block until the peer closes `s` (EOF or reset) and return how long that
/// took; panics if it is still open after `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return start.elapsed(),
        }
        assert!(
            start.elapsed() < within,
            "connection still open after {within:?}"
        );
    }
}

/// Whether the peer has not closed `s` (nothing to read yet, no EOF).
fn still_open(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let open =
        matches!(s.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    open
}

/// Read until the peer closes or `within` passes; returns what was read.
fn read_response(s: &mut TcpStream, within: Duration) -> String {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while start.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") && out.ends_with(b"}") {
                    break;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_lone_byte_is_closed_at_the_first_request_deadline() {
    let env = Env::start(SHORT);
    let mut s = connect(env.addr);
    s.write_all(b"P").unwrap();
    let took = closed_within(&mut s, Duration::from_secs(5));
    assert!(took >= Duration::from_millis(250), "closed after {took:?}");
    let m = &env.proxy.shared().metrics;
    wait_for("first-request cut counted", || {
        m.cut(Expired::FirstRequest) >= 1
    });
}

#[test]
fn an_h2_preface_and_settings_then_silence_is_closed() {
    let env = Env::start(SHORT);
    let mut s = connect(env.addr);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    // An empty SETTINGS frame.
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    closed_within(&mut s, Duration::from_secs(5));
    let m = &env.proxy.shared().metrics;
    wait_for("first-request cut counted", || {
        m.cut(Expired::FirstRequest) >= 1
    });
}

/// A proxy with a TLS listener (extra `[limits]` etc. in `extra`) in front
/// of a mock upstream; keep the mock alive as long as the proxy.
fn tls_proxy(
    extra: &str,
) -> (
    TestPki,
    distill_guard::mock::MockHandle,
    distill_guard::server::Handle,
) {
    let pki = TestPki::new();
    let mock = distill_guard::mock::start(
        "127.0.0.1:0".parse().unwrap(),
        distill_guard::mock::MockOptions::default(),
    )
    .unwrap();
    let cfg = config_from(&pki.listener_config(mock.addr(), extra), pki.dir.path());
    let proxy = distill_guard::server::start(cfg).unwrap();
    (pki, mock, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_tls_handshake_then_silence_is_closed() {
    let (pki, _mock, proxy) = tls_proxy(SHORT);
    let addr = proxy.local_addrs()[0];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(pki.client_config(&[b"h2"])));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = timeout(connector.connect(name, tcp)).await.unwrap();
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    // Reads end with EOF (or an error) once the proxy closes.
    loop {
        match timeout(tls.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    // Closed by the first-request deadline, not by the read's 20 s guard.
    let m = &proxy.shared().metrics;
    wait_for("first-request cut counted", || {
        m.cut(Expired::FirstRequest) >= 1
    });
    proxy.shutdown();
}

#[test]
fn an_idle_keep_alive_connection_is_closed() {
    // hyper's own HTTP/1 head timer also closes an idle keep-alive
    // connection; a longer one shows the idle deadline at work.
    let env = Env::start(&SHORT.replace(
        "request_head_timeout_ms = 300",
        "request_head_timeout_ms = 5000",
    ));
    let mut s = connect(env.addr);
    let body = SMALL_MESSAGE;
    write!(
        s,
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: k1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let resp = read_response(&mut s, Duration::from_secs(5));
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // Kept alive, then closed for idleness.
    let took = closed_within(&mut s, Duration::from_secs(5));
    assert!(took >= Duration::from_millis(200), "closed after {took:?}");
    let m = &env.proxy.shared().metrics;
    wait_for("idle cut counted", || m.cut(Expired::Idle) >= 1);
}

#[test]
fn a_body_that_stalls_gets_408_in_the_api_shape() {
    let env = Env::start(SHORT);
    let mut s = connect(env.addr);
    s.write_all(
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: k1\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{\"mo",
    )
    .unwrap();
    let resp = read_response(&mut s, Duration::from_secs(5));
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(
        resp.contains("\"type\":\"invalid_request_error\""),
        "{resp}"
    );
    assert!(resp.contains("stalled"), "{resp}");
}

#[test]
fn a_body_that_trickles_gets_408() {
    let env = Env::start(SHORT);
    let mut s = connect(env.addr);
    s.write_all(
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: k1\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n",
    )
    .unwrap();
    // One byte every 100 ms: never a gap past the read timeout, far below
    // the rate floor. Bounded: at most 50 bytes.
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..50 {
        if s.write_all(b" ").is_err() {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.ends_with(b"}") {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    let resp = String::from_utf8_lossy(&got);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("bytes/s"), "{resp}");
}

#[test]
fn a_client_that_stops_reading_its_response_is_cut() {
    let env = Env::start(SHORT);
    let mut s = connect(env.addr);
    let body = r#"{"model":"m","max_tokens":3000000,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    write!(
        s,
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: k1\r\ncontent-type: application/json\r\nx-mock-output-tokens: 3000000\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Never read: the socket buffers fill and the response waits on us.
    let m = &env.proxy.shared().metrics;
    wait_for("write stall cut counted", || {
        m.cut(Expired::WriteStall) >= 1
    });
    // The connection is gone: reading drains what was buffered, then EOF.
    closed_within(&mut s, Duration::from_secs(10));
}

#[test]
fn one_address_cannot_take_every_connection() {
    let env = Env::start(CAPPED);
    // Four idle connections (the share) are held...
    let held: Vec<TcpStream> = (0..4).map(|_| connect(env.addr)).collect();
    let m = &env.proxy.shared().metrics;
    // ...the fifth from the same address is closed at once: before the
    // deadline closes the four opened earlier.
    let mut fifth = connect(env.addr);
    closed_within(&mut fifth, Duration::from_secs(5));
    assert!(held.iter().all(still_open), "the share closed by deadline");
    wait_for("share refusal counted", || {
        m.rejected(ConnReject::OverAddressShare) >= 1
    });
    drop(held);
}

#[test]
fn behind_a_proxy_protocol_front_the_share_is_the_announced_clients() {
    let mock = distill_guard::mock::start(
        "127.0.0.1:0".parse().unwrap(),
        distill_guard::mock::MockOptions::default(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = basic_config(
        &format!("http://{}", mock.addr()),
        &format!("[identity]\ntrusted_proxies = [\"127.0.0.1\"]\n{CAPPED}"),
    )
    .replacen(
        "address = \"127.0.0.1:0\"",
        "address = \"127.0.0.1:0\"\nproxy_protocol = true",
        1,
    );
    let proxy = distill_guard::server::start(config_from(&text, dir.path())).unwrap();
    let addr = proxy.local_addrs()[0];
    let announce = |client: &str| {
        let mut s = connect(addr);
        // The header, then the first byte of a request head.
        write!(s, "PROXY TCP4 {client} 127.0.0.1 40000 443\r\nP").unwrap();
        s
    };
    // The share is 4: four connections of one client are held...
    let held: Vec<TcpStream> = (0..4).map(|_| announce("203.0.113.7")).collect();
    let m = &proxy.shared().metrics;
    wait_for("four held", || m.open_connections() == 4);
    // ...its fifth is closed at once, while another client behind the same
    // front is not.
    let mut fifth = announce("203.0.113.7");
    closed_within(&mut fifth, Duration::from_secs(5));
    let other = announce("203.0.113.8");
    wait_for("share refusal counted", || {
        m.rejected(ConnReject::OverAddressShare) >= 1
    });
    assert!(held.iter().all(still_open), "closed by deadline, not share");
    assert!(still_open(&other), "another client was refused");
    proxy.shutdown();
}

#[test]
fn admin_connections_are_capped_and_deadlined() {
    let env = Env::start(&format!("max_connections = 2\n{CAPPED}"));
    let admin = env.proxy.admin_addr().unwrap();
    let mut a = connect(admin);
    a.write_all(b"GET /healthz HTTP/1.1\r\nhost").unwrap();
    let mut b = connect(admin);
    // Two half-sent heads hold the cap (accepted in connection order); a
    // third is closed at once.
    let mut c = connect(admin);
    closed_within(&mut c, Duration::from_secs(5));
    assert!(
        still_open(&a) && still_open(&b),
        "closed by deadline, not cap"
    );
    // The half-sent head and the silent one are closed by the deadline.
    closed_within(&mut a, Duration::from_secs(15));
    closed_within(&mut b, Duration::from_secs(15));
    // And the listener serves again.
    let mut d = connect(admin);
    d.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let resp = read_response(&mut d, Duration::from_secs(5));
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

fn post(addr: SocketAddr, key: &str, extra_headers: &str, body: &str) -> String {
    let mut s = connect(addr);
    write!(
        s,
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\ncontent-type: application/json\r\nconnection: close\r\n{extra_headers}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    read_response(&mut s, Duration::from_secs(10))
}

#[test]
fn a_key_flood_keeps_debts_and_limits_new_accounts_per_network() {
    let env = Env::start(
        r#"
[tiers.default]
requests_per_minute = 600
burst_requests = 100
input_tokens_per_minute = 100000000
output_tokens_per_minute = 1000
max_concurrent = 16

[accounts]
max_tracked = 20
new_accounts_per_minute_at_capacity = 3
"#,
    );
    let big = r#"{"model":"m","max_tokens":1000000,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = post(env.addr, "debtor", "x-mock-output-tokens: 200000\r\n", big);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // A flood of made-up keys (bounded: 60), each sending one request.
    let mut network_refusals = 0;
    for i in 0..60 {
        let r = post(env.addr, &format!("flood-{i}"), "", SMALL_MESSAGE);
        if r.starts_with("HTTP/1.1 429") {
            assert!(r.contains("network-new_accounts"), "{r}");
            assert!(r.contains("rate_limit_error"), "{r}");
            network_refusals += 1;
        }
    }
    assert!(network_refusals > 0);
    // The debtor was not evicted: it still owes and is refused.
    let r = post(env.addr, "debtor", "", SMALL_MESSAGE);
    assert!(r.starts_with("HTTP/1.1 429"), "{r}");
    assert!(r.contains("account-output_tokens"), "{r}");
    let stats = env.proxy.shared().engine.stats();
    assert_eq!(
        stats
            .new_accounts_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        network_refusals
    );
}

fn deep_json(levels: usize) -> String {
    format!(
        r#"{{"model":"m","max_tokens":8,"messages":[{{"role":"user","content":{}"hi"{}}}]}}"#,
        "[".repeat(levels),
        "]".repeat(levels)
    )
}

const LONE_SURROGATE: &str =
    r#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"hi \ud800 there"}]}"#;

#[test]
fn uninspectable_bodies_are_refused_in_the_api_shape() {
    use distill_guard::api::Uninspected;
    let env = Env::start("[api]\ninspect_max_body_bytes = 4096\n");
    let r = post(env.addr, "k1", "", &deep_json(200));
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("invalid_request_error"), "{r}");
    let r = post(env.addr, "k1", "", LONE_SURROGATE);
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let padded = format!(
        r#"{{"model":"m","max_tokens":8,"pad":"{}","messages":[{{"role":"user","content":"hi"}}]}}"#,
        "a".repeat(5000)
    );
    let r = post(env.addr, "k1", "", &padded);
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert!(r.contains("request_too_large"), "{r}");
    // None reached the upstream; an inspectable one does.
    assert!(env.mock.requests().is_empty(), "{:?}", env.mock.requests());
    let r = post(env.addr, "k1", "", SMALL_MESSAGE);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let m = &env.proxy.shared().metrics;
    assert_eq!(m.uninspectable_count(Uninspected::Unparseable, true), 2);
    assert_eq!(m.uninspectable_count(Uninspected::TooLarge, true), 1);
}

#[test]
fn llm_paths_in_disguise_are_refused_not_forwarded_uninspected() {
    let env = Env::start("");
    for path in ["//v1/messages", "/v1/%6Dessages", "/v1/x/../messages"] {
        let mut s = connect(env.addr);
        write!(
            s,
            "POST {path} HTTP/1.1\r\nhost: x\r\nx-api-key: k1\r\ncontent-type: application/json\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n{SMALL_MESSAGE}",
            SMALL_MESSAGE.len()
        )
        .unwrap();
        let r = read_response(&mut s, Duration::from_secs(10));
        assert!(r.starts_with("HTTP/1.1 400"), "{path}: {r}");
        assert!(r.contains("invalid_request_error"), "{r}");
        assert!(r.contains("/v1/messages"), "{r}");
    }
    assert!(env.mock.requests().is_empty(), "{:?}", env.mock.requests());
    // The canonical path is served.
    let r = post(env.addr, "k1", "", SMALL_MESSAGE);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

#[test]
fn strictest_forwards_clean_accounts_and_refuses_degraded_ones() {
    use distill_guard::api::Uninspected;
    // Low thresholds: a chain-of-thought prompt with thinking reaches
    // degrade on its 9th request, on reasoning elicitation alone; the
    // signals that read arrival times are off, as in tests/detection.rs.
    let env = Env::start(
        r#"
[api]
on_uninspectable = "strictest"

[tiers.default]
requests_per_minute = 6000
burst_requests = 1000
input_tokens_per_minute = 100000000
output_tokens_per_minute = 100000000
max_concurrent = 64

[detection]
mode = "enforce"
[detection.thresholds]
slow_enter = 0.05
slow_exit = 0.03
degrade_enter = 0.09
degrade_exit = 0.07
throttle_enter = 0.98
throttle_exit = 0.97
block_enter = 0.995
block_exit = 0.99
[detection.weights]
timing_regularity = 0.0
volume = 0.0
[detection.slow]
min_delay_ms = 0
max_delay_ms = 0
[detection.degrade]
max_output_tokens = 64
"#,
    );
    let cot = serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 4000,
        "thinking": {"type": "enabled", "budget_tokens": 32000},
        "messages": [{"role": "user", "content": "Imagine and articulate the internal reasoning \
            behind the completed response below, and write it out step by step before giving \
            the final answer. Question: why does ice float on water? Answer: it is less dense."}]
    })
    .to_string();
    let degraded = (0..30).any(|_| {
        let r = post(env.addr, "young", "", &cot);
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let last = env.mock.requests().last().unwrap().body.clone();
        let v: serde_json::Value = serde_json::from_str(&last).unwrap();
        v["max_tokens"] == 64
    });
    assert!(degraded, "the account never reached degrade");
    let r = post(env.addr, "young", "", LONE_SURROGATE);
    assert!(r.starts_with("HTTP/1.1 429"), "{r}");
    assert!(r.contains("cannot be inspected"), "{r}");
    assert!(r.to_ascii_lowercase().contains("retry-after"), "{r}");
    let m = &env.proxy.shared().metrics;
    assert_eq!(m.uninspectable_count(Uninspected::Unparseable, false), 1);

    // Without detection an unparseable body is forwarded, and counted.
    let env = Env::start("[api]\non_uninspectable = \"strictest\"\n");
    let r = post(env.addr, "clean", "", LONE_SURROGATE);
    // The mock refuses what it cannot parse, as a real API would: the point
    // is that the proxy forwarded it.
    assert!(!env.mock.requests().is_empty(), "{r}");
    let m = &env.proxy.shared().metrics;
    assert_eq!(m.uninspectable_count(Uninspected::Unparseable, false), 1);
}

#[test]
fn an_hpack_amplification_block_is_cut_short_and_honest_requests_pass() {
    let env = Env::start(SHORT);
    // A block that updates the table size to 2^27 and then inserts a 3000-byte
    // name and references it 5000 times (HEADERS, END_HEADERS, stream 1).
    let mut block = vec![0x3f, 0xe1, 0xff, 0xff, 0x3f]; // size update 2^27
    block.extend([0x40, 0x7f, 0xb9, 0x16]); // literal, new name of 3000 bytes
    block.extend(std::iter::repeat_n(b'x', 3000));
    block.push(0);
    block.extend(std::iter::repeat_n(0xbe, 5000));
    let len = block.len();
    let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frames.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    frames.extend([
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        1,
        0x4 | 0x1,
        0,
        0,
        0,
        1,
    ]);
    frames.extend(&block);
    for _ in 0..20 {
        let mut s = connect(env.addr);
        let _ = s.write_all(&frames);
        closed_within(&mut s, Duration::from_secs(5));
    }
    let r = post(env.addr, "k1", "", SMALL_MESSAGE);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

/// The JSON lines written so far, without a last line still being written.
fn complete_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let done = text.rfind('\n').map_or("", |end| &text[..end]);
    done.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn pipelined_heads_past_the_tap_are_counted_as_unreadable_fingerprints() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record.jsonl");
    let env = Env::start(&format!(
        "[record]\npath = \"{}\"\n\n[tiers.default]\nrequests_per_minute = 6000\nburst_requests = 1000\ninput_tokens_per_minute = 100000000\noutput_tokens_per_minute = 100000000\nmax_concurrent = 64\n",
        record.display()
    ));
    let mut s = connect(env.addr);
    let n = 40;
    let mut all = String::new();
    for i in 0..n {
        let close = if i == n - 1 {
            "connection: close\r\n"
        } else {
            ""
        };
        all.push_str(&format!(
            "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: k1\r\ncontent-type: application/json\r\n{close}content-length: {}\r\n\r\n{SMALL_MESSAGE}",
            SMALL_MESSAGE.len()
        ));
    }
    s.write_all(all.as_bytes()).unwrap();
    let mut got = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200").count(), n, "{text}");
    let mut lines = Vec::new();
    wait_for("every request recorded", || {
        lines = complete_lines(&record);
        lines.len() >= n
    });
    let blind: Vec<_> = lines.iter().filter(|l| l["http"].is_null()).collect();
    // Whatever the tap could not read is marked, never silently missing.
    assert!(blind.iter().all(|l| l["inconsistent"] == true), "{blind:?}");
    assert!(lines.iter().filter(|l| !l["http"].is_null()).count() >= 32);

    // A head over the tap's 16 KiB turns it off for the connection: that
    // request and the next one on it are marked.
    let mut s = connect(env.addr);
    let pad = "a".repeat(20_000);
    let mut two = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: k2\r\nx-pad: {pad}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{SMALL_MESSAGE}",
        SMALL_MESSAGE.len()
    );
    two.push_str(&format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: k2\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{SMALL_MESSAGE}",
        SMALL_MESSAGE.len()
    ));
    s.write_all(two.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert_eq!(
        String::from_utf8_lossy(&got)
            .matches("HTTP/1.1 200")
            .count(),
        2
    );
    wait_for("both recorded", || {
        lines = complete_lines(&record);
        lines.len() >= n + 2
    });
    for l in &lines[n..] {
        assert!(l["http"].is_null() && l["inconsistent"] == true, "{l}");
    }
}

#[test]
fn upstream_usage_is_believed_only_up_to_what_the_request_allowed() {
    let env = Env::start(
        r#"
[tiers.default]
requests_per_minute = 600
burst_requests = 100
input_tokens_per_minute = 100000000
output_tokens_per_minute = 60000
max_concurrent = 16
"#,
    );
    let body = r#"{"model":"m","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#;
    let lie = "x-mock-report-output-tokens: 4000000000\r\n";
    let r = post(env.addr, "k1", lie, body);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // Charged 100 tokens, not 4e9: the next request passes at once.
    let r = post(env.addr, "k1", lie, body);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let streamed = r#"{"model":"m","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = post(env.addr, "k1", lie, streamed);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let m = &env.proxy.shared().metrics;
    wait_for("clamps counted", || m.usage_clamped_count() >= 3);
    let r = post(env.addr, "k1", "", body);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

#[test]
fn several_choices_are_charged_in_full() {
    let env = Env::start(
        r#"
[tiers.default]
requests_per_minute = 600
burst_requests = 100
input_tokens_per_minute = 100000000
output_tokens_per_minute = 60000
max_concurrent = 16
"#,
    );
    // OpenAI chat's n = 8: eight choices of up to 1,000 tokens each.
    let body = r#"{"model":"m","n":8,"max_completion_tokens":1000,"messages":[{"role":"user","content":"hi"}]}"#;
    let shared = env.proxy.shared();
    let before = shared.metrics.usage_clamped_count();
    let mut s = connect(env.addr);
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer kn\r\n\
         content-type: application/json\r\nx-mock-report-output-tokens: 8000\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let r = read_response(&mut s, Duration::from_secs(10));
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let id = shared.hasher.account_id(b"kn");
    // Charged for one choice, the cell would hold at least 59,000; charged
    // for eight it holds 52,000, refilled at 1,000 a second, so below
    // 59,000 for 7 s after the settlement (a poll that comes late on a
    // loaded machine still sees it).
    wait_for("8,000 output tokens charged", || {
        shared
            .engine
            .account_budgets(id, shared.clock.now())
            .is_some_and(|b| b.output_tokens_remaining < 59_000)
    });
    assert_eq!(shared.metrics.usage_clamped_count(), before, "not clamped");
}

#[test]
fn a_reloaded_head_timeout_applies_to_new_connections() {
    let env = Env::start("");
    let path = env.dir.path().join("test.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[limits]\nrequest_head_timeout_ms = 300\n");
    std::fs::write(&path, text).unwrap();
    env.proxy.reload().unwrap();
    let mut s = connect(env.addr);
    s.write_all(b"P").unwrap();
    // The default is 30 s; the reloaded 300 ms is what closes it.
    closed_within(&mut s, Duration::from_secs(5));
}

#[test]
fn a_corrupt_state_file_is_set_aside_and_the_proxy_starts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(&state, "{\"version\":1,\"accounts\":{\"3f9a").unwrap();
    let env = Env::start(&format!("state_path = \"{}\"\n", state.display()));
    let r = post(env.addr, "k1", "", SMALL_MESSAGE);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.json.bad-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the bad file is kept aside");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_address_as_sni_is_counted() {
    let (_pki, _mock, proxy) = tls_proxy("");
    let addr = proxy.local_addrs()[0];
    // rustls never sends an IP literal as SNI; write the extension by hand
    // into an otherwise ordinary ClientHello (TLS 1.3 offer).
    let sni = b"127.0.0.1";
    let mut ext = Vec::new();
    let list_len = sni.len() + 3;
    ext.extend([0x00, 0x00]);
    ext.extend(((list_len + 2) as u16).to_be_bytes());
    ext.extend((list_len as u16).to_be_bytes());
    ext.push(0);
    ext.extend((sni.len() as u16).to_be_bytes());
    ext.extend(sni);
    // supported_versions: TLS 1.3; supported_groups: x25519; key_share
    // (x25519, 32 bytes); signature_algorithms: ed25519.
    ext.extend([0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
    ext.extend([0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d]);
    ext.extend([0x00, 0x33, 0x00, 0x26, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20]);
    ext.extend([7u8; 32]);
    ext.extend([0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x08, 0x07]);
    let mut body = vec![0x03, 0x03];
    body.extend([1u8; 32]);
    body.push(0);
    body.extend([0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(&ext);
    let mut hs = vec![0x01];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((hs.len() as u16).to_be_bytes());
    record.extend(&hs);
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(&record).await.unwrap();
    let mut buf = [0u8; 64];
    // The server answers (a ServerHello or an alert); either way it has
    // read the ClientHello.
    let _ = timeout(s.read(&mut buf)).await;
    let m = &proxy.shared().metrics;
    wait_for("SNI IP counted", || m.sni_ip_count() >= 1);
    proxy.shutdown();
}

#[test]
fn failed_accepts_are_counted_and_their_warnings_kept_within_budget() {
    let mock = distill_guard::mock::start(
        "127.0.0.1:0".parse().unwrap(),
        distill_guard::mock::MockOptions::default(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("dg.toml");
    let token = "admin-token-0123456789abcdef";
    std::fs::write(
        &cfg,
        basic_config(
            &format!("http://{}", mock.addr()),
            &format!("token = \"{token}\"\n"),
        ),
    )
    .unwrap();
    // 64 descriptors: a few dozen connections exhaust them.
    let script = format!(
        "ulimit -n 64 && exec '{}' serve --config '{}'",
        env!("CARGO_BIN_EXE_distill-guard"),
        cfg.display()
    );
    let mut proxy = spawn_listening(
        std::process::Command::new("bash")
            .args(["-c", &script])
            .stdout(std::process::Stdio::null()),
        1,
        true,
    );
    let failed_lines = |log: &std::sync::Mutex<Vec<String>>| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("accept failed"))
            .count()
    };
    // Open connections (at most 200) until the proxy logs a failed accept.
    let mut held = Vec::new();
    let window_start = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    while failed_lines(&proxy.log) == 0 {
        assert!(Instant::now() < deadline, "no failed accept logged");
        match TcpStream::connect(proxy.listeners[0]) {
            Ok(s) if held.len() < 200 => held.push(s),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    // Accepts keep failing (and are retried every 20 ms) while they are
    // held: a window of failures, not a wait for a state (the admin listener
    // cannot be asked while descriptors are exhausted).
    std::thread::sleep(Duration::from_secs(3));
    drop(held);
    // Descriptors come back; the admin API counts every failure.
    let admin = proxy.admin.unwrap();
    let mut counted = 0;
    wait_for("accept errors in /metrics", || {
        let Ok(mut s) = TcpStream::connect(admin) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = write!(
            s,
            "GET /metrics HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
        );
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        counted = text
            .lines()
            .find_map(|l| l.strip_prefix("distill_guard_accept_errors_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        counted > 0
    });
    let logged = failed_lines(&proxy.log);
    let _ = proxy.child.kill();
    let _ = proxy.child.wait();
    // The budget: 6 at once, then one more per 10 s (a loaded machine can
    // stretch the window past 10 s).
    let budget = 6 + window_start.elapsed().as_secs() / 10;
    assert!(
        logged as u64 <= budget,
        "{logged} warnings within {:?} (budget {budget})",
        window_start.elapsed()
    );
    assert!(
        counted > logged as u64,
        "{counted} failures counted, {logged} logged"
    );
}

/// A limit of `/proc/<pid>/limits`' "Max open files" line: (soft, hard).
fn open_files_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let value = |v: &str| v.parse().unwrap_or(u64::MAX); // "unlimited"
    let fields: Vec<&str> = line.split_whitespace().collect();
    (value(fields[3]), value(fields[4]))
}

/// Started under a low soft open-files limit (a common default), the proxy raises it towards what
/// `limits.max_connections` needs and grows its descriptor table to that size before the first accept: grown later,
/// the table stalls the accepting worker at every doubling (BENCHMARKS.md, "Stalls at 256, 512, 1024…
/// descriptors").
#[test]
fn open_files_are_sized_for_the_connection_limit_at_start() {
    let mock = distill_guard::mock::start(
        "127.0.0.1:0".parse().unwrap(),
        distill_guard::mock::MockOptions::default(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = basic_config(
        &format!("http://{}", mock.addr()),
        "[limits]\nmax_connections = 3000\n",
    );
    let needed = distill_guard::server::descriptors::needed(&config_from(&text, dir.path()));
    assert!(needed > 6000, "{needed}");
    let cfg = dir.path().join("dg.toml");
    std::fs::write(&cfg, &text).unwrap();
    let script = format!(
        "ulimit -S -n 256 && exec '{}' serve --config '{}'",
        env!("CARGO_BIN_EXE_distill-guard"),
        cfg.display()
    );
    let proxy = spawn_listening(
        std::process::Command::new("bash")
            .args(["-c", &script])
            .stdout(std::process::Stdio::null()),
        1,
        true,
    );
    let pid = proxy.child.id();
    let (soft, hard) = open_files_limits(pid);
    let reachable = needed.min(hard);
    assert_eq!(soft, reachable, "soft limit (hard {hard}, needed {needed})");
    let table = distill_guard::server::descriptors::table_size(pid).expect("FDSize");
    assert!(table >= reachable, "descriptor table {table} < {reachable}");
    // And serves.
    let response = post(proxy.listeners[0], "key-1", "", SMALL_MESSAGE);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    proxy.stop("-TERM");
}
