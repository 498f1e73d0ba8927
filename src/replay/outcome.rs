//! Headline figures of a labelled (simulated) record: per population, what
//! a policy served, slowed, degraded and refused, how many output tokens it
//! let out against what an unprotected API would have, and when it first
//! contained each attack.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::TrafficRecord;

/// A minute in which at most this share of an attack's attempts were
/// served in full (allowed or slowed) counts as contained.
pub const CONTAINED_SERVED_FRACTION: f64 = 0.05;

const MINUTE_MS: u64 = 60_000;

/// What one policy did to one population.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PopulationOutcome {
    /// The population is an attack.
    pub attack: bool,
    /// Requests (exchanges attempted).
    pub requests: u64,
    /// Forwarded untouched.
    pub allowed: u64,
    /// Forwarded after a delay.
    pub slowed: u64,
    /// Forwarded with a lowered output limit.
    pub degraded: u64,
    /// Refused with 429.
    pub throttled: u64,
    /// Refused with 403.
    pub blocked: u64,
    /// Output tokens an unprotected API would have produced.
    pub output_tokens_unprotected: u64,
    /// Output tokens this policy let out.
    pub output_tokens_served: u64,
    /// Requests that were their account's first in the record: first
    /// contact, which no per-account or cluster evidence can precede.
    pub first_requests: u64,
    /// Of those, served in full.
    pub first_requests_served: u64,
    /// The population's first request (ms since the Unix epoch).
    pub first_ms: u64,
    /// Seconds from the first request to the end of the first minute in
    /// which at most [`CONTAINED_SERVED_FRACTION`] of the attempts were
    /// served in full (whole minutes: an upper bound). None: never.
    pub containment_seconds: Option<u64>,
    /// The same, for the first minute from which *every* later minute
    /// stays contained. None: never.
    pub sustained_containment_seconds: Option<u64>,
    /// Why requests were not simply allowed: `slow:account`,
    /// `throttle:cluster:requests`, `block:cluster`… with counts.
    pub reasons: BTreeMap<String, u64>,
    /// Per minute since `first_ms`: (attempts, served in full).
    #[serde(skip)]
    minutes: Vec<(u32, u32)>,
}

impl PopulationOutcome {
    /// An empty outcome for a population first seen at `first_ms`.
    pub fn new(attack: bool, first_ms: u64) -> PopulationOutcome {
        PopulationOutcome {
            attack,
            first_ms,
            ..Default::default()
        }
    }

    /// Count one request: the decision's label and the output tokens it was
    /// served (0 when refused); `first`: its account's first request.
    pub fn record(
        &mut self,
        rec: &TrafficRecord,
        d: &crate::engine::Decision,
        served_tokens: u64,
        first: bool,
    ) {
        let label = d.label();
        if label != "allow" {
            *self.reasons.entry(reason(d)).or_default() += 1;
        }
        self.count(rec, label, served_tokens, first);
    }

    /// Count one request by its decision's label (allow, slow, degrade,
    /// throttle, block) when there is no engine [`crate::engine::Decision`]
    /// at hand: `demo --traffic` classifies the live proxy's answers. The
    /// request arrived at `t_ms`, a full answer has `output_tokens`, it
    /// was served `served_tokens`, and `first`: its account's first request.
    pub fn count_label(
        &mut self,
        t_ms: u64,
        output_tokens: u64,
        label: &str,
        served_tokens: u64,
        first: bool,
    ) {
        let rec = TrafficRecord {
            t_ms,
            output_tokens,
            ..Default::default()
        };
        self.count(&rec, label, served_tokens, first);
    }

    /// Count one request by its decision's label.
    fn count(&mut self, rec: &TrafficRecord, label: &str, served_tokens: u64, first: bool) {
        self.requests += 1;
        self.output_tokens_unprotected += rec.output_tokens;
        let full = match label {
            "allow" => {
                self.allowed += 1;
                true
            }
            "slow" => {
                self.slowed += 1;
                true
            }
            "degrade" => {
                self.degraded += 1;
                false
            }
            "throttle" => {
                self.throttled += 1;
                false
            }
            _ => {
                self.blocked += 1;
                false
            }
        };
        if matches!(label, "allow" | "slow" | "degrade") {
            self.output_tokens_served += served_tokens;
        }
        if first {
            self.first_requests += 1;
            self.first_requests_served += u64::from(full);
        }
        let m = usize::try_from(rec.t_ms.saturating_sub(self.first_ms) / MINUTE_MS)
            .unwrap_or(usize::MAX);
        // A record more than a year past the first is not a minute series.
        if m < 525_600 {
            if self.minutes.len() <= m {
                self.minutes.resize(m + 1, (0, 0));
            }
            self.minutes[m].0 += 1;
            self.minutes[m].1 += u32::from(full);
        }
    }

    /// Fill in the containment figures from the minute series.
    fn finish(&mut self) {
        let contained =
            |&(n, full): &(u32, u32)| f64::from(full) <= CONTAINED_SERVED_FRACTION * f64::from(n);
        let end = |m: usize| (m as u64 + 1) * 60;
        let with_traffic = || self.minutes.iter().enumerate().filter(|(_, x)| x.0 > 0);
        self.containment_seconds = with_traffic()
            .find(|(_, x)| contained(x))
            .map(|(m, _)| end(m));
        // The first minute after the last uncontained one.
        let last_bad = with_traffic()
            .filter(|(_, x)| !contained(x))
            .map(|(m, _)| m)
            .next_back();
        self.sustained_containment_seconds = match last_bad {
            None => with_traffic().next().map(|(m, _)| end(m)),
            Some(bad) => with_traffic().find(|(m, _)| *m > bad).map(|(m, _)| end(m)),
        };
    }

    /// Share of requests served in full (allowed or slowed).
    pub fn served_fraction(&self) -> f64 {
        ratio(self.allowed + self.slowed, self.requests)
    }

    /// Share of requests refused (throttled or blocked).
    pub fn refused_fraction(&self) -> f64 {
        ratio(self.throttled + self.blocked, self.requests)
    }
}

/// Why a decision is not a plain allow, in a few words.
fn reason(d: &crate::engine::Decision) -> String {
    use crate::engine::{Blocker, Verdict};
    match &d.verdict {
        Verdict::Throttle(h) => format!("throttle:{}:{}", h.scope.as_str(), h.kind.as_str()),
        Verdict::Block { scope, by } => format!(
            "block:{}:{}",
            scope.as_str(),
            match (by, &d.detection) {
                (Blocker::Admin, _) => "manual",
                (Blocker::Detection, Some(x)) if x.sustained => "sustained",
                (Blocker::Detection, _) => "detection",
            }
        ),
        Verdict::Allow(_) | Verdict::Slow { .. } | Verdict::Degrade { .. } => {
            let scope = d.detection.as_ref().map_or("account", |x| x.scope.as_str());
            format!("{}:{scope}", d.label())
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// The headline figures of one policy on a labelled record.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Headline {
    /// Attack requests (exchanges attempted).
    pub attack_requests: u64,
    /// Of those, served in full (allowed or slowed): the share of what an
    /// unprotected API would serve.
    pub attack_served_fraction: f64,
    /// Served with a lowered output limit.
    pub attack_degraded_fraction: f64,
    /// Refused (throttled or blocked).
    pub attack_refused_fraction: f64,
    /// Output tokens let out, as a share of what an unprotected API would
    /// have produced.
    pub attack_output_tokens_fraction: f64,
    /// Attack requests that were their account's first (first contact), as
    /// a share of attack requests.
    pub attack_first_requests_fraction: f64,
    /// Of all attack requests, the share that were an account's first *and*
    /// served in full: what got through before any evidence could exist
    /// (part of `attack_served_fraction`).
    pub attack_first_served_fraction: f64,
    /// Legitimate requests.
    pub legit_requests: u64,
    /// Of those, refused (throttled or blocked).
    pub legit_refused_fraction: f64,
    /// Slowed.
    pub legit_slowed_fraction: f64,
    /// Degraded.
    pub legit_degraded_fraction: f64,
    /// The slowest first containment among the attack populations, seconds
    /// from each one's start (None: some attack was never contained).
    pub containment_seconds: Option<u64>,
    /// The slowest sustained containment (contained from then on).
    pub sustained_containment_seconds: Option<u64>,
    /// Per population.
    pub populations: BTreeMap<String, PopulationOutcome>,
}

impl Headline {
    /// Sum the populations up.
    pub fn new(populations: &BTreeMap<String, PopulationOutcome>) -> Headline {
        let mut attack = PopulationOutcome::default();
        let mut legit = PopulationOutcome::default();
        let mut containment = Some(0);
        let mut sustained = Some(0);
        let mut populations = populations.clone();
        for p in populations.values_mut() {
            p.finish();
            let sum = if p.attack { &mut attack } else { &mut legit };
            sum.requests += p.requests;
            sum.allowed += p.allowed;
            sum.slowed += p.slowed;
            sum.degraded += p.degraded;
            sum.throttled += p.throttled;
            sum.blocked += p.blocked;
            sum.output_tokens_unprotected += p.output_tokens_unprotected;
            sum.output_tokens_served += p.output_tokens_served;
            sum.first_requests += p.first_requests;
            sum.first_requests_served += p.first_requests_served;
            if p.attack {
                containment = containment
                    .zip(p.containment_seconds)
                    .map(|(a, b)| a.max(b));
                sustained = sustained
                    .zip(p.sustained_containment_seconds)
                    .map(|(a, b)| a.max(b));
            }
        }
        let any_attack = attack.requests > 0;
        Headline {
            attack_requests: attack.requests,
            attack_served_fraction: attack.served_fraction(),
            attack_degraded_fraction: ratio(attack.degraded, attack.requests),
            attack_refused_fraction: attack.refused_fraction(),
            attack_output_tokens_fraction: ratio(
                attack.output_tokens_served,
                attack.output_tokens_unprotected,
            ),
            attack_first_requests_fraction: ratio(attack.first_requests, attack.requests),
            attack_first_served_fraction: ratio(attack.first_requests_served, attack.requests),
            legit_requests: legit.requests,
            legit_refused_fraction: legit.refused_fraction(),
            legit_slowed_fraction: ratio(legit.slowed, legit.requests),
            legit_degraded_fraction: ratio(legit.degraded, legit.requests),
            containment_seconds: containment.filter(|_| any_attack),
            sustained_containment_seconds: sustained.filter(|_| any_attack),
            populations,
        }
    }

    /// The headline as a table: this policy beside another (the per-key
    /// baseline), if given.
    pub fn render(&self, name: &str, other: Option<(&str, &Headline)>) -> String {
        let mut out = String::new();
        let pct = |x: f64| format!("{:.3} %", x * 100.0);
        let secs = |x: Option<u64>| x.map_or("never".to_string(), |s| format!("{s} s"));
        let other_name = other.map_or("", |o| o.0);
        let _ = writeln!(out, "{:<36} {:>16} {:>16}", "", name, other_name);
        let mut row = |label: &str, f: &dyn Fn(&Headline) -> String| {
            let _ = writeln!(
                out,
                "{label:<36} {:>16} {:>16}",
                f(self),
                other.map_or(String::new(), |o| f(o.1))
            );
        };
        row("attack requests", &|h| h.attack_requests.to_string());
        row("attack served in full", &|h| pct(h.attack_served_fraction));
        row("  of it on accounts' first requests", &|h| {
            pct(h.attack_first_served_fraction)
        });
        row("attack degraded", &|h| pct(h.attack_degraded_fraction));
        row("attack refused", &|h| pct(h.attack_refused_fraction));
        row("attack output tokens let out", &|h| {
            pct(h.attack_output_tokens_fraction)
        });
        row("first containment (slowest attack)", &|h| {
            secs(h.containment_seconds)
        });
        row("sustained containment", &|h| {
            secs(h.sustained_containment_seconds)
        });
        row("legitimate requests", &|h| h.legit_requests.to_string());
        row("legitimate refused", &|h| pct(h.legit_refused_fraction));
        row("legitimate slowed", &|h| pct(h.legit_slowed_fraction));
        row("legitimate degraded", &|h| pct(h.legit_degraded_fraction));
        let _ = writeln!(
            out,
            "per population (served / slowed / degraded / refused, first containment):"
        );
        for (pop, p) in &self.populations {
            let line = |p: &PopulationOutcome| {
                format!(
                    "{} / {} / {} / {}{}",
                    pct(ratio(p.allowed, p.requests)),
                    pct(ratio(p.slowed, p.requests)),
                    pct(ratio(p.degraded, p.requests)),
                    pct(p.refused_fraction()),
                    if p.attack {
                        format!(", {}", secs(p.containment_seconds))
                    } else {
                        String::new()
                    }
                )
            };
            let kind = if p.attack { "attack" } else { "legit" };
            let _ = writeln!(
                out,
                "  {pop} ({kind}, {} requests): {}",
                p.requests,
                line(p)
            );
            if !p.reasons.is_empty() {
                let mut why: Vec<(&String, &u64)> = p.reasons.iter().collect();
                why.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                let why: Vec<String> = why
                    .iter()
                    .take(4)
                    .map(|(r, n)| format!("{r} {n}"))
                    .collect();
                let _ = writeln!(out, "    why: {}", why.join(", "));
            }
            if let Some(o) = other.and_then(|o| o.1.populations.get(pop).map(|p| (o.0, p))) {
                let _ = writeln!(out, "    {}: {}", o.0, line(o.1));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(t_ms: u64, out: u64) -> TrafficRecord {
        TrafficRecord {
            t_ms,
            output_tokens: out,
            ..Default::default()
        }
    }

    #[test]
    fn containment_is_the_end_of_the_first_minute_at_or_below_five_percent() {
        let mut p = PopulationOutcome::new(true, 0);
        // Minute 0: all served. Minute 1: 1 of 20 served (5 %). Minute 2: 2 of
        // 10 served. Minute 3: none served.
        for i in 0..10 {
            // Ten accounts' first requests.
            p.count(&rec(i * 1000, 100), "allow", 100, true);
        }
        for i in 0..20 {
            let label = if i == 0 { "slow" } else { "throttle" };
            p.count(&rec(60_000 + i * 1000, 100), label, 100, false);
        }
        for i in 0..10 {
            let label = if i < 2 { "allow" } else { "degrade" };
            p.count(&rec(120_000 + i * 1000, 100), label, 10, false);
        }
        let h = Headline::new(&BTreeMap::from([("hydra".to_string(), p.clone())]));
        assert_eq!(h.populations["hydra"].containment_seconds, Some(120));
        assert_eq!(h.populations["hydra"].sustained_containment_seconds, None);
        for i in 0..10 {
            p.count(&rec(180_000 + i * 1000, 100), "block", 0, i == 0);
        }
        assert_eq!(p.requests, 50);
        assert_eq!(p.output_tokens_unprotected, 5000);
        // 10 + 1 served in full at 100, 2 allowed at 10, 8 degraded at 10.
        assert_eq!(p.output_tokens_served, 1000 + 100 + 20 + 80);
        let h = Headline::new(&BTreeMap::from([("hydra".to_string(), p)]));
        assert_eq!(h.attack_requests, 50);
        assert!((h.attack_served_fraction - 13.0 / 50.0).abs() < 1e-12);
        assert!((h.attack_degraded_fraction - 8.0 / 50.0).abs() < 1e-12);
        assert_eq!(h.containment_seconds, Some(120));
        assert_eq!(h.sustained_containment_seconds, Some(240));
        assert_eq!(h.legit_requests, 0);
        // 11 first requests, 10 of them served in full.
        assert!((h.attack_first_requests_fraction - 11.0 / 50.0).abs() < 1e-12);
        assert!((h.attack_first_served_fraction - 10.0 / 50.0).abs() < 1e-12);
    }

    #[test]
    fn an_attack_never_contained_makes_the_headline_never() {
        let mut a = PopulationOutcome::new(true, 0);
        a.count(&rec(0, 1), "block", 0, true);
        let mut b = PopulationOutcome::new(true, 0);
        b.count(&rec(0, 1), "allow", 1, true);
        let mut legit = PopulationOutcome::new(false, 0);
        legit.count(&rec(0, 1), "throttle", 0, true);
        legit.count(&rec(0, 1), "slow", 1, false);
        let h = Headline::new(&BTreeMap::from([
            ("a".to_string(), a),
            ("b".to_string(), b),
            ("legit".to_string(), legit),
        ]));
        assert_eq!(h.containment_seconds, None);
        assert_eq!(h.legit_refused_fraction, 0.5);
        assert_eq!(h.legit_slowed_fraction, 0.5);
        assert!(h.render("policy", Some(("per-key", &h))).contains("never"));
    }
}
