//! Log output as ops teams collect it: into a pipe or a file, never a
//! terminal. Text logs then carry no ANSI colour codes, and
//! `[logging] format = "json"` is one JSON object per line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_distill-guard");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start `args` with stderr piped (drained by a thread, so the child never
/// blocks on a full pipe) and colour-related environment cleared.
fn spawn(args: &[&str]) -> (Child, std::thread::JoinHandle<Vec<u8>>) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let drain = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stderr.read_to_end(&mut out);
        out
    });
    (child, drain)
}

fn wait_listening(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("process exited early: {status}");
        }
        assert!(Instant::now() < deadline, "nothing listening on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One request, so that the access log writes a line; the status line.
fn one_request(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: log-key\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
        SMALL_MESSAGE.len(),
        SMALL_MESSAGE
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().next().unwrap_or_default().to_string()
}

/// Signal the child, wait for it to exit (bounded) and return its stderr.
fn stop(mut child: Child, drain: std::thread::JoinHandle<Vec<u8>>, sig: &str) -> String {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit after {sig}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    String::from_utf8(drain.join().unwrap()).expect("logs are UTF-8")
}

fn serve_logs(format: &str) -> String {
    let mock =
        distill_guard::mock::start("127.0.0.1:0".parse().unwrap(), Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("dg.toml");
    std::fs::write(
        &cfg,
        basic_config(
            &format!("http://{}", mock.addr()),
            &format!("[logging]\nformat = \"{format}\"\nlevel = \"info\"\n"),
        )
        .replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1),
    )
    .unwrap();
    let (mut child, drain) = spawn(&["serve", "--config", cfg.to_str().unwrap()]);
    wait_listening(port, &mut child);
    assert!(one_request(port).starts_with("HTTP/1.1 200"));
    stop(child, drain, "-TERM")
}

#[test]
fn serve_text_logs_into_a_pipe_have_no_colour_codes() {
    let logs = serve_logs("text");
    assert!(logs.contains("request"), "no access line in:\n{logs}");
    assert!(!logs.contains("\x1b["), "escape codes in:\n{logs:?}");
}

#[test]
fn serve_json_logs_are_one_object_per_line() {
    let logs = serve_logs("json");
    assert!(!logs.contains("\x1b["), "escape codes in:\n{logs:?}");
    let mut access = 0;
    for line in logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line:?}"));
        assert!(v.is_object(), "{line}");
        assert!(v["level"].is_string(), "{line}");
        if v["target"] == "distill_guard::access" {
            access += 1;
            assert_eq!(v["fields"]["status"], 200, "{line}");
            assert_eq!(v["fields"]["client"], "127.0.0.1", "{line}");
            assert_eq!(v["fields"]["peer"], "127.0.0.1", "{line}");
        }
    }
    assert_eq!(access, 1, "one access line expected in:\n{logs}");
}

#[test]
fn demo_logs_into_a_pipe_have_no_colour_codes() {
    let port = free_port();
    let (mut child, drain) = spawn(&["demo", "--listen", &format!("127.0.0.1:{port}")]);
    wait_listening(port, &mut child);
    assert!(one_request(port).starts_with("HTTP/1.1 200"));
    let logs = stop(child, drain, "-INT");
    assert!(logs.contains("request"), "no access line in:\n{logs}");
    assert!(!logs.contains("\x1b["), "escape codes in:\n{logs:?}");
}
