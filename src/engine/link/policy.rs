//! Link rules and their compiled form: which attribute combinations link accounts, and how strongly.

use super::*;

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

    pub(super) const fn bit(self) -> u8 {
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
    pub(super) fn scalar(&self, kind: AttrKind) -> Option<u64> {
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
    /// Accounts kept per index key (most recently seen kept), e.g. 64; at most [`MAX_SPILL`] are used.
    pub max_accounts_per_value: usize,
    /// Index keys kept; beyond it the least recently used are evicted.
    pub max_values: usize,
    /// Index entries (an account under a key) kept over all keys, at least `max_values` (each key holds one): at
    /// the cap a new key evicts the least recently used keys, as beyond `max_values`, and a key's list keeps its
    /// length (its oldest entry goes). Without it the index is bounded only by `max_values ×
    /// max_accounts_per_value` entries.
    pub max_entries: usize,
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
    /// A link found only by such rules to a request more than this long before the current one needs
    /// [`LinkPolicy::late_min_prompt_bands`] bands instead: a long window then finds a slow campaign's template without
    /// letting one phrase that unrelated users type link them across it. 0: off.
    pub late_after: Nanos,
    /// See [`LinkPolicy::late_after`].
    pub late_min_prompt_bands: u8,
    /// A link to a request with more than this many requests (of any account) observed since is late too, however
    /// recent: on a busy API the part of the window where one band links holds as many requests as on a quiet one,
    /// so unrelated users who type the same phrasing meet under it as rarely (docs/link.md, "Linking"). 0: off;
    /// otherwise at least [`LATE_MARK_EVERY`].
    pub late_after_requests: u64,
    /// A link found on a single prompt band alone (no client-stack or network attribute, one band: what
    /// [`LinkPolicy::min_prompt_bands`] = 1 lets through) joins two accounts only once one of them has been found so
    /// with at least this many distinct accounts, this one included, within this generation and the last: one phrasing
    /// that two strangers happen to share, each sharing it with no one else, stays a coincidence, while the accounts
    /// of a group that paraphrases its templates meet several others. 1 (or 0): every such link joins.
    pub single_band_contacts: u8,
}

/// [`Linker`] notes the time of every this many requests to tell how long ago
/// [`LinkPolicy::late_after_requests`] requests were.
pub const LATE_MARK_EVERY: u64 = 64;

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
            max_entries: 1 << 22,
            min_prompt_bands: 1,
            late_after: 0,
            late_min_prompt_bands: 1,
            late_after_requests: 0,
            single_band_contacts: 1,
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
            ("max_entries", self.max_entries as u64),
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
    /// How long before their eviction the keys counted in `evicted_total` were last seen, a moving average over the
    /// last thousand or so: how far back the index reaches on this traffic (0: no key evicted early yet). Below the
    /// rule windows, linking sees less than they say: raise `max_values`.
    pub evicted_age: Nanos,
    /// Index keys dropped because every entry had outlived the largest rule window.
    pub expired_total: u64,
    /// Links refused by the `max_linked_accounts` cap.
    pub links_dropped_total: u64,
    /// Links on one prompt band alone held back because neither account had been found so with
    /// [`LinkPolicy::single_band_contacts`] distinct accounts yet.
    pub single_band_held_total: u64,
    /// Links on one prompt band alone that joined unchecked because the generation's record of such contacts was
    /// full: above zero, the traffic makes more one-band coincidences than the record holds.
    pub single_band_unrecorded_total: u64,
    /// Generation rotations done.
    pub rotations_total: u64,
    /// Estimated bytes held by all structures (from their capacities), the index table's own mapping included.
    pub approx_bytes: usize,
    /// Of `approx_bytes`, the index table's when it has a mapping of its own (a large table): memory outside the
    /// heap, which a heap count leaves out.
    pub mapped_bytes: usize,
}

// ---------------------------------------------------------------------------------------------------------------
// Compiled policy

#[derive(Clone, Copy, Debug)]
pub(super) struct CompiledRule {
    pub(super) seed: u64,
    pub(super) scalars: [AttrKind; 6],
    pub(super) n_scalars: usize,
    pub(super) prompt: bool,
    /// A prompt rule with no client-stack or network attribute: its links need `min_bands` prompt bands.
    pub(super) prompt_only: bool,
    /// Spans fewer than `min_classes` evidence classes: reports sharing, never links.
    pub(super) signal_only: bool,
    pub(super) strength: u8,
    pub(super) window: Nanos,
    pub(super) bit: u32,
}

/// The evidence classes of a set of kinds (bits of [`AttrKind::bit`]).
pub(super) fn classes(mask: u8) -> u8 {
    AttrKind::ALL
        .into_iter()
        .filter(|k| mask & k.bit() != 0)
        .fold(0, |c, k| c | k.class())
}

#[derive(Debug)]
pub(super) struct Compiled {
    pub(super) rules: Vec<CompiledRule>,
    pub(super) uses_prompt: bool,
    pub(super) flags: FastMap<u64, u8>,
    pub(super) max_window: Nanos,
    pub(super) per_value: usize,
    pub(super) max_values: usize,
    /// [`LinkPolicy::max_entries`], at least `max_values`.
    pub(super) max_entries: usize,
    pub(super) generation: Nanos,
    pub(super) max_links: usize,
    pub(super) max_linked: usize,
    pub(super) min_bands: u32,
    pub(super) late_after: Nanos,
    pub(super) late_min_bands: u32,
    /// Marks ([`LATE_MARK_EVERY`] requests apart) that span [`LinkPolicy::late_after_requests`]; 0: off.
    pub(super) late_marks: usize,
    /// [`LinkPolicy::single_band_contacts`], at least 1.
    pub(super) single_band_contacts: u8,
    /// How long an account already linked that found nothing new skips gathering candidates (docs/link.md,
    /// "Accounts already linked"); 0: never.
    pub(super) refresh: Nanos,
    /// How long such an account, once it has recorded itself under its keys, skips recording them again; 0: never.
    pub(super) record_every: Nanos,
}

impl Compiled {
    pub(super) fn new(policy: &LinkPolicy) -> Self {
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
                seed: murmur3_fmix64(KEY_SALT ^ u64::from(mask)),
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
        let shortest = rules.iter().map(|r| r.window).min().unwrap_or(0);
        let refresh = shortest.min(policy.generation) / REFRESH_DIVISOR;
        Compiled {
            refresh,
            record_every: refresh / RECORD_DIVISOR,
            uses_prompt: rules.iter().any(|r| r.prompt),
            max_window: rules.iter().map(|r| r.window).max().unwrap_or(0),
            rules,
            flags,
            per_value: policy.max_accounts_per_value.clamp(1, MAX_SPILL),
            max_values: policy.max_values.max(1),
            max_entries: policy.max_entries.max(policy.max_values).max(1),
            generation: policy.generation.max(1),
            max_links: policy.max_links_per_request.clamp(1, MAX_LINKS_CAP),
            max_linked: policy.max_linked_accounts.clamp(2, u32::MAX as usize - 1),
            min_bands: u32::from(policy.min_prompt_bands.max(1)),
            late_after: policy.late_after,
            late_min_bands: u32::from(
                policy
                    .late_min_prompt_bands
                    .max(policy.min_prompt_bands)
                    .max(1),
            ),
            late_marks: usize::try_from(policy.late_after_requests / LATE_MARK_EVERY)
                .unwrap_or(usize::MAX),
            single_band_contacts: policy.single_band_contacts.max(1),
        }
    }

    #[inline]
    pub(super) fn flag(&self, kind: AttrKind, value: u64) -> u8 {
        if self.flags.is_empty() {
            0
        } else {
            self.flags.get(&flag_key(kind, value)).copied().unwrap_or(0)
        }
    }
}
