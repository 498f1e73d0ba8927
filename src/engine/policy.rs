//! The engine's policy: tiers with their quotas as [`Rate`]s, which account
//! gets which tier, and state bounds — built from a validated config.

use std::collections::HashMap;
use std::sync::Arc;

use super::gcra::{Nanos, Rate};
use super::AccountId;
use crate::config::{Config, TierConfig};

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
}

impl Policy {
    /// The policy of a validated config.
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
