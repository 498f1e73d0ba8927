//! The command line as users run it: `check`, `serve` with graceful
//! shutdown on SIGTERM, `mock-upstream`, `demo`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_distill-guard");

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn check_accepts_the_shipped_config() {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/distill-guard.toml"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[test]
fn check_rejects_a_bad_config_with_file_line_col_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n\n[upstream]\nurl = \"http://127.0.0.1:9\"\nconect_timeout_ms = 5\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!("{}:6:1: upstream", path.display());
    assert!(err.starts_with(&want), "{err}");
    assert!(err.contains("unknown field `conect_timeout_ms`"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// `serve` on the basic config (edited by `edit`) in front of a mock
/// upstream: the mock, the config's directory, the child and its port.
fn serve_with(
    edit: impl FnOnce(String) -> String,
) -> (
    distill_guard::mock::MockHandle,
    tempfile::TempDir,
    std::process::Child,
    u16,
) {
    let mock =
        distill_guard::mock::start("127.0.0.1:0".parse().unwrap(), Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("dg.toml");
    std::fs::write(
        &cfg,
        edit(basic_config(&format!("http://{}", mock.addr()), "")),
    )
    .unwrap();
    let Spawned {
        child, listeners, ..
    } = spawn_listening(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null()),
        1,
        false,
    );
    let port = listeners[0].port();
    (mock, dir, child, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_open_streams_finish_then_exits_zero() {
    let (_mock, _dir, mut child, port) =
        serve_with(|c| c.replace("shutdown_grace_ms = 2000", "shutdown_grace_ms = 10000"));

    // A stream that takes ~2 s: 40 tokens, 4 per event, 50 ms per token.
    let mut req = messages_request(
        &format!("http://127.0.0.1:{port}/v1/messages"),
        r#"{"model":"m","max_tokens":40,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    req.headers_mut()
        .insert("x-mock-token-delay-ms", "50".parse().unwrap());
    let resp = timeout(client().request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = timeout(body.frame()).await.unwrap().unwrap();
    assert!(first
        .into_data()
        .unwrap()
        .starts_with(b"event: message_start"));

    signal(&child, "-TERM");
    // No new connections once shutdown has begun (while the stream runs).
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut rest = Vec::new();
    while let Some(f) = timeout(body.frame()).await {
        rest.extend_from_slice(
            &f.expect("stream cut during graceful shutdown")
                .into_data()
                .unwrap(),
        );
    }
    assert!(String::from_utf8_lossy(&rest).contains("message_stop"));
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
}

#[test]
fn sigterm_after_the_grace_period_still_exits_zero() {
    let (_mock, _dir, mut child, port) = serve_with(|c| {
        c.replace("shutdown_grace_ms = 2000", "shutdown_grace_ms = 300")
            .replace("idle_timeout_ms = 2000", "idle_timeout_ms = 60000")
    });
    // A stream paused for 30 s: longer than the grace period.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = r#"{"model":"m","max_tokens":40,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    write!(
        s,
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: k\r\ncontent-type: application/json\r\nx-mock-pause-after-first-ms: 30000\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let start = Instant::now();
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    assert!(start.elapsed() < Duration::from_secs(5));
    let mut rest = vec![];
    let _ = r.read_to_end(&mut rest);
}

#[test]
fn demo_serves_the_printed_curl_commands() {
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut curls = vec![];
    let deadline = Instant::now() + Duration::from_secs(20);
    while curls.len() < 2 && Instant::now() < deadline {
        let Some(Ok(l)) = lines.next() else { break };
        if l.trim_start().starts_with("curl ") {
            curls.push(l.trim().to_string());
        }
    }
    assert_eq!(curls.len(), 2, "demo did not print two curl commands");
    for (i, c) in curls.iter().enumerate() {
        let out = Command::new("bash")
            .args(["-c", &format!("{c} --max-time 10")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{c}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        if i == 0 {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["type"], "message");
        } else {
            assert!(text.contains("event: message_stop"), "{text}");
        }
    }
    signal(&child, "-INT");
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success());
}

#[test]
fn mock_upstream_command_serves_both_apis() {
    let mut child = Command::new(BIN)
        .args(["mock-upstream", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // It prints the address it bound.
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    let addr = line.trim().rsplit("http://").next().unwrap().to_string();
    let mut s = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("{line}: {e}"));
    let body = r#"{"model":"gpt","max_tokens":3,"messages":[{"role":"user","content":"hi"}]}"#;
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"completion_tokens\":3"), "{out}");
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
}

#[test]
fn fingerprint_command_reproduces_vectors_and_reports_bad_lines() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/ja4/client_hellos.jsonl"
    ))
    .unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .take(20)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut input: String = lines
        .iter()
        .map(|v| format!("{}\n", v["record_hex"].as_str().unwrap()))
        .collect();
    input.push_str("not hex\n16030100\n");
    let mut child = Command::new(BIN)
        .arg("fingerprint")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "bad lines must make the exit status non-zero"
    );
    let got: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), lines.len() + 2);
    for (want, got) in lines.iter().zip(&got) {
        for k in ["ja4", "ja4_r", "ja4_o"] {
            if let Some(w) = want.get(k) {
                assert_eq!(&got[k], w, "{k}");
            }
        }
    }
    assert!(got[lines.len()]["error"].is_string());
    assert_eq!(got[lines.len() + 1]["error"], "truncated");
}

#[test]
fn hash_key_prints_the_account_id_the_proxy_uses() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("dg.toml");
    std::fs::write(
        &cfg,
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let secret = "hash-key-test-secret-0123456789";
    let mut child = Command::new(BIN)
        .args(["hash-key", "--config"])
        .arg(&cfg)
        .env("DISTILL_GUARD_HASH_SECRET", secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"sk-one\nsk-two\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let ids: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let h = distill_guard::identity::KeyHasher::new(secret.as_bytes());
    assert_eq!(
        ids,
        vec![
            h.account_id(b"sk-one").to_string(),
            h.account_id(b"sk-two").to_string()
        ]
    );
    // Without a secret the command refuses rather than print ids that change.
    let out = Command::new(BIN)
        .args(["hash-key", "--config"])
        .arg(&cfg)
        .arg("sk-one")
        .env_remove("DISTILL_GUARD_HASH_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Ctrl-C during `demo --traffic` stops it: the proxy and the mock shut
/// down, the scratch directory (certificate, traffic record) is removed,
/// and the exit status says it did not finish.
#[test]
fn demo_traffic_interrupted_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["demo", "--traffic"])
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let entries = || std::fs::read_dir(tmp.path()).unwrap().count();
    let deadline = Instant::now() + Duration::from_secs(30);
    while entries() == 0 {
        assert!(Instant::now() < deadline, "no scratch directory appeared");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Wait until it is sending: the proxy has recorded traffic.
    let recorded = || {
        std::fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(|e| std::fs::metadata(e.ok()?.path().join("traffic.jsonl")).ok())
            .any(|m| m.len() > 0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !recorded() {
        assert!(Instant::now() < deadline, "no traffic recorded");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("exited before sending: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(child.try_wait().unwrap().is_none(), "finished already");
    signal(&child, "-INT");
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert!(!status.success(), "an interrupted demo reported success");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
