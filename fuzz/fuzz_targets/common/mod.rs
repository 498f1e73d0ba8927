//! Shared helper: split a fuzz input into a chunk-size plan and the data.
//!
//! Input layout: `[n][s_1 .. s_n][data ...]` with `n = input[0] % 8`.
//! With `n == 0` the data is fed in one call. Otherwise chunk `i` has
//! `s_(i mod n) + 1` bytes (1..=256), cycling through the sizes, so the
//! fuzzer controls where chunk boundaries fall.

/// Splits `input` into its chunk plan and its data.
pub fn split_plan(input: &[u8]) -> (&[u8], &[u8]) {
    let Some((&first, rest)) = input.split_first() else {
        return (&[], &[]);
    };
    let n = usize::from(first % 8).min(rest.len());
    rest.split_at(n)
}

/// Calls `feed` with consecutive chunks of `data` following `plan`.
pub fn feed_chunks(plan: &[u8], data: &[u8], mut feed: impl FnMut(&[u8])) {
    if plan.is_empty() {
        feed(data);
        return;
    }
    let mut rest = data;
    let mut i = 0usize;
    while !rest.is_empty() {
        let size = (usize::from(plan[i % plan.len()]) + 1).min(rest.len());
        let (chunk, tail) = rest.split_at(size);
        feed(chunk);
        rest = tail;
        i += 1;
    }
}
