//! The recipes of `config/examples/` driven over loopback: distill-guard
//! behind CloudFront, Cloudflare, an L4 balancer with PROXY protocol v2 and
//! a Kubernetes ingress with `x-forwarded-for`. The trusted front connects
//! from 127.0.0.2 (the only address in `identity.trusted_proxies`), anyone
//! else from 127.0.0.1. What a trusted front says is used and marked
//! `front` in the traffic record and the audit log; what anyone else says
//! is ignored; front headers never reach the upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use distill_guard::fingerprint::front::{Outcome, Part};
use distill_guard::mock::MockHandle;
use distill_guard::server::Handle;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_distill-guard");
/// The trusted front's address, and an untrusted client's.
const FRONT: &str = "127.0.0.2";
const CLIENT: &str = "127.0.0.1";
/// A JA4 no rustls client produces: whoever reports it, a front said it.
const FRONT_JA4: &str = "t13d1517h2_8daaf6152771_b0da82dd1658";
const ADMIN_TOKEN: &str = "front-recipe-test-token";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples")
}

#[test]
fn every_example_config_passes_check() {
    let mut n = 0;
    for entry in std::fs::read_dir(examples()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        n += 1;
        let out = std::process::Command::new(BIN)
            .args(["check", "--config"])
            .arg(&p)
            .env_remove("DISTILL_GUARD_ADMIN_TOKEN")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(n >= 5, "expected the recipes in config/examples, found {n}");
}

/// A recipe's example config as it ships, moved onto loopback: listener on
/// 127.0.0.1:0 (with the test CA's certificate when it has TLS), the mock
/// upstream, the trusted front at 127.0.0.2, every request recorded and
/// audited. Everything else (`[fingerprint.front]`, `proxy_protocol`) is the
/// example's own.
struct Recipe {
    pki: TestPki,
    mock: MockHandle,
    proxy: Handle,
    addr: SocketAddr,
    record: PathBuf,
    audit: PathBuf,
}

impl Recipe {
    fn start(name: &str) -> Recipe {
        Recipe::start_with(name, &[])
    }

    /// [`Recipe::start`] with more `[identity]` keys (string values).
    fn start_with(name: &str, identity: &[(&str, &str)]) -> Recipe {
        use toml::Value as T;
        let pki = TestPki::new();
        let mock =
            distill_guard::mock::start("127.0.0.1:0".parse().unwrap(), Default::default()).unwrap();
        let text = std::fs::read_to_string(examples().join(format!("{name}.toml"))).unwrap();
        let mut t: toml::Table = text.parse().unwrap();
        let listener = t["listener"].as_array_mut().unwrap()[0]
            .as_table_mut()
            .unwrap();
        listener.insert("address".into(), T::from("127.0.0.1:0"));
        if let Some(tls) = listener.get_mut("tls").and_then(|v| v.as_table_mut()) {
            tls.insert("cert_path".into(), T::from(pki.cert_pem.to_str().unwrap()));
            tls.insert("key_path".into(), T::from(pki.key_pem.to_str().unwrap()));
        }
        let table = |t: &mut toml::Table, k: &str| {
            t.entry(k)
                .or_insert_with(|| T::Table(Default::default()))
                .as_table_mut()
                .unwrap()
                .clone()
        };
        let mut set = |section: &str, pairs: Vec<(&str, T)>| {
            let mut s = table(&mut t, section);
            for (k, v) in pairs {
                s.insert(k.into(), v);
            }
            t.insert(section.into(), T::Table(s));
        };
        let record = pki.dir.path().join("record.jsonl");
        let audit = pki.dir.path().join("audit.jsonl");
        set(
            "upstream",
            vec![("url", T::from(format!("http://{}", mock.addr())))],
        );
        let mut id = vec![(
            "trusted_proxies",
            T::Array(vec![T::from(format!("{FRONT}/32"))]),
        )];
        id.extend(identity.iter().map(|(k, v)| (*k, T::from(*v))));
        set("identity", id);
        set("server", vec![("workers", T::from(1))]);
        set(
            "admin",
            vec![
                ("address", T::from("127.0.0.1:0")),
                ("token", T::from(ADMIN_TOKEN)),
            ],
        );
        set("record", vec![("path", T::from(record.to_str().unwrap()))]);
        set(
            "audit",
            vec![
                ("path", T::from(audit.to_str().unwrap())),
                ("all_requests", T::from(true)),
            ],
        );
        set("logging", vec![("level", T::from("warn"))]);
        let cfg = config_from(&toml::to_string(&t).unwrap(), pki.dir.path());
        let proxy = distill_guard::server::start(cfg).unwrap();
        let addr = proxy.local_addrs()[0];
        Recipe {
            pki,
            mock,
            proxy,
            addr,
            record,
            audit,
        }
    }

    fn front_count(&self, part: Part, outcome: Outcome) -> u64 {
        self.proxy
            .shared()
            .metrics
            .front_header_count(part, outcome)
    }

    /// `distill_guard_front_headers_total{part, outcome}` as scraped from
    /// the admin listener's `/metrics`.
    async fn scraped(&self, part: &str, outcome: &str) -> f64 {
        self.sample(|s| {
            s.metric == "distill_guard_front_headers_total"
                && s.labels.get("part") == Some(part)
                && s.labels.get("outcome") == Some(outcome)
        })
        .await
        .unwrap_or_else(|| panic!("no front header sample {part} {outcome}"))
    }

    /// The value of the first sample `which` picks in a scrape of the admin
    /// listener's `/metrics`.
    async fn sample(&self, which: impl Fn(&prometheus_parse::Sample) -> bool) -> Option<f64> {
        let admin = self.proxy.admin_addr().unwrap();
        let req = Request::get(format!("http://{admin}/metrics"))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = timeout(client().request(req)).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("valid Prometheus text");
        scrape
            .samples
            .iter()
            .find(|s| which(s))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    }

    /// One request over TLS from `from`, with `headers`; its request id.
    async fn tls_request(&self, from: &str, headers: &[(&str, &str)]) -> String {
        let mut http = HttpConnector::new();
        http.set_local_address(Some(from.parse().unwrap()));
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(self.pki.client_config(&[]))
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
        let url = format!("https://localhost:{}/v1/messages", self.addr.port());
        send(&client, &url, headers).await
    }

    /// One request over plain HTTP from `from`, with `headers`.
    async fn plain_request(&self, from: &str, headers: &[(&str, &str)]) -> String {
        let mut http = HttpConnector::new();
        http.set_local_address(Some(from.parse().unwrap()));
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(http);
        let url = format!("http://{}/v1/messages", self.addr);
        send(&client, &url, headers).await
    }

    /// The record line and the audit line of request `id`, once written.
    fn lines_of(&self, id: &str) -> (Value, Value) {
        (
            line_of(&self.record, id, "request_id"),
            line_of(&self.audit, id, "request_id"),
        )
    }

    /// The headers of the upstream request with `x-request-id` `id`.
    fn upstream_headers(&self, id: &str) -> Vec<(String, String)> {
        self.mock
            .requests()
            .into_iter()
            .find(|r| {
                r.headers
                    .iter()
                    .any(|(k, v)| k == "x-request-id" && v == id)
            })
            .unwrap_or_else(|| panic!("request {id} did not reach the upstream"))
            .headers
    }
}

impl Drop for Recipe {
    fn drop(&mut self) {
        self.proxy.shutdown();
    }
}

async fn send<C>(client: &Client<C, Full<Bytes>>, url: &str, headers: &[(&str, &str)]) -> String
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let mut req = messages_request(url, SMALL_MESSAGE);
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let resp = timeout(client.request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let _ = resp.into_body().collect().await.unwrap();
    id
}

/// The first complete JSON line of `path` whose `key` is `id`, polling
/// until a deadline (the record and the audit log are written from queues).
fn line_of(path: &Path, id: &str, key: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // Whole lines only: the writer may be half-way through one.
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        if let Some(v) = whole
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|v| v[key] == id)
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no line for {id} in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn no_header_starting(headers: &[(String, String)], prefixes: &[&str]) {
    for (k, v) in headers {
        assert!(
            !prefixes.iter().any(|p| k.starts_with(p)),
            "front header {k}: {v} reached the upstream"
        );
    }
}

/// A CDN recipe (CloudFront, Cloudflare): JA4, address and ASN from the
/// front's headers when it is trusted, the connection's own otherwise.
async fn cdn_recipe(
    name: &str,
    said: &[(&str, &str)],
    client_prefix: &str,
    front_headers: &[&str],
) {
    let r = Recipe::start(name);

    // The trusted front: its headers are the client's fingerprint.
    let id = r.tls_request(FRONT, said).await;
    let (rec, audit) = r.lines_of(&id);
    assert_eq!(rec["ja4"], FRONT_JA4, "{rec}");
    assert_eq!(rec["ip_prefix"], client_prefix, "{rec}");
    assert_eq!(rec["asn"], 64496, "{rec}");
    assert_eq!(rec["sources"]["ja4"], "front", "{rec}");
    assert_eq!(rec["sources"]["address"], "front", "{rec}");
    assert_eq!(rec["sources"]["asn"], "front", "{rec}");
    assert_eq!(rec["sources"]["http"], "observed", "{rec}");
    let fp = &audit["fingerprints"];
    assert_eq!(fp["ja4"], FRONT_JA4, "{audit}");
    assert_eq!(fp["sources"]["ja4"], "front", "{audit}");
    assert_eq!(fp["sources"]["address"], "front", "{audit}");
    no_header_starting(&r.upstream_headers(&id), front_headers);
    assert_eq!(r.front_count(Part::Ja4, Outcome::Used), 1);

    // Anyone else sending the same headers: ignored, and not forwarded.
    let id = r.tls_request(CLIENT, said).await;
    let (rec, audit) = r.lines_of(&id);
    let observed = rec["ja4"].as_str().unwrap().to_string();
    assert_ne!(observed, FRONT_JA4, "{rec}");
    assert!(observed.starts_with("t13d"), "{rec}");
    assert_eq!(rec["ip_prefix"], "127.0.0.0/24", "{rec}");
    assert_eq!(rec["asn"], Value::Null, "{rec}");
    assert_eq!(rec["sources"]["ja4"], "observed", "{rec}");
    assert_eq!(rec["sources"]["address"], "observed", "{rec}");
    assert_eq!(rec["sources"].get("asn"), None, "{rec}");
    assert_eq!(
        audit["fingerprints"]["sources"]["ja4"], "observed",
        "{audit}"
    );
    no_header_starting(&r.upstream_headers(&id), front_headers);
    assert_eq!(r.front_count(Part::Ja4, Outcome::Untrusted), 1);
    assert_eq!(r.front_count(Part::Address, Outcome::Untrusted), 1);

    // The trusted front with a malformed JA4: ignored and counted; the
    // connection's own stands, the other parts are still used.
    let mut bad: Vec<(&str, &str)> = said.to_vec();
    bad[0].1 = "t13d1517h2_not-a-ja4-at-all_00000000";
    let id = r.tls_request(FRONT, &bad).await;
    let (rec, _) = r.lines_of(&id);
    assert_eq!(rec["ja4"], observed.as_str(), "{rec}");
    assert_eq!(rec["sources"]["ja4"], "observed", "{rec}");
    assert_eq!(rec["sources"]["address"], "front", "{rec}");
    no_header_starting(&r.upstream_headers(&id), front_headers);
    assert_eq!(r.front_count(Part::Ja4, Outcome::Malformed), 1);

    // What ops teams see.
    assert_eq!(r.scraped("ja4", "used").await, 1.0);
    assert_eq!(r.scraped("ja4", "malformed").await, 1.0);
    assert_eq!(r.scraped("ja4", "untrusted").await, 1.0);
    assert_eq!(r.scraped("address", "used").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_cloudfront_the_viewer_headers_are_the_client() {
    cdn_recipe(
        "cloudfront",
        &[
            ("CloudFront-Viewer-JA4-Fingerprint", FRONT_JA4),
            ("CloudFront-Viewer-Address", "2001:db8:7:1::10:46532"),
            ("CloudFront-Viewer-ASN", "64496"),
        ],
        "2001:db8:7::/48",
        &["cloudfront-viewer-"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_cloudflare_the_transform_rule_headers_are_the_client() {
    cdn_recipe(
        "cloudflare",
        &[
            ("x-client-ja4", FRONT_JA4),
            ("CF-Connecting-IP", "198.51.100.10"),
            ("x-client-asn", "64496"),
        ],
        "198.51.100.0/24",
        &["x-client-ja4", "cf-connecting-ip", "x-client-asn"],
    )
    .await;
}

/// A PROXY protocol v2 header (PROXY command, TCP over IPv4).
fn proxy_v2(src: std::net::Ipv4Addr, src_port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x11, 0, 12]);
    h.extend(src.octets());
    h.extend([127, 0, 0, 1]);
    h.extend(src_port.to_be_bytes());
    h.extend(8443u16.to_be_bytes());
    h
}

/// Connect from `from`, send `prefix` (a PROXY header, or nothing), then
/// TLS and one HTTP/1.1 request; its request id, or `None` when the
/// connection is refused before a response.
async fn proxied_tls_request(r: &Recipe, from: &str, prefix: &[u8]) -> Option<String> {
    proxied_tls_request_with(r, from, prefix, &[]).await
}

/// [`proxied_tls_request`] with more request `headers`.
async fn proxied_tls_request_with(
    r: &Recipe,
    from: &str,
    prefix: &[u8],
    headers: &[(&str, &str)],
) -> Option<String> {
    use tokio::io::AsyncWriteExt;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    let mut tcp = sock.connect(r.addr).await.unwrap();
    tcp.write_all(prefix).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(r.pki.client_config(&[b"http/1.1"])));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let stream = timeout(tls.connect(name, tcp)).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let mut req: Request<Full<Bytes>> = messages_request("/v1/messages", SMALL_MESSAGE);
    req.headers_mut()
        .insert("host", "localhost".parse().unwrap());
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let resp = timeout(sender.send_request(req)).await.ok()?;
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let _ = resp.into_body().collect().await.unwrap();
    Some(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_an_l4_balancer_proxy_protocol_v2_is_the_client_and_tls_is_its_own() {
    let r = Recipe::start("nlb-proxy-protocol");
    let client: std::net::Ipv4Addr = "203.0.113.77".parse().unwrap();

    // Through the balancer: the address is the PROXY source (a front's
    // word), the JA4 the client's own ClientHello (observed here).
    let id = proxied_tls_request(&r, FRONT, &proxy_v2(client, 40000))
        .await
        .expect("served through the balancer");
    let (rec, audit) = r.lines_of(&id);
    assert_eq!(rec["ip_prefix"], "203.0.113.0/24", "{rec}");
    assert_eq!(rec["sources"]["address"], "front", "{rec}");
    assert_eq!(rec["sources"]["ja4"], "observed", "{rec}");
    assert!(rec["ja4"].as_str().unwrap().starts_with("t13d"), "{rec}");
    assert_eq!(
        audit["fingerprints"]["sources"]["address"], "front",
        "{audit}"
    );
    let xff = r
        .upstream_headers(&id)
        .into_iter()
        .find(|(k, _)| k == "x-forwarded-for")
        .unwrap()
        .1;
    assert_eq!(xff, "203.0.113.77");

    // A PROXY header from anyone else is not read: the handshake fails and
    // nothing reaches the upstream.
    let before = r.mock.requests().len();
    assert_eq!(
        proxied_tls_request(&r, CLIENT, &proxy_v2(client, 40001)).await,
        None
    );
    assert_eq!(r.mock.requests().len(), before);

    // The same client straight to the listener is its own address.
    let id = proxied_tls_request(&r, CLIENT, &[]).await.unwrap();
    let (rec, _) = r.lines_of(&id);
    assert_eq!(rec["ip_prefix"], "127.0.0.0/24", "{rec}");
    assert_eq!(rec["sources"]["address"], "observed", "{rec}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_kubernetes_ingress_forwarded_for_is_believed_from_the_ingress_only() {
    let r = Recipe::start("kubernetes-ingress");
    // The ingress appends the client it accepted; a client may have
    // prepended a hop of its own, which is never the address chosen.
    let xff = [("x-forwarded-for", "192.0.2.1, 198.51.100.7")];

    let id = r.plain_request(FRONT, &xff).await;
    let (rec, audit) = r.lines_of(&id);
    assert_eq!(rec["ip_prefix"], "198.51.100.0/24", "{rec}");
    assert_eq!(rec["sources"]["address"], "front", "{rec}");
    assert_eq!(rec["ja4"], Value::Null, "plain HTTP has no JA4: {rec}");
    assert_eq!(
        audit["fingerprints"]["ip_prefix"], "198.51.100.0/24",
        "{audit}"
    );
    assert_eq!(
        audit["fingerprints"]["sources"]["address"], "front",
        "{audit}"
    );
    let upstream = r.upstream_headers(&id);
    let forwarded = &upstream
        .iter()
        .find(|(k, _)| k == "x-forwarded-for")
        .unwrap()
        .1;
    // The upstream gets the chain with the ingress last.
    assert_eq!(forwarded, &format!("192.0.2.1, 198.51.100.7, {FRONT}"));

    // From a client that is not the ingress the header is ignored: its own
    // address, and the upstream's right-most hop is that address.
    let id = r.plain_request(CLIENT, &xff).await;
    let (rec, _) = r.lines_of(&id);
    assert_eq!(rec["ip_prefix"], "127.0.0.0/24", "{rec}");
    assert_eq!(rec["sources"]["address"], "observed", "{rec}");
    let upstream = r.upstream_headers(&id);
    let forwarded = &upstream
        .iter()
        .find(|(k, _)| k == "x-forwarded-for")
        .unwrap()
        .1;
    assert!(forwarded.ends_with(&format!(", {CLIENT}")), "{forwarded}");
    // The front headers of the CDN recipes mean nothing here: no
    // [fingerprint.front] is configured, nothing is counted.
    assert_eq!(r.front_count(Part::Ja4, Outcome::Untrusted), 0);
}

/// The header an auth front states account creation times in, for the
/// tests below.
const CREATED: &str = "x-account-created";

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A Kubernetes ingress that is also the auth front: it states when each
/// account was created.
fn auth_front() -> Recipe {
    Recipe::start_with("kubernetes-ingress", &[("account_created_header", CREATED)])
}

/// `distill_guard_account_created_invalid_total`, scraped.
async fn created_invalid(r: &Recipe) -> f64 {
    r.sample(|s| s.metric == "distill_guard_account_created_invalid_total")
        .await
        .expect("no distill_guard_account_created_invalid_total sample")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_fronts_account_creation_time_is_the_account_age() {
    let r = auth_front();
    let age = 30 * 86_400;
    let created = (unix_now() - age).to_string();
    let id = r.plain_request(FRONT, &[(CREATED, &created)]).await;
    let (rec, _) = r.lines_of(&id);
    let got = rec["account_age_s"]
        .as_u64()
        .unwrap_or_else(|| panic!("{rec}"));
    // Now at the proxy, less the creation time: the seconds the request
    // took are all the difference.
    assert!((age..age + 60).contains(&got), "{got} for {age}: {rec}");
    no_header_starting(&r.upstream_headers(&id), &[CREATED]);

    // A creation time a little ahead of this host's clock is skew: age 0.
    let ahead = (unix_now() + 60).to_string();
    let id = r.plain_request(FRONT, &[(CREATED, &ahead)]).await;
    let (rec, _) = r.lines_of(&id);
    assert_eq!(rec["account_age_s"], 0, "{rec}");
    assert_eq!(created_invalid(&r).await, 0.0);
    assert_eq!(r.proxy.shared().metrics.account_created_invalid_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_creation_time_from_an_untrusted_peer_is_ignored() {
    let r = auth_front();
    let created = (unix_now() - 86_400).to_string();
    let id = r.plain_request(CLIENT, &[(CREATED, &created)]).await;
    let (rec, _) = r.lines_of(&id);
    assert_eq!(rec.get("account_age_s"), None, "{rec}");
    // Believed or not, it never reaches the upstream.
    no_header_starting(&r.upstream_headers(&id), &[CREATED]);
    // Not the front's mistake: not counted.
    assert_eq!(created_invalid(&r).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_creation_time_through_a_trusted_l4_balancer_is_the_clients_word() {
    // The balancer is trusted for its PROXY header, but the HTTP headers
    // behind it are the client's own: not believed.
    let r = Recipe::start_with("nlb-proxy-protocol", &[("account_created_header", CREATED)]);
    let created = (unix_now() - 86_400).to_string();
    let id = proxied_tls_request_with(
        &r,
        FRONT,
        &proxy_v2("203.0.113.77".parse().unwrap(), 40000),
        &[(CREATED, &created)],
    )
    .await
    .expect("served through the balancer");
    let (rec, _) = r.lines_of(&id);
    assert_eq!(rec["sources"]["address"], "front", "{rec}");
    assert_eq!(rec.get("account_age_s"), None, "{rec}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_account_creation_time_is_ignored_and_counted() {
    let r = auth_front();
    let far_ahead = (unix_now() + 3600).to_string();
    let mut expected = 0.0;
    for bad in [
        "yesterday",
        "2026-01-01T00:00:00Z",
        "-5",
        "1.5e9",
        far_ahead.as_str(),
    ] {
        let id = r.plain_request(FRONT, &[(CREATED, bad)]).await;
        let (rec, _) = r.lines_of(&id);
        assert_eq!(rec.get("account_age_s"), None, "{bad}: {rec}");
        expected += 1.0;
    }
    // Two values (a front that appends to a client's own): neither is used.
    let created = (unix_now() - 86_400).to_string();
    let id = r
        .plain_request(FRONT, &[(CREATED, &created), (CREATED, &created)])
        .await;
    let (rec, _) = r.lines_of(&id);
    assert_eq!(rec.get("account_age_s"), None, "{rec}");
    expected += 1.0;
    // Counted before the response, so the scrape sees every one.
    assert_eq!(created_invalid(&r).await, expected);
}
