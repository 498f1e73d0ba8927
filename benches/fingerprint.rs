//! Fingerprint hot paths: parse + JA4 of a Chrome ClientHello (once per TLS
//! connection) and the HTTP/1 fingerprint of a typical request head (once
//! per request). Baseline beside each: the work it cannot avoid (finding the
//! hello's length; httparse alone).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use distill_guard::fingerprint::h2::H2Tap;
use distill_guard::fingerprint::http::H1Tap;
use distill_guard::fingerprint::tls;
use std::hint::black_box;

fn chrome_hello() -> Vec<u8> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/ja4/client_hellos.jsonl"
    ))
    .expect("../shared/testdata beside the project");
    // tls-handshake.pcapng stream 0: a Chrome hello (GREASE, ALPS, 16 extensions).
    let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(v["ja4"].as_str().unwrap().starts_with("t13d1516h2"));
    let hex = v["record_hex"].as_str().unwrap();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

const HEAD: &[u8] = b"POST /v1/messages HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: Anthropic/Python 0.40.0\r\n\
Accept: application/json\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n\
Content-Type: application/json\r\nAnthropic-Version: 2023-06-01\r\nX-Api-Key: sk-ant-xxxxxxxxxxxxxxxx\r\n\
X-Stainless-Lang: python\r\nContent-Length: 2\r\n\r\n{}";

fn benches(c: &mut Criterion) {
    let hello = chrome_hello();
    let mut g = c.benchmark_group("tls");
    g.bench_function("hello_length_only (baseline)", |b| {
        b.iter(|| tls::client_hello_progress(black_box(&hello), tls::MAX_CLIENT_HELLO_LEN))
    });
    g.bench_function("parse+ja4 (chrome)", |b| {
        b.iter(|| {
            let h = tls::parse_client_hello(black_box(&hello)).unwrap();
            tls::ja4_fingerprint(&h)
        })
    });
    g.bench_function("parse+ja4+ja4_r+ja4_o+ja4_ro (chrome)", |b| {
        b.iter(|| {
            let h = tls::parse_client_hello(black_box(&hello)).unwrap();
            tls::ja4(&h)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("http");
    g.bench_function("httparse only (baseline)", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            req.parse(black_box(HEAD)).unwrap().is_complete()
        })
    });
    g.bench_function("h1 tap + fingerprint (10 headers)", |b| {
        b.iter(|| {
            let mut tap = H1Tap::new(16 * 1024);
            tap.feed(black_box(HEAD));
            tap.pop().unwrap()
        })
    });
    // An HTTP/2 client preface + SETTINGS + WINDOW_UPDATE + HEADERS (hyper's client).
    let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2.extend_from_slice(&[
        0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 4, 0, 0x60, 0, 0,
    ]);
    h2.extend_from_slice(&[0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0x0f, 0, 1]);
    h2.extend_from_slice(&[0, 0, 5, 1, 5, 0, 0, 0, 1, 0x83, 0x86, 0x84, 0x41, 0x00]);
    g.bench_function("h2 tap (preface..first HEADERS)", |b| {
        b.iter(|| {
            let mut tap = H2Tap::new();
            tap.feed(black_box(&h2));
            tap.is_done()
        })
    });
    g.finish();
}

criterion_group!(group, benches);
criterion_main!(group);
