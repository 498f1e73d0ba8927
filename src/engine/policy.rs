//! The engine's policy: tiers with their quotas as [`Rate`]s, which account
//! gets which tier, and state bounds — built from a validated config.

use std::collections::HashMap;
use std::sync::Arc;

use super::gcra::{Nanos, Rate};
use super::link::{ClusterView, LinkPolicy, Strength};
use super::AccountId;
use crate::config::{Config, DetectionConfig, TierConfig};

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

    /// A tier from its config.
    pub fn from_config(name: &str, t: &TierConfig) -> Tier {
        Tier {
            name: name.into(),
            requests: Rate::per_minute(t.requests_per_minute, t.burst_requests),
            input: Rate::per_minute(t.input_tokens_per_minute, t.input_tokens_per_minute),
            output: Rate::per_minute(t.output_tokens_per_minute, t.output_tokens_per_minute),
            max_concurrent: t.max_concurrent,
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
    /// Idle state lifetime.
    pub idle_evict: std::time::Duration,
    /// New accounts per client network while the account store is full.
    pub new_accounts_at_capacity: Rate,
    /// Cluster budgets.
    pub cluster: ClusterPolicy,
    /// Behaviour detection (None: off).
    pub detection: Option<DetectionConfig>,
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
            base: Tier::from_config(
                "cluster",
                &TierConfig {
                    requests_per_minute: 1,
                    burst_requests: 1,
                    input_tokens_per_minute: 1,
                    output_tokens_per_minute: 1,
                    max_concurrent: 1,
                },
            ),
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
    /// The policy of a validated config, for an engine whose clock reads
    /// `now` while the wall clock reads `now_unix_ms` (to place the release
    /// times of new models on the engine's clock).
    pub fn from_config_at(c: &Config, now: Nanos, now_unix_ms: u64) -> Policy {
        let mut p = Policy::from_config(c);
        if let Some(d) = p.detection.as_mut() {
            d.score.new_models = d
                .new_models_unix_ms
                .iter()
                .map(|(prefix, ms)| {
                    let ago = now_unix_ms.saturating_sub(*ms).saturating_mul(1_000_000);
                    let ahead = ms.saturating_sub(now_unix_ms).saturating_mul(1_000_000);
                    (
                        prefix.clone(),
                        now.saturating_sub(ago).saturating_add(ahead),
                    )
                })
                .collect();
        }
        p
    }

    /// The policy of a validated config (new-model release times taken as
    /// engine time in milliseconds, as `replay` uses).
    pub fn from_config(c: &Config) -> Policy {
        let names: Vec<&String> = c.tiers.keys().collect();
        let index = |n: &str| names.iter().position(|t| t.as_str() == n).unwrap_or(0);
        Policy {
            tiers: c
                .tiers
                .iter()
                .map(|(n, t)| Tier::from_config(n, t))
                .collect(),
            default_tier: index(&c.accounts.default_tier),
            anonymous_tier: index(&c.accounts.anonymous_tier),
            accounts: c
                .accounts
                .entries
                .iter()
                .map(|(id, e)| (*id, (index(&e.tier), e.allow)))
                .collect(),
            max_tracked: c.accounts.max_tracked,
            idle_evict: c.accounts.idle_evict,
            new_accounts_at_capacity: Rate::per_minute(
                c.accounts.new_accounts_per_minute_at_capacity,
                c.accounts.new_accounts_per_minute_at_capacity,
            ),
            cluster: ClusterPolicy {
                enabled: c.cluster.enabled,
                min_strength: c.cluster.min_strength,
                score_min_strength: c.cluster.score_min_strength,
                budget_min_level: c.cluster.budget_min_level,
                min_members: c.cluster.min_members,
                base: Tier::from_config("cluster", &c.cluster.budget),
                per_member_fraction: c.cluster.per_member_fraction,
                growth_exponent: c.cluster.growth_exponent,
                max_multiplier: c.cluster.max_multiplier,
                link: c.cluster.link.clone(),
                ignore_nets: c.cluster.ignore_nets.clone(),
                downweight_nets: c.cluster.downweight_nets.clone(),
            },
            detection: c.detection.enabled.then(|| {
                let mut d = c.detection.clone();
                d.score.new_models = d
                    .new_models_unix_ms
                    .iter()
                    .map(|(p, ms)| (p.clone(), ms.saturating_mul(1_000_000)))
                    .collect();
                d
            }),
        }
    }

    /// A policy with one tier, for tests and benchmarks.
    pub fn single_tier(tier: Tier) -> Policy {
        Policy {
            tiers: vec![tier],
            default_tier: 0,
            anonymous_tier: 0,
            accounts: HashMap::new(),
            max_tracked: 1_000_000,
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
