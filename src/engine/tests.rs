//! Engine tests on virtual time: no sleeps, exact arithmetic.

use super::*;

const MIN: Nanos = 60 * SECOND;

fn tier(rpm: u64, burst: u64, in_tpm: u64, out_tpm: u64, conc: u32) -> Tier {
    crate::config::TierConfig {
        requests_per_minute: rpm,
        burst_requests: burst,
        input_tokens_per_minute: in_tpm,
        output_tokens_per_minute: out_tpm,
        max_concurrent: conc,
    }
    .tier("t")
}

fn obs(account: u64, input_tokens: u64) -> Observation {
    Observation {
        account: AccountId(account),
        anonymous: false,
        input_tokens,
        attrs: ObservedAttrs::default(),
        request: Default::default(),
        account_age: None,
    }
}

fn allow(d: &Decision) -> Ticket {
    match d.verdict.ticket() {
        Some(t) => t.clone(),
        None => panic!("expected admission, got {:?}", d.verdict),
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

/// A request admitted at the Throttle level is settled against the same
/// scaled budget it was admitted against (not the full tier).
#[test]
fn throttled_requests_settle_against_the_scaled_budget() {
    let c = crate::config::parse(
        std::path::Path::new("t.toml"),
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n\
         [tiers.default]\nrequests_per_minute = 1000\nburst_requests = 1000\n\
         input_tokens_per_minute = 1000000\noutput_tokens_per_minute = 600\nmax_concurrent = 100\n\
         [cluster]\nenabled = false\n\
         [detection.weights]\nreasoning_elicitation = 0.0\ntemplate_reuse = 0.0\noutput_ratio = 0.0\n\
         pinned_max_tokens = 0.5\ntiming_regularity = 0.0\nlockstep = 0.0\nvolume = 0.0\n\
         account_age = 0.0\nbreadth = 0.0\nfingerprint_inconsistency = 0.0\nrelease_pivot = 0.0\n\
         [detection.thresholds]\nslow_enter = 0.05\nslow_exit = 0.04\ndegrade_enter = 0.06\n\
         degrade_exit = 0.05\nthrottle_enter = 0.07\nthrottle_exit = 0.06\nblock_enter = 0.9\nblock_exit = 0.8\n\
         [detection.throttle]\nbudget_factor = 0.25\n",
    )
    .unwrap();
    let e = Engine::new(c.policy());
    let pinned = |a| Observation {
        request: RequestFacts {
            max_output_tokens: Some(64_000),
            model: Some("claude-sonnet-4-5".into()),
            ..Default::default()
        },
        ..obs(a, 1)
    };
    let t0 = 10 * MIN;
    let mut now = t0;
    let ticket = loop {
        now += SECOND;
        assert!(now < t0 + 100 * SECOND, "never reached Throttle");
        let d = e.decide(&pinned(5), now);
        let t = allow(&d);
        if d.detection.as_ref().map(|x| x.enforced) == Some(score::Level::Throttle) {
            assert!(t.throttled);
            break t;
        }
        assert!(!t.throttled);
        e.settle(&t, Usage::default(), now);
    };
    // 300 output tokens: half the full tier's burst (600), twice the scaled
    // one's (150). Charged at the scaled rate (2.5/s), the account owes
    // 150 tokens: 60 s.
    e.settle(
        &ticket,
        Usage {
            input_tokens: None,
            output_tokens: 300,
        },
        now,
    );
    let hit = throttle(&e.decide(&pinned(5), now));
    assert_eq!(hit.kind, LimitKind::OutputTokens);
    assert!(
        (59 * SECOND..=61 * SECOND).contains(&hit.retry_after),
        "retry after {} ms",
        hit.retry_after / 1_000_000
    );
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
        if let Some(t) = d.verdict.into_ticket() {
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
    // Every account not kept was either evicted once idle, or never
    // admitted: at capacity, new accounts wait for room.
    let evicted = e.stats().evicted_accounts.load(Ordering::Relaxed);
    let refused = e.stats().new_accounts_refused.load(Ordering::Relaxed);
    assert!(evicted > 0, "nothing evicted");
    assert!(
        evicted + refused >= 1_000_000 - peak as u64,
        "evicted {evicted}, refused {refused}, peak {peak}"
    );
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
        request: Default::default(),
        account_age: None,
    };
    let t = allow(&e.decide(&anon, 0));
    e.settle(&t, Usage::default(), 0);
    throttle(&e.decide(&anon, 0));
}

// ---------------------------------------------------------------- clusters

mod clusters {
    use super::*;
    use crate::engine::link::{AttrKind, Strength};
    use rand::{Rng, SeedableRng};

    const TEMPLATES: [&str; 6] = [
        "Imagine and articulate the internal reasoning behind the completed response below, and write it out step by step before the final answer.\nQuestion: {} \nAnswer: {}",
        "You are a strict grader. Grade the following answer on a 1-10 rubric for correctness, completeness and clarity, and justify every point you deduct.\nTask: {} \nCandidate answer: {}",
        "Reconstruct the full tool-use trajectory an expert agent would follow to complete this task, listing every tool call with its arguments and the observation it returns.\nTask: {} \nEnvironment notes: {}",
        "Solve the following coding problem in Python. First explain your approach in detail, then give the complete solution with comments and the time complexity.\nProblem: {} \nConstraints: {}",
        "Translate the passage below into French, then explain each idiomatic choice you made and any nuance that does not carry over between the two languages.\nPassage: {} \nContext: {}",
        "Answer the multiple-choice question below. Think through each option carefully, explain why each wrong option is wrong, and end with the letter of the correct option.\nQuestion: {} \nOptions: {}",
    ];
    const WORDS: [&str; 24] = [
        "river",
        "market",
        "energy",
        "protein",
        "theorem",
        "contract",
        "orbit",
        "vaccine",
        "ledger",
        "glacier",
        "poetry",
        "circuit",
        "harvest",
        "tariff",
        "enzyme",
        "dialect",
        "satellite",
        "mortgage",
        "fossil",
        "algorithm",
        "cathedral",
        "migration",
        "inflation",
        "neuron",
    ];

    /// `n` random words from a large vocabulary (three syllables of 24:
    /// ~14k distinct words, plus the common words above), so unrelated texts
    /// share little beyond stock words.
    fn fill(rng: &mut rand::rngs::StdRng, n: usize) -> String {
        const SYL: [&str; 24] = [
            "ka", "lo", "mi", "ter", "an", "su", "vel", "ro", "din", "pa", "qui", "es", "bor",
            "li", "nu", "ga", "tas", "re", "om", "fi", "del", "cu", "zan", "ep",
        ];
        (0..n)
            .map(|_| {
                if rng.gen_bool(0.2) {
                    WORDS[rng.gen_range(0..WORDS.len())].to_string()
                } else {
                    (0..3).map(|_| SYL[rng.gen_range(0..SYL.len())]).collect()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn prompt_keys(text: &str) -> Option<[u64; signature::INDEX_KEYS]> {
        let s = signature::signature(text);
        s.is_informative().then(|| s.index_keys())
    }

    fn cluster_policy(tier_rpm: u64) -> Policy {
        let mut p = Policy::single_tier(tier(tier_rpm, 10, 10_000_000, 10_000_000, 100));
        let c = crate::config::parse(
            std::path::Path::new("t.toml"),
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n\
             [cluster.budget]\nrequests_per_minute = 120\nburst_requests = 30\n\
             input_tokens_per_minute = 100000000\noutput_tokens_per_minute = 100000000\nmax_concurrent = 1000\n",
        )
        .unwrap();
        p.cluster = c.policy().cluster;
        p
    }

    struct Sim {
        engine: Engine,
        served: u64,
        throttled_by_cluster: u64,
        throttled_by_account: u64,
    }

    impl Sim {
        fn send(&mut self, o: &Observation, now: Nanos) -> Decision {
            let d = self.engine.decide(o, now);
            match &d.verdict {
                Verdict::Allow(t)
                | Verdict::Slow { ticket: t, .. }
                | Verdict::Degrade { ticket: t, .. } => {
                    self.served += 1;
                    self.engine.settle(
                        t,
                        Usage {
                            input_tokens: None,
                            output_tokens: 200,
                        },
                        now,
                    );
                }
                Verdict::Throttle(h) if h.scope == Scope::Cluster => self.throttled_by_cluster += 1,
                Verdict::Throttle(_) => self.throttled_by_account += 1,
                Verdict::Block { .. } => panic!("nothing is blocked in these tests"),
            }
            d
        }
    }

    fn h(kind: AttrKind, v: &str) -> Option<u64> {
        Some(attr_hash(kind, v.as_bytes()))
    }

    /// One hydra request: the account's template (of 6) filled afresh, one
    /// operator's request shape (model, `max_tokens` pinned), the given
    /// client stack and network.
    fn hydra_request(
        rng: &mut rand::rngs::StdRng,
        account: u64,
        (ja4, http, ip_prefix): (Option<u64>, Option<u64>, Option<u64>),
    ) -> Observation {
        let t = TEMPLATES[(account % 6) as usize];
        let text = t
            .replacen("{}", &fill(rng, 25), 1)
            .replacen("{}", &fill(rng, 15), 1);
        Observation {
            account: AccountId(account),
            anonymous: false,
            input_tokens: 120,
            attrs: ObservedAttrs {
                ja4,
                http,
                h2: None,
                ip_prefix,
                asn: None,
                prompt: prompt_keys(&text),
            },
            request: RequestFacts {
                model: Some("claude-sonnet-4-5".into()),
                max_output_tokens: Some(64_000),
                ..Default::default()
            },
            account_age: None,
        }
    }

    /// 400 accounts, one JA4, 8 IPs in two /24s, 6 templates; each account
    /// sends 2 requests a minute (its tier allows 60): together 800/min.
    /// Three replicas that decide on their applied view (`assess_view`)
    /// and apply every replica's observations in one order at one time
    /// (the shared stream) link the hydra into one cluster with one id;
    /// deciding on the view changes none of the linking state.
    #[test]
    fn replicas_applying_one_stream_converge_on_one_cluster_id() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let replicas: Vec<Engine> = (0..3).map(|_| Engine::new(cluster_policy(60))).collect();
        let viewer = Engine::new(cluster_policy(60));
        let ja4 = h(AttrKind::Ja4, "t13d1516h2_8daaf6152771_e5627efa2ab1");
        let minute = 60 * SECOND;
        let start = 1_700_000_000 * SECOND;
        let mut stream: Vec<(Observation, Nanos)> = Vec::new();
        for n in 0..3000u64 {
            let now = start + n * minute / 800;
            let account = 10_000 + n % 120;
            let net = h(AttrKind::IpPrefix, "203.0.113.0/24");
            let o = hydra_request(&mut rng, account, (ja4, None, net));
            // The replica that receives it decides on its view; the stream
            // (one entry behind) is applied everywhere.
            let r = &replicas[(n % 3) as usize];
            let _ = r.assess_view(&o, now);
            let _ = viewer.assess_view(&o, now);
            if let Some((prev, t)) = stream.last() {
                for e in &replicas {
                    e.apply(prev, *t + SECOND / 1000);
                }
            }
            stream.push((o, now));
        }
        let ids: Vec<_> = replicas
            .iter()
            .map(|e| e.cluster_of(AccountId(10_000)).expect("clustered"))
            .collect();
        assert!(ids[0].members >= 100, "{:?}", ids[0]);
        assert!(
            ids.iter()
                .all(|c| c.id == ids[0].id && c.members == ids[0].members),
            "{ids:?}"
        );
        assert!(viewer.clusters(10).is_empty(), "a view changed the linker");
    }

    /// Two replicas that linked alone during an outage (each half of a
    /// hydra) hold different clusters; once each forgets its view and
    /// replays the stream — which now holds the outage's observations too
    /// — both hold exactly what an engine that only applied the stream
    /// holds: one cluster, one id.
    #[test]
    fn replicas_that_linked_alone_converge_after_reset_and_replay() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let replicas: Vec<Engine> = (0..2).map(|_| Engine::new(cluster_policy(60))).collect();
        let ja4 = h(AttrKind::Ja4, "t13d1516h2_8daaf6152771_e5627efa2ab1");
        let net = h(AttrKind::IpPrefix, "203.0.113.0/24");
        let start = 1_700_000_000 * SECOND;
        let step = 60 * SECOND / 800;
        let mut stream: Vec<(Observation, Nanos)> = Vec::new();
        // Before the outage: honest-looking traffic of other accounts.
        for n in 0..200u64 {
            let o = hydra_request(&mut rng, 50_000 + n, (None, None, None));
            let now = start + n * step;
            for e in &replicas {
                e.apply(&o, now);
            }
            stream.push((o, now));
        }
        // The outage: each replica links its half of the hydra alone.
        let mut held: Vec<Observation> = Vec::new();
        for n in 200..1400u64 {
            let o = hydra_request(&mut rng, 10_000 + n % 40, (ja4, None, net));
            let _ = replicas[(n % 40 % 2) as usize].assess(&o, start + n * step);
            held.push(o);
        }
        let a = replicas[0]
            .cluster_of(AccountId(10_000))
            .expect("clustered");
        let b = replicas[1]
            .cluster_of(AccountId(10_001))
            .expect("clustered");
        assert_ne!(a.id, b.id, "the outage did not split the view");
        // Back: the held observations are appended (at the return's time),
        // every replica forgets its view and replays the stream.
        let back = start + 1400 * step;
        for (k, o) in held.into_iter().enumerate() {
            stream.push((o, back + k as u64 * SECOND / 1000));
        }
        let only_stream = Engine::new(cluster_policy(60));
        for e in replicas.iter().chain([&only_stream]) {
            e.reset_view();
            for (o, t) in &stream {
                e.apply(o, *t);
            }
        }
        let want = only_stream
            .cluster_of(AccountId(10_000))
            .expect("clustered");
        assert!(want.members >= 40, "{want:?}");
        for e in &replicas {
            for acc in [10_000, 10_001] {
                let got = e.cluster_of(AccountId(acc)).expect("clustered");
                assert_eq!((got.id, got.members), (want.id, want.members));
            }
        }
    }

    #[test]
    fn hydra_becomes_one_cluster_and_is_held_to_the_cluster_budget() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut sim = Sim {
            engine: Engine::new(cluster_policy(60)),
            served: 0,
            throttled_by_cluster: 0,
            throttled_by_account: 0,
        };
        let ja4 = h(AttrKind::Ja4, "t13d1516h2_8daaf6152771_e5627efa2ab1");
        let prefixes = [
            h(AttrKind::IpPrefix, "203.0.113.0/24"),
            h(AttrKind::IpPrefix, "198.51.100.0/24"),
        ];
        // Requests spread evenly: 800 per simulated minute for 20 minutes.
        let minute = 60 * SECOND;
        let start = 100 * minute;
        let total = 800 * 20;
        let mut clustered_at = None;
        let mut served_after = 0u64;
        let mut first_enforced: Option<Nanos> = None;
        for n in 0..total {
            let now = start + n as u64 * minute / 800 + rng.gen_range(0..SECOND / 10);
            let account = 10_000 + (n % 400) as u64;
            let http = h(AttrKind::Http, "h1_PO_11_c0r0l0_n08_5b1a6f0e9c2d");
            let net = prefixes[(account % 8 / 4) as usize];
            let o = hydra_request(&mut rng, account, (ja4, http, net));
            let d = sim.send(&o, now);
            if let Some(c) = d.cluster {
                if c.members >= 390 && clustered_at.is_none() {
                    clustered_at = Some(now - start);
                }
            }
            if d.cluster_enforced && first_enforced.is_none() {
                first_enforced = Some(now);
            }
            if now >= start + 5 * minute && d.verdict.ticket().is_some() {
                served_after += 1;
            }
        }
        let clustered_at = clustered_at.expect("the hydra never became one cluster");
        println!(
            "hydra: {} s to one cluster of >=390; first cluster limit at {} s",
            clustered_at / SECOND,
            (first_enforced.unwrap() - start) / SECOND
        );
        assert!(
            clustered_at <= 5 * minute,
            "clustered after {} s",
            clustered_at / SECOND
        );
        let c = sim.engine.cluster_of(AccountId(10_000)).unwrap();
        assert_eq!(c.strength, Strength::Strong);
        assert!(c.members >= 390, "{c:?}");
        // Every account stayed under its own limit; only the cluster refused.
        assert_eq!(sim.throttled_by_account, 0);
        assert!(sim.throttled_by_cluster > 0);
        // Minutes 5..20: the cluster budget is 120 × min(4, 1 + 0.25 × √400) =
        // 480/min plus a burst of 120. Tolerance: one extra minute's worth for
        // requests admitted just before each 429's retry point and members that
        // join late (each member's own first requests).
        let budget = 480 * 15 + 120;
        println!(
            "hydra: served {served_after} in minutes 5-20 (budget {budget}, offered {})",
            800 * 15
        );
        assert!(
            served_after <= budget + 480,
            "served {served_after}, budget {budget}"
        );
        assert!(
            served_after >= budget * 9 / 10,
            "the cluster budget was not used: {served_after}"
        );
    }

    /// 50 accounts behind one NAT with one SDK fingerprint and unrelated
    /// prompts: at most a weak link, never limited as one actor.
    #[test]
    fn corporate_nat_is_not_limited_as_one_actor() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut sim = Sim {
            engine: Engine::new(cluster_policy(60)),
            served: 0,
            throttled_by_cluster: 0,
            throttled_by_account: 0,
        };
        let ja4 = h(AttrKind::Ja4, "t13d1312h2_f57a46bbacb6_ab7e3b40a677");
        let start = 100 * 60 * SECOND;
        for n in 0..50 * 40u64 {
            let now = start + n * SECOND / 2;
            let account = 500 + n % 50;
            // Unrelated prompts: random sentences of varied shape.
            let words = rng.gen_range(10..60);
            let text = format!("{} {}?", fill(&mut rng, words), fill(&mut rng, 3));
            let o = Observation {
                account: AccountId(account),
                anonymous: false,
                input_tokens: 50,
                attrs: ObservedAttrs {
                    ja4,
                    http: h(AttrKind::Http, "h1_PO_11_c0r0l0_n09_aaaaaaaaaaaa"),
                    h2: None,
                    ip_prefix: h(AttrKind::IpPrefix, "192.0.2.0/24"),
                    asn: None,
                    prompt: prompt_keys(&text),
                },
                request: Default::default(),
                account_age: None,
            };
            let d = sim.send(&o, now);
            if let Some(c) = d.cluster {
                assert_eq!(c.strength, Strength::Weak, "NAT linked {:?}", c);
                assert!(!d.cluster_enforced);
            }
        }
        assert_eq!(sim.throttled_by_cluster, 0);
    }

    /// The link index's spill blocks freed since its last compaction are given back by the sweep: inline where
    /// the engine sweeps on its requests (replay, simulation), and in steps the owner takes where it sweeps outside
    /// (the proxy, from its housekeeping thread), the linker unlocked between them.
    #[test]
    fn the_link_index_gives_back_freed_spill_blocks_in_steps_when_maintained_outside() {
        for outside in [false, true] {
            let engine = Engine::new(cluster_policy(1_000));
            if outside {
                engine.maintain_outside();
            }
            let start = 100 * 60 * SECOND;
            // Each network's accounts send one template of their own: linked by network+template.
            let mut rng = rand::rngs::StdRng::seed_from_u64(5);
            let prompts: Vec<_> = (0..3_000)
                .map(|_| prompt_keys(&fill(&mut rng, 40)))
                .collect();
            let mut n = 0;
            let mut send = |account: u64, network: u64| {
                n += 1;
                let o = Observation {
                    account: AccountId(account),
                    anonymous: false,
                    input_tokens: 50,
                    attrs: ObservedAttrs {
                        ja4: None,
                        http: None,
                        h2: None,
                        ip_prefix: h(AttrKind::IpPrefix, &format!("10.{network}.0/24")),
                        asn: None,
                        prompt: prompts[network as usize],
                    },
                    request: Default::default(),
                    account_age: None,
                };
                let now = start + n * SECOND / 1_000;
                if let Some(t) = engine.decide(&o, now).verdict.into_ticket() {
                    engine.settle(&t, Usage::default(), now);
                }
                now
            };
            // Three accounts on each of 3 000 networks: each network's list spills two entries, into a block.
            for network in 0..3_000u64 {
                for a in 0..3 {
                    send(network * 100 + a, network);
                }
            }
            // Six more on every other network: those lists grow long, and their blocks are free.
            let mut now = 0;
            for network in (0..3_000u64).step_by(2) {
                for a in 3..9 {
                    now = send(network * 100 + a, network);
                }
            }
            let bytes = || engine.link_stats().expect("linking is on").approx_bytes;
            let before = bytes();
            engine.maintain(now);
            let mut steps = 0;
            if outside {
                assert!(bytes() >= before, "given back before any step");
                while engine.compact_links_step().is_some_and(|s| s.more) {
                    steps += 1;
                    assert!(steps < 1_000, "the compaction does not end");
                }
                assert!(
                    engine.compact_links_step().is_none(),
                    "a step after the end"
                );
            }
            assert!(
                bytes() + 1_500 * 2 * 16 <= before,
                "outside: {outside}, {steps} steps: {before} B before, {} B after",
                bytes()
            );
        }
    }

    /// 300 ordinary accounts with diverse clients, networks and prompts.
    #[test]
    fn ordinary_accounts_form_no_cluster() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let mut sim = Sim {
            engine: Engine::new(cluster_policy(60)),
            served: 0,
            throttled_by_cluster: 0,
            throttled_by_account: 0,
        };
        let start = 100 * 60 * SECOND;
        for n in 0..300 * 10u64 {
            let now = start + n * SECOND / 5;
            let account = 9_000 + n % 300;
            let words = rng.gen_range(8..80);
            let text = fill(&mut rng, words);
            let o = Observation {
                account: AccountId(account),
                anonymous: false,
                input_tokens: 50,
                attrs: ObservedAttrs {
                    ja4: h(AttrKind::Ja4, &format!("ja4-{}", account % 20)),
                    http: h(AttrKind::Http, &format!("http-{}", account % 7)),
                    h2: None,
                    ip_prefix: h(
                        AttrKind::IpPrefix,
                        &format!("10.{}.{}.0/24", account % 251, account / 251),
                    ),
                    asn: None,
                    prompt: prompt_keys(&text),
                },
                request: Default::default(),
                account_age: None,
            };
            let d = sim.send(&o, now);
            assert!(
                d.cluster.is_none(),
                "ordinary account linked: {:?}",
                d.cluster
            );
        }
        assert_eq!(sim.throttled_by_cluster, 0);
    }

    /// The hydra stops; two generations later its cluster is gone and its
    /// members are back to their own budgets only.
    #[test]
    fn links_expire_and_the_cluster_dissolves() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let mut sim = Sim {
            engine: Engine::new(cluster_policy(60)),
            served: 0,
            throttled_by_cluster: 0,
            throttled_by_account: 0,
        };
        let ja4 = h(AttrKind::Ja4, "t13d1516h2_8daaf6152771_e5627efa2ab1");
        let start = 100 * 60 * SECOND;
        let obs = |rng: &mut rand::rngs::StdRng, account: u64| {
            let t = TEMPLATES[(account % 2) as usize];
            let text = t
                .replacen("{}", &fill(rng, 25), 1)
                .replacen("{}", &fill(rng, 15), 1);
            Observation {
                account: AccountId(account),
                anonymous: false,
                input_tokens: 100,
                attrs: ObservedAttrs {
                    ja4,
                    http: None,
                    h2: None,
                    ip_prefix: h(AttrKind::IpPrefix, "203.0.113.0/24"),
                    asn: None,
                    prompt: prompt_keys(&text),
                },
                request: Default::default(),
                account_age: None,
            }
        };
        for n in 0..600u64 {
            let o = obs(&mut rng, 1 + n % 30);
            sim.send(&o, start + n * SECOND / 5);
        }
        let c = sim.engine.cluster_of(AccountId(1)).expect("clustered");
        assert!(c.members >= 25);
        // Silence for longer than two generations (an hour each, as long as
        // the link windows); one lone request from an unrelated account
        // drives the engine's clock.
        let later = start + 130 * 60 * SECOND;
        let mut lone = obs(&mut rng, 99_999);
        lone.attrs = ObservedAttrs::default();
        sim.send(&lone, later);
        assert!(
            sim.engine.cluster_of(AccountId(1)).is_none(),
            "cluster still there"
        );
        let d = sim.send(&obs(&mut rng, 1), later + SECOND);
        assert!(!d.cluster_enforced);
        assert!(d.verdict.ticket().is_some());
    }

    #[test]
    fn cluster_budget_grows_sublinearly_and_is_capped() {
        let p = cluster_policy(60).cluster;
        assert_eq!(p.multiplier(4), 1.5);
        assert_eq!(p.multiplier(100), 3.5);
        assert_eq!(p.multiplier(10_000), 4.0);
        assert_eq!(p.budget(100).requests.per_period(), 420);
        // Ten times the accounts buys far less than ten times the budget.
        assert!(p.budget(1000).requests.per_period() < 2 * p.budget(100).requests.per_period());
    }
}

// ---------------------------------------------------------------- detection

mod detection {
    use super::*;
    use crate::engine::link::AttrKind;
    use crate::engine::score::Level;
    use rand::{Rng, SeedableRng};

    /// Default detection, budgets out of reach (only detection acts).
    fn policy() -> Policy {
        policy_with("")
    }

    /// [`policy`] with `extra` TOML appended.
    fn policy_with(extra: &str) -> Policy {
        let c = crate::config::parse(
            std::path::Path::new("t.toml"),
            &format!(
                "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n\
                 [tiers.default]\nrequests_per_minute = 60\nburst_requests = 60\n\
                 input_tokens_per_minute = 100000000\noutput_tokens_per_minute = 100000000\nmax_concurrent = 100\n\
                 [cluster.budget]\nrequests_per_minute = 100000000\nburst_requests = 100000000\n\
                 input_tokens_per_minute = 100000000000\noutput_tokens_per_minute = 100000000000\nmax_concurrent = 100000\n\
                 {extra}"
            ),
        )
        .unwrap();
        c.policy()
    }

    /// Account `50_000 + a` of a hydra: one chain-of-thought template, max_tokens at the ceiling, one JA4, eight
    /// addresses.
    fn hydra_request(rng: &mut rand::rngs::StdRng, a: u64) -> Req {
        Req {
            account: 50_000 + a,
            text: format!(
                "Imagine and articulate the internal reasoning behind the completed response below, \
                 and write it out step by step. Question: {} Answer: {}",
                words(rng, 20),
                words(rng, 10)
            ),
            max_tokens: 64_000,
            ja4: "t13d1516h2_8daaf6152771_e5627efa2ab1",
            prefix: format!("203.0.113.{}/32", a % 8),
        }
    }

    fn words(rng: &mut rand::rngs::StdRng, n: usize) -> String {
        const SYL: [&str; 24] = [
            "ka", "lo", "mi", "ter", "an", "su", "vel", "ro", "din", "pa", "qui", "es", "bor",
            "li", "nu", "ga", "tas", "re", "om", "fi", "del", "cu", "zan", "ep",
        ];
        (0..n)
            .map(|_| {
                (0..3)
                    .map(|_| SYL[rng.gen_range(0..SYL.len())])
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    struct Req {
        account: u64,
        text: String,
        max_tokens: u32,
        ja4: &'static str,
        prefix: String,
    }

    /// The default phrase lists (the policy's), as the prompt step matches them.
    fn phrases() -> &'static crate::prompt::PhraseMatcher {
        static M: std::sync::OnceLock<crate::prompt::PhraseMatcher> = std::sync::OnceLock::new();
        M.get_or_init(|| crate::prompt::PhraseMatcher::with_defaults().unwrap())
    }

    fn observe(r: &Req) -> Observation {
        let sig = signature::signature(&r.text);
        let h = |k, v: &str| Some(attr_hash(k, v.as_bytes()));
        Observation {
            account: AccountId(r.account),
            anonymous: false,
            input_tokens: (r.text.len() / 4) as u64,
            attrs: ObservedAttrs {
                ja4: h(AttrKind::Ja4, r.ja4),
                http: None,
                h2: None,
                ip_prefix: h(AttrKind::IpPrefix, &r.prefix),
                asn: None,
                prompt: sig.is_informative().then(|| sig.index_keys()),
            },
            request: RequestFacts {
                phrase_hits: phrases().scan(&r.text),
                max_output_tokens: Some(r.max_tokens),
                model: Some("claude-sonnet-4-5".into()),
                fill_key: Some(attr_hash(AttrKind::Prompt, r.text.as_bytes())),
                ..Default::default()
            },
            // Every account here is opened when it first sends (the engine's
            // own tenure is tested on its own).
            account_age: Some(0),
        }
    }

    fn run(e: &Engine, r: &Req, now: Nanos, output: u64) -> Decision {
        let d = e.decide(&observe(r), now);
        if let Some(t) = d.verdict.ticket() {
            e.settle(
                t,
                Usage {
                    input_tokens: None,
                    output_tokens: output,
                },
                now,
            );
        }
        d
    }

    const MIN: Nanos = 60 * SECOND;

    /// Over capacity, a refused new account leaves no trace: it is in no
    /// cluster and adds nothing to any cluster's size.
    #[test]
    fn refused_new_accounts_are_never_linked() {
        let mut p = policy();
        p.max_tracked = 40;
        p.new_accounts_at_capacity = Rate::per_minute(5, 5);
        let e = Engine::new(p);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let t0 = 1000 * MIN;
        let (mut admitted, mut refused) = (Vec::new(), Vec::new());
        for a in 0..300u64 {
            let r = Req {
                account: 70_000 + a,
                text: format!(
                    "Explain your reasoning step by step before answering. Question: {}",
                    words(&mut rng, 20)
                ),
                max_tokens: 64_000,
                ja4: "t13d1516h2_8daaf6152771_e5627efa2ab1",
                prefix: "198.51.100.0/24".into(),
            };
            let d = run(&e, &r, t0 + a * (SECOND / 10), 100);
            match d.verdict {
                Verdict::Throttle(h) if h.kind == LimitKind::NewAccounts => refused.push(a),
                _ => admitted.push(a),
            }
        }
        assert!(!refused.is_empty(), "nothing refused");
        for a in &refused {
            assert!(
                e.cluster_of(AccountId(70_000 + a)).is_none(),
                "refused account {a} was linked"
            );
        }
        let linked = admitted
            .iter()
            .filter(|a| e.cluster_of(AccountId(70_000 + **a)).is_some())
            .count();
        assert!(
            linked > 0,
            "the admitted accounts form no cluster: the check proves nothing"
        );
        assert!(e.tracked_accounts() <= 80, "{}", e.tracked_accounts());
    }

    /// A 400-account hydra eliciting chain of thought with a shared
    /// template, max_tokens pinned at the ceiling, all members firing in the
    /// same seconds, climbs to Block; after it stops, it decays to Allow.
    #[test]
    fn hydra_escalates_to_block_then_decays() {
        let e = Engine::new(policy());
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        let t0 = 1000 * MIN;
        let mut first: std::collections::BTreeMap<&str, Nanos> = Default::default();
        for minute in 0..20u64 {
            for a in 0..400u64 {
                let now = t0 + minute * MIN + a * (SECOND / 400);
                let d = run(&e, &hydra_request(&mut rng, a), now, 8_000);
                let det = d.detection.expect("detection on");
                for (lvl, name) in [
                    (Level::Slow, "slow"),
                    (Level::Degrade, "degrade"),
                    (Level::Throttle, "throttle"),
                    (Level::Block, "block"),
                ] {
                    if det.enforced >= lvl {
                        first.entry(name).or_insert(now - t0);
                    }
                }
            }
        }
        println!(
            "hydra time to action (s): {:?}",
            first
                .iter()
                .map(|(k, v)| (*k, v / SECOND))
                .collect::<Vec<_>>()
        );
        for name in ["slow", "degrade", "throttle", "block"] {
            let t = first
                .get(name)
                .copied()
                .unwrap_or_else(|| panic!("never reached {name}"));
            assert!(t <= 10 * MIN, "{name} after {} s", t / SECOND);
        }
        // The hydra stops; an hour later its members are back to Allow.
        let later = t0 + 80 * MIN;
        let r = Req {
            account: 50_000,
            text: "A single ordinary question about the weather in Lisbon next week, please answer briefly".into(),
            max_tokens: 300,
            ja4: "t13d1516h2_8daaf6152771_e5627efa2ab1",
            prefix: "203.0.113.0/32".into(),
        };
        let d = run(&e, &r, later, 100);
        assert_eq!(d.detection.unwrap().level, Level::Allow, "no decay");
    }

    /// Degrade is not where a campaign settles: a cluster held at Degrade
    /// (Throttle and Block out of the score's reach here) for
    /// `[detection.block] cluster_after_degrade_ms` is blocked, as a
    /// cluster, with the block marked as sustained; without the setting it
    /// stays degraded.
    #[test]
    fn a_cluster_held_at_degrade_is_blocked_after_the_set_time() {
        let policy_with = |after: &str| {
            policy_with(&format!(
                "[detection.thresholds]\nthrottle_enter = 0.999\nthrottle_exit = 0.998\n\
                 block_enter = 1.0\nblock_exit = 0.999\n[detection.block]\n{after}\n"
            ))
        };
        let hydra = |e: &Engine| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(21);
            let t0 = 1000 * MIN;
            let (mut degraded, mut blocked) = (None, None);
            let mut sustained = 0;
            for minute in 0..30u64 {
                for a in 0..200u64 {
                    let now = t0 + minute * MIN + a * (SECOND / 200);
                    let d = run(e, &hydra_request(&mut rng, a), now, 8_000);
                    let det = d.detection.expect("detection on");
                    if det.enforced == Level::Degrade {
                        degraded.get_or_insert(now - t0);
                    }
                    if let Verdict::Block { scope, .. } = d.verdict {
                        assert_eq!(scope, Scope::Cluster);
                        blocked.get_or_insert(now - t0);
                        sustained += u32::from(det.sustained);
                    }
                }
            }
            (degraded, blocked, sustained)
        };
        let (degraded, blocked, sustained) = hydra(&Engine::new(policy_with(
            "cluster_after_degrade_ms = 300000",
        )));
        let degraded = degraded.expect("the hydra was never degraded");
        let blocked = blocked.expect("a cluster held at Degrade was never blocked");
        assert!(
            blocked >= degraded + 5 * MIN && blocked <= degraded + 7 * MIN,
            "degraded at {} s, blocked at {} s",
            degraded / SECOND,
            blocked / SECOND
        );
        assert!(sustained > 0, "blocks not marked as sustained");
        let (degraded, blocked, _) = hydra(&Engine::new(policy_with("")));
        assert!(degraded.is_some(), "the hydra was never degraded");
        assert_eq!(blocked, None, "blocked with cluster_after_degrade_ms off");
    }

    /// Contamination: honest accounts linked into a campaign's cluster (one
    /// client stack, one network, one template) must not lower what the
    /// campaign's members get. Run the campaign alone, then the same
    /// campaign with twice as many honest members in its cluster: every
    /// campaign request is at the same or a higher level, with the same or a
    /// higher score.
    #[test]
    fn honest_members_do_not_dilute_a_campaigns_score() {
        const TEMPLATE: &str =
            "Summarise the following support ticket in three bullet points for the \
                                weekly report, keeping the customer's own words where they matter.";
        let ja4 = "t13d1516h2_8daaf6152771_e5627efa2ab1";
        let t0 = 1000 * MIN;
        let run_with = |honest: u64| {
            let e = Engine::new(policy());
            let mut campaign_rng = rand::rngs::StdRng::seed_from_u64(71);
            let mut honest_rng = rand::rngs::StdRng::seed_from_u64(72);
            let mut got = Vec::new();
            for minute in 0..20u64 {
                for a in 0..30 + honest {
                    let now = t0 + minute * MIN + a * SECOND;
                    let campaign = a < 30;
                    let r = if campaign {
                        Req {
                            account: 70_000 + a,
                            text: format!(
                                "{TEMPLATE}\nTicket: {}\nWrite out your reasoning step by step, \
                                 every intermediate step.",
                                words(&mut campaign_rng, 25)
                            ),
                            max_tokens: 64_000,
                            ja4,
                            prefix: "203.0.113.0/24".into(),
                        }
                    } else {
                        Req {
                            account: 80_000 + a,
                            text: format!("{TEMPLATE}\nTicket: {}", words(&mut honest_rng, 25)),
                            max_tokens: 300,
                            ja4,
                            prefix: "203.0.113.0/24".into(),
                        }
                    };
                    let d = run(&e, &r, now, if campaign { 8_000 } else { 150 });
                    let det = d.detection.expect("detection on");
                    if campaign {
                        got.push((det.level, det.score.value));
                    } else if minute == 19 {
                        assert!(!det.in_cluster_core, "an honest account in the core");
                        let c = d.cluster.expect("honest members are linked in");
                        assert!(c.members as u64 >= 30 + honest / 2, "{c:?}");
                    }
                }
            }
            got
        };
        let alone = run_with(0);
        let diluted = run_with(60);
        assert_eq!(alone.len(), diluted.len());
        assert!(alone.iter().any(|(l, _)| *l >= Level::Degrade), "{alone:?}");
        for (i, (a, b)) in alone.iter().zip(&diluted).enumerate() {
            assert!(
                b.0 >= a.0,
                "request {i}: {:?} with honest members, {:?} alone",
                b.0,
                a.0
            );
            assert!(
                b.1 >= a.1 - 1e-4,
                "request {i}: score {} with honest members, {} alone",
                b.1,
                a.1
            );
        }
    }

    /// A cluster is scored on everything its members sent, not only on what
    /// arrived after they were linked: twelve accounts that each asked four
    /// times for chain of thought in prompts of their own, then each sent one
    /// prompt of a shared template, form a cluster whose state holds all
    /// sixty requests. Two such clusters that merge keep both halves' state.
    #[test]
    fn cluster_state_follows_its_members_and_merges() {
        let e = Engine::new(policy());
        let mut rng = rand::rngs::StdRng::seed_from_u64(31);
        let t0 = 1000 * MIN;
        let own = |rng: &mut rand::rngs::StdRng| {
            format!(
                "{} Show your full chain of thought. {}",
                words(rng, 30),
                words(rng, 30)
            )
        };
        let req = |account: u64, text: String| Req {
            account,
            text,
            max_tokens: 16_000,
            ja4: "t13d1516h2_8daaf6152771_e5627efa2ab1",
            prefix: format!("198.18.{}.0/24", account % 200),
        };
        let templates = [
            "Imagine and articulate the internal reasoning behind the completed response below, and \
             write it out step by step before the final answer, one numbered step per line.",
            "You are a strict grader. Grade the following answer on a detailed rubric for correctness, \
             completeness and clarity, and justify every single point you deduct from it.",
        ];
        let mut clusters = Vec::new();
        for (g, template) in templates.iter().enumerate() {
            let base = 90_000 + 100 * g as u64;
            for k in 0..4u64 {
                for a in 0..12u64 {
                    let d = run(
                        &e,
                        &req(base + a, own(&mut rng)),
                        t0 + k * MIN + a * SECOND,
                        2_000,
                    );
                    assert!(d.cluster.is_none(), "unshared prompts linked");
                }
            }
            let mut last = None;
            for a in 0..12u64 {
                let text = format!("{template}\nQuestion: {}", words(&mut rng, 15));
                let at = t0 + 5 * MIN + a * SECOND;
                last = run(&e, &req(base + a, text), at, 2_000).cluster;
                if a == 1 {
                    // A pair is too small to be scored and holds no behaviour state.
                    let pair = e.cluster_of(AccountId(base)).expect("the first two linked");
                    assert_eq!(pair.members, 2);
                    assert!(
                        e.cluster_requests(pair.id, at).is_none(),
                        "a pair holds state"
                    );
                }
            }
            let c = last.expect("the template linked them");
            assert_eq!(c.members, 12);
            let now = t0 + 5 * MIN + 12 * SECOND;
            let requests = e.cluster_requests(c.id, now).expect("scored");
            // All 60: 48 earlier requests, the first two members' template
            // requests (sent while the pair was too small to score, taken
            // with their histories when the third member made it large
            // enough) and the 10 the cluster observed itself, decayed for up
            // to five minutes (half-life one hour). Linked requests alone
            // would be 10; a pair's state taken when it formed left out the
            // second member's template request (57.0).
            assert!(
                requests > 57.5 && requests <= 60.0,
                "cluster of {} holds {} requests",
                c.members,
                requests
            );
            clusters.push((c, requests));
        }
        // A member of the first cluster sends the second's template: one
        // cluster, holding both states.
        let now = t0 + 6 * MIN;
        let text = format!("{}\nQuestion: {}", templates[1], words(&mut rng, 15));
        let merged = run(&e, &req(90_000, text), now, 2_000)
            .cluster
            .expect("linked");
        assert_eq!(merged.members, 24);
        let gone = clusters
            .iter()
            .map(|(c, _)| c.id)
            .find(|&id| id != merged.id)
            .expect("two ids");
        assert!(
            e.cluster_score(gone, now).is_none(),
            "absorbed state left behind"
        );
        let requests = e.cluster_requests(merged.id, now).expect("scored");
        let both: f32 = clusters.iter().map(|(_, n)| n).sum();
        // Both states (decayed by up to a minute) and the merging request.
        assert!(
            requests > 0.98 * both + 1.0 && requests <= both + 1.0,
            "merged cluster holds {requests} requests, the two held {both}"
        );
    }

    /// Accounts linked while their cluster was too weak to be scored bring
    /// their history when a scored cluster first sees them: here two accounts
    /// share a client and a network (a weak link), each sends five prompts of
    /// its own, then a shared template makes the link medium and the pair is
    /// scored — on all twelve requests, not only the two after the template.
    #[test]
    fn history_comes_along_when_a_weak_cluster_becomes_scored() {
        let c = crate::config::parse(
            std::path::Path::new("t.toml"),
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n\
             [cluster]\nmin_members = 2\nmin_strength = \"strong\"\nscore_min_strength = \"medium\"\n\
             [[cluster.link]]\nname = \"client+network\"\nattributes = [\"ja4\", \"ip_prefix\"]\n\
             strength = \"weak\"\nwindow_ms = 600000\n\
             [[cluster.link]]\nname = \"template\"\nattributes = [\"prompt\", \"shape\"]\n\
             strength = \"medium\"\nwindow_ms = 600000\n",
        )
        .unwrap();
        let e = Engine::new(c.policy());
        let mut rng = rand::rngs::StdRng::seed_from_u64(61);
        let t0 = 1000 * MIN;
        let req = |account: u64, text: String| Req {
            account,
            text,
            max_tokens: 4_000,
            ja4: "t13d1516h2_8daaf6152771_e5627efa2ab1",
            prefix: "198.51.100.0/24".into(),
        };
        for k in 0..5u64 {
            for a in 0..2u64 {
                let d = run(
                    &e,
                    &req(98_000 + a, words(&mut rng, 40)),
                    t0 + k * MIN + a * SECOND,
                    500,
                );
                if k > 0 || a > 0 {
                    let c = d.cluster.expect("client and network link them");
                    assert_eq!(c.strength, link::Strength::Weak);
                }
            }
        }
        let template =
            "Summarise the following support ticket in three bullet points for the weekly \
                        report, keeping the customer's own words where they matter.";
        let mut last = None;
        for a in 0..2u64 {
            let text = format!("{template}\nTicket: {}", words(&mut rng, 15));
            last = run(&e, &req(98_000 + a, text), t0 + 6 * MIN + a * SECOND, 500).cluster;
        }
        let c = last.expect("linked");
        assert_eq!(c.strength, link::Strength::Medium);
        // The first account's next request: it is first seen by the scored
        // cluster now.
        let now = t0 + 7 * MIN;
        run(&e, &req(98_000, words(&mut rng, 40)), now, 500);
        let requests = e.cluster_requests(c.id, now).expect("scored");
        assert!(
            requests > 12.0 && requests <= 13.0,
            "the scored pair holds {requests} requests"
        );
    }

    /// What a response produced counts toward its cluster's output ratio
    /// whether or not the cluster shares a budget (here it cannot: budgets
    /// need a strong link, the template link is medium).
    #[test]
    fn outputs_settle_in_a_scored_cluster_without_a_shared_budget() {
        let c = crate::config::parse(
            std::path::Path::new("t.toml"),
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n\
             [cluster]\nmin_strength = \"strong\"\nscore_min_strength = \"medium\"\n",
        )
        .unwrap();
        let e = Engine::new(c.policy());
        let mut rng = rand::rngs::StdRng::seed_from_u64(41);
        let t0 = 1000 * MIN;
        let (mut last, mut input) = (None, 0u64);
        for a in 0..6u64 {
            let r = Req {
                account: 95_000 + a,
                text: format!(
                    "Summarise the following support ticket in three bullet points for the weekly \
                     report, keeping the customer's own words where they matter.\nTicket: {}",
                    words(&mut rng, 12)
                ),
                max_tokens: 4_000,
                ja4: "t13d1516h2_8daaf6152771_e5627efa2ab1",
                prefix: format!("198.51.{a}.0/24"),
            };
            input = input.max(observe(&r).input_tokens);
            let d = run(&e, &r, t0 + a * SECOND, 50_000);
            assert!(!d.cluster_enforced, "a medium link shared a budget");
            last = d.cluster;
        }
        let c = last.expect("linked");
        let (score, _) = e.cluster_score(c.id, t0 + 6 * SECOND).expect("scored");
        let ratio = score
            .contribution(score::Signal::OutputRatio)
            .expect("output ratio")
            .value;
        // Every request it holds produced 50,000 tokens (the first member's
        // as history, the others settled in the cluster itself).
        let floor = 50_000.0 / input as f32;
        assert!(
            ratio >= floor,
            "outputs not settled in the cluster: ratio {ratio} < {floor}"
        );
    }

    /// Slow's lower concurrency cap (`[detection.slow] max_concurrent`) is
    /// each slowed account's, not its cluster's: a cluster at Slow or above
    /// keeps its shared budget's concurrency, so its members are not squeezed
    /// through the few slots one account gets.
    #[test]
    fn the_slow_concurrency_cap_is_per_account() {
        // Without the cluster yield signal, which takes this campaign (2 000
        // tokens per short prompt, 60 an hour per member) to Block.
        let e = Engine::new(policy_with("[detection.weights]\nyield_per_member = 0.0\n"));
        let mut rng = rand::rngs::StdRng::seed_from_u64(51);
        let t0 = 1000 * MIN;
        let req = |account: u64, rng: &mut rand::rngs::StdRng| {
            Req {
            account,
            text: format!(
                "Imagine and articulate the internal reasoning behind the completed response below, \
                 and write it out step by step before the final answer.\nQuestion: {}",
                words(rng, 20)
            ),
            max_tokens: 64_000,
            ja4: "t13d1516h2_8daaf6152771_e5627efa2ab1",
            prefix: format!("203.0.113.{}/32", account % 8),
        }
        };
        for minute in 0..10u64 {
            for a in 0..40u64 {
                run(
                    &e,
                    &req(97_000 + a, &mut rng),
                    t0 + minute * MIN + a * SECOND,
                    // Answers of middling length: a campaign above Slow and
                    // below Block, where the cap applies.
                    2_000,
                );
            }
        }
        let now = t0 + 10 * MIN;
        // Twelve members at once, none finished: all admitted by the cluster.
        let mut tickets = Vec::new();
        for a in 0..12u64 {
            let d = e.decide(&observe(&req(97_000 + a, &mut rng)), now);
            let det = d.detection.as_ref().expect("detection on");
            assert!(
                det.enforced >= Level::Slow,
                "campaign at {:?}",
                det.enforced
            );
            assert!(det.enforced < Level::Block, "campaign blocked");
            assert!(d.cluster_enforced, "the cluster shares no budget");
            match d.verdict {
                Verdict::Allow(t)
                | Verdict::Slow { ticket: t, .. }
                | Verdict::Degrade { ticket: t, .. } => tickets.push(t),
                other => panic!("member {a} refused: {other:?}"),
            }
        }
        // One account gets two slots.
        let third = e.decide(&observe(&req(97_000, &mut rng)), now);
        let t = e.decide(&observe(&req(97_000, &mut rng)), now);
        let hit = match (&third.verdict, &t.verdict) {
            (
                Verdict::Allow(_) | Verdict::Slow { .. } | Verdict::Degrade { .. },
                Verdict::Throttle(h),
            ) => *h,
            other => panic!("a slowed account's third request in flight: {other:?}"),
        };
        assert_eq!(
            (hit.kind, hit.scope),
            (LimitKind::Concurrency, Scope::Account)
        );
        if let Some(t) = third.verdict.into_ticket() {
            tickets.push(t);
        }
        for t in &tickets {
            e.settle(t, Usage::default(), now + SECOND);
        }
    }

    /// `[cluster] budget_min_level = "slow"`: a cluster linked only by a
    /// shared template shares its budget only once its own behaviour reaches
    /// Slow. Forty users of one honest tool (one template, modest outputs)
    /// are never held to the small cluster budget; forty accounts eliciting
    /// reasoning with `max_tokens` pinned are.
    #[test]
    fn cluster_budgets_wait_for_the_cluster_to_behave_like_a_campaign() {
        let c = crate::config::parse(
            std::path::Path::new("t.toml"),
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n\
             [tiers.default]\nrequests_per_minute = 60\nburst_requests = 60\n\
             input_tokens_per_minute = 100000000\noutput_tokens_per_minute = 100000000\nmax_concurrent = 100\n\
             [cluster]\nbudget_min_level = \"slow\"\n\
             [cluster.budget]\nrequests_per_minute = 10\nburst_requests = 10\n\
             input_tokens_per_minute = 100000000\noutput_tokens_per_minute = 100000000\nmax_concurrent = 1000\n",
        )
        .unwrap();
        let run_population = |template: &str, max_tokens: u32, output: u64, base: u64| {
            let e = Engine::new(c.policy());
            let mut rng = rand::rngs::StdRng::seed_from_u64(base);
            let t0 = 1000 * MIN;
            let (mut enforced, mut throttled) = (0u64, 0u64);
            for minute in 0..30u64 {
                for a in 0..40u64 {
                    // Two requests a minute per account: 80 a minute in all,
                    // well over the cluster budget (10 × 2.6 a minute).
                    for k in 0..2u64 {
                        let now = t0 + minute * MIN + k * 30 * SECOND + a * SECOND / 2;
                        let r = Req {
                            account: base + a,
                            text: format!("{template}\nInput: {}", words(&mut rng, 40)),
                            max_tokens,
                            ja4: "t13d1516h2_8daaf6152771_e5627efa2ab1",
                            prefix: format!("198.51.{a}.0/24"),
                        };
                        let d = run(&e, &r, now, output);
                        enforced += u64::from(d.cluster_enforced);
                        throttled += u64::from(matches!(d.verdict, Verdict::Throttle(_)));
                    }
                }
            }
            (enforced, throttled)
        };
        let honest = run_population(
            "Summarise the following support ticket in three bullet points for the weekly report, \
             keeping the customer's own words where they matter.",
            300,
            120,
            70_000,
        );
        assert_eq!(
            honest,
            (0, 0),
            "honest tool users held to the cluster budget"
        );
        let campaign = run_population(
            "Imagine and articulate the internal reasoning behind the completed response below, \
             and write it out step by step before the final answer.",
            64_000,
            6_000,
            80_000,
        );
        assert!(
            campaign.0 > 0,
            "the campaign's cluster never shared a budget"
        );
        assert!(
            campaign.1 > 0,
            "the campaign was never refused: {campaign:?}"
        );
    }

    /// `[cluster.ignore] prompt_files`: users of one tool whose requests all
    /// start with its system prompt are linked by it — unless the prompt is
    /// ignored.
    #[test]
    fn an_ignored_tool_prompt_does_not_link_its_users() {
        let system = "You are an interactive command line coding agent. You help the user with \
                      software engineering tasks in their repository. Use the available tools to \
                      read files, search the code, run commands and edit files; prefer small, \
                      verifiable steps.";
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tool.txt"), system).unwrap();
        let clustered = |ignore: bool| {
            let text = format!(
                "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n\
                 [cluster.ignore]\nprompt_files = [{}]\n",
                if ignore { "\"tool.txt\"" } else { "" }
            );
            let c = crate::config::parse(&dir.path().join("t.toml"), &text).unwrap();
            let e = Engine::new(c.policy());
            let mut rng = rand::rngs::StdRng::seed_from_u64(3);
            let mut linked = 0;
            for i in 0..600u64 {
                let r = Req {
                    account: 90_000 + i % 60,
                    text: format!("{system}\n\nRepository context:\n{}", words(&mut rng, 80)),
                    max_tokens: 32_000,
                    ja4: "t13d1713h2_5b57614c22b0_06a6a26b8c29",
                    prefix: format!("100.64.{}.0/24", i % 60),
                };
                let d = run(&e, &r, 1000 * MIN + i * SECOND, 1500);
                linked += u64::from(d.cluster.is_some());
            }
            linked
        };
        assert!(clustered(false) > 500, "the shared system prompt links");
        assert_eq!(clustered(true), 0);
    }

    /// Honest populations stay at Allow: chat users, a corporate NAT, a
    /// high-volume batch summariser, an evaluation account.
    #[test]
    fn honest_populations_stay_at_allow() {
        let e = Engine::new(policy());
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let t0 = 1000 * MIN;
        let mut false_actions: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
        let mut note = |pop: &'static str, d: &Decision| {
            let x = false_actions.entry(pop).or_default();
            x.0 += 1;
            if d.detection.as_ref().is_some_and(|d| d.level > Level::Allow) {
                x.1 += 1;
            }
        };
        // Two simulated hours.
        let mut now = t0;
        for step in 0..7200u64 {
            now += SECOND;
            // Chat: 20 users, varied prompts, a request every ~2 minutes each.
            if rng.gen_bool(20.0 / 120.0) {
                let a = rng.gen_range(0..20u64);
                let len = rng.gen_range(5..60);
                let r = Req {
                    account: 1_000 + a,
                    text: words(&mut rng, len),
                    max_tokens: 1024,
                    ja4: ["ja4-chrome", "ja4-safari", "ja4-firefox"][a as usize % 3],
                    prefix: format!("198.51.{}.0/24", a),
                };
                note("chat", &run(&e, &r, now, 400));
            }
            // Corporate NAT: 50 users behind one prefix and one SDK.
            if rng.gen_bool(50.0 / 300.0) {
                let a = rng.gen_range(0..50u64);
                let len = rng.gen_range(10..80);
                let r = Req {
                    account: 2_000 + a,
                    text: words(&mut rng, len),
                    max_tokens: 2048,
                    ja4: "ja4-corp-sdk",
                    prefix: "192.0.2.0/24".into(),
                };
                note("nat", &run(&e, &r, now, 600));
            }
            // Batch summariser: one account, one template, every 4 s, within its tier.
            if step % 4 == 0 {
                let r = Req {
                    account: 3_000,
                    text: format!(
                        "Summarise the following support ticket in three bullet points for the weekly report.\nTicket: {}",
                        words(&mut rng, 60)
                    ),
                    max_tokens: 300,
                    ja4: "ja4-python-batch",
                    prefix: "10.9.9.0/24".into(),
                };
                note("batch", &run(&e, &r, now, 150));
            }
            // Evaluation: templated multiple choice, tiny max_tokens, every 3 s.
            if step % 3 == 0 {
                let r = Req {
                    account: 4_000,
                    text: format!(
                        "Answer with a single letter.\nQuestion: {}\nA) {}\nB) {}\nC) {}\nD) {}",
                        words(&mut rng, 15),
                        words(&mut rng, 3),
                        words(&mut rng, 3),
                        words(&mut rng, 3),
                        words(&mut rng, 3)
                    ),
                    max_tokens: 1,
                    ja4: "ja4-eval-harness",
                    prefix: "10.8.8.0/24".into(),
                };
                note("eval", &run(&e, &r, now, 1));
            }
        }
        println!("false actions (requests, above allow): {false_actions:?}");
        for (pop, (n, bad)) in &false_actions {
            assert!(*n > 100, "{pop}: only {n} requests");
            assert_eq!(*bad, 0, "{pop}: {bad} of {n} requests above allow");
        }
    }

    /// An engine that has just started has not seen the machines an old
    /// account already uses: a team key's other machines (each its own stack
    /// on its own network) count less as churn while the engine starts
    /// watching, in proportion to the watch so far. A new account's machines
    /// are new to it, and an old account's seen after the watch
    /// (`stack_watch`, 30 minutes) count in full.
    #[test]
    fn an_engine_just_started_counts_an_old_accounts_other_machines_less() {
        const JA4: [&str; 4] = [
            "t13d1516h2_8daaf6152771_02713d6af862",
            "t13d1715h2_5b57614c22b0_3d5424432f57",
            "t13d1812h2_e8a523a41297_ef7df7f74e48",
            "t13d1713h2_5b57614c22b0_06a6a26b8c29",
        ];
        let e = Engine::new(policy());
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let t0 = 1000 * MIN;
        let old = 30 * 24 * 60 * MIN;
        // Twelve requests a minute apart from four machines in turn; the
        // account's stack churn after them.
        let mut team = |account: u64, start: Nanos, age: Nanos| {
            for i in 0..12u64 {
                let r = Req {
                    account,
                    text: format!("Summarise this note for the team: {}", words(&mut rng, 30)),
                    max_tokens: 1024,
                    ja4: JA4[(i % 4) as usize],
                    prefix: format!("10.{account}.{}.0/24", i % 4),
                };
                let mut o = observe(&r);
                o.account_age = Some(age);
                let now = start + i * MIN;
                if let Some(t) = e.decide(&o, now).verdict.ticket() {
                    let usage = Usage {
                        input_tokens: None,
                        output_tokens: 300,
                    };
                    e.settle(t, usage, now);
                }
            }
            let (score, _) = e
                .account_score(AccountId(account), start + 12 * MIN)
                .unwrap();
            score
                .contributions
                .iter()
                .find(|c| c.signal == score::Signal::StackChurn)
                .unwrap()
                .value
        };
        let old_at_start = team(1, t0, old);
        let new_at_start = team(2, t0, 0);
        let old_later = team(3, t0 + 40 * MIN, old);
        // Three second clients at 3/4 over twelve requests.
        assert!(new_at_start > 0.15, "{new_at_start}");
        // Seen 1, 2 and 3 minutes into the 30-minute watch: 1/30 to 3/30 of that.
        assert!(
            old_at_start < new_at_start / 8.0,
            "{old_at_start} {new_at_start}"
        );
        assert!(
            (old_later - new_at_start).abs() < 1e-4,
            "{old_later} {new_at_start}"
        );
    }

    /// A stealth campaign: every account its own network, a client stack
    /// rotated per request, prompts paraphrased (no two alike), each account
    /// too slow for its own score to rest on enough requests. What its
    /// accounts share is behaviour: long outputs, the same request shape,
    /// stack churn. Beside it, honest look-alikes of the same size and rate:
    /// users of one app (its system prompt, their own stack each) and a
    /// corporate NAT (one network, one stack). The campaign is scored by its
    /// behaviour cohort and degraded; the look-alikes stay at Allow. With
    /// cohorts off, the campaign's accounts alone never leave Allow.
    ///
    /// A campaign that also moves each account to a new network with every
    /// new stack shows, request by request, what a team's machines show
    /// (a new stack from a new network counts as a second client does), so
    /// less of it is degraded: measured 143 of 180 (the first version of this
    /// test ran that campaign alone and asked for nine in ten).
    #[test]
    fn a_stealth_campaign_is_scored_by_its_behaviour_cohort() {
        const STACKS: [&str; 6] = ["ja4-a", "ja4-b", "ja4-c", "ja4-d", "ja4-e", "ja4-f"];
        const APP: &str =
            "You are a helpful writing assistant inside a note-taking app. Improve the user's \
                           text for clarity and tone without changing its meaning.";
        let t0 = 1000 * MIN;
        let run_with = |cohorts: bool, moving: bool| {
            let mut p = policy();
            if !cohorts {
                if let Some(d) = p.detection.as_mut() {
                    d.cohort_min_raw = 2.0;
                }
            }
            let e = Engine::new(p);
            let mut rng = rand::rngs::StdRng::seed_from_u64(33);
            // (requests, degraded or worse, of which by cohort) per population, last 30 minutes.
            let mut got: std::collections::BTreeMap<&str, (u32, u32, u32)> = Default::default();
            // Sixty minutes; every account sends one request every ten minutes.
            for minute in 0..60u64 {
                // The accounts due this minute, each at a random second, in time order.
                let mut due: Vec<(Nanos, u64)> = (0..60u64)
                    .filter(|a| (minute + a) % 10 == 0)
                    .map(|a| (rng.gen_range(0..60 * SECOND), a))
                    .collect();
                due.sort_unstable();
                for (offset, a) in due {
                    let now = t0 + minute * MIN + offset;
                    let n = words(&mut rng, 40);
                    let reqs = [
                        (
                            "campaign",
                            Req {
                                account: 90_000 + a,
                                text: n.clone(),
                                max_tokens: 32_000,
                                ja4: STACKS[rng.gen_range(0..STACKS.len())],
                                prefix: if moving {
                                    format!("10.{a}.{minute}.0/24")
                                } else {
                                    format!("10.{a}.0.0/24")
                                },
                            },
                            rng.gen_range(3_000..6_000),
                        ),
                        (
                            "app",
                            Req {
                                account: 91_000 + a,
                                text: format!("{APP}\nNote: {}", words(&mut rng, 40)),
                                max_tokens: 4_096,
                                ja4: STACKS[a as usize % STACKS.len()],
                                prefix: format!("198.18.{a}.0/24"),
                            },
                            rng.gen_range(100..1_500),
                        ),
                        (
                            "nat",
                            Req {
                                account: 92_000 + a,
                                text: words(&mut rng, 30),
                                max_tokens: 2_048,
                                ja4: "ja4-corp-sdk",
                                prefix: "192.0.2.0/24".into(),
                            },
                            rng.gen_range(100..2_000),
                        ),
                    ];
                    for (pop, r, output) in reqs {
                        let d = run(&e, &r, now, output);
                        let det = d.detection.expect("detection on");
                        if minute >= 30 {
                            let x = got.entry(pop).or_default();
                            x.0 += 1;
                            if det.enforced >= Level::Degrade {
                                x.1 += 1;
                                x.2 += u32::from(det.by_cohort);
                            }
                        }
                        if pop != "campaign" {
                            assert_eq!(
                                det.level,
                                Level::Allow,
                                "{pop} at minute {minute}: {det:?}"
                            );
                            assert_eq!(det.cohorts, [0; cohort::KEYS], "{pop} in a cohort");
                        }
                    }
                }
            }
            got
        };
        let with = run_with(true, false);
        println!("with cohorts: {with:?}");
        let (n, degraded, by_cohort) = with["campaign"];
        assert!(
            degraded * 10 >= n * 9,
            "campaign degraded {degraded} of {n}"
        );
        assert!(
            by_cohort * 10 >= degraded * 9,
            "{by_cohort} of {degraded} by the cohort"
        );
        let without = run_with(false, false);
        println!("without cohorts: {without:?}");
        assert_eq!(without["campaign"].1, 0, "{without:?}");
        let moving = run_with(true, true);
        println!("moving its network with its stack: {moving:?}");
        let (n, degraded, _) = moving["campaign"];
        assert!(
            degraded * 4 >= n * 3,
            "moving campaign degraded {degraded} of {n}"
        );
    }

    /// An account that sends a request every 20 minutes is idle longer than
    /// `idle_evict` (10 minutes) between requests, and its budget state is
    /// dropped each time. Its behaviour state stays while its requests have
    /// not decayed away, so its evidence builds and its age counts from its
    /// first request; an account quiet for hours is forgotten.
    #[test]
    fn a_slow_accounts_behaviour_outlives_its_idle_budget_state() {
        let e = Engine::new(policy());
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let t0 = 1000 * MIN;
        let req = |rng: &mut rand::rngs::StdRng| Req {
            account: 42_000,
            text: words(rng, 60),
            max_tokens: 4_096,
            ja4: "ja4-sdk",
            prefix: "198.51.100.0/24".into(),
        };
        let mut last = None;
        for k in 0..6u64 {
            let now = t0 + k * 20 * MIN;
            // Maintenance runs between the requests, as the proxy runs it.
            e.maintain(now.saturating_sub(MIN));
            let d = run(&e, &req(&mut rng), now, 300);
            last = d.detection.map(|x| x.score.requests);
        }
        // Six requests, one every 20 minutes, decayed with a one-hour
        // half-life: about 3.3 (1.0 if each had been its first).
        let n = last.expect("detection on");
        assert!(n > 2.5, "decayed requests {n}");
        // Between requests its budget state goes; its behaviour state stays.
        e.maintain(t0 + 5 * 20 * MIN + 15 * MIN);
        assert_eq!((e.tracked_accounts(), e.tracked_behaviour()), (0, 1));
        // Quiet for ten hours: forgotten.
        let later = t0 + 5 * 20 * MIN + 600 * MIN;
        e.maintain(later);
        let d = run(&e, &req(&mut rng), later + MIN, 300);
        let n = d.detection.expect("detection on").score.requests;
        assert!(n < 1.5, "decayed requests after ten idle hours {n}");
    }

    /// Account tenure: after a restart the engine cannot tell a new account
    /// from an old one it has not seen yet, so no account reads younger than
    /// the history it has watched allows (the account-age ramp's far end,
    /// 72 hours, less that history); after that much history a first
    /// request is a new account's. An account whose behaviour state was
    /// dropped keeps its age; an age a trusted auth front states wins; and
    /// beyond `max_tenure` the least recently seen are forgotten and the
    /// history is taken to start after them.
    #[test]
    fn an_accounts_age_is_what_the_history_allows_and_survives_its_state() {
        const HOUR: Nanos = 60 * MIN;
        let mut p = policy();
        p.max_tenure = 10;
        let e = Engine::new(p);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let req = |account: u64, rng: &mut rand::rngs::StdRng| Req {
            account,
            text: words(rng, 40),
            max_tokens: 4_096,
            ja4: "ja4-sdk",
            prefix: "192.0.2.0/24".into(),
        };
        let age_hours = |account: u64, now: Nanos| {
            let (s, _) = e.account_score(AccountId(account), now).expect("scored");
            s.contribution(score::Signal::AccountAge)
                .map(|c| c.value)
                .expect("account age applies")
        };
        // The engine's own tenure: no age stated.
        let run = |e: &Engine, r: &Req, now: Nanos, output: u64| {
            let mut o = observe(r);
            o.account_age = None;
            let d = e.decide(&o, now);
            if let Some(t) = d.verdict.ticket() {
                let usage = Usage {
                    input_tokens: None,
                    output_tokens: output,
                };
                e.settle(t, usage, now);
            }
        };
        let assert_age = |account: u64, now: Nanos, hours: f32, within: f32| {
            let got = age_hours(account, now);
            assert!(
                (got - hours).abs() < within,
                "account {account}: {got} hours"
            );
        };
        let t0 = 1000 * MIN;
        run(&e, &req(1, &mut rng), t0, 100);
        // Seen as the history starts: as old as the 72-hour horizon.
        assert_age(1, t0, 72.0, 0.1);
        // Ten hours in, a first request still reads 62 hours old at least.
        let t10 = t0 + 10 * HOUR;
        run(&e, &req(2, &mut rng), t10, 100);
        assert_age(2, t10, 62.0, 0.1);
        // Three days in, a first request is a new account's.
        let t80 = t0 + 80 * HOUR;
        run(&e, &req(3, &mut rng), t80, 100);
        assert!(age_hours(3, t80) < 0.1, "{}", age_hours(3, t80));
        // Account 1 comes back after 80 hours: its state went, its age did not.
        e.maintain(t80);
        assert!(e.account_score(AccountId(1), t80).is_none());
        run(&e, &req(1, &mut rng), t80 + MIN, 100);
        assert_age(1, t80 + MIN, 152.0, 0.2);
        // A stated age wins over the engine's.
        let mut o = observe(&req(4, &mut rng));
        o.account_age = Some(1000 * HOUR);
        e.decide(&o, t80);
        assert_age(4, t80, 1000.0, 0.1);
        // Past the cap the least recently seen go, and the history restarts
        // after them: a newcomer then reads old again, for a while.
        let t100 = t0 + 100 * HOUR;
        for a in 10..22u64 {
            run(&e, &req(a, &mut rng), t100 + a * MIN, 100);
        }
        e.maintain(t100 + 30 * MIN);
        assert!(e.tracked_tenure() <= 10, "{}", e.tracked_tenure());
        run(&e, &req(99, &mut rng), t100 + HOUR, 100);
        let a99 = age_hours(99, t100 + HOUR);
        assert!(a99 > 71.0, "a newcomer right after the map forgot: {a99}");
    }

    /// A slow-and-low campaign hidden behind a few addresses: 24 young
    /// accounts on two network prefixes, each with an honest client stack
    /// of its own, free-text prompts (nothing to link them by), 12 requests
    /// an hour of which a quarter are cover (short answers), the rest long
    /// answers to short prompts, `max_tokens` below the model's ceiling.
    /// No account's own evidence reaches Slow (about 0.3), and cohorts
    /// (`cohort_min_raw` 0.5) never take them in; their network pool —
    /// long answers per member-hour over the accounts on one prefix — does
    /// what none of them does alone. Beside it, honest look-alikes behind
    /// one address each: a corporate NAT (30 accounts, one stack, answers
    /// mostly short) and an app's users behind their company's NAT (one
    /// system prompt and one stack, answers up to 2 500 tokens), heavy
    /// long-answer users on addresses of their own, and an app's users who
    /// live on the campaign's own two prefixes (home browsers, answers up to
    /// 3 000 tokens). No honest account leaves Allow by its own score, the
    /// pool lifts no honest request past Degrade and at most 0.5 % of them
    /// to it; with pools off, none of the campaign's requests are degraded.
    /// (Pools still ship off: honest heavy users who share a /24 and take
    /// long answers at a campaign's rate themselves, such as coding agents
    /// behind one office NAT, are lifted all the way; docs/score.md.)
    #[test]
    fn a_campaign_on_few_addresses_is_scored_by_its_network_pool() {
        const STACKS: [&str; 6] = ["ja4-a", "ja4-b", "ja4-c", "ja4-d", "ja4-e", "ja4-f"];
        const APP: &str =
            "You are a helpful writing assistant inside a note-taking app. Improve the user's \
                           text for clarity and tone without changing its meaning.";
        let t0 = 1000 * MIN;
        let run_with = |pools: bool| {
            let mut p = policy();
            if let Some(d) = p.detection.as_mut() {
                d.network_pool_min_raw = if pools { 0.25 } else { 2.0 };
            }
            let e = Engine::new(p);
            let mut rng = rand::rngs::StdRng::seed_from_u64(44);
            // Every account's requests, in time order: (time, population, account index).
            let mut due: Vec<(Nanos, &str, u64)> = Vec::new();
            for (pop, accounts, per_hour) in [
                ("campaign", 24u64, 12u64),
                ("nat", 30, 6),
                ("app-nat", 30, 6),
                ("long-answer", 24, 10),
                ("neighbours", 8, 10),
            ] {
                let period = 60 * MIN / per_hour;
                for a in 0..accounts {
                    let mut t = t0 + rng.gen_range(0..period);
                    while t < t0 + 90 * MIN {
                        due.push((t, pop, a));
                        // Jittered by ±60 % of the period.
                        t += period * 4 / 10 + rng.gen_range(0..period * 12 / 10);
                    }
                }
            }
            due.sort_unstable();
            // (requests, degraded or worse, of which by the pool) per population, last 30 minutes.
            let mut got: std::collections::BTreeMap<&str, (u32, u32, u32)> = Default::default();
            // (requests, not at Allow by the account's own or pool's score)
            // per honest population, whole run.
            let mut honest: std::collections::BTreeMap<&str, (u32, u32)> = Default::default();
            for (now, pop, a) in due {
                let (r, output) = match pop {
                    "campaign" if rng.gen_bool(0.27) => (
                        Req {
                            account: 95_000 + a,
                            text: {
                                let n = rng.gen_range(8..120);
                                words(&mut rng, n)
                            },
                            max_tokens: 2_048,
                            ja4: STACKS[a as usize % STACKS.len()],
                            prefix: format!("100.64.{}.0/24", 7 + a % 2),
                        },
                        rng.gen_range(80..1_200),
                    ),
                    "campaign" => (
                        Req {
                            account: 95_000 + a,
                            text: {
                                let n = rng.gen_range(30..60);
                                words(&mut rng, n)
                            },
                            max_tokens: 32_000,
                            ja4: STACKS[a as usize % STACKS.len()],
                            prefix: format!("100.64.{}.0/24", 7 + a % 2),
                        },
                        rng.gen_range(1_500..6_000),
                    ),
                    "nat" => (
                        Req {
                            account: 96_000 + a,
                            text: {
                                let n = rng.gen_range(10..150);
                                words(&mut rng, n)
                            },
                            max_tokens: 2_048,
                            ja4: "ja4-corp-sdk",
                            prefix: "192.0.2.0/24".into(),
                        },
                        rng.gen_range(100..2_000),
                    ),
                    "app-nat" => (
                        Req {
                            account: 97_000 + a,
                            text: format!("{APP}\nNote: {}", words(&mut rng, 40)),
                            max_tokens: 8_192,
                            ja4: "ja4-corp-browser",
                            prefix: "172.16.5.0/24".into(),
                        },
                        rng.gen_range(100..2_500),
                    ),
                    "neighbours" => (
                        Req {
                            account: 99_000 + a,
                            text: format!("{APP}\nNote: {}", words(&mut rng, 40)),
                            max_tokens: 8_192,
                            ja4: "ja4-home-browser",
                            prefix: format!("100.64.{}.0/24", 7 + a % 2),
                        },
                        rng.gen_range(100..3_000),
                    ),
                    _ => (
                        Req {
                            account: 98_000 + a,
                            text: {
                                let n = rng.gen_range(20..150);
                                words(&mut rng, n)
                            },
                            max_tokens: 16_000,
                            ja4: STACKS[a as usize % STACKS.len()],
                            prefix: format!("198.18.{a}.0/24"),
                        },
                        rng.gen_range(800..5_000),
                    ),
                };
                let d = run(&e, &r, now, output);
                let det = d.detection.expect("detection on");
                if now >= t0 + 60 * MIN {
                    let x = got.entry(pop).or_default();
                    x.0 += 1;
                    if det.enforced >= Level::Degrade {
                        x.1 += 1;
                        x.2 += u32::from(det.by_pool);
                    }
                }
                if pop != "campaign" {
                    // No honest account leaves Allow by its own score; its
                    // pool's lifts at most a few requests (below). (The app's
                    // users behind one NAT share a template, a stack and a
                    // prefix, so the linker joins them into scored clusters,
                    // which can reach Degrade on their own signals —
                    // member_spread, template_reuse, yield per member: that is
                    // the cluster's score, with or without pools.)
                    let x = honest.entry(pop).or_default();
                    x.0 += 1;
                    if det.scope == Scope::Account && det.level != Level::Allow {
                        assert!(det.by_pool, "{pop} {a}: {det:?}");
                        assert!(det.level <= Level::Degrade, "{pop} {a}: {det:?}");
                        x.1 += 1;
                    }
                }
            }
            let (n, lifted) = honest
                .values()
                .fold((0, 0), |(n, l), (a, b)| (n + a, l + b));
            // Honest neighbours on the campaign's prefixes who take long
            // answers at the campaign's rate themselves (one of the eight,
            // early on, at 17-22 an hour) can be lifted: at most 0.5 % of
            // honest requests (issue 14's goal for honest degraded).
            assert!(
                lifted * 200 <= n,
                "{lifted} of {n} honest lifted: {honest:?}"
            );
            (got, honest)
        };
        let (with, honest) = run_with(true);
        println!("with network pools: {with:?}, honest (requests, lifted): {honest:?}");
        let (n, degraded, by_pool) = with["campaign"];
        assert!(
            degraded * 10 >= n * 7,
            "campaign degraded {degraded} of {n}"
        );
        assert!(
            by_pool * 3 >= degraded,
            "{by_pool} of {degraded} by the pool"
        );
        let (without, _) = run_with(false);
        println!("without network pools: {without:?}");
        assert!(without["campaign"].1 < degraded, "{without:?}");
    }
}

#[test]
fn a_key_flood_never_forgives_a_debt_and_limits_new_accounts_per_network() {
    let mut policy = Policy::single_tier(tier(600, 100, 1_000_000_000, 60_000, 100));
    policy.max_tracked = 100;
    policy.new_accounts_at_capacity = Rate::per_minute(10, 10);
    let e = Engine::new(policy);
    let t0 = 100 * MIN;
    // The debtor: 4e9 output tokens on a 60k/min budget.
    let t = allow(&e.decide(&obs(1, 10), t0));
    e.settle(
        &t,
        Usage {
            input_tokens: None,
            output_tokens: 4_000_000_000,
        },
        t0,
    );
    let from = |account: u64, net: u64| Observation {
        attrs: ObservedAttrs {
            ip_prefix: Some(net),
            ..Default::default()
        },
        ..obs(account, 10)
    };
    // A flood of made-up keys from one network, then from another, each
    // sending one request, over two minutes.
    let mut refused = [0u32; 2];
    for i in 0..2_000u64 {
        let now = t0 + SECOND + i * (120 * SECOND / 2_000);
        let net = i % 2;
        if let Verdict::Throttle(h) = e.decide(&from(1_000 + i, 7 + net), now).verdict {
            assert_eq!((h.scope, h.kind), (Scope::Network, LimitKind::NewAccounts));
            refused[net as usize] += 1;
        }
    }
    // The debtor is still held and still owes: its next request is refused.
    let later = t0 + 125 * SECOND;
    let hit = throttle(&e.decide(&obs(1, 10), later));
    assert_eq!(
        (hit.scope, hit.kind),
        (Scope::Account, LimitKind::OutputTokens)
    );
    assert!(refused[0] > 0 && refused[1] > 0, "{refused:?}");
    assert_eq!(
        e.stats().new_accounts_refused.load(Ordering::Relaxed),
        u64::from(refused[0] + refused[1])
    );
    // Memory stays bounded: never past twice the cap.
    assert!(e.tracked_accounts() <= 200, "{}", e.tracked_accounts());
}

/// With the owner sweeping, a request that finds the store full asks for room and is admitted within its network's
/// budget; it does not sweep (a walk of every tracked account, hundreds of milliseconds at the shipped cap, that it
/// and every connection on its worker would wait for). The owner's call makes the room, once.
#[test]
fn a_full_store_asks_its_owner_for_room_instead_of_sweeping_on_the_request() {
    let mut policy = Policy::single_tier(tier(600, 100, 1_000_000_000, 1_000_000, 100));
    policy.max_tracked = 100;
    policy.idle_evict = std::time::Duration::from_secs(3600);
    policy.new_accounts_at_capacity = Rate::per_minute(5, 5);
    let e = Engine::new(policy);
    e.maintain_outside();
    let from = |account: u64, net: u64| Observation {
        attrs: ObservedAttrs {
            ip_prefix: Some(net),
            ..Default::default()
        },
        ..obs(account, 10)
    };
    let t0 = 100 * MIN;
    // Fill the store: every account idle and owing nothing, so all can go for room.
    for i in 0..100u64 {
        let t = allow(&e.decide(&from(i, i), t0 + i * 1_000_000));
        e.settle(&t, Usage::default(), t0 + i * 1_000_000);
    }
    assert_eq!(e.tracked_accounts(), 100);
    assert!(!e.make_room_if_wanted(t0 + SECOND), "no request asked");
    // New accounts from one network, the store full: the first five pass on the network's budget, the rest are
    // refused, and none of them swept.
    let now = t0 + 2 * SECOND;
    let mut admitted = 0;
    for i in 0..8u64 {
        let d = e.decide(&from(1_000 + i, 7), now);
        if let Verdict::Throttle(h) = d.verdict {
            assert_eq!((h.scope, h.kind), (Scope::Network, LimitKind::NewAccounts));
        } else {
            admitted += 1;
            e.settle(&allow(&d), Usage::default(), now);
        }
    }
    assert_eq!(admitted, 5);
    // Over the cap now, and the room sweep's second-long pause over: a request that swept would drop the idle
    // accounts down to 7/8 of the cap.
    let later = now + 2 * SECOND;
    allow(&e.decide(&from(1_100, 8), later));
    assert_eq!(e.tracked_accounts(), 106, "a request swept the store");
    assert_eq!(e.stats().evicted_over_cap.load(Ordering::Relaxed), 0);
    // The owner's call sweeps down to 7/8 of the cap; then nothing is asked until the store is full again.
    assert!(e.make_room_if_wanted(later + 1_000_000));
    assert!(
        e.tracked_accounts() <= 100 - 100 / 8,
        "{}",
        e.tracked_accounts()
    );
    assert!(!e.make_room_if_wanted(later + 2 * SECOND));
    // With room, the network's next new account passes without its budget.
    allow(&e.decide(&from(2_000, 7), later + 3 * SECOND));
}

#[test]
fn request_shapes_group_output_limits_by_scale() {
    let shape = |model: Option<&str>, max: Option<u32>| {
        request_shape(&RequestFacts {
            model: model.map(String::from),
            max_output_tokens: max,
            thinking_budget: Some(16_000),
            ..Default::default()
        })
    };
    let m = Some("claude-sonnet-4-5");
    assert_eq!(shape(m, Some(24_000)), shape(m, Some(32_000)));
    assert_eq!(shape(m, Some(16_000)), shape(m, Some(32_000)));
    assert_ne!(shape(m, Some(32_000)), shape(m, Some(64_000)));
    assert_ne!(shape(m, Some(300)), shape(m, Some(4_096)));
    assert_ne!(shape(m, Some(32_000)), shape(Some("gpt-4o"), Some(32_000)));
    assert_ne!(shape(m, None), shape(m, Some(1)));
    // Nothing said (body not inspected): no shape, nothing to link on.
    assert_eq!(request_shape(&RequestFacts::default()), None);
}

/// A request another store admitted (`record_admission`) is charged to the
/// engine's cells unchecked and settles there like one admitted locally:
/// a fallback to these cells starts from what this process served.
#[test]
fn an_admission_recorded_from_another_store_settles_like_a_local_one() {
    let e = Engine::new(Policy::single_tier(tier(60, 2, 1_000_000, 600, 100)));
    let t0 = 10 * MIN;
    let Assessment::Admit(p) = e.assess(&obs(9, 40), t0) else {
        panic!("expected a budget ask");
    };
    assert_eq!(p.ask().input_tokens, 40);
    assert!(p.ask().cluster.is_none());
    // The shared store said yes (twice: past this process's burst of 2).
    for _ in 0..3 {
        e.record_admission(p.ask(), t0);
    }
    let t = allow(&p.conclude(Ok(None)));
    let b = e.account_budgets(AccountId(9), t0).unwrap();
    assert_eq!((b.in_flight, b.requests_remaining), (3, 0));
    e.settle(
        &t,
        Usage {
            input_tokens: Some(40),
            output_tokens: 1200,
        },
        t0,
    );
    let b = e.account_budgets(AccountId(9), t0).unwrap();
    assert_eq!((b.in_flight, b.output_tokens_debt), (2, 600));
    // Falling back to these cells now refuses: the account owes.
    assert_eq!(
        throttle(&e.decide(&obs(9, 1), t0)).kind,
        LimitKind::Requests
    );
    let (tier, cluster) = e.settle_quotas(&t);
    assert_eq!(tier.output.per_period(), 600);
    assert!(cluster.is_none());
}
