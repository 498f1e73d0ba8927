//! The prompt step (`crate::prompt`): a prompt's features walked whole, and
//! through the prompt cache — a conversation's next turn walked past the
//! history it sends again, a new conversation walked past an app's system
//! prompt seen before, a prompt sent again, and a prompt never seen (what
//! the cache costs when it cannot help).
//!
//!     cargo bench --bench prompt

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use distill_guard::prompt::{cached_features, features, PhraseMatcher, Wanted};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The account every request of these benches comes from (the cache keeps each account's walks apart).
const ACCOUNT: u64 = 7;

/// About `bytes` of prose-like text, varied by `seed`.
fn text(bytes: usize, seed: usize) -> String {
    const WORDS: &[&str] = &[
        "the",
        "model",
        "should",
        "explain",
        "every",
        "step",
        "of",
        "its",
        "reasoning",
        "about",
        "distributed",
        "systems",
        "with",
        "latency",
        "budgets",
        "and",
        "error",
        "handling",
        "in",
        "rust",
        "code",
        "that",
        "reads",
        "files",
        "from",
        "disk",
    ];
    let mut out = String::with_capacity(bytes + 16);
    let mut k = seed;
    while out.len() < bytes {
        k = k
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push_str(WORDS[(k >> 33) % WORDS.len()]);
        out.push(if (k >> 20).is_multiple_of(11) {
            '\n'
        } else {
            ' '
        });
    }
    out
}

/// A conversation's turn: `history`, a join, an answer and a question.
fn turn(history: &str, seed: usize) -> (String, Vec<usize>) {
    let mut t = history.to_owned();
    let first = t.len();
    t.push('\n');
    t.push_str(&text(300, seed));
    let second = t.len();
    t.push('\n');
    t.push_str(&text(200, seed + 1));
    (t, vec![first, second])
}

fn benches(c: &mut Criterion) {
    let matcher = PhraseMatcher::with_defaults().unwrap();
    let mut g = c.benchmark_group("prompt");
    for size in [2 * 1024, 32 * 1024] {
        let kib = size / 1024;
        let history = text(size, 7);
        let (next, cuts) = turn(&history, 11);
        g.bench_function(format!("features, {kib} KiB turn, walked whole"), |b| {
            b.iter(|| features(&matcher, black_box(&next), Wanted::ALL))
        });
        // The history was the last request: its walk is in the cache. Each
        // iteration walks a new turn past it (new, so that the turn is not
        // found whole; the turns are made, and the history's entry put back
        // should the turns have pushed it out, outside the timing).
        cached_features(&matcher, &history, [], Wanted::ALL, ACCOUNT);
        let cache = matcher.cache();
        // The key of a text's whole walk, and the walk (stored).
        let entry = |text: &str| {
            let (_, key) = cache
                .prefixes(text, [], Wanted::ALL, ACCOUNT)
                .iter()
                .next()
                .unwrap();
            (key, cache.get(key).unwrap())
        };
        let (key, walked) = entry(&history);
        let mut seed = 100;
        g.bench_function(format!("features, {kib} KiB turn, history cached"), |b| {
            b.iter_batched(
                || {
                    cache.put(key, walked);
                    seed += 2;
                    turn(&history, seed)
                },
                |(t, cuts)| cached_features(&matcher, black_box(&t), cuts, Wanted::ALL, ACCOUNT),
                BatchSize::NumIterations(256),
            )
        });
        // A new conversation: an app's system prompt (this size, seen in an
        // earlier conversation's first request) and a new question.
        let system = text(size, 3);
        cached_features(
            &matcher,
            &format!("{system}\nthe first question"),
            [system.len()],
            Wanted::ALL,
            ACCOUNT,
        );
        let (sys_key, sys_walked) = entry(&system);
        g.bench_function(
            format!("features, {kib} KiB system prompt, new conversation"),
            |b| {
                b.iter_batched(
                    || {
                        cache.put(sys_key, sys_walked);
                        seed += 2;
                        format!("{system}\n{}", text(300, seed))
                    },
                    |t| {
                        cached_features(
                            &matcher,
                            black_box(&t),
                            [system.len()],
                            Wanted::ALL,
                            ACCOUNT,
                        )
                    },
                    BatchSize::NumIterations(256),
                )
            },
        );
        cached_features(&matcher, &next, cuts.iter().copied(), Wanted::ALL, ACCOUNT);
        g.bench_function(format!("features, {kib} KiB turn, sent again"), |b| {
            b.iter(|| {
                cached_features(
                    &matcher,
                    black_box(&next),
                    cuts.iter().copied(),
                    Wanted::ALL,
                    ACCOUNT,
                )
            })
        });
        // Never seen (hash, walk whole, store), and the same texts walked
        // whole without the cache.
        let mut unseen = 1_000;
        g.bench_function(format!("features, {kib} KiB, never seen"), |b| {
            b.iter_batched(
                || {
                    unseen += 1;
                    text(size, unseen)
                },
                |t| cached_features(&matcher, black_box(&t), [], Wanted::ALL, ACCOUNT),
                BatchSize::NumIterations(256),
            )
        });
        // Never seen, with a join in the middle (a conversation's first
        // request whose system prompt is new too): walked in two parts,
        // both kept.
        g.bench_function(format!("features, {kib} KiB, never seen, one join"), |b| {
            b.iter_batched(
                || {
                    unseen += 1;
                    let mut t = text(size / 2, unseen);
                    let cut = t.len();
                    t.push('\n');
                    t.push_str(&text(size / 2, unseen + 500_000));
                    (t, cut)
                },
                |(t, cut)| cached_features(&matcher, black_box(&t), [cut], Wanted::ALL, ACCOUNT),
                BatchSize::NumIterations(256),
            )
        });
        g.bench_function(format!("features, {kib} KiB, walked whole"), |b| {
            b.iter_batched(
                || {
                    unseen += 1;
                    text(size, unseen)
                },
                |t| features(&matcher, black_box(&t), Wanted::ALL),
                BatchSize::NumIterations(256),
            )
        });
        // The miss's cost against a whole walk, interleaved (the two timed
        // in turn, which goes first alternating, so that the machine's drift
        // falls on both): criterion reports the first's time, and the ratio
        // of the two sums is printed. The control times two walks without
        // the cache the same way: what the method reads when there is no
        // difference.
        for (name, through_cache) in [("miss", true), ("control", false)] {
            let (mut a, mut w) = (Duration::ZERO, Duration::ZERO);
            g.bench_function(format!("features, {kib} KiB, {name}, interleaved"), |b| {
                b.iter_custom(|iters| {
                    let before = a;
                    for i in 0..iters {
                        unseen += 2;
                        let (t1, t2) = (text(size, unseen), text(size, unseen + 1));
                        let timed = |f: &dyn Fn()| {
                            let start = Instant::now();
                            f();
                            start.elapsed()
                        };
                        let one = || {
                            if through_cache {
                                black_box(cached_features(
                                    &matcher,
                                    black_box(&t1),
                                    [],
                                    Wanted::ALL,
                                    ACCOUNT,
                                ));
                            } else {
                                black_box(features(&matcher, black_box(&t1), Wanted::ALL));
                            }
                        };
                        let other = || {
                            black_box(features(&matcher, black_box(&t2), Wanted::ALL));
                        };
                        if i % 2 == 0 {
                            a += timed(&one);
                            w += timed(&other);
                        } else {
                            w += timed(&other);
                            a += timed(&one);
                        }
                    }
                    a - before
                })
            });
            eprintln!(
                "prompt/features, {kib} KiB, {name}: {:.3} x a whole walk timed in turn",
                a.as_secs_f64() / w.as_secs_f64()
            );
        }
    }
    g.finish();
}

criterion_group!(group, benches);
criterion_main!(group);
