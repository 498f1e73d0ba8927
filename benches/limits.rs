//! The identity + limit path per request, with 100k tracked accounts:
//! HMAC of the API key, then `engine.decide` and `engine.settle` on the
//! account's budget cells. Baseline beside it: the HMAC alone.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use distill_guard::engine::{Engine, Observation, ObservedAttrs, Policy, Usage, Verdict, SECOND};
use distill_guard::identity::KeyHasher;
use std::hint::black_box;

const ACCOUNTS: u64 = 100_000;

fn benches(c: &mut Criterion) {
    let tier = distill_guard::config::TierConfig {
        requests_per_minute: 1_000_000,
        burst_requests: 1_000_000,
        input_tokens_per_minute: 1_000_000_000,
        output_tokens_per_minute: 1_000_000_000,
        max_concurrent: 1000,
    }
    .tier("default");
    let engine = Engine::new(Policy::single_tier(tier));
    let hasher = KeyHasher::new(b"bench-secret-0123456789abcdef");
    let keys: Vec<String> = (0..ACCOUNTS)
        .map(|i| format!("sk-ant-api03-{i:012}"))
        .collect();
    // Warm every account so the map holds 100k entries.
    let mut now = 1000 * SECOND;
    for k in &keys {
        let obs = Observation {
            account: hasher.account_id(k.as_bytes()),
            anonymous: false,
            input_tokens: 10,
            attrs: ObservedAttrs::default(),
            request: Default::default(),
            account_age: None,
        };
        if let Some(t) = engine.decide(&obs, now).verdict.into_ticket() {
            engine.settle(&t, Usage::default(), now);
        }
    }
    assert!(engine.tracked_accounts() as u64 >= ACCOUNTS);

    let mut g = c.benchmark_group("identity+limits");
    let mut i = 0usize;
    g.bench_function("hmac only (baseline)", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            hasher.account_id(black_box(keys[i].as_bytes()))
        })
    });
    g.bench_function("hmac + decide + settle, 100k accounts", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            now += 1000;
            let obs = Observation {
                account: hasher.account_id(black_box(keys[i].as_bytes())),
                anonymous: false,
                input_tokens: 50,
                attrs: ObservedAttrs::default(),
                request: Default::default(),
                account_age: None,
            };
            match engine.decide(&obs, now).verdict {
                Verdict::Allow(t)
                | Verdict::Slow { ticket: t, .. }
                | Verdict::Degrade { ticket: t, .. } => engine.settle(
                    &t,
                    Usage {
                        input_tokens: Some(50),
                        output_tokens: 100,
                    },
                    now,
                ),
                Verdict::Throttle(_) | Verdict::Block { .. } => {
                    panic!("bench tier must not refuse")
                }
            }
        })
    });
    g.finish();
}

criterion_group!(group, benches);
criterion_main!(group);
