//! Behaviour cohorts (engine step "score", evidence pooled by similarity): accounts that behave alike are scored
//! with the evidence of all of them, without being linked.
//!
//! A stealth campaign gives each account its own address, rotates its client stack per request and paraphrases its
//! templates, so no attribute it sends is shared and the linker never joins its accounts; each account sends too
//! little for its own score to rest on enough requests (`min_requests`). What its accounts still share is how they
//! behave: the same kind of request (elicitation, pinned output limits), the same yield (long
//! outputs), the same cadence, a client stack that changes where honest clients keep theirs. [`keys`] turns an
//! account's [`Profile`] into locality-sensitive keys (bit-sampling LSH over the quantised behaviour vector: each
//! key hashes a fixed subset of the coordinates, so accounts equal on any subset share that key); the engine keeps
//! one [`super::score::ClusterSignals`] per key, a *cohort*.
//!
//! Only accounts whose own raw score (the weighted signals, before the amount of evidence is weighed) reaches
//! `cohort_min_raw` send their requests into a cohort, and an account takes from its cohort mainly the amount of
//! evidence: its score from its first cohort (key 0) is `min(own raw, cohort raw) × cohort evidence × cohort
//! activity`. Its second cohort (key 1) is weighed the same way against the raw score the account holds at that
//! point, which is the first cohort's raw when the first cohort lent: so the second can lend up to
//! `min(raw of both cohorts)`, above the account's own raw when both cohorts' exceed it, and less than its own raw
//! allows when the first cohort's is lower. Capping both by the account's own raw was built and measured: it
//! degraded more honest requests and served no less of any campaign (BENCHMARKS.md, "Cohort lending: two changes
//! tried, not kept"), so the sequential cap stays. Either way honest look-alikes (the users of one app, a corporate
//! NAT, a batch job) are never put under a shared budget by a cohort, their benign requests cannot dilute a
//! campaign's cohort, and an honest account whose own signals stay under `cohort_min_raw` gets nothing from a cohort
//! it resembles.
//!
//! Pure, like the rest of the engine: no I/O, no clock, no randomness.

use super::score::Profile;

/// Cohort keys per account and request.
pub const KEYS: usize = 2;

/// `⌊log2(x / unit)⌋ + 1`, clamped to `0..=max` (0 for `x < unit`, and for nothing at all).
fn log_bucket(x: f32, unit: f32, max: u8) -> u8 {
    if x.is_nan() || x < unit {
        return 0;
    }
    let b = (x / unit).log2().floor() + 1.0;
    (b.min(f32::from(max))) as u8
}

/// FNV-1a over `bytes`, then SplitMix64's finaliser: a fixed function, the same on every replica.
fn hash(bytes: &[u8]) -> u64 {
    // Never 0: 0 means "no cohort" in a ticket.
    super::hash::splitmix64(super::hash::fnv1a(bytes)) | 1
}

/// The account's cohort keys. Key 0 is what it asks for (elicitation, output limits pinned at a ceiling, stack
/// churn); key 1 what it gets and how often (output per request and requests per hour, by factors of four, and stack
/// churn). Coarse on purpose: a cohort needs `min_requests` of pooled evidence, so a campaign of a few dozen accounts
/// at a few requests an hour must not be cut into cohorts too small to score (jitter, drawn fills and the
/// early, unsettled estimates of a young account's rate all move an account between fine buckets). Honest accounts
/// are kept apart by the entry mark, not by the buckets.
pub fn keys(p: &Profile) -> [u64; KEYS] {
    let churn = u8::from(p.stack_churn >= 0.3);
    let asks = [
        0u8,
        u8::from(p.elicitation >= 0.3),
        u8::from(p.pinned >= 0.5),
        churn,
    ];
    let gets = [
        1u8,
        log_bucket(p.output_per_request, 250.0, 7) / 2,
        log_bucket(p.requests_per_hour, 1.0, 10) / 2,
        churn,
    ];
    [hash(&asks), hash(&gets)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaign(i: u32) -> Profile {
        // Jitter between accounts of one campaign: rates, lengths and churn differ a little.
        let j = (i % 7) as f32 / 7.0;
        Profile {
            requests_total: 6,
            requests_per_hour: 12.0 + 3.0 * j,
            input_per_request: 100.0 + 80.0 * j,
            output_per_request: 4_200.0 + 1_000.0 * j,
            long_yield_per_request: 4_200.0 + 1_000.0 * j,
            elicitation: 0.08,
            pinned: 0.0,
            stack_churn: 0.85 + 0.1 * j,
        }
    }

    #[test]
    fn a_campaigns_accounts_share_keys() {
        let base = keys(&campaign(0));
        let shared = (1..60)
            .filter(|&i| {
                let k = keys(&campaign(i));
                k.iter().zip(&base).any(|(a, b)| a == b)
            })
            .count();
        assert_eq!(shared, 59);
    }

    #[test]
    fn honest_look_alikes_get_other_keys() {
        let c = keys(&campaign(0));
        // Users of one app: similar prompts, but their own stack kept and shorter answers.
        let app = Profile {
            stack_churn: 0.0,
            output_per_request: 700.0,
            requests_per_hour: 8.0,
            ..campaign(0)
        };
        // A batch job: high rate, short outputs, one stack.
        let batch = Profile {
            requests_per_hour: 200.0,
            output_per_request: 120.0,
            stack_churn: 0.0,
            ..campaign(0)
        };
        for p in [app, batch] {
            let k = keys(&p);
            assert!(k.iter().zip(&c).all(|(a, b)| a != b), "{p:?}");
        }
    }

    #[test]
    fn buckets() {
        assert_eq!(log_bucket(0.0, 1.0, 10), 0);
        assert_eq!(log_bucket(f32::NAN, 1.0, 10), 0);
        assert_eq!(log_bucket(1.0, 1.0, 10), 1);
        assert_eq!(log_bucket(3.9, 1.0, 10), 2);
        assert_eq!(log_bucket(1e9, 1.0, 10), 10);
    }
}
