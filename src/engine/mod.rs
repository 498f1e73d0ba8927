//! The policy engine: given what is known about a request (an
//! [`Observation`]) and the time `now`, decide what happens to it; after the
//! response, settle what it actually cost.
//!
//! Pure by design: no I/O, no clock reads, no tokio, no hyper. The proxy
//! passes the real monotonic clock; `replay`, the benchmarks and the tests
//! pass virtual time, so a day of traffic replays in seconds and limiter
//! maths is tested without sleeping.
//!
//! Budgets are [`gcra`] cells held per account and per cluster in
//! [`accounts`] (or, through `crate::state`, in a store every replica
//! shares: [`Engine::assess`] names the cells a request needs as a
//! [`BudgetAsk`], whoever holds them answers, [`Pending::conclude`]
//! decides); a tier's quotas are looked up on every call, so a reloaded
//! policy applies at once without resetting anyone's state. Accounts that
//! share fingerprints are linked into clusters by [`link`] (prompts compared
//! through [`signature`]); a cluster at or above the configured strength and
//! size shares one budget, and a member consumes its own bucket *and* its
//! cluster's. Accounts that are not linked but behave alike are scored
//! with the evidence of their behaviour [`cohort`].

pub mod gcra;
pub mod accounts;
pub mod policy;
pub mod signature;
pub mod link;
pub mod score;
pub mod cohort;
pub mod hash;
mod id;

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use accounts::{AccountState, AccountStore, IdMap};
pub use gcra::{Nanos, Rate, SECOND};

const MINUTE: Nanos = 60 * SECOND;
const HOUR: Nanos = 60 * MINUTE;
pub use id::{AccountId, ClusterId};
use link::{AttrKind, Attributes, ClusterView, Linker};
pub use policy::{ActionMode, ClusterPolicy, DetectionPolicy, Policy, Tier};

/// Stable 64-bit hash of an attribute value (FNV-1a over the kind, `:` and
/// the bytes): the same in the proxy, in config lists and in `replay`.
pub fn attr_hash(kind: AttrKind, value: &[u8]) -> u64 {
    hash::fnv1a_from(attr_hash_prefix(kind), value)
}

/// [`attr_hash`] of a value's `Display` text, hashed as it is written
/// (no string made per request).
fn attr_hash_display(kind: AttrKind, value: impl std::fmt::Display) -> u64 {
    use std::fmt::Write as _;
    let mut h = hash::Fnv1a(attr_hash_prefix(kind));
    // Writing into a hash cannot fail.
    let _ = write!(h, "{value}");
    h.0
}

/// The hash of `kind` and `:`, where every [`attr_hash`] starts.
fn attr_hash_prefix(kind: AttrKind) -> u64 {
    hash::fnv1a_from(hash::fnv1a(kind.as_str().as_bytes()), b":")
}

/// The request's shape for linking ([`AttrKind::Shape`]): the model and the
/// scale of the output limit (its power of four: 16 000, 24 000 and 32 000
/// are one scale, 64 000 the next). None when the body said nothing of
/// them (not inspected): absence links no one. Thinking is left out: one
/// client turns it on for some requests and off for others, which would
/// split its requests into shapes that never meet (it feeds the
/// elicitation signal instead).
pub fn request_shape(f: &RequestFacts) -> Option<u64> {
    if f.model.is_none() && f.max_output_tokens.is_none() {
        return None;
    }
    let scale = f
        .max_output_tokens
        .map_or(0, |v| (32 - v.leading_zeros()) / 2 + 1);
    // The hash of `model`, 0, `scale`, continued piece by piece.
    let model = attr_hash(AttrKind::Shape, f.model.as_deref().unwrap_or("").as_bytes());
    Some(hash::fnv1a_from(model, &[0, scale as u8]))
}

/// An account's behaviour state carries evidence that must not be dropped
/// with its idle budget state: it is above Allow, its score is half way to
/// Slow, or its own raw score reaches `cohort_min_raw` or
/// `network_pool_min_raw` on requests not yet decayed away (a slow
/// account's evidence is in its raw score long before it rests on enough
/// requests).
fn signal_evidence(
    d: &DetectionPolicy,
    sig: &score::AccountSignals,
    ladder: score::LadderState,
    now: Nanos,
) -> bool {
    let sc = sig.score(now, &d.score);
    let mut ladder = ladder;
    ladder.update(sc.value, &d.score) > score::Level::Allow
        || sc.value >= d.score.thresholds.slow.enter / 2.0
        || (sc.raw >= d.cohort_min_raw.min(d.network_pool_min_raw) && sc.requests >= 0.5)
}

/// An idle account's behaviour state is kept (within twice the cap) while its
/// decayed requests are at least this: one half-life after a single request,
/// longer after more.
const SIGNAL_KEEP_REQUESTS: f32 = 0.5;

/// The engine's tenure, relative to the time it was exported at
/// ([`Engine::export_tenure`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenureExport {
    /// How long the engine's history had run (None: it had not begun).
    pub history: Option<Nanos>,
    /// Per account: its age, and the time since its last request known.
    pub accounts: Vec<(AccountId, Nanos, Nanos)>,
}

/// One account's tenure, in engine minutes: kept after its behaviour state
/// is dropped, so that an account that comes back days later is not read as
/// new (12 bytes beside its 8-byte key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tenure {
    /// When the engine first saw the account.
    first: u32,
    /// How old the account was then.
    prior: u32,
    /// Its last request the engine knows of (when its behaviour state was
    /// last dropped or the map last made room): the least recent go first.
    last: u32,
}

/// How far before the engine's time 0 a tenure history taken over may
/// start (2^60 ns, about 36 years): the history's start is kept shifted by
/// it.
const TENURE_EPOCH: Nanos = 1 << 60;

/// Engine time in whole minutes (saturating), for [`Tenure`].
fn minutes(t: Nanos) -> u32 {
    u32::try_from(t / MINUTE).unwrap_or(u32::MAX)
}

/// The key of a client network's pool (never 0: 0 means "no pool").
fn pool_key(ip_prefix: u64) -> u64 {
    hash::splitmix64(ip_prefix ^ 0x9001_c0de_5eed_0001) | 1
}

/// The client stack of a request (JA4 and HTTP fingerprint together), for
/// [`score::Signal::StackChurn`]; None when neither is known.
fn client_stack(a: &ObservedAttrs) -> Option<u64> {
    match (a.ja4, a.http) {
        (None, None) => None,
        (j, h) => Some(j.unwrap_or(0) ^ h.unwrap_or(0).rotate_left(29)),
    }
}

/// A request's fingerprint attributes, hashed with [`attr_hash`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObservedAttrs {
    /// JA4.
    pub ja4: Option<u64>,
    /// HTTP fingerprint.
    pub http: Option<u64>,
    /// HTTP/2 fingerprint.
    pub h2: Option<u64>,
    /// Client network prefix (or the configured network it falls in).
    pub ip_prefix: Option<u64>,
    /// AS number.
    pub asn: Option<u64>,
    /// Index keys of the prompt-shape signature (informative prompts only).
    pub prompt: Option<[u64; signature::INDEX_KEYS]>,
}

/// What the engine is told about one request.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// The account (keyed hash of the API key, or of an anonymous prefix).
    pub account: AccountId,
    /// No API key: limited as an anonymous client under the anonymous tier.
    pub anonymous: bool,
    /// Estimated prompt tokens (0 when the body was not inspected).
    pub input_tokens: u64,
    /// Fingerprint attributes for linking.
    pub attrs: ObservedAttrs,
    /// What the behaviour signals need from the request.
    pub request: RequestFacts,
    /// The account's age at this request, as a trusted auth front states it
    /// (`[identity] account_created_header`); None: the engine's own
    /// [tenure](Engine::tenure_of) is used.
    pub account_age: Option<Nanos>,
}

/// Request facts for the behaviour signals (from inspection). The engine
/// never sees the prompt text: the prompt step (`crate::prompt`) turns it
/// into the fill key and the phrase hits before.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    /// Anthropic thinking budget, when thinking is enabled.
    pub thinking_budget: Option<u32>,
    /// OpenAI reasoning effort is "high".
    pub reasoning_effort_high: bool,
    /// The requested output limit.
    pub max_output_tokens: Option<u32>,
    /// The requested model.
    pub model: Option<String>,
    /// Hash of the whole prompt (distinct fills).
    pub fill_key: Option<u64>,
    /// The user-agent claims a client its fingerprints deny.
    pub fingerprint_inconsistent: bool,
    /// The phrase lists the prompt matched (by the prompt step, or as a
    /// traffic record or the shared stream says).
    pub phrase_hits: score::PhraseHits,
}

/// Hash a request's fingerprint values into linkage attributes — the one
/// place that does it, for the proxy and for `replay` alike. A prefix inside
/// an ignored network is dropped; inside a downweighted one it stands for
/// that network.
#[allow(clippy::too_many_arguments)]
pub fn observed_attrs(
    ja4: Option<&str>,
    http: Option<&str>,
    h2: Option<&str>,
    ip_prefix: Option<ipnet::IpNet>,
    asn: Option<u32>,
    prompt: Option<[u64; signature::INDEX_KEYS]>,
    ignore_nets: &[ipnet::IpNet],
    downweight_nets: &[ipnet::IpNet],
) -> ObservedAttrs {
    let h = |kind, v: &str| Some(attr_hash(kind, v.as_bytes()));
    let ip_prefix = ip_prefix.and_then(|p| {
        if ignore_nets.iter().any(|n| n.contains(&p)) {
            None
        } else if let Some(n) = downweight_nets.iter().find(|n| n.contains(&p)) {
            Some(attr_hash_display(AttrKind::IpPrefix, n))
        } else {
            Some(attr_hash_display(AttrKind::IpPrefix, p))
        }
    });
    ObservedAttrs {
        ja4: ja4.and_then(|v| h(AttrKind::Ja4, v)),
        http: http.and_then(|v| h(AttrKind::Http, v)),
        h2: h2.and_then(|v| h(AttrKind::H2, v)),
        ip_prefix,
        asn: asn.map(|a| attr_hash_display(AttrKind::Asn, a)),
        prompt,
    }
}

/// What behaviour detection concluded about a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// The ladder level the score reached (account or cluster, the higher).
    pub level: score::Level,
    /// Whose score set the level.
    pub scope: Scope,
    /// The level actually applied (lower than `level` where actions are in
    /// shadow mode or outside their enforce_percent).
    pub enforced: score::Level,
    /// The deciding score with its reasons.
    pub score: score::Score,
    /// Delay before forwarding (Slow enforced): the verdict's.
    pub(in crate::engine) delay: Option<Nanos>,
    /// Output limit to forward with (Degrade enforced): the verdict's.
    pub(in crate::engine) degrade_to: Option<u32>,
    /// Phrase lists the prompt matched.
    pub phrase_hits: Vec<String>,
    /// The ladder level of the account's cluster, when it is scored as a
    /// whole.
    pub cluster_level: Option<score::Level>,
    /// The request counted in its cluster's core: the account's own raw
    /// score reached `core_min_raw`.
    pub in_cluster_core: bool,
    /// The behaviour cohorts that observed the request (0: none): the
    /// account's own raw score reached `cohort_min_raw`.
    pub cohorts: [u64; cohort::KEYS],
    /// The account's level rests on its cohort's evidence (its own
    /// requests were too few).
    pub by_cohort: bool,
    /// The network pool that observed the request (0: none): the
    /// account's own raw score reached `network_pool_min_raw`.
    pub pool: u64,
    /// The account's level rests on its network pool's score.
    pub by_pool: bool,
    /// The level is Block because the account's cluster has been held at
    /// Degrade for `[detection.block] cluster_after_degrade_ms`.
    pub sustained: bool,
}

/// Whose budget a limit belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The account's own (its tier's quotas).
    Account,
    /// The cluster the account is linked into.
    Cluster,
    /// The client's network (new accounts while the store is full).
    Network,
}

impl Scope {
    /// Label for headers, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Account => "account",
            Scope::Cluster => "cluster",
            Scope::Network => "network",
        }
    }
}

/// Which budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// Requests per minute.
    Requests,
    /// Estimated prompt tokens per minute.
    InputTokens,
    /// Output tokens per minute (post-paid).
    OutputTokens,
    /// Requests in flight.
    Concurrency,
    /// New accounts per minute from one network, while the account store
    /// is full of state that cannot be dropped.
    NewAccounts,
}

impl LimitKind {
    /// Label for headers, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::InputTokens => "input_tokens",
            LimitKind::OutputTokens => "output_tokens",
            LimitKind::Concurrency => "concurrency",
            LimitKind::NewAccounts => "new_accounts",
        }
    }

    /// What a person reads in a refusal.
    pub fn describe(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests per minute",
            LimitKind::InputTokens => "input tokens per minute",
            LimitKind::OutputTokens => "output tokens per minute",
            LimitKind::Concurrency => "concurrent requests",
            LimitKind::NewAccounts => "new accounts per minute",
        }
    }
}

/// A budget that refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitHit {
    /// Whose budget.
    pub scope: Scope,
    /// Which budget.
    pub kind: LimitKind,
    /// When a retry can succeed.
    pub retry_after: Nanos,
    /// The quota (None for concurrency).
    pub quota: Option<Rate>,
    /// Concurrency cap (for `Concurrency`).
    pub max_concurrent: u32,
    /// Units left now.
    pub remaining: u64,
    /// Time until the budget is full again.
    pub reset_after: Nanos,
}

/// What happens to a request: one of five actions. The first three forward
/// it (settle with the [`Ticket`] afterwards), the last two refuse it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it as it came.
    Allow(Ticket),
    /// Forward it after a delay (detection's Slow).
    Slow {
        /// Proof of admission.
        ticket: Ticket,
        /// Engine time to wait before forwarding.
        delay: Nanos,
    },
    /// Forward it with its output limit clamped and its thinking /
    /// reasoning parameters dropped (detection's Degrade, or its Throttle
    /// when the scaled-down budgets admitted the request).
    Degrade {
        /// Proof of admission.
        ticket: Ticket,
        /// The output limit it is forwarded with.
        max_output: u32,
        /// A delay before forwarding, when slowing is enforced too.
        delay: Option<Nanos>,
    },
    /// Refuse with 429: a budget is spent (the account's, perhaps scaled
    /// down by detection's Throttle, its cluster's, or its network's).
    Throttle(LimitHit),
    /// Refuse with 403: the account or its cluster is blocked.
    Block {
        /// Whose block.
        scope: Scope,
        /// Who blocked it.
        by: Blocker,
    },
}

/// Who blocked a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocker {
    /// An admin (a manual decision).
    Admin,
    /// Behaviour detection reached its Block level.
    Detection,
}

impl Verdict {
    /// The proof of admission, when the request is forwarded.
    pub fn ticket(&self) -> Option<&Ticket> {
        match self {
            Verdict::Allow(t)
            | Verdict::Slow { ticket: t, .. }
            | Verdict::Degrade { ticket: t, .. } => Some(t),
            Verdict::Throttle(_) | Verdict::Block { .. } => None,
        }
    }

    /// The proof of admission, when the request is forwarded.
    pub fn into_ticket(self) -> Option<Ticket> {
        match self {
            Verdict::Allow(t)
            | Verdict::Slow { ticket: t, .. }
            | Verdict::Degrade { ticket: t, .. } => Some(t),
            Verdict::Throttle(_) | Verdict::Block { .. } => None,
        }
    }

    /// What happened, as one word: allow, slow, degrade, throttle or block
    /// (the access log's, the metrics' and the traffic record's label).
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Allow(_) => "allow",
            Verdict::Slow { .. } => "slow",
            Verdict::Degrade { .. } => "degrade",
            Verdict::Throttle(_) => "throttle",
            Verdict::Block { .. } => "block",
        }
    }

    /// The delay before forwarding, if any.
    pub fn delay(&self) -> Option<Nanos> {
        match self {
            Verdict::Slow { delay, .. } => Some(*delay),
            Verdict::Degrade { delay, .. } => *delay,
            _ => None,
        }
    }

    /// The output limit a degraded request is forwarded with.
    pub fn max_output(&self) -> Option<u32> {
        match self {
            Verdict::Degrade { max_output, .. } => Some(*max_output),
            _ => None,
        }
    }

    /// What a client gets of `produced` output tokens under this verdict:
    /// all of them, or a degraded request's limit.
    pub fn clamp_output(&self, produced: u64) -> u64 {
        self.max_output()
            .map_or(produced, |m| produced.min(u64::from(m)))
    }
}

/// Every manual decision: (accounts, clusters).
pub type ManualDecisions = (Vec<(AccountId, Manual)>, Vec<(u64, Manual)>);

/// A decision an admin made about an account or a cluster; it overrides
/// detection and is kept across reloads (and, by the proxy, across restarts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Manual {
    /// Refuse every request (403).
    Block,
    /// Never linked, slowed or blocked by detection (tier limits still apply).
    Allow,
}

/// Proof of an admitted request, to be settled exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The account.
    pub account: AccountId,
    /// Admitted as an anonymous client.
    pub anonymous: bool,
    /// Input tokens charged at admission (the estimate).
    pub input_charged: u64,
    /// The cluster whose budget was charged too, and its size then.
    pub cluster: Option<(u64, u32)>,
    /// The cluster whose behaviour state observed the request (scored as a
    /// whole, budget shared or not): what the response produces counts
    /// there too.
    pub scored_cluster: Option<u64>,
    /// The request counted in that cluster's core too (so does its output).
    pub scored_core: bool,
    /// Admitted at the Throttle level: settled against the budgets scaled
    /// by the throttle factor, as it was admitted.
    pub throttled: bool,
    /// The behaviour cohorts that observed the request (0: none); what the
    /// response produces counts there too.
    pub scored_cohorts: [u64; cohort::KEYS],
    /// The network pool that observed the request (0: none); what the
    /// response produces counts there too.
    pub scored_pool: u64,
    /// Forwarded degraded (output clamped): its output does not count as
    /// the client's own output length.
    pub degraded: bool,
}

/// Engine decision with context for logs and headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The verdict.
    pub verdict: Verdict,
    /// Name of the account's tier.
    pub tier: Arc<str>,
    /// Allow-listed accounts skip detection.
    pub allow_listed: bool,
    /// The account's cluster, if it is linked into one.
    pub cluster: Option<ClusterView>,
    /// Whether that cluster shares a budget (strong and big enough).
    pub cluster_enforced: bool,
    /// Behaviour detection's verdict (None: off, or allow-listed).
    pub detection: Option<Detection>,
}

impl Decision {
    /// What happened, as one word (see [`Verdict::label`]).
    pub fn label(&self) -> &'static str {
        self.verdict.label()
    }
}

/// What an admitted request actually cost, known after the response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens the upstream reported (None: keep the estimate).
    pub input_tokens: Option<u64>,
    /// Output tokens (reported or estimated from the streamed text).
    pub output_tokens: u64,
}

/// What one request asks of the budgets once everything else is decided:
/// the account's cells under its tier (scaled down when throttled, its
/// concurrency capped when slowed) and, when its cluster shares a budget,
/// the cluster's cells under that budget. Wherever the cells are kept —
/// in this process ([`Engine::admit_local`]) or shared by every replica
/// (`crate::state`) — they are checked and charged with the same rules:
/// every budget admits or nothing is charged.
#[derive(Debug, Clone)]
pub struct BudgetAsk {
    /// The account.
    pub account: AccountId,
    /// The account's quotas for this request.
    pub tier: Tier,
    /// The cluster whose shared budget is charged too.
    pub cluster: Option<ClusterAsk>,
    /// Input tokens charged at admission (the estimate).
    pub input_tokens: u64,
}

/// A cluster's part of a [`BudgetAsk`].
#[derive(Debug, Clone)]
pub struct ClusterAsk {
    /// The cluster.
    pub id: u64,
    /// Its members now (its budget grows with them).
    pub members: u32,
    /// Its budget for this request.
    pub budget: Tier,
}

/// The budgets' answer to a [`BudgetAsk`]: admitted (with the cluster
/// charged too, and its size then), or the first budget that refused.
pub type Admission = Result<Option<(u64, u32)>, LimitHit>;

/// A decision before its budgets are asked ([`Engine::assess`]).
// Not boxed: it lives for one call on the request path, and a box would
// be an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Assessment {
    /// Refused before any budget is asked (blocked, or a new account with
    /// no room), or otherwise final.
    Decided(Decision),
    /// Every other check passed: the budgets decide.
    Admit(Pending),
}

/// A decision waiting for its budgets' [`Admission`].
#[derive(Debug)]
pub struct Pending {
    ask: BudgetAsk,
    anonymous: bool,
    throttled: bool,
    scored_cluster: Option<u64>,
    tier: Arc<str>,
    allow_listed: bool,
    cluster: Option<ClusterView>,
    cluster_enforced: bool,
    detection: Option<Detection>,
}

impl Pending {
    /// The budget cells to check.
    pub fn ask(&self) -> &BudgetAsk {
        &self.ask
    }

    /// The decision, given what the budgets answered.
    pub fn conclude(self, admission: Admission) -> Decision {
        let verdict = match admission {
            Err(hit) => Verdict::Throttle(hit),
            Ok(cluster) => {
                let d = self.detection.as_ref();
                let ticket = Ticket {
                    account: self.ask.account,
                    anonymous: self.anonymous,
                    input_charged: self.ask.input_tokens,
                    cluster,
                    scored_cluster: self.scored_cluster,
                    scored_core: d.is_some_and(|d| d.in_cluster_core),
                    throttled: self.throttled,
                    scored_cohorts: d.map_or([0; cohort::KEYS], |d| d.cohorts),
                    scored_pool: d.map_or(0, |d| d.pool),
                    degraded: d.is_some_and(|d| d.degrade_to.is_some()),
                };
                match (d.and_then(|d| d.degrade_to), d.and_then(|d| d.delay)) {
                    (Some(max_output), delay) => Verdict::Degrade {
                        ticket,
                        max_output,
                        delay,
                    },
                    (None, Some(delay)) => Verdict::Slow { ticket, delay },
                    (None, None) => Verdict::Allow(ticket),
                }
            }
        };
        Decision {
            verdict,
            tier: self.tier,
            allow_listed: self.allow_listed,
            cluster: self.cluster,
            cluster_enforced: self.cluster_enforced,
            detection: self.detection,
        }
    }
}

/// Counters of the engine's own housekeeping.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Account states dropped (idle or over the cap).
    pub evicted_accounts: AtomicU64,
    /// Of those, dropped only because of the cap (they were not idle).
    pub evicted_over_cap: AtomicU64,
    /// Accounts over the cap after the last eviction that could not be
    /// dropped (they owe, are in flight, or carry evidence).
    pub kept_over_cap: AtomicU64,
    /// New accounts refused because the store was full (per network).
    pub new_accounts_refused: AtomicU64,
}

/// The accounts that joined a cluster while it was too small to be scored, up to four (what the shipped
/// `min_members` of 3 needs, with room; a larger cluster's further members bring their histories themselves).
#[derive(Debug, Clone, Copy, Default)]
struct PendingMembers {
    ids: [u64; 4],
    n: u8,
}

impl PendingMembers {
    fn add(&mut self, account: u64) {
        let n = usize::from(self.n);
        if n < self.ids.len() && !self.ids[..n].contains(&account) {
            self.ids[n] = account;
            self.n += 1;
        }
    }

    fn accounts(&self) -> impl Iterator<Item = u64> + '_ {
        self.ids[..usize::from(self.n)].iter().copied()
    }
}

/// A scored cluster's behaviour state. `all` observes every member's
/// requests; `core` only the requests of members whose own evidence (their
/// account's raw score, before the amount of evidence is weighed) reaches
/// `core_min_raw`. The cluster is scored by the higher of the two, so
/// honest accounts linked into a campaign's cluster, whose own evidence
/// stays below the mark, cannot dilute what its members get: they never
/// reach the core. The ladder follows that score.
#[derive(Debug, Clone, Copy)]
struct ClusterBehaviour {
    all: score::ClusterSignals,
    core: score::ClusterSignals,
    ladder: score::LadderState,
    /// Since when the cluster has been acted on at Degrade or above without
    /// a break (None: it is below Degrade).
    degraded_since: Option<Nanos>,
}

impl ClusterBehaviour {
    fn new(formed_at: Nanos) -> ClusterBehaviour {
        ClusterBehaviour {
            all: score::ClusterSignals::new(formed_at),
            core: score::ClusterSignals::new(formed_at),
            ladder: score::LadderState::default(),
            degraded_since: None,
        }
    }

    /// The cluster's score: the higher of all members' and the core's (the
    /// core only once it holds requests).
    fn score(&self, now: Nanos, policy: &score::ScorePolicy) -> score::Score {
        let all = self.all.score(now, policy);
        if self.core.requests(now, policy) <= 0.0 {
            return all;
        }
        let core = self.core.score(now, policy);
        if core.value > all.value {
            core
        } else {
            all
        }
    }

    /// Another cluster's state merged into this one.
    fn absorb(&mut self, other: &ClusterBehaviour, now: Nanos, policy: &score::ScorePolicy) {
        self.all.absorb_cluster(&other.all, now, policy);
        self.core.absorb_cluster(&other.core, now, policy);
        self.ladder.join(&other.ladder);
        // Both halves held at Degrade: since the earlier. One half: since its
        // start, the joined ladder being at Degrade (a merge is no break).
        self.degraded_since = match (self.degraded_since, other.degraded_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a
                .or(b)
                .filter(|_| self.ladder.level() >= score::Level::Degrade),
        };
    }
}

/// A request as a behaviour cohort or a network pool observes it.
#[derive(Clone, Copy)]
struct GroupRequest<'r, 'a> {
    account: u64,
    req: &'r score::RequestSignals<'a>,
    hits: score::PhraseHits,
    policy: &'r DetectionPolicy,
    /// The tier's requests per minute.
    tier_rpm: u64,
    /// Whether the group's state is kept (else it is fed on a copy).
    keep: bool,
}

/// How a request meets linking and behaviour state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Linked and observed for good, then decided (one process).
    Local,
    /// Decided on the applied state, changing none of it (the shared
    /// stream applies the request later).
    View,
    /// Linked and observed for good, not decided (from the shared stream).
    Apply,
}

/// What linking and detection made of a request ([`Engine::see`]).
struct Seen {
    cluster: Option<ClusterView>,
    cluster_manual: Option<Manual>,
    blocked: Option<Scope>,
    detection: Option<Detection>,
}

/// The policy engine. Shared by all workers (`Sync`); every method takes
/// `now`.
pub struct Engine {
    policy: ArcSwap<Policy>,
    accounts: AccountStore,
    clusters: AccountStore,
    account_signals: dashmap::DashMap<u64, (score::AccountSignals, score::LadderState)>,
    cluster_signals: dashmap::DashMap<u64, ClusterBehaviour>,
    /// Clusters strong enough to be scored but not yet `min_members` large: the accounts that joined them, whose
    /// histories the cluster takes when it is scored ([`Engine::follow_links`]).
    pending_members: dashmap::DashMap<u64, PendingMembers>,
    /// Behaviour cohorts by key ([`cohort`]), at most [`MAX_COHORTS`].
    cohorts: dashmap::DashMap<u64, score::ClusterSignals>,
    /// Network pools by key ([`pool_key`] of the client prefix), at most
    /// [`MAX_COHORTS`].
    pools: dashmap::DashMap<u64, score::ClusterSignals>,
    linker: Mutex<Linker>,
    manual_accounts: dashmap::DashMap<u64, Manual>,
    manual_clusters: dashmap::DashMap<u64, Manual>,
    /// What is known of accounts' age beyond their behaviour state, at most
    /// `max_tenure` ([`Engine::tenure_of`]).
    tenure: dashmap::DashMap<u64, Tenure>,
    /// Engine time since which every account's first request is known,
    /// plus [`TENURE_EPOCH`] (a history taken over from before this engine's
    /// time 0 starts before it; `u64::MAX`: not yet set — the first account
    /// scored sets it): the start of the history, moved on when the tenure
    /// map forgets accounts.
    tenure_since: AtomicU64,
    /// Engine time of the first request detection observed (`u64::MAX`: none yet): how long it has watched
    /// accounts' clients ([`score::ScorePolicy::stack_watch`]). Not moved by an imported tenure history, which
    /// holds no clients.
    watch_started: AtomicU64,
    /// New-account cells per client network, used while the account store
    /// is full.
    new_accounts: IdMap<gcra::Gcra>,
    next_maintenance: AtomicU64,
    /// The owner sweeps idle state on its own schedule ([`Engine::maintain_if_due`]): requests do not.
    maintained_outside: AtomicBool,
    /// Engine time before which a full store is not swept again for room.
    next_room_sweep: AtomicU64,
    /// A request found the store full while the owner sweeps ([`Engine::make_room_if_wanted`]).
    room_wanted: AtomicBool,
    stats: EngineStats,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("accounts", &self.accounts.len())
            .finish()
    }
}

/// How often idle state is swept (engine time).
const MAINTENANCE_INTERVAL: Nanos = 10 * SECOND;

/// Behaviour cohorts held at most (440 bytes each): keys are quantised, so a
/// few hundred per model are in use; beyond the cap no new cohort is made
/// until idle ones are swept.
const MAX_COHORTS: usize = 16_384;

/// A cohort whose decayed requests fall below this is idle and swept.
const COHORT_IDLE_REQUESTS: f32 = 0.5;

/// Networks whose new-account cells are kept before idle ones are swept.
const NEW_ACCOUNT_NETWORKS: usize = 65_536;

impl Engine {
    /// An engine with `policy` and no state.
    pub fn new(policy: Policy) -> Engine {
        Engine {
            linker: Mutex::new(Linker::new(policy.cluster.link.clone())),
            policy: ArcSwap::from_pointee(policy),
            accounts: AccountStore::default(),
            clusters: AccountStore::default(),
            account_signals: dashmap::DashMap::with_shard_amount(accounts::STATE_SHARDS),
            cluster_signals: dashmap::DashMap::new(),
            pending_members: dashmap::DashMap::new(),
            cohorts: dashmap::DashMap::new(),
            pools: dashmap::DashMap::new(),
            manual_accounts: dashmap::DashMap::new(),
            manual_clusters: dashmap::DashMap::new(),
            tenure: dashmap::DashMap::with_shard_amount(accounts::STATE_SHARDS),
            tenure_since: AtomicU64::new(u64::MAX),
            watch_started: AtomicU64::new(u64::MAX),
            new_accounts: IdMap::default(),
            next_maintenance: AtomicU64::new(0),
            maintained_outside: AtomicBool::new(false),
            next_room_sweep: AtomicU64::new(0),
            room_wanted: AtomicBool::new(false),
            stats: EngineStats::default(),
        }
    }

    /// Replace the policy; all state (buckets, debts) is kept.
    pub fn set_policy(&self, policy: Policy) {
        if let Ok(mut l) = self.linker.lock() {
            l.set_policy(policy.cluster.link.clone());
        }
        self.policy.store(Arc::new(policy));
    }

    /// Forget the view that [`Engine::apply`] builds — links, clusters,
    /// behaviour signals, ladders, cohorts and network pools — to build it again from the
    /// start (a replica re-syncing its view from the shared stream). Budget
    /// cells, accounts (first seen, totals) and manual decisions are kept.
    pub fn reset_view(&self) {
        // Lock order: the linker, then the signal maps.
        let Ok(mut linker) = self.linker.lock() else {
            return;
        };
        linker.forget();
        self.account_signals.clear();
        self.cluster_signals.clear();
        self.pending_members.clear();
        self.cohorts.clear();
        self.pools.clear();
    }

    /// Record an admin's decision about an account (`None` clears it).
    pub fn set_manual_account(&self, account: AccountId, manual: Option<Manual>) {
        match manual {
            Some(m) => {
                self.manual_accounts.insert(account.0, m);
            }
            None => {
                self.manual_accounts.remove(&account.0);
            }
        }
    }

    /// Record an admin's decision about a cluster (`None` clears it).
    pub fn set_manual_cluster(&self, cluster: u64, manual: Option<Manual>) {
        match manual {
            Some(m) => {
                self.manual_clusters.insert(cluster, m);
            }
            None => {
                self.manual_clusters.remove(&cluster);
            }
        }
    }

    /// The admin's decision about an account, if any.
    pub fn manual_account(&self, account: AccountId) -> Option<Manual> {
        self.manual_accounts.get(&account.0).map(|m| *m)
    }

    /// The admin's decision about a cluster, if any.
    pub fn manual_cluster(&self, cluster: u64) -> Option<Manual> {
        self.manual_clusters.get(&cluster).map(|m| *m)
    }

    /// Every manual decision: (accounts, clusters), sorted by id.
    pub fn manual_decisions(&self) -> ManualDecisions {
        let mut a: Vec<_> = self
            .manual_accounts
            .iter()
            .map(|e| (AccountId(*e.key()), *e.value()))
            .collect();
        let mut c: Vec<_> = self
            .manual_clusters
            .iter()
            .map(|e| (*e.key(), *e.value()))
            .collect();
        a.sort_by_key(|x| x.0);
        c.sort_by_key(|x| x.0);
        (a, c)
    }

    /// The cluster an account is linked into now.
    pub fn cluster_of(&self, account: AccountId) -> Option<ClusterView> {
        self.linker.lock().ok()?.cluster_of(account.0)
    }

    /// A cluster by id.
    pub fn cluster(&self, id: u64) -> Option<ClusterView> {
        self.linker.lock().ok()?.cluster(id)
    }

    /// The busiest accounts by requests or tokens: (account, requests, tokens).
    pub fn top_accounts(&self, n: usize, by_tokens: bool) -> Vec<(AccountId, u64, u64)> {
        self.accounts
            .top(n, |s| {
                if by_tokens {
                    s.tokens_total
                } else {
                    s.requests_total
                }
            })
            .into_iter()
            .map(|(id, s)| (AccountId(id), s.requests_total, s.tokens_total))
            .collect()
    }

    /// The accounts with the highest behaviour scores now: (account,
    /// requests, tokens), highest first.
    pub fn top_scores(&self, n: usize, now: Nanos) -> Vec<(AccountId, u64, u64)> {
        let policy = self.policy.load();
        let Some(d) = policy.detection.as_ref() else {
            return Vec::new();
        };
        let mut scored: Vec<(f32, u64)> = self
            .account_signals
            .iter()
            .map(|e| (e.value().0.score(now, &d.score).value, *e.key()))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored
            .into_iter()
            .take(n)
            .map(|(_, id)| {
                let (r, t) = self
                    .accounts
                    .peek(id, |s| (s.requests_total, s.tokens_total))
                    .unwrap_or((0, 0));
                (AccountId(id), r, t)
            })
            .collect()
    }

    /// Up to `limit` members of a cluster.
    pub fn cluster_members(&self, id: u64, limit: usize) -> Vec<AccountId> {
        self.linker
            .lock()
            .map(|l| l.members(id, limit).into_iter().map(AccountId).collect())
            .unwrap_or_default()
    }

    /// Up to `limit` clusters, largest first.
    pub fn clusters(&self, limit: usize) -> Vec<ClusterView> {
        self.linker
            .lock()
            .map(|l| l.clusters(limit))
            .unwrap_or_default()
    }

    /// Recent links between members of cluster `id`, newest first, at most
    /// `limit` ([`link::Linker::cluster_links`]).
    pub fn cluster_links(&self, id: u64, limit: usize) -> Vec<link::LinkEdge> {
        self.linker
            .lock()
            .map(|l| l.cluster_links(id, limit))
            .unwrap_or_default()
    }

    /// The linker's counters and sizes.
    pub fn link_stats(&self) -> Option<link::LinkStats> {
        self.linker.lock().ok().map(|l| l.stats())
    }

    /// Cluster budget states held now.
    pub fn tracked_clusters(&self) -> usize {
        self.clusters.len()
    }

    /// Links the request's account and, under the same lock (so concurrent requests apply merges in the order they
    /// happened), brings the clusters' behaviour state in step ([`Engine::follow_links`]). Also returns the rules
    /// under which another account shared the request's values ([`link::Linker::shared_rules`]).
    fn observe_link(
        &self,
        obs: &Observation,
        policy: &Policy,
        now: Nanos,
    ) -> (Option<ClusterView>, u32) {
        let a = &obs.attrs;
        let prompt: &[u64] = a.prompt.as_ref().map_or(&[], |p| &p[..]);
        let attrs = Attributes {
            ja4: a.ja4,
            http: a.http,
            h2: a.h2,
            ip_prefix: a.ip_prefix,
            asn: a.asn,
            prompt,
            shape: request_shape(&obs.request),
        };
        let Ok(mut linker) = self.linker.lock() else {
            return (None, 0);
        };
        let cluster = linker.observe(obs.account.0, &attrs, now);
        if !linker.changes().is_empty() {
            self.follow_links(linker.changes(), cluster, obs, policy, now);
            linker.clear_changes();
        }
        (cluster, linker.shared_rules())
    }

    /// Keeps the clusters' behaviour state in step with linking: a cluster that merged into another brings its
    /// state along, and an account that joins a scored cluster brings its history (what it sent before; the current request is observed by the cluster itself, later). So
    /// a cluster that forms out of accounts which already sent is scored on everything they sent, not only on what
    /// arrives after the link. Called with the linker locked (lock order: linker, then the signal maps).
    fn follow_links(
        &self,
        changes: &link::LinkChanges,
        cluster: Option<ClusterView>,
        obs: &Observation,
        policy: &Policy,
        now: Nanos,
    ) {
        let Some(d) = &policy.detection else {
            for (gone, _) in &changes.merges {
                self.cluster_signals.remove(gone);
                self.pending_members.remove(gone);
            }
            return;
        };
        for &(gone, into) in &changes.merges {
            if let Some((_, p)) = self.pending_members.remove(&gone) {
                let mut to = self.pending_members.entry(into).or_default();
                p.accounts().for_each(|a| to.add(a));
            }
            let Some((_, state)) = self.cluster_signals.remove(&gone) else {
                continue;
            };
            match self.cluster_signals.entry(into) {
                dashmap::Entry::Occupied(mut e) => e.get_mut().absorb(&state, now, &d.score),
                dashmap::Entry::Vacant(e) => {
                    e.insert(state);
                }
            }
        }
        // Only clusters that are scored keep behaviour state. Most linked accounts are in pairs, which are not
        // (`min_members`), and a state of their own (two 680-byte windows) held for each was most of the engine's
        // memory per linked account: a cluster strong enough but still too small only notes who joined it, and
        // takes their histories, all of them, once it is scored. Members it did not note (past `PendingMembers`'
        // room, or joined while it was weaker) bring theirs with their next request (`detect`).
        let Some(c) = cluster.filter(|c| c.strength >= policy.cluster.score_min_strength) else {
            return;
        };
        if !policy.cluster.scored(&c) {
            if !changes.joined.is_empty() {
                let mut p = self.pending_members.entry(c.id).or_default();
                changes.joined.iter().for_each(|&a| p.add(a));
            }
            return;
        }
        let pending = self.pending_members.remove(&c.id).map(|(_, p)| p);
        let noted = pending.iter().flat_map(PendingMembers::accounts);
        for account in changes.joined.iter().copied().chain(noted) {
            // A first request has no state yet: make it, so its history is not taken later.
            let (history, raw) = {
                // (The request's own account is made with the age it states.)
                let stated = obs.account_age.filter(|_| account == obs.account.0);
                let mut e = self.account_state(account, stated, now);
                let history = e.0.join_cluster();
                let raw = history.map_or(0.0, |_| e.0.score(now, &d.score).raw);
                (history, raw)
            };
            if let Some(h) = history {
                let mut state = self.cluster_state(&c);
                state.all.absorb_member(&h, now, &d.score);
                // The same mark as the member's own requests (`detect`).
                if raw >= d.core_min_raw {
                    state.core.absorb_member(&h, now, &d.score);
                }
            }
        }
    }

    /// An account's behaviour state, made (first seen `now`, with its
    /// [tenure](Engine::tenure_of), `stated` or the engine's) if it has none.
    fn account_state(
        &self,
        account: u64,
        stated: Option<Nanos>,
        now: Nanos,
    ) -> dashmap::mapref::one::RefMut<'_, u64, (score::AccountSignals, score::LadderState)> {
        self.account_signals.entry(account).or_insert_with(|| {
            (
                self.new_signals(account, stated, now, true),
                Default::default(),
            )
        })
    }

    /// A new behaviour state for `account`, first seen `now`, as old as its
    /// tenure; `record`: the engine's tenure map learns of it.
    fn new_signals(
        &self,
        account: u64,
        stated: Option<Nanos>,
        now: Nanos,
        record: bool,
    ) -> score::AccountSignals {
        let mut s = score::AccountSignals::new(now);
        s.set_tenure(self.tenure_of(account, stated, now, record));
        s
    }

    /// How old `account` is at `now`: as a trusted auth front states it
    /// (`stated`), else as the tenure map remembers it (the age it had when
    /// first seen, plus the time since), else — an account the engine has
    /// not seen since its history began — no younger than the history
    /// leaves possible: an account first seen an hour after a restart may
    /// be years old, so its age counts as the account-age ramp's far end
    /// (the age at which the signal is off) less the history watched.
    /// Only after that much history is a first request a new account's.
    /// `record`: remember the answer.
    fn tenure_of(&self, account: u64, stated: Option<Nanos>, now: Nanos, record: bool) -> Nanos {
        let (first, age) = if let Some(age) = stated {
            (now, age)
        } else if let Some(t) = self.tenure.get(&account) {
            let first = u64::from(t.first) * MINUTE;
            return (u64::from(t.prior) * MINUTE).saturating_add(now.saturating_sub(first));
        } else {
            let since = match self.tenure_since.load(Ordering::Relaxed) {
                u64::MAX if record => {
                    let _ = self.tenure_since.compare_exchange(
                        u64::MAX,
                        now.saturating_add(TENURE_EPOCH),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    self.tenure_since.load(Ordering::Relaxed)
                }
                u64::MAX => now.saturating_add(TENURE_EPOCH),
                t => t,
            };
            let horizon = self.policy.load().detection.as_ref().map_or(0, |d| {
                (f64::from(d.score.account_age_horizon_hours()) * HOUR as f64) as Nanos
            });
            let watched = now.saturating_add(TENURE_EPOCH).saturating_sub(since);
            (now, horizon.saturating_sub(watched))
        };
        if record {
            let m = minutes(first);
            self.tenure.insert(
                account,
                Tenure {
                    first: m,
                    prior: minutes(age),
                    last: m,
                },
            );
        }
        age
    }

    /// How much of a new stack's churn an engine that has just started takes
    /// off ([`score::RequestSignals::stack_discount`]): an account older than
    /// the engine's watch has used clients it has not seen, so its second
    /// clients (another machine, a second stack) count `watched /
    /// stack_watch` of what they would until the engine has watched
    /// `stack_watch`. A new account's clients are all new to it, and a stack
    /// changing in place ([`score::StackNovelty::Further`]) is no machine the
    /// engine missed: neither is discounted.
    fn stack_discount(
        &self,
        novelty: score::StackNovelty,
        age: Nanos,
        now: Nanos,
        policy: &score::ScorePolicy,
    ) -> f32 {
        // A plain load on every request; the compare-exchange (a write) only
        // until the first request has set the start.
        let started = match self.watch_started.load(Ordering::Relaxed) {
            u64::MAX => self
                .watch_started
                .compare_exchange(u64::MAX, now, Ordering::Relaxed, Ordering::Relaxed)
                .map_or_else(|set| set, |_| now),
            t => t,
        };
        let watched = now.saturating_sub(started);
        let second = matches!(
            novelty,
            score::StackNovelty::Second | score::StackNovelty::Elsewhere
        );
        if !second || watched >= policy.stack_watch || age <= watched {
            return 0.0;
        }
        1.0 - (watched as f64 / policy.stack_watch as f64) as f32
    }

    /// A cluster's behaviour state, made (formed when the linker says) if it has none.
    fn cluster_state(
        &self,
        c: &ClusterView,
    ) -> dashmap::mapref::one::RefMut<'_, u64, ClusterBehaviour> {
        self.cluster_signals
            .entry(c.id)
            .or_insert_with(|| ClusterBehaviour::new(c.formed_at))
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Housekeeping counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Accounts with state held now.
    pub fn tracked_accounts(&self) -> usize {
        self.accounts.len()
    }

    /// Accounts whose behaviour (detection signal) state is held now: it
    /// outlives their idle budget state while they carry evidence or their
    /// requests have not decayed away, within twice `max_tracked`.
    pub fn tracked_behaviour(&self) -> usize {
        self.account_signals.len()
    }

    /// Decide what happens to a request, its budgets checked in the
    /// engine's own cells: [`Engine::assess`], [`Engine::admit_local`],
    /// [`Pending::conclude`].
    pub fn decide(&self, obs: &Observation, now: Nanos) -> Decision {
        match self.assess(obs, now) {
            Assessment::Decided(d) => d,
            Assessment::Admit(p) => {
                let admission = self.admit_local(&p.ask, now);
                p.conclude(admission)
            }
        }
    }

    /// Everything a decision needs but the budgets: manual decisions,
    /// linking, detection. A request that is refused before its budgets
    /// are asked is [`Assessment::Decided`]; any other names the budget
    /// cells to check ([`BudgetAsk`]), wherever they are kept.
    pub fn assess(&self, obs: &Observation, now: Nanos) -> Assessment {
        self.assess_in(obs, now, Mode::Local)
    }

    /// [`Engine::assess`] on the view of clusters and behaviour as last
    /// [applied](Engine::apply), changing none of it: the request's
    /// account is in the cluster the applied observations put it in, and
    /// its signals (and its cluster's and cohorts') are fed this request
    /// on copies that are dropped — the request itself is applied when
    /// its observation comes back from the shared stream
    /// (`crate::state::stream`). Budgets and the account's own budget
    /// state are this process's, as in `assess`.
    pub fn assess_view(&self, obs: &Observation, now: Nanos) -> Assessment {
        self.assess_in(obs, now, Mode::View)
    }

    /// The phrase lists a request's prompt matches, for an observation
    /// shared with other replicas; None when nothing would apply it
    /// (clusters and detection both off).
    pub fn observation_hits(&self, obs: &Observation) -> Option<score::PhraseHits> {
        let policy = self.policy.load();
        let f = &obs.request;
        match &policy.detection {
            Some(_) => Some(f.phrase_hits),
            None if policy.cluster.enabled => Some(score::PhraseHits::default()),
            None => None,
        }
    }

    /// Apply one request's observation at `now` to linking and behaviour
    /// state — what [`Engine::assess`] does to them, without the budgets
    /// and without a decision. Every replica applies every replica's
    /// observations in one order and at the times the shared stream gave
    /// them, so they link the same clusters under the same ids.
    pub fn apply(&self, obs: &Observation, now: Nanos) {
        let policy = self.policy.load();
        let (tier_idx, allow_listed) = policy.tier_of(obs.account, obs.anonymous);
        let manual = self.manual_account(obs.account);
        let allow_listed = allow_listed || manual == Some(Manual::Allow);
        let _ = self.see(
            obs,
            &policy,
            &policy.tiers[tier_idx],
            (allow_listed, manual),
            now,
            Mode::Apply,
        );
    }

    fn assess_in(&self, obs: &Observation, now: Nanos, mode: Mode) -> Assessment {
        if !self.maintained_outside.load(Ordering::Relaxed) {
            self.maintain_if_due(now);
        }
        let policy = self.policy.load();
        let (tier_idx, allow_listed) = policy.tier_of(obs.account, obs.anonymous);
        let tier = &policy.tiers[tier_idx];
        let manual = self.manual_account(obs.account);
        let allow_listed = allow_listed || manual == Some(Manual::Allow);
        // A new account the store has no room for leaves no trace: not in
        // the store, not in the linker's index, not in a cluster's size.
        if let Err(hit) = self.admit_new_account(obs, &policy, now) {
            return Assessment::Decided(Decision {
                verdict: Verdict::Throttle(hit),
                tier: tier.name.clone(),
                allow_listed,
                cluster: None,
                cluster_enforced: false,
                detection: None,
            });
        }
        let Seen {
            cluster,
            cluster_manual,
            blocked,
            detection,
        } = self.see(obs, &policy, tier, (allow_listed, manual), now, mode);
        // A refusal still touches the account's state (last seen, first seen).
        let block = |scope, by, cluster_enforced, detection| {
            self.accounts.with(obs.account.0, now, |_| ());
            Decision {
                verdict: Verdict::Block { scope, by },
                tier: tier.name.clone(),
                allow_listed,
                cluster,
                cluster_enforced,
                detection,
            }
        };
        if let Some(scope) = blocked {
            return Assessment::Decided(block(scope, Blocker::Admin, false, None));
        }
        let not_allowed = |_: &ClusterView| cluster_manual != Some(Manual::Allow);
        let scored = cluster
            .filter(|c| policy.cluster.scored(c))
            .filter(not_allowed);
        // The shared budget needs the cluster's behaviour at
        // `budget_min_level` too (when detection scores it at all).
        let gate = policy.cluster.budget_min_level;
        let enforced = cluster
            .filter(|c| policy.cluster.applies(c))
            .filter(not_allowed)
            .filter(|_| match &detection {
                Some(d) if gate > score::Level::Allow => d.cluster_level.is_some_and(|l| l >= gate),
                _ => true,
            });
        let applied = detection
            .as_ref()
            .map_or(score::Level::Allow, |d| d.enforced);
        if applied == score::Level::Block {
            let scope = detection.as_ref().map_or(Scope::Account, |d| d.scope);
            return Assessment::Decided(block(
                scope,
                Blocker::Detection,
                enforced.is_some(),
                detection,
            ));
        }
        // Throttled: budgets multiplied down (the account's and the
        // cluster's); slowed: the account's own concurrency capped. The cap
        // is one account's (`[detection.slow] max_concurrent`): on a
        // cluster's shared budget it would squeeze every member through the
        // few slots one account gets.
        let det = policy.detection.as_ref();
        let factor = match det {
            Some(d) if applied >= score::Level::Throttle => d.throttle_factor,
            _ => 1.0,
        };
        let adjust = |t: Tier| -> Tier {
            if factor < 1.0 {
                t.scaled(factor)
            } else {
                t
            }
        };
        let mut account_tier = adjust(tier.clone());
        if let Some(d) = det.filter(|_| applied >= score::Level::Slow) {
            account_tier.max_concurrent = account_tier.max_concurrent.min(d.slow_max_concurrent);
        }
        let throttled = factor < 1.0;
        let ask = BudgetAsk {
            account: obs.account,
            tier: account_tier,
            cluster: enforced.map(|c| ClusterAsk {
                id: c.id,
                members: c.members,
                budget: adjust(policy.cluster.budget(c.members)),
            }),
            input_tokens: obs.input_tokens,
        };
        Assessment::Admit(Pending {
            ask,
            anonymous: obs.anonymous,
            throttled,
            scored_cluster: scored.filter(|_| detection.is_some()).map(|c| c.id),
            tier: tier.name.clone(),
            allow_listed,
            cluster,
            cluster_enforced: enforced.is_some(),
            detection,
        })
    }

    /// Linking and detection of one request, as `mode` wants them: linked
    /// and observed for good (local, apply), or read from the applied
    /// state with the request fed to copies (view). Allow-listed accounts
    /// are never linked nor scored; a blocked account's request is linked
    /// but not scored.
    fn see(
        &self,
        obs: &Observation,
        policy: &Policy,
        tier: &Tier,
        (allow_listed, manual): (bool, Option<Manual>),
        now: Nanos,
        mode: Mode,
    ) -> Seen {
        let (cluster, shared) = match mode {
            _ if !policy.cluster.enabled || allow_listed => (None, 0),
            Mode::View => (self.cluster_of(obs.account), 0),
            Mode::Local | Mode::Apply => self.observe_link(obs, policy, now),
        };
        let cluster_manual = cluster.and_then(|c| self.manual_cluster(c.id));
        let blocked = match (manual, cluster_manual) {
            (Some(Manual::Block), _) => Some(Scope::Account),
            (_, Some(Manual::Block)) => Some(Scope::Cluster),
            _ => None,
        };
        // A cluster is scored as a whole from `score_min_strength`, and
        // shares a budget from `min_strength` (evidence of one operator).
        let scored = cluster
            .filter(|c| policy.cluster.scored(c))
            .filter(|_| cluster_manual != Some(Manual::Allow));
        let detection = match &policy.detection {
            Some(d)
                if blocked.is_none() && !allow_listed && cluster_manual != Some(Manual::Allow) =>
            {
                let keep = mode != Mode::View;
                Some(self.detect(d, policy, tier, obs, (cluster, scored, shared), now, keep))
            }
            _ => None,
        };
        Seen {
            cluster,
            cluster_manual,
            blocked,
            detection,
        }
    }

    /// Check a request's budgets in the engine's own cells and, when every
    /// one admits, charge them: the account's on copies first, then the
    /// cluster's (checked and committed under the account's lock), then
    /// the account's committed.
    pub fn admit_local(&self, ask: &BudgetAsk, now: Nanos) -> Admission {
        self.accounts.with(ask.account.0, now, |state| {
            let requests = check_cells(state, &ask.tier, Scope::Account, now)?;
            let cluster = match &ask.cluster {
                None => None,
                Some(c) => {
                    self.clusters.with(c.id, now, |cs| {
                        let requests = check_cells(cs, &c.budget, Scope::Cluster, now)?;
                        commit_cells(cs, &c.budget, requests, ask.input_tokens, now);
                        Ok(())
                    })?;
                    Some((c.id, c.members))
                }
            };
            commit_cells(state, &ask.tier, requests, ask.input_tokens, now);
            Ok(cluster)
        })
    }

    /// Charge a request that another store admitted (the shared one) to
    /// the engine's own cells too, unchecked: what this process served
    /// stays in its cells, so settling it here is exact, and a fallback
    /// to these cells starts from this process's share of the traffic,
    /// not from full buckets.
    pub fn record_admission(&self, ask: &BudgetAsk, now: Nanos) {
        let charge = |s: &mut AccountState, tier: &Tier| {
            let mut requests = s.requests;
            requests.charge(&tier.requests, 1, now);
            commit_cells(s, tier, requests, ask.input_tokens, now);
        };
        self.accounts
            .with(ask.account.0, now, |s| charge(s, &ask.tier));
        if let Some(c) = &ask.cluster {
            self.clusters.with(c.id, now, |s| charge(s, &c.budget));
        }
    }

    /// A request from an account the store does not hold, while the store
    /// is at its cap: make room (forgivable state only, at most once a
    /// second), and if none can be made, admit the new account only within
    /// its network's new-account budget, and never past twice the cap.
    /// Known accounts, allow-listed and listed ones always pass. When the
    /// owner sweeps ([`Engine::maintain_outside`]) the request only asks for
    /// room ([`Engine::make_room_if_wanted`]) and is admitted as if none
    /// could be made: the sweep walks every tracked account, hundreds of
    /// milliseconds at the shipped cap, which this request and every
    /// connection on its worker would otherwise wait for.
    fn admit_new_account(
        &self,
        obs: &Observation,
        policy: &Policy,
        now: Nanos,
    ) -> Result<(), LimitHit> {
        let cap = policy.max_tracked;
        if self.accounts.len() < cap
            || self.accounts.contains(obs.account.0)
            || policy.accounts.contains_key(&obs.account.0)
        {
            return Ok(());
        }
        if self.maintained_outside.load(Ordering::Relaxed) {
            self.room_wanted.store(true, Ordering::Relaxed);
        } else {
            self.make_room(now);
            if self.accounts.len() < cap {
                return Ok(());
            }
        }
        let rate = &policy.new_accounts_at_capacity;
        let refuse = |retry_after| {
            self.stats
                .new_accounts_refused
                .fetch_add(1, Ordering::Relaxed);
            LimitHit {
                scope: Scope::Network,
                kind: LimitKind::NewAccounts,
                retry_after,
                quota: Some(*rate),
                max_concurrent: 0,
                remaining: 0,
                reset_after: retry_after,
            }
        };
        if self.accounts.len() >= cap.saturating_mul(2) {
            return Err(refuse(MAINTENANCE_INTERVAL));
        }
        let network = obs.attrs.ip_prefix.unwrap_or(0);
        if self.new_accounts.len() >= NEW_ACCOUNT_NETWORKS {
            self.new_accounts.retain(|_, c| !c.is_idle(now));
        }
        let mut cell = self.new_accounts.entry(network).or_default();
        cell.check(rate, 1, now).map_err(|r| refuse(r.retry_after))
    }

    /// Feed the behaviour signals of the account (and of its cluster, when
    /// it is scored as a whole), score them, move the ladders, and decide
    /// which level is enforced. `linked` is the account's cluster of any
    /// strength, `cluster` the one that is scored, `shared` the link rules
    /// under which another account sent the same values. Without `keep`
    /// the account's, its cluster's and its cohorts' states are fed and
    /// scored on copies, and left as they were.
    #[allow(clippy::too_many_arguments)]
    fn detect(
        &self,
        d: &DetectionPolicy,
        policy: &Policy,
        tier: &Tier,
        obs: &Observation,
        (linked, cluster, shared): (Option<ClusterView>, Option<ClusterView>, u32),
        now: Nanos,
        keep: bool,
    ) -> Detection {
        let f = &obs.request;
        let hits = f.phrase_hits;
        // A prompt whose shape linked this account by a template rule, or
        // that a signal-only template rule saw on another account, is
        // shared with other accounts.
        let prompt_rules = policy
            .cluster
            .link
            .rules
            .iter()
            .enumerate()
            .filter(|(i, r)| *i < 32 && r.kinds.contains(&AttrKind::Prompt))
            .fold(0u32, |m, (i, _)| m | (1 << i));
        let template_shared =
            shared & prompt_rules != 0 || linked.is_some_and(|c| c.rules & prompt_rules != 0);
        let mut req = score::RequestSignals {
            now,
            thinking_budget: f.thinking_budget,
            reasoning_effort_high: f.reasoning_effort_high,
            max_output_tokens: f.max_output_tokens,
            model: f.model.as_deref(),
            input_tokens: obs.input_tokens,
            template_shared,
            template_key: obs
                .attrs
                .prompt
                .and_then(|k| k.into_iter().find(|&k| k != 0)),
            fill_key: f.fill_key,
            fingerprint_inconsistent: f.fingerprint_inconsistent,
            stack: score::StackNovelty::Known,
            stack_key: 0,
            sender_requests_per_hour: 0.0,
            sender_age: None,
            stack_discount: 0.0,
        };
        let tier_rpm = tier.requests.per_period();
        let history;
        let mut cohorts = [0u64; cohort::KEYS];
        let mut by_cohort = false;
        let mut pool = 0u64;
        let mut by_pool = false;
        let (mut level, mut scope, mut best) = {
            let mut entry;
            let mut copy;
            let (sig, ladder) = if keep {
                entry = self.account_state(obs.account.0, obs.account_age, now);
                let e = entry.value_mut();
                (&mut e.0, &mut e.1)
            } else {
                copy = self.account_signals.get(&obs.account.0).map_or_else(
                    || {
                        let s = self.new_signals(obs.account.0, obs.account_age, now, false);
                        (s, score::LadderState::default())
                    },
                    |e| *e.value(),
                );
                (&mut copy.0, &mut copy.1)
            };
            // First seen by a scored cluster (it joined before the cluster
            // was scored): its history goes there, before this request.
            history = cluster.and_then(|_| sig.join_cluster());
            req.stack_key = score::stack_key(client_stack(&obs.attrs));
            req.stack = sig.note_stack(req.stack_key, score::stack_key(obs.attrs.ip_prefix));
            let age = sig.age(now);
            req.sender_age = Some(age);
            req.stack_discount = self.stack_discount(req.stack, age, now, &d.score);
            sig.observe_hits(&req, hits, &d.score, tier_rpm);
            let mut sc = sig.score(now, &d.score);
            let own_raw = sc.raw;
            // Too few requests of its own for the evidence its signals show:
            // its behaviour cohort's pooled requests supply the amount.
            let profile = sig.profile(now, &d.score);
            let group = GroupRequest {
                account: obs.account.0,
                req: &req,
                hits,
                policy: d,
                tier_rpm,
                keep,
            };
            if sc.raw >= d.cohort_min_raw && profile.requests_total >= d.cohort_min_requests {
                cohorts = cohort::keys(&profile);
                for key in cohorts {
                    let Some((c, _)) = self.observe_group(&self.cohorts, key, group) else {
                        continue;
                    };
                    // `sc.raw`, not `own_raw`: once a cohort has lent, the next
                    // one is capped by the raw score that cohort lent
                    // (module docs of `cohort`; measured in BENCHMARKS.md,
                    // "Cohort lending").
                    let value = sc.raw.min(c.raw) * c.evidence * c.activity;
                    if value > sc.value {
                        sc = score::Score { value, ..c };
                        by_cohort = true;
                    }
                }
            }
            // Its client network's pool: the accounts on its prefix whose own
            // evidence reaches `network_pool_min_raw` and that take long
            // answers to short prompts themselves, scored as a whole (what
            // they take together, long answers per member-hour, is what none
            // of them shows alone) once it has seen enough of them. An
            // account that takes no long answer neither feeds a pool nor
            // dilutes it (honest members of a campaign's network cannot lower
            // what the campaign gets).
            let prefix = obs.attrs.ip_prefix.filter(|_| {
                own_raw >= d.network_pool_min_raw
                    && profile.long_yield_per_request > 0.0
                    && profile.requests_total >= d.cohort_min_requests
            });
            if let Some(key) = prefix.map(pool_key) {
                // Each request carries its sender's own rate, so an account
                // that rotates its requests over several prefixes counts at its
                // full rate in each of their pools.
                let rate = sig.requests_per_hour(now, &d.score);
                let req = score::RequestSignals {
                    sender_requests_per_hour: rate,
                    ..req
                };
                let own_yield = profile.long_yield_per_request * rate;
                let group = GroupRequest { req: &req, ..group };
                if let Some((p, members)) = self.observe_group(&self.pools, key, group) {
                    pool = key;
                    // The pool says the accounts on this network take, together,
                    // what an extraction takes; the account takes that score as
                    // far as it takes the same itself: the pool's evidence
                    // other than its yield per member, capped by the account's
                    // own raw score, plus the account's own long-answer yield
                    // per hour (per request served in full, shrunk by
                    // `prior_requests`, times its rate) weighed as the pool's
                    // yield per member is and capped by it. So honest
                    // neighbours on the prefix (short answers, or long ones at
                    // human rates) are not lifted, and a neighbour's own long
                    // answers, already in its raw score as output length and
                    // ratio, do not stand in for the pool's yield.
                    let w = &d.score;
                    let pool_yield = p
                        .contribution(score::Signal::YieldPerMember)
                        .map_or(0.0, |c| c.weight * c.normalised);
                    let own_term =
                        w.weights.yield_per_member * w.ramps.yield_per_member.apply(own_yield);
                    let own = own_term.min(pool_yield) + (p.raw - pool_yield).min(own_raw);
                    let value = own * p.evidence * p.activity;
                    if members >= d.network_pool_min_members as f32 && value > sc.value {
                        sc = score::Score { value, ..p };
                        by_pool = true;
                        by_cohort = false;
                    }
                }
            }
            (ladder.update(sc.value, &d.score), Scope::Account, sc)
        };
        // The account's own evidence, before its amount is weighed: its
        // requests count in its cluster's core from the first one.
        let in_core = cluster.is_some() && best.raw >= d.core_min_raw;
        let settled = d.slow_while_requests_below;
        let mut cluster_level = None;
        let mut sustained = false;
        if let Some(c) = cluster {
            let mut entry;
            let mut copy;
            let state = if keep {
                entry = self.cluster_state(&c);
                entry.value_mut()
            } else {
                copy = self
                    .cluster_signals
                    .get(&c.id)
                    .map_or_else(|| ClusterBehaviour::new(c.formed_at), |e| *e.value());
                &mut copy
            };
            state.all.set_members(c.members);
            if let Some(h) = &history {
                state.all.absorb_member(h, now, &d.score);
                if in_core {
                    state.core.absorb_member(h, now, &d.score);
                }
            }
            state
                .all
                .observe_hits(obs.account.0, &req, hits, &d.score, tier_rpm);
            if in_core {
                state
                    .core
                    .observe_hits(obs.account.0, &req, hits, &d.score, tier_rpm);
            }
            let sc = state.score(now, &d.score);
            let mut cl = state.ladder.update(sc.value, &d.score);
            // Acted on as the request below would be (Slow on settled
            // evidence is Degrade).
            let acted = if cl == score::Level::Slow && settled > 0 && sc.requests >= settled as f32
            {
                score::Level::Degrade
            } else {
                cl
            };
            if acted >= score::Level::Degrade {
                let since = *state.degraded_since.get_or_insert(now);
                // A campaign is throughput-bound and open-loop: degraded
                // answers do not change what it sends. A cluster held at
                // Degrade this long is blocked (honest users whose answers
                // are cut short stop, or come to an admin, who can allow
                // the cluster).
                if let Some(after) = d.block_cluster_after_degrade {
                    if cl < score::Level::Block && now.saturating_sub(since) >= after {
                        cl = score::Level::Block;
                        sustained = true;
                    }
                }
            } else {
                state.degraded_since = None;
            }
            cluster_level = Some(cl);
            if cl > level {
                level = cl;
                scope = Scope::Cluster;
                best = sc;
            } else {
                // The account's own level decides: the block is not the
                // cluster's time at Degrade.
                sustained = false;
            }
        }
        // Slow is for evidence still building: a campaign is throughput-
        // bound, so once the score rests on enough requests, the Slow level
        // is acted on as Degrade (less output, no thinking), which takes
        // something from it.
        if level == score::Level::Slow && settled > 0 && best.requests >= settled as f32 {
            level = score::Level::Degrade;
        }
        // Which level is enforced: the highest at or below `level` whose
        // action is enforced for this account (global mode and per action).
        let bucket = (obs.account.0 % 100) as u8;
        let on = |m: ActionMode| {
            d.mode.enforce && m.enforce && bucket < d.mode.enforce_percent.min(m.enforce_percent)
        };
        let mut enforced = score::Level::Allow;
        for (lvl, m) in [
            (score::Level::Slow, d.slow),
            (score::Level::Degrade, d.degrade),
            (score::Level::Throttle, d.throttle),
            (score::Level::Block, d.block),
        ] {
            if level >= lvl && on(m) {
                enforced = lvl;
            }
        }
        let delay = (enforced >= score::Level::Slow && on(d.slow)).then(|| {
            let enter = d.score.thresholds.slow.enter;
            let span = (1.0 - enter).max(f32::EPSILON);
            let t = f64::from(((best.value - enter) / span).clamp(0.0, 1.0));
            let lo = policy::nanos(d.slow_min_delay) as f64;
            let hi = policy::nanos(d.slow_max_delay) as f64;
            (lo + (hi - lo) * t) as Nanos
        });
        let degrade_to = (enforced >= score::Level::Degrade && on(d.degrade))
            .then_some(d.degrade_max_output_tokens);
        let phrase_hits = hits.names(&d.phrase_lists).map(String::from).collect();
        Detection {
            level,
            scope,
            enforced,
            score: best,
            delay,
            degrade_to,
            phrase_hits,
            cluster_level,
            in_cluster_core: in_core,
            cohorts,
            by_cohort,
            pool,
            by_pool,
            sustained,
        }
    }

    /// A behaviour cohort or a network pool (in `groups`) observes a
    /// request of `account` and is scored, with the distinct members it
    /// has seen (None: no room for a new group). Without `keep` the group
    /// is fed on a copy. Its members are not set: many accounts each
    /// sending little ([`score::Signal::MemberSpread`]) is what a
    /// corporate NAT shows too, evidence only where the linker joined
    /// them. Lock order: the account's signals, then the group's.
    fn observe_group(
        &self,
        groups: &dashmap::DashMap<u64, score::ClusterSignals>,
        key: u64,
        GroupRequest {
            account,
            req,
            hits,
            policy: d,
            tier_rpm,
            keep,
        }: GroupRequest<'_, '_>,
    ) -> Option<(score::Score, f32)> {
        let now = req.now;
        let observe = |c: &mut score::ClusterSignals| {
            c.observe_hits(account, req, hits, &d.score, tier_rpm);
            (c.score(now, &d.score), c.senders(now, &d.score))
        };
        if !keep {
            let mut c = groups
                .get(&key)
                .map_or_else(|| score::ClusterSignals::new(now), |c| *c.value());
            return Some(observe(&mut c));
        }
        if groups.len() >= MAX_COHORTS && !groups.contains_key(&key) {
            return None;
        }
        let mut c = groups
            .entry(key)
            .or_insert_with(|| score::ClusterSignals::new(now));
        Some(observe(&mut c))
    }

    /// Settle an admitted request with what it cost. Output tokens are
    /// charged post-paid (the account may go into debt); the input estimate
    /// is corrected by what the upstream reported.
    pub fn settle(&self, ticket: &Ticket, usage: Usage, now: Nanos) {
        self.settle_budgets(ticket, usage, now);
        self.settle_signals(ticket, usage, now);
    }

    /// The budget half of [`Engine::settle`]: the engine's own cells.
    pub fn settle_budgets(&self, ticket: &Ticket, usage: Usage, now: Nanos) {
        let policy = self.policy.load();
        let (tier, cluster) = settle_tiers(&policy, ticket);
        self.accounts.with(ticket.account.0, now, |s| {
            settle_cells(s, &tier, ticket, usage, now)
        });
        if let (Some((id, _)), Some(budget)) = (ticket.cluster, &cluster) {
            self.clusters
                .with(id, now, |s| settle_cells(s, budget, ticket, usage, now));
        }
    }

    /// The behaviour half of [`Engine::settle`]: the output counts in the
    /// signals of the account, its scored cluster and its cohorts (what a
    /// replica applies from the shared stream). Uses the ticket's
    /// `account`, `scored_cluster`, `scored_core`, `scored_cohorts`,
    /// `scored_pool` and `degraded`.
    pub fn settle_signals(&self, ticket: &Ticket, usage: Usage, now: Nanos) {
        let policy = self.policy.load();
        if let Some(d) = &policy.detection {
            let full = !ticket.degraded;
            let out = usage.output_tokens;
            // The request's prompt: as the upstream counted it, else as charged.
            let input = Some(usage.input_tokens.unwrap_or(ticket.input_charged));
            if let Some(mut e) = self.account_signals.get_mut(&ticket.account.0) {
                e.0.settle_request(out, input, now, &d.score, full);
            }
            for key in ticket.scored_cohorts.iter().filter(|&&k| k != 0) {
                if let Some(mut c) = self.cohorts.get_mut(key) {
                    c.settle_request(out, input, now, &d.score, full);
                }
            }
            if ticket.scored_pool != 0 {
                if let Some(mut p) = self.pools.get_mut(&ticket.scored_pool) {
                    p.settle_request(out, input, now, &d.score, full);
                }
            }
            if let Some(id) = ticket.scored_cluster {
                let settle = |e: &mut ClusterBehaviour| {
                    e.all.settle_request(out, input, now, &d.score, full);
                    if ticket.scored_core {
                        e.core.settle_request(out, input, now, &d.score, full);
                    }
                };
                let settled = self
                    .cluster_signals
                    .get_mut(&id)
                    .map(|mut e| settle(&mut e))
                    .is_some();
                // The cluster merged into another since the decision (or
                // dissolved): the account's cluster now, if it has state.
                if !settled {
                    let now_in = self
                        .linker
                        .lock()
                        .ok()
                        .and_then(|l| l.cluster_of(ticket.account.0));
                    if let Some(mut e) = now_in.and_then(|c| self.cluster_signals.get_mut(&c.id)) {
                        settle(&mut e);
                    }
                }
            }
        }
    }

    /// The quotas `ticket` is settled against (its tier's, its cluster's
    /// budget), as [`Engine::settle`] uses them: for a store that keeps
    /// the cells elsewhere.
    pub fn settle_quotas(&self, ticket: &Ticket) -> (Tier, Option<Tier>) {
        let policy = self.policy.load();
        let (tier, cluster) = settle_tiers(&policy, ticket);
        (tier.into_owned(), cluster.map(Cow::into_owned))
    }

    /// The account's behaviour score now (None: no signals held).
    pub fn account_score(
        &self,
        account: AccountId,
        now: Nanos,
    ) -> Option<(score::Score, score::Level)> {
        let policy = self.policy.load();
        let d = policy.detection.as_ref()?;
        self.account_signals
            .get(&account.0)
            .map(|e| (e.0.score(now, &d.score), e.1.level()))
    }

    /// Decayed requests of all members held in the cluster's behaviour
    /// state now (its core holds a part of them).
    pub fn cluster_requests(&self, id: u64, now: Nanos) -> Option<f32> {
        let policy = self.policy.load();
        let d = policy.detection.as_ref()?;
        self.cluster_signals
            .get(&id)
            .map(|e| e.all.requests(now, &d.score))
    }

    /// The cluster's behaviour score now: the higher of all its members'
    /// and its core's.
    pub fn cluster_score(&self, id: u64, now: Nanos) -> Option<(score::Score, score::Level)> {
        let policy = self.policy.load();
        let d = policy.detection.as_ref()?;
        self.cluster_signals
            .get(&id)
            .map(|e| (e.score(now, &d.score), e.ladder.level()))
    }

    /// A snapshot of an account's budgets (for the admin API and tests).
    pub fn account_budgets(&self, account: AccountId, now: Nanos) -> Option<AccountBudgets> {
        let policy = self.policy.load();
        let (tier_idx, allow_listed) = policy.tier_of(account, false);
        let tier = &policy.tiers[tier_idx];
        self.accounts.peek(account.0, |s| AccountBudgets {
            tier: tier.name.clone(),
            allow_listed,
            requests_remaining: s.requests.remaining(&tier.requests, now),
            input_tokens_remaining: s.input.remaining(&tier.input, now),
            output_tokens_remaining: s.output.remaining(&tier.output, now),
            output_tokens_debt: s.output.debt(&tier.output, now),
            in_flight: s.in_flight,
            first_seen: s.first_seen,
            last_seen: s.last_seen,
        })
    }

    /// From now on the caller sweeps idle state itself, calling [`Engine::maintain_if_due`] (the proxy does, once a
    /// second off its request threads) and [`Engine::make_room_if_wanted`]: the sweep walks every tracked account,
    /// milliseconds at hundreds of thousands, which the request that found it due paid otherwise (replay and
    /// simulation keep it inline: deterministic, and nothing waits on them).
    pub fn maintain_outside(&self) {
        self.maintained_outside.store(true, Ordering::Relaxed);
    }

    /// Sweep for room ([`Engine::maintain`]) if a request found the account store full since the last call, at
    /// most once a second of engine time; returns whether it swept. For an owner that sweeps
    /// ([`Engine::maintain_outside`]): call it often (the proxy does every 100 ms, off its request threads), as
    /// new accounts are admitted only within their network's budget until room is made.
    pub fn make_room_if_wanted(&self, now: Nanos) -> bool {
        self.room_wanted.swap(false, Ordering::Relaxed) && self.make_room(now)
    }

    /// One step of the link index's compaction, if one is under way (the sweep begins it): the spill lists of a
    /// bounded part of the table moved, under the linker's lock; `None` when no compaction was under way. The step
    /// says whether lists are left to move, and holds the arena they left after the last one: dropping it, with the
    /// linker unlocked, gives back its memory. For an owner that maintains outside ([`Engine::maintain_outside`]):
    /// call it often (the proxy does every 100 ms, off its request threads). Moving them all at once took the lock
    /// for about 0.2 s at the default `max_index_values` (BENCHMARKS.md, "The link index compacts in steps").
    pub fn compact_links_step(&self) -> Option<link::CompactStep> {
        let mut linker = self.linker.lock().ok()?;
        linker.compacting().then(|| linker.compact_step())
    }

    /// The link index's next table length, when its growth is near and no table is ready for it: for an owner
    /// that maintains outside ([`Engine::maintain_outside`]) to make with [`Engine::grow_index_ahead`], off its
    /// request threads. The growth itself runs on a request with the linker locked, every worker waiting: faulting
    /// in a large table's memory took up to half a second there (BENCHMARKS.md, "The index grows off the request
    /// path"). Into a table made ready, the rehash is spread over the key touches that follow as well.
    pub fn index_growth_wanted(&self) -> Option<usize> {
        self.linker.lock().ok()?.spare_wanted()
    }

    /// Makes the index table of `len` slots ([`Engine::index_growth_wanted`]) with the linker unlocked, then hands
    /// it to the linker, which keeps it if it is still the size its next growth needs. Slow: up to hundreds of
    /// milliseconds for the largest tables.
    pub fn grow_index_ahead(&self, len: usize) {
        let spare = link::SpareTable::prepare(len);
        if let Ok(mut l) = self.linker.lock() {
            l.give_spare(spare);
        }
    }

    /// [`Engine::maintain`], unless a sweep for room ran less than a second of engine time ago.
    fn make_room(&self, now: Nanos) -> bool {
        self.maintain_after(&self.next_room_sweep, SECOND, now)
    }

    /// [`Engine::maintain`] if `next` (engine time) has come, and then `next` is `interval` on; one caller wins
    /// when several find it due. Returns whether it swept.
    fn maintain_after(&self, next: &AtomicU64, interval: Nanos, now: Nanos) -> bool {
        let due = next.load(Ordering::Relaxed);
        let sweep = now >= due
            && next
                .compare_exchange(due, now + interval, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if sweep {
            self.maintain(now);
        }
        sweep
    }

    /// Sweep idle state ([`Engine::maintain`]) if the last sweep is at least the maintenance interval (10 s of
    /// engine time) old; returns whether it swept.
    pub fn maintain_if_due(&self, now: Nanos) -> bool {
        self.maintain_after(&self.next_maintenance, MAINTENANCE_INTERVAL, now)
    }

    /// Drop idle account state and, beyond the cap, the longest-idle state
    /// that forgives nothing: never an account that owes, is in flight, or
    /// carries detection evidence ([`Engine::carries_evidence`]).
    pub fn maintain(&self, now: Nanos) {
        let policy = self.policy.load();
        let evidence = |id| self.carries_evidence(&policy, id, now);
        let e = self
            .accounts
            .evict(now, policy.idle_evict, policy.max_tracked, evidence);
        // Cluster budget states follow the same rules, under the same cap.
        let _ = self
            .clusters
            .evict(now, policy.idle_evict, policy.max_tracked, |_| false);
        // Signals go with their account's state, and with dissolved clusters;
        // an account's signals that carry evidence, or whose requests have
        // not decayed away, outlive its idle budget state, within twice
        // the cap (a slow account is idle between its requests: dropping its
        // signals would make every request its first — a campaign account at
        // a few requests an hour whose evidence is still below every mark
        // would never build any, and a returning account would read young).
        let room = self.account_signals.len() <= policy.max_tracked.saturating_mul(2);
        self.account_signals.retain(|id, e| {
            let keep = self.accounts.peek(*id, |_| ()).is_some()
                || (room
                    && policy.detection.as_ref().is_some_and(|d| {
                        // The cheap test first: most kept states pass it.
                        e.0.requests(now, &d.score) >= SIGNAL_KEEP_REQUESTS
                            || signal_evidence(d, &e.0, e.1, now)
                    }));
            if !keep {
                // Its tenure outlives it (lock order: signals, then tenure).
                if let Some(mut t) = self.tenure.get_mut(id) {
                    t.last = t.last.max(minutes(e.0.last_seen()));
                }
            }
            keep
        });
        self.forget_tenure(now, policy.max_tenure);
        if let Ok(mut linker) = self.linker.lock() {
            // The spill lists move in steps the owner takes ([`Engine::compact_links_step`]), the linker unlocked
            // between them; replay and simulation move them all now.
            linker.compact();
            if !self.maintained_outside.load(Ordering::Relaxed) {
                linker.finish_compaction();
            }
            self.cluster_signals
                .retain(|id, _| linker.cluster(*id).is_some());
            self.pending_members
                .retain(|id, _| linker.cluster(*id).is_some());
        }
        if let Some(d) = &policy.detection {
            self.cohorts
                .retain(|_, c| c.requests(now, &d.score) >= COHORT_IDLE_REQUESTS);
            self.pools
                .retain(|_, c| c.requests(now, &d.score) >= COHORT_IDLE_REQUESTS);
        }
        self.new_accounts.retain(|_, c| !c.is_idle(now));
        self.stats
            .evicted_accounts
            .fetch_add(e.idle + e.over_cap, Ordering::Relaxed);
        self.stats
            .evicted_over_cap
            .fetch_add(e.over_cap, Ordering::Relaxed);
        self.stats
            .kept_over_cap
            .store(e.kept_over_cap, Ordering::Relaxed);
    }

    /// Beyond `cap` tenures, forget the least recently seen down to nine
    /// tenths of it, and move the start of the history past them: an
    /// account not in the map was then not seen since at least their last
    /// request, and nothing earlier is known of it.
    fn forget_tenure(&self, now: Nanos, cap: usize) {
        let len = self.tenure.len();
        if len <= cap {
            return;
        }
        // Accounts with behaviour state are active: seen now.
        let m = minutes(now);
        for e in self.account_signals.iter() {
            if let Some(mut t) = self.tenure.get_mut(e.key()) {
                t.last = m;
            }
        }
        let mut lasts: Vec<u32> = self.tenure.iter().map(|t| t.last).collect();
        let drop = (len - cap / 10 * 9).min(lasts.len());
        let Some(k) = drop.checked_sub(1) else {
            return;
        };
        let (_, cut, _) = lasts.select_nth_unstable(k);
        let cut = *cut;
        // Those seen at the cut's minute go only as far as `drop` asks.
        let mut ties = drop - lasts.iter().filter(|&&l| l < cut).count();
        self.tenure.retain(|_, t| {
            let keep = t.last > cut || (t.last == cut && ties == 0);
            if t.last == cut && !keep {
                ties -= 1;
            }
            keep
        });
        self.tenure_since.fetch_max(
            (u64::from(cut) + 1) * MINUTE + TENURE_EPOCH,
            Ordering::Relaxed,
        );
    }

    /// Accounts whose tenure the engine keeps.
    pub fn tracked_tenure(&self) -> usize {
        self.tenure.len()
    }

    /// What the engine knows of accounts' ages, relative to `now` (so that
    /// another process, on another clock, can take it over:
    /// [`Engine::import_tenure`]).
    pub fn export_tenure(&self, now: Nanos) -> TenureExport {
        let since = self.tenure_since.load(Ordering::Relaxed);
        let accounts = self
            .tenure
            .iter()
            .map(|e| {
                let t = *e.value();
                let first = u64::from(t.first) * MINUTE;
                let age = (u64::from(t.prior) * MINUTE).saturating_add(now.saturating_sub(first));
                let idle = now.saturating_sub(u64::from(t.last) * MINUTE);
                (AccountId(*e.key()), age, idle)
            })
            .collect();
        TenureExport {
            history: (since != u64::MAX)
                .then(|| (now.saturating_add(TENURE_EPOCH)).saturating_sub(since)),
            accounts,
        }
    }

    /// Take over an export made `gap` ago (by this process or one before
    /// it): every age and idle time grows by `gap`, and the history is taken
    /// to run through it (no request reached the API through this engine
    /// meanwhile). Accounts already known here keep what is known here.
    pub fn import_tenure(&self, now: Nanos, export: &TenureExport, gap: Nanos) {
        if let Some(h) = export.history {
            let since = (now.saturating_add(TENURE_EPOCH)).saturating_sub(h.saturating_add(gap));
            let _ = self
                .tenure_since
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                    Some(if t == u64::MAX { since } else { t.min(since) })
                });
        }
        let m = minutes(now);
        for &(account, age, idle) in &export.accounts {
            self.tenure.entry(account.0).or_insert(Tenure {
                first: m,
                prior: minutes(age.saturating_add(gap)),
                last: minutes(now.saturating_sub(idle.saturating_add(gap))),
            });
        }
    }

    /// Whether dropping the account would lose detection evidence: an admin
    /// decided about it, or its score (decayed to `now`) is at least half
    /// the slow threshold, or still holds its ladder above allow. Scores
    /// decay, so evidence ends, and with it the account's claim to memory.
    fn carries_evidence(&self, policy: &Policy, id: u64, now: Nanos) -> bool {
        if self.manual_accounts.contains_key(&id) {
            return true;
        }
        let Some(d) = &policy.detection else {
            return false;
        };
        self.account_signals
            .get(&id)
            .is_some_and(|e| signal_evidence(d, &e.0, e.1, now))
    }
}

/// An account's budgets, for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountBudgets {
    /// Tier name.
    pub tier: Arc<str>,
    /// Allow-listed.
    pub allow_listed: bool,
    /// Requests that would pass now.
    pub requests_remaining: u64,
    /// Input tokens left in the burst.
    pub input_tokens_remaining: u64,
    /// Output tokens left in the burst.
    pub output_tokens_remaining: u64,
    /// Output tokens owed beyond the burst.
    pub output_tokens_debt: u64,
    /// Requests in flight.
    pub in_flight: u32,
    /// First request seen (engine time).
    pub first_seen: Nanos,
    /// Last request seen (engine time).
    pub last_seen: Nanos,
}

/// The quotas a ticket is settled against: its tier's and its cluster's
/// budget, scaled as they were when it was admitted under Throttle.
fn settle_tiers<'p>(policy: &'p Policy, ticket: &Ticket) -> (Cow<'p, Tier>, Option<Cow<'p, Tier>>) {
    let (tier_idx, _) = policy.tier_of(ticket.account, ticket.anonymous);
    let factor = match &policy.detection {
        Some(d) if ticket.throttled && d.throttle_factor < 1.0 => Some(d.throttle_factor),
        _ => None,
    };
    let scaled = |t: Cow<'p, Tier>| match factor {
        Some(f) => Cow::Owned(t.scaled(f)),
        None => t,
    };
    let tier = scaled(Cow::Borrowed(&policy.tiers[tier_idx]));
    let cluster = ticket
        .cluster
        .map(|(_, members)| scaled(Cow::Owned(policy.cluster.budget(members))));
    (tier, cluster)
}

/// Settle one budget state: one fewer in flight, output charged post-paid,
/// the input estimate corrected by the reported count.
fn settle_cells(s: &mut AccountState, tier: &Tier, ticket: &Ticket, usage: Usage, now: Nanos) {
    s.in_flight = s.in_flight.saturating_sub(1);
    s.tokens_total = s
        .tokens_total
        .saturating_add(usage.output_tokens)
        .saturating_add(usage.input_tokens.unwrap_or(ticket.input_charged));
    s.output.charge(&tier.output, usage.output_tokens, now);
    if let Some(actual) = usage.input_tokens {
        if actual > ticket.input_charged {
            s.input
                .charge(&tier.input, actual - ticket.input_charged, now);
        } else {
            s.input
                .refund(&tier.input, ticket.input_charged - actual, now);
        }
    }
}

/// Check every budget of one state on copies; `Err` names the first that
/// refuses. Nothing changes.
fn check_cells(
    state: &AccountState,
    tier: &Tier,
    scope: Scope,
    now: Nanos,
) -> Result<gcra::Gcra, LimitHit> {
    let hit = |kind, quota: &Rate, cell: &gcra::Gcra, retry_after| LimitHit {
        scope,
        kind,
        retry_after,
        quota: Some(*quota),
        max_concurrent: tier.max_concurrent,
        remaining: cell.remaining(quota, now),
        reset_after: cell.reset_after(now),
    };
    if state.in_flight >= tier.max_concurrent {
        return Err(LimitHit {
            scope,
            kind: LimitKind::Concurrency,
            retry_after: SECOND,
            quota: None,
            max_concurrent: tier.max_concurrent,
            remaining: 0,
            reset_after: SECOND,
        });
    }
    let mut requests = state.requests;
    if let Err(r) = requests.check(&tier.requests, 1, now) {
        return Err(hit(
            LimitKind::Requests,
            &tier.requests,
            &state.requests,
            r.retry_after,
        ));
    }
    // Token budgets admit while not in debt; the charge may create debt.
    if let Err(r) = state.input.admits(&tier.input, now) {
        return Err(hit(
            LimitKind::InputTokens,
            &tier.input,
            &state.input,
            r.retry_after,
        ));
    }
    if let Err(r) = state.output.admits(&tier.output, now) {
        return Err(hit(
            LimitKind::OutputTokens,
            &tier.output,
            &state.output,
            r.retry_after,
        ));
    }
    Ok(requests)
}

fn commit_cells(
    state: &mut AccountState,
    tier: &Tier,
    requests: gcra::Gcra,
    input_tokens: u64,
    now: Nanos,
) {
    state.requests = requests;
    state.input.charge(&tier.input, input_tokens, now);
    state.in_flight += 1;
    state.requests_total += 1;
}

#[cfg(test)]
mod tests;
