//! Accounts and budgets end to end: request-rate and post-paid output-token
//! limits through the proxy to the mock upstream, well-formed refusals,
//! trusted proxies, PROXY protocol, and keys kept out of logs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use support::*;

fn tier(rpm: u64, burst: u64, out_tpm: u64) -> String {
    format!(
        "[tiers.default]\nrequests_per_minute = {rpm}\nburst_requests = {burst}\n\
         input_tokens_per_minute = 10000000\noutput_tokens_per_minute = {out_tpm}\nmax_concurrent = 8\n"
    )
}

fn keyed(url: &str, key: &str, body: &str) -> Request<Full<Bytes>> {
    let mut r = messages_request(url, body);
    r.headers_mut().insert("x-api-key", key.parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_request_rate_is_a_well_formed_429_and_other_accounts_are_unaffected() {
    let env = Env::start(&tier(60, 2, 1_000_000));
    let c = client();
    for _ in 0..2 {
        let r = timeout(c.request(keyed(&env.url("/v1/messages"), "sk-a", SMALL_MESSAGE)))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = body_json(r).await;
    }
    let r = timeout(c.request(keyed(&env.url("/v1/messages"), "sk-a", SMALL_MESSAGE)))
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let h = r.headers().clone();
    assert_eq!(h["retry-after"], "1");
    assert_eq!(h["ratelimit-policy"], "\"account-requests\";q=60;w=60");
    let rl = h["ratelimit"].to_str().unwrap();
    assert!(rl.starts_with("\"account-requests\";r=0;t="), "{rl}");
    assert_eq!(h["content-type"], "application/json");
    assert!(h.contains_key("x-request-id"));
    let v = body_json(r).await;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("account") && msg.contains("requests per minute"),
        "{msg}"
    );

    // OpenAI shape on the OpenAI path.
    let r = timeout(c.request(keyed(
        &env.url("/v1/chat/completions"),
        "sk-a",
        SMALL_MESSAGE,
    )))
    .await
    .unwrap();
    assert_eq!(r.status(), 429);
    let v = body_json(r).await;
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(v["error"]["message"].is_string());

    // Another account is unaffected.
    let r = timeout(c.request(keyed(&env.url("/v1/messages"), "sk-b", SMALL_MESSAGE)))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // After retry-after (1 s), the first account is served again.
    served_again(&env.url("/v1/messages"), "sk-a", Duration::from_secs(6)).await;
}

/// Poll every 100 ms until `key` is served (200) on `url`, refused (429)
/// meanwhile, for at most `limit`.
async fn served_again(url: &str, key: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let r = timeout(client().request(keyed(url, key, SMALL_MESSAGE)))
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => return,
            429 => {}
            s => panic!("{key}: status {s} while waiting to be served again"),
        }
        assert!(
            Instant::now() < deadline,
            "{key} not served again within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stream `output_tokens` tokens; returns the concatenated body.
async fn stream(env: &Env, path: &str, key: &str, output_tokens: u32) -> (u16, String) {
    let body = r#"{"model":"m","max_tokens":100000,"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"write"}]}"#;
    let mut req = keyed(&env.url(path), key, body);
    req.headers_mut()
        .insert("x-mock-output-tokens", output_tokens.into());
    let r = timeout(client().request(req)).await.unwrap();
    let status = r.status().as_u16();
    let bytes = timeout(r.into_body().collect()).await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn output_debt_case(path: &str, end_marker: &str) {
    // 6000 output tokens per minute: 100 per second, burst 6000.
    let env = Env::start(&tier(1000, 1000, 6000));
    // One stream of 6300 tokens runs 300 past the budget: it completes.
    let (status, text) = stream(&env, path, "sk-streamer", 6300).await;
    assert_eq!(status, 200);
    assert!(
        text.contains(end_marker),
        "stream was cut: ...{}",
        &text[text.len().saturating_sub(200)..]
    );
    // The debt (300 tokens = 3 s) refuses the next request...
    let start = Instant::now();
    let r = timeout(client().request(keyed(&env.url(path), "sk-streamer", SMALL_MESSAGE)))
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3..=4).contains(&retry), "retry-after {retry}");
    assert!(r.headers()["ratelimit-policy"]
        .to_str()
        .unwrap()
        .starts_with("\"account-output_tokens\";q=6000;w=60"));
    let v = body_json(r).await;
    let msg = v.to_string();
    assert!(msg.contains("output tokens per minute"), "{msg}");
    // ...other accounts are served...
    let r = timeout(client().request(keyed(&env.url(path), "sk-other", SMALL_MESSAGE)))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // ...and once the debt is repaid the account is served again.
    served_again(
        &env.url(path),
        "sk-streamer",
        Duration::from_secs(retry + 5).saturating_sub(start.elapsed()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_past_the_output_budget_completes_then_the_debt_refuses() {
    output_debt_case("/v1/messages", "message_stop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_past_the_output_budget_completes_then_the_debt_refuses_openai() {
    output_debt_case("/v1/chat/completions", "[DONE]").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_key_is_a_401_in_the_api_shape() {
    let env = Env::start("");
    let mut req = messages_request(&env.url("/v1/messages"), SMALL_MESSAGE);
    req.headers_mut().remove("x-api-key");
    let r = timeout(client().request(req)).await.unwrap();
    assert_eq!(r.status(), 401);
    let v = body_json(r).await;
    assert_eq!(v["error"]["type"], "authentication_error");
    let mut req = messages_request(&env.url("/v1/chat/completions"), SMALL_MESSAGE);
    req.headers_mut().remove("x-api-key");
    req.headers_mut()
        .insert("authorization", "Bearer sk-works".parse().unwrap());
    let r = timeout(client().request(req)).await.unwrap();
    assert_eq!(r.status(), 200);
}

async fn anon_status(env: &Env, xff: &str) -> u16 {
    let mut req = messages_request(&env.url("/v1/messages"), SMALL_MESSAGE);
    req.headers_mut().remove("x-api-key");
    req.headers_mut()
        .insert("x-forwarded-for", xff.parse().unwrap());
    let r = timeout(client().request(req)).await.unwrap();
    r.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    // Anonymous clients are keyed by IP, one request per minute.
    let anon = format!(
        "{}[identity]\nmissing_key = \"anonymous\"\n",
        tier(1, 1, 1_000_000)
    );
    let env = Env::start(&anon);
    assert_eq!(anon_status(&env, "198.51.100.1").await, 200);
    // A different claimed client from the same untrusted peer: same bucket.
    assert_eq!(anon_status(&env, "198.51.100.2").await, 429);

    let trusted = format!("{anon}trusted_proxies = [\"127.0.0.1/32\"]\n");
    let env = Env::start(&trusted);
    assert_eq!(anon_status(&env, "198.51.100.1").await, 200);
    assert_eq!(anon_status(&env, "198.51.100.2").await, 200);
    assert_eq!(anon_status(&env, "198.51.100.1").await, 429);
    // The upstream sees the hop chain with the client first.
    let last = env.mock.requests().last().unwrap().clone();
    let xff = &last
        .headers
        .iter()
        .find(|(k, _)| k == "x-forwarded-for")
        .unwrap()
        .1;
    assert_eq!(xff, "198.51.100.2, 127.0.0.1");
}

#[test]
fn proxy_protocol_from_a_trusted_peer_sets_the_client() {
    // A listener with proxy_protocol on, behind a trusted (loopback) balancer.
    let mock =
        distill_guard::mock::start("127.0.0.1:0".parse().unwrap(), Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = basic_config(
        &format!("http://{}", mock.addr()),
        "[identity]\ntrusted_proxies = [\"127.0.0.1\"]\n",
    )
    .replacen(
        "address = \"127.0.0.1:0\"",
        "address = \"127.0.0.1:0\"\nproxy_protocol = true",
        1,
    );
    let proxy = distill_guard::server::start(config_from(&text, dir.path())).unwrap();
    let mut s = TcpStream::connect(proxy.local_addrs()[0]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "PROXY TCP4 203.0.113.77 127.0.0.1 40000 443\r\nPOST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: k\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
        SMALL_MESSAGE.len(),
        SMALL_MESSAGE
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let last = mock.requests().last().unwrap().clone();
    let xff = &last
        .headers
        .iter()
        .find(|(k, _)| k == "x-forwarded-for")
        .unwrap()
        .1;
    assert_eq!(xff, "203.0.113.77");
    proxy.shutdown();
}

#[test]
fn api_keys_never_appear_in_logs() {
    let mock =
        distill_guard::mock::start("127.0.0.1:0".parse().unwrap(), Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("dg.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}{}[logging]\nformat = \"json\"\nlevel = \"trace\"\n",
            basic_config(&format!("http://{}", mock.addr()), ""),
            tier(60, 1, 1_000_000)
        ),
    )
    .unwrap();
    let child = spawn_listening(
        Command::new(env!("CARGO_BIN_EXE_distill-guard"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("DISTILL_GUARD_HASH_SECRET", "test-secret-0123456789abcdef")
            .stdout(Stdio::null()),
        1,
        false,
    );
    let proxy = child.listeners[0];
    const KEY: &str = "sk-ant-VERY-SECRET-KEY-4242";
    for (hdr, path) in [
        ("x-api-key", "/v1/messages"),
        ("x-api-key", "/v1/messages"), // throttled
        ("authorization", "/v1/chat/completions"),
    ] {
        let value = if hdr == "authorization" {
            format!("Bearer {KEY}")
        } else {
            KEY.to_string()
        };
        let mut s = TcpStream::connect(proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nhost: x\r\n{hdr}: {value}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
            SMALL_MESSAGE.len(),
            SMALL_MESSAGE
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(
            out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.1 429"),
            "{out}"
        );
    }
    let logs = String::from_utf8(child.stop("-TERM")).unwrap();
    assert!(
        logs.contains("\"decision\":\"throttle\""),
        "no access lines in:\n{logs}"
    );
    assert!(
        !logs.contains("VERY-SECRET"),
        "the API key leaked into the logs"
    );
    // The account id (keyed hash) is what the logs carry.
    let hasher = distill_guard::identity::KeyHasher::new(b"test-secret-0123456789abcdef");
    let id = hasher.account_id(KEY.as_bytes()).to_string();
    assert!(
        logs.contains(&id),
        "account id {id} not in the access lines"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_written_to_the_audit_log_without_keys() {
    let mock =
        distill_guard::mock::start("127.0.0.1:0".parse().unwrap(), Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let text = basic_config(
        &format!("http://{}", mock.addr()),
        &format!(
            "{}[audit]\npath = \"{}\"\n",
            tier(60, 1, 1_000_000),
            audit.display()
        ),
    );
    let proxy = distill_guard::server::start(config_from(&text, dir.path())).unwrap();
    let url = format!("http://{}/v1/messages", proxy.local_addrs()[0]);
    for expect in [200, 429, 429] {
        let r = timeout(client().request(keyed(&url, "sk-audited-SECRET", SMALL_MESSAGE)))
            .await
            .unwrap();
        assert_eq!(r.status(), expect);
        let _ = r.into_body().collect().await;
    }
    proxy.shutdown();
    tokio::task::spawn_blocking(move || proxy.join())
        .await
        .unwrap();
    let text = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "one line per non-allow decision: {text}");
    for l in &lines {
        assert_eq!(l["decision"], "throttle");
        assert_eq!(l["mode"], "enforce");
        assert_eq!(l["reasons"][0]["limit"], "requests");
        assert_eq!(l["account"].as_str().unwrap().len(), 16);
        assert!(l["fingerprints"]["ip_prefix"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.0/"));
        assert!(l["request_id"].is_string());
    }
    assert!(
        !text.contains("SECRET"),
        "the key leaked into the audit log"
    );
}
