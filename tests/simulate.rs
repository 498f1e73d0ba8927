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

/// The goals (issue 7, BENCHMARKS.md) on one run: the attack's exchanges
/// served in full ≤ 5 % of what an unprotected API serves; honest requests
/// refused ≤ 0.1 % (and no honest population refused at all here); every
/// attack contained within 10 simulated minutes of its start; the per-key
/// baseline beside it serves the whole campaign and never contains it.
fn assert_goals(r: &serde_json::Value) {
    for key in [
        "attack_served_fraction",
        "attack_degraded_fraction",
        "legit_refused_fraction",
        "legit_slowed_fraction",
    ] {
        f(r, key);
        f(&r["baseline"], key);
    }
    let seed = &r["seed"];
    assert!(
        f(r, "attack_served_fraction") <= 0.05,
        "seed {seed}: attack served {}",
        f(r, "attack_served_fraction")
    );
    assert!(f(r, "legit_refused_fraction") <= 0.001, "seed {seed}: {r}");
    let contained = r["containment_seconds"].as_u64().expect("contained");
    assert!(
        contained <= 600,
        "seed {seed}: slowest attack contained after {contained} s"
    );
    for (name, p) in r["populations"].as_object().unwrap() {
        if p["attack"] == false {
            assert_eq!(
                f(p, "throttled") + f(p, "blocked"),
                0.0,
                "seed {seed}: {name} refused: {p}"
            );
        } else {
            let c = p["containment_seconds"].as_u64().expect("contained");
            assert!(c <= 600, "seed {seed}: {name} contained after {c} s");
        }
    }
    let b = &r["baseline"];
    assert_eq!(f(b, "attack_served_fraction"), 1.0);
    assert!(b["containment_seconds"].is_null());
    assert_eq!(f(b, "legit_refused_fraction"), 0.0);
    // First contact is part of what is served, and unprotected every first
    // request is served.
    let first = f(r, "attack_first_served_fraction");
    assert!(
        first > 0.0 && first <= f(r, "attack_served_fraction"),
        "{r}"
    );
    assert!(f(r, "attack_first_requests_fraction") >= first, "{r}");
    assert_eq!(
        f(b, "attack_first_served_fraction"),
        f(b, "attack_first_requests_fraction")
    );
}

/// The small scenario, end to end, meets the goals: on its own seed, and on
/// each of three more draws of its traffic (`--seeds`; over seeds 1–64 the
/// attack is served in full 2.4–3.3 % and contained after 360–540 s,
/// BENCHMARKS.md "Simulation"). `--seeds` runs are the runs of their seeds.
#[test]
fn small_scenario_meets_the_goals_on_several_seeds() {
    let r = small_report();
    assert_eq!(r["seed"], 7);
    assert_goals(&r);

    let small = repo("config/scenarios/small.toml");
    let small = small.to_str().unwrap();
    let (all, _) = simulate(&[
        "--scenario",
        small,
        "--seed",
        "3",
        "--seeds",
        "3",
        "--report",
        "json",
    ]);
    let runs = all["runs"].as_array().unwrap();
    let seeds: Vec<u64> = runs.iter().map(|r| r["seed"].as_u64().unwrap()).collect();
    assert_eq!(seeds, [3, 4, 5]);
    for r in runs {
        assert_goals(r);
    }
    // A run of the batch is the run of its seed alone.
    let (alone, _) = simulate(&["--scenario", small, "--seed", "4", "--report", "json"]);
    assert_eq!(alone["seed"], 4);
    assert_eq!(runs[1], alone);
    // The spread is the runs'.
    let mut served: Vec<f64> = runs
        .iter()
        .map(|r| f(r, "attack_served_fraction"))
        .collect();
    served.sort_by(f64::total_cmp);
    let spread = &all["attack_served_fraction"];
    assert_eq!(f(spread, "min"), served[0]);
    assert_eq!(f(spread, "max"), served[2]);
    assert_eq!(f(spread, "median"), served[1]);
    let c = &all["containment_seconds"];
    let (lo, mid, hi) = (
        c["min"].as_u64().unwrap(),
        c["median"].as_u64().unwrap(),
        c["max"].as_u64().unwrap(),
    );
    assert!(lo <= mid && mid <= hi, "{c}");
}

/// The small campaign (`small-campaign.toml`: one hour, a 200-account
/// stealth campaign, about 5 requests a minute per template) is below the policy's
/// evidence scale, and this pins how far, so a regression shows: over
/// seeds 1–16 the attack is served in full 5.1–7.5 % — 4.2–4.5 % on
/// accounts' first requests, since each account sends about 11 requests —
/// and first contained after 540–660 s; seeds 5–7 here: 5.6–7.5 %, the
/// stealth campaign 12–17 %. What holds on every draw: no honest request
/// refused, the hydra contained within 10 minutes.
#[test]
fn the_small_campaign_is_pinned_where_its_evidence_runs_short() {
    let campaign = repo("config/scenarios/small-campaign.toml");
    let (all, _) = simulate(&[
        "--scenario",
        campaign.to_str().unwrap(),
        "--seed",
        "5",
        "--seeds",
        "3",
        "--report",
        "json",
    ]);
    for r in all["runs"].as_array().unwrap() {
        let seed = &r["seed"];
        assert_eq!(f(r, "legit_refused_fraction"), 0.0, "seed {seed}: {r}");
        let hydra = &r["populations"]["hydra"];
        assert!(hydra["containment_seconds"].as_u64().unwrap() <= 600, "{r}");
        assert!(f(r, "attack_served_fraction") <= 0.08, "seed {seed}");
        assert!(
            r["containment_seconds"].as_u64().unwrap() <= 720,
            "seed {seed}"
        );
        assert!(served(&r["populations"]["stealth"]) <= 0.18, "seed {seed}");
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
    let small = repo("config/scenarios/small-campaign.toml");
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

/// `simulate --family`: the family's seeds in order, every figure a share,
/// the same report twice (tiny draws: 20 minutes, a fifth of the accounts).
#[test]
fn a_family_run_reports_its_seeds_and_is_deterministic() {
    let args = [
        "--family",
        "tuning",
        "--seeds",
        "2",
        "--minutes",
        "20",
        "--scale",
        "0.2",
        "--report",
        "json",
    ];
    let (r, _) = simulate(&args);
    assert_eq!(r["family"], "tuning");
    let runs = r["runs"].as_array().unwrap();
    let seeds: Vec<u64> = runs.iter().map(|x| x["seed"].as_u64().unwrap()).collect();
    assert_eq!(seeds, [1000, 1001], "the tuning family starts at 1000");
    for run in runs {
        assert!(f(run, "requests") > 0.0);
        for key in [
            "attack_served_after_10min",
            "attack_served_fraction",
            "attack_output_tokens_fraction",
            "legit_refused_fraction",
            "legit_degraded_fraction",
            "legit_slowed_fraction",
            "baseline_attack_served_fraction",
        ] {
            assert!((0.0..=1.0).contains(&f(run, key)), "{key} in {run}");
        }
        assert!(run["campaign"]["accounts"].as_u64().unwrap() >= 1);
        assert!(run.get("largest_mixed_cluster").is_some());
        assert_eq!(f(run, "baseline_attack_served_fraction"), 1.0, "{run}");
    }
    for key in ["attack_served_after_10min", "legit_refused_fraction"] {
        assert!(r[key]["median"].is_number() && r[key]["worst_decile"].is_number());
    }
    // Each campaign is priced against the cheapest per-key extraction:
    // `redteam`'s per-key optimum under the baseline on its default
    // background, the same figure its own report prices against.
    let reference = f(&r, "per_key_reference");
    let red: serde_json::Value = serde_json::from_slice(
        &Command::new(BIN)
            .args([
                "redteam",
                "--budget",
                "2",
                "--minutes",
                "20",
                "--scale",
                "0.2",
            ])
            .args(["--report", "json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(red["evaluations"][1]["origin"], "per-key-optimum");
    assert_eq!(
        reference,
        f(&red["evaluations"][1], "baseline_tokens_per_cost")
    );
    for run in runs {
        let (cost, tokens) = (f(run, "campaign_cost"), f(run, "campaign_tokens_served"));
        assert!(cost > 0.0, "{run}");
        match run["cost_multiplier"].as_f64() {
            Some(m) => assert!((m - reference * cost / tokens).abs() <= 1e-9 * m, "{run}"),
            None => assert_eq!(tokens, 0.0, "{run}"),
        }
        // Dropping each account when caught pays no more and gets no more.
        let dropped = &run["if_dropped"];
        assert!(f(dropped, "cost") <= cost, "{run}");
        assert!(f(dropped, "tokens") <= tokens, "{run}");
    }
    assert!(r["cost_multiplier"].get("worst_decile").is_some(), "{r}");
    let (again, _) = simulate(&args);
    assert_eq!(r, again, "the same family run twice");
    let (held, _) = simulate(&[
        "--family",
        "heldout",
        "--seeds",
        "1",
        "--minutes",
        "20",
        "--scale",
        "0.2",
        "--report",
        "json",
    ]);
    assert_eq!(held["runs"][0]["seed"], 9000);
    let text = simulate(&[
        "--family",
        "heldout",
        "--seeds",
        "1",
        "--minutes",
        "20",
        "--scale",
        "0.2",
    ])
    .1;
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("median / worst decile"), "{text}");
}

/// `simulate --family F --seed S`: that one drawn scenario, the family
/// run's traffic (the same request count as the family's row for S), its
/// record written for `replay --decisions`; a seed of the other family, a
/// record of a whole slice, or --seeds / --skip beside --seed are refused
/// with a reason.
#[test]
fn one_seed_of_a_family_runs_alone_and_records_its_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("seed.jsonl");
    let size = ["--minutes", "20", "--scale", "0.2", "--report", "json"];
    let (family, _) = simulate(
        &[
            &["--family", "tuning", "--skip", "1", "--seeds", "1"],
            &size[..],
        ]
        .concat(),
    );
    assert_eq!(family["runs"][0]["seed"], 1001);
    let (one, _) = simulate(
        &[
            &[
                "--family",
                "tuning",
                "--seed",
                "1001",
                "--record",
                record.to_str().unwrap(),
            ],
            &size[..],
        ]
        .concat(),
    );
    assert_eq!(one["scenario"], "tuning-1001");
    assert_eq!(one["requests"], family["runs"][0]["requests"]);
    let text = std::fs::read_to_string(&record).unwrap();
    assert_eq!(
        text.lines().count() as u64,
        one["requests"].as_u64().unwrap()
    );
    assert!(text
        .lines()
        .any(|l| l.contains("\"population\":\"campaign\"")));
    let replay = Command::new(BIN)
        .args(["replay", "--json", "--config"])
        .arg(repo("config/distill-guard.toml"))
        .arg(&record)
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&replay.stdout).unwrap();
    assert_eq!(
        summary["headline"]["attack_requests"],
        one["attack_requests"]
    );

    for (args, reason) in [
        (vec!["--seed", "9000"], "not a seed of the tuning family"),
        (vec!["--record", "x.jsonl"], "name the one seed to record"),
        (
            vec!["--seed", "1001", "--seeds", "2"],
            "--seeds and --skip do not apply",
        ),
    ] {
        let out = Command::new(BIN)
            .args(["simulate", "--family", "tuning"])
            .args(&args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(reason), "{args:?}: {err}");
    }
    assert!(!dir.path().join("x.jsonl").exists());
}

/// Issue 14, causes 5 and 6, on a small budget: the first two tuning
/// seeds' campaigns at half size. Since each population draws from its own
/// stream (2026-12-03) seed 1001's is the slow stealth one (27 accounts at
/// 3.2 requests per account per hour, client stacks rotated per request,
/// a 19-minute warm-up, 25 % cover): the shipped policy serves 60 % of it
/// after its first ten minutes (per-key limits: 100 %); seed 1000's is a
/// faster shared-pool campaign (2 %). Over the first eight tuning seeds at
/// full size the slow stack-rotating campaigns (1001, 1003, 1006, 1007)
/// are served 50 %, 1 %, 55 % and 1 %. No honest request is refused; the
/// honest long-answer populations added then are degraded at 0.13–0.14 %
/// here (BENCHMARKS.md, "Per-population streams"). The bounds are the
/// same as before the streams changed. Since the `workshop` population
/// (2026-12-05; new students on one campus network) seed 1001's honest
/// degraded read 0.503 % at `cohort_min_raw` 0.50, over the bound; at the
/// refitted 0.55 it reads 0.01 % (and the slow stealth campaign is served
/// 40 % after its first ten minutes, against the 60 % above).
#[test]
fn behaviour_cohorts_reach_slow_stealth_campaigns_without_touching_honest_traffic() {
    let (r, _) = simulate(&[
        "--family",
        "tuning",
        "--seeds",
        "2",
        "--minutes",
        "120",
        "--scale",
        "0.5",
        "--report",
        "json",
    ]);
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        let seed = &run["seed"];
        assert_eq!(f(run, "legit_refused_fraction"), 0.0, "seed {seed}: {run}");
        assert!(
            f(run, "legit_degraded_fraction") <= 0.005,
            "seed {seed}: {run}"
        );
        assert!(
            f(run, "legit_slowed_fraction") <= 0.001,
            "seed {seed}: {run}"
        );
        let stealth = f(run, "stealth_served_after_10min");
        assert!(stealth <= 0.75, "seed {seed}: stealth served {stealth}");
        assert!(
            f(run, "attack_output_tokens_fraction") <= 0.25,
            "seed {seed}: {run}"
        );
        assert!(run["containment_seconds"].is_u64(), "seed {seed}: {run}");
    }
}
