//! `distill-guard redteam` on a small budget: a well-formed report, the
//! same for the same seed, and a best strategy no worse for the attacker
//! than where the search started.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_distill-guard");

fn redteam(args: &[&str]) -> std::process::Output {
    let out = Command::new(BIN)
        .arg("redteam")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "redteam failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const SMALL: [&str; 8] = [
    "--budget",
    "4",
    "--minutes",
    "15",
    "--scale",
    "0.1",
    "--seed",
    "3",
];

fn f(v: &serde_json::Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn a_small_search_is_well_formed_deterministic_and_no_worse_than_its_start() {
    let mut args = SMALL.to_vec();
    args.extend(["--report", "json"]);
    let r: serde_json::Value = serde_json::from_slice(&redteam(&args).stdout).unwrap();
    let evals = r["evaluations"].as_array().unwrap();
    assert_eq!(evals.len(), 4, "the budget counts every evaluation");
    assert_eq!(evals[0]["origin"], "start");
    assert_eq!(evals[1]["origin"], "per-key-optimum");
    for (i, e) in evals.iter().enumerate() {
        assert_eq!(e["index"].as_u64(), Some(i as u64));
        assert!(f(e, "cost") > 0.0 && f(e, "hours") > 0.0, "{e}");
        assert!(f(e, "tokens") <= f(e, "baseline_tokens"), "{e}");
        assert!(e["strategy"]["accounts"].as_u64().unwrap() >= 1);
    }
    let (best, start) = (&r["best"], &r["start"]);
    assert!(
        f(best, "tokens_per_cost") >= f(start, "tokens_per_cost"),
        "the best is at least the start"
    );
    assert!(evals
        .iter()
        .all(|e| f(e, "tokens_per_cost") <= f(best, "tokens_per_cost")));
    let reference = &r["per_key_reference"];
    assert!(f(reference, "baseline_tokens") > 0.0, "{reference}");
    match r["cost_multiplier"].as_f64() {
        Some(m) => {
            let want = f(reference, "baseline_tokens_per_cost") / f(best, "tokens_per_cost");
            assert!((m - want).abs() <= 1e-9 * want.max(1.0), "{m} vs {want}");
        }
        None => assert_eq!(f(best, "tokens"), 0.0),
    }
    // The background's cheapest honest population to copy, priced against
    // the same reference.
    let l = &r["look_alike"];
    assert!(
        l.is_object(),
        "an honest population was let out tokens: {r}"
    );
    assert!(f(l, "tokens") > 0.0 && f(l, "cost") > 0.0, "{l}");
    let want = f(reference, "baseline_tokens_per_cost") / (f(l, "tokens") / f(l, "cost"));
    let m = f(l, "cost_multiplier");
    assert!((m - want).abs() <= 1e-9 * want.max(1.0), "{m} vs {want}");
    let again: serde_json::Value = serde_json::from_slice(&redteam(&args).stdout).unwrap();
    assert_eq!(r, again, "the same seed gives the same search");
    let text = String::from_utf8(redteam(&SMALL).stdout).unwrap();
    assert!(text.contains("best evasion"), "{text}");
    assert!(text.contains("cheapest honest look-alike"), "{text}");
    assert!(
        text.contains("cost multiplier against the per-key baseline"),
        "{text}"
    );
}

#[test]
fn redteam_refuses_a_held_out_background_and_a_budget_below_two() {
    for args in [vec!["--background-seed", "9000"], vec!["--budget", "1"]] {
        let out = Command::new(BIN)
            .arg("redteam")
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
    }
}

#[test]
fn a_repriced_best_evasion_gets_what_it_got_in_its_search() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = SMALL.to_vec();
    args.extend(["--report", "json"]);
    let search = redteam(&args).stdout;
    let r: serde_json::Value = serde_json::from_slice(&search).unwrap();
    let report = dir.path().join("search.json");
    std::fs::write(&report, &search).unwrap();
    // The same strategy as a bare object.
    let bare = dir.path().join("strategy.json");
    std::fs::write(&bare, r["best"]["strategy"].to_string()).unwrap();

    let out = redteam(&[
        "--minutes",
        "15",
        "--scale",
        "0.1",
        "--report",
        "json",
        "--reprice",
        report.to_str().unwrap(),
        bare.to_str().unwrap(),
    ]);
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let given = p["strategies"].as_array().unwrap();
    assert_eq!(given.len(), 2);
    let reference = f(&p["per_key_reference"], "baseline_tokens_per_cost");
    let mut lowest = f64::INFINITY;
    for g in given {
        let e = &g["evaluation"];
        assert_eq!(e["origin"], "given");
        assert_eq!(e["strategy"], r["best"]["strategy"]);
        // Same policy, same background, same strategy: the same campaign.
        for key in ["tokens", "baseline_tokens", "cost", "hours"] {
            assert_eq!(e[key], r["best"][key], "{key}");
        }
        assert!(reference >= f(&r["evaluations"][1], "baseline_tokens_per_cost"));
        match g["cost_multiplier"].as_f64() {
            Some(m) => {
                let want = reference / f(e, "tokens_per_cost");
                assert!((m - want).abs() <= 1e-9 * want, "{m} vs {want}");
                lowest = lowest.min(m);
            }
            None => assert_eq!(f(e, "tokens"), 0.0),
        }
    }
    match p["cost_multiplier"].as_f64() {
        Some(m) => assert_eq!(m, lowest),
        None => assert!(lowest.is_infinite()),
    }
    // The cheapest honest look-alike over these runs, one of which is the
    // search's best run again: at least as cheap as the one it named,
    // priced against this run's reference.
    let (l, searched) = (&p["look_alike"], &r["best"]["look_alike"]);
    let per_cost = |v: &serde_json::Value| f(v, "tokens") / f(v, "cost");
    assert!(per_cost(l) >= per_cost(searched), "{l} against {searched}");
    let want = reference / (f(l, "tokens") / f(l, "cost"));
    let m = f(l, "cost_multiplier");
    assert!((m - want).abs() <= 1e-9 * want, "{m} vs {want}");
    let text = String::from_utf8(
        redteam(&[
            "--minutes",
            "15",
            "--scale",
            "0.1",
            "--reprice",
            bare.to_str().unwrap(),
        ])
        .stdout,
    )
    .unwrap();
    assert!(text.contains("lowest cost multiplier"), "{text}");
    assert!(text.contains("cheapest honest look-alike"), "{text}");
}

#[test]
fn reprice_refuses_what_is_not_a_strategy_of_the_space() {
    let dir = tempfile::tempdir().unwrap();
    let mut strategy = serde_json::json!({
        "accounts": 100, "addresses_per_account": 0.5, "address_rotation": false,
        "stack_rotation": false, "sdk_mimic": true, "paraphrase_share": 0.5,
        "requests_per_account_per_hour": 10.0, "jitter": 0.2, "warmup_minutes": 0,
        "cover_share": 0.1, "models": 1, "pinned_max_tokens": false, "aged_days": 0.0
    });
    let cases = [
        ("too many accounts", {
            let mut s = strategy.clone();
            s["accounts"] = 100_000.into();
            s
        }),
        ("an unknown field", {
            strategy["accounts_typo"] = 3.into();
            strategy
        }),
        ("not JSON", serde_json::Value::String("{".into())),
    ];
    for (what, v) in cases {
        let path = dir.path().join("s.json");
        let text = match &v {
            serde_json::Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .args(["redteam", "--minutes", "15", "--scale", "0.1", "--reprice"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{what}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("s.json"), "{what}: {err}");
    }
    // A search's own knobs do not go with it.
    let out = Command::new(BIN)
        .args(["redteam", "--seed", "2", "--reprice", "x.json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
