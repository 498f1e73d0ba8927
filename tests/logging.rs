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

/// A mock upstream and a config in a temporary directory that proxies to it, logging at info in `format`.
fn logging_config(
    format: &str,
) -> (
    distill_guard::mock::MockHandle,
    tempfile::TempDir,
    std::path::PathBuf,
) {
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
    (mock, dir, cfg)
}

fn serve_logs(format: &str) -> String {
    let (_mock, _dir, cfg) = logging_config(format);
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

/// One request on a fresh connection with a `path_len`-byte path, so that its access line is about that long;
/// the response's status line, or an empty string when none came within 10 s.
fn request_with_path(addr: SocketAddr, path_len: usize) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let path = format!("/v1/{}", "p".repeat(path_len));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nx-api-key: log-key\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().next().unwrap_or_default().to_string()
}

/// `name{labels} value` from the admin API's `/metrics`.
fn metric(admin: SocketAddr, series: &str) -> Option<u64> {
    let mut s = TcpStream::connect(admin).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A log reader that stops reading (a paused pager, a log shipper that fell behind) must not stop the proxy:
/// every worker used to block writing its access line once the pipe's 64 KiB were full, and with it every
/// request. Lines are dropped and counted instead, and the log says so once it is read again.
#[test]
fn a_log_reader_that_stops_reading_does_not_stop_requests() {
    use std::io::BufRead;
    let (_mock, _dir, cfg) = logging_config("json");
    let mut child = Command::new(BIN)
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader: reads until both listeners are logged, then stops until told to go on.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (addrs_tx, addrs_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let (mut proxy, mut admin) = (None, None);
        let mut line = String::new();
        while proxy.is_none() || admin.is_none() {
            line.clear();
            if stderr.read_line(&mut line).unwrap_or(0) == 0 {
                return String::new();
            }
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            let address = v["fields"]["address"].as_str().map(|a| a.parse().unwrap());
            match v["fields"]["message"].as_str() {
                Some("listening") => proxy = address,
                Some("admin API listening") => admin = address,
                _ => {}
            }
        }
        let _ = addrs_tx.send((proxy.unwrap(), admin.unwrap()));
        let _ = go_rx.recv();
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        rest
    });
    let (proxy, admin): (SocketAddr, SocketAddr) = addrs_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("listening within 20 s");
    // 400 access lines of about 4 KiB: the pipe (64 KiB) and the proxy's queue (1 MiB) both fill.
    for i in 0..400 {
        let status = request_with_path(proxy, 4096);
        assert!(
            status.starts_with("HTTP/1.1 "),
            "request {i} got no answer within 10 s while stderr was not read: {status:?}"
        );
    }
    let dropped = r#"distill_guard_output_records_total{log="stderr",outcome="dropped"}"#;
    let lost = metric(admin, dropped).expect("the stderr series in /metrics");
    assert!(lost > 0, "400 lines of 4 KiB fit a 1 MiB queue?");
    // Reading again: what was queued arrives, the drop is reported, and the proxy stops cleanly.
    go_tx.send(()).unwrap();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "no exit within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rest = reader.join().unwrap();
    let lines: Vec<serde_json::Value> = rest
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    let access = lines
        .iter()
        .filter(|v| v["target"] == "distill_guard::access")
        .count();
    assert!(
        access >= 200 && (access as u64) + lost >= 400,
        "{access} access lines written and {lost} dropped of 400"
    );
    let report = lines
        .iter()
        .find(|v| v["fields"]["message"] == "log lines dropped: stderr was not read fast enough")
        .unwrap_or_else(|| panic!("no report of the drop in:\n{rest}"));
    assert!(report["fields"]["dropped"].as_u64().unwrap() > 0);
    assert!(
        lines.iter().any(|v| v["fields"]["message"] == "stopped"),
        "the last line, written at exit, is missing"
    );
}
