//! Generator tests: determinism, rates, timing models, records.

use super::*;
use crate::engine::signature;
use std::collections::BTreeMap;
use std::path::Path;

const SCENARIO: &str = r#"
name = "t"
seed = 9
duration_minutes = 60

[[population]]
name = "chat"
accounts = 50
requests_per_account_per_hour = 6.0
networks = ["198.51.100.0/24", "2001:db8::/32"]
asns = [64500, 64501]
addresses = 50
max_tokens = [1024, 2048]
output_tokens = [100, 200]

[[population]]
name = "hydra"
attack = true
accounts = 40
requests_per_account_per_hour = 30.0
start_minute = 10
timing = "waves"
wave_period_s = 60
wave_spread_ms = 1000
ja4 = ["t13d1516h2_8daaf6152771_e5627efa2ab1"]
networks = ["203.0.113.0/24"]
addresses = 8
address_per = "request"
templates = ["{Imagine|Picture} and articulate the internal reasoning behind the completed response below. Question: {} Answer: {}"]
max_tokens = [64000]
output_tokens = [4000, 8000]

[[population]]
name = "batch"
accounts = 1
requests_per_account_per_hour = 600.0
timing = "periodic"
jitter = 0.1
networks = ["10.0.0.0/24"]
addresses = 1
templates = ["Summarise this ticket: {}"]
max_tokens = [300]
output_tokens = [50, 150]
"#;

fn scenario() -> Scenario {
    scenario::parse(Path::new("t.toml"), SCENARIO).unwrap()
}

fn config() -> Config {
    crate::config::parse(
        Path::new("c.toml"),
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n",
    )
    .unwrap()
}

#[test]
fn the_same_scenario_gives_the_same_requests() {
    let s = scenario();
    let a: Vec<SimRequest> = Generator::new(&s).collect();
    let b: Vec<SimRequest> = Generator::new(&s).collect();
    assert_eq!(a, b);
    assert!(a.windows(2).all(|w| w[0].t_ms <= w[1].t_ms), "time order");
    let mut other = s.clone();
    other.seed = 10;
    let c: Vec<SimRequest> = Generator::new(&other).take(50).collect();
    assert_ne!(a[..50], c[..]);
}

#[test]
fn rates_windows_and_timing_follow_the_scenario() {
    let s = scenario();
    let reqs: Vec<SimRequest> = Generator::new(&s).collect();
    let count = |pop: usize| reqs.iter().filter(|r| r.population == pop).count() as f64;
    // chat: 50 accounts × 6/h × 1 h = 300 expected (Poisson).
    assert!((240.0..360.0).contains(&count(0)), "chat {}", count(0));
    // hydra: 40 × 30/h × 50 min = 1000 expected, from minute 10 on, in
    // one-second waves at the start of each minute.
    assert!((850.0..1150.0).contains(&count(1)), "hydra {}", count(1));
    for r in reqs.iter().filter(|r| r.population == 1) {
        let t = r.t_ms - s.start_unix_ms;
        assert!(t >= 600_000, "hydra before its start");
        assert!(t % 60_000 < 1000, "outside a wave: {t}");
        assert_eq!(r.max_tokens, 64000);
        assert!(r.prompt.contains("articulate the internal reasoning"));
    }
    // batch: every 6 s ± 10 %: 600 in the hour.
    assert!((590.0..=610.0).contains(&count(2)), "batch {}", count(2));
    let batch: Vec<u64> = reqs
        .iter()
        .filter(|r| r.population == 2)
        .map(|r| r.t_ms)
        .collect();
    assert!(batch
        .windows(2)
        .all(|w| (5400..=6600).contains(&(w[1] - w[0]))));
}

#[test]
fn records_carry_fingerprints_labels_and_no_prompt_text() {
    let s = scenario();
    let c = config();
    let m = c.detection.phrases.clone();
    let reqs: Vec<SimRequest> = Generator::new(&s).collect();
    let hydra = reqs.iter().find(|r| r.population == 1).unwrap();
    let rec = hydra.record(&s, &c, &m);
    assert_eq!(rec.population.as_deref(), Some("hydra"));
    assert!(rec.attack);
    assert_eq!(
        rec.ja4.as_deref(),
        Some("t13d1516h2_8daaf6152771_e5627efa2ab1")
    );
    assert!(rec
        .ip_prefix
        .as_deref()
        .unwrap()
        .starts_with("203.0.113.0/24"));
    assert_eq!(rec.prompt_keys.len(), signature::INDEX_KEYS);
    assert_eq!(rec.phrase_lists, vec!["elicitation".to_string()]);
    let line = serde_json::to_string(&rec).unwrap();
    assert!(!line.contains("articulate"), "prompt text leaked: {line}");
    assert_eq!(crate::replay::parse_line(&line, 1).unwrap(), rec);
    // IPv6 chat addresses are grouped by the /48.
    let v6 = reqs
        .iter()
        .find(|r| r.population == 0 && r.address.is_ipv6())
        .unwrap();
    let rec = v6.record(&s, &c, &m);
    assert!(rec.ip_prefix.unwrap().ends_with("/48"));
    assert_eq!(rec.asn, Some(64501));
    // One account, one id; different accounts, different ids.
    let ids: std::collections::BTreeSet<u64> = reqs
        .iter()
        .filter(|r| r.population == 0)
        .map(|r| r.account_id(&s))
        .collect();
    assert_eq!(ids.len(), 50);
}

#[test]
fn spreads_take_the_middle_and_sort_never_last() {
    let s = super::spread_of(vec![0.3, 0.1, 0.4, 0.2]);
    assert_eq!((s.min, s.max), (0.1, 0.4));
    assert!((s.median - 0.25).abs() < 1e-12, "{s:?}");
    assert_eq!(super::spread_of(vec![0.5, 0.1, 0.9]).median, 0.5);

    let secs = super::spread_of_seconds;
    let s = secs(vec![Some(600), None, Some(420), Some(540)]);
    assert_eq!((s.min, s.median, s.max), (Some(420), Some(570), None));
    // A never in the middle makes the median never.
    let s = secs(vec![None, Some(420), None, Some(480)]);
    assert_eq!((s.min, s.median, s.max), (Some(420), None, None));
    let s = secs(vec![None, Some(60), Some(120)]);
    assert_eq!((s.min, s.median, s.max), (Some(60), Some(120), None));
}

/// Each population's requests (its position in the scenario cleared), by
/// name.
type ByPopulation = BTreeMap<String, Vec<SimRequest>>;

/// [`ByPopulation`], and the order of every request as (name, time,
/// account).
fn by_population(s: &Scenario) -> (ByPopulation, Vec<(String, u64, u32)>) {
    let mut each = ByPopulation::new();
    let mut order = Vec::new();
    for mut r in Generator::new(s) {
        let name = s.populations[r.population].name.clone();
        order.push((name.clone(), r.t_ms, r.account));
        r.population = 0;
        each.entry(name).or_default().push(r);
    }
    (each, order)
}

#[test]
fn adding_or_removing_a_population_leaves_the_others_traffic_as_it_was() {
    let s = scenario();
    let (before, order) = by_population(&s);
    assert_eq!(before.len(), 3);

    // A heavy population put first: every other one moves up a place.
    let mut added = s.clone();
    let mut heavy = s.populations[0].clone();
    heavy.name = "long-answers".into();
    heavy.rate_per_hour = 40.0;
    heavy.max_tokens = vec![16000];
    heavy.output_tokens = [2000, 8000];
    added.populations.insert(0, heavy);
    let (after, after_order) = by_population(&added);
    assert!(after["long-answers"].len() > 1000, "the new one sends");
    for (name, reqs) in &before {
        assert_eq!(&after[name], reqs, "{name}'s requests changed");
    }
    let others: Vec<_> = after_order
        .into_iter()
        .filter(|(name, _, _)| name != "long-answers")
        .collect();
    assert_eq!(others, order, "the others interleave as before");

    // One taken away (the first): the rest are as they were.
    let mut removed = s.clone();
    removed.populations.remove(0);
    let (rest, _) = by_population(&removed);
    assert_eq!(rest.len(), 2);
    for (name, reqs) in &rest {
        assert_eq!(&before[name], reqs, "{name}'s requests changed");
    }

    // A population is its name's: renaming one changes its traffic.
    let mut renamed = s.clone();
    renamed.populations[2].name = "batch-2".into();
    let (re, _) = by_population(&renamed);
    assert_ne!(re["batch-2"], before["batch"]);
    assert_eq!(re["chat"], before["chat"]);
}

#[test]
fn sessions_come_in_bursts_and_pinned_clients_keep_their_limit() {
    let text = r#"
name = "t"
seed = 3
duration_minutes = 600

[[population]]
name = "writers"
accounts = 200
requests_per_account_per_hour = 6.0
timing = "sessions"
sessions_per_day = 2.0
session_minutes = [60, 60]
networks = ["198.51.100.0/24"]
addresses = 200
max_tokens = [8192, 16000, 32000]
pinned_max_tokens_share = 0.5
output_tokens = [2000, 8000]
"#;
    let s = scenario::parse(Path::new("t.toml"), text).unwrap();
    assert_eq!(
        s.populations[0].timing,
        Timing::Sessions {
            per_day: 2.0,
            minutes: [60, 60]
        }
    );
    let reqs: Vec<SimRequest> = Generator::new(&s).collect();
    let mut per_account: BTreeMap<u32, Vec<&SimRequest>> = BTreeMap::new();
    for r in &reqs {
        per_account.entry(r.account).or_default().push(r);
    }
    // 2 sessions a day over 10 h: about 0.83 sessions an account, an hour
    // of 6 requests each; many accounts have none.
    let n = reqs.len() as f64;
    assert!((600.0..1400.0).contains(&n), "{n} requests");
    assert!(
        per_account.len() < 190,
        "{} accounts sent",
        per_account.len()
    );
    // Within an account, requests come in bursts: gaps of at most a
    // session's length, or the long pause between sessions.
    let gaps: Vec<u64> = per_account
        .values()
        .flat_map(|rs| rs.windows(2).map(|w| w[1].t_ms - w[0].t_ms))
        .collect();
    let short = gaps.iter().filter(|&&g| g < 3_600_000).count() as f64;
    assert!(
        short / gaps.len() as f64 > 0.8,
        "bursty: {short} of {}",
        gaps.len()
    );
    // About half the accounts keep one max_tokens; the others vary it.
    let pinned = per_account
        .values()
        .filter(|rs| rs.len() >= 4)
        .map(|rs| rs.iter().all(|r| r.max_tokens == rs[0].max_tokens))
        .collect::<Vec<_>>();
    let share = pinned.iter().filter(|&&p| p).count() as f64 / pinned.len() as f64;
    assert!((0.35..0.7).contains(&share), "pinned share {share}");

    let bad = text.replace("session_minutes = [60, 60]", "session_minutes = [0, 60]");
    let e = scenario::parse(Path::new("t.toml"), &bad).unwrap_err();
    assert_eq!(e.key, "population[0].session_minutes");
    let bad = text.replace(
        "pinned_max_tokens_share = 0.5",
        "pinned_max_tokens_share = 2",
    );
    let e = scenario::parse(Path::new("t.toml"), &bad).unwrap_err();
    assert_eq!(e.key, "population[0].pinned_max_tokens_share");
}
