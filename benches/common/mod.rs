//! What the benches share.

/// Budgets out of reach so that every request is admitted and every check
/// still runs (BENCHMARKS.md's `DG_EXTRA_TOML`).
pub(crate) const RAISED: &str = r#"
[tiers.default]
requests_per_minute = 100000000
burst_requests = 100000000
input_tokens_per_minute = 100000000000
output_tokens_per_minute = 100000000000
max_concurrent = 100000
[cluster.budget]
requests_per_minute = 100000000
burst_requests = 100000000
input_tokens_per_minute = 100000000000
output_tokens_per_minute = 100000000000
max_concurrent = 100000
"#;
