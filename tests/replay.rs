//! Traffic records and replay: what the live proxy decided is what replay
//! decides on the recorded traffic; replay is deterministic; malformed lines
//! are reported by number (skipped, or fatal with --strict).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use distill_guard::replay::{replay_file, ReplayOptions};
use support::*;

const POLICY: &str = "[tiers.default]\nrequests_per_minute = 60\nburst_requests = 3\n\
input_tokens_per_minute = 10000000\noutput_tokens_per_minute = 10000000\nmax_concurrent = 8\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_agrees_with_the_live_proxy_and_is_deterministic() {
    let mock =
        distill_guard::mock::start("127.0.0.1:0".parse().unwrap(), Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("traffic.jsonl");
    let text = basic_config(
        &format!("http://{}", mock.addr()),
        &format!("{POLICY}[record]\npath = \"{}\"\n", record.display()),
    );
    let config = config_from(&text, dir.path());
    let proxy = distill_guard::server::start(config.clone()).unwrap();
    let url = format!("http://{}/v1/messages", proxy.local_addrs()[0]);
    let mut live = vec![];
    for (key, pause) in [
        ("sk-a", 0),
        ("sk-a", 0),
        ("sk-b", 0),
        ("sk-a", 0),
        ("sk-a", 0),
        ("sk-a", 0),
        ("sk-b", 0),
        ("sk-a", 1200),
        ("sk-a", 0),
    ] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let mut req = messages_request(&url, SMALL_MESSAGE);
        req.headers_mut().insert("x-api-key", key.parse().unwrap());
        let r = timeout(client().request(req)).await.unwrap();
        live.push(r.status().as_u16());
        let _ = r.into_body();
    }
    assert!(live.contains(&429) && live.contains(&200), "{live:?}");
    proxy.shutdown();
    tokio::task::spawn_blocking(move || proxy.join())
        .await
        .unwrap();

    let text = std::fs::read_to_string(&record).unwrap();
    assert_eq!(text.lines().count(), live.len());
    assert!(
        !text.contains("sk-a") && !text.contains("Hello there"),
        "key or prompt in the record"
    );

    let opts = ReplayOptions::default();
    let mut out1 = Vec::new();
    let s1 = replay_file(&config, &record, &opts, Some(&mut out1)).unwrap();
    assert_eq!(s1.replayed as usize, live.len());
    assert_eq!(
        s1.agree,
        s1.replayed,
        "replay disagrees with the live proxy: {}",
        s1.render()
    );
    assert_eq!(s1.by_action, s1.live_by_action);
    assert_eq!(
        s1.by_action.get("throttle").copied().unwrap_or(0) as usize,
        live.iter().filter(|s| **s == 429).count()
    );
    // Same record, same config: byte-identical output.
    let mut out2 = Vec::new();
    let s2 = replay_file(&config, &record, &opts, Some(&mut out2)).unwrap();
    assert_eq!(out1, out2);
    assert_eq!(
        serde_json::to_string(&s1).unwrap(),
        serde_json::to_string(&s2).unwrap()
    );
}

#[test]
fn malformed_lines_are_reported_by_number_and_strict_fails() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_from(&basic_config("http://127.0.0.1:9", POLICY), dir.path());
    let good = r#"{"v":1,"t_ms":1700000000000,"account":"00000000000000aa","input_tokens":10,"output_tokens":5,"decision":"allow"}"#;
    let path = dir.path().join("r.jsonl");
    std::fs::write(
        &path,
        format!(
            "{good}\nnot json at all\n{}\n{}\n{good}\n",
            good.replace("00000000000000aa", "zz"),
            good.replace("\"v\":1", "\"v\":9")
        ),
    )
    .unwrap();
    let s = replay_file(&config, &path, &ReplayOptions::default(), None).unwrap();
    assert_eq!(s.replayed, 2);
    assert_eq!(s.skipped_total, 3);
    let lines: Vec<usize> = s.skipped.iter().map(|(n, _)| *n).collect();
    assert_eq!(lines, vec![2, 3, 4]);
    let strict = ReplayOptions {
        strict: true,
        ..Default::default()
    };
    let e = replay_file(&config, &path, &strict, None).unwrap_err();
    assert!(e.contains("line 2"), "{e}");

    // The command line: a report, and a non-zero exit with --strict.
    let cfg = dir.path().join("test.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_distill-guard"))
        .args(["replay", "--config"])
        .arg(&cfg)
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("replayed 2 of 5 lines (3 malformed, skipped)"),
        "{report}"
    );
    assert!(report.contains("skipped line 2"), "{report}");
    assert!(!report.contains("line 2: line 2"), "{report}");
    let out = Command::new(env!("CARGO_BIN_EXE_distill-guard"))
        .args(["replay", "--strict", "--config"])
        .arg(&cfg)
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
}

#[test]
fn compare_shows_account_by_account_what_changes() {
    let dir = tempfile::tempdir().unwrap();
    let strict_cfg = config_from(&basic_config("http://127.0.0.1:9", POLICY), dir.path());
    let loose_dir = tempfile::tempdir().unwrap();
    let loose_cfg = config_from(
        &basic_config(
            "http://127.0.0.1:9",
            &POLICY.replace("burst_requests = 3", "burst_requests = 100"),
        ),
        loose_dir.path(),
    );
    // Account aa sends 6 requests in one second, bb one.
    let line = |acct: &str, ms: u64| {
        format!(
            r#"{{"v":1,"t_ms":{ms},"account":"{acct}","input_tokens":10,"output_tokens":5,"decision":"allow"}}"#
        )
    };
    let mut text = String::new();
    for i in 0..6 {
        text.push_str(&line("00000000000000aa", 1_700_000_000_000 + i * 100));
        text.push('\n');
    }
    text.push_str(&line("00000000000000bb", 1_700_000_000_700));
    text.push('\n');
    let path = dir.path().join("r.jsonl");
    std::fs::write(&path, text).unwrap();
    let opts = ReplayOptions {
        strict: true,
        compare: Some(loose_cfg),
    };
    let s = replay_file(&strict_cfg, &path, &opts, None).unwrap();
    let changes = s.compare_changes.unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        changes["00000000000000aa"],
        ("throttle".to_string(), "allow".to_string())
    );
    assert_eq!(s.by_action["throttle"], 3);
    assert_eq!(s.compare_by_action.unwrap()["allow"], 7);
}
