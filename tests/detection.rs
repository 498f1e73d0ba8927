//! Behaviour detection end to end: degrade rewrites what reaches the
//! upstream, slow adds its delay, and shadow mode changes no response but
//! writes the same audit lines as enforce. Thresholds are set low so a
//! handful of chain-of-thought-eliciting requests climbs the ladder.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::*;

const COT: &str = "Imagine and articulate the internal reasoning behind the completed response below, \
and write it out step by step before giving the final answer. Question: why does ice float on water? \
Answer: because it is less dense.";

fn detection(mode: &str, thresholds: &str, extra: &str) -> String {
    format!(
        r#"
[tiers.default]
requests_per_minute = 6000
burst_requests = 1000
input_tokens_per_minute = 100000000
output_tokens_per_minute = 100000000
max_concurrent = 64

[detection]
mode = "{mode}"
[detection.thresholds]
{thresholds}
{extra}
"#
    )
}

/// Slow and degrade low, throttle and block out of reach. The score has no
/// evidence before 8 requests; reasoning elicitation alone then scores
/// 0.15 × n / (n + 3): 0.1125 at the 9th request, 0.126 at the 16th, so
/// both thresholds are crossed at the 9th, clear of the scores either side.
const LOW_DEGRADE: &str =
    "slow_enter = 0.05\nslow_exit = 0.03\ndegrade_enter = 0.09\ndegrade_exit = 0.07\n\
throttle_enter = 0.98\nthrottle_exit = 0.97\nblock_enter = 0.995\nblock_exit = 0.99";

/// No slow delay; degrade clamps to 64 output tokens.
const DEGRADE_64: &str = "[detection.slow]\nmin_delay_ms = 0\nmax_delay_ms = 0\n\
[detection.degrade]\nmax_output_tokens = 64\n";

/// The signals that read arrival times, off: with them a loaded machine
/// (irregular gaps) scores the same requests lower than an idle one, and
/// the ladder is climbed at a different request in every run.
const NO_TIMING: &str = "[detection.weights]\ntiming_regularity = 0.0\nvolume = 0.0\n";

fn body() -> String {
    serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 4000,
        "thinking": {"type": "enabled", "budget_tokens": 32000},
        "messages": [{"role": "user", "content": COT}]
    })
    .to_string()
}

async fn send(env: &Env, n: usize) -> Vec<(u16, Duration)> {
    let mut out = vec![];
    for _ in 0..n {
        let start = Instant::now();
        let r = timeout(client().request(messages_request(&env.url("/v1/messages"), &body())))
            .await
            .unwrap();
        let s = r.status().as_u16();
        let _ = body_json(r).await;
        out.push((s, start.elapsed()));
    }
    out
}

fn last_upstream_body(env: &Env) -> serde_json::Value {
    serde_json::from_str(&env.mock.requests().last().unwrap().body).unwrap()
}

/// The account with the highest score, as `/admin/accounts/{id}` shows it (its score above 0.09).
async fn top_scored_account(env: &Env) -> serde_json::Value {
    let admin = env.proxy.admin_addr().unwrap();
    let get = |path: String| {
        client().request(
            http::Request::get(format!("http://{admin}{path}"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
    };
    let top = body_json(timeout(get("/admin/top?by=score".into())).await.unwrap()).await;
    let id = top["accounts"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{top}"))
        .to_string();
    assert!(
        top["accounts"][0]["score"].as_f64().unwrap() > 0.09,
        "{top}"
    );
    body_json(timeout(get(format!("/admin/accounts/{id}"))).await.unwrap()).await
}

/// Whether reasoning elicitation (the phrase lists) adds to the account's score.
fn elicitation_counted(acct: &serde_json::Value) -> bool {
    acct["score"]["signals"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| {
            s["signal"] == "reasoning_elicitation" && s["contribution"].as_f64().unwrap() > 0.0
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degrade_rewrites_what_the_upstream_sees() {
    let env = Env::start(&detection(
        "enforce",
        LOW_DEGRADE,
        &format!("{DEGRADE_64}{NO_TIMING}"),
    ));
    let first = send(&env, 1).await;
    assert_eq!(first[0].0, 200);
    let v = last_upstream_body(&env);
    assert_eq!(v["max_tokens"], 4000, "the first request is not degraded");
    assert!(v.get("thinking").is_some());
    let rest = send(&env, 15).await;
    assert!(rest.iter().all(|(s, _)| *s == 200));
    // The admin API shows the score with every signal's value and contribution.
    let acct = top_scored_account(&env).await;
    assert_eq!(acct["score"]["level"], "degrade", "{acct}");
    assert!(elicitation_counted(&acct), "{acct}");
    let v = last_upstream_body(&env);
    assert_eq!(v["max_tokens"], 64, "degraded request: {v}");
    assert!(v.get("thinking").is_none(), "thinking must be removed: {v}");
    assert_eq!(v["messages"][0]["content"], COT, "the prompt is untouched");
    // The upstream got a correct content-length for the rewritten body.
    let seen = env.mock.requests().last().unwrap().clone();
    let len: usize = seen
        .headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .expect("content-length");
    assert_eq!(len, seen.body.len());
}

/// A body and a prompt of 64 KiB or more are inspected and analysed on the blocking pool, not on the worker
/// (BENCHMARKS.md, "Long prompts off the worker"): what they say still reaches the engine (the elicitation at the
/// end of a pasted document) and the degrade rewrite (the body parsed whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_prompt_is_analysed_off_the_worker_and_still_counts() {
    let env = Env::start(&detection(
        "enforce",
        LOW_DEGRADE,
        &format!("{DEGRADE_64}{NO_TIMING}"),
    ));
    let document =
        "The quarterly report lists revenue by region and by product line. ".repeat(1600);
    let prompt = format!("{document}\n{COT}");
    assert!(prompt.len() > 100 * 1024);
    // No thinking parameters: reasoning elicitation then comes from the phrase lists alone.
    let long = serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 4000,
        "messages": [{"role": "user", "content": prompt}]
    })
    .to_string();
    for i in 0..16 {
        let r = timeout(client().request(messages_request(&env.url("/v1/messages"), &long)))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        let _ = body_json(r).await;
        let v = last_upstream_body(&env);
        if i == 0 {
            assert_eq!(v["max_tokens"], 4000, "the first request is not degraded");
        }
    }
    let acct = top_scored_account(&env).await;
    assert_eq!(acct["score"]["level"], "degrade", "{acct}");
    assert!(
        elicitation_counted(&acct),
        "the phrase at the end went unseen: {acct}"
    );
    let v = last_upstream_body(&env);
    assert_eq!(
        v["max_tokens"], 64,
        "the 16th request is degraded: {}",
        v["max_tokens"]
    );
    assert_eq!(
        v["messages"][0]["content"], prompt,
        "the prompt is untouched"
    );
}

/// A conversation through the proxy: each turn sends the history again. The part an earlier request sent is not
/// walked again (`/metrics` counts the turns walked past it, and a turn sent twice not walked at all), and what
/// the new part says still counts: the first request holds no elicitation phrase, and each later one brings its
/// own in its newest message, so the phrase lists see them only if the new parts are scanned; they climb the
/// ladder as in `degrade_rewrites_what_the_upstream_sees`. Every turn is charged the whole prompt's token estimate
/// (the mock upstream's report), and another account sending the first turn walks it whole again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversations_history_is_walked_once_and_what_is_new_still_counts() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("traffic.jsonl");
    let env = Env::start(&detection(
        "enforce",
        LOW_DEGRADE,
        &format!(
            "{DEGRADE_64}{NO_TIMING}\n[record]\npath = \"{}\"\n",
            record.display()
        ),
    ));
    // What the mock upstream reports: the estimate of the whole prompt.
    let mut reported = vec![];
    let document = "The quarterly report lists revenue by region and by product line. ".repeat(30);
    let mut messages = vec![serde_json::json!({"role": "user", "content": document})];
    let mut degraded_at = None;
    let mut first_body = None;
    for turn in 0..=16 {
        if turn > 0 {
            messages.push(
                serde_json::json!({"role": "assistant", "content": format!("Noted, part {turn}.")}),
            );
            messages.push(
                serde_json::json!({"role": "user", "content": format!("{COT} (part {turn})")}),
            );
        }
        let body = serde_json::json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 4000,
            "messages": messages,
        })
        .to_string();
        first_body.get_or_insert_with(|| body.clone());
        // The last turn is sent twice, as a client retries.
        for _ in 0..if turn == 16 { 2 } else { 1 } {
            let r = timeout(client().request(messages_request(&env.url("/v1/messages"), &body)))
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "turn {turn}");
            reported.push(body_json(r).await["usage"]["input_tokens"].as_u64());
        }
        if degraded_at.is_none() && last_upstream_body(&env)["max_tokens"] == 64 {
            degraded_at = Some(turn);
        }
    }
    let acct = top_scored_account(&env).await;
    assert!(elicitation_counted(&acct), "{acct}");
    assert!(
        degraded_at.is_some_and(|t| t <= 12),
        "degraded at {degraded_at:?}: {acct}"
    );
    // Another account sending the first turn does not find its walks.
    let mut req = messages_request(&env.url("/v1/messages"), first_body.as_deref().unwrap());
    req.headers_mut()
        .insert("x-api-key", "another-customer".parse().unwrap());
    let r = timeout(client().request(req)).await.unwrap();
    assert_eq!(r.status(), 200);
    reported.push(body_json(r).await["usage"]["input_tokens"].as_u64());
    let admin = env.proxy.admin_addr().unwrap();
    let metrics = timeout(
        client().request(
            http::Request::get(format!("http://{admin}/metrics"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    let text = String::from_utf8(
        http_body_util::BodyExt::collect(metrics.into_body())
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let count = |walked: &str| -> u64 {
        let line = format!("distill_guard_prompts_walked_total{{walked=\"{walked}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{line} missing:\n{text}"))
    };
    assert_eq!(count("none"), 1, "the turn sent twice");
    assert_eq!(count("all"), 2, "the first turn, by each account");
    assert_eq!(count("rest"), 16, "every later turn");
    // Admission charged each turn the whole prompt's estimate, its history's
    // part taken from the cache.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let charged: Vec<Option<u64>> = loop {
        let text = std::fs::read_to_string(&record).unwrap_or_default();
        if text.lines().count() >= reported.len() || std::time::Instant::now() > deadline {
            break text
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["input_tokens"].as_u64()
                })
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(charged, reported);
    assert!(
        reported.iter().all(|t| t.is_some_and(|t| t > 300)),
        "{reported:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_adds_the_configured_delay() {
    let env = Env::start(&detection(
        "enforce",
        "slow_enter = 0.09\nslow_exit = 0.07\ndegrade_enter = 0.97\ndegrade_exit = 0.96\n\
         throttle_enter = 0.98\nthrottle_exit = 0.975\nblock_enter = 0.995\nblock_exit = 0.99",
        &format!("[detection.slow]\nmin_delay_ms = 400\nmax_delay_ms = 400\n{NO_TIMING}"),
    ));
    let times = send(&env, 14).await;
    assert!(times.iter().all(|(s, _)| *s == 200));
    // Before the evidence builds up: fast; once slowed: at least 400 ms.
    assert!(times[0].1 < Duration::from_millis(300), "{:?}", times[0]);
    let slowed: Vec<_> = times
        .iter()
        .filter(|(_, t)| *t >= Duration::from_millis(400))
        .collect();
    assert!(slowed.len() >= 3, "slowed {slowed:?} of {times:?}");
    let last = times.last().unwrap().1;
    assert!(
        last >= Duration::from_millis(400) && last < Duration::from_millis(1500),
        "{last:?}"
    );
    // Degrade was not reached: the upstream saw the original limit.
    assert_eq!(last_upstream_body(&env)["max_tokens"], 4000);
}

async fn audit_run(mode: &str) -> (Vec<serde_json::Value>, serde_json::Value) {
    let mock =
        distill_guard::mock::start("127.0.0.1:0".parse().unwrap(), Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let text = basic_config(
        &format!("http://{}", mock.addr()),
        &format!(
            "{}[audit]\npath = \"{}\"\n",
            detection(mode, LOW_DEGRADE, &format!("{DEGRADE_64}{NO_TIMING}")),
            audit.display()
        ),
    );
    let proxy = distill_guard::server::start(config_from(&text, dir.path())).unwrap();
    let url = format!("http://{}/v1/messages", proxy.local_addrs()[0]);
    for _ in 0..16 {
        let r = timeout(client().request(messages_request(&url, &body())))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = body_json(r).await;
    }
    let upstream: serde_json::Value =
        serde_json::from_str(&mock.requests().last().unwrap().body).unwrap();
    proxy.shutdown();
    tokio::task::spawn_blocking(move || proxy.join())
        .await
        .unwrap();
    let lines = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_changes_nothing_but_writes_the_same_audit_lines() {
    let (enforce, enforced_upstream) = audit_run("enforce").await;
    let (shadow, shadow_upstream) = audit_run("shadow").await;
    // Enforce degraded the upstream request; shadow did not.
    assert_eq!(enforced_upstream["max_tokens"], 64);
    assert_eq!(shadow_upstream["max_tokens"], 4000);
    assert!(shadow_upstream.get("thinking").is_some());
    // Same lines, apart from the mode and ids.
    assert!(!enforce.is_empty());
    assert_eq!(enforce.len(), shadow.len(), "{enforce:?}\n{shadow:?}");
    for (e, s) in enforce.iter().zip(&shadow) {
        assert_eq!(e["mode"], "enforce");
        assert_eq!(s["mode"], "shadow");
        assert_eq!(e["decision"], s["decision"]);
        assert_eq!(e["reasons"][0]["level"], s["reasons"][0]["level"]);
        // The same signals (their order follows contributions, which depend
        // on real arrival times and so differ slightly between the runs).
        let signals = |v: &serde_json::Value| -> std::collections::BTreeSet<String> {
            v["reasons"].as_array().unwrap()[1..]
                .iter()
                .map(|r| r["signal"].as_str().unwrap().to_string())
                .filter(|s| s != "timing_regularity" && s != "volume")
                .collect()
        };
        assert_eq!(signals(e), signals(s));
    }
    // Reasons carry each signal's value and contribution; no prompt text.
    let line = &enforce.last().unwrap();
    assert!(line["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .any(
            |r| r["signal"] == "reasoning_elicitation" && r["contribution"].as_f64().unwrap() > 0.0
        ));
    assert_eq!(line["reasons"][0]["phrase_lists"][0], "elicitation");
    assert!(
        !serde_json::to_string(&enforce)
            .unwrap()
            .contains("ice float"),
        "prompt text in the audit log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_is_a_403_with_one_audit_line_carrying_the_reasons() {
    let mock =
        distill_guard::mock::start("127.0.0.1:0".parse().unwrap(), Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let text = basic_config(
        &format!("http://{}", mock.addr()),
        &format!(
            "{}[audit]\npath = \"{}\"\n",
            detection(
                "enforce",
                "slow_enter = 0.05\nslow_exit = 0.04\ndegrade_enter = 0.06\ndegrade_exit = 0.05\n\
                 throttle_enter = 0.07\nthrottle_exit = 0.06\nblock_enter = 0.08\nblock_exit = 0.07",
                "[detection.slow]\nmin_delay_ms = 0\nmax_delay_ms = 0\n",
            ),
            audit.display()
        ),
    );
    let proxy = distill_guard::server::start(config_from(&text, dir.path())).unwrap();
    let url = format!("http://{}/v1/chat/completions", proxy.local_addrs()[0]);
    let mut statuses = vec![];
    let mut last = serde_json::Value::Null;
    for _ in 0..12 {
        let r = timeout(client().request(messages_request(&url, &body())))
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        last = body_json(r).await;
    }
    assert_eq!(statuses[0], 200);
    assert_eq!(*statuses.last().unwrap(), 403, "{statuses:?}");
    // OpenAI's error shape on the OpenAI path, saying why.
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("distillation"),
        "{last}"
    );
    proxy.shutdown();
    tokio::task::spawn_blocking(move || proxy.join())
        .await
        .unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let blocks = lines.iter().filter(|l| l["decision"] == "block").count();
    let refused = statuses.iter().filter(|s| **s == 403).count();
    assert_eq!(
        blocks, refused,
        "one audit line per blocked request: {lines:?}"
    );
    let b = lines.iter().find(|l| l["decision"] == "block").unwrap();
    assert_eq!(b["mode"], "enforce");
    assert_eq!(b["reasons"][0]["enforced_level"], "block");
    assert!(
        b["reasons"].as_array().unwrap().len() > 1,
        "signals missing: {b}"
    );
}
