//! Behavioural score (engine step "score"): per-account and per-cluster distillation signals over decaying windows,
//! a weighted explainable score, and an action ladder with hysteresis.
//!
//! Pure: no I/O, no clock reads (time comes in as `now`), no randomness. [`AccountSignals`], [`ClusterSignals`] and
//! [`LadderState`] are small `Copy` values the caller keeps beside the account's budget cells; [`ScorePolicy`] is
//! built once (and on reload) and shared. Prompts arrive as phrase hits ([`PhraseHits`]), never as text. The
//! specification — each signal's formula, the score, the ladder, the defaults and why, phrase matching, memory and
//! limits — is `docs/score.md`.

use std::fmt;

use super::hash::splitmix64;

/// Nanoseconds on the engine's clock (the same type as the engine's `gcra::Nanos`).
pub use super::gcra::Nanos;

const SECOND: Nanos = 1_000_000_000;
const MINUTE: Nanos = 60 * SECOND;
const HOUR: Nanos = 60 * MINUTE;
const DAY: Nanos = 24 * HOUR;

/// Below this decayed gap weight the timing CV is not measured (reads 1.0, "as random as Poisson").
const MIN_GAPS: f32 = 3.0;
/// Gaps' mean is taken as at least this (seconds), so a burst of simultaneous requests has a finite CV.
const MIN_GAP_MEAN_SECS: f32 = 0.001;
/// A window is never taken as younger than this when a rate is corrected for its age.
const MIN_RATE_AGE: Nanos = MINUTE;
/// [`Signal::YieldPerMember`]'s rate per member is never taken over a window younger than this.
const YIELD_MIN_AGE: Nanos = 10 * MINUTE;
/// Bits of the breadth sketches (fill keys and template keys), two `u64` words each.
const BREADTH_BITS: u32 = 128;
/// Bits of a lockstep second's distinct-member sketch.
const LOCK_BITS: u32 = 256;
/// Seconds kept in the lockstep ring.
const LOCK_RING: usize = 4;
/// Phrase lists beyond this many are refused (a request's hits are a `u32` bitset).
pub const MAX_PHRASE_LISTS: usize = 32;

mod ladder;
mod policy;
mod signals;
mod state;
mod windows;

pub use ladder::*;
pub use policy::*;
pub use signals::*;
pub use state::*;
use windows::*;

#[cfg(test)]
pub(crate) mod tests;
