//! LLM API hot paths: inspecting a request body (2 KB prompt) and metering
//! a response stream (the benchmark fixture's 20 SSE events) as it passes.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use distill_guard::api::estimate::estimate_tokens;
use distill_guard::api::inspect::inspect;
use distill_guard::api::meter::UsageMeter;
use distill_guard::api::ApiKind;
use std::hint::black_box;

fn prompt2k() -> String {
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
        "cluster",
        "account",
        "token",
        "stream",
        "request",
        "policy",
    ];
    let mut out = Vec::new();
    let mut n = 0;
    while n < 2048 {
        let w = words[(out.len() * 7) % words.len()];
        n += w.len() + 1;
        out.push(w);
    }
    out.join(" ")
}

fn benches(c: &mut Criterion) {
    let prompt = prompt2k();
    let body = format!(
        r#"{{"model":"claude-3-5-sonnet-20241022","max_tokens":256,"messages":[{{"role":"user","content":"{prompt}"}}]}}"#
    );
    let sse = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/bench/fixtures/stream.sse"
    ))
    .expect("../shared/bench/fixtures beside the project");
    let events: Vec<&[u8]> = sse.split_inclusive(|b| *b == b'\n').collect();

    let mut g = c.benchmark_group("api");
    g.bench_function("serde_json::Value parse (baseline)", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(body.as_bytes())).unwrap())
    });
    g.bench_function("inspect 2 KB prompt", |b| {
        b.iter(|| inspect(ApiKind::Anthropic, black_box(body.as_bytes())))
    });
    g.bench_function("estimate_tokens 2 KB", |b| {
        b.iter(|| estimate_tokens(black_box(&prompt)))
    });
    g.bench_function("meter stream.sse (20 events, one frame per line)", |b| {
        b.iter(|| {
            let mut m = UsageMeter::new(ApiKind::Anthropic, true);
            for e in &events {
                m.feed(black_box(e));
            }
            m.finish()
        })
    });
    g.finish();
}

criterion_group!(group, benches);
criterion_main!(group);
