//! Signals, a request's inputs and the score with its reasons (docs/score.md, "Signals", "Score").

use super::*;

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
    /// Share of requests whose client stack (JA4, HTTP fingerprint) is new to the account (none of the last few it used).
    StackChurn = 12,
    /// Output tokens per request actually served in full (degraded requests left out).
    OutputLength = 13,
    /// Output tokens per member-hour of answers served in full that are long and many times their prompt
    /// (clusters only).
    YieldPerMember = 14,
    /// Output tokens per hour of answers served in full that are long and many times their prompt (accounts only:
    /// a cluster has [`Signal::YieldPerMember`]).
    YieldPerHour = 15,
}

impl Signal {
    /// Number of signals.
    pub const COUNT: usize = 16;

    /// What a legitimate templated workload (a batch job, an evaluation
    /// harness, a corporate tool) can show: everything but elicitation,
    /// pinned or long outputs, churn and the release pivot. The weights keep
    /// their sum below Slow and below the cluster core's mark (docs/score.md).
    pub const CONTEXT: [Signal; 6] = [
        Signal::TemplateReuse,
        Signal::TimingRegularity,
        Signal::Volume,
        Signal::AccountAge,
        Signal::Breadth,
        Signal::FingerprintInconsistency,
    ];

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
        Signal::YieldPerHour,
    ];

    /// Signals only a cluster has (an account's score leaves them out).
    pub fn cluster_only(self) -> bool {
        matches!(
            self,
            Signal::Lockstep | Signal::MemberSpread | Signal::YieldPerMember
        )
    }

    /// Signals only an account has (a cluster's score leaves them out).
    pub fn account_only(self) -> bool {
        matches!(self, Signal::YieldPerHour)
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
            Signal::YieldPerHour => "yield_per_hour",
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
            Signal::YieldPerHour => "long-yield output tokens per hour",
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
    /// [`Signal::YieldPerHour`].
    pub yield_per_hour: T,
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
            Signal::YieldPerHour => self.yield_per_hour,
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
            Signal::YieldPerHour => &mut self.yield_per_hour,
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

    /// The names of the lists matched, given every list's name in bit order.
    pub fn names(self, lists: &[String]) -> impl Iterator<Item = &str> + '_ {
        lists
            .iter()
            .enumerate()
            .filter(move |(i, _)| self.contains(*i))
            .map(|(_, n)| n.as_str())
    }
}

/// How new a request's client stack is to its account ([`AccountSignals::note_stack`]), as [`Signal::StackChurn`]
/// counts it ([`StackNovelty::churn`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StackNovelty {
    /// One the account used lately (or its first, or unknown).
    #[default]
    Known,
    /// The account's second distinct stack.
    Second,
    /// A stack beyond the account's second it has not used lately.
    Further,
    /// A stack beyond the account's first it has not used lately, from a network none of the stacks it remembers
    /// was last used from: another of its machines (a team member's, a phone on mobile data) as much as a campaign
    /// that moves its address with its stack, so it counts as a second client does, however many came before. A
    /// client that changes while its network stays (a rotating campaign behind one address or a few proxies) is
    /// [`StackNovelty::Second`] or [`StackNovelty::Further`].
    Elsewhere,
}

/// What an account counts for its second client: most honest keys are used from one client, and a campaign that
/// rotates stacks shows its second at once, but a second client (a laptop and a phone, a developer's machine beside
/// the app's server, the first two of a team's machines) is common. Fitted on the tuning family with honest second
/// clients and team keys (2026-12-05): 1 degraded up to 0.63 % of its honest requests (team keys), 0.5 let
/// stack-rotating campaigns through (stealth worst decile 31.8 %); 0.75 kept both (docs/score.md, "stack_churn").
pub const ACCOUNT_SECOND_STACK: f32 = 0.75;

/// What a group (cluster, cohort, pool) counts for a member's second client: in a group its honest members' second
/// clients add up. Fitted on the tuning family with honest second clients: 1 refused up to 1.2 % of an honest
/// coding-tool community's requests, 0 let slow stack-rotating campaigns through (stealth worst decile 19.5 →
/// 35.8 %); 0.5 kept both (docs/score.md, "stack_churn").
pub const GROUP_SECOND_STACK: f32 = 0.5;

impl StackNovelty {
    /// What it adds to [`Signal::StackChurn`]'s count, in an account's window or, with `group`, in a group's.
    pub fn churn(self, group: bool) -> f32 {
        match self {
            StackNovelty::Known => 0.0,
            StackNovelty::Second | StackNovelty::Elsewhere if group => GROUP_SECOND_STACK,
            StackNovelty::Second | StackNovelty::Elsewhere => ACCOUNT_SECOND_STACK,
            StackNovelty::Further => 1.0,
        }
    }
}

/// What the caller knows about one request when it arrives.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RequestSignals<'a> {
    /// Arrival time on the engine's clock.
    pub now: Nanos,
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
    /// How new the request's client stack is to its account ([`AccountSignals::note_stack`]).
    pub stack: StackNovelty,
    /// The request's client stack ([`stack_key`]; 0: unknown), for a group to tell an upgrade of its members'
    /// common client from churn.
    pub stack_key: u32,
    /// For a group that is scored on its senders' own rates (a network pool): the sending account's requests per
    /// hour ([`AccountSignals::requests_per_hour`]); 0: not given, [`Signal::YieldPerMember`] takes the group's rate
    /// per distinct sender.
    pub sender_requests_per_hour: f32,
    /// The sending account's age ([`AccountSignals::age`]); None: the observing window's own age.
    /// A group's [`Signal::AccountAge`] is its requests' mean sender age, each taken up to the ramp's far end.
    pub sender_age: Option<Nanos>,
    /// Share of [`RequestSignals::stack`]'s churn taken off, 0..=1: an engine that has just started has not seen the
    /// clients an older account already used ([`ScorePolicy::stack_watch`]).
    pub stack_discount: f32,
}

impl RequestSignals<'_> {
    /// What the request adds to [`Signal::StackChurn`]'s count ([`StackNovelty::churn`], less the discount).
    pub fn churn(&self, group: bool) -> f32 {
        self.stack.churn(group) * (1.0 - self.stack_discount.clamp(0.0, 1.0))
    }
}

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
