//! The client against upstreams scripted byte by byte on loopback sockets:
//! reuse, the pool's expiry, every body framing, bodies cut short, and
//! pooled connections the upstream closed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{Client, Failure, Target};
use crate::proxy::body::RequestBody;

/// What the scripted upstream does with one request on a connection.
#[derive(Clone, Copy)]
enum Answer {
    /// Write these bytes and keep the connection.
    Write(&'static [u8]),
    /// Write these bytes in pieces, 20 ms apart, and keep the connection.
    Pieces(&'static [&'static [u8]]),
    /// Write these bytes, then close.
    WriteAndClose(&'static [u8]),
    /// Close without answering.
    Close,
}

/// An upstream on loopback: the n-th request it reads (over all
/// connections) gets `answers[n]`. Returns its address, the number of
/// connections accepted, and each request as read (head and body).
async fn upstream(
    answers: &'static [Answer],
) -> (
    std::net::SocketAddr,
    Arc<AtomicUsize>,
    mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::unbounded_channel();
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let served = served.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(req) = read_request(&mut s).await {
                    let n = served.fetch_add(1, Ordering::SeqCst);
                    let _ = tx.send(req);
                    match answers.get(n).copied().unwrap_or(Answer::Close) {
                        Answer::Write(b) => s.write_all(b).await.unwrap(),
                        Answer::Pieces(ps) => {
                            for p in ps {
                                s.write_all(p).await.unwrap();
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                        Answer::WriteAndClose(b) => {
                            s.write_all(b).await.unwrap();
                            return;
                        }
                        Answer::Close => return,
                    }
                }
            });
        }
    });
    (addr, accepted, rx)
}

/// One request from the socket: its head, and its body by content-length
/// or chunked (kept as sent, framing and all). None at end of stream.
async fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut body = buf[head_end..].to_vec();
    let lower = head.to_ascii_lowercase();
    let done = |b: &[u8]| {
        if let Some(l) = lower.split("content-length: ").nth(1) {
            let n: usize = l.split("\r\n").next().unwrap().parse().unwrap();
            b.len() >= n
        } else if lower.contains("transfer-encoding: chunked") {
            b.ends_with(b"0\r\n\r\n")
        } else {
            true
        }
    };
    while !done(&body) {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, body))
}

fn client() -> Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    Client::new(Arc::new(tls))
}

fn target(addr: std::net::SocketAddr, idle: Duration) -> Target {
    Target {
        https: false,
        authority: addr.to_string().parse().unwrap(),
        connect_timeout: Duration::from_secs(5),
        pool_idle_timeout: idle,
    }
}

fn post(body: &'static str) -> Request<RequestBody> {
    Request::builder()
        .method(Method::POST)
        .uri("/v1/messages")
        .header("host", "upstream")
        .body(RequestBody::Full(Some(Bytes::from_static(body.as_bytes()))))
        .unwrap()
}

async fn text(resp: http::Response<super::Body>) -> Result<String, std::io::Error> {
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8(bytes.to_vec()).unwrap())
}

/// Poll `f` until it holds, for at most five seconds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_connection_is_reused_and_closed_when_its_idle_time_is_up() {
    static ANSWERS: [Answer; 2] = [
        Answer::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst"),
        Answer::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond"),
    ];
    let (addr, accepted, mut seen) = upstream(&ANSWERS).await;
    let c = client();
    let t = target(addr, Duration::from_millis(300));
    let r = c.send(post("{\"a\":1}"), t.clone()).await.unwrap();
    assert_eq!(text(r).await.unwrap(), "first");
    let (head, body) = seen.recv().await.unwrap();
    assert!(head.starts_with("POST /v1/messages HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("content-length: 7\r\n"), "{head}");
    assert_eq!(body, b"{\"a\":1}");
    assert_eq!(c.idle(), 1, "the connection went back to the pool");
    let r = c.send(post("{}"), t).await.unwrap();
    assert_eq!(text(r).await.unwrap(), "second");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection for both"
    );
    // Parked again; the sweep closes it once its idle time is up.
    eventually("the idle connection is closed", || c.idle() == 0).await;
}

#[tokio::test]
async fn chunked_bodies_arrive_piece_by_piece_and_close_delimited_ones_whole() {
    static ANSWERS: [Answer; 2] = [
        Answer::Pieces(&[
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            b"6\r\nevent1\r\n",
            b"6\r\nevent2\r\n0\r\n\r\n",
        ]),
        Answer::WriteAndClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"),
    ];
    let (addr, accepted, _seen) = upstream(&ANSWERS).await;
    let c = client();
    let t = target(addr, Duration::from_secs(60));
    let r = c.send(post("{}"), t.clone()).await.unwrap();
    let mut body = r.into_body();
    let mut frames = Vec::new();
    while let Some(f) = body.frame().await {
        frames.push(f.unwrap().into_data().unwrap());
    }
    assert_eq!(frames, [&b"event1"[..], b"event2"], "one frame per piece");
    assert_eq!(c.idle(), 1);
    let r = c.send(post("{}"), t).await.unwrap();
    assert_eq!(text(r).await.unwrap(), "until the end");
    assert_eq!(
        c.idle(),
        0,
        "a body delimited by close leaves nothing to reuse"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_and_its_connection_is_not_reused() {
    static ANSWERS: [Answer; 2] = [
        Answer::WriteAndClose(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nonly"),
        Answer::WriteAndClose(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nonly\r\n",
        ),
    ];
    let (addr, _, _seen) = upstream(&ANSWERS).await;
    let c = client();
    let t = target(addr, Duration::from_secs(60));
    for _ in 0..2 {
        let r = c.send(post("{}"), t.clone()).await.unwrap();
        let e = text(r).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
        assert_eq!(c.idle(), 0);
    }
}

#[tokio::test]
async fn bytes_after_the_end_of_a_body_keep_its_connection_out_of_the_pool() {
    static ANSWERS: [Answer; 1] = [Answer::Write(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
    )];
    let (addr, _, _seen) = upstream(&ANSWERS).await;
    let c = client();
    let r = c
        .send(post("{}"), target(addr, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(text(r).await.unwrap(), "ok");
    assert_eq!(c.idle(), 0);
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_replaced() {
    static ANSWERS: [Answer; 2] = [
        Answer::WriteAndClose(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na"),
        Answer::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb"),
    ];
    let (addr, accepted, _seen) = upstream(&ANSWERS).await;
    let c = client();
    let t = target(addr, Duration::from_secs(60));
    // The head promises keep-alive, so the connection is parked; then the
    // upstream closes it.
    let r = c.send(post("{}"), t.clone()).await.unwrap();
    assert_eq!(text(r).await.unwrap(), "a");
    assert_eq!(c.idle(), 1);
    let r = c.send(post("{}"), t).await.unwrap();
    assert_eq!(text(r).await.unwrap(), "b");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_lost_to_a_closing_connection_is_sent_again_when_it_can_be() {
    static ANSWERS: [Answer; 5] = [
        Answer::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na"),
        // Read, then closed unanswered: the race of a keep-alive timeout.
        Answer::Close,
        Answer::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb"),
        Answer::Close,
        Answer::Close,
    ];
    let (addr, accepted, mut seen) = upstream(&ANSWERS).await;
    let c = client();
    let t = target(addr, Duration::from_secs(60));
    let r = c.send(post("{\"n\":1}"), t.clone()).await.unwrap();
    assert_eq!(text(r).await.unwrap(), "a");
    let r = c.send(post("{\"n\":2}"), t.clone()).await.unwrap();
    assert_eq!(
        text(r).await.unwrap(),
        "b",
        "sent again on a new connection"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    let bodies: Vec<Vec<u8>> = (0..3).map(|_| seen.try_recv().unwrap().1).collect();
    assert_eq!(bodies[1], bodies[2], "the same body both times");
    // A streamed body cannot be sent again: the failure is reported.
    let stream = Full::new(Bytes::from_static(b"{}"))
        .map_err(|e| match e {})
        .boxed_unsync();
    let req = Request::builder()
        .method(Method::POST)
        .uri("/")
        .body(RequestBody::Stream {
            prefix: None,
            rest: stream,
            remaining: 1 << 20,
            limit: 1 << 20,
        })
        .unwrap();
    let e = c.send(req, t).await.unwrap_err();
    assert!(matches!(e, Failure::Closed), "{e}");
}

#[tokio::test]
async fn a_streamed_body_without_a_length_goes_chunked() {
    static ANSWERS: [Answer; 1] = [Answer::Write(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    )];
    let (addr, _, mut seen) = upstream(&ANSWERS).await;
    let c = client();
    let stream = Full::new(Bytes::from_static(b"rest"))
        .map_err(|e| match e {})
        .boxed_unsync();
    let req = Request::builder()
        .method(Method::POST)
        .uri("/upload")
        .body(RequestBody::Stream {
            prefix: Some(Bytes::from_static(b"prefix-")),
            rest: stream,
            remaining: 1 << 20,
            limit: 1 << 20,
        })
        .unwrap();
    let r = c
        .send(req, target(addr, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(text(r).await.unwrap(), "ok");
    let (head, body) = seen.recv().await.unwrap();
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert_eq!(body, b"7\r\nprefix-\r\n4\r\nrest\r\n0\r\n\r\n");
}

#[tokio::test]
async fn a_refused_connection_and_an_unanswered_one_are_told_apart() {
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let e = client()
        .send(post("{}"), target(addr, Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert!(matches!(e, Failure::Connect { .. }), "{e}");
    static ANSWERS: [Answer; 1] = [Answer::Write(b"garbage\r\n\r\n")];
    let (addr, _, _seen) = upstream(&ANSWERS).await;
    let e = client()
        .send(post("{}"), target(addr, Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert!(matches!(e, Failure::Head(_)), "{e}");
}
