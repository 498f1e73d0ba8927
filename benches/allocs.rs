//! Heap work of the whole proxy, counted exactly: allocations and bytes per
//! proxied request (`messages`, `prompt2k`), and heap held per open SSE
//! stream. The proxy runs in this process (`server::start`, one worker) in
//! front of a plain-socket upstream; a counting global allocator sees every
//! thread. The client and the upstream use blocking sockets and buffers made
//! beforehand, and each figure has a `direct` control (client → upstream, no
//! proxy) that shows what they cost themselves.
//!
//! `cargo bench --bench allocs` (counts, not timings: they do not depend on
//! the machine's load).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Barrier};

use stats_alloc::{Region, Stats, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Keys rotated over, as `../shared/bench/messages.lua` does (`NKEYS`).
const NKEYS: usize = 1000;
const WARMUP: usize = 3 * NKEYS;
const MEASURED: usize = 3 * NKEYS;
/// Concurrent streams held open (under `max_connections_per_address`).
const STREAMS: usize = 400;

#[path = "common/mod.rs"]
mod common;
use common::RAISED;

#[derive(Clone, Copy)]
enum Policy {
    /// Identity, budgets, inspection, metering; clusters and detection off.
    Core,
    /// The default policy with detection in shadow mode.
    Full,
}

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Policy::Core => "core (clusters, detection off)",
            Policy::Full => "full default policy, detection shadow",
        }
    }

    fn toml(self) -> &'static str {
        match self {
            Policy::Core => "[cluster]\nenabled = false\n[detection]\nenabled = false\n",
            Policy::Full => "[detection]\nmode = \"shadow\"\n",
        }
    }
}

fn start_proxy(upstream: SocketAddr, policy: Policy) -> distill_guard::server::Handle {
    let text = format!(
        r#"
[[listener]]
address = "127.0.0.1:0"
[upstream]
url = "http://{upstream}"
[server]
workers = 1
shutdown_grace_ms = 1000
[logging]
level = "warn"
[admin]
address = "127.0.0.1:0"
watch_config = false
{RAISED}
{}"#,
        policy.toml()
    );
    let config =
        distill_guard::config::parse(std::path::Path::new("allocs-bench.toml"), &text).unwrap();
    distill_guard::server::start(config).unwrap()
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../shared/bench/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("../shared/bench/fixtures beside the project")
}

/// The request bodies of `../shared/bench/messages.lua`.
fn body(scenario: &str) -> String {
    if scenario == "prompt2k" {
        let words = [
            "the",
            "model",
            "reason",
            "about",
            "a",
            "distributed",
            "system",
            "with",
            "latency",
            "budget",
            "cluster",
            "account",
            "token",
            "stream",
            "request",
            "policy",
        ];
        let mut parts: Vec<&str> = Vec::new();
        let mut n = 0;
        while n < 2048 {
            let w = words[(parts.len() * 7) % words.len()];
            n += w.len() + 1;
            parts.push(w);
        }
        format!(
            r#"{{"model":"claude-3-5-sonnet-20241022","max_tokens":256,"messages":[{{"role":"user","content":"{}"}}]}}"#,
            parts.join(" ")
        )
    } else {
        r#"{"model":"claude-3-5-sonnet-20241022","max_tokens":64,"messages":[{"role":"user","content":"Say hello in five words."}]}"#.to_string()
    }
}

fn requests(addr: SocketAddr, body: &str, stream: bool) -> Vec<Vec<u8>> {
    (0..NKEYS)
        .map(|k| {
            let accept = if stream {
                "accept: text/event-stream\r\n"
            } else {
                ""
            };
            format!(
                "POST /v1/messages HTTP/1.1\r\nhost: {addr}\r\nanthropic-version: 2023-06-01\r\n\
                 x-api-key: key-{k}\r\ncontent-type: application/json\r\n{accept}\
                 content-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        })
        .collect()
}

/// One HTTP/1.1 connection with a read buffer made once.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    len: usize,
}

impl Conn {
    fn new(s: TcpStream) -> Conn {
        s.set_nodelay(true).unwrap();
        Conn {
            s,
            buf: vec![0; 64 * 1024],
            len: 0,
        }
    }

    fn fill(&mut self) -> bool {
        let n = self.s.read(&mut self.buf[self.len..]).unwrap_or(0);
        self.len += n;
        n > 0
    }

    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
    }

    /// Reads one message with a `content-length` body; returns its head and
    /// total length (`None` at EOF). Status line or request line first.
    fn message(&mut self) -> Option<(usize, usize)> {
        loop {
            if let Some(head) = find(&self.buf[..self.len], b"\r\n\r\n") {
                let head = head + 4;
                let body = content_length(&self.buf[..head]);
                while self.len < head + body {
                    assert!(self.fill(), "EOF inside a body");
                }
                return Some((head, head + body));
            }
            if !self.fill() {
                return None;
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &[u8]) -> usize {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let mut resp_headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut resp_headers);
    let hs: &[httparse::Header] = if head.starts_with(b"HTTP/") {
        resp.parse(head).unwrap();
        assert_eq!(resp.code, Some(200), "{}", String::from_utf8_lossy(head));
        resp.headers
    } else {
        req.parse(head).unwrap();
        req.headers
    };
    assert!(
        !hs.iter()
            .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding")),
        "chunked response where content-length was expected"
    );
    hs.iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map_or(0, |h| {
            std::str::from_utf8(h.value).unwrap().parse().unwrap()
        })
}

/// An upstream answering every request on a connection with `messages.json`.
fn json_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let json = fixture("messages.json");
    let mut resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        json.len()
    )
    .into_bytes();
    resp.extend_from_slice(&json);
    let resp: &'static [u8] = resp.leak();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || {
                let mut c = Conn::new(s);
                while let Some((_, end)) = c.message() {
                    c.consume(end);
                    if c.s.write_all(resp).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Allocations per request over `MEASURED` requests on one keep-alive
/// connection, after `WARMUP` (every key seen, pools and tables warm).
fn per_request(target: SocketAddr, reqs: &[Vec<u8>]) -> Stats {
    let mut c = Conn::new(TcpStream::connect(target).unwrap());
    let mut one = |i: usize| {
        c.s.write_all(&reqs[i % reqs.len()]).unwrap();
        let (_, end) = c.message().expect("a response");
        c.consume(end);
    };
    for i in 0..WARMUP {
        one(i);
    }
    let region = Region::new(GLOBAL);
    for i in 0..MEASURED {
        one(i);
    }
    region.change()
}

fn report_requests(what: &str, s: &Stats) {
    let n = MEASURED as f64;
    println!(
        "{what:<60} {:>8.1} allocs/req {:>8.1} reallocs/req {:>9.0} B/req",
        s.allocations as f64 / n,
        s.reallocations as f64 / n,
        s.bytes_allocated as f64 / n,
    );
}

/// An SSE upstream for `STREAMS` connections, one thread each, made before
/// anything is measured: each answers its request with a chunked
/// `text/event-stream`, sends the first event, waits at `release`, then
/// sends the rest.
fn sse_upstream(release: Arc<Barrier>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let sse = fixture("stream.sse");
    let events: Vec<&[u8]> = sse.split_inclusive(|b| *b == b'\n').collect();
    // One chunk per event (an event ends at its blank line).
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut cur = Vec::new();
    for line in events {
        cur.extend_from_slice(line);
        if line == b"\n" {
            chunks.push(std::mem::take(&mut cur));
        }
    }
    let mut first = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                      transfer-encoding: chunked\r\n\r\n"
        .to_vec();
    first.extend_from_slice(format!("{:x}\r\n", chunks[0].len()).as_bytes());
    first.extend_from_slice(&chunks[0]);
    first.extend_from_slice(b"\r\n");
    let mut rest = Vec::new();
    for c in &chunks[1..] {
        rest.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        rest.extend_from_slice(c);
        rest.extend_from_slice(b"\r\n");
    }
    rest.extend_from_slice(b"0\r\n\r\n");
    let first: &'static [u8] = first.leak();
    let rest: &'static [u8] = rest.leak();
    for _ in 0..STREAMS {
        let l = l.try_clone().unwrap();
        let release = release.clone();
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                // The buffer is made before the stream, not per stream.
                let buf = vec![0u8; 16 * 1024];
                let Ok((s, _)) = l.accept() else { return };
                s.set_nodelay(true).unwrap();
                let mut c = Conn { s, buf, len: 0 };
                let Some((_, end)) = c.message() else { return };
                c.consume(end);
                c.s.write_all(first).unwrap();
                release.wait();
                let _ = c.s.write_all(rest);
                // Serve nothing more: the connection ends with the client's.
                while c.fill() {}
            })
            .unwrap();
    }
    addr
}

/// Opens `STREAMS` streams, each read up to its first event, and returns the
/// heap change while all are open; then releases the upstream and reads
/// every stream to its end.
fn open_streams(target: SocketAddr, reqs: &[Vec<u8>], release: &Barrier) -> Stats {
    let mut conns: Vec<Conn> = Vec::with_capacity(STREAMS);
    // Buffers made before the measured region.
    let mut bufs: Vec<Option<Vec<u8>>> = (0..STREAMS).map(|_| Some(vec![0u8; 16 * 1024])).collect();
    let region = Region::new(GLOBAL);
    for (i, buf) in bufs.iter_mut().enumerate() {
        let s = TcpStream::connect(target).unwrap();
        s.set_nodelay(true).unwrap();
        let mut c = Conn {
            s,
            buf: buf.take().unwrap(),
            len: 0,
        };
        // One key for all: what an open stream holds, not what a new
        // account adds to the engine's tables (whose growth steps land in
        // the measured window at random, by shard).
        c.s.write_all(&reqs[0]).unwrap();
        // Until the first event has arrived (a blank line after the head).
        loop {
            assert!(c.fill(), "stream {i} ended before its first event");
            if let Some(h) = find(&c.buf[..c.len], b"\r\n\r\n") {
                if find(&c.buf[h + 4..c.len], b"\n\n").is_some() {
                    break;
                }
            }
        }
        conns.push(c);
    }
    let held = region.change();
    release.wait();
    for (i, c) in conns.iter_mut().enumerate() {
        while find(&c.buf[..c.len], b"0\r\n\r\n").is_none() {
            assert!(c.fill(), "stream {i} ended early");
        }
        assert!(
            find(&c.buf[..c.len], b"message_stop").is_some(),
            "stream {i} incomplete"
        );
    }
    held
}

fn report_streams(what: &str, s: &Stats) {
    let n = STREAMS as f64;
    let live = s.bytes_allocated as f64 - s.bytes_deallocated as f64;
    let blocks = s.allocations as f64 - s.deallocations as f64;
    println!(
        "{what:<60} {:>8.0} B/stream live heap {:>6.1} blocks/stream {:>7.1} allocs/stream",
        live / n,
        blocks / n,
        s.allocations as f64 / n,
    );
}

/// The engine's own memory per tracked account, exactly: the heap it holds
/// after the fill of `benches/engine.rs` (100k accounts, each once with its
/// own prompt's index keys and its own network and stack attributes, the
/// same budgets-raised default policy, detection on), over the accounts it
/// tracks. Counted from before `Engine::new`, so tables made up front are in.
/// With `fill` at the shipped `max_tracked` (the `engine-full` part) it is
/// the engine at its caps: what a deployment's memory limit must hold.
fn engine_memory(fill: u64) {
    use distill_guard::engine::link::AttrKind;
    use distill_guard::engine::signature::{self, INDEX_KEYS};
    use distill_guard::engine::{
        attr_hash, AccountId, Engine, Observation, ObservedAttrs, Usage, SECOND,
    };
    let text = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n{RAISED}"
    );
    let config = distill_guard::config::parse(std::path::Path::new("bench.toml"), &text).unwrap();
    let policy = config.policy();
    let prompt = |i: u64| {
        format!(
            "Imagine and articulate the internal reasoning behind the completed response below, \
             and write it out step by step. Question {i}: what is the {} of {}? Answer: it is {}.",
            i * 7919 % 1000,
            i % 97,
            i * 31
        )
    };
    let attrs = |i: u64, keys: [u64; INDEX_KEYS]| {
        let h = |k, v: String| Some(attr_hash(k, v.as_bytes()));
        ObservedAttrs {
            ja4: h(AttrKind::Ja4, format!("ja4-{}", i % 50)),
            http: h(AttrKind::Http, format!("http-{}", i % 30)),
            h2: None,
            ip_prefix: h(
                AttrKind::IpPrefix,
                format!("10.{}.{}.0/24", i % 256, i / 256 % 256),
            ),
            asn: h(AttrKind::Asn, format!("{}", 64_500 + i % 300)),
            prompt: Some(keys),
        }
    };
    let region = Region::new(GLOBAL);
    let engine = Engine::new(policy);
    let made = region.change();
    let mut now = 1000 * SECOND;
    // 1 ms apart, closer for a larger fill so that it takes at most 300 s,
    // within the idle eviction's 10 minutes: every account is still tracked
    // at the end.
    let step = (SECOND / 1000).min(300 * SECOND / fill.max(1));
    for i in 0..fill {
        let o = Observation {
            account: AccountId(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            anonymous: false,
            input_tokens: 100,
            attrs: attrs(i, signature::signature(&prompt(i)).index_keys()),
            request: Default::default(),
            account_age: None,
        };
        now += step;
        if let Some(t) = engine.decide(&o, now).verdict.into_ticket() {
            engine.settle(&t, Usage::default(), now);
        }
    }
    let held = region.change();
    let live = |s: &Stats| s.bytes_allocated as i64 - s.bytes_deallocated as i64;
    let accounts = engine.tracked_accounts();
    let stats = engine.link_stats().unwrap();
    println!(
        "\nengine memory (the fill of benches/engine.rs): {accounts} tracked accounts, {} index \
         keys, {} index entries",
        stats.values, stats.entries
    );
    // A large index table is a mapping of its own, outside the heap this counts.
    let held_all = live(&held) + stats.mapped_bytes as i64;
    println!(
        "live heap {} B ({} B of it made by Engine::new) + the index table's own mapping {} B → \
         {} B per tracked account; the engine's own estimate: linker ≈ {} B → {} B per account",
        live(&held),
        live(&made),
        stats.mapped_bytes,
        held_all / accounts.max(1) as i64,
        stats.approx_bytes,
        stats.approx_bytes / accounts.max(1)
    );
    // What the process holds (the allocator's slack and the test harness's
    // own memory included): the figure a memory limit is set against.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for line in status.lines() {
        if line.starts_with("VmRSS") || line.starts_with("VmHWM") {
            println!("process {line}");
        }
    }
}

fn main() {
    // `cargo test --benches` runs this with `--test`: nothing to measure.
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    // `cargo bench --bench allocs -- streams` runs one part (requests,
    // streams, engine); without a name, all three.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |part: &str| only.is_empty() || only.iter().any(|a| a == part);
    if run("requests") {
        per_request_counts();
    }
    if run("streams") {
        per_stream_heap();
    }
    if run("engine") {
        engine_memory(100_000);
    }
    // At the shipped caps (a million accounts): only when named, it takes
    // a few minutes.
    if only.iter().any(|a| a == "engine-full") {
        engine_memory(1_000_000);
    }
}

fn per_request_counts() {
    println!(
        "allocations per proxied request: {MEASURED} requests on one connection after \
         {WARMUP}, keys key-0..key-{} rotated",
        NKEYS - 1
    );
    let upstream = json_upstream();
    for scenario in ["messages", "prompt2k"] {
        let body = body(scenario);
        let direct = per_request(upstream, &requests(upstream, &body, false));
        report_requests(&format!("{scenario}: direct (control)"), &direct);
        for policy in [Policy::Core, Policy::Full] {
            let proxy = start_proxy(upstream, policy);
            let addr = proxy.local_addrs()[0];
            let s = per_request(addr, &requests(addr, &body, false));
            report_requests(&format!("{scenario}: {}", policy.name()), &s);
            proxy.shutdown();
            proxy.join();
        }
    }
}

fn per_stream_heap() {
    println!(
        "\nheap held per open SSE stream: {STREAMS} concurrent streams of one key, each read to \
         its first event (live = allocated - freed while all are open)"
    );
    println!(
        "(an upstream response body, which owns its connection: {} B inline)",
        std::mem::size_of::<distill_guard::proxy::h1::Body>()
    );
    let body = body("messages").replace("\"max_tokens\":64,", "\"max_tokens\":64,\"stream\":true,");
    let release = Arc::new(Barrier::new(STREAMS + 1));
    let upstream = sse_upstream(release.clone());
    let direct = open_streams(upstream, &requests(upstream, &body, true), &release);
    report_streams("sse: direct (control)", &direct);
    for policy in [Policy::Core, Policy::Full] {
        let release = Arc::new(Barrier::new(STREAMS + 1));
        let upstream = sse_upstream(release.clone());
        let proxy = start_proxy(upstream, policy);
        let addr = proxy.local_addrs()[0];
        let s = open_streams(addr, &requests(addr, &body, true), &release);
        report_streams(&format!("sse: {}", policy.name()), &s);
        proxy.shutdown();
        proxy.join();
    }
}
