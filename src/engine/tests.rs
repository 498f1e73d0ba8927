//! Engine tests on virtual time: no sleeps, exact arithmetic.

use super::*;

const MIN: Nanos = 60 * SECOND;

fn tier(rpm: u64, burst: u64, in_tpm: u64, out_tpm: u64, conc: u32) -> Tier {
    Tier::from_config(
        "t",
        &crate::config::TierConfig {
            requests_per_minute: rpm,
            burst_requests: burst,
            input_tokens_per_minute: in_tpm,
            output_tokens_per_minute: out_tpm,
            max_concurrent: conc,
        },
    )
}

fn obs(account: u64, input_tokens: u64) -> Observation {
    Observation {
        account: AccountId(account),
        anonymous: false,
        input_tokens,
        attrs: ObservedAttrs::default(),
    }
}

fn allow(d: &Decision) -> Ticket {
    match &d.verdict {
        Verdict::Allow(t) => t.clone(),
        other => panic!("expected allow, got {other:?}"),
    }
}

fn throttle(d: &Decision) -> LimitHit {
    match &d.verdict {
        Verdict::Throttle(h) => *h,
        other => panic!("expected throttle, got {other:?}"),
    }
}

#[test]
fn request_rate_limits_one_account_and_not_another() {
    let e = Engine::new(Policy::single_tier(tier(60, 3, 1_000_000, 1_000_000, 100)));
    let t0 = 100 * MIN;
    for _ in 0..3 {
        let t = allow(&e.decide(&obs(1, 10), t0));
        e.settle(&t, Usage::default(), t0);
    }
    let hit = throttle(&e.decide(&obs(1, 10), t0));
    assert_eq!(hit.kind, LimitKind::Requests);
    assert_eq!(hit.scope, Scope::Account);
    assert_eq!(hit.retry_after, SECOND);
    assert_eq!(hit.remaining, 0);
    // Another account is unaffected.
    allow(&e.decide(&obs(2, 10), t0));
    // After retry_after the first account passes again.
    allow(&e.decide(&obs(1, 10), t0 + SECOND));
}

#[test]
fn output_debt_is_post_paid_and_blocks_until_repaid() {
    // 600 output tokens per minute = 10 per second.
    let e = Engine::new(Policy::single_tier(tier(1000, 1000, 1_000_000, 600, 100)));
    let t0 = 10 * MIN;
    let t = allow(&e.decide(&obs(7, 5), t0));
    // The stream used 1800 tokens: 3 minutes' worth. It is not cut off; the
    // charge lands afterwards.
    e.settle(
        &t,
        Usage {
            input_tokens: None,
            output_tokens: 1800,
        },
        t0 + SECOND,
    );
    let b = e.account_budgets(AccountId(7), t0 + SECOND).unwrap();
    assert_eq!(b.output_tokens_debt, 1200);
    let hit = throttle(&e.decide(&obs(7, 5), t0 + SECOND));
    assert_eq!(hit.kind, LimitKind::OutputTokens);
    // Debt 1200 tokens at 10/s = 120 s, plus one token's interval.
    assert_eq!(hit.retry_after, 120 * SECOND + SECOND / 10);
    assert!(matches!(
        e.decide(&obs(7, 5), t0 + SECOND + 120 * SECOND).verdict,
        Verdict::Throttle(_)
    ));
    allow(&e.decide(&obs(7, 5), t0 + SECOND + 120 * SECOND + SECOND / 10));
}

#[test]
fn input_estimate_is_corrected_by_reported_usage() {
    let e = Engine::new(Policy::single_tier(tier(1000, 1000, 600, 1_000_000, 100)));
    let t0 = 10 * MIN;
    let t = allow(&e.decide(&obs(3, 100), t0));
    assert_eq!(
        e.account_budgets(AccountId(3), t0)
            .unwrap()
            .input_tokens_remaining,
        500
    );
    e.settle(
        &t,
        Usage {
            input_tokens: Some(550),
            output_tokens: 0,
        },
        t0,
    );
    assert_eq!(
        e.account_budgets(AccountId(3), t0)
            .unwrap()
            .input_tokens_remaining,
        50
    );
    let t = allow(&e.decide(&obs(3, 50), t0));
    e.settle(
        &t,
        Usage {
            input_tokens: Some(10),
            output_tokens: 0,
        },
        t0,
    );
    assert_eq!(
        e.account_budgets(AccountId(3), t0)
            .unwrap()
            .input_tokens_remaining,
        40
    );
}

#[test]
fn concurrency_cap_counts_unsettled_requests() {
    let e = Engine::new(Policy::single_tier(tier(
        1000, 1000, 1_000_000, 1_000_000, 2,
    )));
    let a = allow(&e.decide(&obs(1, 0), 0));
    let _b = allow(&e.decide(&obs(1, 0), 0));
    let hit = throttle(&e.decide(&obs(1, 0), 0));
    assert_eq!(hit.kind, LimitKind::Concurrency);
    e.settle(&a, Usage::default(), 0);
    allow(&e.decide(&obs(1, 0), 0));
}

#[test]
fn refused_requests_consume_nothing() {
    let e = Engine::new(Policy::single_tier(tier(60, 1, 600, 600, 10)));
    let t = allow(&e.decide(&obs(1, 0), 0));
    e.settle(
        &t,
        Usage {
            input_tokens: None,
            output_tokens: 6000,
        },
        0,
    );
    // Refused by output debt: the request bucket must not be charged.
    for _ in 0..5 {
        throttle(&e.decide(&obs(1, 0), 2 * SECOND));
    }
    let b = e.account_budgets(AccountId(1), 2 * SECOND).unwrap();
    assert_eq!(b.requests_remaining, 1);
}

#[test]
fn reload_changes_quota_but_keeps_debt() {
    let e = Engine::new(Policy::single_tier(tier(1000, 1000, 1_000_000, 600, 100)));
    let t = allow(&e.decide(&obs(9, 0), 0));
    e.settle(
        &t,
        Usage {
            input_tokens: None,
            output_tokens: 1800,
        },
        0,
    );
    assert!(matches!(
        e.decide(&obs(9, 0), 0).verdict,
        Verdict::Throttle(_)
    ));
    // Ten times the quota: the debt (kept as time owed) is not forgiven...
    e.set_policy(Policy::single_tier(tier(1000, 1000, 1_000_000, 6000, 100)));
    let hit = throttle(&e.decide(&obs(9, 0), 0));
    assert_eq!(hit.retry_after, 120 * SECOND + SECOND / 100);
    assert!(matches!(
        e.decide(&obs(9, 0), 100 * SECOND).verdict,
        Verdict::Throttle(_)
    ));
    // ...and once repaid, the new quota applies: 6000 tokens fit in a minute.
    let t = allow(&e.decide(&obs(9, 0), 180 * SECOND));
    e.settle(
        &t,
        Usage {
            input_tokens: None,
            output_tokens: 5000,
        },
        180 * SECOND,
    );
    allow(&e.decide(&obs(9, 0), 180 * SECOND));
}

#[test]
fn state_stays_bounded_when_a_million_accounts_pass() {
    let mut policy = Policy::single_tier(tier(60, 10, 100_000, 100_000, 10));
    policy.max_tracked = 50_000;
    policy.idle_evict = std::time::Duration::from_secs(60);
    let e = Engine::new(policy);
    let mut now = 0;
    let mut peak = 0;
    for i in 0..1_000_000u64 {
        now += 100_000; // 10k requests per simulated second
        let d = e.decide(&obs(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), 10), now);
        if let Verdict::Allow(t) = d.verdict {
            e.settle(
                &t,
                Usage {
                    input_tokens: None,
                    output_tokens: 10,
                },
                now,
            );
        }
        peak = peak.max(e.tracked_accounts());
    }
    assert!(peak <= 50_000 + 50_000 / 8 + 1, "peak {peak}");
    let evicted = e.stats().evicted_accounts.load(Ordering::Relaxed);
    assert!(evicted >= 1_000_000 - peak as u64, "evicted {evicted}");
}

#[test]
fn anonymous_clients_use_the_anonymous_tier() {
    let mut policy = Policy::single_tier(tier(1000, 1000, 1_000_000, 1_000_000, 100));
    policy.tiers.push(tier(60, 1, 1_000_000, 1_000_000, 100));
    policy.anonymous_tier = 1;
    let e = Engine::new(policy);
    let anon = Observation {
        account: AccountId(5),
        anonymous: true,
        input_tokens: 0,
        attrs: ObservedAttrs::default(),
    };
    let t = allow(&e.decide(&anon, 0));
    e.settle(&t, Usage::default(), 0);
    throttle(&e.decide(&anon, 0));
}
