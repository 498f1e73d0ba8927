//! The engine's policy: tiers with their quotas as [`Rate`]s, which account
//! gets which tier, state bounds, cluster budgets and detection — built by
//! `config` from a validated file.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::gcra::{Nanos, Rate};
use super::link::{ClusterView, LinkPolicy, Strength};
use super::AccountId;

/// One tier's quotas.
#[derive(Debug, Clone)]
pub struct Tier {
    /// Tier name.
    pub name: Arc<str>,
    /// Requests per minute with burst.
    pub requests: Rate,
    /// Input tokens per minute (burst: one minute's worth).
    pub input: Rate,
    /// Output tokens per minute (burst: one minute's worth), post-paid.
    pub output: Rate,
    /// Requests in flight.
    pub max_concurrent: u32,
}

impl Tier {
    /// The same tier with its request and token rates (and bursts)
    /// multiplied by `factor`; the concurrency cap is kept.
    pub fn scaled(&self, factor: f64) -> Tier {
        Tier {
            name: self.name.clone(),
            requests: self.requests.scaled(factor),
            input: self.input.scaled(factor),
            output: self.output.scaled(factor),
            max_concurrent: self.max_concurrent,
        }
    }
}

/// Everything the engine decides by.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Tiers (index = tier id).
    pub tiers: Vec<Tier>,
    /// Tier of unlisted accounts.
    pub default_tier: usize,
    /// Tier of anonymous clients.
    pub anonymous_tier: usize,
    /// Listed accounts: tier index and allow flag.
    pub accounts: HashMap<u64, (usize, bool)>,
    /// Account states kept at most.
    pub max_tracked: usize,
    /// Account tenures kept at most (`Engine::tenure_of`).
    pub max_tenure: usize,
    /// Idle state lifetime.
    pub idle_evict: std::time::Duration,
    /// New accounts per client network while the account store is full.
    pub new_accounts_at_capacity: Rate,
    /// Cluster budgets.
    pub cluster: ClusterPolicy,
    /// Behaviour detection (None: off).
    pub detection: Option<DetectionPolicy>,
}

/// One action of the ladder: enforced (on a share of accounts) or shadow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionMode {
    /// Enforced at all (false: shadow).
    pub enforce: bool,
    /// Share of accounts (0–100) on which it is enforced.
    pub enforce_percent: u8,
}

/// Behaviour detection: what the engine decides by when it is on.
#[derive(Debug, Clone)]
pub struct DetectionPolicy {
    /// The whole engine: enforced on this share of accounts (0: shadow).
    pub mode: ActionMode,
    /// Weights, ramps, thresholds, windows.
    pub score: super::score::ScorePolicy,
    /// The phrase lists' names, in the order of [`super::score::PhraseHits`]'
    /// bits (the prompt step matches them).
    pub phrase_lists: Vec<String>,
    /// A member's requests count in its cluster's core from this own raw
    /// score on.
    pub core_min_raw: f32,
    /// An account's requests go into its behaviour cohorts from this own
    /// raw score on (above 1: never).
    pub cohort_min_raw: f32,
    /// ...and from this many requests of its own on.
    pub cohort_min_requests: u32,
    /// An account's requests go into its client network's pool from this
    /// own raw score on (above 1: never); it is scored by the pool as a
    /// whole ([`super::Engine`], docs/score.md "Network pools").
    pub network_pool_min_raw: f32,
    /// Distinct accounts a pool must have seen before its score counts.
    pub network_pool_min_members: u32,
    /// Slow's mode.
    pub slow: ActionMode,
    /// Delay at the Slow mark.
    pub slow_min_delay: Duration,
    /// Delay at a score of 1.
    pub slow_max_delay: Duration,
    /// Concurrency cap of a slowed account.
    pub slow_max_concurrent: u32,
    /// Slow applies while the score rests on fewer requests than this;
    /// from it on, the Slow level is acted on as Degrade (0: never).
    pub slow_while_requests_below: u32,
    /// Degrade's mode.
    pub degrade: ActionMode,
    /// Output limit when degraded.
    pub degrade_max_output_tokens: u32,
    /// Throttle's mode.
    pub throttle: ActionMode,
    /// Budget multiplier when throttled.
    pub throttle_factor: f64,
    /// Block's mode.
    pub block: ActionMode,
    /// A scored cluster acted on at Degrade or above for this long without
    /// a break is blocked (None: never by time alone).
    pub block_cluster_after_degrade: Option<Nanos>,
}

/// When clusters share a budget, and how big it is.
#[derive(Debug, Clone)]
pub struct ClusterPolicy {
    /// Link and enforce at all.
    pub enabled: bool,
    /// Weakest link that makes a cluster share a budget.
    pub min_strength: Strength,
    /// Weakest link that makes a cluster scored as a whole by detection.
    pub score_min_strength: Strength,
    /// With detection on: a cluster shares its budget only while its own
    /// ladder level is at least this (Allow: always).
    pub budget_min_level: super::score::Level,
    /// Smallest cluster that shares a budget.
    pub min_members: u32,
    /// Base budget.
    pub base: Tier,
    /// Growth per member (fraction of base).
    pub per_member_fraction: f64,
    /// Exponent on the member count (below 1: sublinear).
    pub growth_exponent: f64,
    /// Cap on the multiplier.
    pub max_multiplier: f64,
    /// The linker's policy.
    pub link: LinkPolicy,
    /// Client networks never used for linking.
    pub ignore_nets: Vec<ipnet::IpNet>,
    /// Client networks whose links are weakened.
    pub downweight_nets: Vec<ipnet::IpNet>,
}

impl ClusterPolicy {
    /// Budget multiplier of a cluster of `members` accounts:
    /// `min(max_multiplier, 1 + per_member_fraction × members^growth_exponent)`.
    pub fn multiplier(&self, members: u32) -> f64 {
        let m = f64::from(members);
        (1.0 + self.per_member_fraction * m.powf(self.growth_exponent)).min(self.max_multiplier)
    }

    /// The budget of a cluster of `members` accounts.
    pub fn budget(&self, members: u32) -> Tier {
        let k = self.multiplier(members);
        let mut t = self.base.scaled(k);
        t.max_concurrent = ((f64::from(self.base.max_concurrent) * k).round() as u32).max(1);
        t
    }

    /// Whether a cluster is enforced as one actor.
    pub fn applies(&self, c: &ClusterView) -> bool {
        self.enabled && c.strength >= self.min_strength && c.members >= self.min_members
    }

    /// Whether detection scores the cluster `c` as a whole (its strength is
    /// at least `score_min_strength`, its size at least `min_members`).
    pub fn scored(&self, c: &ClusterView) -> bool {
        self.enabled && c.strength >= self.score_min_strength && c.members >= self.min_members
    }

    /// No linking at all (tests, benchmarks, per-key-only comparisons).
    pub fn disabled() -> ClusterPolicy {
        ClusterPolicy {
            enabled: false,
            min_strength: Strength::Strong,
            score_min_strength: Strength::Strong,
            budget_min_level: super::score::Level::Allow,
            min_members: u32::MAX,
            base: Tier {
                name: "cluster".into(),
                requests: Rate::per_minute(1, 1),
                input: Rate::per_minute(1, 1),
                output: Rate::per_minute(1, 1),
                max_concurrent: 1,
            },
            per_member_fraction: 0.0,
            growth_exponent: 0.0,
            max_multiplier: 1.0,
            link: LinkPolicy::default(),
            ignore_nets: Vec::new(),
            downweight_nets: Vec::new(),
        }
    }
}

impl Policy {
    /// A policy with one tier, for tests and benchmarks.
    pub fn single_tier(tier: Tier) -> Policy {
        Policy {
            tiers: vec![tier],
            default_tier: 0,
            anonymous_tier: 0,
            accounts: HashMap::new(),
            max_tracked: 1_000_000,
            max_tenure: 1_000_000,
            idle_evict: std::time::Duration::from_secs(600),
            new_accounts_at_capacity: Rate::per_minute(60, 60),
            cluster: ClusterPolicy::disabled(),
            detection: None,
        }
    }

    /// The tier index of an account and whether it is allow-listed.
    pub fn tier_of(&self, account: AccountId, anonymous: bool) -> (usize, bool) {
        if anonymous {
            return (self.anonymous_tier, false);
        }
        match self.accounts.get(&account.0) {
            Some(&(t, allow)) => (t.min(self.tiers.len().saturating_sub(1)), allow),
            None => (self.default_tier, false),
        }
    }
}

/// Nanoseconds from a duration, saturating.
pub fn nanos(d: std::time::Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
