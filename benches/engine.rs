//! The engine's decision with clusters on: 100k tracked accounts and a full
//! attribute index (~1M entries), `decide` + `settle` per request with the
//! prompt signature computed beforehand (measured separately on a 2 KB
//! prompt). Prints the memory held per tracked account.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use distill_guard::engine::link::AttrKind;
use distill_guard::engine::signature::{self, INDEX_KEYS};
use distill_guard::engine::{
    attr_hash, AccountId, Engine, Observation, ObservedAttrs, Policy, Usage, SECOND,
};
use std::hint::black_box;

#[path = "common/mod.rs"]
mod common;
use common::RAISED;

const ACCOUNTS: u64 = 100_000;

fn policy() -> Policy {
    let c = distill_guard::config::parse(
        std::path::Path::new("bench.toml"),
        &format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n{RAISED}"
        ),
    )
    .unwrap();
    c.policy()
}

fn prompt(i: u64) -> String {
    format!(
        "Imagine and articulate the internal reasoning behind the completed response below, and write \
         it out step by step. Question {i}: what is the {} of {}? Answer: it is {}.",
        i * 7919 % 1000,
        i % 97,
        i * 31
    )
}

fn attrs(i: u64, keys: [u64; INDEX_KEYS]) -> ObservedAttrs {
    let h = |k, v: String| Some(attr_hash(k, v.as_bytes()));
    ObservedAttrs {
        ja4: h(AttrKind::Ja4, format!("ja4-{}", i % 50)),
        http: h(AttrKind::Http, format!("http-{}", i % 30)),
        h2: None,
        ip_prefix: h(
            AttrKind::IpPrefix,
            format!("10.{}.{}.0/24", i % 256, i / 256 % 256),
        ),
        asn: h(AttrKind::Asn, format!("{}", 64_500 + i % 300)),
        prompt: Some(keys),
    }
}

/// One request through the engine: its decision and, when it is admitted,
/// its settlement with `input_tokens` and 200 output tokens.
fn decide_settle(engine: &Engine, o: &Observation, input_tokens: u64, now: u64) {
    let d = engine.decide(black_box(o), now);
    if let Some(t) = d.verdict.into_ticket() {
        engine.settle(
            &t,
            Usage {
                input_tokens: Some(input_tokens),
                output_tokens: 200,
            },
            now,
        );
    }
}

fn benches(c: &mut Criterion) {
    let engine = Engine::new(policy());
    let mut now = 1000 * SECOND;
    // Fill: every account once with its own prompt (≈ 25 index keys each).
    let mut sample = Vec::new();
    for i in 0..ACCOUNTS {
        let sig = signature::signature(&prompt(i));
        let o = Observation {
            account: AccountId(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            anonymous: false,
            input_tokens: 100,
            attrs: attrs(i, sig.index_keys()),
            request: Default::default(),
            account_age: None,
        };
        now += SECOND / 1000;
        if let Some(t) = engine.decide(&o, now).verdict.into_ticket() {
            engine.settle(&t, Usage::default(), now);
        }
        if i % 97 == 0 {
            sample.push(o);
        }
    }
    let stats = engine.link_stats().unwrap();
    let accounts = engine.tracked_accounts();
    let account_bytes = accounts
        * (std::mem::size_of::<(u64, distill_guard::engine::accounts::AccountState)>() + 16);
    eprintln!(
        "engine: {accounts} accounts, {} index keys, {} index entries, {} linked accounts; \
         linker ≈ {} B, account states ≈ {} B → ≈ {} B per tracked account",
        stats.values,
        stats.entries,
        stats.accounts,
        stats.approx_bytes,
        account_bytes,
        (stats.approx_bytes + account_bytes) / accounts.max(1)
    );

    let mut g = c.benchmark_group("engine");
    let mut i = 0usize;
    g.bench_function(
        "decide+settle, 100k accounts, full index (no signature)",
        |b| {
            b.iter(|| {
                i = (i + 1) % sample.len();
                now += 1000;
                decide_settle(&engine, &sample[i], 100, now);
            })
        },
    );
    // The same decision with behaviour detection on a 2 KB prompt (phrase
    // scan, account and cluster signals, score, ladder); the signature's index
    // keys are computed beforehand as the proxy does.
    let p2k_prompt: String = {
        let mut out = String::from(
            "Imagine and articulate the internal reasoning behind the completed response below. ",
        );
        let words = [
            "the",
            "model",
            "reason",
            "about",
            "a",
            "distributed",
            "system",
            "with",
        ];
        let mut k = 0;
        while out.len() < 2048 {
            out.push_str(words[k * 7 % words.len()]);
            out.push(' ');
            k += 1;
        }
        out
    };
    let keys = signature::signature(&p2k_prompt).index_keys();
    // The prompt step's phrase scan runs in every iteration, as the proxy
    // runs it on every request before the engine.
    let matcher = distill_guard::prompt::PhraseMatcher::with_defaults()
        .expect("the default phrase lists compile");
    let mut detect_sample: Vec<Observation> = sample
        .iter()
        .map(|o| Observation {
            attrs: ObservedAttrs {
                prompt: Some(keys),
                ..o.attrs
            },
            request: distill_guard::engine::RequestFacts {
                max_output_tokens: Some(4096),
                model: Some("claude-sonnet-4-5".into()),
                fill_key: Some(o.account.0),
                ..Default::default()
            },
            ..o.clone()
        })
        .collect();
    g.bench_function(
        "decide+settle with detection, 2 KB prompt (no signature)",
        |b| {
            b.iter(|| {
                i = (i + 1) % detect_sample.len();
                now += 1000;
                detect_sample[i].request.phrase_hits = matcher.scan(black_box(&p2k_prompt));
                decide_settle(&engine, &detect_sample[i], 500, now);
            })
        },
    );
    // The same, but the request's signature keys differ from the account's
    // last request on every request (4 096 key sets of distinct 2 KB
    // prompts, rotated): no request takes the linker's shortcuts for an
    // account that sends the same prompt again (docs/link.md, "Accounts
    // already linked"), so every one gathers candidates in full. The text
    // scanned for phrases is the prompt above.
    let vocabulary = [
        "cache", "queue", "shard", "replica", "leader", "quorum", "clock", "drift", "write",
        "read", "lease", "epoch", "vote", "term", "log", "snapshot", "commit", "abort", "retry",
        "timeout",
    ];
    let key_sets: Vec<[u64; INDEX_KEYS]> = (0..4096u64)
        .map(|k| {
            let mut out = String::from(
                "Imagine and articulate the internal reasoning behind the completed response below. ",
            );
            let mut x = k.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            while out.len() < 2048 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                out.push_str(vocabulary[(x % vocabulary.len() as u64) as usize]);
                out.push(' ');
            }
            signature::signature(&out).index_keys()
        })
        .collect();
    let mut turn = 0usize;
    g.bench_function(
        "decide+settle with detection, 2 KB prompt, keys new on every request",
        |b| {
            b.iter(|| {
                i = (i + 1) % detect_sample.len();
                turn = (turn + 1) % key_sets.len();
                now += 1000;
                let o = &mut detect_sample[i];
                o.attrs.prompt = Some(key_sets[turn]);
                o.request.phrase_hits = matcher.scan(black_box(&p2k_prompt));
                decide_settle(&engine, o, 500, now);
            })
        },
    );
    let p2k: String = {
        let words = [
            "the",
            "model",
            "reason",
            "about",
            "a",
            "distributed",
            "system",
            "with",
            "latency",
            "budget",
        ];
        let mut out = String::from("You are an expert. Explain step by step: ");
        let mut k = 0;
        while out.len() < 2048 {
            out.push_str(words[k * 7 % words.len()]);
            out.push(' ');
            k += 1;
        }
        out
    };
    // The idle-state sweep: the proxy runs it once per 10 s of engine time
    // on its housekeeping thread; replay and simulation run it inline on
    // the request that finds it due. It walks every tracked account.
    g.bench_function("maintain: sweep of 100k tracked accounts", |b| {
        b.iter(|| engine.maintain(black_box(now)))
    });
    g.bench_function("prompt signature, 2 KB", |b| {
        b.iter(|| signature::signature(black_box(&p2k)))
    });
    // A chat turn of five words (peers.sh's messages scenario): few
    // shingles, so most body bins are filled by densification.
    g.bench_function("prompt signature, 5 words", |b| {
        b.iter(|| signature::signature(black_box("Say hello in five words.")))
    });
    // The prompt step's phrase scan alone (inside the detection case above).
    g.bench_function("phrase scan, 2 KB", |b| {
        b.iter(|| matcher.scan(black_box(&p2k_prompt)))
    });
    // As the proxy signs: the default phrase lists' shingles left out.
    let stock = matcher.stock_shingles();
    g.bench_function("prompt signature, 2 KB, stock phrases left out", |b| {
        b.iter(|| signature::signature_with(black_box(&p2k), stock))
    });
    g.finish();
}

criterion_group!(group, benches);
criterion_main!(group);
