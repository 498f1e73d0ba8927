use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Simulations start far from the clock's epoch.
const T0: Nanos = 400 * DAY;
const TIER_RPM: u64 = 60;

fn matcher() -> crate::prompt::PhraseMatcher {
    crate::prompt::PhraseMatcher::with_defaults().unwrap()
}

fn mins(t: Nanos) -> f64 {
    t as f64 / MINUTE as f64
}

// -- policy and ladder ------------------------------------------------------------------------------------

#[test]
fn default_policy_is_valid_and_coordination_alone_stays_allow() {
    let p = ScorePolicy::default();
    p.validate().unwrap();
    // No combination of the account signals that a legitimate templated workload can show (everything but
    // elicitation, pinned/long outputs and the release pivot) reaches Slow on its own.
    let context: f32 = Signal::CONTEXT.iter().map(|&s| p.weights.get(s)).sum();
    println!(
        "coordination/context weights sum to {context:.2} (slow enters at {:.2})",
        p.thresholds.slow.enter
    );
    assert!(context < p.thresholds.slow.enter);
}

#[test]
fn validate_names_the_bad_key() {
    let mut p = ScorePolicy::default();
    p.thresholds.degrade.exit = 0.7;
    assert_eq!(p.validate().unwrap_err().field, "thresholds.degrade.enter");
    let mut p = ScorePolicy::default();
    p.thresholds.throttle.enter = 0.6;
    assert_eq!(p.validate().unwrap_err().field, "thresholds.throttle.enter");
    let mut p = ScorePolicy::default();
    p.weights.breadth = f32::NAN;
    assert_eq!(p.validate().unwrap_err().field, "weights.breadth");
    let mut p = ScorePolicy::default();
    p.ramps.volume = Ramp::new(1.0, 1.0);
    assert_eq!(p.validate().unwrap_err().field, "ramps.volume");
    let mut p = ScorePolicy::default();
    p.activity_half_life = p.half_life;
    assert_eq!(p.validate().unwrap_err().field, "activity_half_life");
    let mut p = ScorePolicy::default();
    p.model_ceilings.push((String::new(), 5));
    assert!(p
        .validate()
        .unwrap_err()
        .to_string()
        .starts_with("model_ceilings[12]"));
    // A level can be switched off with an enter mark above 1.
    let mut p = ScorePolicy::default();
    p.thresholds.block = Mark::new(f32::INFINITY, 0.9);
    p.validate().unwrap();
    let mut l = LadderState::new();
    assert_eq!(l.update(1.0, &p), Level::Throttle);
}

#[test]
fn ceilings_use_the_longest_prefix() {
    let p = ScorePolicy::default();
    assert_eq!(p.ceiling(Some("claude-opus-4-1-20250805")), 32_000);
    assert_eq!(p.ceiling(Some("claude-opus-4-5-20251101")), 64_000);
    assert_eq!(p.ceiling(Some("gpt-4o-mini")), 16_384);
    assert_eq!(p.ceiling(Some("some-local-model")), 8_192);
    assert_eq!(p.ceiling(None), 8_192);
}

#[test]
fn ladder_hysteresis_does_not_flap() {
    let p = ScorePolicy::default();
    let slow = p.thresholds.slow;
    let mut l = LadderState::new();
    let mut rng = StdRng::seed_from_u64(7);
    let mut changes = 0;
    let mut prev = l.level();
    // A score oscillating ±0.04 around Slow's enter mark (0.50), above its exit mark (0.40).
    for i in 0..10_000 {
        let s = slow.enter + if i % 2 == 0 { 0.04 } else { -0.04 } * rng.gen::<f32>();
        let now = l.update(s, &p);
        if now != prev {
            changes += 1;
            prev = now;
        }
    }
    println!(
        "hysteresis: {changes} level change(s) in 10000 oscillating scores around {}",
        slow.enter
    );
    assert_eq!(changes, 1);
    assert_eq!(l.level(), Level::Slow);
    // Around Throttle's enter mark: up once, never back to Degrade while above Throttle's exit.
    let mut l = LadderState::new();
    let mut levels = std::collections::BTreeSet::new();
    for i in 0..1000 {
        let s = p.thresholds.throttle.enter + if i % 2 == 0 { 0.03 } else { -0.1 };
        levels.insert(l.update(s, &p));
    }
    assert_eq!(levels.into_iter().collect::<Vec<_>>(), [Level::Throttle]);
    // Falling: down a level below each exit mark; rising: up at once.
    let mut l = LadderState::new();
    assert_eq!(l.update(0.95, &p), Level::Block);
    assert_eq!(l.update(0.81, &p), Level::Block);
    assert_eq!(l.update(0.77, &p), Level::Throttle);
    assert_eq!(l.update(0.66, &p), Level::Throttle);
    assert_eq!(l.update(0.30, &p), Level::Allow);
    assert_eq!(l.update(0.70, &p), Level::Degrade);
    assert_eq!(l.update(f32::NAN, &p), Level::Allow);
}

// -- individual signals -----------------------------------------------------------------------------------

fn req(now: Nanos) -> RequestSignals<'static> {
    RequestSignals {
        now,
        input_tokens: 500,
        model: Some("claude-sonnet-4-5"),
        ..RequestSignals::default()
    }
}

#[test]
fn release_pivot_weighs_young_accounts() {
    let mut p = ScorePolicy::default();
    let release = T0 + 10 * DAY;
    p.new_models.push(("claude-next".into(), release));
    let mut old = AccountSignals::new(T0);
    let mut fresh = AccountSignals::new(release + HOUR);
    for i in 0..30 {
        let now = release + HOUR + i * MINUTE;
        let r = RequestSignals {
            model: Some("claude-next-20260101"),
            ..req(now)
        };
        old.observe_hits(&r, PhraseHits::NONE, &p, TIER_RPM);
        fresh.observe_hits(&r, PhraseHits::NONE, &p, TIER_RPM);
    }
    let now = release + 2 * HOUR;
    let v = |a: &AccountSignals| {
        a.score(now, &p)
            .contribution(Signal::ReleasePivot)
            .unwrap()
            .value
    };
    assert!((v(&fresh) - 1.0).abs() < 1e-6);
    assert!((v(&old) - 0.25).abs() < 1e-6);
    // After the window the model is no longer new.
    let mut late = AccountSignals::new(release + 8 * DAY);
    for i in 0..10 {
        late.observe_hits(
            &RequestSignals {
                model: Some("claude-next-20260101"),
                ..req(release + 8 * DAY + i * MINUTE)
            },
            PhraseHits::NONE,
            &p,
            TIER_RPM,
        );
    }
    let s = late.score(release + 8 * DAY + HOUR, &p);
    assert_eq!(s.contribution(Signal::ReleasePivot).unwrap().value, 0.0);
}

#[test]
fn breadth_union_reads_the_keys_of_both_across_epochs() {
    let h = HOUR;
    let mut a = Breadth::default();
    let mut b = Breadth::default();
    for i in 0..20u64 {
        a.insert(T0, h, 1, i);
        // b is an epoch later: a's keys become its previous epoch.
        b.insert(T0 + h, h, 2, 1000 + i);
    }
    let u = a.union(b);
    assert_eq!(u, b.union(a), "not symmetric");
    assert_eq!(u.epoch, b.epoch);
    let (ra, rb, ru) = (a.ratio(T0, h), b.ratio(T0 + h, h), u.ratio(T0 + h, h));
    // 40 fills over 2 templates, against 20 over 1 for each half.
    assert!(
        (ra - 20.0).abs() < 3.0 && (rb - 20.0).abs() < 3.0,
        "{ra} {rb}"
    );
    assert!((ru - 20.0).abs() < 4.0, "{ru}");
    assert_eq!(
        (u.fills, u.prev_fills),
        (b.fills, a.fills),
        "epochs mixed up"
    );
    // Two epochs apart, the older half is gone.
    let far = Breadth {
        epoch: b.epoch + 2,
        ..Breadth::default()
    };
    assert_eq!(far.union(a), far);
}

#[test]
fn breadth_counts_fills_per_template() {
    let p = ScorePolicy::default();
    let mut templated = AccountSignals::new(T0);
    let mut free = AccountSignals::new(T0);
    for i in 0..100u64 {
        let now = T0 + i * 20 * SECOND;
        templated.observe_hits(
            &RequestSignals {
                template_key: Some(1 + i % 2),
                fill_key: Some(i * 7919),
                ..req(now)
            },
            PhraseHits::NONE,
            &p,
            TIER_RPM,
        );
        free.observe_hits(
            &RequestSignals {
                fill_key: Some(i * 7919),
                ..req(now)
            },
            PhraseHits::NONE,
            &p,
            TIER_RPM,
        );
    }
    let now = T0 + 40 * MINUTE;
    let b = |a: &AccountSignals| {
        a.score(now, &p)
            .contribution(Signal::Breadth)
            .unwrap()
            .value
    };
    println!(
        "breadth: 100 fills of 2 templates → {:.1}; 100 free prompts → {:.2}",
        b(&templated),
        b(&free)
    );
    assert!(b(&templated) > 30.0);
    assert!(b(&free) < 1.5);
    // Two epochs later the sketches are empty.
    assert_eq!(
        templated
            .score(now + 3 * HOUR, &p)
            .contribution(Signal::Breadth)
            .unwrap()
            .value,
        0.0
    );
}

#[test]
fn timing_and_volume_values() {
    let p = ScorePolicy::default();
    let mut regular = AccountSignals::new(T0);
    let mut poisson = AccountSignals::new(T0);
    let mut rng = StdRng::seed_from_u64(3);
    let mut t = T0;
    for i in 0..600u64 {
        regular.observe_hits(&req(T0 + i * 2 * SECOND), PhraseHits::NONE, &p, TIER_RPM);
        t += (-(1.0 - rng.gen::<f64>()).ln() * 2.0 * SECOND as f64) as Nanos;
        poisson.observe_hits(&req(t), PhraseHits::NONE, &p, TIER_RPM);
    }
    let now = T0 + 20 * MINUTE;
    let r = regular.score(now, &p);
    let q = poisson.score(now, &p);
    let cv = |s: &Score| s.contribution(Signal::TimingRegularity).unwrap().value;
    let vol = |s: &Score| s.contribution(Signal::Volume).unwrap().value;
    println!(
        "cv regular {:.3} poisson {:.3}; volume regular {:.3} (30 rpm of 60)",
        cv(&r),
        cv(&q),
        vol(&r)
    );
    assert!(cv(&r) < 0.01);
    assert!((cv(&q) - 1.0).abs() < 0.2);
    assert!((vol(&r) - 0.5).abs() < 0.02);
}

/// member_spread: members ÷ requests per minute, for clusters of at
/// least `spread_min_members`; accounts have no such signal.
#[test]
fn member_spread_is_members_per_request_per_minute() {
    let p = ScorePolicy::default();
    let spread_after_an_hour = |members: u32| {
        let mut c = ClusterSignals::new(T0);
        c.set_members(members);
        // 10 requests a minute, whoever sends them.
        for i in 0..600u64 {
            c.observe_hits(
                i % u64::from(members),
                &req(T0 + i * 6 * SECOND),
                PhraseHits::NONE,
                &p,
                TIER_RPM,
            );
        }
        let now = T0 + HOUR;
        c.score(now, &p)
            .contribution(Signal::MemberSpread)
            .unwrap()
            .value
    };
    // 100 members at 10 requests a minute: a member every 10 minutes.
    let v = spread_after_an_hour(100);
    assert!((9.0..11.0).contains(&v), "{v}");
    // 10 members: below spread_min_members, reads 0.
    assert_eq!(spread_after_an_hour(10), 0.0);
    assert!(AccountSignals::new(T0)
        .score(T0 + HOUR, &p)
        .contribution(Signal::MemberSpread)
        .is_none());
}

#[test]
fn lockstep_needs_synchronised_members() {
    let p = ScorePolicy::default();
    let mut synced = ClusterSignals::new(T0);
    let mut spread = ClusterSignals::new(T0);
    let mut rng = StdRng::seed_from_u64(11);
    for wave in 0..30u64 {
        for member in 0..200u64 {
            let t = T0 + wave * MINUTE + rng.gen_range(0..SECOND / 2);
            synced.observe_hits(member, &req(t), PhraseHits::NONE, &p, TIER_RPM);
            let t = T0 + wave * MINUTE + member * (MINUTE / 200) + rng.gen_range(0..SECOND / 4);
            spread.observe_hits(member, &req(t), PhraseHits::NONE, &p, TIER_RPM);
        }
    }
    let now = T0 + 30 * MINUTE;
    let l = |c: &ClusterSignals| {
        c.score(now, &p)
            .contribution(Signal::Lockstep)
            .unwrap()
            .value
    };
    println!(
        "lockstep: synchronised {:.3}, evenly spread {:.3}",
        l(&synced),
        l(&spread)
    );
    assert!(l(&synced) > 0.9);
    assert!(l(&spread) < 0.01);
    // Accounts have no lockstep signal.
    assert!(AccountSignals::new(T0)
        .score(now, &p)
        .contribution(Signal::Lockstep)
        .is_none());
}

#[test]
fn never_panics_on_odd_inputs() {
    let m = matcher();
    let mut p = ScorePolicy::default();
    for policy in [p.clone(), {
        p.half_life = 0;
        p.activity_half_life = 0;
        p.min_requests = 0.0;
        p.prior_requests = f32::NAN;
        p.weights.volume = f32::INFINITY;
        p.ramps.breadth = Ramp::new(f32::NAN, 0.0);
        p.lockstep_rate_factor = f32::NAN;
        p.pinned_fraction = 0.0;
        p.new_models.push(("".into(), 0));
        p.clone()
    }] {
        for first in [0, u64::MAX] {
            let mut a = AccountSignals::new(first);
            let mut c = ClusterSignals::new(first);
            for now in [0, u64::MAX, 1, u64::MAX / 2, 0, 5] {
                let r = RequestSignals {
                    now,
                    thinking_budget: Some(u32::MAX),
                    reasoning_effort_high: true,
                    max_output_tokens: Some(u32::MAX),
                    model: Some(""),
                    input_tokens: u64::MAX,
                    template_shared: true,
                    template_key: Some(u64::MAX),
                    fill_key: Some(0),
                    fingerprint_inconsistent: true,
                    stack: StackNovelty::Further,
                    stack_key: u32::MAX,
                    sender_requests_per_hour: f32::MAX,
                    sender_age: Some(u64::MAX),
                    stack_discount: f32::MAX,
                };
                let hits = m.scan("\u{2019}\u{2014}x\u{00a0}");
                let _ = a.note_stack(stack_key(Some(now)), 0);
                let _ = a.profile(now, &policy);
                a.observe_hits(&r, hits, &policy, u64::MAX);
                c.observe_hits(u64::MAX, &r, hits, &policy, 0);
                a.settle(u64::MAX, now, &policy);
                c.settle(u64::MAX, now, &policy);
                for s in [a.score(now, &policy), c.score(now, &policy)] {
                    assert!((0.0..=1.0).contains(&s.value), "{s:?}");
                    let _ = LadderState::new().update(s.value, &policy);
                }
            }
        }
    }
}

/// An honest key used from two clients (a laptop and a phone) moves between them: one change, its second client
/// when first seen, which an account counts at three quarters and a group at half weight. A team's key used from
/// six machines brings each once, then none. A campaign rotating over a dozen stacks keeps bringing new ones even
/// though each recurs: more than an account remembers.
#[test]
fn a_stack_is_churn_only_when_the_account_does_not_know_it() {
    use StackNovelty::*;
    let novelty = |a: &mut AccountSignals, stacks: &mut dyn Iterator<Item = u64>| {
        let mut seen = [0usize; 4];
        for k in stacks {
            seen[a.note_stack(stack_key(Some(k)), 0) as usize] += 1;
        }
        (seen[Second as usize], seen[Further as usize])
    };
    let mut honest = AccountSignals::new(0);
    let two = &mut (0..40u64).map(|i| if i % 3 == 0 { 12 } else { 22 });
    assert_eq!(novelty(&mut honest, two), (1, 0));
    let mut team = AccountSignals::new(0);
    let mut x = 3u64;
    let six = &mut (0..400).map(|_| {
        x = crate::engine::hash::splitmix64(x);
        (100 + x % 6) << 1
    });
    assert_eq!(novelty(&mut team, six), (1, 4), "each of six machines once");
    let mut full = AccountSignals::new(0);
    let known = &mut (0..80u64).map(|i| (100 + i % KNOWN_STACKS as u64) << 1);
    assert_eq!(
        novelty(&mut full, known),
        (1, KNOWN_STACKS - 2),
        "as many clients as remembered"
    );
    let mut rotating = AccountSignals::new(0);
    let mut x = 7u64;
    let dozen = &mut (0..400).map(|_| {
        x = crate::engine::hash::splitmix64(x);
        (1000 + x % 12) << 1
    });
    let (second, further) = novelty(&mut rotating, dozen);
    assert_eq!(second, 1);
    // Four in twelve are not among the eight it remembers.
    assert!((110..=170).contains(&further), "{further} of 400");
    assert_eq!(
        (Second.churn(false), Second.churn(true)),
        (ACCOUNT_SECOND_STACK, GROUP_SECOND_STACK)
    );
    assert_eq!((Further.churn(true), Known.churn(false)), (1.0, 0.0));
    // Unknown stacks neither count nor reset what is known.
    assert_eq!(honest.note_stack(stack_key(None), 0), Known);
    assert_eq!(
        (
            honest.note_stack(stack_key(Some(22)), 0),
            honest.note_stack(stack_key(Some(12)), 0),
        ),
        (Known, Known)
    );
}

/// A new stack that comes with a new network is another machine of the account's (a team member's, a phone on mobile
/// data) as much as a rotation: it counts as a second client does. One that comes from a network the account already
/// used with another stack is its client changing in place — a campaign rotating stacks behind one proxy or a few —
/// and counts as before.
#[test]
fn a_new_stack_from_a_new_network_counts_less() {
    use StackNovelty::*;
    // Keys as `stack_key` folds them (the low bit set): even inputs keep them apart.
    let net = |n: u64| stack_key(Some(n << 1));
    let stack = |n: u64| stack_key(Some(n << 1));
    // A team's six machines, each its own stack on its own network, in turn.
    let mut team = AccountSignals::new(0);
    let seen: Vec<_> = (0..60u64)
        .map(|i| team.note_stack(stack(100 + i % 6), net(500 + i % 6)))
        .collect();
    assert_eq!(seen.iter().filter(|&&s| s == Elsewhere).count(), 5);
    assert!(
        seen.iter().all(|&s| s == Known || s == Elsewhere),
        "{seen:?}"
    );
    // A campaign rotating stacks behind one proxy.
    let mut proxy = AccountSignals::new(0);
    let seen: Vec<_> = (0..4u64)
        .map(|i| proxy.note_stack(stack(200 + i), net(7)))
        .collect();
    assert_eq!(seen, [Known, Second, Further, Further]);
    // Behind two proxies it moves between: once a network recurs, a new stack from it is churn.
    let mut two = AccountSignals::new(0);
    let seen: Vec<_> = (0..5u64)
        .map(|i| two.note_stack(stack(300 + i), net(i % 2)))
        .collect();
    assert_eq!(seen, [Known, Elsewhere, Further, Further, Further]);
    // A laptop that moves keeps its stack: known, wherever it is.
    let mut laptop = AccountSignals::new(0);
    let seen: Vec<_> = (0..4u64)
        .map(|i| laptop.note_stack(stack(400), net(600 + i)))
        .collect();
    assert_eq!(seen, [Known; 4]);
    // Without a network, a new stack counts as before.
    let mut unknown = AccountSignals::new(0);
    let seen: Vec<_> = (0..3u64)
        .map(|i| unknown.note_stack(stack(500 + i), 0))
        .collect();
    assert_eq!(seen, [Known, Second, Further]);
    assert_eq!(
        (Elsewhere.churn(false), Elsewhere.churn(true)),
        (ACCOUNT_SECOND_STACK, GROUP_SECOND_STACK)
    );
}

/// A group's members that each show a second stack, all the same one, are an upgrade of their common client; members
/// that each show their own (a rotating campaign's, a team's machines) are churn, as they were.
#[test]
fn one_new_stack_taken_up_by_a_group_is_an_upgrade_not_churn() {
    let p = ScorePolicy::default();
    let churn = |key_of: &dyn Fn(u64) -> u64| {
        let mut g = ClusterSignals::new(T0);
        let mut last = T0;
        for i in 0..200u64 {
            let member = i % 50;
            last = T0 + i * SECOND;
            // Each member's first request is on its first stack; its second, on the new one.
            let (stack, key) = if i < 50 {
                (StackNovelty::Known, 1u64 << 1)
            } else if i < 100 {
                (StackNovelty::Second, key_of(member))
            } else {
                (StackNovelty::Known, key_of(member))
            };
            let r = RequestSignals {
                stack,
                stack_key: stack_key(Some(key)),
                ..req(last)
            };
            g.observe_hits(member, &r, PhraseHits::NONE, &p, TIER_RPM);
        }
        g.score(last, &p)
            .contribution(Signal::StackChurn)
            .map_or(0.0, |c| c.value)
    };
    let upgrade = churn(&|_| 7 << 1);
    let own = churn(&|m| (100 + m % 12) << 1);
    assert_eq!(upgrade, 0.0, "one stack, taken up by every member");
    // 50 of 200 requests brought a member's second stack, each counting GROUP_SECOND_STACK (the first not at all,
    // a few others a little less while one of the twelve is ahead).
    let expected = 49.0 * GROUP_SECOND_STACK / 200.0;
    assert!(
        own <= expected + 1e-3 && own >= 0.9 * expected,
        "{own} against {expected}"
    );
    // A group's first new stack weighs nothing until another follows; one that most members take up weighs less and
    // less; long after, a lone one is an upgrade again.
    let mut g = ClusterSignals::new(T0);
    let h = p.half_life;
    assert_eq!(g.fresh_stack(5, T0, h), 0.0);
    assert_eq!(g.fresh_stack(5, T0 + MINUTE, h), 0.0);
    assert_eq!(g.fresh_stack(7, T0 + 2 * MINUTE, h), 1.0);
    let w: Vec<f32> = (0..20)
        .map(|i| g.fresh_stack(7, T0 + (3 + i) * MINUTE, h))
        .collect();
    assert!(w.windows(2).all(|p| p[1] <= p[0]), "{w:?}");
    assert!(w[19] < 0.2, "{w:?}");
    assert!(g.fresh_stack(9, T0 + 20 * h, h) < 0.01);
    assert_eq!(
        g.fresh_stack(0, T0 + 20 * h, h),
        1.0,
        "an unknown stack counts"
    );
}

#[test]
fn state_is_small() {
    let a = size_of::<AccountSignals>();
    let c = size_of::<ClusterSignals>();
    let l = size_of::<LadderState>();
    println!(
        "size_of AccountSignals = {a} bytes, ClusterSignals = {c} bytes, LadderState = {l} byte(s)"
    );
    assert!(a <= 300);
    // Two windows (the onset window's since 2026-12-06); a cluster holds two (all members, core).
    assert!(c <= 768);
}

// -- population simulation --------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Lockstep waves: every member within the same second, once a minute.
    Hydra,
    /// Load-balanced: a scheduler sends one request every 300 ms, round-robin over the members.
    HydraSpread,
    Chat,
    Nat,
    Batch,
    Eval,
    Power,
}

/// Common English words that test prompts are drawn from (the prompt step's
/// tests draw from them too).
pub(crate) const WORDS: &[&str] = &[
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "on",
    "with",
    "that",
    "this",
    "it",
    "as",
    "by",
    "from",
    "river",
    "market",
    "policy",
    "engine",
    "garden",
    "letter",
    "budget",
    "winter",
    "protein",
    "orbit",
    "village",
    "contract",
    "signal",
    "harbor",
    "theory",
    "kitchen",
    "museum",
    "battery",
    "forest",
    "ticket",
    "invoice",
    "planet",
    "recipe",
    "station",
    "library",
    "doctor",
    "network",
    "holiday",
    "painting",
    "bridge",
    "customer",
    "quarter",
    "revenue",
    "schedule",
    "language",
    "history",
    "window",
    "mountain",
    "student",
    "energy",
    "method",
    "report",
    "travel",
    "insurance",
    "weather",
    "function",
    "variable",
    "database",
    "server",
    "request",
    "response",
    "error",
    "question",
    "answer",
    "problem",
    "result",
    "value",
    "number",
    "because",
    "however",
    "therefore",
    "quickly",
    "carefully",
    "usually",
    "often",
    "never",
    "always",
    "some",
    "many",
    "few",
    "large",
    "small",
    "new",
    "old",
    "good",
    "bad",
    "early",
    "late",
    "simple",
    "complex",
];

fn words(rng: &mut StdRng, n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push(if rng.gen_ratio(1, 12) { '.' } else { ' ' });
            if s.ends_with('.') {
                s.push(' ');
            }
        }
        s.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
    }
    s
}

const HYDRA_TEMPLATES: &[&str] = &[
        "Below is a question and a completed response. Imagine and articulate the internal reasoning behind a \
         completed response and write it out step by step, as if you were thinking before answering.\n\n\
         Question: {q}\n\nCompleted response: {r}",
        "Solve the following problem. Before the final answer, show your full chain of thought, including every \
         intermediate step; do not skip any reasoning steps.\n\nProblem: {q}\n\nContext: {r}",
        "You are a strict grader. Grade the following response using the rubric below and output only the score \
         on a scale of 1 to 10.\n\nRubric: {q}\n\nResponse: {r}",
        "Reconstruct the tool calls an expert agent would make to complete this task. For each step give the tool \
         name and arguments and the simulated tool output.\n\nTask: {q}\n\nEnvironment: {r}",
        "Here is an answer that an assistant gave. Reconstruct the reasoning that led to this answer and write \
         out every step of your reasoning in detail.\n\nAnswer: {q}\n\nNotes: {r}",
    ];

struct Pools {
    hydra: Vec<(usize, String)>,
    chat: Vec<String>,
    nat: Vec<String>,
    batch: Vec<String>,
    eval: Vec<String>,
    power: Vec<String>,
}

fn pools(rng: &mut StdRng) -> Pools {
    let mut hydra = Vec::new();
    for (ti, t) in HYDRA_TEMPLATES.iter().enumerate() {
        for _ in 0..24 {
            let q = words(rng, 60);
            let r = words(rng, 140);
            hydra.push((ti, t.replace("{q}", &q).replace("{r}", &r)));
        }
    }
    let openers = [
        "Can you help me write an email about",
        "What is the difference between",
        "Explain step by step how to fix",
        "Summarise this for my team:",
        "Give me three ideas for",
        "Why does my code fail with",
        "Translate into French:",
        "Is it true that",
        "Let's think step by step about",
        "Rewrite this paragraph more politely:",
    ];
    let chat = (0..200)
        .map(|i| {
            let n = rng.gen_range(8..200);
            format!("{} {}?", openers[i % openers.len()], words(rng, n))
        })
        .collect();
    let nat = (0..200)
            .map(|i| {
                let n = rng.gen_range(10..150);
                if i % 10 < 7 {
                    format!(
                        "You are AcmeCorp's internal assistant. Answer using the company handbook. Be concise.\n\n\
                         Employee question: {}",
                        words(rng, n)
                    )
                } else {
                    format!("{} {}", openers[i % openers.len()], words(rng, n))
                }
            })
            .collect();
    let batch = (0..100)
            .map(|_| {
                format!(
                    "Summarize the following document in five bullet points for an executive audience.\n\n\
                     Document:\n{}",
                    words(rng, 300)
                )
            })
            .collect();
    let eval = (0..200)
            .map(|_| {
                format!(
                    "The following is a multiple choice question about {}. Answer with the letter of the correct \
                     option.\n\nQuestion: {}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:",
                    words(rng, 2),
                    words(rng, 30),
                    words(rng, 4),
                    words(rng, 4),
                    words(rng, 4),
                    words(rng, 4)
                )
            })
            .collect();
    let power = (0..200)
            .map(|_| {
                let n = rng.gen_range(40..300);
                format!(
                    "In src/{}.rs the test fails. Here is the output and the code: {}. Fix it and explain briefly.",
                    WORDS[rng.gen_range(0..WORDS.len())],
                    words(rng, n)
                )
            })
            .collect();
    Pools {
        hydra,
        chat,
        nat,
        batch,
        eval,
        power,
    }
}

const CORP_TEMPLATE: u64 = 0xC0;
const BATCH_TEMPLATE: u64 = 0xBA;
const EVAL_TEMPLATE: u64 = 0xE0;

/// Arrival times of one account of `kind` in [start, end).
fn arrivals(kind: Kind, rng: &mut StdRng, start: Nanos, end: Nanos, index: usize) -> Vec<Nanos> {
    let exp = |rng: &mut StdRng, mean: f64| (-(1.0 - rng.gen::<f64>()).ln() * mean) as Nanos;
    let mut out = Vec::new();
    match kind {
        Kind::HydraSpread => {
            let mut t = start + (index % 200) as Nanos * 300 * (SECOND / 1000);
            while t < end {
                out.push(t + rng.gen_range(0..20) * (SECOND / 1000));
                t += MINUTE;
            }
        }
        Kind::Hydra => {
            // A wave every minute; every member fires within the same second (lockstep).
            let mut t = start;
            while t < end {
                out.push(t + rng.gen_range(0..800) * (SECOND / 1000));
                t += MINUTE;
            }
        }
        Kind::Chat | Kind::Power => {
            let (gap, session) = if kind == Kind::Chat {
                (60.0, 15)
            } else {
                (15.0, 40)
            };
            let mut t = start + exp(rng, 10.0 * MINUTE as f64);
            while t < end {
                for _ in 0..rng.gen_range(3..session) {
                    out.push(t);
                    t += 5 * SECOND + exp(rng, gap * SECOND as f64);
                }
                t += exp(rng, 40.0 * MINUTE as f64);
            }
        }
        Kind::Nat => {
            let mut t = start + exp(rng, 20.0 * SECOND as f64);
            while t < end {
                out.push(t);
                t += exp(rng, 20.0 * SECOND as f64);
            }
        }
        Kind::Batch | Kind::Eval => {
            let (every, jitter) = if kind == Kind::Batch {
                (2 * SECOND, 100)
            } else {
                (1_200_000_000, 200)
            };
            let mut t = start;
            while t < end {
                out.push(t + rng.gen_range(0..jitter) * (SECOND / 1000));
                t += every;
            }
        }
    }
    out.retain(|&t| t < end);
    out
}

struct Tracked {
    kind: Kind,
    id: u64,
    sig: AccountSignals,
    ladder: LadderState,
    /// First time at or above each level.
    reached: [Option<Nanos>; 5],
    /// Requests decided at a level above Allow.
    actions: u32,
    requests: u32,
    max_score: f32,
    last_score: Option<Score>,
}

impl Tracked {
    fn new(kind: Kind, id: u64, start: Nanos) -> Tracked {
        Tracked {
            kind,
            id,
            sig: AccountSignals::new(start),
            ladder: LadderState::new(),
            reached: [None; 5],
            actions: 0,
            requests: 0,
            max_score: 0.0,
            last_score: None,
        }
    }
}

fn record(reached: &mut [Option<Nanos>; 5], level: Level, now: Nanos) {
    for l in Level::ALL {
        if l <= level && reached[l as usize].is_none() {
            reached[l as usize] = Some(now);
        }
    }
}

struct Sim {
    policy: ScorePolicy,
    matcher: crate::prompt::PhraseMatcher,
    pools: Pools,
    rng: StdRng,
    accounts: Vec<Tracked>,
    cluster: ClusterSignals,
    cluster_ladder: LadderState,
    cluster_reached: [Option<Nanos>; 5],
    cluster_max: f32,
    start: Nanos,
}

impl Sim {
    fn new(seed: u64, start: Nanos) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let pools = pools(&mut rng);
        Sim {
            policy: ScorePolicy::default(),
            matcher: matcher(),
            pools,
            rng,
            accounts: Vec::new(),
            cluster: ClusterSignals::new(start),
            cluster_ladder: LadderState::new(),
            cluster_reached: [None; 5],
            cluster_max: 0.0,
            start,
        }
    }

    fn add(&mut self, kind: Kind, count: usize) {
        for _ in 0..count {
            let id = self.rng.gen();
            self.accounts.push(Tracked::new(kind, id, self.start));
        }
    }

    /// Run every account from `from` to `to`.
    fn run(&mut self, from: Nanos, to: Nanos) {
        let mut events = Vec::new();
        for (i, a) in self.accounts.iter().enumerate() {
            for t in arrivals(a.kind, &mut self.rng, from, to, i) {
                events.push((t, i));
            }
        }
        events.sort_unstable();
        for (t, i) in events {
            self.request(t, i);
        }
    }

    fn request(&mut self, now: Nanos, i: usize) {
        let rng = &mut self.rng;
        let Some(a) = self.accounts.get_mut(i) else {
            return;
        };
        let fill = Some(rng.gen::<u64>());
        let (text, r, output): (&str, RequestSignals<'_>, u64) = match a.kind {
            Kind::Hydra | Kind::HydraSpread => {
                let (ti, text) = &self.pools.hydra[rng.gen_range(0..self.pools.hydra.len())];
                let r = RequestSignals {
                    thinking_budget: rng.gen_bool(0.5).then_some(32_000),
                    max_output_tokens: Some(64_000),
                    model: Some("claude-sonnet-4-5-20250929"),
                    input_tokens: text.len() as u64 / 4,
                    template_shared: a.requests > 0,
                    template_key: Some(100 + *ti as u64),
                    fill_key: fill,
                    ..RequestSignals::default()
                };
                (text, r, rng.gen_range(4_000..16_000))
            }
            Kind::Chat => {
                let text = &self.pools.chat[rng.gen_range(0..self.pools.chat.len())];
                let r = RequestSignals {
                    thinking_budget: rng.gen_bool(0.3).then_some(8_000),
                    max_output_tokens: rng.gen_bool(0.7).then_some(4_096),
                    model: Some("claude-sonnet-4-5-20250929"),
                    input_tokens: rng.gen_range(200..4_000),
                    template_shared: rng.gen_bool(0.01),
                    fill_key: fill,
                    ..RequestSignals::default()
                };
                (text, r, rng.gen_range(150..1_200))
            }
            Kind::Nat => {
                let k = rng.gen_range(0..self.pools.nat.len());
                let corp = k % 10 < 7;
                let r = RequestSignals {
                    max_output_tokens: Some(2_048),
                    model: Some("gpt-4o-2024-08-06"),
                    input_tokens: rng.gen_range(300..2_000),
                    template_shared: corp && rng.gen_bool(0.45),
                    template_key: corp.then_some(CORP_TEMPLATE),
                    fill_key: fill,
                    fingerprint_inconsistent: rng.gen_bool(0.2),
                    ..RequestSignals::default()
                };
                (&self.pools.nat[k], r, rng.gen_range(100..800))
            }
            Kind::Batch => {
                let text = &self.pools.batch[rng.gen_range(0..self.pools.batch.len())];
                let r = RequestSignals {
                    max_output_tokens: Some(1_024),
                    model: Some("claude-haiku-4-5"),
                    input_tokens: rng.gen_range(1_500..3_000),
                    template_key: Some(BATCH_TEMPLATE),
                    fill_key: fill,
                    ..RequestSignals::default()
                };
                (text, r, rng.gen_range(200..400))
            }
            Kind::Eval => {
                let text = &self.pools.eval[rng.gen_range(0..self.pools.eval.len())];
                let r = RequestSignals {
                    max_output_tokens: Some(1),
                    model: Some("gpt-4.1-2025-04-14"),
                    input_tokens: rng.gen_range(150..400),
                    // A public benchmark's template: other accounts send it too.
                    template_shared: true,
                    template_key: Some(EVAL_TEMPLATE),
                    fill_key: fill,
                    ..RequestSignals::default()
                };
                (text, r, 1)
            }
            Kind::Power => {
                let text = &self.pools.power[rng.gen_range(0..self.pools.power.len())];
                let r = RequestSignals {
                    thinking_budget: Some(32_000),
                    max_output_tokens: Some(64_000),
                    model: Some("claude-opus-4-5-20251101"),
                    input_tokens: rng.gen_range(20_000..120_000),
                    fill_key: fill,
                    ..RequestSignals::default()
                };
                (text, r, rng.gen_range(300..4_000))
            }
        };
        let r = RequestSignals { now, ..r };
        let hits = self.matcher.scan(text);
        let p = &self.policy;
        a.sig.observe_hits(&r, hits, p, TIER_RPM);
        let s = a.sig.score(now, p);
        let level = a.ladder.update(s.value, p);
        a.requests += 1;
        a.max_score = a.max_score.max(s.value);
        if level > Level::Allow {
            a.actions += 1;
        }
        record(&mut a.reached, level, now);
        a.last_score = Some(s);
        a.sig.settle(output, now, p);
        if matches!(a.kind, Kind::Hydra | Kind::HydraSpread) {
            self.cluster.observe_hits(a.id, &r, hits, p, TIER_RPM);
            let cs = self.cluster.score(now, p);
            let cl = self.cluster_ladder.update(cs.value, p);
            self.cluster_max = self.cluster_max.max(cs.value);
            record(&mut self.cluster_reached, cl, now);
            self.cluster.settle(output, now, p);
        }
    }

    fn of(&self, kind: Kind) -> impl Iterator<Item = &Tracked> {
        self.accounts.iter().filter(move |a| a.kind == kind)
    }
}

fn reasons(s: &Score) -> String {
    s.top(6)
        .iter()
        .map(|c| format!("{}={:.2}(+{:.3})", c.signal, c.value, c.contribution))
        .collect::<Vec<_>>()
        .join(" ")
}

fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

const HYDRA_MEMBERS: usize = 400;

#[test]
fn hydra_reaches_throttle_quickly() {
    let mut sim = Sim::new(1, T0);
    sim.add(Kind::Hydra, HYDRA_MEMBERS);
    sim.run(T0, T0 + 3 * HOUR);
    println!("hydra: {HYDRA_MEMBERS} members, one request a minute each in lockstep waves, 3 simulated hours");
    for level in &Level::ALL[1..] {
        let times: Vec<f64> = sim
            .of(Kind::Hydra)
            .filter_map(|a| a.reached[*level as usize].map(|t| mins(t - T0)))
            .collect();
        let reached = times.len();
        println!(
                "  member time to {:<8} reached by {reached}/{HYDRA_MEMBERS}: min {:.1} min, median {:.1}, max {:.1}",
                level.as_str(),
                percentile(times.clone(), 0.0),
                percentile(times.clone(), 0.5),
                percentile(times, 1.0)
            );
        let c = sim.cluster_reached[*level as usize]
            .map_or(f64::NAN, |t| (t - T0) as f64 / SECOND as f64);
        println!("  cluster time to {:<7} {c:.1} s", level.as_str());
    }
    let a = sim.of(Kind::Hydra).next().unwrap();
    println!(
        "  a member's last score {:.3}: {}",
        a.last_score.as_ref().unwrap().value,
        reasons(a.last_score.as_ref().unwrap())
    );
    let cs = sim.cluster.score(T0 + 3 * HOUR, &sim.policy);
    println!("  cluster's last score {:.3}: {}", cs.value, reasons(&cs));
    for a in sim.of(Kind::Hydra) {
        let t = a.reached[Level::Throttle as usize].expect("every member throttled");
        assert!(t - T0 <= 30 * MINUTE, "{}", mins(t - T0));
    }
    let t = sim.cluster_reached[Level::Throttle as usize].expect("cluster throttled");
    assert!(t - T0 <= 2 * MINUTE, "{}", mins(t - T0));
}

#[test]
fn load_balanced_hydra_is_caught_by_cluster_timing() {
    let mut sim = Sim::new(4, T0);
    sim.add(Kind::HydraSpread, 200);
    sim.run(T0, T0 + HOUR);
    let cs = sim.cluster.score(T0 + HOUR, &sim.policy);
    let value = |s: Signal| cs.contribution(s).map_or(f32::NAN, |c| c.value);
    let at = |l: Level| {
        sim.cluster_reached[l as usize].map_or(f64::NAN, |t| (t - T0) as f64 / SECOND as f64)
    };
    println!(
            "load-balanced hydra (200 members, one request every 300 ms round-robin): cluster lockstep {:.2}, \
             timing CV {:.3}; cluster time to slow {:.1} s, degrade {:.1} s, throttle {:.1} s, block {:.1} s",
            value(Signal::Lockstep),
            value(Signal::TimingRegularity),
            at(Level::Slow),
            at(Level::Degrade),
            at(Level::Throttle),
            at(Level::Block),
        );
    println!("  cluster score {:.3}: {}", cs.value, reasons(&cs));
    let member = |l: Level| {
        let t: Vec<f64> = sim
            .of(Kind::HydraSpread)
            .filter_map(|a| a.reached[l as usize].map(|t| mins(t - T0)))
            .collect();
        percentile(t, 0.5)
    };
    println!(
        "  member median time to throttle {:.0} min",
        member(Level::Throttle)
    );
    assert!(value(Signal::Lockstep) < 0.05);
    assert!(value(Signal::TimingRegularity) < 0.25);
    assert!(sim.cluster_reached[Level::Throttle as usize].is_some_and(|t| t - T0 <= 5 * MINUTE));
}

#[test]
fn legitimate_populations_stay_allow() {
    let mut sim = Sim::new(2, T0);
    let population = [
        (Kind::Chat, 5),
        (Kind::Nat, 3),
        (Kind::Batch, 2),
        (Kind::Eval, 2),
        (Kind::Power, 3),
    ];
    for (kind, count) in population {
        sim.add(kind, count);
    }
    sim.run(T0, T0 + 4 * HOUR);
    println!("legitimate accounts (all fresh, 4 simulated hours):");
    let mut total = 0;
    for kind in [Kind::Chat, Kind::Nat, Kind::Batch, Kind::Eval, Kind::Power] {
        let requests: u32 = sim.of(kind).map(|a| a.requests).sum();
        let actions: u32 = sim.of(kind).map(|a| a.actions).sum();
        let max = sim.of(kind).map(|a| a.max_score).fold(0.0f32, f32::max);
        let worst = sim
            .of(kind)
            .max_by(|a, b| a.max_score.total_cmp(&b.max_score))
            .and_then(|a| a.last_score.as_ref())
            .map(reasons)
            .unwrap_or_default();
        let n = sim.of(kind).count();
        println!(
            "  {kind:?} x{n}: {requests} requests, false actions {actions}, max score {max:.3}; \
                 last reasons of the worst: {worst}"
        );
        total += actions;
    }
    assert_eq!(total, 0);
}

#[test]
fn hydra_decays_back_to_allow_after_stopping() {
    let mut sim = Sim::new(3, T0);
    sim.add(Kind::Hydra, HYDRA_MEMBERS);
    let stop = T0 + 2 * HOUR;
    sim.run(T0, stop);
    let p = sim.policy.clone();
    let mut allow_at: Vec<Option<Nanos>> = vec![None; sim.accounts.len()];
    let mut cluster_allow = None;
    println!(
        "hydra stops after 2 h at level {} (cluster {}):",
        sim.accounts[0].ladder.level(),
        sim.cluster_ladder.level()
    );
    let mut t = stop;
    while t <= stop + 12 * HOUR {
        for (i, a) in sim.accounts.iter_mut().enumerate() {
            if a.ladder.update(a.sig.score(t, &p).value, &p) == Level::Allow
                && allow_at[i].is_none()
            {
                allow_at[i] = Some(t);
            }
        }
        let cs = sim.cluster.score(t, &p);
        let cl = sim.cluster_ladder.update(cs.value, &p);
        if (t - stop).is_multiple_of(15 * MINUTE) && (t - stop) <= 2 * HOUR {
            let ms = sim.accounts[0].sig.score(t, &p);
            println!(
                "  +{:>5.0} min: member score {:.3} (activity {:.2}, evidence {:.2}) {}; \
                     cluster {:.3} (activity {:.2}) {}",
                mins(t - stop),
                ms.value,
                ms.activity,
                ms.evidence,
                sim.accounts[0].ladder.level(),
                cs.value,
                cs.activity,
                cl
            );
        }
        if cl == Level::Allow && cluster_allow.is_none() {
            cluster_allow = Some(t);
        }
        t += MINUTE;
    }
    let back: Vec<f64> = allow_at
        .iter()
        .map(|t| t.map_or(f64::INFINITY, |t| mins(t - stop)))
        .collect();
    let cluster_back = cluster_allow.map_or(f64::INFINITY, |t| mins(t - stop));
    println!(
            "  back to allow after stopping: members median {:.0} min, max {:.0} min; cluster {:.0} min",
            percentile(back.clone(), 0.5),
            percentile(back.clone(), 1.0),
            cluster_back
        );
    assert!(back.iter().all(|&m| m <= 120.0));
    assert!(cluster_back <= 120.0);
}

/// A cluster of `members` accounts, each sending `per_hour` requests for `hours`, requests drawn by `draw`
/// (input tokens, output tokens); every response settled with its input, served in full or not.
fn yield_cluster(
    members: u64,
    per_hour: u64,
    hours: u64,
    seed: u64,
    full: bool,
    mut draw: impl FnMut(&mut StdRng) -> (u64, u64),
) -> (ClusterSignals, Nanos) {
    let p = ScorePolicy::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = ClusterSignals::new(T0);
    c.set_members(members as u32);
    let gap = HOUR / (members * per_hour);
    let end = T0 + hours * HOUR;
    let mut now = T0;
    let mut i = 0u64;
    while now < end {
        let (input, output) = draw(&mut rng);
        let r = RequestSignals {
            input_tokens: input,
            ..req(now)
        };
        c.observe_hits(i % members, &r, PhraseHits::default(), &p, TIER_RPM);
        c.settle_request(output, Some(input), now, &p, full);
        now += gap;
        i += 1;
    }
    (c, end)
}

/// What a campaign sends, with `cover` of its requests ordinary chat (short question, short answer) and the
/// rest short prompts asking for long answers.
fn campaign_request(cover: f64) -> impl FnMut(&mut StdRng) -> (u64, u64) {
    move |rng| {
        if rng.gen_bool(cover) {
            (rng.gen_range(10..160), rng.gen_range(80..=1200))
        } else {
            (rng.gen_range(100..250), rng.gen_range(1500..=6000))
        }
    }
}

/// The raw value of `signal` in the cluster's score at `now` (NaN when it does not apply).
fn value_of(c: &ClusterSignals, now: Nanos, signal: Signal) -> f32 {
    let s = c.score(now, &ScorePolicy::default());
    s.contribution(signal).map_or(f32::NAN, |c| c.value)
}

fn yield_of(c: &ClusterSignals, now: Nanos) -> f32 {
    value_of(c, now, Signal::YieldPerMember)
}

#[test]
fn yield_per_member_fires_on_a_campaign_cluster_not_on_its_honest_look_alikes() {
    let p = ScorePolicy::default();
    let ramp = p.ramps.get(Signal::YieldPerMember);
    // Many accounts on few addresses, 30 requests an hour each, 43 % cover traffic (the shape `redteam`
    // found that a corporate NAT's score let through).
    let (campaign, end) = yield_cluster(100, 30, 1, 1, true, campaign_request(0.43));
    // A corporate NAT or one app's users: ordinary rates, answers up to 3 000 tokens to prompts that carry
    // a system prompt (~280 tokens).
    let (nat, _) = yield_cluster(100, 8, 1, 2, true, |rng| {
        (rng.gen_range(200..360), rng.gen_range(100..=3000))
    });
    // Short questions and short answers at the same rate: chat users behind one address.
    let (chat, _) = yield_cluster(100, 30, 1, 3, true, |rng| {
        (rng.gen_range(10..160), rng.gen_range(80..=1500))
    });
    // Agents: as busy as the campaign and answers as long, to long contexts.
    let (agents, _) = yield_cluster(100, 30, 1, 4, true, |rng| {
        (rng.gen_range(700..1000), rng.gen_range(300..=4000))
    });
    let (c, n, ch, a) = (
        yield_of(&campaign, end),
        yield_of(&nat, end),
        yield_of(&chat, end),
        yield_of(&agents, end),
    );
    println!(
        "long-yield tokens per member-hour: campaign {c:.0}, NAT/app {n:.0}, chat {ch:.0}, agents {a:.0} \
         (ramp {} -> {})",
        ramp.off, ramp.full
    );
    assert!(c >= ramp.full, "campaign {c}");
    for (name, v) in [("nat", n), ("chat", ch), ("agents", a)] {
        assert!(v < ramp.off, "{name} {v}");
    }
}

#[test]
fn yield_per_member_stays_while_the_cluster_is_acted_on() {
    let p = ScorePolicy::default();
    let full = p.ramps.get(Signal::YieldPerMember).full;
    let (mut c, end) = yield_cluster(100, 30, 1, 5, true, campaign_request(0.3));
    assert!(yield_of(&c, end) >= full);
    // Degraded for the next 30 minutes: 512 tokens at most, settled as not served in full.
    let now = hold(&mut c, end, 6, 1);
    assert!(yield_of(&c, now) >= full, "{}", yield_of(&c, now));
}

/// Half an hour of a held campaign's requests (1 500, short prompts) from `now` on: every `settle_every`-th
/// answered degraded at 512 tokens (not served in full), the others refused (observed, never settled). Returns the
/// time after them.
fn hold(c: &mut ClusterSignals, mut now: Nanos, seed: u64, settle_every: u64) -> Nanos {
    let p = ScorePolicy::default();
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..1500u64 {
        let input = rng.gen_range(100..250);
        c.observe_hits(
            i % 100,
            &RequestSignals {
                input_tokens: input,
                ..req(now)
            },
            PhraseHits::default(),
            &p,
            TIER_RPM,
        );
        if i % settle_every == 0 {
            c.settle_request(512, Some(input), now, &p, false);
        }
        now += SECOND * 6 / 5;
    }
    now
}

fn ratio_of(c: &ClusterSignals, now: Nanos) -> f32 {
    value_of(c, now, Signal::OutputRatio)
}

/// Output ratio is output per answer served in full over input per request: the answers a policy clamps or
/// refuses are censored, not short. Before, a held campaign cluster's ratio fell with each clamped or refused
/// answer until its score dropped under the exit mark and the campaign was let go.
#[test]
fn output_ratio_stays_while_the_cluster_is_degraded_or_refused() {
    let p = ScorePolicy::default();
    let (mut c, end) = yield_cluster(100, 30, 1, 7, true, campaign_request(0.3));
    let before = ratio_of(&c, end);
    assert!(before >= p.ramps.get(Signal::OutputRatio).full, "{before}");
    // Half an hour held: every other request degraded to 512 tokens, the rest refused.
    let mut now = hold(&mut c, end, 8, 2);
    let after = ratio_of(&c, now);
    assert!(
        (after - before).abs() <= 0.1 * before,
        "ratio {before} -> {after} while acted on"
    );
    // Answers served in full that are short do lower it: the evidence still follows what the sender gets.
    for i in 0..1500u64 {
        c.observe_hits(i % 100, &req(now), PhraseHits::default(), &p, TIER_RPM);
        c.settle_request(100, Some(500), now, &p, true);
        now += SECOND * 6 / 5;
    }
    let short = ratio_of(&c, now);
    assert!(
        short < 0.5 * after,
        "ratio {after} -> {short} after short answers"
    );
}

#[test]
fn yield_per_member_needs_the_input_and_a_cluster() {
    let p = ScorePolicy::default();
    // Settled without the request's input (settle_as): no yield is counted.
    let mut c = ClusterSignals::new(T0);
    c.set_members(10);
    let mut a = AccountSignals::new(T0);
    for i in 0..300u64 {
        let now = T0 + i * 12 * SECOND;
        let r = RequestSignals {
            input_tokens: 100,
            ..req(now)
        };
        c.observe_hits(i % 10, &r, PhraseHits::default(), &p, TIER_RPM);
        c.settle_as(5_000, now, &p, true);
        a.observe_hits(&r, PhraseHits::default(), &p, TIER_RPM);
        a.settle_request(5_000, Some(100), now, &p, true);
    }
    assert_eq!(yield_of(&c, T0 + HOUR), 0.0);
    // An account is not scored on it (a cluster signal), whatever it settled.
    assert!(a
        .score(T0 + HOUR, &p)
        .contribution(Signal::YieldPerMember)
        .is_none());
}

/// One account sending `per_hour` requests an hour for `hours`, each `(input, output)` from `draw`, served in full.
fn yield_account(
    per_hour: u64,
    hours: u64,
    seed: u64,
    mut draw: impl FnMut(&mut StdRng) -> (u64, u64),
) -> (AccountSignals, Nanos) {
    let p = ScorePolicy::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut a = AccountSignals::new(T0);
    let gap = HOUR / per_hour;
    let end = T0 + hours * HOUR;
    let mut now = T0;
    while now < end {
        let (input, output) = draw(&mut rng);
        let r = RequestSignals {
            input_tokens: input,
            ..req(now)
        };
        a.observe_hits(&r, PhraseHits::default(), &p, TIER_RPM);
        a.settle_request(output, Some(input), now, &p, true);
        now += gap;
    }
    (a, end)
}

fn yield_per_hour_of(a: &AccountSignals, now: Nanos) -> f32 {
    let mut p = ScorePolicy::default();
    p.weights.set(Signal::YieldPerHour, 0.3);
    a.score(now, &p)
        .contribution(Signal::YieldPerHour)
        .map_or(f32::NAN, |c| c.value)
}

#[test]
fn yield_per_hour_fires_on_a_campaign_account_not_on_its_honest_look_alikes() {
    let p = ScorePolicy::default();
    let ramp = p.ramps.get(Signal::YieldPerHour);
    // `redteam`'s best evasion before this signal: one account of a small campaign, 13 requests an hour, 27 %
    // cover traffic, two hours.
    let (campaign, end) = yield_account(13, 2, 1, campaign_request(0.27));
    // Students asking for step-by-step answers, at the top of their rate: short prompts, answers up to 2 500.
    let (students, _) = yield_account(8, 2, 2, |rng| {
        (rng.gen_range(20..110), rng.gen_range(300..=2500))
    });
    // Chat users: short questions, short answers.
    let (chat, _) = yield_account(8, 2, 3, |rng| {
        (rng.gen_range(10..160), rng.gen_range(80..=1500))
    });
    // Agents: busier than the campaign and answers as long, to long contexts.
    let (agents, _) = yield_account(40, 2, 4, |rng| {
        (rng.gen_range(700..1000), rng.gen_range(300..=4000))
    });
    // Heavy long-answer users (reports, stories, whole files) at the top of their rate: short prompts, long
    // answers. The signal's nearest honest neighbour: only the rate tells them from the campaign.
    let (writers, _) = yield_account(10, 2, 5, |rng| {
        (rng.gen_range(30..200), rng.gen_range(800..=5000))
    });
    let (c, s, ch, a, w) = (
        yield_per_hour_of(&campaign, end),
        yield_per_hour_of(&students, end),
        yield_per_hour_of(&chat, end),
        yield_per_hour_of(&agents, end),
        yield_per_hour_of(&writers, end),
    );
    println!(
        "long-yield tokens per account-hour: campaign {c:.0}, students {s:.0}, chat {ch:.0}, agents {a:.0}, \
         long-answer users {w:.0} (ramp {} -> {})",
        ramp.off, ramp.full
    );
    let mid = (ramp.off + ramp.full) / 2.0;
    assert!(c >= mid, "campaign {c}");
    for (name, v) in [("students", s), ("chat", ch), ("agents", a)] {
        assert!(v < ramp.off, "{name} {v}");
    }
    // Above the ramp's foot too, and not far below the campaign: why the weight ships at 0 (docs/score.md).
    assert!(w > ramp.off && w < c, "long-answer users {w}, campaign {c}");
}

#[test]
fn yield_per_hour_is_an_account_signal_and_raises_its_score() {
    // Off by default (docs/score.md): switched on here.
    let mut p = ScorePolicy::default();
    p.weights.set(Signal::YieldPerHour, 0.3);
    let (a, end) = yield_account(13, 2, 1, campaign_request(0.27));
    let with = a.score(end, &p);
    let yield_points = with
        .contribution(Signal::YieldPerHour)
        .map_or(0.0, |c| c.contribution);
    assert!(yield_points > 0.0, "{with:?}");
    let mut off = p.clone();
    off.weights.set(Signal::YieldPerHour, 0.0);
    assert!(a.score(end, &off).value + yield_points * 0.99 <= with.value);
    // A cluster is not scored on it: it has the per-member form.
    let (c, end) = yield_cluster(10, 13, 2, 1, true, campaign_request(0.27));
    assert!(c
        .score(end, &p)
        .contribution(Signal::YieldPerHour)
        .is_none());
    assert!(c
        .score(end, &p)
        .contribution(Signal::YieldPerMember)
        .is_some());
}

/// A cluster of 60 members at 30 requests an hour each that sends `before` (input and output tokens) for
/// `warm` and then `after`: each request's time after the switch and the cluster's score then, for two hours.
fn switching_cluster(
    p: &ScorePolicy,
    warm: Nanos,
    seed: u64,
    mut before: impl FnMut(&mut StdRng) -> (u64, u64),
    mut after: impl FnMut(&mut StdRng) -> (u64, u64),
) -> Vec<(Nanos, f32)> {
    let members = 60u64;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = ClusterSignals::new(T0);
    c.set_members(members as u32);
    let gap = HOUR / (members * 30);
    let switch = T0 + warm;
    let mut out = Vec::new();
    let (mut now, mut i) = (T0, 0u64);
    while now < switch + 2 * HOUR {
        let (input, output) = if now < switch {
            before(&mut rng)
        } else {
            after(&mut rng)
        };
        let r = RequestSignals {
            input_tokens: input,
            ..req(now)
        };
        c.observe_hits(i % members, &r, PhraseHits::default(), p, TIER_RPM);
        c.settle_request(output, Some(input), now, p, true);
        if now >= switch {
            out.push((now - switch, c.score(now, p).value));
        }
        now += gap;
        i += 1;
    }
    out
}

/// The default policy, and the same without an onset window.
fn onset_on_off() -> (ScorePolicy, ScorePolicy) {
    let off = ScorePolicy {
        onset_half_life: 0,
        ..ScorePolicy::default()
    };
    (ScorePolicy::default(), off)
}

/// Chat: short questions, short answers.
fn chat_request(rng: &mut StdRng) -> (u64, u64) {
    (rng.gen_range(10..160), rng.gen_range(80..=1200))
}

#[test]
fn a_warm_up_of_benign_traffic_does_not_hold_a_cluster_down_for_an_hour() {
    let (on, off) = onset_on_off();
    let slow = on.thresholds.slow.enter;
    let first = |scores: &[(Nanos, f32)]| scores.iter().find(|(_, v)| *v >= slow).map(|(t, _)| *t);
    // Thirty minutes of chat, then every request a short prompt for a long answer.
    let run =
        |p: &ScorePolicy| switching_cluster(p, 30 * MINUTE, 7, chat_request, campaign_request(0.0));
    let (with, without) = (first(&run(&on)), first(&run(&off)));
    println!(
        "minutes from the switch to Slow: onset window {:?}, hour window only {:?}",
        with.map(mins),
        without.map(mins)
    );
    let (Some(with), Some(without)) = (with, without) else {
        panic!("both reach Slow: {with:?} {without:?}");
    };
    assert!(
        with * 3 <= without * 2,
        "{} vs {} minutes",
        mins(with),
        mins(without)
    );
    // Without a warm-up the hour window is as quick: the onset window only takes the old traffic away.
    let fresh = |p: &ScorePolicy| {
        first(&switching_cluster(
            p,
            0,
            7,
            chat_request,
            campaign_request(0.0),
        ))
    };
    let (a, b) = (fresh(&on).unwrap(), fresh(&off).unwrap());
    assert!(
        a.abs_diff(b) <= 2 * MINUTE,
        "{} vs {} minutes",
        mins(a),
        mins(b)
    );
}

#[test]
fn a_steady_honest_cluster_reads_the_same_in_its_onset_window() {
    let (on, off) = onset_on_off();
    // A corporate NAT or one app's users (as in the yield test above), the same for two and a half hours; and
    // chat users, some of whom paste documents for long summaries.
    let nat = |rng: &mut StdRng| (rng.gen_range(200..360), rng.gen_range(100..=3000));
    let mixed = |rng: &mut StdRng| {
        if rng.gen_bool(0.1) {
            (rng.gen_range(2000..6000), rng.gen_range(300..=2500))
        } else {
            chat_request(rng)
        }
    };
    for (name, seed) in [("nat", 11u64), ("chat", 12)] {
        let run = |p: &ScorePolicy| match name {
            "nat" => switching_cluster(p, 30 * MINUTE, seed, nat, nat),
            _ => switching_cluster(p, 30 * MINUTE, seed, mixed, mixed),
        };
        let (with, without) = (run(&on), run(&off));
        let top = |s: &[(Nanos, f32)]| s.iter().map(|x| x.1).fold(0.0f32, f32::max);
        let lift = with
            .iter()
            .zip(&without)
            .map(|(a, b)| a.1 - b.1)
            .fold(0.0f32, f32::max);
        println!("{name}: highest score {:.3} (hour window only {:.3}), most the onset window adds {lift:.3}",
            top(&with), top(&without));
        assert!(top(&with) < on.thresholds.slow.exit, "{name}");
        assert!(lift <= 0.05, "{name}: {lift}");
    }
}
