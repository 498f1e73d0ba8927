//! `distill-guard simulate` end to end: the shipped scenarios, the goals on
//! the small one, the report's JSON, determinism, and simulate | replay.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_distill-guard");

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn simulate(args: &[&str]) -> (serde_json::Value, std::process::Output) {
    let out = Command::new(BIN)
        .arg("simulate")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "simulate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (report, out)
}

fn small_report() -> serde_json::Value {
    let small = repo("config/scenarios/small.toml");
    simulate(&["--scenario", small.to_str().unwrap(), "--report", "json"]).0
}

fn f(v: &serde_json::Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// Share of a population's requests served in full (allowed or slowed).
fn served(pop: &serde_json::Value) -> f64 {
    (f(pop, "allowed") + f(pop, "slowed")) / f(pop, "requests")
}

#[test]
fn every_shipped_scenario_validates() {
    for entry in std::fs::read_dir(repo("config/scenarios")).unwrap() {
        let path = entry.unwrap().path();
        let s = distill_guard::simulate::scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.populations.iter().any(|p| p.attack), "{}", path.display());
        assert!(
            s.populations.iter().any(|p| !p.attack),
            "{}",
            path.display()
        );
    }
    // The default scenario is sized like the published campaigns: about
    // 24,000 attack accounts.
    let d =
        distill_guard::simulate::scenario::load(&repo("config/scenarios/default.toml")).unwrap();
    let attack: u32 = d
        .populations
        .iter()
        .filter(|p| p.attack)
        .map(|p| p.accounts)
        .sum();
    assert_eq!(attack, 24_000);
}

/// The goals (BENCHMARKS.md) on the small scenario as its own seed (7)
/// meets them: every attack contained within 10 simulated minutes of its
/// start; honest requests refused ≤ 0.1 %; the hydra's exchanges served in
/// full ≤ 5 % of what an unprotected API serves. The per-key-only baseline
/// is reported beside it. (The attack overall is not within 5 %: see the
/// next test. Nor is containment within 10 minutes for every seed: see
/// `small_scenario_over_several_seeds`.)
#[test]
fn small_scenario_meets_the_containment_goal_and_the_goals_for_the_hydra_and_honest_users() {
    let r = small_report();
    for key in [
        "attack_served_fraction",
        "attack_degraded_fraction",
        "legit_refused_fraction",
        "legit_slowed_fraction",
    ] {
        f(&r, key);
        f(&r["baseline"], key);
    }
    assert!(r.get("containment_seconds").is_some());
    assert!(r["baseline"].get("containment_seconds").is_some());

    assert!(f(&r, "legit_refused_fraction") <= 0.001, "{r}");
    let contained = r["containment_seconds"].as_u64().expect("contained");
    assert!(
        contained <= 600,
        "slowest attack contained after {contained} s"
    );
    let hydra = &r["populations"]["hydra"];
    assert!(served(hydra) <= 0.05, "hydra served {}", served(hydra));
    let contained = hydra["containment_seconds"]
        .as_u64()
        .expect("hydra contained");
    assert!(contained <= 600, "hydra contained after {contained} s");
    // Honest populations one by one.
    for (name, p) in r["populations"].as_object().unwrap() {
        if p["attack"] == false {
            assert_eq!(
                f(p, "throttled") + f(p, "blocked"),
                0.0,
                "{name} refused: {p}"
            );
        }
    }
    // The baseline (per-key limits only) serves the whole campaign and
    // never contains it.
    let b = &r["baseline"];
    assert_eq!(f(b, "attack_served_fraction"), 1.0);
    assert!(b["containment_seconds"].is_null());
    assert_eq!(f(b, "legit_refused_fraction"), 0.0);
}

/// The small scenario's attack overall is served in full a little above
/// the 5 % goal (5.6 %), because in a one-hour scenario whose accounts send
/// about 11 requests each, first contact is a large share: 500 of the 5,713
/// attack requests are an account's first. Every stealth account's first
/// request is served in full (its paraphrases link only per template then;
/// the largest linked group in its first five minutes has 14 accounts) and
/// 52 of the hydra's (its first wave, before any of its six template
/// clusters holds the 8 requests a score needs): 4.4 % of the attack is
/// served on first contact (`attack_first_served_fraction`), before any
/// evidence can exist (BENCHMARKS.md, "Simulation"). This pins what is
/// achieved, so a regression shows.
#[test]
fn small_scenario_attack_served_is_pinned_just_above_the_goal() {
    let r = small_report();
    assert!(f(&r, "attack_served_fraction") <= 0.06, "{r}");
    let first = f(&r, "attack_first_served_fraction");
    assert!(
        first > 0.0 && first <= f(&r, "attack_served_fraction"),
        "{r}"
    );
    assert!(f(&r, "attack_first_requests_fraction") >= first, "{r}");
    // Unprotected, every first request is served.
    let b = &r["baseline"];
    assert_eq!(
        f(b, "attack_first_served_fraction"),
        f(b, "attack_first_requests_fraction")
    );
    let stealth = &r["populations"]["stealth"];
    assert!(
        served(stealth) <= 0.13,
        "stealth served {}",
        served(stealth)
    );
    assert!(f(&r, "attack_output_tokens_fraction") <= 0.10, "{r}");
}

/// `--seeds`: one run per seed, each the same as a run with `--seed`, and
/// the spread of the figures over them. On the small scenario it also pins
/// what holds whatever the draw — no honest request refused, the hydra
/// contained within 10 minutes — and how far the rest moves: over seeds
/// 1–16 the attack is served in full 5.1–7.5 % and first contained after
/// 540–660 s (BENCHMARKS.md, "Simulation"), so 600 s is met by some draws
/// and missed by others.
#[test]
fn small_scenario_over_several_seeds() {
    let small = repo("config/scenarios/small.toml");
    let small = small.to_str().unwrap();
    let (all, _) = simulate(&[
        "--scenario",
        small,
        "--seed",
        "3",
        "--seeds",
        "4",
        "--report",
        "json",
    ]);
    let runs = all["runs"].as_array().unwrap();
    let seeds: Vec<u64> = runs.iter().map(|r| r["seed"].as_u64().unwrap()).collect();
    assert_eq!(seeds, [3, 4, 5, 6]);
    // A run of the batch is the run of its seed alone.
    let (alone, _) = simulate(&["--scenario", small, "--seed", "5", "--report", "json"]);
    assert_eq!(alone["seed"], 5);
    assert_eq!(runs[2], alone);

    let mut served: Vec<f64> = runs
        .iter()
        .map(|r| f(r, "attack_served_fraction"))
        .collect();
    served.sort_by(f64::total_cmp);
    let spread = &all["attack_served_fraction"];
    assert_eq!(f(spread, "min"), served[0]);
    assert_eq!(f(spread, "max"), served[3]);
    assert_eq!(f(spread, "median"), (served[1] + served[2]) / 2.0);
    let c = &all["containment_seconds"];
    let (lo, mid, hi) = (
        c["min"].as_u64().unwrap(),
        c["median"].as_u64().unwrap(),
        c["max"].as_u64().unwrap(),
    );
    assert!(lo <= mid && mid <= hi, "{c}");

    for r in runs {
        assert_eq!(f(r, "legit_refused_fraction"), 0.0, "{r}");
        let hydra = &r["populations"]["hydra"];
        assert!(hydra["containment_seconds"].as_u64().unwrap() <= 600, "{r}");
        // Pinned, not goals: what these seeds reach today.
        assert!(f(r, "attack_served_fraction") <= 0.08, "{r}");
        assert!(r["containment_seconds"].as_u64().unwrap() <= 720, "{r}");
    }
}

#[test]
fn simulate_seeds_refuses_zero_runs_and_a_record() {
    let small = repo("config/scenarios/small.toml");
    for args in [vec!["--seeds", "0"], vec!["--seeds", "2", "--record", "-"]] {
        let out = Command::new(BIN)
            .args(["simulate", "--scenario", small.to_str().unwrap()])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--seeds"), "{args:?}: {err}");
    }
}

#[test]
fn simulate_is_deterministic_and_its_record_replays_to_the_same_headline() {
    let dir = tempfile::tempdir().unwrap();
    let small = repo("config/scenarios/small.toml");
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let (report, _) = simulate(&[
        "--scenario",
        small.to_str().unwrap(),
        "--report",
        "json",
        "--record",
        a.to_str().unwrap(),
    ]);
    simulate(&[
        "--scenario",
        small.to_str().unwrap(),
        "--record",
        b.to_str().unwrap(),
    ]);
    let (ra, rb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(ra.len() > 100_000);
    assert_eq!(ra, rb, "same scenario, same record");
    let text = String::from_utf8(ra).unwrap();
    assert!(text.lines().all(|l| l.contains("\"population\":")));
    // No prompt text in the record.
    assert!(!text.contains("Ticket:") && !text.contains("coding agent"));

    // simulate --record - | replay --config (the shipped config file) -
    let mut sim = Command::new(BIN)
        .args([
            "simulate",
            "--scenario",
            small.to_str().unwrap(),
            "--record",
            "-",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let replay = Command::new(BIN)
        .args(["replay", "--config"])
        .arg(repo("config/distill-guard.toml"))
        .args(["--json", "-"])
        .stdin(sim.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(sim.wait().unwrap().success());
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&replay.stdout).unwrap();
    let h = &summary["headline"];
    for key in [
        "attack_requests",
        "attack_served_fraction",
        "attack_degraded_fraction",
        "attack_refused_fraction",
        "legit_refused_fraction",
        "legit_slowed_fraction",
        "containment_seconds",
    ] {
        assert_eq!(h[key], report[key], "{key}");
    }
    assert_eq!(
        summary["replayed"].as_u64().unwrap(),
        report["attack_requests"].as_u64().unwrap() + report["legit_requests"].as_u64().unwrap()
    );
}

#[test]
fn a_bad_scenario_is_reported_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "name = \"bad\"\nduration_minutes = 10\n\n[[population]]\nname = \"x\"\naccounts = 5\n\
         requests_per_account_per_hour = 1.0\nnetworks = [\"10.0.0.0/33\"]\naddresses = 5\n\
         max_tokens = [10]\noutput_tokens = [1, 2]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["simulate", "--scenario"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:8:", path.display())) && err.contains("population[0].networks"),
        "{err}"
    );
}
