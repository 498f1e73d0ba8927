//! Behavioural score (engine step "score"): per-account and per-cluster distillation signals over decaying windows,
//! a weighted explainable score, and an action ladder with hysteresis.
//!
//! Budgets stop volume and the linker finds the hydra; this module says how much a traffic source *behaves* like a
//! distillation campaign. Published accounts of the 2025–26 campaigns describe prompts built to elicit chain of
//! thought ("imagine and articulate the internal reasoning behind a completed response and write it out step by
//! step"), rubric-grading prompts, reconstructed tool-use trajectories, one template filled thousands of times across
//! many accounts, synchronised or load-balanced timing, `max_tokens` pinned at the model's ceiling, and fresh
//! accounts that move to a new model within a day of its release. Each of these is a [`Signal`] below.
//!
//! The module is pure: no I/O, no clock reads (time comes in as `now`, nanoseconds on the engine's clock), no
//! randomness, no global state, no panics. The same calls in the same order give the same scores on every run and
//! every replica. [`AccountSignals`], [`ClusterSignals`] and [`LadderState`] are small `Copy` values that the caller
//! keeps in its own store, beside the account's budget cells; [`PhraseMatcher`] and [`ScorePolicy`] are built once
//! (and on reload) and shared. A reloaded policy applies at once to existing state: nothing of it is baked in.
//!
//! # Use
//!
//! ```text
//! let hits = matcher.scan(prompt);                                   // once per request
//! account.observe_hits(&req, hits, &policy, tier_rpm);
//! cluster.observe_hits(account_id, &req, hits, &policy, cluster_rpm); // when the account is in a cluster
//! let score = account.score(now, &policy);                           // with its reasons
//! let level = ladder.update(score.value, &policy);                   // act on the stricter of account and cluster
//! // …after the response:
//! account.settle(output_tokens, now, &policy);
//! cluster.settle(output_tokens, now, &policy);
//! ```
//!
//! [`AccountSignals::observe`] and [`ClusterSignals::observe`] scan the prompt themselves; use the `_hits` forms to
//! scan once for both. The prompt text is only scanned, never stored.
//!
//! # Windows
//!
//! Every counter is an exponentially decayed sum: when time moves from `t₀` to `t`, all are multiplied by
//! `d = 2^(−(t − t₀) / half_life)` (one `exp2` per update; [`AccountSignals::score`] applies `d` without changing
//! the state). A `now` earlier than the last update applies no decay. Below, `n` is the decayed request count, `Σx`
//! the decayed sum of a per-request value `x`, `[c]` is 1 when `c` holds, and `τ = half_life / ln 2`.
//!
//! # Signals (raw values; each is visible in [`Score::contributions`])
//!
//! - **reasoning_elicitation** `= Σe / n`, `e = 1` when the prompt matched any phrase list (elicitation, rubric,
//!   trajectory, or whatever lists the admin loads), else `elicitation_param_credit` when thinking is on with a
//!   budget ≥ `thinking_budget_threshold` or reasoning effort is high, else 0.
//! - **template_reuse** `= Σ[template_shared] / n` (the linker says the prompt's signature is seen on other accounts).
//! - **output_ratio** `= Σoutput / max(Σinput, n)`: settled output tokens per estimated input token.
//! - **pinned_max_tokens** `= Σ[max_tokens ≥ pinned_fraction × ceiling(model)] / n`; the ceiling is that of the
//!   longest matching prefix in `model_ceilings`, else `default_ceiling`; no `max_tokens` is not pinned.
//! - **timing_regularity** `= √(M₂ / W) / max(μ, 1 ms)`, the coefficient of variation of inter-arrival gaps (seconds),
//!   by West's weighted incremental mean and variance with weights that decay like the counters (`W` the decayed
//!   gap weight, `μ` the mean, `M₂` the weighted sum of squared deviations). Low is machine-regular; Poisson arrivals
//!   read about 1; it reads 1.0 until the decayed gap weight is at least 3.
//! - **lockstep** (clusters only) `= Σ[the request's second is lockstep] / n`. A second is lockstep once the
//!   distinct members that fired in it reach `max(lockstep_min_members, lockstep_rate_factor × r)`, `r` the cluster's
//!   mean requests per second (below): a burst well above the cluster's own rate, so a busy but unsynchronised
//!   cluster stays at 0. When a second crosses the mark, its earlier requests count at once. Distinct members are
//!   estimated per second by linear counting on a 256-bit map; a ring keeps the last 4 seconds, so requests that
//!   arrive a little out of order still count and older ones are ignored. Clusters above about 350 requests per
//!   second (with the default factor 4) cannot be measured at one-second resolution and read 0.
//! - **volume** `= r / (tier_rpm / 60)`, `r = n / (τ · (1 − e^(−age/τ)))` requests per second, `age` the time since
//!   first seen (at least one minute): the exact rate of a steady source, also while the window is younger than `τ`.
//!   `tier_rpm` is passed with every request (the account tier's requests per minute; for a cluster, its budget's,
//!   or one tier's to count in accounts' worth); 0 when it is 0.
//! - **account_age** `= (now − first_seen)` in hours (for a cluster, since it formed).
//! - **breadth** `= F̂ / max(T̂, 1)`: distinct fill keys per distinct template key (a prompt without a template key
//!   is its own template), each estimated by linear counting, `m · ln(m / zeros)`, on a 128-bit map (saturating near
//!   700), over the current and the previous epoch (`epoch = ⌊now / half_life⌋`); 0 without keys.
//! - **fingerprint_inconsistency** `= Σ[fingerprint_inconsistent] / n`.
//! - **release_pivot** `= Σy / n`, `y = 0` unless the model matches a `new_models` prefix released at `R` with
//!   `R ≤ now ≤ R + new_model_window`; then `y = 1` when the account (cluster) was first seen at or after
//!   `R − pivot_young` (young relative to the release), else `pivot_old_weight`.
//! - **member_spread** (clusters only) `= members / (60 · r)`, `r` the cluster's requests per second as for volume:
//!   how many minutes pass, on average, between two requests of one member. A hydra spreads its traffic thinly over
//!   many accounts so that each stays under its own limits; the signal reads 0 below `spread_min_members` members
//!   (the users of one tool who bring their own keys look alike, which is why its weight stays modest).
//! - **stack_churn** `= Σ[stack_changed] / n`: the share of requests whose client stack (JA4 and HTTP fingerprint,
//!   hashed together by the caller) differs from the account's previous request's ([`AccountSignals::note_stack`]).
//!   Honest clients keep theirs — a corporate NAT's users share one, an app's users each keep their own — while a
//!   campaign that impersonates browsers and SDKs per request (uTLS, curl-impersonate) changes it on most requests.
//!   In a cluster, the share of its members' requests that changed their member's stack.
//! - **output_length** `= Σoutput_full / Σ[served in full]`: output tokens per request that was served in full
//!   (requests the engine degraded are left out: the clamp, not the client, set their length), 0 before one is
//!   settled. Distillation wants long answers; a client that reads short ones (chat, batch, evaluation) does not.
//! - **yield_per_member** (clusters only) `= Σyield / (Σ[served in full] + min_requests) × r × 3600 / members`,
//!   `yield` the output tokens of a response served in full that is a *long yield* — at least
//!   `yield_min_output_tokens` and at least `yield_min_ratio` times its request's input tokens (the caller passes
//!   the input with [`ClusterSignals::settle_request`]; settled without it, nothing counts) — `r` the cluster's
//!   requests per second as for volume, over a window taken as at least 10 minutes old, and `members` the distinct
//!   members whose requests the state observed over the current and previous epoch (a 256-bit linear-counting
//!   sketch; a core counts only its own members): the long answers to short prompts each member would take in an
//!   hour if served in full. What a campaign is after; per request served in
//!   full, so acting on the cluster does not take its evidence away, and a rate, so cover traffic dilutes it only
//!   by its own share. An honest crowd behind one address (a corporate NAT, one app's users) sends at human rates
//!   and gets long answers mostly to long prompts; agents get long answers to long contexts.
//!
//! # Score
//!
//! ```text
//! normalised_i = clamp((value_i − off_i) / (full_i − off_i), 0, 1)            the signal's Ramp
//! raw          = min(1, Σ weight_i × normalised_i)
//! evidence     = 0 if n < min_requests, else n / (n + prior_requests)
//! activity     = min(1, r_fast / r)       r_fast: the rate of a request counter with activity_half_life
//! score        = raw × evidence × activity                                    0..=1
//! contribution_i = weight_i × normalised_i × evidence × activity / max(1, Σ weight × normalised)
//! ```
//!
//! The contributions sum to the score; [`Score`] lists all of them, largest first, with each raw value, so every
//! decision carries its reasons. `evidence` keeps a handful of requests from scoring high. `activity` is what lets a
//! stopped source fall back: shares are ratios of counters that decay together, so they do not fall when requests
//! stop, and `n` falls only at the half-life's pace; `activity` halves every
//! `1 / (1/activity_half_life − 1/half_life)` (20 minutes by default) once requests stop, and is back within a few
//! requests when they resume. The score is a pure function of the state and `now`: it falls between requests too.
//!
//! # Ladder
//!
//! [`Level`]s Allow < Slow < Degrade < Throttle < Block, each above Allow with a [`Mark`] `{enter, exit}`,
//! `exit < enter`. [`LadderState::update`] moves up at once to the highest level whose `enter` the score reaches,
//! and down one level at a time while the score is below the current level's `exit`, so a score oscillating around
//! an enter mark does not flap. A level whose `enter` is above 1 is never entered.
//!
//! # Defaults ([`ScorePolicy::default`], a starting policy)
//!
//! | signal                    | weight | ramp off → full     |
//! |---------------------------|--------|---------------------|
//! | reasoning_elicitation     | 0.15   | 0.05 → 0.6          |
//! | pinned_max_tokens         | 0.15   | 0.2 → 0.8           |
//! | lockstep (clusters)       | 0.15   | 0.1 → 0.5           |
//! | template_reuse            | 0.10   | 0.2 → 0.8           |
//! | output_ratio              | 0.10   | 2 → 12              |
//! | release_pivot             | 0.10   | 0.05 → 0.5          |
//! | timing_regularity         | 0.08   | CV 0.8 → 0.25       |
//! | account_age               | 0.08   | 72 h → 6 h          |
//! | breadth                   | 0.07   | 3 → 20              |
//! | fingerprint_inconsistency | 0.05   | 0.05 → 0.5          |
//! | member_spread (clusters)  | 0.12   | 1 → 5 min           |
//! | volume                    | 0.03   | 0.3 → 1.0 × tier    |
//! | stack_churn               | 0.50   | 0.05 → 0.5          |
//! | output_length             | 0.20   | 1 500 → 4 000 tokens |
//! | yield_per_member (clusters) | 0.30 | 8 000 → 24 000 tokens per member-hour |
//!
//! Marks (enter / exit): Slow 0.50 / 0.40, Degrade 0.55 / 0.45 (fitted), Throttle 0.75 / 0.62, Block 0.90 / 0.78.
//! `half_life` 1 h, `activity_half_life` 15 min, `min_requests` 8, `prior_requests` 3,
//! `elicitation_param_credit` 0.25 at a thinking budget ≥ 16 000, `pinned_fraction` 0.95, `default_ceiling` 8 192
//! (with a small table of Anthropic and OpenAI ceilings to check against current model cards), `new_models` empty,
//! `new_model_window` 7 days, `pivot_young` 1 day, `pivot_old_weight` 0.25, `lockstep_min_members` 8,
//! `lockstep_rate_factor` 4, `spread_min_members` 20. member_spread's weight and ramp were set with `distill-guard
//! simulate` on the shipped scenarios (synthetic traffic; see BENCHMARKS.md). The weights of reasoning_elicitation,
//! template_reuse, stack_churn and output_length were fitted on the tuning family of drawn scenarios only
//! (`benches/fit-detection.py`; the held-out family is only reported, BENCHMARKS.md): at 0.30 the elicitation
//! weight degraded 5–10 % of honest requests there (students and chat users who ask for step-by-step answers).
//! output_length was fitted at 0.40 and ships at 0.20: at 0.40 the small scenario's honest coding agents, whose
//! answers are long, were degraded (the tuning family has no honest answers that long). yield_per_member's weight
//! was chosen on the tuning family (0, 0.20, 0.30 over 32 seeds), its ramp and `yield_min_output_tokens` 1 500,
//! `yield_min_ratio` 10 from the tuning family's honest clusters (app users ≈ 3 000 per member-hour at most).
//!
//! The rule behind the weights: everything a legitimate templated workload (a batch job, an evaluation harness, a
//! corporate tool) can show — template reuse, regular timing, breadth, a young account, volume, a fingerprint
//! mismatch — sums to 0.41, below Slow's 0.50. stack_churn and output_length are heavy because honest clients show
//! neither: they keep their client stack, and read answers shorter than a distillation campaign asks for. An account reaches Slow only with evidence of extraction (elicitation
//! phrases, pinned ceilings, long outputs, a release pivot); a cluster can also with lockstep, member_spread or
//! yield_per_member.
//!
//! # Phrase matching
//!
//! [`PhraseMatcher`] compiles named lists (at most 32; a request's hits are a bitset, [`PhraseHits`]). Text and
//! phrases are normalised alike: ASCII letters lower-cased; every ASCII byte other than a letter or digit
//! (whitespace, punctuation, hyphen, underscore, apostrophe) and the common typographic separators (Unicode spaces,
//! dashes, curly quotes and apostrophes, guillemets, bullets, ellipsis) become one separator, and runs of separators
//! collapse to one; other non-ASCII bytes pass through unchanged (they match exactly, not case-insensitively). So
//! "Step-by-step", "step_by_step", "STEP  by\nstep" and "step — by — step" are the same, as are "assistant's" and
//! "assistant’s" (both "assistant s"; but not "assistants"). A phrase matches whole words, unless it starts or
//! ends with `*` (a word suffix or prefix: `reason*` matches "reasoning").
//!
//! The lists become one Aho-Corasick automaton (`aho-corasick`'s DFA, standard semantics), re-encoded as a dense
//! table over the phrases' own bytes in which a state entered on a separator stays on further separators (so runs
//! collapse inside the automaton, without a pass of their own) and match states come first (a step tests "is a
//! match" with one comparison). A scan maps the text byte for byte into a stack buffer (a branch-free, vectorised
//! pass), 4 KiB at a time, and walks each chunk in four interleaved lanes — independent walks over its quarters, each
//! starting early enough (the longest phrase, counted in collapsed bytes) to see every match that ends in its quarter
//! — which overlaps the table lookups that a single walk does one after another. No allocation; the scan stops
//! after the chunk in which every list has matched. Phrases are at most 256 bytes once normalised.
//!
//! # Memory and cost
//!
//! `size_of::<AccountSignals>()` is 184 bytes, `ClusterSignals` 440, `LadderState` 1. The default phrase table
//! (74 phrases) has 1 529 states × 30 byte classes × 4 bytes ≈ 180 KiB. Measured in release on a shared 2-vCPU EPYC
//! (least-disturbed of 30 rounds): scanning a 2 KiB prompt ≈ 1.7 µs; `observe_hits` ≈ 45 ns; `score` ≈ 185 ns
//! (its one allocation is the contributions `Vec`); `observe` + `score` of an account ≈ 2.0 µs, plus the cluster's
//! `observe_hits` + `score` ≈ 2.3 µs.
//!
//! # Limits
//!
//! - State rebuilt after eviction looks young: pass the account's creation time, if known, to
//!   [`AccountSignals::set_first_seen`].
//! - Release times in `new_models` are on the engine's clock: the config layer converts wall-clock dates.
//! - The scores are per replica unless the caller shares the state.
//! - Thresholds and weights are a starting point tuned on simulated populations, not on recorded traffic; replay
//!   recorded traffic before enforcing above Slow.

use std::fmt;

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::dfa::DFA;
use aho_corasick::{Anchored, BuildError, MatchError, MatchKind, StartKind};

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
/// Longest phrase, in bytes once normalised (with its boundary separators).
pub const MAX_PHRASE_BYTES: usize = 256;

// ---------------------------------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------------------------------

/// One behavioural signal. The discriminant is its index in [`Signal::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    /// Share of requests that try to elicit reasoning traces, rubric grades or tool trajectories.
    ReasoningElicitation = 0,
    /// Share of requests whose prompt signature is shared with other accounts.
    TemplateReuse = 1,
    /// Output tokens per input token.
    OutputRatio = 2,
    /// Share of requests with `max_tokens` at or near the model's ceiling.
    PinnedMaxTokens = 3,
    /// Coefficient of variation of inter-arrival gaps (low = machine-regular).
    TimingRegularity = 4,
    /// Share of a cluster's requests landing in seconds where unusually many members fired (clusters only).
    Lockstep = 5,
    /// Request rate as a multiple of the tier's requests per minute.
    Volume = 6,
    /// Age of the account (or cluster) in hours.
    AccountAge = 7,
    /// Distinct prompt fills per distinct template.
    Breadth = 8,
    /// Share of requests whose client fingerprints contradict each other.
    FingerprintInconsistency = 9,
    /// Youth-weighted share of requests to a newly released model.
    ReleasePivot = 10,
    /// How thinly a cluster's traffic is spread over its accounts: members ÷ requests per minute (clusters only).
    MemberSpread = 11,
    /// Share of requests whose client stack (JA4, HTTP fingerprint) differs from the account's previous request's.
    StackChurn = 12,
    /// Output tokens per request actually served in full (degraded requests left out).
    OutputLength = 13,
    /// Output tokens per member-hour of answers served in full that are long and many times their prompt
    /// (clusters only).
    YieldPerMember = 14,
}

impl Signal {
    /// Number of signals.
    pub const COUNT: usize = 15;

    /// Every signal, in index order.
    pub const ALL: [Signal; Signal::COUNT] = [
        Signal::ReasoningElicitation,
        Signal::TemplateReuse,
        Signal::OutputRatio,
        Signal::PinnedMaxTokens,
        Signal::TimingRegularity,
        Signal::Lockstep,
        Signal::Volume,
        Signal::AccountAge,
        Signal::Breadth,
        Signal::FingerprintInconsistency,
        Signal::ReleasePivot,
        Signal::MemberSpread,
        Signal::StackChurn,
        Signal::OutputLength,
        Signal::YieldPerMember,
    ];

    /// Signals only a cluster has (an account's score leaves them out).
    pub fn cluster_only(self) -> bool {
        matches!(
            self,
            Signal::Lockstep | Signal::MemberSpread | Signal::YieldPerMember
        )
    }

    /// Index in [`Signal::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Label for config keys, logs, metrics and reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::ReasoningElicitation => "reasoning_elicitation",
            Signal::TemplateReuse => "template_reuse",
            Signal::OutputRatio => "output_ratio",
            Signal::PinnedMaxTokens => "pinned_max_tokens",
            Signal::TimingRegularity => "timing_regularity",
            Signal::Lockstep => "lockstep",
            Signal::Volume => "volume",
            Signal::AccountAge => "account_age",
            Signal::Breadth => "breadth",
            Signal::FingerprintInconsistency => "fingerprint_inconsistency",
            Signal::ReleasePivot => "release_pivot",
            Signal::MemberSpread => "member_spread",
            Signal::StackChurn => "stack_churn",
            Signal::OutputLength => "output_length",
            Signal::YieldPerMember => "yield_per_member",
        }
    }

    /// The unit of the signal's raw value.
    pub fn unit(self) -> &'static str {
        match self {
            Signal::ReasoningElicitation
            | Signal::TemplateReuse
            | Signal::PinnedMaxTokens
            | Signal::Lockstep
            | Signal::FingerprintInconsistency
            | Signal::ReleasePivot
            | Signal::StackChurn => "share",
            Signal::OutputRatio => "output/input tokens",
            Signal::TimingRegularity => "coefficient of variation",
            Signal::Volume => "x tier rate",
            Signal::AccountAge => "hours",
            Signal::Breadth => "fills per template",
            Signal::MemberSpread => "members per request per minute",
            Signal::OutputLength => "output tokens per request",
            Signal::YieldPerMember => "long-yield output tokens per member-hour",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One value per [`Signal`], by name (the shape of the `[score.weights]` and `[score.ramps]` config tables).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PerSignal<T> {
    /// [`Signal::ReasoningElicitation`].
    pub reasoning_elicitation: T,
    /// [`Signal::TemplateReuse`].
    pub template_reuse: T,
    /// [`Signal::OutputRatio`].
    pub output_ratio: T,
    /// [`Signal::PinnedMaxTokens`].
    pub pinned_max_tokens: T,
    /// [`Signal::TimingRegularity`].
    pub timing_regularity: T,
    /// [`Signal::Lockstep`].
    pub lockstep: T,
    /// [`Signal::Volume`].
    pub volume: T,
    /// [`Signal::AccountAge`].
    pub account_age: T,
    /// [`Signal::Breadth`].
    pub breadth: T,
    /// [`Signal::FingerprintInconsistency`].
    pub fingerprint_inconsistency: T,
    /// [`Signal::ReleasePivot`].
    pub release_pivot: T,
    /// [`Signal::MemberSpread`].
    pub member_spread: T,
    /// [`Signal::StackChurn`].
    pub stack_churn: T,
    /// [`Signal::OutputLength`].
    pub output_length: T,
    /// [`Signal::YieldPerMember`].
    pub yield_per_member: T,
}

impl<T: Copy> PerSignal<T> {
    /// The value for `signal`.
    pub fn get(&self, signal: Signal) -> T {
        match signal {
            Signal::ReasoningElicitation => self.reasoning_elicitation,
            Signal::TemplateReuse => self.template_reuse,
            Signal::OutputRatio => self.output_ratio,
            Signal::PinnedMaxTokens => self.pinned_max_tokens,
            Signal::TimingRegularity => self.timing_regularity,
            Signal::Lockstep => self.lockstep,
            Signal::Volume => self.volume,
            Signal::AccountAge => self.account_age,
            Signal::Breadth => self.breadth,
            Signal::FingerprintInconsistency => self.fingerprint_inconsistency,
            Signal::ReleasePivot => self.release_pivot,
            Signal::MemberSpread => self.member_spread,
            Signal::StackChurn => self.stack_churn,
            Signal::OutputLength => self.output_length,
            Signal::YieldPerMember => self.yield_per_member,
        }
    }

    /// Set the value for `signal`.
    pub fn set(&mut self, signal: Signal, value: T) {
        let slot = match signal {
            Signal::ReasoningElicitation => &mut self.reasoning_elicitation,
            Signal::TemplateReuse => &mut self.template_reuse,
            Signal::OutputRatio => &mut self.output_ratio,
            Signal::PinnedMaxTokens => &mut self.pinned_max_tokens,
            Signal::TimingRegularity => &mut self.timing_regularity,
            Signal::Lockstep => &mut self.lockstep,
            Signal::Volume => &mut self.volume,
            Signal::AccountAge => &mut self.account_age,
            Signal::Breadth => &mut self.breadth,
            Signal::FingerprintInconsistency => &mut self.fingerprint_inconsistency,
            Signal::ReleasePivot => &mut self.release_pivot,
            Signal::MemberSpread => &mut self.member_spread,
            Signal::StackChurn => &mut self.stack_churn,
            Signal::OutputLength => &mut self.output_length,
            Signal::YieldPerMember => &mut self.yield_per_member,
        };
        *slot = value;
    }
}

/// How a signal's raw value maps to how "on" it is: 0 at or beyond `off`, 1 at or beyond `full`, linear between.
/// `full < off` makes a decreasing ramp (timing CV, account age: lower is more suspicious).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ramp {
    /// Raw value at which the signal starts to count.
    pub off: f32,
    /// Raw value at which the signal is fully on.
    pub full: f32,
}

impl Ramp {
    /// A ramp from `off` to `full`.
    pub const fn new(off: f32, full: f32) -> Ramp {
        Ramp { off, full }
    }

    /// `clamp((value − off) / (full − off), 0, 1)`; 0 for a NaN value or a degenerate ramp.
    pub fn apply(self, value: f32) -> f32 {
        let span = self.full - self.off;
        if span == 0.0 || !span.is_finite() {
            return 0.0;
        }
        let t = (value - self.off) / span;
        if t.is_nan() {
            0.0
        } else {
            t.clamp(0.0, 1.0)
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Ladder
// ---------------------------------------------------------------------------------------------------------------

/// What the score asks the engine to do, mildest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Level {
    /// Forward unchanged.
    #[default]
    Allow,
    /// Delay before forwarding.
    Slow,
    /// Forward with a lowered `max_tokens` / thinking budget.
    Degrade,
    /// Refuse with 429 and `retry-after`.
    Throttle,
    /// Refuse with 403.
    Block,
}

impl Level {
    /// Every level, mildest first.
    pub const ALL: [Level; 5] = [
        Level::Allow,
        Level::Slow,
        Level::Degrade,
        Level::Throttle,
        Level::Block,
    ];

    /// Label for logs, metrics and config keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Allow => "allow",
            Level::Slow => "slow",
            Level::Degrade => "degrade",
            Level::Throttle => "throttle",
            Level::Block => "block",
        }
    }

    /// The next milder level (Allow stays Allow).
    pub fn below(self) -> Level {
        match self {
            Level::Allow | Level::Slow => Level::Allow,
            Level::Degrade => Level::Slow,
            Level::Throttle => Level::Degrade,
            Level::Block => Level::Throttle,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A level's marks: it is entered when the score reaches `enter` and left when the score falls below `exit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mark {
    /// Score at or above which the level is entered (above 1: never entered, the level is off).
    pub enter: f32,
    /// Score below which the level is left (below `enter`).
    pub exit: f32,
}

impl Mark {
    /// A mark entered at `enter` and left below `exit`.
    pub const fn new(enter: f32, exit: f32) -> Mark {
        Mark { enter, exit }
    }
}

/// The ladder's marks, one per level above Allow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// [`Level::Slow`].
    pub slow: Mark,
    /// [`Level::Degrade`].
    pub degrade: Mark,
    /// [`Level::Throttle`].
    pub throttle: Mark,
    /// [`Level::Block`].
    pub block: Mark,
}

impl Thresholds {
    /// The marks of `level` (None for Allow).
    pub fn mark(&self, level: Level) -> Option<Mark> {
        match level {
            Level::Allow => None,
            Level::Slow => Some(self.slow),
            Level::Degrade => Some(self.degrade),
            Level::Throttle => Some(self.throttle),
            Level::Block => Some(self.block),
        }
    }
}

/// Where an account or cluster stands on the ladder (one byte; kept beside its signals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LadderState {
    level: Level,
}

impl LadderState {
    /// A ladder at Allow.
    pub fn new() -> LadderState {
        LadderState::default()
    }

    /// The current level.
    pub fn level(&self) -> Level {
        self.level
    }

    /// The ladder of two merged clusters: the higher level (one half's enforcement is not undone by the merge).
    pub fn join(&mut self, other: &LadderState) {
        self.level = self.level.max(other.level);
    }

    /// Move on the ladder for a new `score` (0..=1): up at once to the highest level whose enter mark the score
    /// reaches; down one level at a time while the score is below the current level's exit mark. A NaN score
    /// counts as 0.
    pub fn update(&mut self, score: f32, policy: &ScorePolicy) -> Level {
        let s = if score.is_nan() { 0.0 } else { score };
        let t = &policy.thresholds;
        let mut target = Level::Allow;
        for level in [Level::Slow, Level::Degrade, Level::Throttle, Level::Block] {
            if t.mark(level).is_some_and(|m| s >= m.enter) {
                target = level;
            }
        }
        if target > self.level {
            self.level = target;
            return self.level;
        }
        while let Some(m) = t.mark(self.level) {
            if s < m.exit {
                self.level = self.level.below();
            } else {
                break;
            }
        }
        self.level
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------------------------------------------

/// Everything the score is computed by. Built from config, checked with [`ScorePolicy::validate`]; shared by
/// accounts and clusters and swappable under live state (nothing here is baked into a state).
#[derive(Debug, Clone, PartialEq)]
pub struct ScorePolicy {
    /// Weight of each signal in the score (points of a 0..=1 score when the signal is fully on).
    pub weights: PerSignal<f32>,
    /// How each signal's raw value maps to 0..=1.
    pub ramps: PerSignal<Ramp>,
    /// The ladder's marks.
    pub thresholds: Thresholds,
    /// Decayed requests in the window below which the score is 0.
    pub min_requests: f32,
    /// Pseudo-count of the evidence factor `n / (n + prior_requests)`.
    pub prior_requests: f32,
    /// Half-life of every window (counters, gap statistics; the breadth sketches rotate every half-life).
    pub half_life: Nanos,
    /// Half-life of the short request counter that measures whether the source is still active.
    pub activity_half_life: Nanos,
    /// Credit (0..=1) a request earns towards reasoning elicitation by its parameters alone.
    pub elicitation_param_credit: f32,
    /// Thinking budgets at or above this count as elicitation parameters.
    pub thinking_budget_threshold: u32,
    /// `max_tokens` at or above this fraction of the model's ceiling counts as pinned.
    pub pinned_fraction: f32,
    /// Output-token ceilings by model-name prefix (longest prefix wins).
    pub model_ceilings: Vec<(String, u32)>,
    /// Ceiling of models not in `model_ceilings`.
    pub default_ceiling: u32,
    /// Newly released models by model-name prefix, with their release time on the engine's clock.
    pub new_models: Vec<(String, Nanos)>,
    /// How long after its release a model counts as new.
    pub new_model_window: Nanos,
    /// An account first seen later than this before a release (or after it) is young relative to the release.
    pub pivot_young: Nanos,
    /// Weight of a new-model request from an account that is not young relative to the release.
    pub pivot_old_weight: f32,
    /// A second is lockstep when at least this many distinct members fired in it...
    pub lockstep_min_members: u32,
    /// ...and at least this many times the cluster's mean requests per second.
    pub lockstep_rate_factor: f32,
    /// [`Signal::MemberSpread`] reads 0 for clusters with fewer members.
    pub spread_min_members: u32,
    /// A response served in full counts towards [`Signal::YieldPerMember`] when it has at least this many output
    /// tokens...
    pub yield_min_output_tokens: u32,
    /// ...and at least this many times the request's input tokens.
    pub yield_min_ratio: f32,
}

impl Default for ScorePolicy {
    fn default() -> ScorePolicy {
        ScorePolicy {
            weights: PerSignal {
                reasoning_elicitation: 0.15,
                template_reuse: 0.10,
                output_ratio: 0.10,
                pinned_max_tokens: 0.15,
                timing_regularity: 0.08,
                lockstep: 0.15,
                volume: 0.03,
                account_age: 0.08,
                breadth: 0.07,
                fingerprint_inconsistency: 0.05,
                release_pivot: 0.10,
                member_spread: 0.12,
                stack_churn: 0.5,
                output_length: 0.2,
                yield_per_member: 0.3,
            },
            ramps: PerSignal {
                reasoning_elicitation: Ramp::new(0.05, 0.6),
                template_reuse: Ramp::new(0.2, 0.8),
                output_ratio: Ramp::new(2.0, 12.0),
                pinned_max_tokens: Ramp::new(0.2, 0.8),
                timing_regularity: Ramp::new(0.8, 0.25),
                lockstep: Ramp::new(0.1, 0.5),
                volume: Ramp::new(0.3, 1.0),
                account_age: Ramp::new(72.0, 6.0),
                breadth: Ramp::new(3.0, 20.0),
                fingerprint_inconsistency: Ramp::new(0.05, 0.5),
                release_pivot: Ramp::new(0.05, 0.5),
                member_spread: Ramp::new(1.0, 5.0),
                stack_churn: Ramp::new(0.05, 0.5),
                output_length: Ramp::new(1_500.0, 4_000.0),
                yield_per_member: Ramp::new(8_000.0, 24_000.0),
            },
            thresholds: Thresholds {
                slow: Mark::new(0.50, 0.40),
                degrade: Mark::new(0.55, 0.45),
                throttle: Mark::new(0.75, 0.62),
                block: Mark::new(0.90, 0.78),
            },
            min_requests: 8.0,
            prior_requests: 3.0,
            half_life: HOUR,
            activity_half_life: 15 * MINUTE,
            elicitation_param_credit: 0.25,
            thinking_budget_threshold: 16_000,
            pinned_fraction: 0.95,
            model_ceilings: [
                ("claude-opus-4-5", 64_000),
                ("claude-opus-4", 32_000),
                ("claude-sonnet-4", 64_000),
                ("claude-haiku-4", 64_000),
                ("claude-3-7-sonnet", 64_000),
                ("claude-3-5", 8_192),
                ("gpt-5", 128_000),
                ("gpt-4.1", 32_768),
                ("gpt-4o", 16_384),
                ("o1", 100_000),
                ("o3", 100_000),
                ("o4-mini", 100_000),
            ]
            .iter()
            .map(|&(m, c)| (m.to_owned(), c))
            .collect(),
            default_ceiling: 8_192,
            new_models: Vec::new(),
            new_model_window: 7 * DAY,
            pivot_young: DAY,
            pivot_old_weight: 0.25,
            lockstep_min_members: 8,
            spread_min_members: 20,
            lockstep_rate_factor: 4.0,
            yield_min_output_tokens: 1_500,
            yield_min_ratio: 10.0,
        }
    }
}

/// A policy value out of range: which key, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScorePolicyError {
    /// Key path of the offending value (`weights.breadth`, `thresholds.slow.exit`, `model_ceilings[2]`…).
    pub field: String,
    /// What was expected.
    pub expected: &'static str,
}

impl fmt::Display for ScorePolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: expected {}", self.field, self.expected)
    }
}

impl std::error::Error for ScorePolicyError {}

impl ScorePolicy {
    /// Check every value; the first bad one is named.
    pub fn validate(&self) -> Result<(), ScorePolicyError> {
        let err = |field: String, expected: &'static str| Err(ScorePolicyError { field, expected });
        for s in Signal::ALL {
            let w = self.weights.get(s);
            if !(w.is_finite() && w >= 0.0) {
                return err(format!("weights.{s}"), "a finite number >= 0");
            }
            let r = self.ramps.get(s);
            if !(r.off.is_finite() && r.full.is_finite() && r.off != r.full) {
                return err(format!("ramps.{s}"), "finite `off` and `full` that differ");
            }
        }
        let mut prev: Option<Mark> = None;
        for level in [Level::Slow, Level::Degrade, Level::Throttle, Level::Block] {
            let Some(m) = self.thresholds.mark(level) else {
                continue;
            };
            if !(m.exit.is_finite() && m.exit >= 0.0) {
                return err(format!("thresholds.{level}.exit"), "a finite number >= 0");
            }
            if m.enter.is_nan() || m.enter <= m.exit {
                return err(
                    format!("thresholds.{level}.enter"),
                    "a number above the level's exit mark",
                );
            }
            if let Some(p) = prev {
                if m.enter < p.enter {
                    return err(
                        format!("thresholds.{level}.enter"),
                        "a mark at or above the milder level's enter mark",
                    );
                }
                if m.exit < p.exit {
                    return err(
                        format!("thresholds.{level}.exit"),
                        "a mark at or above the milder level's exit mark",
                    );
                }
            }
            prev = Some(m);
        }
        if !(self.min_requests.is_finite() && self.min_requests >= 0.0) {
            return err("min_requests".into(), "a finite number >= 0");
        }
        if !(self.prior_requests.is_finite() && self.prior_requests >= 0.0) {
            return err("prior_requests".into(), "a finite number >= 0");
        }
        if self.half_life == 0 {
            return err("half_life".into(), "a duration above 0");
        }
        if self.activity_half_life == 0 || self.activity_half_life >= self.half_life {
            return err(
                "activity_half_life".into(),
                "a duration above 0 and below half_life",
            );
        }
        if !(0.0..=1.0).contains(&self.elicitation_param_credit) {
            return err("elicitation_param_credit".into(), "a number in 0..=1");
        }
        if !(self.pinned_fraction > 0.0 && self.pinned_fraction <= 1.0) {
            return err("pinned_fraction".into(), "a number in (0, 1]");
        }
        for (i, (m, c)) in self.model_ceilings.iter().enumerate() {
            if m.is_empty() || *c == 0 {
                return err(
                    format!("model_ceilings[{i}]"),
                    "a non-empty model prefix and a ceiling above 0",
                );
            }
        }
        if self.default_ceiling == 0 {
            return err("default_ceiling".into(), "a ceiling above 0");
        }
        for (i, (m, _)) in self.new_models.iter().enumerate() {
            if m.is_empty() {
                return err(format!("new_models[{i}]"), "a non-empty model prefix");
            }
        }
        if !(0.0..=1.0).contains(&self.pivot_old_weight) {
            return err("pivot_old_weight".into(), "a number in 0..=1");
        }
        if self.lockstep_min_members < 2 {
            return err("lockstep_min_members".into(), "at least 2");
        }
        if !(self.lockstep_rate_factor.is_finite() && self.lockstep_rate_factor >= 1.0) {
            return err("lockstep_rate_factor".into(), "a finite number >= 1");
        }
        if !(self.yield_min_ratio.is_finite() && self.yield_min_ratio >= 0.0) {
            return err("yield_min_ratio".into(), "a finite number >= 0");
        }
        Ok(())
    }

    /// The output-token ceiling of `model` (longest matching prefix in `model_ceilings`, else the default).
    pub fn ceiling(&self, model: Option<&str>) -> u32 {
        model
            .and_then(|m| longest_prefix(&self.model_ceilings, m))
            .unwrap_or(self.default_ceiling)
    }

    /// The release time of `model` if it is listed as new (longest matching prefix in `new_models`).
    pub fn release_of(&self, model: &str) -> Option<Nanos> {
        longest_prefix(&self.new_models, model)
    }
}

fn longest_prefix<T: Copy>(table: &[(String, T)], model: &str) -> Option<T> {
    table
        .iter()
        .filter(|(p, _)| !p.is_empty() && model.starts_with(p.as_str()))
        .max_by_key(|(p, _)| p.len())
        .map(|&(_, v)| v)
}

// ---------------------------------------------------------------------------------------------------------------
// Phrase matcher
// ---------------------------------------------------------------------------------------------------------------

/// Default phrases of prompts built to elicit reasoning traces (chain of thought written out for training).
pub const DEFAULT_ELICITATION: &[&str] = &[
    "imagine and articulate the internal reasoning",
    "articulate the internal reasoning",
    "internal reasoning behind",
    "reasoning behind a completed response",
    "reasoning behind the completed response",
    "write it out step by step",
    "write out your reasoning step by step",
    "write out the reasoning step by step",
    "write out every step of your reasoning",
    "show your full chain of thought",
    "full chain of thought",
    "complete chain of thought",
    "entire chain of thought",
    "reasoning trace",
    "thinking trace",
    "hidden reasoning",
    "internal monologue",
    "thought process verbatim",
    "show all of your thinking",
    "every intermediate step",
    "do not skip any reasoning steps",
    "reconstruct the reasoning",
    "reasoning that led to this answer",
    "reasoning that led to the answer",
    "thinking that produced",
    "think out loud step by step",
    "scratchpad reasoning",
    "thought process",
    "line of reasoning",
    "chain of reasoning",
    "reasoning process",
    "walk me through your reasoning",
    "walk me through your thinking",
    "walk through your reasoning",
    "explain your reasoning in detail",
    "show your reasoning",
    "show all your work",
    "reasoning steps",
    "intermediate steps",
    "each step of the reasoning",
    "every step of the reasoning",
    "step-by-step reasoning",
    "detailed reasoning",
    "full reasoning",
    "complete reasoning",
    "how you arrived at",
    "how you reached the answer",
    "how you got to the answer",
    "justify each step",
    "think aloud",
];

/// Default phrases of rubric-grading prompts (preference and reward data).
pub const DEFAULT_RUBRIC: &[&str] = &[
    "grade the following response",
    "grade the response",
    "score the following response",
    "score the response",
    "rate the following response",
    "rate the response on a scale",
    "on a scale of 1 to 10",
    "on a scale from 1 to 10",
    "on a scale of 1 to 5",
    "on a scale from 1 to 5",
    "using the rubric below",
    "according to the rubric",
    "following rubric",
    "grading rubric",
    "scoring rubric",
    "evaluate the assistant's response",
    "which response is better",
    "compare the two responses",
    "response a and response b",
    "preferred response",
    "assign a score",
    "output only the score",
    "judge the quality of the response",
    "rank the following responses",
    "pairwise comparison",
    "rubric",
    "grade this",
    "grade the answer",
    "grade the following answer",
    "grade the solution",
    "score this",
    "score the answer",
    "score the solution",
    "rate this answer",
    "rate the answer",
    "evaluate this answer",
    "evaluate the answer",
    "evaluate the following answer",
    "assess this answer",
    "assess the answer",
    "out of 10",
    "out of ten",
    "1 to 10",
    "ten-point scale",
    "10-point scale",
    "each deduction",
    "every deduction",
    "points deducted",
    "deduct points",
    "justify the score",
    "justify your score",
];

/// Default phrases of prompts that reconstruct tool-use trajectories.
pub const DEFAULT_TRAJECTORY: &[&str] = &[
    "reconstruct the tool calls",
    "reconstruct the trajectory",
    "reconstruct the agent's",
    "tool-use trajectory",
    "tool use trajectories",
    "agent trajectory",
    "agent trajectories",
    "sequence of tool calls",
    "list every tool call",
    "write the function calls you would make",
    "which tools would you call",
    "simulate the tool outputs",
    "simulated tool output",
    "generate the full trajectory",
    "tool name and arguments",
    "thought action observation",
    "recreate the sequence of actions",
    "expected tool call sequence",
    "function calling trace",
    "tool call trace",
    "imagine the tool calls",
    "every tool call and its result",
    "each action you would take",
    "every action you would take",
    "sequence of actions",
    "list of actions",
    "commands you would run",
    "actions and observations",
    "arguments and results",
    "inputs and outputs of each",
];

/// The lists a request's prompt matched, as a bitset over the matcher's lists (bit `i` = list `i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct PhraseHits(pub u32);

impl PhraseHits {
    /// No list matched.
    pub const NONE: PhraseHits = PhraseHits(0);

    /// Whether any list matched.
    pub fn any(self) -> bool {
        self.0 != 0
    }

    /// Whether list `index` matched.
    pub fn contains(self, index: usize) -> bool {
        index < MAX_PHRASE_LISTS && self.0 & (1 << index) != 0
    }

    /// Number of lists matched.
    pub fn count(self) -> u32 {
        self.0.count_ones()
    }
}

/// Why a phrase matcher could not be built.
#[derive(Debug, Clone)]
pub enum PhraseError {
    /// More lists than [`MAX_PHRASE_LISTS`].
    TooManyLists {
        /// Lists given.
        lists: usize,
    },
    /// A phrase is empty once normalised (only punctuation, spaces or `*`).
    EmptyPhrase {
        /// The list's name.
        list: String,
        /// The phrase's index in its list.
        index: usize,
    },
    /// A phrase is longer than [`MAX_PHRASE_BYTES`] once normalised.
    TooLong {
        /// The list's name.
        list: String,
        /// The phrase's index in its list.
        index: usize,
    },
    /// The automaton could not be built (too many or too long phrases).
    Build(BuildError),
    /// The phrases need a table of more than 2^24 entries.
    TooLarge,
    /// The automaton has no unanchored start state (not expected).
    Start(MatchError),
}

impl fmt::Display for PhraseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PhraseError::TooManyLists { lists } => {
                write!(f, "{lists} phrase lists: at most {MAX_PHRASE_LISTS} are supported")
            }
            PhraseError::EmptyPhrase { list, index } => write!(
                f,
                "phrase list {list:?}, entry {index}: empty once punctuation and case are normalised"
            ),
            PhraseError::TooLong { list, index } => write!(
                f,
                "phrase list {list:?}, entry {index}: longer than {MAX_PHRASE_BYTES} bytes once normalised"
            ),
            PhraseError::Build(e) => write!(f, "phrase automaton: {e}"),
            PhraseError::TooLarge => write!(f, "phrase automaton: too many phrases"),
            PhraseError::Start(e) => write!(f, "phrase automaton: {e}"),
        }
    }
}

impl std::error::Error for PhraseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PhraseError::Build(e) => Some(e),
            PhraseError::Start(e) => Some(e),
            PhraseError::TooManyLists { .. }
            | PhraseError::EmptyPhrase { .. }
            | PhraseError::TooLong { .. }
            | PhraseError::TooLarge => None,
        }
    }
}

/// A compiled set of named phrase lists, matched case-insensitively and across punctuation variants. Built once
/// (at start and on reload), shared by all workers.
#[derive(Clone)]
pub struct PhraseMatcher {
    table: Option<Table>,
    names: Vec<String>,
    all: u32,
    phrases: usize,
    /// Longest normalised pattern, in bytes.
    max_len: usize,
    /// The phrases' shingles, left out of prompt signatures (see [`super::signature::StockShingles`]).
    stock: super::signature::StockShingles,
}

impl fmt::Debug for PhraseMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhraseMatcher")
            .field("lists", &self.names)
            .field("phrases", &self.phrases)
            .finish()
    }
}

/// Separator byte of normalised text.
const SEP: u8 = b' ';

/// Normalise one byte: ASCII letters lower-cased; ASCII digits and bytes at or above 0x80 kept; every other ASCII
/// byte (spaces, punctuation, apostrophes, hyphens, underscores, control bytes) a separator. Branch-free, so the
/// pass over a chunk vectorises.
#[inline(always)]
fn map_byte(b: u8) -> u8 {
    let lower = b | 0x20;
    if lower.wrapping_sub(b'a') < 26 {
        lower
    } else if b.wrapping_sub(b'0') < 10 || b >= 0x80 {
        b
    } else {
        SEP
    }
}

/// Length of the typographic separator starting at `text[i]`, if one does: Unicode spaces (U+00A0, U+2000–U+200B,
/// U+202F, U+3000), dashes (U+2010–U+2015), quotes and apostrophes (U+2018–U+201F, «, »), primes (U+2032,
/// U+2033), bullets (U+00B7, U+2022), the ellipsis and the line/paragraph separators.
#[inline]
fn typographic_sep(text: &[u8], i: usize) -> Option<usize> {
    let b = text.get(i).copied().unwrap_or(0);
    let b1 = text.get(i + 1).copied().unwrap_or(0);
    let b2 = text.get(i + 2).copied().unwrap_or(0);
    match (b, b1, b2) {
        (
            0xE2,
            0x80,
            0x80..=0x8B | 0x90..=0x9F | 0xA2 | 0xA6 | 0xA8 | 0xA9 | 0xAF | 0xB2 | 0xB3,
        ) => Some(3),
        (0xE3, 0x80, 0x80) => Some(3),
        (0xC2, 0xA0 | 0xAB | 0xB7 | 0xBB, _) => Some(2),
        _ => None,
    }
}

/// Normalise `src` into `out` byte for byte (`out` at least as long; the rest is left alone): [`map_byte`], then
/// each typographic separator's bytes become separators.
fn map_chunk(src: &[u8], out: &mut [u8]) {
    for (o, &b) in out.iter_mut().zip(src) {
        *o = map_byte(b);
    }
    if src.is_ascii() {
        return;
    }
    let mut i = 0;
    while i < src.len() {
        if src.get(i).is_some_and(|&b| b >= 0x80) {
            if let Some(n) = typographic_sep(src, i) {
                for o in out.iter_mut().skip(i).take(n) {
                    *o = SEP;
                }
                i += n;
                continue;
            }
        }
        i += 1;
    }
}

/// `bytes` with runs of separators collapsed to one.
fn collapse(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &c in bytes {
        if !(c == SEP && out.last() == Some(&SEP)) {
            out.push(c);
        }
    }
    out
}

/// The normalised pattern of one phrase: whole words unless the phrase starts or ends with `*`.
fn normalise_phrase(phrase: &str) -> Option<Vec<u8>> {
    let p = phrase.trim();
    let (open_start, p) = match p.strip_prefix('*') {
        Some(rest) => (true, rest),
        None => (false, p),
    };
    let (open_end, p) = match p.strip_suffix('*') {
        Some(rest) => (true, rest),
        None => (false, p),
    };
    let mut mapped = vec![0u8; p.len()];
    map_chunk(p.as_bytes(), &mut mapped);
    let core = collapse(&mapped);
    let core = core.trim_ascii();
    if core.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(core.len() + 2);
    if !open_start {
        out.push(SEP);
    }
    out.extend_from_slice(core);
    if !open_end {
        out.push(SEP);
    }
    Some(out)
}

/// Start of the shortest suffix of `buf[..end]` holding `need` bytes of its collapsed form (a separator right
/// after another does not count): where a walk must start to see every match that ends at or after `end`.
fn back(buf: &[u8], end: usize, need: usize) -> usize {
    let mut i = end.min(buf.len());
    let mut count = 0;
    while i > 0 && count < need {
        i -= 1;
        let repeat = buf.get(i) == Some(&SEP) && i > 0 && buf.get(i - 1) == Some(&SEP);
        count += usize::from(!repeat);
    }
    i
}

/// Entries of a phrase table at most (64 MiB).
const MAX_TABLE_ENTRIES: usize = 1 << 24;

/// The phrase automaton re-encoded as a dense table over the phrases' own bytes, for the scan's inner loop.
#[derive(Debug, Clone)]
struct Table {
    /// Byte → class (class 0 also holds every byte no phrase contains).
    classes: [u8; 256],
    /// Classes, the width of a row.
    stride: u32,
    /// `trans[state + class]` is the next state; states are row offsets (index × stride). A state entered on a
    /// separator stays on further separators, which collapses runs of them without a pass of its own.
    trans: Vec<u32>,
    /// States below this are match states…
    match_limit: u32,
    /// …with the list bits `match_bits[state / stride]`.
    match_bits: Vec<u32>,
    /// The start state.
    start: u32,
}

impl Table {
    fn build(patterns: &[Vec<u8>], pattern_bits: &[u32]) -> Result<Table, PhraseError> {
        let dfa = DFA::builder()
            .match_kind(MatchKind::Standard)
            .start_kind(StartKind::Unanchored)
            .prefilter(false)
            .build(patterns)
            .map_err(PhraseError::Build)?;
        let start = dfa.start_state(Anchored::No).map_err(PhraseError::Start)?;
        let mut used = [false; 256];
        for p in patterns {
            for &b in p {
                used[usize::from(b)] = true;
            }
        }
        // One representative byte per class; class 0 is "no phrase has this byte" when there is such a byte.
        let mut classes = [0u8; 256];
        let mut reps: Vec<u8> = Vec::new();
        if let Some(other) = (0..=255u8).find(|&b| !used[usize::from(b)]) {
            reps.push(other);
        }
        for b in 0..=255u8 {
            if used[usize::from(b)] {
                classes[usize::from(b)] = u8::try_from(reps.len()).unwrap_or(u8::MAX);
                reps.push(b);
            }
        }
        let k = reps.len();
        // Breadth-first over the states reachable from the start; each non-start state is entered on one byte
        // only (the last byte of the prefix it stands for), recorded as its label.
        let mut index: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
        let mut states: Vec<(StateID, Option<u8>)> = vec![(start, None)];
        index.insert(start.as_usize(), 0);
        let mut next: Vec<usize> = Vec::new();
        let mut i = 0;
        while let Some(&(sid, _)) = states.get(i) {
            for &r in &reps {
                let to = dfa.next_state(Anchored::No, sid, r);
                let j = match index.get(&to.as_usize()) {
                    Some(&j) => j,
                    None => {
                        let j = states.len();
                        if (j + 1).saturating_mul(k) > MAX_TABLE_ENTRIES {
                            return Err(PhraseError::TooLarge);
                        }
                        index.insert(to.as_usize(), j);
                        states.push((to, Some(r)));
                        j
                    }
                };
                next.push(j);
            }
            i += 1;
        }
        // Match states first, so a step tests "is a match" with one comparison.
        let n = states.len();
        let is_match: Vec<bool> = states.iter().map(|&(s, _)| dfa.is_match(s)).collect();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| !is_match[i]);
        let mut renumber = vec![0usize; n];
        for (new, &old) in order.iter().enumerate() {
            renumber[old] = new;
        }
        let matches = is_match.iter().filter(|&&m| m).count();
        let sep_class = used[usize::from(SEP)].then_some(usize::from(classes[usize::from(SEP)]));
        let row = |i: usize| u32::try_from(i * k).unwrap_or(u32::MAX);
        let mut trans = vec![0u32; n * k];
        for (old, &(_, label)) in states.iter().enumerate() {
            let new = renumber[old];
            for c in 0..k {
                let to = if label == Some(SEP) && sep_class == Some(c) {
                    new
                } else {
                    renumber[next[old * k + c]]
                };
                trans[new * k + c] = row(to);
            }
        }
        let match_bits = order[..matches]
            .iter()
            .map(|&old| {
                let sid = states[old].0;
                (0..dfa.match_len(sid))
                    .map(|i| {
                        let pid = dfa.match_pattern(sid, i).as_usize();
                        pattern_bits.get(pid).copied().unwrap_or(0)
                    })
                    .fold(0, |a, b| a | b)
            })
            .collect();
        Ok(Table {
            classes,
            stride: u32::try_from(k).unwrap_or(u32::MAX),
            trans,
            match_limit: row(matches),
            match_bits,
            start: row(renumber[0]),
        })
    }

    #[inline(always)]
    fn step(&self, s: u32, b: u8) -> u32 {
        let c = u32::from(self.classes[usize::from(b)]);
        self.trans
            .get(s.wrapping_add(c) as usize)
            .copied()
            .unwrap_or(self.start)
    }

    /// List bits of state `s` (0 unless it is a match state).
    #[cold]
    fn bits(&self, s: u32) -> u32 {
        if s >= self.match_limit {
            return 0;
        }
        self.match_bits
            .get((s / self.stride.max(1)) as usize)
            .copied()
            .unwrap_or(0)
    }

    /// One walk over `bytes` from state `s`.
    fn walk(&self, mut s: u32, bytes: &[u8]) -> u32 {
        let mut hits = 0;
        for &b in bytes {
            s = self.step(s, b);
            if s < self.match_limit {
                hits |= self.bits(s);
            }
        }
        hits
    }

    /// Walk a chunk in four interleaved lanes (independent walks over its quarters, each starting early enough
    /// to see every match that ends in its quarter).
    fn walk_laned(&self, chunk: &[u8], need: usize) -> u32 {
        let n = chunk.len();
        if n < MIN_LANED.max(8 * need) {
            return self.walk(self.start, chunk);
        }
        let q = n / 4;
        let lane = |k: usize| {
            let from = if k == 0 { 0 } else { back(chunk, k * q, need) };
            let to = if k == 3 { n } else { (k + 1) * q };
            chunk.get(from..to).unwrap_or_default()
        };
        let (l0, l1, l2, l3) = (lane(0), lane(1), lane(2), lane(3));
        let common = l0.len().min(l1.len()).min(l2.len()).min(l3.len());
        let (mut s0, mut s1, mut s2, mut s3) = (self.start, self.start, self.start, self.start);
        let ml = self.match_limit;
        let mut hits = 0u32;
        for (((&b0, &b1), &b2), &b3) in l0.iter().zip(l1).zip(l2).zip(l3) {
            s0 = self.step(s0, b0);
            s1 = self.step(s1, b1);
            s2 = self.step(s2, b2);
            s3 = self.step(s3, b3);
            if (s0 < ml) | (s1 < ml) | (s2 < ml) | (s3 < ml) {
                hits |= self.bits(s0) | self.bits(s1) | self.bits(s2) | self.bits(s3);
            }
        }
        for (s, l) in [(s0, l0), (s1, l1), (s2, l2), (s3, l3)] {
            hits |= self.walk(s, l.get(common..).unwrap_or_default());
        }
        hits
    }
}

/// Normalised text is scanned in chunks of this many bytes (a stack buffer).
const SCAN_CHUNK: usize = 4096;
/// Chunks shorter than this are scanned in one lane.
const MIN_LANED: usize = 512;

impl PhraseMatcher {
    /// Compile named phrase lists (at most [`MAX_PHRASE_LISTS`]). Each phrase is normalised like the text it is
    /// matched against; it matches whole words, or a word prefix / suffix where it ends / starts with `*`.
    pub fn new(lists: &[(&str, Vec<String>)]) -> Result<PhraseMatcher, PhraseError> {
        if lists.len() > MAX_PHRASE_LISTS {
            return Err(PhraseError::TooManyLists { lists: lists.len() });
        }
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut pattern_bits = Vec::new();
        let mut all = 0u32;
        for (li, (name, phrases)) in lists.iter().enumerate() {
            let bit = 1u32 << li;
            for (pi, phrase) in phrases.iter().enumerate() {
                let Some(p) = normalise_phrase(phrase) else {
                    return Err(PhraseError::EmptyPhrase {
                        list: (*name).to_owned(),
                        index: pi,
                    });
                };
                if p.len() > MAX_PHRASE_BYTES {
                    return Err(PhraseError::TooLong {
                        list: (*name).to_owned(),
                        index: pi,
                    });
                }
                patterns.push(p);
                pattern_bits.push(bit);
                all |= bit;
            }
        }
        let table = if patterns.is_empty() {
            None
        } else {
            Some(Table::build(&patterns, &pattern_bits)?)
        };
        Ok(PhraseMatcher {
            table,
            names: lists.iter().map(|(n, _)| (*n).to_owned()).collect(),
            all,
            phrases: patterns.len(),
            max_len: patterns.iter().map(Vec::len).max().unwrap_or(0),
            stock: super::signature::StockShingles::new(
                lists.iter().flat_map(|(_, p)| p.iter().map(String::as_str)),
            ),
        })
    }

    /// The shingles of every phrase of the lists: phrases many unrelated users type, so a prompt signature leaves
    /// them out ([`super::signature::signature_with`]) and a shared phrase never links two accounts by itself.
    pub fn stock_shingles(&self) -> &super::signature::StockShingles {
        &self.stock
    }

    /// The three default lists, named `elicitation`, `rubric` and `trajectory` (bits 0, 1, 2).
    pub fn with_defaults() -> Result<PhraseMatcher, PhraseError> {
        let owned = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
        PhraseMatcher::new(&[
            ("elicitation", owned(DEFAULT_ELICITATION)),
            ("rubric", owned(DEFAULT_RUBRIC)),
            ("trajectory", owned(DEFAULT_TRAJECTORY)),
        ])
    }

    /// The lists' names, in bit order.
    pub fn list_names(&self) -> &[String] {
        &self.names
    }

    /// Number of phrases compiled.
    pub fn phrases(&self) -> usize {
        self.phrases
    }

    /// Names of the lists in `hits`.
    pub fn hit_names(&self, hits: PhraseHits) -> impl Iterator<Item = &str> + '_ {
        self.names
            .iter()
            .enumerate()
            .filter(move |(i, _)| hits.contains(*i))
            .map(|(_, n)| n.as_str())
    }

    /// The lists `text` matches. The text is normalised byte for byte into a stack buffer, a chunk at a time, and
    /// each chunk is walked in four interleaved lanes (see "Phrase matching" in the module docs). No allocation;
    /// stops after the chunk in which every list has matched.
    pub fn scan(&self, text: &str) -> PhraseHits {
        let Some(table) = &self.table else {
            return PhraseHits::NONE;
        };
        let need = self.max_len.saturating_sub(1).min(MAX_PHRASE_BYTES);
        let mut buf = [0u8; SCAN_CHUNK + MAX_PHRASE_BYTES + 2];
        // The text starts and ends at a word boundary.
        buf[0] = SEP;
        let mut len: usize = 1;
        let mut rest = text;
        let mut hits = 0u32;
        loop {
            // Cut at a char boundary so no typographic separator straddles two chunks.
            let mut cut = rest.len().min(SCAN_CHUNK);
            while cut > 0 && !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (head, tail) = rest.split_at_checked(cut).unwrap_or((rest, ""));
            rest = tail;
            if let Some(out) = buf.get_mut(len..len + head.len()) {
                map_chunk(head.as_bytes(), out);
                len += head.len();
            }
            let done = rest.is_empty() || head.is_empty();
            if done && buf.get(len.wrapping_sub(1)) != Some(&SEP) {
                if let Some(b) = buf.get_mut(len) {
                    *b = SEP;
                    len += 1;
                }
            }
            hits |= table.walk_laned(buf.get(..len).unwrap_or_default(), need);
            if done || hits == self.all {
                break;
            }
            // Carry the tail a match may straddle into the next chunk, collapsed (so it fits).
            let from = back(&buf, len, need);
            let mut j = 0;
            let mut prev = 0u8;
            for i in from..len {
                let c = buf.get(i).copied().unwrap_or(SEP);
                if !(c == SEP && prev == SEP) {
                    if let Some(o) = buf.get_mut(j) {
                        *o = c;
                    }
                    j += 1;
                }
                prev = c;
            }
            len = j;
        }
        PhraseHits(hits)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------------------------

/// What the caller knows about one request when it arrives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestSignals<'a> {
    /// Arrival time on the engine's clock.
    pub now: Nanos,
    /// The prompt text; only scanned by the phrase matcher, never stored.
    pub prompt_text: &'a str,
    /// Anthropic extended thinking is enabled with this budget.
    pub thinking_budget: Option<u32>,
    /// OpenAI `reasoning_effort` / `reasoning.effort` is `"high"`.
    pub reasoning_effort_high: bool,
    /// `max_tokens` / `max_completion_tokens` / `max_output_tokens`.
    pub max_output_tokens: Option<u32>,
    /// The model asked for.
    pub model: Option<&'a str>,
    /// Estimated prompt tokens.
    pub input_tokens: u64,
    /// The prompt's signature is shared with other accounts (from the linker).
    pub template_shared: bool,
    /// A stable key of the prompt's template (None: the prompt is its own template).
    pub template_key: Option<u64>,
    /// Hash of the whole prompt (None: not counted for breadth).
    pub fill_key: Option<u64>,
    /// The client's fingerprints contradict each other.
    pub fingerprint_inconsistent: bool,
    /// The account's client stack differs from the one of its previous request ([`AccountSignals::note_stack`]).
    pub stack_changed: bool,
}

// ---------------------------------------------------------------------------------------------------------------
// Shared window state
// ---------------------------------------------------------------------------------------------------------------

/// Decayed sums: every field is multiplied by the same factor as time passes, except `gap_mean` (a mean).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counters {
    /// Requests.
    n: f32,
    /// Elicitation credit (1 per phrase hit, `elicitation_param_credit` per parameter-only request).
    elicit: f32,
    /// Requests with a shared template.
    shared: f32,
    /// Requests with pinned `max_tokens`.
    pinned: f32,
    /// Requests with inconsistent fingerprints.
    flagged: f32,
    /// Youth-weighted requests to new models.
    pivot: f32,
    /// Input tokens.
    input: f32,
    /// Output tokens (settled).
    output: f32,
    /// Weight of the gap statistics.
    gap_w: f32,
    /// Weighted mean gap (seconds).
    gap_mean: f32,
    /// Weighted sum of squared deviations of gaps.
    gap_m2: f32,
    /// Requests whose client stack changed from the account's previous one.
    churn: f32,
    /// Requests settled in full (not degraded).
    full: f32,
    /// Output tokens of those.
    full_output: f32,
    /// Output tokens of those that were long yields ([`ScorePolicy::yield_min_output_tokens`],
    /// [`ScorePolicy::yield_min_ratio`]).
    yield_output: f32,
}

impl Counters {
    fn scale(&mut self, f: f32) {
        self.n *= f;
        self.elicit *= f;
        self.shared *= f;
        self.pinned *= f;
        self.flagged *= f;
        self.pivot *= f;
        self.input *= f;
        self.output *= f;
        self.gap_w *= f;
        self.gap_m2 *= f;
        self.churn *= f;
        self.full *= f;
        self.full_output *= f;
        self.yield_output *= f;
    }

    /// Adds another window's sums (already decayed to the same time). The gap statistics stay this window's own:
    /// inter-arrival times of two request streams do not combine into those of the merged stream.
    fn add_sums(&mut self, o: &Counters) {
        self.n += o.n;
        self.elicit += o.elicit;
        self.shared += o.shared;
        self.pinned += o.pinned;
        self.flagged += o.flagged;
        self.pivot += o.pivot;
        self.input += o.input;
        self.output += o.output;
        self.churn += o.churn;
        self.full += o.full;
        self.full_output += o.full_output;
        self.yield_output += o.yield_output;
    }

    /// Add one gap (seconds): West's weighted incremental mean and variance.
    fn add_gap(&mut self, x: f32) {
        let w = self.gap_w + 1.0;
        let delta = x - self.gap_mean;
        let mean = self.gap_mean + delta / w;
        self.gap_m2 = (self.gap_m2 + delta * (x - mean)).max(0.0);
        self.gap_mean = mean;
        self.gap_w = w;
    }
}

/// Distinct fill keys and template keys of the current and the previous epoch (an epoch is one half-life), as
/// 128-bit linear-counting bitmaps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Breadth {
    epoch: u32,
    fills: [u64; 2],
    templates: [u64; 2],
    prev_fills: [u64; 2],
    prev_templates: [u64; 2],
}

fn epoch_of(now: Nanos, half_life: Nanos) -> u32 {
    // Truncation is fine: only equality and the difference of neighbouring epochs are used.
    (now / half_life.max(1)) as u32
}

fn set_bit(words: &mut [u64; 2], h: u64) {
    let bit = (h % u64::from(BREADTH_BITS)) as usize;
    if let Some(w) = words.get_mut(bit / 64) {
        *w |= 1 << (bit % 64);
    }
}

/// Linear-counting estimate of the distinct keys set into an `m`-bit map with `zeros` bits still clear:
/// `m · ln(m / zeros)`, with `zeros` taken as at least ½ (a full map reads `m · ln 2m`).
fn linear_count(zeros: u32, m: u32) -> f32 {
    if zeros >= m {
        return 0.0;
    }
    let m = f64::from(m);
    (m * (m / f64::from(zeros).max(0.5)).ln()) as f32
}

fn zeros(words: [u64; 2]) -> u32 {
    BREADTH_BITS - words[0].count_ones() - words[1].count_ones()
}

impl Breadth {
    fn insert(&mut self, now: Nanos, half_life: Nanos, template: u64, fill: u64) {
        let e = epoch_of(now, half_life);
        let ahead = e.wrapping_sub(self.epoch) as i32;
        if ahead == 1 {
            self.prev_fills = self.fills;
            self.prev_templates = self.templates;
            self.fills = [0; 2];
            self.templates = [0; 2];
            self.epoch = e;
        } else if ahead > 1 {
            *self = Breadth {
                epoch: e,
                ..Breadth::default()
            };
        }
        set_bit(&mut self.fills, mix(fill));
        set_bit(&mut self.templates, mix(template ^ 0x9e37_79b9_7f4a_7c15));
    }

    /// This sketch as it would read in epoch `e` (not earlier than its own).
    fn at_epoch(self, e: u32) -> Breadth {
        match e.wrapping_sub(self.epoch) as i32 {
            i32::MIN..=0 => self,
            1 => Breadth {
                epoch: e,
                fills: [0; 2],
                templates: [0; 2],
                prev_fills: self.fills,
                prev_templates: self.templates,
            },
            _ => Breadth {
                epoch: e,
                ..Breadth::default()
            },
        }
    }

    /// The union of two sketches (the keys either has seen), in the later of their epochs.
    fn union(self, other: Breadth) -> Breadth {
        let e = if (other.epoch.wrapping_sub(self.epoch) as i32) > 0 {
            other.epoch
        } else {
            self.epoch
        };
        let (a, b) = (self.at_epoch(e), other.at_epoch(e));
        let or = |x: [u64; 2], y: [u64; 2]| [x[0] | y[0], x[1] | y[1]];
        Breadth {
            epoch: e,
            fills: or(a.fills, b.fills),
            templates: or(a.templates, b.templates),
            prev_fills: or(a.prev_fills, b.prev_fills),
            prev_templates: or(a.prev_templates, b.prev_templates),
        }
    }

    /// Distinct fills ÷ distinct templates over the current and previous epoch as seen at `now` (0: no keys).
    fn ratio(&self, now: Nanos, half_life: Nanos) -> f32 {
        let ahead = epoch_of(now, half_life).wrapping_sub(self.epoch) as i32;
        let (f, t) = match ahead {
            i32::MIN..=0 => (
                [
                    self.fills[0] | self.prev_fills[0],
                    self.fills[1] | self.prev_fills[1],
                ],
                [
                    self.templates[0] | self.prev_templates[0],
                    self.templates[1] | self.prev_templates[1],
                ],
            ),
            1 => (self.fills, self.templates),
            _ => return 0.0,
        };
        let fills = linear_count(zeros(f), BREADTH_BITS);
        if fills <= 0.0 {
            return 0.0;
        }
        fills / linear_count(zeros(t), BREADTH_BITS).max(1.0)
    }
}

/// SplitMix64's finaliser: spreads any key over all 64 bits.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A response of `output` tokens to a prompt of `input` tokens is a long yield: long
/// ([`ScorePolicy::yield_min_output_tokens`]) and many times its prompt ([`ScorePolicy::yield_min_ratio`]).
fn is_long_yield(output: u64, input: u64, policy: &ScorePolicy) -> bool {
    output >= u64::from(policy.yield_min_output_tokens)
        && output as f64 >= f64::from(policy.yield_min_ratio) * input as f64
}

/// `2^(−dt / half_life)`, exactly 1 when no time passed.
fn decay_factor(dt: Nanos, half_life: Nanos) -> f32 {
    if dt == 0 {
        return 1.0;
    }
    if half_life == 0 {
        return 0.0;
    }
    (-(dt as f64) / half_life as f64).exp2() as f32
}

/// Events per second of a counter decayed with `half_life`, corrected for a window younger than its time constant
/// `τ = half_life / ln 2`: `count / (τ · (1 − e^(−age/τ)))`, the exact rate of a steady source.
fn rate_per_sec(count: f32, half_life: Nanos, age: Nanos) -> f64 {
    let tau = half_life as f64 / SECOND as f64 / std::f64::consts::LN_2;
    if tau <= 0.0 || count <= 0.0 {
        return 0.0;
    }
    let age = age.max(MIN_RATE_AGE) as f64 / SECOND as f64;
    let fill = -(-age / tau).exp_m1();
    f64::from(count) / (tau * fill)
}

fn share(x: f32, n: f32) -> f32 {
    if n > f32::EPSILON {
        (x / n).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// What only a cluster has, for its score.
#[derive(Debug, Clone, Copy, Default)]
struct ClusterFacts {
    /// Decayed requests in lockstep seconds.
    lock: f32,
    /// Members now.
    members: u32,
    /// Distinct members that sent in the current and the previous epoch (0: none).
    senders: f32,
}

/// Bits of a cluster's distinct-senders sketch.
const SENDER_BITS: u32 = 256;

/// Distinct members that sent requests in the current and the previous epoch (one half-life each), as 256-bit
/// linear-counting bitmaps (saturating near 1 600). Counted from the requests a state observed, so a cluster's core
/// counts only the members whose requests it holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Senders {
    epoch: u32,
    cur: [u64; 4],
    prev: [u64; 4],
}

impl Senders {
    fn insert(&mut self, now: Nanos, half_life: Nanos, member: u64) {
        *self = self.at_epoch(epoch_of(now, half_life));
        let bit = (mix(member ^ 0x5e4d_e125) % u64::from(SENDER_BITS)) as usize;
        if let Some(w) = self.cur.get_mut(bit / 64) {
            *w |= 1 << (bit % 64);
        }
    }

    /// This sketch as it would read in epoch `e` (not earlier than its own).
    fn at_epoch(self, e: u32) -> Senders {
        match e.wrapping_sub(self.epoch) as i32 {
            i32::MIN..=0 => self,
            1 => Senders {
                epoch: e,
                cur: [0; 4],
                prev: self.cur,
            },
            _ => Senders {
                epoch: e,
                ..Senders::default()
            },
        }
    }

    /// The members either has seen, in the later of their epochs.
    fn union(self, other: Senders) -> Senders {
        let e = if (other.epoch.wrapping_sub(self.epoch) as i32) > 0 {
            other.epoch
        } else {
            self.epoch
        };
        let (a, b) = (self.at_epoch(e), other.at_epoch(e));
        let mut out = Senders {
            epoch: e,
            ..Senders::default()
        };
        for i in 0..4 {
            out.cur[i] = a.cur[i] | b.cur[i];
            out.prev[i] = a.prev[i] | b.prev[i];
        }
        out
    }

    /// Distinct senders in the current and previous epoch as seen at `now`.
    fn count(&self, now: Nanos, half_life: Nanos) -> f32 {
        let s = self.at_epoch(epoch_of(now, half_life));
        let ones: u32 = (0..4).map(|i| (s.cur[i] | s.prev[i]).count_ones()).sum();
        linear_count(SENDER_BITS - ones, SENDER_BITS)
    }
}

/// State shared by accounts and clusters.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Window {
    first_seen: Nanos,
    /// Time the counters were last decayed to.
    updated: Nanos,
    /// Last arrival (for gaps).
    last_arrival: Nanos,
    requests_total: u32,
    tier_rpm: u32,
    /// Requests decayed with the activity half-life.
    fast: f32,
    c: Counters,
    breadth: Breadth,
}

/// Signal values and the factors of the score at one time.
struct Snapshot {
    values: [f32; Signal::COUNT],
    n: f32,
    evidence: f32,
    activity: f32,
}

impl Window {
    fn new(first_seen: Nanos) -> Window {
        Window {
            first_seen,
            updated: first_seen,
            last_arrival: first_seen,
            requests_total: 0,
            tier_rpm: 0,
            fast: 0.0,
            c: Counters::default(),
            breadth: Breadth::default(),
        }
    }

    /// Decay everything to `now` (never backwards); returns the factor applied to the main counters.
    fn decay_to(&mut self, now: Nanos, policy: &ScorePolicy) -> f32 {
        let dt = now.saturating_sub(self.updated);
        if dt == 0 {
            return 1.0;
        }
        let f = decay_factor(dt, policy.half_life);
        self.c.scale(f);
        self.fast *= decay_factor(dt, policy.activity_half_life);
        self.updated = now;
        f
    }

    fn observe(
        &mut self,
        req: &RequestSignals<'_>,
        hits: PhraseHits,
        policy: &ScorePolicy,
        tier_rpm: u64,
    ) {
        let now = req.now;
        self.decay_to(now, policy);
        if self.requests_total > 0 && now >= self.last_arrival {
            let gap = (now - self.last_arrival) as f64 / SECOND as f64;
            self.c.add_gap(gap as f32);
        }
        if self.requests_total == 0 || now > self.last_arrival {
            self.last_arrival = now;
        }
        self.requests_total = self.requests_total.saturating_add(1);
        self.tier_rpm = u32::try_from(tier_rpm).unwrap_or(u32::MAX);
        self.first_seen = self.first_seen.min(now);

        self.c.n += 1.0;
        self.fast += 1.0;
        let by_params = req
            .thinking_budget
            .is_some_and(|b| b >= policy.thinking_budget_threshold)
            || req.reasoning_effort_high;
        self.c.elicit += if hits.any() {
            1.0
        } else if by_params {
            policy.elicitation_param_credit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        if req.template_shared {
            self.c.shared += 1.0;
        }
        if let Some(max) = req.max_output_tokens {
            let ceiling = f64::from(policy.ceiling(req.model));
            if f64::from(max) >= f64::from(policy.pinned_fraction) * ceiling {
                self.c.pinned += 1.0;
            }
        }
        if req.fingerprint_inconsistent {
            self.c.flagged += 1.0;
        }
        if req.stack_changed {
            self.c.churn += 1.0;
        }
        if let Some(release) = req.model.and_then(|m| policy.release_of(m)) {
            if now >= release && now - release <= policy.new_model_window {
                let young = self.first_seen.saturating_add(policy.pivot_young) >= release;
                self.c.pivot += if young {
                    1.0
                } else {
                    policy.pivot_old_weight.clamp(0.0, 1.0)
                };
            }
        }
        self.c.input += req.input_tokens as f32;
        if let Some(fill) = req.fill_key {
            let template = req.template_key.unwrap_or(fill);
            self.breadth.insert(now, policy.half_life, template, fill);
        }
    }

    /// `full`: the request was served in full (not degraded), so its output counts towards
    /// [`Signal::OutputLength`] too, and towards [`Signal::YieldPerMember`] when it is a long yield of its
    /// `input_tokens` (None: the input is not known, and the yield is not counted).
    fn settle(
        &mut self,
        output_tokens: u64,
        input_tokens: Option<u64>,
        now: Nanos,
        policy: &ScorePolicy,
        full: bool,
    ) {
        self.decay_to(now, policy);
        self.c.output += output_tokens as f32;
        if full {
            self.c.full += 1.0;
            self.c.full_output += output_tokens as f32;
            if input_tokens.is_some_and(|i| is_long_yield(output_tokens, i, policy)) {
                self.c.yield_output += output_tokens as f32;
            }
        }
    }

    /// Adds `other`'s evidence, decayed to `now`, as if its requests had been observed here: its requests and what
    /// they carried, its activity, its breadth sketch, and its first-seen time. Returns the factor this window's own
    /// counters were decayed by (for state kept beside it).
    fn absorb(&mut self, other: &Window, now: Nanos, policy: &ScorePolicy) -> f32 {
        let f = self.decay_to(now, policy);
        let dt = now.saturating_sub(other.updated);
        let mut c = other.c;
        c.scale(decay_factor(dt, policy.half_life));
        self.c.add_sums(&c);
        self.fast += other.fast * decay_factor(dt, policy.activity_half_life);
        self.requests_total = self.requests_total.saturating_add(other.requests_total);
        self.first_seen = self.first_seen.min(other.first_seen);
        self.last_arrival = self.last_arrival.max(other.last_arrival);
        self.breadth = self.breadth.union(other.breadth);
        f
    }

    /// Decayed requests at `now`.
    fn requests(&self, now: Nanos, policy: &ScorePolicy) -> f32 {
        self.c.n * decay_factor(now.saturating_sub(self.updated), policy.half_life)
    }

    /// Every signal's raw value at `now` (the cluster-only signals from `cluster`, if any), without changing the
    /// state.
    fn snapshot(&self, now: Nanos, policy: &ScorePolicy, cluster: ClusterFacts) -> Snapshot {
        let dt = now.saturating_sub(self.updated);
        let f = decay_factor(dt, policy.half_life);
        let n = self.c.n * f;
        let fast = self.fast * decay_factor(dt, policy.activity_half_life);
        let c = &self.c;
        let age = now.saturating_sub(self.first_seen);

        let mut v = [0.0f32; Signal::COUNT];
        v[Signal::ReasoningElicitation.index()] = share(c.elicit, c.n);
        v[Signal::TemplateReuse.index()] = share(c.shared, c.n);
        v[Signal::OutputRatio.index()] = if c.n > 0.0 {
            c.output / c.input.max(c.n)
        } else {
            0.0
        };
        v[Signal::PinnedMaxTokens.index()] = share(c.pinned, c.n);
        let gap_w = c.gap_w * f;
        v[Signal::TimingRegularity.index()] = if gap_w >= MIN_GAPS {
            (c.gap_m2 / c.gap_w).max(0.0).sqrt() / c.gap_mean.max(MIN_GAP_MEAN_SECS)
        } else {
            1.0
        };
        v[Signal::Lockstep.index()] = share(cluster.lock, c.n);
        let rate = rate_per_sec(n, policy.half_life, age);
        v[Signal::MemberSpread.index()] =
            if cluster.members >= policy.spread_min_members && rate > 0.0 {
                (f64::from(cluster.members) / (rate * 60.0)) as f32
            } else {
                0.0
            };
        v[Signal::Volume.index()] = if self.tier_rpm > 0 {
            (rate * 60.0 / f64::from(self.tier_rpm)) as f32
        } else {
            0.0
        };
        v[Signal::AccountAge.index()] = (age as f64 / HOUR as f64) as f32;
        v[Signal::Breadth.index()] = self.breadth.ratio(now, policy.half_life);
        v[Signal::FingerprintInconsistency.index()] = share(c.flagged, c.n);
        v[Signal::ReleasePivot.index()] = share(c.pivot, c.n);
        v[Signal::StackChurn.index()] = share(c.churn, c.n);
        v[Signal::OutputLength.index()] = if c.full > f32::EPSILON {
            c.full_output / c.full
        } else {
            0.0
        };
        // Per request served in full, so that acting on the cluster (degraded or refused answers) does not
        // take its own evidence away, shrunk towards 0 by `min_requests` requests (a few long answers are not a
        // yield); times the requests each sender sends an hour, over at least `YIELD_MIN_AGE` (a cluster that
        // is still forming counts each member from its first request, so its young rate per member is high).
        // Senders, not the linker's members: the members whose requests this state holds (a cluster's core
        // holds only its own, so honest members linked in do not dilute it).
        v[Signal::YieldPerMember.index()] = if cluster.senders >= 1.0 {
            let per_request = c.yield_output / (c.full + policy.min_requests.max(1.0));
            let rate = rate_per_sec(n, policy.half_life, age.max(YIELD_MIN_AGE));
            (f64::from(per_request) * rate * 3600.0 / f64::from(cluster.senders)) as f32
        } else {
            0.0
        };

        let evidence = if n < policy.min_requests || n <= 0.0 {
            0.0
        } else {
            n / (n + policy.prior_requests.max(0.0))
        };
        let fast_rate = rate_per_sec(fast, policy.activity_half_life, age);
        let activity = if rate > 0.0 {
            (fast_rate / rate).min(1.0) as f32
        } else {
            0.0
        };
        Snapshot {
            values: v,
            n,
            evidence,
            activity,
        }
    }

    fn score(&self, now: Nanos, policy: &ScorePolicy, cluster: Option<ClusterFacts>) -> Score {
        let snap = self.snapshot(now, policy, cluster.unwrap_or_default());
        let mut contributions = Vec::with_capacity(Signal::COUNT);
        let mut raw = 0.0f32;
        for s in Signal::ALL {
            if s.cluster_only() && cluster.is_none() {
                continue;
            }
            let value = snap.values[s.index()];
            let normalised = policy.ramps.get(s).apply(value);
            let weight = policy.weights.get(s).max(0.0);
            let points = weight * normalised;
            if points.is_finite() {
                raw += points;
            }
            contributions.push(Contribution {
                signal: s,
                value,
                normalised,
                weight,
                contribution: points,
            });
        }
        let scale = snap.evidence * snap.activity / raw.max(1.0);
        for c in &mut contributions {
            c.contribution *= scale;
        }
        contributions.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
        let raw = raw.min(1.0);
        let value = (raw * snap.evidence * snap.activity).clamp(0.0, 1.0);
        Score {
            value,
            raw,
            evidence: snap.evidence,
            activity: snap.activity,
            requests: snap.n,
            contributions,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Score
// ---------------------------------------------------------------------------------------------------------------

/// One signal's part in a score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Contribution {
    /// Which signal.
    pub signal: Signal,
    /// Its raw value (unit: [`Signal::unit`]).
    pub value: f32,
    /// The raw value through the signal's [`Ramp`] (0..=1).
    pub normalised: f32,
    /// The signal's weight.
    pub weight: f32,
    /// Its share of [`Score::value`]: `weight × normalised × evidence × activity`, scaled down with the others
    /// when the weighted sum exceeds 1. The contributions sum to the score.
    pub contribution: f32,
}

/// A score with its reasons.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// The score, 0..=1: `min(1, Σ weight × normalised) × evidence × activity`.
    pub value: f32,
    /// `min(1, Σ weight × normalised)`, before evidence and activity.
    pub raw: f32,
    /// `n / (n + prior_requests)`, or 0 while the decayed request count `n` is below `min_requests`.
    pub evidence: f32,
    /// Short-window request rate ÷ window request rate, at most 1: falls when the source stops.
    pub activity: f32,
    /// Decayed requests in the window (`n`).
    pub requests: f32,
    /// Every applicable signal, largest contribution first.
    pub contributions: Vec<Contribution>,
}

impl Score {
    /// The `k` largest contributions.
    pub fn top(&self, k: usize) -> &[Contribution] {
        &self.contributions[..k.min(self.contributions.len())]
    }

    /// The contribution of `signal`, if it applies.
    pub fn contribution(&self, signal: Signal) -> Option<&Contribution> {
        self.contributions.iter().find(|c| c.signal == signal)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Accounts and clusters
// ---------------------------------------------------------------------------------------------------------------

/// One account's behavioural signals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccountSignals {
    w: Window,
    /// Its history went into a cluster's state ([`AccountSignals::join_cluster`]).
    joined: bool,
    /// Key of the client stack of its last request (0: none yet).
    last_stack: u64,
}

/// An account's behaviour as plain numbers, for comparing accounts by similarity ([`super::cohort`]): what it asks
/// for, what it gets, how often, and whether its client stack stays put.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Profile {
    /// Requests observed since the state was created.
    pub requests_total: u32,
    /// Requests per hour over the window.
    pub requests_per_hour: f32,
    /// Estimated prompt tokens per request.
    pub input_per_request: f32,
    /// Output tokens per request served in full (0: none settled yet).
    pub output_per_request: f32,
    /// [`Signal::ReasoningElicitation`]'s raw value.
    pub elicitation: f32,
    /// [`Signal::PinnedMaxTokens`]'s raw value.
    pub pinned: f32,
    /// [`Signal::StackChurn`]'s raw value.
    pub stack_churn: f32,
}

impl AccountSignals {
    /// An account first seen at `first_seen` (its creation time, if the caller knows it, else its first request).
    pub fn new(first_seen: Nanos) -> AccountSignals {
        AccountSignals {
            w: Window::new(first_seen),
            joined: false,
            last_stack: 0,
        }
    }

    /// Record the client stack (a hash of its JA4 and HTTP fingerprint; None: unknown) of the request about to be
    /// observed, and say whether it differs from the previous request's: pass that as
    /// [`RequestSignals::stack_changed`]. Honest clients keep theirs; a campaign that rotates stacks per request
    /// (curl-impersonate style) changes it on most requests.
    pub fn note_stack(&mut self, stack: Option<u64>) -> bool {
        let Some(k) = stack.map(|k| k | 1) else {
            return false;
        };
        let changed = self.last_stack != 0 && self.last_stack != k;
        self.last_stack = k;
        changed
    }

    /// The account's behaviour at `now`, for [`super::cohort::keys`].
    pub fn profile(&self, now: Nanos, policy: &ScorePolicy) -> Profile {
        let c = &self.w.c;
        let age = now.saturating_sub(self.w.first_seen);
        let n = self.w.requests(now, policy);
        Profile {
            requests_total: self.w.requests_total,
            requests_per_hour: (rate_per_sec(n, policy.half_life, age) * 3600.0) as f32,
            input_per_request: if c.n > f32::EPSILON {
                c.input / c.n
            } else {
                0.0
            },
            output_per_request: if c.full > f32::EPSILON {
                c.full_output / c.full
            } else {
                0.0
            },
            elicitation: share(c.elicit, c.n),
            pinned: share(c.pinned, c.n),
            stack_churn: share(c.churn, c.n),
        }
    }

    /// The account's history so far, the first time it is called (later: `None`), for
    /// [`ClusterSignals::absorb_member`] when the account joins a scored cluster or is first seen in one: call it
    /// before observing the current request, which the cluster observes itself. Only the first cluster gets the
    /// history: when that cluster merges into another, its state (history included) goes along
    /// ([`ClusterSignals::absorb_cluster`]); if it dissolves, a later cluster sees only later requests.
    pub fn join_cluster(&mut self) -> Option<AccountSignals> {
        if self.joined {
            return None;
        }
        self.joined = true;
        Some(*self)
    }

    /// Record a request: scans the prompt with `matcher`, then [`AccountSignals::observe_hits`]. Returns the lists
    /// the prompt matched (for the audit log).
    pub fn observe(
        &mut self,
        req: &RequestSignals<'_>,
        matcher: &PhraseMatcher,
        policy: &ScorePolicy,
        tier_rpm: u64,
    ) -> PhraseHits {
        let hits = matcher.scan(req.prompt_text);
        self.w.observe(req, hits, policy, tier_rpm);
        hits
    }

    /// Record a request whose prompt was already scanned (scan once, feed the account and its cluster).
    /// `tier_rpm` is the account tier's requests per minute.
    pub fn observe_hits(
        &mut self,
        req: &RequestSignals<'_>,
        hits: PhraseHits,
        policy: &ScorePolicy,
        tier_rpm: u64,
    ) {
        self.w.observe(req, hits, policy, tier_rpm);
    }

    /// Record what a response served in full actually produced.
    pub fn settle(&mut self, output_tokens: u64, now: Nanos, policy: &ScorePolicy) {
        self.w.settle(output_tokens, None, now, policy, true);
    }

    /// Record what a degraded response produced: it counts for [`Signal::OutputRatio`], not for
    /// [`Signal::OutputLength`] (the clamp, not the client, set its length).
    pub fn settle_degraded(&mut self, output_tokens: u64, now: Nanos, policy: &ScorePolicy) {
        self.w.settle(output_tokens, None, now, policy, false);
    }

    /// Record what a response produced, served in full (`full`) or degraded, with its request's input tokens
    /// (None: unknown): a long yield ([`ScorePolicy::yield_min_output_tokens`], [`ScorePolicy::yield_min_ratio`])
    /// is kept apart, for the clusters and cohorts the account's history goes to ([`Signal::YieldPerMember`] is
    /// a cluster signal).
    pub fn settle_request(
        &mut self,
        output_tokens: u64,
        input_tokens: Option<u64>,
        now: Nanos,
        policy: &ScorePolicy,
        full: bool,
    ) {
        self.w
            .settle(output_tokens, input_tokens, now, policy, full);
    }

    /// The score at `now`, with every signal but [`Signal::Lockstep`]. Does not change the state.
    pub fn score(&self, now: Nanos, policy: &ScorePolicy) -> Score {
        self.w.score(now, policy, None)
    }

    /// First seen (engine time).
    pub fn first_seen(&self) -> Nanos {
        self.w.first_seen
    }

    /// Set the first-seen time (e.g. the account's creation time from elsewhere, or after this state was evicted
    /// and rebuilt); only ever moves it earlier.
    pub fn set_first_seen(&mut self, t: Nanos) {
        self.w.first_seen = self.w.first_seen.min(t);
    }

    /// Last request seen (engine time; the first-seen time before any request).
    pub fn last_seen(&self) -> Nanos {
        self.w.last_arrival
    }

    /// Requests observed since this state was created.
    pub fn requests_total(&self) -> u32 {
        self.w.requests_total
    }

    /// Decayed requests in the window at `now`: when this is far below `min_requests` the state can be dropped.
    pub fn requests(&self, now: Nanos, policy: &ScorePolicy) -> f32 {
        self.w.requests(now, policy)
    }
}

/// One second of cluster traffic: requests and a 256-bit sketch of the distinct members that sent them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SecondSlot {
    /// Second index + 1 (0: unused).
    second: u64,
    count: u32,
    zeros: u16,
    flagged: bool,
    bits: [u64; 4],
}

/// One cluster's behavioural signals: the account signals over all its members' requests, plus lockstep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClusterSignals {
    w: Window,
    /// Decayed requests that landed in lockstep seconds.
    lock: f32,
    /// Members, as of the last request ([`ClusterSignals::set_members`]).
    members: u32,
    ring: [SecondSlot; LOCK_RING],
    /// Distinct members whose requests it observed, for [`Signal::YieldPerMember`].
    senders: Senders,
}

impl ClusterSignals {
    /// A cluster formed at `formed_at` (the linker's `ClusterView::formed_at`).
    pub fn new(formed_at: Nanos) -> ClusterSignals {
        ClusterSignals {
            w: Window::new(formed_at),
            lock: 0.0,
            members: 0,
            ring: [SecondSlot::default(); LOCK_RING],
            senders: Senders::default(),
        }
    }

    /// The cluster's member count now (the linker's `ClusterView::members`), for [`Signal::MemberSpread`].
    pub fn set_members(&mut self, members: u32) {
        self.members = members;
    }

    /// Record a member's request: scans the prompt, then [`ClusterSignals::observe_hits`]. Returns the lists the
    /// prompt matched.
    pub fn observe(
        &mut self,
        member: u64,
        req: &RequestSignals<'_>,
        matcher: &PhraseMatcher,
        policy: &ScorePolicy,
        tier_rpm: u64,
    ) -> PhraseHits {
        let hits = matcher.scan(req.prompt_text);
        self.observe_hits(member, req, hits, policy, tier_rpm);
        hits
    }

    /// Record a member's request whose prompt was already scanned. `member` is the account id (keyed hash);
    /// `tier_rpm` is the requests per minute that count as normal for the cluster (its budget's, or one account
    /// tier's to measure volume in accounts' worth).
    pub fn observe_hits(
        &mut self,
        member: u64,
        req: &RequestSignals<'_>,
        hits: PhraseHits,
        policy: &ScorePolicy,
        tier_rpm: u64,
    ) {
        let f = self.w.decay_to(req.now, policy);
        self.lock *= f;
        self.w.observe(req, hits, policy, tier_rpm);
        self.lockstep(member, req.now, policy);
        self.senders.insert(req.now, policy.half_life, member);
    }

    fn lockstep(&mut self, member: u64, now: Nanos, policy: &ScorePolicy) {
        let second = now / SECOND + 1;
        let Some(slot) = self.ring.get_mut((second % LOCK_RING as u64) as usize) else {
            return;
        };
        if slot.second > second {
            // Older than the ring: too late to tell.
            return;
        }
        if slot.second < second {
            *slot = SecondSlot {
                second,
                zeros: LOCK_BITS as u16,
                ..SecondSlot::default()
            };
        }
        slot.count = slot.count.saturating_add(1);
        let bit = (mix(member) % u64::from(LOCK_BITS)) as usize;
        if let Some(word) = slot.bits.get_mut(bit / 64) {
            let mask = 1u64 << (bit % 64);
            if *word & mask == 0 {
                *word |= mask;
                slot.zeros = slot.zeros.saturating_sub(1);
            }
        }
        let age = now.saturating_sub(self.w.first_seen);
        let rate = rate_per_sec(self.w.c.n, policy.half_life, age);
        let need = f64::from(policy.lockstep_min_members)
            .max(f64::from(policy.lockstep_rate_factor) * rate);
        if f64::from(linear_count(u32::from(slot.zeros), LOCK_BITS)) >= need {
            if slot.flagged {
                self.lock += 1.0;
            } else {
                slot.flagged = true;
                self.lock += slot.count as f32;
            }
        }
    }

    /// Adds a member's history from before it was in this cluster (its requests, what they carried and produced,
    /// its first-seen time), so a cluster that forms out of accounts which already sent is scored on everything its
    /// members sent, not only on what arrived after the link. Call once per member, before its current request.
    pub fn absorb_member(&mut self, member: &AccountSignals, now: Nanos, policy: &ScorePolicy) {
        let f = self.w.absorb(&member.w, now, policy);
        self.lock *= f;
    }

    /// Adds the state of a cluster that merged into this one (the linker's [`super::link::Linker::changes`]):
    /// evidence is not lost when two clusters become one.
    pub fn absorb_cluster(&mut self, other: &ClusterSignals, now: Nanos, policy: &ScorePolicy) {
        let f = self.w.absorb(&other.w, now, policy);
        self.lock = self.lock * f
            + other.lock * decay_factor(now.saturating_sub(other.w.updated), policy.half_life);
        self.members = self.members.max(other.members);
        self.senders = self.senders.union(other.senders);
    }

    /// Record what a member's response served in full actually produced.
    pub fn settle(&mut self, output_tokens: u64, now: Nanos, policy: &ScorePolicy) {
        self.settle_as(output_tokens, now, policy, true);
    }

    /// [`ClusterSignals::settle`] for a request that was served in full (`full`) or degraded (its output counts for
    /// [`Signal::OutputRatio`], not for [`Signal::OutputLength`]; see [`AccountSignals::settle_degraded`]).
    pub fn settle_as(&mut self, output_tokens: u64, now: Nanos, policy: &ScorePolicy, full: bool) {
        self.settle_request(output_tokens, None, now, policy, full);
    }

    /// [`ClusterSignals::settle_as`] with the request's input tokens (None: unknown), so that a long yield counts
    /// towards [`Signal::YieldPerMember`].
    pub fn settle_request(
        &mut self,
        output_tokens: u64,
        input_tokens: Option<u64>,
        now: Nanos,
        policy: &ScorePolicy,
        full: bool,
    ) {
        let f = self.w.decay_to(now, policy);
        self.lock *= f;
        self.w
            .settle(output_tokens, input_tokens, now, policy, full);
    }

    /// The score at `now`, with every signal. Does not change the state.
    pub fn score(&self, now: Nanos, policy: &ScorePolicy) -> Score {
        // Shares are ratios of counters decayed to the same time, so the lockstep count goes in as stored.
        self.w.score(
            now,
            policy,
            Some(ClusterFacts {
                lock: self.lock,
                members: self.members,
                senders: self.senders.count(now, policy.half_life),
            }),
        )
    }

    /// Formed at (engine time).
    pub fn first_seen(&self) -> Nanos {
        self.w.first_seen
    }

    /// Last request seen (engine time).
    pub fn last_seen(&self) -> Nanos {
        self.w.last_arrival
    }

    /// Requests observed since this state was created.
    pub fn requests_total(&self) -> u32 {
        self.w.requests_total
    }

    /// Decayed requests in the window at `now`.
    pub fn requests(&self, now: Nanos, policy: &ScorePolicy) -> f32 {
        self.w.requests(now, policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Simulations start far from the clock's epoch.
    const T0: Nanos = 400 * DAY;
    const TIER_RPM: u64 = 60;

    fn matcher() -> PhraseMatcher {
        PhraseMatcher::with_defaults().unwrap()
    }

    fn mins(t: Nanos) -> f64 {
        t as f64 / MINUTE as f64
    }

    // -- phrase matcher ---------------------------------------------------------------------------------------

    #[test]
    fn matcher_finds_phrases_across_case_and_punctuation() {
        let m = matcher();
        assert_eq!(m.list_names(), ["elicitation", "rubric", "trajectory"]);
        let hit = |t: &str| m.scan(t);
        // Case, hyphens, line breaks, runs of spaces and punctuation.
        assert!(hit("Please IMAGINE and ARTICULATE the Internal-Reasoning behind it").contains(0));
        assert!(hit("...the internal\n\n  reasoning,behind a completed response").contains(0));
        assert!(hit("Write it out: step-by-step!").contains(0));
        assert!(hit("write_it_out_step_by_step").contains(0));
        // Typographic dashes, quotes and apostrophes.
        assert!(hit("show your full chain\u{2014}of\u{2013}thought").contains(0));
        assert!(hit("Evaluate the assistant\u{2019}s response below").contains(1));
        assert!(hit("Evaluate the assistant`s response").contains(1));
        assert!(hit("rate it \u{201c}on a scale of 1 to 10\u{201d}").contains(1));
        assert!(hit("Reconstruct\u{00a0}the tool calls").contains(2));
        // Several lists at once.
        let h = hit(
            "Grade the response. Then reconstruct the trajectory. Full chain of thought please.",
        );
        assert_eq!(h.count(), 3);
        assert_eq!(
            m.hit_names(h).collect::<Vec<_>>(),
            ["elicitation", "rubric", "trajectory"]
        );
        // Whole words only.
        assert!(!hit("a reasoning traces collection").any());
        assert!(!hit("xinternal monologue").any());
        assert!(hit("internal monologue.").contains(0));
        // Ordinary prompts.
        assert!(
            !hit("Can you help me write an email to my landlord about the broken heater?").any()
        );
        assert!(!hit("Explain step by step how to bake bread.").any());
        assert!(!hit("").any());
    }

    #[test]
    fn matcher_custom_lists_and_wildcards() {
        let m = PhraseMatcher::new(&[
            ("a", vec!["reason*".into(), "*ography".into()]),
            ("b", vec!["Same Phrase".into()]),
            ("c", vec!["same-phrase".into()]),
        ])
        .unwrap();
        assert!(m.scan("Reasoning!").contains(0));
        assert!(m.scan("geography").contains(0));
        assert!(!m.scan("unreasonable").contains(0));
        // Duplicate phrases in two lists hit both.
        assert_eq!(m.scan("the SAME phrase").0, 0b110);
        assert_eq!(m.phrases(), 4);
        assert!(matches!(
            PhraseMatcher::new(&[("x", vec!["ok".into(), " -- ".into()])]),
            Err(PhraseError::EmptyPhrase { index: 1, .. })
        ));
        let many: Vec<(&str, Vec<String>)> = (0..33).map(|_| ("l", vec!["x".into()])).collect();
        assert!(matches!(
            PhraseMatcher::new(&many),
            Err(PhraseError::TooManyLists { lists: 33 })
        ));
        let empty = PhraseMatcher::new(&[]).unwrap();
        assert!(!empty.scan("anything at all").any());
        // Non-ASCII text passes through; invalid sequences never panic.
        let u = PhraseMatcher::new(&[("u", vec!["raisonnement détaillé".into()])]).unwrap();
        assert!(u.scan("Donne ton raisonnement détaillé.").contains(0));
        let bytes = [0xE2u8, 0x80];
        assert!(!u.scan(std::str::from_utf8(&bytes[..0]).unwrap()).any());
    }

    /// The lists `text` matches, the slow way: normalise and collapse the whole text, then look for each phrase.
    fn reference_scan(lists: &[&[&str]], text: &str) -> u32 {
        let mut mapped = vec![0u8; text.len()];
        map_chunk(text.as_bytes(), &mut mapped);
        let mut framed = vec![SEP];
        framed.extend_from_slice(&mapped);
        framed.push(SEP);
        let hay = collapse(&framed);
        let mut hits = 0;
        for (i, list) in lists.iter().enumerate() {
            for p in list.iter() {
                let p = normalise_phrase(p).unwrap();
                if hay.windows(p.len()).any(|w| w == p.as_slice()) {
                    hits |= 1 << i;
                }
            }
        }
        hits
    }

    #[test]
    fn scan_agrees_with_a_reference_across_chunks_and_lanes() {
        let m = matcher();
        let lists = [DEFAULT_ELICITATION, DEFAULT_RUBRIC, DEFAULT_TRAJECTORY];
        let seps = [
            " ",
            "  ",
            "-",
            ", ",
            "\n\n",
            "\u{2014}",
            "_",
            " \u{00a0} ",
            "...",
            "\t",
        ];
        let mut rng = StdRng::seed_from_u64(99);
        let mut hit_texts = 0;
        for round in 0..300 {
            let target = [0, 40, 600, 3000, 4090, 9000, 20_000][round % 7];
            let mut text = String::new();
            while text.len() < target {
                if rng.gen_ratio(1, 200) {
                    // A phrase with random case and separators, sometimes with a long run of separators inside.
                    let list = lists[rng.gen_range(0..3)];
                    let phrase = list[rng.gen_range(0..list.len())];
                    for (i, w) in phrase.split(' ').enumerate() {
                        if i > 0 {
                            if rng.gen_ratio(1, 10) {
                                text.push_str(&" ".repeat(rng.gen_range(100..600)));
                            } else {
                                text.push_str(seps[rng.gen_range(0..seps.len())]);
                            }
                        }
                        if rng.gen_bool(0.5) {
                            text.push_str(&w.to_uppercase());
                        } else {
                            text.push_str(w);
                        }
                    }
                } else {
                    text.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
                }
                text.push_str(seps[rng.gen_range(0..seps.len())]);
            }
            let want = reference_scan(&lists, &text);
            hit_texts += usize::from(want != 0);
            assert_eq!(m.scan(&text).0, want, "round {round}, {} bytes", text.len());
        }
        assert!(hit_texts > 50, "{hit_texts}");
        // A phrase split by a long run of spaces exactly across the first chunk boundary.
        for pad in 4000..4100 {
            let text = format!("{} internal{}monologue", "x".repeat(pad), " ".repeat(700));
            assert!(m.scan(&text).contains(0), "{pad}");
        }
    }

    #[test]
    fn default_lists_have_15_to_60_phrases_and_build() {
        for l in [DEFAULT_ELICITATION, DEFAULT_RUBRIC, DEFAULT_TRAJECTORY] {
            assert!((15..=60).contains(&l.len()), "{}", l.len());
            for p in l {
                assert!(normalise_phrase(p).is_some(), "{p}");
            }
        }
        assert_eq!(
            matcher().phrases(),
            DEFAULT_ELICITATION.len() + DEFAULT_RUBRIC.len() + DEFAULT_TRAJECTORY.len()
        );
    }

    // -- policy and ladder ------------------------------------------------------------------------------------

    #[test]
    fn default_policy_is_valid_and_coordination_alone_stays_allow() {
        let p = ScorePolicy::default();
        p.validate().unwrap();
        // No combination of the account signals that a legitimate templated workload can show (everything but
        // elicitation, pinned/long outputs and the release pivot) reaches Slow on its own.
        let context: f32 = [
            Signal::TemplateReuse,
            Signal::TimingRegularity,
            Signal::Volume,
            Signal::AccountAge,
            Signal::Breadth,
            Signal::FingerprintInconsistency,
        ]
        .iter()
        .map(|&s| p.weights.get(s))
        .sum();
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

    fn yield_of(c: &ClusterSignals, now: Nanos) -> f32 {
        let s = c.score(now, &ScorePolicy::default());
        s.contribution(Signal::YieldPerMember)
            .map_or(f32::NAN, |c| c.value)
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
        let mut now = end;
        let mut rng = StdRng::seed_from_u64(6);
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
            c.settle_request(512, Some(input), now, &p, false);
            now += SECOND * 6 / 5;
        }
        assert!(yield_of(&c, now) >= full, "{}", yield_of(&c, now));
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

    #[test]
    fn release_pivot_weighs_young_accounts() {
        let mut p = ScorePolicy::default();
        let release = T0 + 10 * DAY;
        p.new_models.push(("claude-next".into(), release));
        let m = matcher();
        let mut old = AccountSignals::new(T0);
        let mut fresh = AccountSignals::new(release + HOUR);
        for i in 0..30 {
            let now = release + HOUR + i * MINUTE;
            let r = RequestSignals {
                model: Some("claude-next-20260101"),
                ..req(now)
            };
            old.observe(&r, &m, &p, TIER_RPM);
            fresh.observe(&r, &m, &p, TIER_RPM);
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
            late.observe(
                &RequestSignals {
                    model: Some("claude-next-20260101"),
                    ..req(release + 8 * DAY + i * MINUTE)
                },
                &m,
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
        let m = matcher();
        let mut templated = AccountSignals::new(T0);
        let mut free = AccountSignals::new(T0);
        for i in 0..100u64 {
            let now = T0 + i * 20 * SECOND;
            templated.observe(
                &RequestSignals {
                    template_key: Some(1 + i % 2),
                    fill_key: Some(i * 7919),
                    ..req(now)
                },
                &m,
                &p,
                TIER_RPM,
            );
            free.observe(
                &RequestSignals {
                    fill_key: Some(i * 7919),
                    ..req(now)
                },
                &m,
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
        let m = matcher();
        let mut regular = AccountSignals::new(T0);
        let mut poisson = AccountSignals::new(T0);
        let mut rng = StdRng::seed_from_u64(3);
        let mut t = T0;
        for i in 0..600u64 {
            regular.observe(&req(T0 + i * 2 * SECOND), &m, &p, TIER_RPM);
            t += (-(1.0 - rng.gen::<f64>()).ln() * 2.0 * SECOND as f64) as Nanos;
            poisson.observe(&req(t), &m, &p, TIER_RPM);
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
        let m = matcher();
        let spread_after_an_hour = |members: u32| {
            let mut c = ClusterSignals::new(T0);
            c.set_members(members);
            // 10 requests a minute, whoever sends them.
            for i in 0..600u64 {
                c.observe(
                    i % u64::from(members),
                    &req(T0 + i * 6 * SECOND),
                    &m,
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
        let m = matcher();
        let mut synced = ClusterSignals::new(T0);
        let mut spread = ClusterSignals::new(T0);
        let mut rng = StdRng::seed_from_u64(11);
        for wave in 0..30u64 {
            for member in 0..200u64 {
                let t = T0 + wave * MINUTE + rng.gen_range(0..SECOND / 2);
                synced.observe(member, &req(t), &m, &p, TIER_RPM);
                let t = T0 + wave * MINUTE + member * (MINUTE / 200) + rng.gen_range(0..SECOND / 4);
                spread.observe(member, &req(t), &m, &p, TIER_RPM);
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
                        prompt_text: "\u{2019}\u{2014}x\u{00a0}",
                        thinking_budget: Some(u32::MAX),
                        reasoning_effort_high: true,
                        max_output_tokens: Some(u32::MAX),
                        model: Some(""),
                        input_tokens: u64::MAX,
                        template_shared: true,
                        template_key: Some(u64::MAX),
                        fill_key: Some(0),
                        fingerprint_inconsistent: true,
                        stack_changed: true,
                    };
                    let _ = a.note_stack(Some(now));
                    let _ = a.profile(now, &policy);
                    a.observe(&r, &m, &policy, u64::MAX);
                    c.observe(u64::MAX, &r, &m, &policy, 0);
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

    #[test]
    fn state_is_small() {
        let a = size_of::<AccountSignals>();
        let c = size_of::<ClusterSignals>();
        let l = size_of::<LadderState>();
        println!("size_of AccountSignals = {a} bytes, ClusterSignals = {c} bytes, LadderState = {l} byte(s)");
        assert!(a <= 300);
        assert!(c <= 512);
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

    const WORDS: &[&str] = &[
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
    fn arrivals(
        kind: Kind,
        rng: &mut StdRng,
        start: Nanos,
        end: Nanos,
        index: usize,
    ) -> Vec<Nanos> {
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
        matcher: PhraseMatcher,
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
            let r = RequestSignals {
                now,
                prompt_text: text,
                ..r
            };
            let hits = self.matcher.scan(r.prompt_text);
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
}
