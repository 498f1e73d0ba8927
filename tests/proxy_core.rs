//! End-to-end tests of the proxy core over real sockets: HTTP/1.1, HTTP/2,
//! TLS, streaming, limits, upstream failures, header hygiene.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_request_round_trips_with_request_id_and_header_hygiene() {
    let env = Env::start("");
    let req = Request::post(env.url("/v1/messages?beta=true"))
        .header("content-type", "application/json")
        .header("x-api-key", "k1")
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "203.0.113.9")
        .body(Full::new(Bytes::from(SMALL_MESSAGE)))
        .unwrap();
    let resp = timeout(client().request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(rid.len(), 32);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v = body_json(resp).await;
    assert_eq!(v["usage"]["output_tokens"], 8);

    let seen = env.mock.requests();
    let last = seen.last().unwrap();
    assert_eq!(last.path, "/v1/messages?beta=true");
    let h = |n: &str| {
        last.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(h("x-request-id").as_deref(), Some(rid.as_str()));
    assert_eq!(
        h("x-forwarded-for").as_deref(),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(h("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(h("x-api-key").as_deref(), Some("k1"));
    assert_eq!(h("host"), Some(env.mock.addr().to_string()));
    assert_eq!(h("x-drop-me"), None);
    assert_eq!(h("keep-alive"), None);
    assert_eq!(last.body, SMALL_MESSAGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_request_id_is_kept() {
    let env = Env::start("");
    let mut req = messages_request(&env.url("/v1/messages"), SMALL_MESSAGE);
    req.headers_mut()
        .insert("x-request-id", "my-trace-42".parse().unwrap());
    let resp = timeout(client().request(req)).await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "my-trace-42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_reaches_an_http1_upstream() {
    let env = Env::start("");
    let resp =
        timeout(h2_client().request(messages_request(&env.url("/v1/messages"), SMALL_MESSAGE)))
            .await
            .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let v = body_json(resp).await;
    assert_eq!(v["type"], "message");
    let seen = env.mock.requests();
    assert!(seen
        .last()
        .unwrap()
        .headers
        .iter()
        .any(|(k, v)| k == "host" && *v == env.mock.addr().to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_h2_and_http1_and_https_upstream_uses_extra_ca() {
    let pki = TestPki::new();
    let mock =
        distill_guard::mock::start("127.0.0.1:0".parse().unwrap(), Default::default()).unwrap();
    // Proxy A: TLS listener in front of the mock.
    let tls_cfg = pki.listener_config(mock.addr(), "");
    let a = distill_guard::server::start(config_from(&tls_cfg, pki.dir.path())).unwrap();
    let a_addr = a.local_addrs()[0];

    for h2 in [true, false] {
        let c = tls_client(&pki, h2);
        let url = format!("https://localhost:{}/v1/messages", a_addr.port());
        let resp = timeout(c.request(messages_request(&url, SMALL_MESSAGE)))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let want = if h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        assert_eq!(resp.version(), want);
        let _ = body_json(resp).await;
    }
    let proto = mock.requests().last().unwrap().headers.clone();
    assert!(proto
        .iter()
        .any(|(k, v)| k == "x-forwarded-proto" && v == "https"));

    // Proxy B: plain listener whose upstream is https://localhost:A, trusting the test CA.
    let dir = tempfile::tempdir().unwrap();
    let b_cfg = format!(
        r#"
[[listener]]
address = "127.0.0.1:0"

[upstream]
url = "https://localhost:{}"
ca_path = "{}"

[server]
workers = 1

[admin]
address = "127.0.0.1:0"
"#,
        a_addr.port(),
        pki.ca_pem.display()
    );
    let b = distill_guard::server::start(config_from(&b_cfg, dir.path())).unwrap();
    let url = format!("http://{}/v1/messages", b.local_addrs()[0]);
    let resp = timeout(client().request(messages_request(&url, SMALL_MESSAGE)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v = body_json(resp).await;
    assert_eq!(v["usage"]["output_tokens"], 8);
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_unknown_ca_is_a_502() {
    let pki = TestPki::new();
    let mock =
        distill_guard::mock::start("127.0.0.1:0".parse().unwrap(), Default::default()).unwrap();
    let tls_cfg = pki.listener_config(mock.addr(), "");
    let a = distill_guard::server::start(config_from(&tls_cfg, pki.dir.path())).unwrap();
    let env_b = {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config_from(
            &basic_config(
                &format!("https://localhost:{}", a.local_addrs()[0].port()),
                "",
            ),
            dir.path(),
        );
        distill_guard::server::start(cfg).unwrap()
    };
    let url = format!("http://{}/v1/messages", env_b.local_addrs()[0]);
    let resp = timeout(client().request(messages_request(&url, SMALL_MESSAGE)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let v = body_json(resp).await;
    assert_eq!(v["type"], "error");
    a.shutdown();
    env_b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_reaches_the_client_event_by_event() {
    let env = Env::start("");
    for (path, body) in [
        (
            "/v1/messages",
            r#"{"model":"m","max_tokens":40,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"m","max_tokens":40,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        ),
    ] {
        let mut req = messages_request(&env.url(path), body);
        req.headers_mut()
            .insert("x-mock-pause-after-first-ms", "500".parse().unwrap());
        let start = Instant::now();
        let resp = timeout(client().request(req)).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = resp.into_body();
        let first = timeout(body.frame()).await.unwrap().unwrap();
        let first_at = start.elapsed();
        let first = first.into_data().unwrap();
        assert!(first.starts_with(b"event: message_start") || first.starts_with(b"data: {"));
        let mut rest = Vec::new();
        while let Some(f) = timeout(body.frame()).await {
            if let Ok(d) = f.unwrap().into_data() {
                rest.extend_from_slice(&d);
            }
        }
        let done_at = start.elapsed();
        assert!(
            first_at < Duration::from_millis(400),
            "first event after {first_at:?}: the stream was buffered"
        );
        assert!(
            done_at >= Duration::from_millis(500),
            "done after {done_at:?}"
        );
        let rest = String::from_utf8(rest).unwrap();
        assert!(
            rest.contains("message_stop") || rest.contains("[DONE]"),
            "{rest}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_in_the_api_shape() {
    let env = Env::start("[limits]\nmax_request_body_bytes = 1000\n");
    // Declared too large.
    let big = "x".repeat(5000);
    let resp = timeout(client().request(messages_request(&env.url("/v1/chat/completions"), &big)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert!(resp.headers().contains_key("x-request-id"));
    let v = body_json(resp).await;
    assert_eq!(v["error"]["code"], "request_too_large");

    // Chunked, no content-length: cut off while streaming upstream.
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = (0..10)
        .map(|_| Ok(http_body::Frame::data(Bytes::from(vec![b'a'; 500]))))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::StreamBody<_>>();
    let req = Request::post(env.url("/v1/messages"))
        .header("content-type", "application/json")
        .header("x-api-key", "k")
        .body(body)
        .unwrap();
    let resp = timeout(c.request(req)).await.unwrap();
    assert_eq!(resp.status(), 413);
    let v = body_json(resp).await;
    assert_eq!(v["error"]["type"], "request_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refusing_connections_is_a_fast_502() {
    // Bind then drop: nothing listens on that port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let proxy = distill_guard::server::start(config_from(
        &basic_config(&format!("http://127.0.0.1:{port}"), ""),
        dir.path(),
    ))
    .unwrap();
    let base = format!("http://{}", proxy.local_addrs()[0]);
    let start = Instant::now();
    let resp = timeout(client().request(messages_request(
        &format!("{base}/v1/messages"),
        SMALL_MESSAGE,
    )))
    .await
    .unwrap();
    assert_eq!(resp.status(), 502);
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(resp.headers().contains_key("x-request-id"));
    let v = body_json(resp).await;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "api_error");

    let resp = timeout(client().request(messages_request(
        &format!("{base}/v1/chat/completions"),
        SMALL_MESSAGE,
    )))
    .await
    .unwrap();
    assert_eq!(resp.status(), 502);
    let v = body_json(resp).await;
    assert!(v["error"]["message"].is_string());
    assert_eq!(v["error"]["type"], "server_error");
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_upstream_is_a_504_after_the_first_byte_timeout() {
    // Accepts connections, reads, never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = vec![];
        for s in silent.incoming().take(4) {
            held.push(s);
        }
        std::thread::sleep(Duration::from_secs(10));
    });
    let dir = tempfile::tempdir().unwrap();
    let text = basic_config(&format!("http://127.0.0.1:{port}"), "").replace(
        "first_byte_timeout_ms = 2000",
        "first_byte_timeout_ms = 300",
    );
    let proxy = distill_guard::server::start(config_from(&text, dir.path())).unwrap();
    let url = format!("http://{}/v1/responses", proxy.local_addrs()[0]);
    let start = Instant::now();
    let resp = timeout(client().request(messages_request(&url, SMALL_MESSAGE)))
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(resp.status(), 504);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let v = body_json(resp).await;
    assert_eq!(v["error"]["code"], "timeout");
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_going_idle_mid_stream_ends_the_stream() {
    let env = Env::start("");
    let mut req = messages_request(
        &env.url("/v1/messages"),
        r#"{"model":"m","max_tokens":40,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    // idle_timeout_ms = 2000 in basic_config; the mock pauses 3 s after the first event.
    req.headers_mut()
        .insert("x-mock-pause-after-first-ms", "3000".parse().unwrap());
    let start = Instant::now();
    let resp = timeout(client().request(req)).await.unwrap();
    let mut body = resp.into_body();
    let _first = timeout(body.frame()).await.unwrap().unwrap();
    let mut failed = false;
    while let Some(f) = timeout(body.frame()).await {
        if f.is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "the stream should end with an error, not complete");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(2900),
        "{took:?}"
    );
}

/// Read until EOF or error; returns what was read.
fn read_all(s: &mut TcpStream) -> Vec<u8> {
    read_to_close(s).0
}

/// Read until EOF or error; returns what was read and whether the peer
/// closed (EOF or reset) rather than the read timeout running out.
fn read_to_close(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut out = vec![];
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Err(e) => {
                let timed_out = matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
                return (out, !timed_out);
            }
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn slow_header_client_is_cut_off() {
    let env = Env::start("[limits]\nrequest_head_timeout_ms = 500\nhandshake_timeout_ms = 500\n");
    let mut s = TcpStream::connect(env.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}";
    let start = Instant::now();
    let mut cut = false;
    for b in head.iter() {
        if s.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if start.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let (got, closed) = read_to_close(&mut s);
    assert!(
        cut || !String::from_utf8_lossy(&got).contains("200 OK"),
        "a 1-byte-per-100ms client was served: {}",
        String::from_utf8_lossy(&got)
    );
    assert!(cut || closed, "the proxy did not close the slow client");

    // A connection that says nothing is closed at the handshake deadline.
    let mut idle = TcpStream::connect(env.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (got, closed) = read_to_close(&mut idle);
    assert!(got.is_empty());
    assert!(closed, "a silent connection outlived the deadline");
}

/// Poll `f` until it holds; panics after 10 s.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn connections_over_the_cap_are_closed() {
    let env = Env::start("[limits]\nmax_connections = 2\n");
    let mut held = vec![];
    for _ in 0..2 {
        let mut s = TcpStream::connect(env.addr).unwrap();
        s.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n")
            .unwrap(); // head not finished
        held.push(s);
    }
    let m = &env.proxy.shared().metrics;
    wait_until("both connections accepted", || m.open_connections() == 2);
    let mut third = TcpStream::connect(env.addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let _ = third.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n");
    let got = read_all(&mut third);
    assert!(
        got.is_empty(),
        "over-cap connection was served: {}",
        String::from_utf8_lossy(&got)
    );
    drop(held);
    wait_until("the held connections closed", || m.open_connections() == 0);
    // Capacity is back.
    let mut fourth = TcpStream::connect(env.addr).unwrap();
    fourth
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    fourth
        .write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let got = String::from_utf8_lossy(&read_all(&mut fourth)).to_string();
    assert!(got.starts_with("HTTP/1.1 401"), "{got}");
}

#[test]
fn garbage_input_never_takes_the_proxy_down() {
    let env = Env::start("[limits]\nrequest_head_timeout_ms = 500\n");
    let inputs: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02\x03".to_vec(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        b"POST /v1/messages HTTP/1.1\r\ncontent-length: -5\r\n\r\n".to_vec(),
        b"POST /v1/messages HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
        b"\x16\x03\x01\x00\x05hello".to_vec(),
        vec![b'A'; 100_000],
    ];
    for input in inputs {
        let mut s = TcpStream::connect(env.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = s.write_all(&input);
        let _ = read_all(&mut s);
    }
    let mut s = TcpStream::connect(env.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let got = String::from_utf8_lossy(&read_all(&mut s)).to_string();
    assert!(got.starts_with("HTTP/1.1 401"), "{got}");
}
