//! Fingerprint linkage (engine step "link"): joins accounts that share client fingerprints into clusters with stable ids.
//!
//! A distillation "hydra" is thousands of accounts, each under its own rate limit, run by one operator from a few
//! client stacks, networks and prompt templates. Per-account limits cannot see it. This module sees it by linking
//! accounts whose requests carry the *same combination* of fingerprint values within a short window, and by keeping
//! the linked accounts in clusters (union-find) whose ids stay stable while the cluster persists, so that the engine
//! can give a whole cluster one budget and the admin API can show it.
//!
//! The module is pure: no I/O, no clock reads (time comes in as `now`, nanoseconds on an arbitrary monotonic epoch),
//! no threads, no global state, no randomness. Every hash uses a fixed function, so the same calls in the same order
//! give the same clusters and ids on every run and every replica.
//!
//! # Inputs
//!
//! [`Linker::observe`] gets one request: the account id (already a keyed hash) and its [`Attributes`], each value
//! already hashed to `u64` by the fingerprint layer: JA4, HTTP fingerprint, HTTP/2 fingerprint, client IP prefix
//! (e.g. the /24), ASN, and the prompt-shape signature as LSH band keys (two near-identical prompts share at least
//! one band key; an empty slice means the prompt was too short to be informative). At most 64 band keys of one
//! request are used.
//!
//! # Rules and index keys
//!
//! A [`LinkRule`] names a set of attribute kinds that must *all* match, a [`Strength`], and a window: two accounts
//! are linked by the rule when both sent the same combination of values within `window` of each other. For each rule
//! that applies to a request (all its kinds present, none of the values ignored), the rule's values are hashed into
//! one index key, together with the rule's kind set (not its position, so keys survive a reload that reorders
//! rules). A rule with `Prompt` yields one key per band key, so up to K keys.
//!
//! - `ignored` values (shared by many unrelated clients: a popular SDK's JA4, a cloud NAT prefix) are never used:
//!   a rule over an ignored value does not apply; an ignored band key drops only that key.
//! - `downweighted` values lower the rule's strength by one step each (Strong → Medium → Weak → no link). A key
//!   whose strength drops to nothing is neither looked up nor stored.
//! - A rule whose kinds span fewer than [`LinkPolicy::min_classes`] independent evidence classes
//!   ([`AttrKind::class`]: client stack, network, prompt shape, request shape) is *signal-only*: its keys are stored
//!   and looked up as usual, and [`Linker::shared_rules`] says whether another account sent the same values within
//!   the window, but it never links. Single linkage is transitive: with a prompt-only rule, the users of every common
//!   template form one cluster, and any shared shape joins it to a campaign.
//!
//! The index maps each key to the accounts seen under it, most recent first, at most `max_accounts_per_value`
//! of them (when full, the least recently seen makes room). Entries older than the largest rule window are
//! dropped when their key is touched, by an incremental sweep (a few table slots per `observe`), and by the full
//! sweep of [`Linker::maintain`].
//!
//! The index is one open-addressing table (linear probing, backward-shift deletion, grown at load 3/4, so 2^20
//! keys take 2^21 slots) of 32-byte slots, two to a cache line: the key and its most recent entry inline, the
//! others in a spill list kept in recency order (an index into an arena of lists that are recycled when freed).
//! Most keys are seen by one account only, so most need no heap memory and a lookup is one cache miss; the misses
//! of one request's keys overlap because all their home slots are touched before the lookups. Beyond `max_values`
//! keys, inserting one evicts the least recently used of the occupied slots among the four from its home slot
//! (sampled LRU whose sample is already in cache), or, when those are empty, of eight found by a sweeping hand.
//! Keys touched again and again (a hydra's templates and networks) stay; one-off keys (unique prompts) go first.
//! Evictions of keys still within their window are counted in [`LinkStats::evicted_total`].
//!
//! # Linking
//!
//! For each key, one pass over its list records the account (moving it to the front) and collects the other
//! accounts seen within the rule's window, newest first, at most `max_links_per_request` of them. Candidates found
//! under several keys are merged (strongest strength, union of rule bits; at most 128 distinct accounts per
//! request) and taken strongest first: a candidate already in the account's cluster of the current generation
//! only adds its strength and rule to that cluster; any other is merged in, at most `max_links_per_request` per
//! request. Spending the budget only on links that join something is what makes a small budget enough: a group
//! sharing a key is connected after about one round of its requests, and groups joined only by a weaker rule are
//! joined too, however large they grow, while the cost of a request stays bounded.
//!
//! # Clusters and generations
//!
//! Links expire by generation. Two union-find forests are kept, each with path halving and union by size:
//!
//! - `cur` holds the links made in the current generation only;
//! - `live` holds the links of the current *and* the previous generation. Every new link goes into both.
//!
//! Every `generation` nanoseconds the generations rotate: `live` is replaced by `cur` (the links of the generation
//! that just ended) and `cur` starts empty. So a link lasts between one and two generations, a cluster that gets no
//! new link for two generations is gone, and union-find entries of accounts not linked for two generations are
//! dropped at rotation. Queries ([`Linker::cluster_of`], [`Linker::cluster`], [`Linker::members`]) read `live`, which
//! is "the account's cluster in the current generation if it is linked there, else in the previous one", merged.
//! An account that was only observed, never linked, has no union-find entry at all.
//!
//! Each cluster root carries a [`ClusterView`]: id, member count, strongest link strength, the bitset of the rules
//! (by index in [`LinkPolicy::rules`]) that linked it, and when it formed. Strength and rules accumulate over the
//! links currently held, so they decay with rotation when the evidence stops.
//!
//! # Cluster ids
//!
//! Ids are stable while a cluster persists:
//!
//! - a cluster formed by a first link gets a fresh id, a hash of the two accounts and the time (deterministic);
//! - a merge keeps the id of the older cluster (earlier `formed_at`; then the larger; then the smaller id), with its
//!   `formed_at`;
//! - a component of `cur` takes the id and `formed_at` its members have in `live`, so when `cur` becomes `live` at
//!   rotation, clusters that kept sending keep their id across any number of rotations;
//! - if the evidence for one cluster splits, two `cur` components may carry the same id; at rotation the larger keeps
//!   it and the other gets a fresh id (`formed_at` = rotation time). Only these few recorded duplicates are
//!   revisited, so rotation costs O(duplicates), not O(accounts).
//!
//! Whoever keeps state per cluster id (the engine's behaviour signals) learns of merges (`absorbed → into`, in
//! order) and of accounts that joined a cluster from [`Linker::changes`], so that state can follow.
//!
//! # Memory
//!
//! Bounded by `max_values` (index keys, each with at most `max_accounts_per_value` entries) and
//! `max_linked_accounts` (union-find entries; a link that needs a new entry beyond it is refused and counted in
//! [`LinkStats::links_dropped_total`]). An index slot takes 32 bytes (the table has at most 8/3 × `max_values`
//! slots: 64 MiB for 2^20 keys), a spilled entry 16 bytes; a linked account takes a 40-byte node and a map entry of
//! about 20 bytes in each forest it is in (at most two). The last [`RECENT_LINKS`] links made are kept (32 bytes
//! each, 1 MiB) so the admin API can draw a cluster as a graph ([`Linker::cluster_links`]).
//! [`LinkStats::approx_bytes`] estimates the heap held by all structures from their capacities.
//!
//! # Cost
//!
//! [`Linker::observe`] allocates nothing in the common case (scratch buffers are reused; the table and the forests
//! grow only while warming up). It costs one table probe per key, a pass over each key's list that stops after
//! `max_links_per_request` candidates (plus a compare-only search for the account itself), one union-find lookup
//! per distinct candidate, at most `max_links_per_request` unions, and one union-find lookup for the answer.
//! Rotation, when due, happens inside `observe`: it swaps the forests, clears the old one (a memset of its map's
//! control bytes) and revisits the duplicate ids. [`Linker::maintain`] additionally sweeps the whole index
//! (O(values)) and shrinks it: call it from a background timer to drain expired entries when traffic is low;
//! correctness does not depend on it.
//!
//! `now` should not go backwards; if calls race by a little, only the edges of the windows blur.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::mem::size_of;

/// Nanoseconds on the caller's monotonic clock (an arbitrary epoch).
pub use super::gcra::Nanos;

/// One minute in [`Nanos`].
const MINUTE: Nanos = 60_000_000_000;
/// Rules beyond this many are ignored ([`ClusterView::rules`] is a `u32` bitset).
const MAX_RULES: usize = 32;
/// Band keys of one request beyond this many are ignored.
const MAX_PROMPT_KEYS: usize = 64;
/// Upper bound of [`LinkPolicy::max_links_per_request`].
const MAX_LINKS_CAP: usize = 64;
/// Distinct candidate accounts considered per request, at most.
const MAX_CANDIDATES: usize = 128;
/// Index slots visited by the incremental sweep per `observe`.
const SWEEP_STEP: usize = 4;
/// Links remembered for [`Linker::cluster_links`] (the most recent; 32 bytes each).
pub const RECENT_LINKS: usize = 1 << 15;
/// Occupied slots sampled per eviction by the sweeping hand (used when the neighbourhood is empty).
const EVICT_SAMPLE: usize = 8;
/// Slots next to an insertion point sampled for an eviction (about two at load 1/2; two cache lines).
const NEAR_SAMPLE: usize = 4;
/// Smallest index table (slots).
const MIN_TABLE: usize = 1024;
/// A freed spill list keeps its capacity for reuse up to this many entries.
const SPILL_KEEP_CAP: usize = 8;
/// Union-find forests keep at least this much capacity when cleared.
const FOREST_KEEP: usize = 1024;

const IGNORED: u8 = 1;
const DOWN: u8 = 2;

/// The kind of a fingerprint attribute.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum AttrKind {
    /// TLS ClientHello fingerprint (JA4).
    Ja4,
    /// HTTP fingerprint (header names and order, version; JA4H-style).
    Http,
    /// HTTP/2 fingerprint (SETTINGS, window update, priorities).
    H2,
    /// Client IP prefix (e.g. the /24 or /48).
    IpPrefix,
    /// Autonomous system of the client IP.
    Asn,
    /// Prompt-shape signature (LSH band keys).
    Prompt,
    /// Request shape: the model and the scale (power of four) of the output limit, hashed by the engine.
    Shape,
}

impl AttrKind {
    /// All kinds, in the canonical order used for hashing.
    pub const ALL: [AttrKind; 7] = [
        AttrKind::Ja4,
        AttrKind::Http,
        AttrKind::H2,
        AttrKind::IpPrefix,
        AttrKind::Asn,
        AttrKind::Prompt,
        AttrKind::Shape,
    ];

    /// Label for config, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AttrKind::Ja4 => "ja4",
            AttrKind::Http => "http",
            AttrKind::H2 => "h2",
            AttrKind::IpPrefix => "ip_prefix",
            AttrKind::Asn => "asn",
            AttrKind::Prompt => "prompt",
            AttrKind::Shape => "shape",
        }
    }

    const fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// The independent evidence class of the kind, as a bit: client stack (JA4, HTTP, HTTP/2), network (prefix,
    /// ASN), prompt shape, request shape. See [`LinkPolicy::min_classes`].
    pub const fn class(self) -> u8 {
        match self {
            AttrKind::Ja4 | AttrKind::Http | AttrKind::H2 => 1,
            AttrKind::IpPrefix | AttrKind::Asn => 2,
            AttrKind::Prompt => 4,
            AttrKind::Shape => 8,
        }
    }
}

/// One request's attribute values, already hashed to `u64` by the caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attributes<'a> {
    /// TLS fingerprint (JA4), if the connection was TLS.
    pub ja4: Option<u64>,
    /// HTTP fingerprint.
    pub http: Option<u64>,
    /// HTTP/2 fingerprint, if the connection was HTTP/2.
    pub h2: Option<u64>,
    /// Client IP prefix.
    pub ip_prefix: Option<u64>,
    /// Autonomous system of the client IP.
    pub asn: Option<u64>,
    /// LSH band keys of the prompt-shape signature (near signatures share at least one key); empty when the prompt
    /// is too short to be informative. At most 64 are used; a key of 0 is none (a region of stock phrases only).
    pub prompt: &'a [u64],
    /// Request shape (model, scale of the output limit), hashed.
    pub shape: Option<u64>,
}

impl Attributes<'_> {
    fn scalar(&self, kind: AttrKind) -> Option<u64> {
        match kind {
            AttrKind::Ja4 => self.ja4,
            AttrKind::Http => self.http,
            AttrKind::H2 => self.h2,
            AttrKind::IpPrefix => self.ip_prefix,
            AttrKind::Asn => self.asn,
            AttrKind::Shape => self.shape,
            AttrKind::Prompt => None,
        }
    }
}

/// How much a link says about two accounts having one operator.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Strength {
    /// Suggestive only (e.g. same client stack on the same network: could be one office).
    Weak = 1,
    /// Likely one operator.
    Medium = 2,
    /// Almost certainly one operator.
    Strong = 3,
}

impl Strength {
    /// Numeric level: Weak 1, Medium 2, Strong 3.
    pub fn level(self) -> u8 {
        self as u8
    }

    /// The strength of a numeric level: `None` for 0, [`Strength::Strong`] for 3 and above.
    pub fn from_level(level: u8) -> Option<Self> {
        match level {
            0 => None,
            1 => Some(Strength::Weak),
            2 => Some(Strength::Medium),
            _ => Some(Strength::Strong),
        }
    }

    /// Label for config, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Strength::Weak => "weak",
            Strength::Medium => "medium",
            Strength::Strong => "strong",
        }
    }
}

/// Links two accounts that sent the same combination of attribute values within `window` of each other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkRule {
    /// Name for reasons, logs and the admin API.
    pub name: String,
    /// Attribute kinds that must all match (order and repeats do not matter).
    pub kinds: Vec<AttrKind>,
    /// Strength of the links this rule makes.
    pub strength: Strength,
    /// The other account used the same combination within this long.
    pub window: Nanos,
}

/// What links accounts, and the bounds of the linker's memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPolicy {
    /// The rules; the bit `1 << i` of [`ClusterView::rules`] stands for `rules[i]`. At most 32 are used.
    pub rules: Vec<LinkRule>,
    /// Values shared by many unrelated clients: never used for linking.
    pub ignored: Vec<(AttrKind, u64)>,
    /// Values that lower a rule's strength by one step each (Weak → no link).
    pub downweighted: Vec<(AttrKind, u64)>,
    /// Accounts kept per index key (most recently seen kept), e.g. 64.
    pub max_accounts_per_value: usize,
    /// Index keys kept; beyond it the least recently used are evicted.
    pub max_values: usize,
    /// Links expire by generation: generations rotate every this long; a link lasts one to two generations.
    pub generation: Nanos,
    /// Other accounts one request is linked to, at most (the strongest, then most recent), e.g. 8; at most 64.
    pub max_links_per_request: usize,
    /// Accounts held in clusters, at most; a link that needs more is refused (and counted).
    pub max_linked_accounts: usize,
    /// Independent evidence classes ([`AttrKind::class`]) a rule must span for its links to join clusters, e.g. 2.
    /// A rule spanning fewer only *reports* that another account shared its values ([`Linker::shared_rules`], for a
    /// behaviour signal): one shared template never puts strangers into one cluster by itself, and single linkage
    /// cannot chain crowds through it. 1 (or 0): every rule links.
    pub min_classes: u8,
    /// Distinct prompt bands (positions of [`Attributes::prompt`]) a request must share with another account before
    /// a link found only by rules with no client-stack or network attribute (prompt, shape) joins them, e.g. 2.
    /// Short prompts that end in one stock phrase share a band by that phrase alone (signature §5), and the request
    /// shape is nearly constant across honest users, while a template's instances share most of their bands.
    /// 1: one band links.
    pub min_prompt_bands: u8,
}

impl Default for LinkPolicy {
    /// The reference policy: `strong` = same JA4 + IP prefix + prompt shape, `medium` = same prompt shape,
    /// `weak` = same JA4 + IP prefix, all within 10 minutes; 10-minute generations; 64 accounts per value,
    /// 2^20 values, 8 links per request, 2^20 linked accounts; every rule links (`min_classes` 1).
    fn default() -> Self {
        let window = 10 * MINUTE;
        let rule = |name: &str, kinds: &[AttrKind], strength| LinkRule {
            name: name.to_owned(),
            kinds: kinds.to_vec(),
            strength,
            window,
        };
        LinkPolicy {
            rules: vec![
                rule(
                    "strong",
                    &[AttrKind::Ja4, AttrKind::IpPrefix, AttrKind::Prompt],
                    Strength::Strong,
                ),
                rule("medium", &[AttrKind::Prompt], Strength::Medium),
                rule("weak", &[AttrKind::Ja4, AttrKind::IpPrefix], Strength::Weak),
            ],
            ignored: Vec::new(),
            downweighted: Vec::new(),
            max_accounts_per_value: 64,
            max_values: 1 << 20,
            min_prompt_bands: 1,
            generation: 10 * MINUTE,
            max_links_per_request: 8,
            max_linked_accounts: 1 << 20,
            min_classes: 1,
        }
    }
}

/// Why a [`LinkPolicy`] is not valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkPolicyError {
    /// More than 32 rules.
    TooManyRules {
        /// How many were given.
        count: usize,
    },
    /// A rule names no attribute kind (it would link every account).
    EmptyRule {
        /// The rule's name.
        rule: String,
    },
    /// A rule has a zero window (it would never link).
    ZeroWindow {
        /// The rule's name.
        rule: String,
    },
    /// Two rules have the same name.
    DuplicateRuleName {
        /// The name.
        rule: String,
    },
    /// A limit or duration that must be positive is zero.
    Zero {
        /// The field's name.
        field: &'static str,
    },
    /// `max_links_per_request` is above 64.
    TooManyLinksPerRequest {
        /// The value given.
        value: usize,
    },
}

impl fmt::Display for LinkPolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkPolicyError::TooManyRules { count } => {
                write!(
                    f,
                    "{count} link rules given, at most {MAX_RULES} are supported"
                )
            }
            LinkPolicyError::EmptyRule { rule } => {
                write!(f, "link rule `{rule}` names no attribute kind")
            }
            LinkPolicyError::ZeroWindow { rule } => {
                write!(f, "link rule `{rule}` has a zero window")
            }
            LinkPolicyError::DuplicateRuleName { rule } => {
                write!(f, "two link rules are named `{rule}`")
            }
            LinkPolicyError::Zero { field } => write!(f, "`{field}` must be greater than zero"),
            LinkPolicyError::TooManyLinksPerRequest { value } => write!(
                f,
                "`max_links_per_request` is {value}, at most {MAX_LINKS_CAP} is supported"
            ),
        }
    }
}

impl std::error::Error for LinkPolicyError {}

impl LinkPolicy {
    /// Checks the policy; [`Linker::new`] and [`Linker::set_policy`] accept any policy (they skip empty rules and
    /// rules beyond 32 and raise zero limits to 1), so call this first to reject a bad config with a reason.
    pub fn validate(&self) -> Result<(), LinkPolicyError> {
        if self.rules.len() > MAX_RULES {
            return Err(LinkPolicyError::TooManyRules {
                count: self.rules.len(),
            });
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.kinds.is_empty() {
                return Err(LinkPolicyError::EmptyRule {
                    rule: rule.name.clone(),
                });
            }
            if rule.window == 0 {
                return Err(LinkPolicyError::ZeroWindow {
                    rule: rule.name.clone(),
                });
            }
            if self.rules[..i].iter().any(|r| r.name == rule.name) {
                return Err(LinkPolicyError::DuplicateRuleName {
                    rule: rule.name.clone(),
                });
            }
        }
        let limits = [
            ("max_accounts_per_value", self.max_accounts_per_value as u64),
            ("max_values", self.max_values as u64),
            ("generation", self.generation),
            ("max_links_per_request", self.max_links_per_request as u64),
            ("max_linked_accounts", self.max_linked_accounts as u64),
        ];
        if let Some((field, _)) = limits.iter().find(|(_, v)| *v == 0) {
            return Err(LinkPolicyError::Zero { field });
        }
        if self.max_links_per_request > MAX_LINKS_CAP {
            return Err(LinkPolicyError::TooManyLinksPerRequest {
                value: self.max_links_per_request,
            });
        }
        Ok(())
    }
}

/// A cluster of linked accounts, as seen now.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ClusterView {
    /// Stable id: kept while the cluster persists, across generations, growth and merges.
    pub id: u64,
    /// Accounts in the cluster (at least 2).
    pub members: u32,
    /// Strongest link currently holding the cluster together.
    pub strength: Strength,
    /// Bitset of the rules (bit `i` for [`LinkPolicy::rules`]`[i]`) whose links currently hold the cluster.
    pub rules: u32,
    /// When the cluster (this id) formed.
    pub formed_at: Nanos,
}

/// One link the linker made: the request of `from` matched what `to` had sent, under `rules`. Only links that joined
/// two accounts' components are made (a pair already connected this generation only reinforces its cluster), so a
/// cluster's links form a sparse graph that connects its members, not every pair that shares a value.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct LinkEdge {
    /// The account whose request made the link.
    pub from: u64,
    /// The account it was linked to.
    pub to: u64,
    /// Bitset of the rules (bit `i` for [`LinkPolicy::rules`]`[i]`) whose values both sent.
    pub rules: u32,
    /// The link's strength (after downweighting).
    pub strength: Strength,
    /// When it was made.
    pub at: Nanos,
}

/// Counters and sizes for metrics.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct LinkStats {
    /// Index keys (attribute-value combinations) held.
    pub values: usize,
    /// Index entries (account under a key) held.
    pub entries: usize,
    /// Accounts held in clusters (current and previous generation).
    pub accounts: usize,
    /// Clusters (of at least two accounts).
    pub clusters: usize,
    /// Index keys evicted by the `max_values` cap while still within their window.
    pub evicted_total: u64,
    /// Index keys dropped because every entry had outlived the largest rule window.
    pub expired_total: u64,
    /// Links refused by the `max_linked_accounts` cap.
    pub links_dropped_total: u64,
    /// Generation rotations done.
    pub rotations_total: u64,
    /// Estimated heap bytes held by all structures (from their capacities).
    pub approx_bytes: usize,
}

// ---------------------------------------------------------------------------------------------------------------
// Hashing

const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const KEY_SALT: u64 = 0x6c69_6e6b_2d6b_6579; // "link-key"
const FLAG_SALT: u64 = 0x6c69_6e6b_2d66_6c67; // "link-flg"
const ID_SALT: u64 = 0x6c69_6e6b_2d69_6473; // "link-ids"

/// The 64-bit finalizer of MurmurHash3: a bijection with full avalanche.
#[inline]
fn fmix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[inline]
fn combine(h: u64, v: u64) -> u64 {
    fmix(h.wrapping_mul(K1) ^ v)
}

fn flag_key(kind: AttrKind, value: u64) -> u64 {
    combine(fmix(FLAG_SALT ^ u64::from(kind.bit())), value)
}

/// Hasher for keys that are already hashes: one multiply and one xor-shift per word. Fixed, so iteration order
/// never depends on a random seed.
#[derive(Clone, Copy, Debug, Default)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        let x = (self.0 ^ v).wrapping_mul(K1);
        self.0 = x ^ (x >> 32);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

fn map_bytes<K, V>(m: &FastMap<K, V>) -> usize {
    let cap = m.capacity();
    if cap == 0 {
        return 0;
    }
    let buckets = (cap.saturating_mul(8) / 7 + 1).next_power_of_two();
    buckets * (size_of::<(K, V)>() + 1) + 16
}

// ---------------------------------------------------------------------------------------------------------------
// Compiled policy

#[derive(Clone, Copy, Debug)]
struct CompiledRule {
    seed: u64,
    scalars: [AttrKind; 6],
    n_scalars: usize,
    prompt: bool,
    /// A prompt rule with no client-stack or network attribute: its links need `min_bands` prompt bands.
    prompt_only: bool,
    /// Spans fewer than `min_classes` evidence classes: reports sharing, never links.
    signal_only: bool,
    strength: u8,
    window: Nanos,
    bit: u32,
}

/// The evidence classes of a set of kinds (bits of [`AttrKind::bit`]).
fn classes(mask: u8) -> u8 {
    AttrKind::ALL
        .into_iter()
        .filter(|k| mask & k.bit() != 0)
        .fold(0, |c, k| c | k.class())
}

#[derive(Debug)]
struct Compiled {
    rules: Vec<CompiledRule>,
    uses_prompt: bool,
    flags: FastMap<u64, u8>,
    max_window: Nanos,
    per_value: usize,
    max_values: usize,
    generation: Nanos,
    max_links: usize,
    max_linked: usize,
    min_bands: u32,
}

impl Compiled {
    fn new(policy: &LinkPolicy) -> Self {
        let mut rules = Vec::new();
        for (i, rule) in policy.rules.iter().enumerate().take(MAX_RULES) {
            let mask = rule.kinds.iter().fold(0u8, |m, k| m | k.bit());
            if mask == 0 {
                continue;
            }
            let mut scalars = [AttrKind::Ja4; 6];
            let mut n_scalars = 0;
            for kind in AttrKind::ALL {
                if kind != AttrKind::Prompt && mask & kind.bit() != 0 {
                    scalars[n_scalars] = kind;
                    n_scalars += 1;
                }
            }
            rules.push(CompiledRule {
                seed: fmix(KEY_SALT ^ u64::from(mask)),
                scalars,
                n_scalars,
                prompt: mask & AttrKind::Prompt.bit() != 0,
                prompt_only: mask & AttrKind::Prompt.bit() != 0 && classes(mask) & 0b11 == 0,
                signal_only: classes(mask).count_ones() < u32::from(policy.min_classes),
                strength: rule.strength.level(),
                window: rule.window,
                bit: 1 << i,
            });
        }
        let mut flags = FastMap::default();
        for &(kind, value) in &policy.ignored {
            *flags.entry(flag_key(kind, value)).or_insert(0) |= IGNORED;
        }
        for &(kind, value) in &policy.downweighted {
            *flags.entry(flag_key(kind, value)).or_insert(0) |= DOWN;
        }
        Compiled {
            uses_prompt: rules.iter().any(|r| r.prompt),
            max_window: rules.iter().map(|r| r.window).max().unwrap_or(0),
            rules,
            flags,
            per_value: policy.max_accounts_per_value.max(1),
            max_values: policy.max_values.max(1),
            generation: policy.generation.max(1),
            max_links: policy.max_links_per_request.clamp(1, MAX_LINKS_CAP),
            max_linked: policy.max_linked_accounts.clamp(2, u32::MAX as usize - 1),
            min_bands: u32::from(policy.min_prompt_bands.max(1)),
        }
    }

    #[inline]
    fn flag(&self, kind: AttrKind, value: u64) -> u8 {
        if self.flags.is_empty() {
            0
        } else {
            self.flags.get(&flag_key(kind, value)).copied().unwrap_or(0)
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Attribute index

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    account: u64,
    seen: Nanos,
}

/// One table slot, 32 bytes so that two share a cache line and none straddles two. `key == 0` marks it empty (keys
/// are forced non-zero). `first` is always the most recently seen entry of the key; the others, if any, are in
/// `spills[spill]` (0 = none).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(32))]
struct Slot {
    key: u64,
    first: Entry,
    spill: u32,
}

/// What one key lookup needs to know.
#[derive(Clone, Copy, Debug)]
struct Touch {
    account: u64,
    now: Nanos,
    window: Nanos,
    max_window: Nanos,
    per_value: usize,
    max_values: usize,
}

#[derive(Debug)]
struct Index {
    slots: Vec<Slot>,
    len: usize,
    entries: usize,
    /// Entry lists of keys with more than one account; index 0 is never used.
    spills: Vec<VecDeque<Entry>>,
    free_spills: Vec<u32>,
    /// Capacity (in entries) of all spill lists.
    spill_cap: usize,
    hand: usize,
    sweep: usize,
    evicted_total: u64,
    expired_total: u64,
}

impl Index {
    fn new() -> Self {
        Index {
            slots: vec![Slot::default(); MIN_TABLE],
            len: 0,
            entries: 0,
            spills: vec![VecDeque::new()],
            free_spills: Vec::new(),
            spill_cap: 0,
            hand: 0,
            sweep: 0,
            evicted_total: 0,
            expired_total: 0,
        }
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    #[inline]
    fn probe(&self, key: u64) -> Result<usize, usize> {
        let mask = self.mask();
        let mut i = key as usize & mask;
        loop {
            let k = self.slots[i].key;
            if k == key {
                return Ok(i);
            }
            if k == 0 {
                return Err(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Touches the home slot of every key, and the next one (which may sit on the next cache line), so that their
    /// cache misses overlap before the real lookups.
    fn prefetch(&self, keys: &[KeyJob]) {
        let mask = self.mask();
        let mut acc = 0u64;
        for job in keys {
            let home = job.key as usize & mask;
            acc ^= self.slots[home].key ^ self.slots[(home + 1) & mask].key;
        }
        std::hint::black_box(acc);
    }

    /// Records `t.account` under `key` and adds the other accounts seen within `t.window` to `out`, newest first.
    fn touch(&mut self, key: u64, t: &Touch, out: &mut Found) {
        match self.probe(key) {
            Ok(i) => self.update(i, t, out),
            Err(_) => self.insert_new(key, t),
        }
    }

    fn insert_new(&mut self, key: u64, t: &Touch) {
        if self.len >= t.max_values {
            self.evict_near(key as usize & self.mask(), t.now, t.max_window);
        }
        while self.len >= t.max_values {
            self.evict_one(t.now, t.max_window);
        }
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.resize(self.slots.len() * 2);
        }
        let i = match self.probe(key) {
            Ok(i) | Err(i) => i,
        };
        self.slots[i] = Slot {
            key,
            first: Entry {
                account: t.account,
                seen: t.now,
            },
            spill: 0,
        };
        self.len += 1;
        self.entries += 1;
    }

    fn update(&mut self, i: usize, t: &Touch, out: &mut Found) {
        let mut slot = self.slots[i];
        let me = Entry {
            account: t.account,
            seen: t.now,
        };
        let first = slot.first;
        if t.now.saturating_sub(first.seen) > t.max_window {
            // The newest entry has expired, so all have: start the list afresh.
            self.entries -= self.free_spill(slot.spill);
            self.slots[i].first = me;
            self.slots[i].spill = 0;
            return;
        }
        // Candidates, newest first: the list is ordered by recency, so this stops after `out.limit` or at the
        // first entry outside the window.
        if first.account != t.account && t.now.saturating_sub(first.seen) <= t.window {
            out.items.push(first);
        }
        if slot.spill == 0 {
            if first.account == t.account {
                self.slots[i].first.seen = first.seen.max(t.now);
            } else if t.per_value > 1 {
                slot.spill = self.alloc_spill();
                let v = &mut self.spills[slot.spill as usize];
                let before = v.capacity();
                v.push_back(first);
                self.spill_cap += v.capacity() - before;
                slot.first = me;
                self.entries += 1;
                self.slots[i] = slot;
            } else {
                self.slots[i].first = me;
            }
            return;
        }
        let v = &mut self.spills[slot.spill as usize];
        for e in v.iter().rev() {
            if out.items.len() >= out.limit || t.now.saturating_sub(e.seen) > t.window {
                break;
            }
            if e.account != t.account {
                out.items.push(*e);
            }
        }
        // Expired entries are at the front.
        let mut removed = 0;
        while v
            .front()
            .is_some_and(|e| t.now.saturating_sub(e.seen) > t.max_window)
        {
            v.pop_front();
            removed += 1;
        }
        if first.account == t.account {
            slot.first.seen = first.seen.max(t.now);
        } else {
            // The account moves to the front (`first`), the old first becomes the newest of the rest.
            match v.iter().position(|e| e.account == t.account) {
                Some(j) => {
                    v.remove(j);
                    removed += 1;
                }
                None => {
                    if 1 + v.len() >= t.per_value {
                        v.pop_front();
                        removed += 1;
                    }
                }
            }
            let before = v.capacity();
            v.push_back(first);
            self.spill_cap += v.capacity() - before;
            slot.first = me;
            self.entries += 1;
        }
        self.entries -= removed;
        if v.is_empty() {
            self.free_spill(slot.spill);
            slot.spill = 0;
        }
        self.slots[i] = slot;
    }

    fn alloc_spill(&mut self) -> u32 {
        match self.free_spills.pop() {
            Some(s) => s,
            None => {
                self.spills.push(VecDeque::new());
                (self.spills.len() - 1) as u32
            }
        }
    }

    /// Returns spill list `s` (if any) to the free list; returns how many entries it held.
    fn free_spill(&mut self, s: u32) -> usize {
        if s == 0 {
            return 0;
        }
        let v = &mut self.spills[s as usize];
        let n = v.len();
        v.clear();
        if v.capacity() > SPILL_KEEP_CAP {
            self.spill_cap -= v.capacity();
            *v = VecDeque::new();
        }
        self.free_spills.push(s);
        n
    }

    /// Frees the slot at `i` (its entries with it) and shifts the following run back over the hole.
    fn remove_at(&mut self, i: usize) {
        let n = 1 + self.free_spill(self.slots[i].spill);
        self.slots[i] = Slot::default();
        self.len -= 1;
        self.entries -= n;
        let mask = self.mask();
        let mut hole = i;
        let mut j = (i + 1) & mask;
        loop {
            let k = self.slots[j].key;
            if k == 0 {
                break;
            }
            let home = k as usize & mask;
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.slots.swap(hole, j);
                hole = j;
            }
            j = (j + 1) & mask;
        }
    }

    /// Evicts the least recently used of the occupied slots among the `NEAR_SAMPLE` from `home` (the insertion
    /// point, whose cache lines the probe has just loaded): sampled LRU whose sample costs little memory traffic.
    /// Nothing is evicted when they are all empty.
    fn evict_near(&mut self, home: usize, now: Nanos, max_window: Nanos) {
        let mask = self.mask();
        let mut best: Option<(usize, Nanos)> = None;
        for k in 0..NEAR_SAMPLE {
            let i = (home + k) & mask;
            let s = &self.slots[i];
            if s.key != 0 && best.is_none_or(|(_, newest)| s.first.seen < newest) {
                best = Some((i, s.first.seen));
            }
        }
        if let Some((at, newest)) = best {
            self.count_eviction(now, newest, max_window);
            self.remove_at(at);
        }
    }

    fn count_eviction(&mut self, now: Nanos, newest: Nanos, max_window: Nanos) {
        if now.saturating_sub(newest) > max_window {
            self.expired_total += 1;
        } else {
            self.evicted_total += 1;
        }
    }

    /// Evicts the least recently used of a few sampled slots.
    fn evict_one(&mut self, now: Nanos, max_window: Nanos) {
        if self.len == 0 {
            return;
        }
        let mask = self.mask();
        let mut i = self.hand & mask;
        let mut best: Option<(usize, Nanos)> = None;
        let mut sampled = 0;
        for _ in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.key != 0 {
                if best.is_none_or(|(_, newest)| s.first.seen < newest) {
                    best = Some((i, s.first.seen));
                }
                sampled += 1;
                if sampled == EVICT_SAMPLE {
                    break;
                }
            }
            i = (i + 1) & mask;
        }
        self.hand = (i + 1) & mask;
        if let Some((at, newest)) = best {
            self.count_eviction(now, newest, max_window);
            self.remove_at(at);
        }
    }

    /// Drops a few slots whose entries have all expired.
    fn sweep_step(&mut self, now: Nanos, max_window: Nanos) {
        for _ in 0..SWEEP_STEP {
            let i = self.sweep & self.mask();
            let s = &self.slots[i];
            if s.key != 0 && now.saturating_sub(s.first.seen) > max_window {
                self.remove_at(i);
                self.expired_total += 1;
            } else {
                self.sweep = (i + 1) & self.mask();
            }
        }
    }

    /// Drops every expired entry and slot, then shrinks a sparse table and releases idle spill lists.
    fn sweep_full(&mut self, now: Nanos, max_window: Nanos) {
        let mut i = 0;
        while i < self.slots.len() {
            let s = self.slots[i];
            if s.key == 0 {
                i += 1;
                continue;
            }
            if now.saturating_sub(s.first.seen) > max_window {
                self.remove_at(i);
                self.expired_total += 1;
                continue;
            }
            if s.spill != 0 {
                let v = &mut self.spills[s.spill as usize];
                let before = v.len();
                v.retain(|e| now.saturating_sub(e.seen) <= max_window);
                self.entries -= before - v.len();
                if v.is_empty() {
                    self.free_spill(s.spill);
                    self.slots[i].spill = 0;
                }
            }
            i += 1;
        }
        if self.slots.len() > MIN_TABLE && self.len * 8 < self.slots.len() {
            self.resize(MIN_TABLE.max((self.len * 2).next_power_of_two()));
        }
        for &s in &self.free_spills {
            let v = &mut self.spills[s as usize];
            self.spill_cap -= v.capacity();
            *v = VecDeque::new();
        }
    }

    fn resize(&mut self, new_len: usize) {
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); new_len]);
        let mask = new_len - 1;
        for s in old {
            if s.key != 0 {
                let mut i = s.key as usize & mask;
                while self.slots[i].key != 0 {
                    i = (i + 1) & mask;
                }
                self.slots[i] = s;
            }
        }
        self.hand &= mask;
        self.sweep &= mask;
    }

    fn bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Slot>()
            + self.spill_cap * size_of::<Entry>()
            + self.spills.capacity() * size_of::<VecDeque<Entry>>()
            + self.free_spills.capacity() * size_of::<u32>()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Union-find

#[derive(Clone, Copy, Debug)]
struct Node {
    account: u64,
    /// Cluster id (roots only; 0 = none yet).
    id: u64,
    formed_at: Nanos,
    parent: u32,
    size: u32,
    rules: u32,
    strength: u8,
}

/// One union-find forest: nodes by account, and cluster ids to some node of their component.
#[derive(Debug, Default)]
struct Forest {
    nodes: Vec<Node>,
    by_account: FastMap<u64, u32>,
    by_id: FastMap<u64, u32>,
    /// Roots that took an id another component of this forest already holds (resolved at rotation).
    dups: Vec<u32>,
    unions: usize,
}

/// The older of two clusters' (id, formed_at, size); id 0 means "no cluster yet".
fn older(a: (u64, Nanos, u32), b: (u64, Nanos, u32)) -> (u64, Nanos) {
    let pick = match (a.0, b.0) {
        (0, _) => b,
        (_, 0) => a,
        _ => {
            let ka = (a.1, std::cmp::Reverse(a.2), a.0);
            let kb = (b.1, std::cmp::Reverse(b.2), b.0);
            if ka <= kb {
                a
            } else {
                b
            }
        }
    };
    (pick.0, pick.1)
}

impl Forest {
    fn get(&self, account: u64) -> Option<u32> {
        self.by_account.get(&account).copied()
    }

    fn node(&mut self, account: u64) -> u32 {
        let next = self.nodes.len() as u32;
        let i = *self.by_account.entry(account).or_insert(next);
        if i == next {
            self.nodes.push(Node {
                account,
                id: 0,
                formed_at: 0,
                parent: next,
                size: 1,
                rules: 0,
                strength: 0,
            });
        }
        i
    }

    fn find(&mut self, mut i: u32) -> u32 {
        loop {
            let p = self.nodes[i as usize].parent;
            if p == i {
                return i;
            }
            let gp = self.nodes[p as usize].parent;
            self.nodes[i as usize].parent = gp;
            i = gp;
        }
    }

    fn find_ro(&self, mut i: u32) -> u32 {
        loop {
            let p = self.nodes[i as usize].parent;
            if p == i {
                return i;
            }
            i = p;
        }
    }

    /// Joins the components of `a` and `b`; returns (root, pre-merge root of a, pre-merge root of b).
    fn join(&mut self, a: u64, b: u64) -> (u32, Node, Node) {
        let ia = self.node(a);
        let ib = self.node(b);
        let ra = self.find(ia);
        let rb = self.find(ib);
        let (na, nb) = (self.nodes[ra as usize], self.nodes[rb as usize]);
        if ra == rb {
            return (ra, na, na);
        }
        let (w, l) = if (na.size, std::cmp::Reverse(ra)) >= (nb.size, std::cmp::Reverse(rb)) {
            (ra, rb)
        } else {
            (rb, ra)
        };
        self.nodes[l as usize].parent = w;
        self.nodes[w as usize].size = na.size + nb.size;
        self.unions += 1;
        (w, na, nb)
    }

    fn set_meta(
        &mut self,
        w: u32,
        na: &Node,
        nb: &Node,
        strength: u8,
        rules: u32,
        id: (u64, Nanos),
    ) {
        let n = &mut self.nodes[w as usize];
        n.id = id.0;
        n.formed_at = id.1;
        n.strength = na.strength.max(nb.strength).max(strength);
        n.rules = na.rules | nb.rules | rules;
    }

    fn fresh_id(&self, seed: u64) -> u64 {
        let mut id = fmix(ID_SALT ^ seed);
        while id == 0 || self.by_id.contains_key(&id) {
            id = fmix(id ^ K1);
        }
        id
    }

    /// Links in the forest of record (`live`): ids are unique here. Returns the cluster's (id, formed_at); an id
    /// that ends in the merge is pushed to `merges` with the id that absorbed it.
    fn link_live(
        &mut self,
        (a, b): (u64, u64),
        strength: u8,
        rules: u32,
        now: Nanos,
        merges: &mut Vec<(u64, u64)>,
    ) -> (u64, Nanos) {
        let (w, na, nb) = self.join(a, b);
        let mut chosen = older(
            (na.id, na.formed_at, na.size),
            (nb.id, nb.formed_at, nb.size),
        );
        if chosen.0 == 0 {
            let seed = combine(combine(a.min(b), a.max(b)), now);
            chosen = (self.fresh_id(seed), now);
            self.by_id.insert(chosen.0, w);
        }
        for old in [na.id, nb.id] {
            if old != 0 && old != chosen.0 {
                self.by_id.remove(&old);
                merges.push((old, chosen.0));
            }
        }
        self.set_meta(w, &na, &nb, strength, rules, chosen);
        chosen
    }

    /// Links in `cur`, adopting the cluster's id from `live`; ids may repeat here (see `dups`).
    fn link_adopt(&mut self, a: u64, b: u64, strength: u8, rules: u32, id: (u64, Nanos)) {
        let (w, na, nb) = self.join(a, b);
        for old in [na.id, nb.id] {
            if old != 0 && old != id.0 {
                if let Some(n) = self.by_id.get(&old).copied() {
                    if self.find(n) == w {
                        self.by_id.remove(&old);
                    }
                }
            }
        }
        match self.by_id.get(&id.0).copied() {
            None => {
                self.by_id.insert(id.0, w);
            }
            Some(n) => {
                if self.find(n) != w {
                    self.dups.push(w);
                }
            }
        }
        self.set_meta(w, &na, &nb, strength, rules, id);
    }

    /// Makes ids unique again after this forest became `live`: the larger component keeps a shared id.
    fn resolve_dups(&mut self, now: Nanos) {
        let dups = std::mem::take(&mut self.dups);
        for &d in &dups {
            let r = self.find(d);
            let id = self.nodes[r as usize].id;
            let Some(n) = self.by_id.get(&id).copied() else {
                self.by_id.insert(id, r);
                continue;
            };
            let m = self.find(n);
            if m == r {
                continue;
            }
            let (keep, give) = if self.nodes[r as usize].size > self.nodes[m as usize].size {
                (r, m)
            } else {
                (m, r)
            };
            self.by_id.insert(id, keep);
            let fresh = self.fresh_id(combine(combine(id, self.nodes[give as usize].account), now));
            let g = &mut self.nodes[give as usize];
            g.id = fresh;
            g.formed_at = now;
            self.by_id.insert(fresh, give);
        }
        self.dups = dups;
        self.dups.clear();
    }

    fn clear(&mut self, keep: usize) {
        self.nodes.clear();
        self.by_account.clear();
        self.by_id.clear();
        self.dups.clear();
        self.unions = 0;
        let keep = keep.max(FOREST_KEEP);
        if self.nodes.capacity() > 2 * keep {
            self.nodes.shrink_to(keep);
            self.by_account.shrink_to(keep);
            self.by_id.shrink_to(keep / 2);
        }
    }

    fn view(&self, root: u32) -> Option<ClusterView> {
        let n = &self.nodes[root as usize];
        Some(ClusterView {
            id: n.id,
            members: n.size,
            strength: Strength::from_level(n.strength)?,
            rules: n.rules,
            formed_at: n.formed_at,
        })
        .filter(|v| v.members >= 2 && v.id != 0)
    }

    fn root_of_id(&self, id: u64) -> Option<u32> {
        let r = self.find_ro(*self.by_id.get(&id)?);
        (self.nodes[r as usize].id == id).then_some(r)
    }

    fn bytes(&self) -> usize {
        self.nodes.capacity() * size_of::<Node>()
            + map_bytes(&self.by_account)
            + map_bytes(&self.by_id)
            + self.dups.capacity() * size_of::<u32>()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Linker

/// The other accounts found under one key: the most recent first, at most `limit`.
#[derive(Debug, Default)]
struct Found {
    items: Vec<Entry>,
    limit: usize,
}

/// Candidates of one request, merged by account through a small stamped hash table (no clearing per request).
/// The `Default` value is an empty placeholder: build a usable one with [`Candidates::new`].
#[derive(Debug, Default)]
struct Candidates {
    list: Vec<Candidate>,
    /// (account, position in `list`, stamp); a slot is live when its stamp is the current one.
    table: Vec<(u64, u32, u32)>,
    stamp: u32,
}

impl Candidates {
    fn new() -> Self {
        Candidates {
            list: Vec::with_capacity(MAX_CANDIDATES),
            table: vec![(0, 0, 0); 2 * MAX_CANDIDATES],
            stamp: 0,
        }
    }

    fn reset(&mut self) {
        self.list.clear();
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.table.iter_mut().for_each(|s| s.2 = 0);
            self.stamp = 1;
        }
    }

    /// Adds a link to `e.account` found under `job`, merging with earlier finds; beyond `MAX_CANDIDATES` distinct
    /// accounts new ones are dropped.
    fn add(&mut self, e: &Entry, job: &KeyJob) {
        let mask = self.table.len() - 1;
        let mut i = (e.account.wrapping_mul(K1) >> 32) as usize & mask;
        loop {
            let (account, at, stamp) = self.table[i];
            if stamp != self.stamp {
                if self.list.len() < MAX_CANDIDATES {
                    self.table[i] = (e.account, self.list.len() as u32, self.stamp);
                    let mut c = Candidate {
                        account: e.account,
                        seen: e.seen,
                        strength: job.strength,
                        rules: job.bit,
                        bands: 0,
                        scalar: false,
                    };
                    c.mark(job);
                    self.list.push(c);
                }
                return;
            }
            if account == e.account {
                let c = &mut self.list[at as usize];
                c.seen = c.seen.max(e.seen);
                c.strength = c.strength.max(job.strength);
                c.rules |= job.bit;
                c.mark(job);
                return;
            }
            i = (i + 1) & mask;
        }
    }
}

/// One index key to look up for the current request.
#[derive(Clone, Copy, Debug)]
struct KeyJob {
    key: u64,
    strength: u8,
    window: Nanos,
    bit: u32,
    signal_only: bool,
    /// Position of the prompt band in the key ([`NO_BAND`]: the rule has a client-stack or network attribute).
    band: u8,
}

/// [`KeyJob::band`] of a rule without prompt.
const NO_BAND: u8 = u8::MAX;

/// Another account the current request may link to.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    account: u64,
    seen: Nanos,
    strength: u8,
    rules: u32,
    /// Prompt bands (bit per position) it was found under by prompt-only rules.
    bands: u64,
    /// Found under a rule with a client-stack or network attribute.
    scalar: bool,
}

impl Candidate {
    fn mark(&mut self, job: &KeyJob) {
        if job.band == NO_BAND {
            self.scalar = true;
        } else {
            self.bands |= 1u64 << (job.band & 63);
        }
    }

    /// Enough evidence to link: a rule with a client-stack or network attribute, or `min_bands` distinct prompt bands.
    fn links(&self, min_bands: u32) -> bool {
        self.scalar || self.bands.count_ones() >= min_bands
    }
}

/// Strongest first, then most recent, then by account (a total order, so linking is deterministic).
fn candidate_order(x: &Candidate, y: &Candidate) -> std::cmp::Ordering {
    y.strength
        .cmp(&x.strength)
        .then(y.seen.cmp(&x.seen))
        .then(x.account.cmp(&y.account))
}

/// Links accounts that share fingerprints into clusters; see the module docs for the design.
#[derive(Debug)]
pub struct Linker {
    policy: LinkPolicy,
    compiled: Compiled,
    index: Index,
    live: Forest,
    cur: Forest,
    gen_start: Option<Nanos>,
    last_now: Nanos,
    links_dropped_total: u64,
    rotations_total: u64,
    keys: Vec<KeyJob>,
    found: Found,
    cands: Candidates,
    band_flags: Vec<u8>,
    changes: LinkChanges,
    /// Rules under which the last [`Linker::observe`] found another account within the window.
    shared: u32,
    /// The last [`RECENT_LINKS`] links made, a ring (`recent_next` is the slot written next once it is full).
    recent: Vec<LinkEdge>,
    recent_next: usize,
}

/// What linking changed since it was last drained ([`Linker::changes`]): for whoever keeps state per cluster
/// id and wants it to follow the clusters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LinkChanges {
    /// Clusters that ended in a merge, in order: `(absorbed, into)`. The absorbed id is gone and its members are in
    /// the cluster `into` (a chain `a → b`, `b → c` arrives in that order).
    pub merges: Vec<(u64, u64)>,
    /// Accounts that were in no cluster and now are: in the requesting account's cluster, as every link of one
    /// [`Linker::observe`] involves that account.
    pub joined: Vec<u64>,
}

impl LinkChanges {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.merges.is_empty() && self.joined.is_empty()
    }

    /// Forget everything (keeps the capacity).
    pub fn clear(&mut self) {
        self.merges.clear();
        self.joined.clear();
    }
}

impl Linker {
    /// A linker with no state yet.
    pub fn new(policy: LinkPolicy) -> Self {
        Linker {
            compiled: Compiled::new(&policy),
            policy,
            index: Index::new(),
            live: Forest::default(),
            cur: Forest::default(),
            gen_start: None,
            last_now: 0,
            links_dropped_total: 0,
            rotations_total: 0,
            keys: Vec::new(),
            found: Found::default(),
            cands: Candidates::new(),
            band_flags: Vec::new(),
            changes: LinkChanges::default(),
            shared: 0,
            recent: Vec::new(),
            recent_next: 0,
        }
    }

    /// Forget every link, index entry and cluster, as a new linker with the same policy; the running totals
    /// (links dropped, rotations) are kept, so counters exported from them never go back.
    pub fn forget(&mut self) {
        let mut fresh = Linker::new(self.policy.clone());
        fresh.links_dropped_total = self.links_dropped_total;
        fresh.rotations_total = self.rotations_total;
        *self = fresh;
    }

    /// The policy in force.
    pub fn policy(&self) -> &LinkPolicy {
        &self.policy
    }

    /// Hot reload: applies a new policy and keeps the index and the clusters. Keys depend on a rule's kinds only,
    /// so a reordered or retuned rule keeps its index entries; a lowered `max_values` evicts at once; a lowered
    /// `max_linked_accounts` refuses new links until rotation brings the count under it.
    pub fn set_policy(&mut self, policy: LinkPolicy) {
        self.compiled = Compiled::new(&policy);
        self.policy = policy;
        while self.index.len > self.compiled.max_values {
            self.index
                .evict_one(self.last_now, self.compiled.max_window);
        }
    }

    /// Records one request of `account` and links it to other accounts per the rules; returns the account's
    /// cluster (`None` when it is linked to no one).
    pub fn observe(
        &mut self,
        account: u64,
        attrs: &Attributes<'_>,
        now: Nanos,
    ) -> Option<ClusterView> {
        self.rotate_if_due(now);
        self.index.sweep_step(now, self.compiled.max_window);
        self.collect_keys(attrs);
        self.shared = 0;
        if self.keys.is_empty() {
            return self.cluster_of(account);
        }
        self.index.prefetch(&self.keys);

        let keys = std::mem::take(&mut self.keys);
        let mut found = std::mem::take(&mut self.found);
        let mut cands = std::mem::take(&mut self.cands);
        cands.reset();
        let max_links = self.compiled.max_links;
        for job in &keys {
            found.items.clear();
            found.limit = max_links;
            let touch = Touch {
                account,
                now,
                window: job.window,
                max_window: self.compiled.max_window,
                per_value: self.compiled.per_value,
                max_values: self.compiled.max_values,
            };
            self.index.touch(job.key, &touch, &mut found);
            if !found.items.is_empty() {
                self.shared |= job.bit;
            }
            if job.signal_only {
                continue;
            }
            for e in &found.items {
                cands.add(e, job);
            }
        }
        if !cands.list.is_empty() {
            // Strongest first. A candidate already in the account's component (this generation) only reinforces
            // it; the others are merged in, at most `max_links` of them.
            cands.list.sort_unstable_by(candidate_order);
            let mut merges = 0;
            let mut root = self.cur.get(account).map(|i| self.cur.find(i));
            let min_bands = self.compiled.min_bands;
            for c in cands.list.iter().filter(|c| c.links(min_bands)) {
                if self.reinforce(root, c) {
                    continue;
                }
                if merges < max_links {
                    self.link(account, c, now);
                    merges += 1;
                    root = self.cur.get(account).map(|i| self.cur.find(i));
                }
            }
        }
        self.keys = keys;
        self.found = found;
        self.cands = cands;
        self.cluster_of(account)
    }

    /// The rules (bit `i` for [`LinkPolicy::rules`]`[i]`) under which the last [`Linker::observe`] found another
    /// account within the rule's window, whether or not it linked them (signal-only rules never link).
    pub fn shared_rules(&self) -> u32 {
        self.shared
    }

    /// What linking changed since [`Linker::clear_changes`] (merges of clusters, accounts that joined one). A part
    /// that splits off a cluster at rotation (a fresh id) is not reported: it starts with fresh state. Changes not
    /// cleared are dropped at the next rotation, so they stay bounded.
    pub fn changes(&self) -> &LinkChanges {
        &self.changes
    }

    /// Forget the changes (keeps the buffers).
    pub fn clear_changes(&mut self) {
        self.changes.clear();
    }

    /// The cluster `account` belongs to now, if any.
    pub fn cluster_of(&self, account: u64) -> Option<ClusterView> {
        let i = self.live.get(account)?;
        self.live.view(self.live.find_ro(i))
    }

    /// The cluster with this id, if it still exists.
    pub fn cluster(&self, id: u64) -> Option<ClusterView> {
        self.live.view(self.live.root_of_id(id)?)
    }

    /// Up to `limit` accounts of the cluster `id` (in the order they joined this generation's records); O(accounts),
    /// for the admin API.
    pub fn members(&self, id: u64, limit: usize) -> Vec<u64> {
        let Some(root) = self.live.root_of_id(id) else {
            return Vec::new();
        };
        (0..self.live.nodes.len() as u32)
            .filter(|&i| self.live.find_ro(i) == root)
            .map(|i| self.live.nodes[i as usize].account)
            .take(limit)
            .collect()
    }

    /// Up to `limit` clusters, largest first (then oldest, then by id); O(clusters), for the admin API.
    pub fn clusters(&self, limit: usize) -> Vec<ClusterView> {
        let mut all: Vec<ClusterView> = self
            .live
            .by_id
            .keys()
            .filter_map(|&id| self.cluster(id))
            .collect();
        all.sort_unstable_by(|a, b| {
            b.members
                .cmp(&a.members)
                .then(a.formed_at.cmp(&b.formed_at))
                .then(a.id.cmp(&b.id))
        });
        all.truncate(limit);
        all
    }

    /// The recent links (at most `limit`, newest first, one per pair of accounts) between accounts that are both in
    /// cluster `id` now; for drawing the cluster. Only the last [`RECENT_LINKS`] links made are remembered, and
    /// those older than two generations are left out (they no longer hold anything together). O(remembered links),
    /// for the admin API.
    pub fn cluster_links(&self, id: u64, limit: usize) -> Vec<LinkEdge> {
        let Some(root) = self.live.root_of_id(id) else {
            return Vec::new();
        };
        let oldest = self.last_now.saturating_sub(2 * self.compiled.generation);
        let in_cluster = |a: u64| {
            self.live
                .get(a)
                .is_some_and(|i| self.live.find_ro(i) == root)
        };
        let n = self.recent.len();
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        // Newest first: the ring's slot before `recent_next` was written last.
        for k in 1..=n {
            if out.len() >= limit {
                break;
            }
            let e = self.recent[(self.recent_next + n - k) % n];
            if e.at < oldest {
                continue;
            }
            let pair = (e.from.min(e.to), e.from.max(e.to));
            if seen.contains(&pair) || !in_cluster(e.from) || !in_cluster(e.to) {
                continue;
            }
            seen.insert(pair);
            out.push(e);
        }
        out
    }

    /// Rotates generations when due and drops every expired index entry (O(values)). `observe` rotates and sweeps
    /// incrementally by itself, so calling this is optional: it drains the index when traffic stops.
    pub fn maintain(&mut self, now: Nanos) {
        self.rotate_if_due(now);
        self.index.sweep_full(now, self.compiled.max_window);
    }

    /// Counters and sizes for metrics.
    pub fn stats(&self) -> LinkStats {
        let scratch = self.keys.capacity() * size_of::<KeyJob>()
            + self.found.items.capacity() * size_of::<Entry>()
            + self.cands.list.capacity() * size_of::<Candidate>()
            + self.cands.table.capacity() * size_of::<(u64, u32, u32)>()
            + self.band_flags.capacity()
            + self.compiled.rules.capacity() * size_of::<CompiledRule>()
            + map_bytes(&self.compiled.flags)
            + self.recent.capacity() * size_of::<LinkEdge>();
        LinkStats {
            values: self.index.len,
            entries: self.index.entries,
            accounts: self.live.nodes.len(),
            clusters: self.live.nodes.len() - self.live.unions,
            evicted_total: self.index.evicted_total,
            expired_total: self.index.expired_total,
            links_dropped_total: self.links_dropped_total,
            rotations_total: self.rotations_total,
            approx_bytes: self.index.bytes() + self.live.bytes() + self.cur.bytes() + scratch,
        }
    }

    fn rotate_if_due(&mut self, now: Nanos) {
        self.last_now = self.last_now.max(now);
        let generation = self.compiled.generation;
        let Some(start) = self.gen_start else {
            self.gen_start = Some(now);
            return;
        };
        if now < start || now - start < generation {
            return;
        }
        let due = (now - start) / generation;
        self.changes.clear();
        for _ in 0..due.min(2) {
            std::mem::swap(&mut self.live, &mut self.cur);
            self.cur.clear(self.live.nodes.len());
            self.live.resolve_dups(now);
            self.rotations_total += 1;
        }
        self.gen_start = Some(start + due * generation);
    }

    /// Fills `self.keys` with the index keys of the rules that apply to `attrs`.
    fn collect_keys(&mut self, attrs: &Attributes<'_>) {
        self.keys.clear();
        let c = &self.compiled;
        let mut values = [None; 7];
        let mut flags = [0u8; 7];
        for kind in AttrKind::ALL {
            if let Some(v) = attrs.scalar(kind) {
                values[kind as usize] = Some(v);
                flags[kind as usize] = c.flag(kind, v);
            }
        }
        let bands = &attrs.prompt[..attrs.prompt.len().min(MAX_PROMPT_KEYS)];
        self.band_flags.clear();
        if c.uses_prompt && !c.flags.is_empty() {
            self.band_flags
                .extend(bands.iter().map(|&b| c.flag(AttrKind::Prompt, b)));
        }
        'rules: for rule in &c.rules {
            let mut h = rule.seed;
            let mut downs = 0u8;
            for &kind in &rule.scalars[..rule.n_scalars] {
                let Some(v) = values[kind as usize] else {
                    continue 'rules;
                };
                let f = flags[kind as usize];
                if f & IGNORED != 0 {
                    continue 'rules;
                }
                downs += u8::from(f & DOWN != 0);
                h = combine(h, v);
            }
            if !rule.prompt {
                let strength = rule.strength.saturating_sub(downs);
                if strength > 0 {
                    self.keys.push(KeyJob {
                        key: fmix(h).max(1),
                        strength,
                        window: rule.window,
                        bit: rule.bit,
                        signal_only: rule.signal_only,
                        band: NO_BAND,
                    });
                }
                continue;
            }
            for (i, &band) in bands.iter().enumerate() {
                let f = self.band_flags.get(i).copied().unwrap_or(0);
                // 0: no key (a prompt region of stock phrases only).
                if band == 0 || f & IGNORED != 0 {
                    continue;
                }
                let strength = rule
                    .strength
                    .saturating_sub(downs + u8::from(f & DOWN != 0));
                if strength > 0 {
                    self.keys.push(KeyJob {
                        key: combine(h, band).max(1),
                        strength,
                        window: rule.window,
                        bit: rule.bit,
                        signal_only: rule.signal_only,
                        band: if rule.prompt_only { i as u8 } else { NO_BAND },
                    });
                }
            }
        }
    }

    /// When `c` is already in the component `root` of `cur` (so in the same component of `live` too), adds the
    /// link's strength and rule to both components' roots and returns true: a union would change nothing else.
    fn reinforce(&mut self, root: Option<u32>, c: &Candidate) -> bool {
        let (Some(root), Some(ic)) = (root, self.cur.get(c.account)) else {
            return false;
        };
        if self.cur.find(ic) != root {
            return false;
        }
        let account = self.cur.nodes[root as usize].account;
        let live_root = self.live.get(account).map(|i| self.live.find(i));
        for (forest, r) in [(&mut self.cur, Some(root)), (&mut self.live, live_root)] {
            if let Some(r) = r {
                let n = &mut forest.nodes[r as usize];
                n.strength = n.strength.max(c.strength);
                n.rules |= c.rules;
            }
        }
        true
    }

    fn link(&mut self, account: u64, c: &Candidate, now: Nanos) {
        if account == c.account {
            return;
        }
        let need = usize::from(self.live.get(account).is_none())
            + usize::from(self.live.get(c.account).is_none());
        if need > 0 && self.live.nodes.len() + need > self.compiled.max_linked {
            self.links_dropped_total += 1;
            return;
        }
        for a in [account, c.account] {
            if self.live.get(a).is_none() {
                self.changes.joined.push(a);
            }
        }
        let id = self.live.link_live(
            (account, c.account),
            c.strength,
            c.rules,
            now,
            &mut self.changes.merges,
        );
        self.cur
            .link_adopt(account, c.account, c.strength, c.rules, id);
        let edge = LinkEdge {
            from: account,
            to: c.account,
            rules: c.rules,
            strength: Strength::from_level(c.strength).unwrap_or(Strength::Weak),
            at: now,
        };
        if self.recent.len() < RECENT_LINKS {
            self.recent.push(edge);
        } else {
            self.recent[self.recent_next] = edge;
            self.recent_next = (self.recent_next + 1) % RECENT_LINKS;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::cmp::Reverse;
    use std::collections::{BTreeMap, BinaryHeap};

    const SEC: Nanos = 1_000_000_000;
    const MIN: Nanos = 60 * SEC;
    const GEN: Nanos = 10 * MIN;
    /// Band keys per prompt signature in these tests.
    const BANDS: usize = 4;
    /// An arbitrary epoch: the linker must not assume time starts at 0.
    const EPOCH: Nanos = 123_456 * SEC;

    const HYDRA_JA4: u64 = 0x4a34_0001;
    const HYDRA_HTTP: u64 = 0x4854_0001;
    const HYDRA_ASN: u64 = 0x4153_0001;
    const NAT_JA4: u64 = 0x4a34_0002;
    const NAT_HTTP: u64 = 0x4854_0002;
    const NAT_PREFIX: u64 = 0x5052_0002;
    const NAT_ASN: u64 = 0x4153_0002;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Kind {
        /// One of the hydra's accounts: the hydra's JA4, 8 IPs in 2 prefixes, prompt template `template`.
        Hydra { template: usize },
        /// Behind the corporate NAT: one SDK JA4, one prefix, its own prompts.
        Nat,
        /// An ordinary client: its own stack and network, its own prompts.
        Ordinary { ja4: u64, prefix: u64 },
    }

    struct Actor {
        account: u64,
        kind: Kind,
        gap: (Nanos, Nanos),
        active: bool,
    }

    /// A seeded traffic simulation on virtual time.
    struct Sim {
        linker: Linker,
        rng: StdRng,
        now: Nanos,
        actors: Vec<Actor>,
        queue: BinaryHeap<Reverse<(Nanos, usize)>>,
        templates: Vec<[u64; BANDS]>,
        hydra_prefixes: [u64; 2],
        common_ja4: Vec<u64>,
        bands: Vec<u64>,
        requests: u64,
    }

    impl Sim {
        fn new(policy: LinkPolicy, seed: u64) -> Self {
            let mut rng = StdRng::seed_from_u64(seed);
            let templates = (0..6).map(|_| rng.gen()).collect();
            let hydra_prefixes = [rng.gen(), rng.gen()];
            // 20 common client stacks; the hydra's SDK is one of them.
            let mut common_ja4: Vec<u64> = (0..19).map(|_| rng.gen()).collect();
            common_ja4.push(HYDRA_JA4);
            Sim {
                linker: Linker::new(policy),
                rng,
                now: EPOCH,
                actors: Vec::new(),
                queue: BinaryHeap::new(),
                templates,
                hydra_prefixes,
                common_ja4,
                bands: Vec::new(),
                requests: 0,
            }
        }

        fn add(
            &mut self,
            n: usize,
            gap: (Nanos, Nanos),
            kind: impl Fn(usize, &mut StdRng) -> Kind,
        ) -> Vec<u64> {
            (0..n)
                .map(|i| {
                    let account = self.rng.gen();
                    let kind = kind(i, &mut self.rng);
                    let first = self.now + self.rng.gen_range(0..gap.1);
                    self.queue.push(Reverse((first, self.actors.len())));
                    self.actors.push(Actor {
                        account,
                        kind,
                        gap,
                        active: true,
                    });
                    account
                })
                .collect()
        }

        fn add_hydra(&mut self, n: usize) -> Vec<u64> {
            self.add(n, (30 * SEC, 90 * SEC), |i, _| Kind::Hydra {
                template: i % 6,
            })
        }

        fn add_nat(&mut self, n: usize) -> Vec<u64> {
            self.add(n, (30 * SEC, 90 * SEC), |_, _| Kind::Nat)
        }

        fn add_ordinary(&mut self, n: usize) -> Vec<u64> {
            let common = self.common_ja4.clone();
            self.add(n, (10 * SEC, 120 * SEC), move |_, rng| Kind::Ordinary {
                ja4: common[rng.gen_range(0..common.len())],
                prefix: rng.gen(),
            })
        }

        fn stop_all(&mut self) {
            for a in &mut self.actors {
                a.active = false;
            }
        }

        fn run_until(&mut self, t: Nanos) {
            while let Some(&Reverse((at, a))) = self.queue.peek() {
                if at > t {
                    break;
                }
                self.queue.pop();
                if !self.actors[a].active {
                    continue;
                }
                self.now = at;
                self.send(a);
                let (lo, hi) = self.actors[a].gap;
                let next = at + self.rng.gen_range(lo..=hi);
                self.queue.push(Reverse((next, a)));
            }
            self.now = self.now.max(t);
        }

        fn send(&mut self, a: usize) {
            let Actor { account, kind, .. } = self.actors[a];
            self.bands.clear();
            let (ja4, http, prefix, asn) = match kind {
                Kind::Hydra { template } => {
                    // A near-duplicate of the template: half the time one band differs.
                    self.bands.extend_from_slice(&self.templates[template]);
                    if self.rng.gen_bool(0.5) {
                        let i = self.rng.gen_range(0..BANDS);
                        self.bands[i] = self.rng.gen();
                    }
                    let ip = self.rng.gen_range(0..8);
                    (
                        HYDRA_JA4,
                        HYDRA_HTTP,
                        self.hydra_prefixes[ip / 4],
                        HYDRA_ASN,
                    )
                }
                Kind::Nat => {
                    self.bands.extend((0..BANDS).map(|_| self.rng.gen::<u64>()));
                    (NAT_JA4, NAT_HTTP, NAT_PREFIX, NAT_ASN)
                }
                Kind::Ordinary { ja4, prefix } => {
                    self.bands.extend((0..BANDS).map(|_| self.rng.gen::<u64>()));
                    (ja4, ja4 ^ 0x77, prefix, prefix >> 40)
                }
            };
            let attrs = Attributes {
                ja4: Some(ja4),
                http: Some(http),
                h2: None,
                ip_prefix: Some(prefix),
                asn: Some(asn),
                prompt: &self.bands,
                shape: None,
            };
            let view = self.linker.observe(account, &attrs, self.now);
            assert_eq!(view, self.linker.cluster_of(account));
            self.requests += 1;
        }
    }

    /// How the given accounts are clustered: (unlinked, id → (members among them, view)).
    fn summary(linker: &Linker, accounts: &[u64]) -> (usize, BTreeMap<u64, (usize, ClusterView)>) {
        let mut unlinked = 0;
        let mut clusters = BTreeMap::new();
        for &a in accounts {
            match linker.cluster_of(a) {
                None => unlinked += 1,
                Some(v) => clusters.entry(v.id).or_insert((0, v)).0 += 1,
            }
        }
        (unlinked, clusters)
    }

    fn largest(clusters: &BTreeMap<u64, (usize, ClusterView)>) -> usize {
        clusters.values().map(|(n, _)| *n).max().unwrap_or(0)
    }

    fn weak_only_policy() -> LinkPolicy {
        let mut policy = LinkPolicy::default();
        policy.rules.retain(|r| r.name == "weak");
        policy
    }

    /// Index invariants: every occupied slot is reachable from its key's home, `first` is the newest entry, spill
    /// lists are owned once and non-empty, counters match.
    fn check_index(index: &Index) {
        let mut len = 0;
        let mut entries = 0;
        let mut owners = vec![0; index.spills.len()];
        for &f in &index.free_spills {
            owners[f as usize] += 1;
        }
        for (i, s) in index.slots.iter().enumerate() {
            if s.key == 0 {
                assert_eq!(s.spill, 0);
                continue;
            }
            assert_eq!(index.probe(s.key), Ok(i));
            len += 1;
            entries += 1;
            if s.spill != 0 {
                let v = &index.spills[s.spill as usize];
                assert!(!v.is_empty());
                assert!(v
                    .iter()
                    .all(|e| e.seen <= s.first.seen && e.account != s.first.account));
                owners[s.spill as usize] += 1;
                entries += v.len();
            }
        }
        assert!(
            owners[1..].iter().all(|&n| n == 1),
            "a spill list is lost or shared"
        );
        assert_eq!(index.len, len);
        assert_eq!(index.entries, entries);
    }

    #[test]
    fn hydra_forms_one_strong_cluster() {
        let mut sim = Sim::new(LinkPolicy::default(), 1);
        let hydra = sim.add_hydra(400);
        let start = sim.now;
        let mut formed_after = None;
        for step in 1..=120 {
            sim.run_until(start + step * 5 * SEC);
            let (unlinked, clusters) = summary(&sim.linker, &hydra);
            if step % 6 == 0 && formed_after.is_none() {
                println!(
                    "hydra t={:>3}s: {unlinked} unlinked, {} clusters, largest {}",
                    step * 5,
                    clusters.len(),
                    largest(&clusters)
                );
            }
            let all_strong = clusters
                .values()
                .all(|(_, v)| v.strength == Strength::Strong);
            if formed_after.is_none() && unlinked == 0 && clusters.len() <= 3 && all_strong {
                formed_after = Some(step * 5);
                println!(
                    "hydra: all 400 accounts in {} Strong cluster(s) after {} simulated seconds ({} requests)",
                    clusters.len(),
                    step * 5,
                    sim.requests
                );
            }
        }
        let formed_after = formed_after.expect("the hydra never formed");
        assert!(formed_after <= 240, "took {formed_after} s");
        // Ten minutes in: one cluster, linked by all three rules.
        let (unlinked, clusters) = summary(&sim.linker, &hydra);
        assert_eq!(unlinked, 0);
        assert_eq!(clusters.len(), 1);
        let (_, view) = clusters.values().next().copied().unwrap();
        assert_eq!(view.members, 400);
        assert_eq!(view.strength, Strength::Strong);
        assert_eq!(view.rules, 0b111);
        assert_eq!(sim.linker.cluster(view.id), Some(view));
        let stats = sim.linker.stats();
        println!("hydra stats after 10 min: {stats:?}");
        assert_eq!(stats.accounts, 400);
        assert_eq!(stats.clusters, 1);
        check_index(&sim.linker.index);
    }

    #[test]
    fn corporate_nat_links_weakly_at_most() {
        let mut sim = Sim::new(LinkPolicy::default(), 2);
        let nat = sim.add_nat(50);
        for minute in 1..=30 {
            sim.run_until(EPOCH + minute * MIN);
            let (_, clusters) = summary(&sim.linker, &nat);
            for (_, v) in clusters.values() {
                assert_eq!(v.strength, Strength::Weak, "{v:?}");
                assert_eq!(v.rules, 0b100);
            }
        }
        let (unlinked, clusters) = summary(&sim.linker, &nat);
        println!(
            "corporate NAT: {} weak cluster(s), largest {}, {unlinked} unlinked",
            clusters.len(),
            largest(&clusters)
        );
    }

    #[test]
    fn ordinary_accounts_stay_unlinked() {
        let mut sim = Sim::new(LinkPolicy::default(), 3);
        let ordinary = sim.add_ordinary(300);
        let mut largest_weak = 0;
        for minute in 1..=30 {
            sim.run_until(EPOCH + minute * MIN);
            let (_, clusters) = summary(&sim.linker, &ordinary);
            for (_, v) in clusters.values() {
                assert!(v.strength < Strength::Medium, "{v:?}");
            }
            largest_weak = largest_weak.max(largest(&clusters));
        }
        println!("ordinary: largest weak cluster {largest_weak} (of 300 accounts)");
        assert_eq!(largest_weak, 0);
        assert_eq!(sim.linker.stats().clusters, 0);
    }

    #[test]
    fn mixed_traffic_keeps_populations_apart() {
        let mut sim = Sim::new(LinkPolicy::default(), 4);
        let hydra = sim.add_hydra(400);
        let nat = sim.add_nat(50);
        let ordinary = sim.add_ordinary(300);
        sim.run_until(EPOCH + 30 * MIN);
        let (unlinked, clusters) = summary(&sim.linker, &hydra);
        assert_eq!((unlinked, clusters.len()), (0, 1));
        let hydra_id = *clusters.keys().next().unwrap();
        for &a in nat.iter().chain(&ordinary) {
            if let Some(v) = sim.linker.cluster_of(a) {
                assert_ne!(v.id, hydra_id);
                assert_eq!(v.strength, Strength::Weak);
            }
        }
        let hydra_members = sim.linker.members(hydra_id, usize::MAX);
        assert_eq!(hydra_members.len(), 400);
        assert!(hydra_members.iter().all(|a| hydra.contains(a)));
        assert_eq!(sim.linker.members(hydra_id, 10).len(), 10);
        assert!(sim.linker.members(hydra_id ^ 1, 10).is_empty());
        assert_eq!(sim.linker.cluster(hydra_id ^ 1), None);
    }

    #[test]
    fn clusters_expire_when_the_hydra_stops() {
        let mut sim = Sim::new(LinkPolicy::default(), 5);
        let hydra = sim.add_hydra(400);
        sim.run_until(EPOCH + 15 * MIN);
        assert_eq!(summary(&sim.linker, &hydra).0, 0);
        sim.stop_all();
        let stop = sim.now;
        let before = sim.linker.stats();
        let mut gone_after = None;
        for minute in 1..=30 {
            sim.linker.maintain(stop + minute * MIN);
            let (unlinked, _) = summary(&sim.linker, &hydra);
            if minute == 1 {
                assert_eq!(unlinked, 0, "links must outlive the request that made them");
            }
            if unlinked == hydra.len() && gone_after.is_none() {
                gone_after = Some(minute);
            }
            if gone_after.is_some() {
                assert_eq!(unlinked, hydra.len(), "a cluster came back");
            }
        }
        let stats = sim.linker.stats();
        println!(
            "expiry: cluster gone {} simulated minutes after the hydra stopped; stats before {before:?}, after {stats:?}",
            gone_after.unwrap()
        );
        assert!(gone_after.unwrap() <= 20);
        assert_eq!((stats.values, stats.entries), (0, 0));
        assert_eq!((stats.accounts, stats.clusters), (0, 0));
        assert!(stats.approx_bytes < before.approx_bytes);
        check_index(&sim.linker.index);
    }

    #[test]
    fn a_cluster_is_drawn_from_its_recent_links() {
        let mut sim = Sim::new(LinkPolicy::default(), 7);
        let hydra = sim.add_hydra(120);
        let nat = sim.add_nat(40);
        sim.run_until(EPOCH + 15 * MIN);
        let (unlinked, clusters) = summary(&sim.linker, &hydra);
        assert_eq!((unlinked, clusters.len()), (0, 1));
        let id = *clusters.keys().next().unwrap();
        // The hydra is the largest cluster; the NAT's is listed after it.
        let listed = sim.linker.clusters(10);
        assert_eq!(listed[0].id, id);
        assert!(listed.windows(2).all(|w| w[0].members >= w[1].members));
        let nat_cluster = sim.linker.cluster_of(nat[0]).map(|v| v.id);
        assert!(nat_cluster.is_none_or(|n| listed.iter().any(|c| c.id == n)));
        assert_eq!(sim.linker.clusters(1).len(), 1);

        let links = sim.linker.cluster_links(id, 10_000);
        let members: std::collections::HashSet<u64> = hydra.iter().copied().collect();
        let mut pairs = std::collections::HashSet::new();
        for e in &links {
            // Both ends are members, each pair once, newest first, and every link names the rules it matched.
            assert!(
                members.contains(&e.from) && members.contains(&e.to),
                "{e:?}"
            );
            assert!(pairs.insert((e.from.min(e.to), e.from.max(e.to))), "{e:?}");
            assert_ne!(e.rules, 0);
            assert!(e.at <= sim.now && e.at + 2 * GEN >= sim.now);
        }
        assert!(links.windows(2).all(|w| w[0].at >= w[1].at));
        // The links connect every member: the graph is the cluster, not a sample of it.
        let mut uf: std::collections::HashMap<u64, u64> = hydra.iter().map(|&a| (a, a)).collect();
        fn root(uf: &mut std::collections::HashMap<u64, u64>, mut a: u64) -> u64 {
            while uf[&a] != a {
                a = uf[&a];
            }
            a
        }
        for e in &links {
            let (ra, rb) = (root(&mut uf, e.from), root(&mut uf, e.to));
            uf.insert(ra, rb);
        }
        let roots: std::collections::HashSet<u64> =
            hydra.iter().map(|&a| root(&mut uf, a)).collect();
        assert_eq!(
            roots.len(),
            1,
            "{} components from {} links",
            roots.len(),
            links.len()
        );
        assert_eq!(sim.linker.cluster_links(id, 5).len(), 5);
        assert!(sim.linker.cluster_links(id ^ 1, 10).is_empty());
    }

    #[test]
    fn cluster_id_is_stable_across_rotations() {
        let mut sim = Sim::new(LinkPolicy::default(), 6);
        let hydra = sim.add_hydra(400);
        sim.run_until(EPOCH + 5 * MIN);
        let (unlinked, clusters) = summary(&sim.linker, &hydra);
        assert_eq!((unlinked, clusters.len()), (0, 1));
        let (_, first) = clusters.values().next().copied().unwrap();
        for step in 1..=100 {
            sim.run_until(EPOCH + 5 * MIN + step * 30 * SEC);
            let (unlinked, clusters) = summary(&sim.linker, &hydra);
            assert_eq!(unlinked, 0, "step {step}");
            assert_eq!(clusters.len(), 1, "step {step}");
            let (_, view) = clusters.values().next().copied().unwrap();
            assert_eq!(
                (view.id, view.formed_at),
                (first.id, first.formed_at),
                "step {step}"
            );
            assert_eq!(view.members, 400);
        }
        let rotations = sim.linker.stats().rotations_total;
        println!("stable id {:#x} over {rotations} rotations", first.id);
        assert!(rotations >= 5);
    }

    #[test]
    fn ignored_values_never_link() {
        let mut sim = Sim::new(weak_only_policy(), 7);
        let mut policy = weak_only_policy();
        policy.ignored = vec![
            (AttrKind::Ja4, HYDRA_JA4),
            (AttrKind::IpPrefix, sim.hydra_prefixes[0]),
            (AttrKind::IpPrefix, sim.hydra_prefixes[1]),
        ];
        sim.linker.set_policy(policy);
        let hydra = sim.add_hydra(400);
        sim.run_until(EPOCH + 20 * MIN);
        assert_eq!(summary(&sim.linker, &hydra).0, 400);
        let stats = sim.linker.stats();
        assert_eq!((stats.clusters, stats.values), (0, 0));
    }

    #[test]
    fn ignoring_only_the_ja4_leaves_the_prompt_rule() {
        let policy = LinkPolicy {
            ignored: vec![(AttrKind::Ja4, HYDRA_JA4)],
            ..LinkPolicy::default()
        };
        let mut sim = Sim::new(policy, 8);
        let hydra = sim.add_hydra(400);
        sim.run_until(EPOCH + 10 * MIN);
        let (unlinked, clusters) = summary(&sim.linker, &hydra);
        assert_eq!(unlinked, 0);
        // Only the prompt rule applies: one Medium cluster per template.
        assert_eq!(clusters.len(), 6);
        assert!(clusters
            .values()
            .all(|(_, v)| v.strength == Strength::Medium && v.rules == 0b010));
    }

    #[test]
    fn downweighted_values_lower_strength() {
        let policy = LinkPolicy {
            downweighted: vec![(AttrKind::Ja4, HYDRA_JA4)],
            ..LinkPolicy::default()
        };
        let mut sim = Sim::new(policy, 9);
        let hydra = sim.add_hydra(400);
        sim.run_until(EPOCH + 10 * MIN);
        let (unlinked, clusters) = summary(&sim.linker, &hydra);
        assert_eq!(unlinked, 0);
        // strong → Medium, medium stays Medium, weak → no link: six Medium clusters joined by the strong rule's keys
        // are still split by template (those keys include the prompt).
        for (_, v) in clusters.values() {
            assert_eq!(v.strength, Strength::Medium);
            assert_eq!(v.rules & 0b100, 0, "the weak rule fell to nothing");
        }
    }

    #[test]
    fn bounded_memory_under_a_million_accounts() {
        let policy = LinkPolicy {
            max_values: 50_000,
            ..LinkPolicy::default()
        };
        let max_values = policy.max_values;
        let mut linker = Linker::new(policy);
        let mut rng = StdRng::seed_from_u64(10);
        let n: u64 = 1_000_000;
        let span = 4 * GEN;
        let mut bands = [0u64; BANDS];
        let mut linked_pairs = 0;
        let mut peak_bytes = 0;
        for i in 0..n {
            let now = EPOCH + i * span / n;
            // Every 100th account repeats the previous account's prompt (a pair to link); the rest are unique.
            if i % 100 != 1 {
                bands = rng.gen();
            }
            let attrs = Attributes {
                ja4: Some(rng.gen()),
                http: Some(rng.gen()),
                h2: None,
                ip_prefix: Some(rng.gen()),
                asn: Some(rng.gen()),
                prompt: &bands,
                shape: None,
            };
            let view = linker.observe(splitmix(i), &attrs, now);
            if i % 100 == 1 {
                assert_eq!(view.map(|v| v.members), Some(2));
                linked_pairs += 1;
            } else {
                assert_eq!(view, None);
            }
            if i % 50_000 == 0 {
                let stats = linker.stats();
                assert!(stats.values <= max_values, "{stats:?}");
                peak_bytes = peak_bytes.max(stats.approx_bytes);
            }
        }
        let stats = linker.stats();
        println!(
            "1M accounts: {linked_pairs} linked pairs; stats {stats:?}; peak ~{peak_bytes} bytes"
        );
        assert!(stats.values <= max_values);
        assert!(stats.evicted_total > 0);
        // Pairs come at ~2 500 per generation; only the last one to two generations are held.
        assert!(stats.accounts <= 2 * 2 * 2_600, "{stats:?}");
        assert!(stats.accounts >= 2 * 2_000, "{stats:?}");
        linker.maintain(EPOCH + span + 2 * GEN);
        let stats = linker.stats();
        assert_eq!(
            (stats.values, stats.entries, stats.accounts, stats.clusters),
            (0, 0, 0, 0)
        );
        check_index(&linker.index);
    }

    #[test]
    fn linked_accounts_cap_refuses_links() {
        let policy = LinkPolicy {
            max_linked_accounts: 100,
            ..LinkPolicy::default()
        };
        let mut sim = Sim::new(policy, 11);
        let hydra = sim.add_hydra(400);
        sim.run_until(EPOCH + 10 * MIN);
        let stats = sim.linker.stats();
        assert!(stats.accounts <= 100, "{stats:?}");
        assert!(stats.links_dropped_total > 0);
        assert_eq!(summary(&sim.linker, &hydra).0, 400 - stats.accounts);
    }

    #[test]
    fn merge_keeps_the_older_id() {
        let mut linker = Linker::new(LinkPolicy::default());
        let prompt = |p: u64| [p, p + 1, p + 2, p + 3];
        let (p1, p2, p3) = (prompt(100), prompt(200), prompt(300));
        assert_eq!(linker.observe(1, &attrs(&p1), EPOCH), None);
        let x = linker.observe(2, &attrs(&p1), EPOCH + SEC).unwrap();
        assert_eq!(
            (x.members, x.strength, x.rules, x.formed_at),
            (2, Strength::Medium, 0b010, EPOCH + SEC)
        );
        assert_eq!(linker.observe(3, &attrs(&p2), EPOCH + 2 * SEC), None);
        let y = linker.observe(4, &attrs(&p2), EPOCH + 3 * SEC).unwrap();
        assert_ne!(x.id, y.id);
        // 3 first, so the younger cluster's member starts the merge.
        linker.observe(3, &attrs(&p3), EPOCH + 4 * SEC);
        let merged = linker.observe(2, &attrs(&p3), EPOCH + 5 * SEC).unwrap();
        assert_eq!(
            (merged.id, merged.members, merged.formed_at),
            (x.id, 4, x.formed_at)
        );
        assert_eq!(linker.cluster(y.id), None);
        assert_eq!(linker.cluster_of(4).map(|v| v.id), Some(x.id));
        let mut members = linker.members(x.id, 10);
        members.sort_unstable();
        assert_eq!(members, vec![1, 2, 3, 4]);
        // What changed, for state kept per cluster: every account joined once, and y went into x.
        let changes = linker.changes().clone();
        assert_eq!(changes.merges, vec![(y.id, x.id)]);
        assert_eq!(changes.joined, vec![2, 1, 4, 3]);
        linker.clear_changes();
        assert!(linker.changes().is_empty());
        // Outside the window nothing links.
        let late = EPOCH + 5 * SEC + 11 * MIN;
        assert_eq!(linker.observe(5, &attrs(&p1), late), None);
    }

    #[test]
    fn each_rule_has_its_own_window() {
        let mut policy = LinkPolicy::default();
        policy.rules[0].window = MIN; // strong: within one minute only
        let mut linker = Linker::new(policy);
        let bands = [7, 8];
        let attrs = Attributes {
            ja4: Some(1),
            ip_prefix: Some(2),
            prompt: &bands,
            ..Attributes::default()
        };
        assert_eq!(linker.observe(1, &attrs, EPOCH), None);
        // Two minutes later: too late for the strong rule, in time for medium and weak.
        let v = linker.observe(2, &attrs, EPOCH + 2 * MIN).unwrap();
        assert_eq!((v.strength, v.rules), (Strength::Medium, 0b110));
        // Thirty seconds later: strong.
        let v = linker
            .observe(3, &attrs, EPOCH + 2 * MIN + 30 * SEC)
            .unwrap();
        assert_eq!(
            (v.strength, v.rules, v.members),
            (Strength::Strong, 0b111, 3)
        );
    }

    #[test]
    fn a_rule_of_one_evidence_class_reports_sharing_but_never_links() {
        // The reference rules with two classes required: "medium" (prompt
        // only) is signal-only; "weak" (JA4 + prefix) and "strong" link.
        let policy = LinkPolicy {
            min_classes: 2,
            ..LinkPolicy::default()
        };
        let mut linker = Linker::new(policy);
        let bands = [7, 8];
        // Strangers with one template, each from their own stack and network.
        for a in 1..=20u64 {
            let attrs = Attributes {
                ja4: Some(100 + a),
                ip_prefix: Some(200 + a),
                prompt: &bands,
                ..Attributes::default()
            };
            assert_eq!(linker.observe(a, &attrs, EPOCH + a * SEC), None);
            // Every one after the first saw the template on another account.
            let want = if a == 1 { 0 } else { 0b010 };
            assert_eq!(linker.shared_rules(), want, "account {a}");
        }
        assert_eq!(linker.stats().clusters, 0);
        // The same template with a second class (one stack and network): linked.
        let attrs = Attributes {
            ja4: Some(101),
            ip_prefix: Some(201),
            prompt: &bands,
            ..Attributes::default()
        };
        let v = linker.observe(99, &attrs, EPOCH + 30 * SEC).unwrap();
        assert_eq!((v.strength, v.members), (Strength::Strong, 2));
        assert_eq!(v.rules & 0b010, 0, "the signal-only rule holds no cluster");
        assert_eq!(linker.shared_rules(), 0b111);
    }

    #[test]
    fn the_request_shape_is_a_class_of_its_own() {
        let policy = LinkPolicy {
            rules: vec![LinkRule {
                name: "template+shape".into(),
                kinds: vec![AttrKind::Prompt, AttrKind::Shape],
                strength: Strength::Medium,
                window: 10 * MIN,
            }],
            min_classes: 2,
            ..LinkPolicy::default()
        };
        let mut linker = Linker::new(policy);
        let bands = [7, 8];
        let with = |shape| Attributes {
            prompt: &bands,
            shape: Some(shape),
            ..Attributes::default()
        };
        assert_eq!(linker.observe(1, &with(5), EPOCH), None);
        // Same template, another request shape: no link.
        assert_eq!(linker.observe(2, &with(6), EPOCH + SEC), None);
        // Same template and shape: linked.
        let v = linker.observe(3, &with(5), EPOCH + 2 * SEC).unwrap();
        assert_eq!((v.strength, v.members), (Strength::Medium, 2));
    }

    #[test]
    fn lists_keep_the_most_recent_accounts() {
        let policy = LinkPolicy {
            max_accounts_per_value: 16,
            ..LinkPolicy::default()
        };
        let mut linker = Linker::new(policy);
        let attrs = Attributes {
            ja4: Some(1),
            ip_prefix: Some(2),
            ..Attributes::default()
        };
        for a in 0..1_000u64 {
            linker.observe(a, &attrs, EPOCH + a * SEC / 10);
        }
        // One key (the weak rule's), sixteen most recent accounts.
        let stats = linker.stats();
        assert_eq!((stats.values, stats.entries), (1, 16));
        let slot = linker.index.slots.iter().find(|s| s.key != 0).unwrap();
        assert_eq!(slot.first.account, 999);
        let rest: Vec<u64> = linker.index.spills[slot.spill as usize]
            .iter()
            .map(|e| e.account)
            .collect();
        assert_eq!(rest, (984..999).collect::<Vec<_>>());
        // All of them one weak cluster, each request linking to at most 8.
        let v = linker.cluster_of(0).unwrap();
        assert_eq!((v.members, v.strength), (1_000, Strength::Weak));
        check_index(&linker.index);
    }

    #[test]
    fn split_evidence_gets_a_fresh_id_for_the_smaller_part() {
        let mut linker = Linker::new(LinkPolicy::default());
        // Generation 0: {1,2} via prompt A, {3,4} via prompt B, 2–3 via prompt C: one cluster X.
        let t = EPOCH;
        linker.observe(1, &attrs(&[10]), t);
        linker.observe(2, &attrs(&[10]), t + SEC);
        linker.observe(3, &attrs(&[20]), t + 2 * SEC);
        linker.observe(4, &attrs(&[20]), t + 3 * SEC);
        linker.observe(2, &attrs(&[30]), t + 4 * SEC);
        let x = linker.observe(3, &attrs(&[30]), t + 5 * SEC).unwrap();
        assert_eq!(x.members, 4);
        // Generation 1: only {1,2} and {3,4,5} relink (both adopt X); the bridge is gone.
        let t = EPOCH + GEN + MIN;
        linker.observe(1, &attrs(&[40]), t);
        linker.observe(2, &attrs(&[40]), t + SEC);
        linker.observe(3, &attrs(&[50]), t + 2 * SEC);
        linker.observe(4, &attrs(&[50]), t + 3 * SEC);
        linker.observe(5, &attrs(&[50]), t + 4 * SEC);
        assert_eq!(
            linker.cluster_of(5).map(|v| (v.id, v.members)),
            Some((x.id, 5))
        );
        // Generation 2: the larger part keeps X, the smaller gets a fresh id formed at rotation.
        linker.maintain(EPOCH + 2 * GEN + MIN);
        let big = linker.cluster_of(3).unwrap();
        let small = linker.cluster_of(1).unwrap();
        assert_eq!((big.id, big.members, big.formed_at), (x.id, 3, x.formed_at));
        assert_ne!(small.id, x.id);
        assert_eq!(small.members, 2);
        assert_eq!(linker.cluster(small.id), Some(small));
        assert_eq!(linker.cluster(x.id), Some(big));
    }

    #[test]
    fn same_traffic_same_clusters() {
        let run = || {
            let mut sim = Sim::new(LinkPolicy::default(), 12);
            let mut accounts = sim.add_hydra(200);
            accounts.extend(sim.add_nat(30));
            accounts.extend(sim.add_ordinary(100));
            sim.run_until(EPOCH + 25 * MIN);
            let views: Vec<_> = accounts.iter().map(|&a| sim.linker.cluster_of(a)).collect();
            (views, sim.linker.stats())
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b);
        assert!(a.0.iter().any(Option::is_some));
    }

    #[test]
    fn hot_reload_keeps_state() {
        let mut sim = Sim::new(LinkPolicy::default(), 13);
        let hydra = sim.add_hydra(400);
        sim.run_until(EPOCH + 5 * MIN);
        let before = sim.linker.cluster_of(hydra[0]).unwrap();
        let mut policy = LinkPolicy {
            max_values: 500,
            ..LinkPolicy::default()
        };
        policy.rules.reverse();
        sim.linker.set_policy(policy);
        assert!(sim.linker.stats().values <= 500);
        assert_eq!(sim.linker.cluster_of(hydra[0]), Some(before));
        sim.run_until(EPOCH + 25 * MIN);
        let (unlinked, clusters) = summary(&sim.linker, &hydra);
        assert_eq!((unlinked, clusters.len()), (0, 1));
        let (_, after) = clusters.values().next().copied().unwrap();
        assert_eq!(after.id, before.id);
        // Rule bits follow the new order: weak is now bit 0, strong bit 2.
        assert_eq!(after.rules, 0b111);
        check_index(&sim.linker.index);
    }

    #[test]
    fn index_survives_churn() {
        let mut index = Index::new();
        let mut rng = StdRng::seed_from_u64(14);
        let mut out = Found::default();
        for step in 0..200_000u64 {
            let now = EPOCH + step * SEC / 10;
            let touch = Touch {
                account: rng.gen_range(0..50),
                now,
                window: 5 * SEC,
                max_window: 10 * SEC,
                per_value: 4,
                max_values: 3_000,
            };
            // Few distinct keys with clustered low bits, so probe runs and wrap-around are exercised.
            let key = (rng.gen_range(0..6_000u64) << 20 | rng.gen_range(0..8)).max(1);
            out.items.clear();
            out.limit = 8;
            index.touch(key, &touch, &mut out);
            assert!(out.items.len() < 4);
            assert!(out.items.iter().all(|e| e.account != touch.account));
            index.sweep_step(now, 10 * SEC);
            if step % 20_000 == 0 {
                check_index(&index);
                assert!(index.len <= 3_000);
            }
        }
        index.sweep_full(EPOCH + 200_000 * SEC / 10, 10 * SEC);
        check_index(&index);
        assert!(index.evicted_total + index.expired_total > 0);
    }

    #[test]
    fn policy_validation() {
        assert_eq!(LinkPolicy::default().validate(), Ok(()));
        let mut p = LinkPolicy::default();
        p.rules[1].kinds.clear();
        assert!(matches!(
            p.validate(),
            Err(LinkPolicyError::EmptyRule { .. })
        ));
        let p = LinkPolicy {
            generation: 0,
            ..LinkPolicy::default()
        };
        assert_eq!(
            p.validate(),
            Err(LinkPolicyError::Zero {
                field: "generation"
            })
        );
        let mut p = LinkPolicy::default();
        p.rules[2].name = "strong".into();
        assert!(p.validate().unwrap_err().to_string().contains("strong"));
        // An invalid policy is still usable: empty rules are skipped, zero limits raised.
        let mut p = LinkPolicy {
            max_values: 0,
            ..LinkPolicy::default()
        };
        p.rules[1].kinds.clear();
        let mut linker = Linker::new(p);
        let bands = [1, 2];
        let attrs = Attributes {
            prompt: &bands,
            ..Attributes::default()
        };
        linker.observe(1, &attrs, EPOCH);
        assert_eq!(
            linker.stats().values,
            0,
            "no rule applies without JA4 and prefix"
        );
    }

    /// `min_prompt_bands`: a link found only by the prompt rule needs that many distinct bands shared; a rule with
    /// a client-stack or network attribute links on one.
    #[test]
    fn prompt_only_links_need_the_set_number_of_bands() {
        let linked = |min_prompt_bands: u8, a: &[u64], b: &[u64], stack: bool| {
            let mut policy = LinkPolicy {
                min_prompt_bands,
                ..LinkPolicy::default()
            };
            // Strong (JA4 + prefix + prompt) and medium (prompt); not the weak rule, which links on JA4 + prefix.
            policy.rules.truncate(2);
            let mut linker = Linker::new(policy);
            let with = |bands| Attributes {
                ja4: stack.then_some(HYDRA_JA4),
                ip_prefix: stack.then_some(77),
                ..attrs(bands)
            };
            linker.observe(1, &with(a), EPOCH);
            linker.observe(2, &with(b), EPOCH + SEC).is_some()
        };
        // One band in common (a stock phrase), then two.
        let one = ([10, 11, 12, 13], [10, 21, 22, 23]);
        let two = ([10, 11, 12, 13], [10, 11, 22, 23]);
        assert!(linked(1, &one.0, &one.1, false));
        assert!(!linked(2, &one.0, &one.1, false), "one band linked");
        assert!(linked(2, &two.0, &two.1, false));
        assert!(!linked(3, &two.0, &two.1, false), "two bands linked at 3");
        // Same JA4 and prefix: the strong rule links on one band.
        assert!(linked(2, &one.0, &one.1, true));
    }

    /// Attributes with only a prompt signature.
    fn attrs(bands: &[u64]) -> Attributes<'_> {
        Attributes {
            prompt: bands,
            ..Attributes::default()
        }
    }

    fn splitmix(x: u64) -> u64 {
        fmix(x.wrapping_add(K1))
    }
}
