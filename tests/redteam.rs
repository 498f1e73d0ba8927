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
    let again: serde_json::Value = serde_json::from_slice(&redteam(&args).stdout).unwrap();
    assert_eq!(r, again, "the same seed gives the same search");
    let text = String::from_utf8(redteam(&SMALL).stdout).unwrap();
    assert!(text.contains("best evasion"), "{text}");
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
