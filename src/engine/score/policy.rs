//! The score's policy: weights, ramps, marks and model ceilings (docs/score.md, "Defaults").

use super::*;

/// Everything the score is computed by. Built from config, checked with [`ScorePolicy::validate`]; shared by
/// accounts and clusters and swappable under live state (nothing here is baked into a state).
#[derive(Debug, Clone, PartialEq)]
pub struct ScorePolicy {
    /// Weight of each signal in the score (points of a 0..=1 score when the signal is fully on).
    pub weights: PerSignal<f32>,
    /// How each signal's raw value maps to 0..=1.
    pub ramps: PerSignal<Ramp>,
    /// The ladder's marks.
    pub thresholds: Thresholds,
    /// Decayed requests in the window below which the score is 0.
    pub min_requests: f32,
    /// Pseudo-count of the evidence factor `n / (n + prior_requests)`.
    pub prior_requests: f32,
    /// Half-life of every window (counters, gap statistics; the breadth sketches rotate every half-life).
    pub half_life: Nanos,
    /// Half-life of the short request counter that measures whether the source is still active.
    pub activity_half_life: Nanos,
    /// Half-life of a group's second window, its onset window (clusters, cohorts, network pools; 0: none): a group
    /// is scored by the higher of its `half_life` window and this one, so that what it did an hour ago (a
    /// campaign's warm-up of benign traffic) does not dilute what it does now. Below `half_life`.
    pub onset_half_life: Nanos,
    /// Credit (0..=1) a request earns towards reasoning elicitation by its parameters alone.
    pub elicitation_param_credit: f32,
    /// Thinking budgets at or above this count as elicitation parameters.
    pub thinking_budget_threshold: u32,
    /// `max_tokens` at or above this fraction of the model's ceiling counts as pinned.
    pub pinned_fraction: f32,
    /// Output-token ceilings by model-name prefix (longest prefix wins).
    pub model_ceilings: Vec<(String, u32)>,
    /// Ceiling of models not in `model_ceilings`.
    pub default_ceiling: u32,
    /// Newly released models by model-name prefix, with their release time on the engine's clock.
    pub new_models: Vec<(String, Nanos)>,
    /// How long after its release a model counts as new.
    pub new_model_window: Nanos,
    /// An account first seen later than this before a release (or after it) is young relative to the release.
    pub pivot_young: Nanos,
    /// Weight of a new-model request from an account that is not young relative to the release.
    pub pivot_old_weight: f32,
    /// A second is lockstep when at least this many distinct members fired in it...
    pub lockstep_min_members: u32,
    /// ...and at least this many times the cluster's mean requests per second.
    pub lockstep_rate_factor: f32,
    /// [`Signal::MemberSpread`] reads 0 for clusters with fewer members.
    pub spread_min_members: u32,
    /// A response served in full counts towards [`Signal::YieldPerMember`] when it has at least this many output
    /// tokens...
    pub yield_min_output_tokens: u32,
    /// ...and at least this many times the request's input tokens.
    pub yield_min_ratio: f32,
    /// How long an engine that has just started takes to count an older account's second clients in full
    /// ([`StackNovelty::Second`], [`StackNovelty::Elsewhere`]): at `t` into its watch they count `t / stack_watch`
    /// of what they would. It has not seen the machines such an account already used; a new account's are new.
    pub stack_watch: Nanos,
}

impl Default for ScorePolicy {
    fn default() -> ScorePolicy {
        ScorePolicy {
            weights: PerSignal {
                reasoning_elicitation: 0.15,
                template_reuse: 0.12,
                output_ratio: 0.10,
                pinned_max_tokens: 0.15,
                timing_regularity: 0.08,
                lockstep: 0.15,
                volume: 0.03,
                account_age: 0.08,
                breadth: 0.07,
                fingerprint_inconsistency: 0.05,
                release_pivot: 0.10,
                member_spread: 0.12,
                stack_churn: 0.5,
                output_length: 0.2,
                yield_per_member: 0.3,
                yield_per_hour: 0.0,
            },
            ramps: PerSignal {
                reasoning_elicitation: Ramp::new(0.05, 0.6),
                template_reuse: Ramp::new(0.2, 0.8),
                output_ratio: Ramp::new(3.0, 15.0),
                pinned_max_tokens: Ramp::new(0.2, 0.8),
                timing_regularity: Ramp::new(0.8, 0.25),
                lockstep: Ramp::new(0.1, 0.5),
                volume: Ramp::new(0.3, 1.0),
                account_age: Ramp::new(72.0, 6.0),
                breadth: Ramp::new(3.0, 20.0),
                fingerprint_inconsistency: Ramp::new(0.05, 0.5),
                release_pivot: Ramp::new(0.05, 0.5),
                member_spread: Ramp::new(1.0, 5.0),
                stack_churn: Ramp::new(0.05, 0.5),
                output_length: Ramp::new(1_500.0, 4_000.0),
                yield_per_member: Ramp::new(8_000.0, 24_000.0),
                yield_per_hour: Ramp::new(8_000.0, 24_000.0),
            },
            thresholds: Thresholds {
                slow: Mark::new(0.50, 0.40),
                degrade: Mark::new(0.55, 0.45),
                throttle: Mark::new(0.75, 0.62),
                block: Mark::new(0.90, 0.78),
            },
            min_requests: 8.0,
            prior_requests: 3.0,
            half_life: HOUR,
            activity_half_life: 15 * MINUTE,
            onset_half_life: 10 * MINUTE,
            elicitation_param_credit: 0.25,
            thinking_budget_threshold: 16_000,
            pinned_fraction: 0.95,
            model_ceilings: [
                ("claude-opus-4-5", 64_000),
                ("claude-opus-4", 32_000),
                ("claude-sonnet-4", 64_000),
                ("claude-haiku-4", 64_000),
                ("claude-3-7-sonnet", 64_000),
                ("claude-3-5", 8_192),
                ("gpt-5", 128_000),
                ("gpt-4.1", 32_768),
                ("gpt-4o", 16_384),
                ("o1", 100_000),
                ("o3", 100_000),
                ("o4-mini", 100_000),
            ]
            .iter()
            .map(|&(m, c)| (m.to_owned(), c))
            .collect(),
            default_ceiling: 8_192,
            new_models: Vec::new(),
            new_model_window: 7 * DAY,
            pivot_young: DAY,
            pivot_old_weight: 0.25,
            lockstep_min_members: 8,
            spread_min_members: 20,
            lockstep_rate_factor: 4.0,
            yield_min_output_tokens: 1_500,
            yield_min_ratio: 10.0,
            stack_watch: 30 * MINUTE,
        }
    }
}

/// A policy value out of range: which key, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScorePolicyError {
    /// Key path of the offending value (`weights.breadth`, `thresholds.slow.exit`, `model_ceilings[2]`…).
    pub field: String,
    /// What was expected.
    pub expected: &'static str,
}

impl fmt::Display for ScorePolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: expected {}", self.field, self.expected)
    }
}

impl std::error::Error for ScorePolicyError {}

impl ScorePolicy {
    /// Hours of age at which [`Signal::AccountAge`] is off (the far end of its
    /// ramp): older reads no different, so ages are counted up to it.
    pub fn account_age_horizon_hours(&self) -> f32 {
        let r = self.ramps.account_age;
        r.off.max(r.full).max(0.0)
    }

    /// Check every value; the first bad one is named.
    pub fn validate(&self) -> Result<(), ScorePolicyError> {
        let err = |field: String, expected: &'static str| Err(ScorePolicyError { field, expected });
        for s in Signal::ALL {
            let w = self.weights.get(s);
            if !(w.is_finite() && w >= 0.0) {
                return err(format!("weights.{s}"), "a finite number >= 0");
            }
            let r = self.ramps.get(s);
            if !(r.off.is_finite() && r.full.is_finite() && r.off != r.full) {
                return err(format!("ramps.{s}"), "finite `off` and `full` that differ");
            }
        }
        let mut prev: Option<Mark> = None;
        for level in [Level::Slow, Level::Degrade, Level::Throttle, Level::Block] {
            let Some(m) = self.thresholds.mark(level) else {
                continue;
            };
            if !(m.exit.is_finite() && m.exit >= 0.0) {
                return err(format!("thresholds.{level}.exit"), "a finite number >= 0");
            }
            if m.enter.is_nan() || m.enter <= m.exit {
                return err(
                    format!("thresholds.{level}.enter"),
                    "a number above the level's exit mark",
                );
            }
            if let Some(p) = prev {
                if m.enter < p.enter {
                    return err(
                        format!("thresholds.{level}.enter"),
                        "a mark at or above the milder level's enter mark",
                    );
                }
                if m.exit < p.exit {
                    return err(
                        format!("thresholds.{level}.exit"),
                        "a mark at or above the milder level's exit mark",
                    );
                }
            }
            prev = Some(m);
        }
        if !(self.min_requests.is_finite() && self.min_requests >= 0.0) {
            return err("min_requests".into(), "a finite number >= 0");
        }
        if !(self.prior_requests.is_finite() && self.prior_requests >= 0.0) {
            return err("prior_requests".into(), "a finite number >= 0");
        }
        if self.half_life == 0 {
            return err("half_life".into(), "a duration above 0");
        }
        if self.activity_half_life == 0 || self.activity_half_life >= self.half_life {
            return err(
                "activity_half_life".into(),
                "a duration above 0 and below half_life",
            );
        }
        if self.onset_half_life >= self.half_life {
            return err(
                "onset_half_life".into(),
                "0 (no onset window) or a duration below half_life",
            );
        }
        if !(0.0..=1.0).contains(&self.elicitation_param_credit) {
            return err("elicitation_param_credit".into(), "a number in 0..=1");
        }
        if !(self.pinned_fraction > 0.0 && self.pinned_fraction <= 1.0) {
            return err("pinned_fraction".into(), "a number in (0, 1]");
        }
        for (i, (m, c)) in self.model_ceilings.iter().enumerate() {
            if m.is_empty() || *c == 0 {
                return err(
                    format!("model_ceilings[{i}]"),
                    "a non-empty model prefix and a ceiling above 0",
                );
            }
        }
        if self.default_ceiling == 0 {
            return err("default_ceiling".into(), "a ceiling above 0");
        }
        for (i, (m, _)) in self.new_models.iter().enumerate() {
            if m.is_empty() {
                return err(format!("new_models[{i}]"), "a non-empty model prefix");
            }
        }
        if !(0.0..=1.0).contains(&self.pivot_old_weight) {
            return err("pivot_old_weight".into(), "a number in 0..=1");
        }
        if self.lockstep_min_members < 2 {
            return err("lockstep_min_members".into(), "at least 2");
        }
        if !(self.lockstep_rate_factor.is_finite() && self.lockstep_rate_factor >= 1.0) {
            return err("lockstep_rate_factor".into(), "a finite number >= 1");
        }
        if !(self.yield_min_ratio.is_finite() && self.yield_min_ratio >= 0.0) {
            return err("yield_min_ratio".into(), "a finite number >= 0");
        }
        Ok(())
    }

    /// The output-token ceiling of `model` (longest matching prefix in `model_ceilings`, else the default).
    pub fn ceiling(&self, model: Option<&str>) -> u32 {
        model
            .and_then(|m| longest_prefix(&self.model_ceilings, m))
            .unwrap_or(self.default_ceiling)
    }

    /// The release time of `model` if it is listed as new (longest matching prefix in `new_models`).
    pub fn release_of(&self, model: &str) -> Option<Nanos> {
        longest_prefix(&self.new_models, model)
    }
}

pub(super) fn longest_prefix<T: Copy>(table: &[(String, T)], model: &str) -> Option<T> {
    table
        .iter()
        .filter(|(p, _)| !p.is_empty() && model.starts_with(p.as_str()))
        .max_by_key(|(p, _)| p.len())
        .map(|&(_, v)| v)
}
