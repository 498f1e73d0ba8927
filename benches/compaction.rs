//! How long the link index's spill compaction holds the linker's lock at the shipped `max_index_values` (2^22
//! keys in a table of 2^23 slots): all at once, as replay and simulation run it, against one step at a time, as
//! the proxy's housekeeping runs it (`Linker::compact_step`, every 100 ms). Every request that links waits on
//! that lock, on every worker.
//!
//! The index is filled through `Linker::observe` with the reference policy's prompt rule: three accounts on each
//! group of 64 prompt keys (every key's list spills two entries into a block of the arena), then six more on every
//! other group (those lists move to vectors of their own, and their blocks are free: half the arena). The entries
//! cap is raised past the 25 M entries this makes, so that nothing is evicted while filling.
//!
//! `cargo bench --bench compaction` (about a minute: the index is filled twice).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use distill_guard::engine::link::{Attributes, LinkPolicy, Linker};

/// Prompt keys per request (the most the linker uses).
const KEYS: u64 = 64;
const VALUES: u64 = 1 << 22;

fn filled() -> Linker {
    let mut linker = Linker::new(LinkPolicy {
        max_values: VALUES as usize,
        max_entries: 1 << 26,
        ..LinkPolicy::default()
    });
    let groups = VALUES / KEYS;
    let keys = |g: u64| -> Vec<u64> {
        (0..KEYS)
            .map(|j| ((g * KEYS + j + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
            .collect()
    };
    let mut now = 1_000_000_000_000u64;
    let mut send = |linker: &mut Linker, g: u64, account: u64| {
        now += 1_000;
        let prompt = keys(g);
        let attrs = Attributes {
            prompt: &prompt,
            ..Attributes::default()
        };
        linker.observe(g * 16 + account, &attrs, now);
    };
    for g in 0..groups {
        for a in 0..3 {
            send(&mut linker, g, a);
        }
    }
    for g in (0..groups).step_by(2) {
        for a in 3..9 {
            send(&mut linker, g, a);
        }
    }
    linker
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let t = Instant::now();
    let mut linker = filled();
    let stats = linker.stats();
    eprintln!(
        "filled in {:.1} s: {} keys, {} entries, linker ≈ {} MB",
        t.elapsed().as_secs_f64(),
        stats.values,
        stats.entries,
        stats.approx_bytes >> 20
    );

    // All at once, the arena it leaves dropped inside (as replay and simulation do).
    let t = Instant::now();
    linker.compact();
    linker.finish_compaction();
    let whole = t.elapsed();
    let after = linker.stats().approx_bytes;
    eprintln!(
        "all at once: {:.1} ms with the lock held; linker ≈ {} → {} MB",
        ms(whole),
        stats.approx_bytes >> 20,
        after >> 20
    );
    drop(linker);

    // In steps: each step's time is the lock's; the arena left is dropped after it.
    let mut linker = filled();
    let t = Instant::now();
    linker.compact();
    let begin = t.elapsed();
    let mut steps = Vec::new();
    let mut dropped = Duration::ZERO;
    loop {
        let t = Instant::now();
        let step = linker.compact_step();
        steps.push(t.elapsed());
        let more = step.more;
        let t = Instant::now();
        drop(step);
        dropped = dropped.max(t.elapsed());
        if !more {
            break;
        }
    }
    let total: Duration = steps.iter().sum();
    let mut sorted = steps.clone();
    sorted.sort();
    let at = |q: f64| ms(sorted[((sorted.len() - 1) as f64 * q) as usize]);
    eprintln!(
        "in steps: begin {:.3} ms; {} steps, median {:.3} ms, p99 {:.3} ms, max {:.3} ms, sum {:.1} ms; \
         the arena left dropped after the last, {:.1} ms; linker ≈ {} MB",
        ms(begin),
        steps.len(),
        at(0.5),
        at(0.99),
        at(1.0),
        ms(total),
        ms(dropped),
        linker.stats().approx_bytes >> 20
    );
    println!(
        "compaction: all at once {:.1} ms; step median {:.3} ms, max {:.3} ms ({} steps)",
        ms(whole),
        at(0.5),
        at(1.0),
        steps.len()
    );
}
