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
    let message = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/bench/fixtures/messages.json"
    ))
    .expect("../shared/bench/fixtures beside the project");

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
    // A whole JSON response (peers.sh's `messages`): usage read from it as it passes.
    g.bench_function("meter messages.json (one frame)", |b| {
        b.iter(|| {
            let mut m = UsageMeter::new(ApiKind::Anthropic, false);
            m.feed(black_box(&message));
            m.finish()
        })
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
    g.bench_function("meter stream.sse (20 events, one frame)", |b| {
        b.iter(|| {
            let mut m = UsageMeter::new(ApiKind::Anthropic, true);
            m.feed(black_box(&sse));
            m.finish()
        })
    });
    // One text delta per frame, as a model streams them: the per-event cost.
    let delta_anthropic: &[u8] = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" streamed reply\"}}\n\n";
    let delta_chat: &[u8] = b"data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" assist\"},\"finish_reason\":null}],\"usage\":null}\n\n";
    let mut anthropic = UsageMeter::new(ApiKind::Anthropic, true);
    g.bench_function("meter one text-delta event, Anthropic", |b| {
        b.iter(|| anthropic.feed(black_box(delta_anthropic)))
    });
    let mut chat = UsageMeter::new(ApiKind::OpenAiChat, true);
    g.bench_function("meter one text-delta event, chat completions", |b| {
        b.iter(|| chat.feed(black_box(delta_chat)))
    });
    g.finish();
}

criterion_group!(group, benches);
criterion_main!(group);
