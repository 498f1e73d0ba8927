//! Log output as ops teams collect it: into a pipe or a file, never a
//! terminal. Text logs then carry no ANSI colour codes, and
//! `[logging] format = "json"` is one JSON object per line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_distill-guard");

/// Start `args` (its listeners on port 0) with stderr piped and
/// colour-related environment cleared; wait until it logs its client
/// listener.
fn spawn(args: &[&str]) -> Spawned {
    spawn_listening(
        Command::new(BIN)
            .args(args)
            .env_remove("NO_COLOR")
            .stdout(Stdio::null()),
        1,
        false,
    )
}

/// One request, so that the access log writes a line; the status line.
fn one_request(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
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
fn stop(child: Spawned, sig: &str) -> String {
    String::from_utf8(child.stop(sig)).expect("logs are UTF-8")
}

fn serve_logs(format: &str) -> String {
    let mock =
        distill_guard::mock::start("127.0.0.1:0".parse().unwrap(), Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("dg.toml");
    std::fs::write(
        &cfg,
        basic_config(
            &format!("http://{}", mock.addr()),
            &format!("[logging]\nformat = \"{format}\"\nlevel = \"info\"\n"),
        ),
    )
    .unwrap();
    let child = spawn(&["serve", "--config", cfg.to_str().unwrap()]);
    assert!(one_request(child.listeners[0]).starts_with("HTTP/1.1 200"));
    stop(child, "-TERM")
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
    let child = spawn(&["demo", "--listen", "127.0.0.1:0"]);
    assert!(one_request(child.listeners[0]).starts_with("HTTP/1.1 200"));
    let logs = stop(child, "-INT");
    assert!(logs.contains("request"), "no access line in:\n{logs}");
    assert!(!logs.contains("\x1b["), "escape codes in:\n{logs:?}");
}
