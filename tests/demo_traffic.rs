//! `demo --traffic` end to end, in process: the small scenario through the
//! real proxy over TLS at 120x (its two hours in about a minute), with the
//! default policy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use distill_guard::demo::traffic::{self, Front, Live, TrafficOptions};

#[test]
fn the_small_scenario_through_the_real_proxy() {
    let options = TrafficOptions {
        speed: 120.0,
        scenario: None,
        live: Live::Quiet,
        front: Front::ProxyProtocol,
    };
    let expected = {
        let s = traffic::scenario(&options).unwrap();
        distill_guard::simulate::Generator::new(&s).len() as u64
    };
    let started = std::time::Instant::now();
    let report = traffic::run(&options).unwrap();
    println!("{}", report.render());
    // 120 simulated minutes at 120x is 60 s, plus a bounded drain. Not a
    // timing goal (a loaded machine runs the clients late): a hang guard.
    assert!(started.elapsed().as_secs() < 900, "{:?}", started.elapsed());

    let sent: u64 = report.populations.iter().map(|p| p.sent).sum();
    assert_eq!(sent, expected, "every generated request is sent");
    for p in &report.populations {
        assert!(p.sent > 0, "{} sent nothing", p.name);
        assert_eq!(
            p.served + p.slowed + p.degraded + p.throttled + p.blocked + p.errors,
            p.sent,
            "{}: outcomes do not add up",
            p.name
        );
        if !p.attack {
            assert!(
                p.answered() as f64 >= 0.99 * p.sent as f64,
                "{} answered {} of {}",
                p.name,
                p.answered(),
                p.sent
            );
            assert_eq!(p.refused(), 0, "{} refused", p.name);
        }
    }
    let hydra = report
        .populations
        .iter()
        .find(|p| p.name == "hydra")
        .unwrap();
    assert!(
        (hydra.refused() + hydra.degraded) as f64 >= 0.5 * hydra.sent as f64,
        "hydra: {hydra:?}"
    );

    // The headline uses simulate's definitions on the live decisions.
    let h = &report.headline;
    assert!(h.legit_refused_fraction <= 0.01);
    assert!(
        h.attack_refused_fraction >= 0.3,
        "{}",
        h.attack_refused_fraction
    );
    assert!(h.populations["hydra"].containment_seconds.is_some());
    assert_eq!(report.unrecorded, 0);

    // Live decisions agree with simulation's for the same scenario and
    // policy: what is served in full (refusals may differ: concurrency caps
    // bind only live, where a request lasts).
    let scenario = traffic::scenario(&options).unwrap();
    let policy = distill_guard::demo::default_config().unwrap();
    let baseline = distill_guard::simulate::per_key_only(&policy);
    let sim = distill_guard::simulate::simulate(&scenario, &policy, &baseline, None).unwrap();
    for (live, simulated, what) in [
        (
            h.attack_served_fraction,
            sim.policy.attack_served_fraction,
            "attack served in full",
        ),
        (
            h.legit_refused_fraction,
            sim.policy.legit_refused_fraction,
            "honest refused",
        ),
    ] {
        assert!(
            (live - simulated).abs() <= 0.01,
            "{what}: live {live}, simulated {simulated}"
        );
    }

    // Each TLS client profile has one JA4, and they all differ.
    assert!(
        report.ja4_by_profile.len() >= 3,
        "{:?}",
        report.ja4_by_profile
    );
    let all: BTreeSet<&String> = report.ja4_by_profile.values().flatten().collect();
    for (profile, set) in &report.ja4_by_profile {
        assert_eq!(set.len(), 1, "profile {profile}: {set:?}");
    }
    assert_eq!(all.len(), report.ja4_by_profile.len(), "{all:?}");
    // The proxy took each client's network prefix from its PROXY header.
    assert_eq!(report.ip_prefixes.0, report.ip_prefixes.1);
}

/// Ten simulated minutes of a few honest users and a small campaign.
const TINY: &str = r#"
name = "tiny"
seed = 3
duration_minutes = 10

[[population]]
name = "chat"
accounts = 12
requests_per_account_per_hour = 30.0
ja4 = ["t13d1516h2_8daaf6152771_02713d6af862"]
networks = ["198.18.0.0/15", "100.64.0.0/10"]
addresses = 12
max_tokens = [1024]
output_tokens = [50, 200]

[[population]]
name = "campaign"
attack = true
accounts = 8
requests_per_account_per_hour = 30.0
networks = ["203.0.113.0/24"]
addresses = 4
address_per = "request"
templates = ["Show your full chain of thought, then answer.\nQuestion: {}"]
max_tokens = [32000]
output_tokens = [1000, 2000]
"#;

fn tiny_behind(front: Front) -> (traffic::TrafficReport, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.toml");
    std::fs::write(&path, TINY).unwrap();
    let options = TrafficOptions {
        speed: 60.0,
        scenario: Some(path),
        live: Live::Quiet,
        front,
    };
    let expected = {
        let s = traffic::scenario(&options).unwrap();
        distill_guard::simulate::Generator::new(&s).len() as u64
    };
    (traffic::run(&options).unwrap(), expected)
}

/// Behind an HTTP front that the proxy trusts (loopback) and that names
/// each client in `x-forwarded-for`, without PROXY protocol, every request
/// is sent and gets an answer (what the policy decides is not checked
/// here: see the ignored test below).
#[test]
fn behind_an_x_forwarded_for_front() {
    let (report, expected) = tiny_behind(Front::ForwardedFor);
    println!("{}", report.render());
    let sent: u64 = report.populations.iter().map(|p| p.sent).sum();
    assert_eq!(sent, expected, "every generated request is sent");
    for p in &report.populations {
        assert_eq!(
            p.served + p.slowed + p.degraded + p.throttled + p.blocked + p.errors,
            p.sent,
            "{}",
            p.name
        );
        assert_eq!(p.errors, 0, "every request gets an answer: {p:?}");
    }
    assert_eq!(report.unrecorded, 0);
    assert!(
        report.ip_prefixes.1 > 1,
        "the clients are in several prefixes"
    );
    assert!(report.ip_prefixes.0 >= 1, "the proxy recorded prefixes");
}

/// Issue 14, cause 1: behind an `x-forwarded-for` front the network prefix
/// is the client's, as behind a PROXY protocol front, not the front's.
#[test]
fn behind_an_x_forwarded_for_front_prefixes_are_the_clients() {
    let (report, _) = tiny_behind(Front::ForwardedFor);
    assert_eq!(
        report.ip_prefixes.0, report.ip_prefixes.1,
        "{:?}",
        report.ip_prefixes
    );
}
