//! The config file as written: serde structs that mirror the TOML, every
//! struct `deny_unknown_fields`, every number with its unit in its name.
//! [`super::validate`] turns a [`FileConfig`] into a typed [`super::Config`].
//! The same structs give the file's JSON Schema ([`super::schema`]), so
//! editors check the TOML against exactly what the parser accepts.

use schemars::JsonSchema;
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Listeners that accept client traffic (`[[listener]]`), at least one.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<FileListener>,
    /// The model API distill-guard protects.
    pub upstream: FileUpstream,
    /// Limits on what one client or connection may use.
    #[serde(default)]
    pub limits: FileLimits,
    /// Process-wide settings: workers, shutdown.
    #[serde(default)]
    pub server: FileServer,
    /// Client fingerprinting.
    #[serde(default)]
    pub fingerprint: FileFingerprint,
    /// Who a request belongs to: API key → account id, client IP.
    #[serde(default)]
    pub identity: FileIdentity,
    /// LLM API request inspection.
    #[serde(default)]
    pub api: FileApi,
    /// Quotas by tier (`[tiers.NAME]`); a tier named by `accounts.default_tier`
    /// must exist.
    #[serde(default = "default_tiers")]
    pub tiers: std::collections::BTreeMap<String, FileTier>,
    /// Which accounts get which tier; memory bounds of account state.
    #[serde(default)]
    pub accounts: FileAccounts,
    /// Linking accounts into clusters and the clusters' shared budget.
    #[serde(default)]
    pub cluster: FileCluster,
    /// The admin API and metrics listener.
    #[serde(default)]
    pub admin: FileAdmin,
    /// The audit log.
    #[serde(default)]
    pub audit: FileAudit,
    /// The traffic record (for `replay`).
    #[serde(default)]
    pub record: FileRecord,
    /// Behaviour detection: signals, score, the action ladder.
    #[serde(default)]
    pub detection: FileDetection,
    /// Log output.
    #[serde(default)]
    pub logging: FileLogging,
    /// Where budgets and manual decisions are kept: in this process, or in
    /// Redis, shared by every replica.
    #[serde(default)]
    pub state: FileState,
}

/// `[fingerprint]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileFingerprint {
    /// IPv4 clients are grouped by this prefix length for linking (0–32).
    #[schemars(range(max = 32))]
    pub ipv4_prefix_len: u8,
    /// IPv6 clients are grouped by this prefix length for linking (0–128).
    #[schemars(range(max = 128))]
    pub ipv6_prefix_len: u8,
    /// A MaxMind-format ASN database (e.g. GeoLite2-ASN.mmdb); when set, the
    /// client's AS number is part of its fingerprint.
    pub asn_database_path: Option<String>,
    /// Send the client's JA4 upstream in this header (off when absent).
    pub forward_ja4_header: Option<String>,
    /// Send the request's HTTP fingerprint upstream in this header.
    pub forward_http_header: Option<String>,
    /// Send the connection's HTTP/2 fingerprint upstream in this header.
    pub forward_h2_header: Option<String>,
    /// Known client stacks: a request whose `user-agent` starts with a
    /// listed prefix but whose fingerprints are not among the listed ones is
    /// flagged as inconsistent (`[[fingerprint.known_client]]`).
    #[serde(rename = "known_client")]
    pub known_clients: Vec<FileKnownClient>,
    /// What a trusted front (CDN, L7 load balancer) that terminates the
    /// client's TLS observed of it, in request headers it sets.
    pub front: FileFront,
}

/// `[fingerprint.front]`: request headers in which a front that terminates
/// the client's TLS passes on what it observed. Believed only when the peer
/// is in `identity.trusted_proxies`; removed from every request before it
/// is forwarded upstream, believed or not. A missing or malformed value
/// leaves what distill-guard observed itself.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileFront {
    /// Header with the client's JA4 (e.g. `"CloudFront-Viewer-JA4-Fingerprint"`).
    pub ja4_header: Option<String>,
    /// Header with the client's HTTP/2 fingerprint in Akamai format
    /// (`SETTINGS|WINDOW_UPDATE|PRIORITY|PSEUDO_HEADER_ORDER`).
    pub h2_header: Option<String>,
    /// Header with the client's address (e.g. `"CloudFront-Viewer-Address"`,
    /// `"CF-Connecting-IP"`); used before `x-forwarded-for`.
    pub address_header: Option<String>,
    /// How `address_header` writes it: `"ip"` (default) or `"ip_port"`
    /// (`198.51.100.10:46532`, IPv6 bracketed or not, as CloudFront does).
    #[schemars(extend("enum" = ["ip", "ip_port"]))]
    pub address_format: Option<String>,
    /// Header with the client's AS number (e.g. `"CloudFront-Viewer-ASN"`);
    /// used before `fingerprint.asn_database_path`.
    pub asn_header: Option<String>,
}

impl Default for FileFingerprint {
    fn default() -> Self {
        Self {
            ipv4_prefix_len: 24,
            ipv6_prefix_len: 48,
            asn_database_path: None,
            forward_ja4_header: None,
            forward_http_header: None,
            forward_h2_header: None,
            known_clients: Vec::new(),
            front: FileFront::default(),
        }
    }
}

/// One `[[fingerprint.known_client]]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileKnownClient {
    /// A name for logs and reasons, e.g. `"anthropic-python"`.
    pub name: String,
    /// `user-agent` prefix that claims this client, e.g. `"Anthropic/Python"`.
    pub user_agent_prefix: String,
    /// JA4 values this client is known to produce (empty: not checked).
    #[serde(default)]
    pub ja4: Vec<String>,
    /// HTTP fingerprints (our format) it is known to produce (empty: not checked).
    #[serde(default)]
    pub http: Vec<String>,
}

/// `[identity]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileIdentity {
    /// Where the API key is read from, in order: header names; the value
    /// `"authorization"` means `Authorization: Bearer <key>`.
    pub key_headers: Vec<String>,
    /// Environment variable holding the secret of the keyed hash that turns
    /// a key into an account id (preferred over `hash_secret`).
    pub hash_secret_env: Option<String>,
    /// The secret itself, when it may live in this file. With neither set,
    /// a random per-process secret is used (ids then change on restart).
    pub hash_secret: Option<String>,
    /// A request without a key: `"reject"` (401) or `"anonymous"` (limited by
    /// client IP under `accounts.anonymous_tier`).
    #[schemars(extend("enum" = ["reject", "anonymous"]))]
    pub missing_key: String,
    /// Peers whose `x-forwarded-for` / PROXY protocol header is believed (CIDRs).
    pub trusted_proxies: Vec<String>,
    /// Anonymous IPv6 clients are keyed by this prefix length.
    #[schemars(range(max = 128))]
    pub ipv6_key_prefix_len: u8,
    /// Header in which a trusted auth front states when the request's
    /// account was created, as Unix seconds (e.g. `"x-account-created"`).
    /// Believed only from a peer in `trusted_proxies`; a value that does not
    /// parse or lies more than 5 minutes in the future is ignored and
    /// counted (`distill_guard_account_created_invalid_total`). Unset, or
    /// without a believed value, the engine's own account tenure is used.
    pub account_created_header: Option<String>,
}

impl Default for FileIdentity {
    fn default() -> Self {
        Self {
            key_headers: vec!["x-api-key".into(), "authorization".into()],
            hash_secret_env: Some("DISTILL_GUARD_HASH_SECRET".into()),
            hash_secret: None,
            missing_key: "reject".into(),
            trusted_proxies: Vec::new(),
            ipv6_key_prefix_len: 64,
            account_created_header: None,
        }
    }
}

/// `[api]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileApi {
    /// Request bodies of the LLM endpoints up to this size are read and
    /// inspected before forwarding; larger ones cannot be inspected (see
    /// `on_uninspectable`).
    pub inspect_max_body_bytes: u64,
    /// What happens to an LLM request body that cannot be inspected (not a
    /// JSON object the parser accepts, or over `inspect_max_body_bytes`):
    /// `"refuse"` (400, or 413 when too large, in the API's shape) or
    /// `"strictest"` (forwarded, but at the account's enforced level with
    /// degrade, which cannot rewrite such a body, escalated to a refusal).
    #[schemars(extend("enum" = ["refuse", "strictest"]))]
    pub on_uninspectable: String,
    /// Prompts whose walks (signature, phrase scan, token estimate) are kept
    /// so that a conversation's next turn is walked only past its history:
    /// about 1 KiB each, held in memory, first in first out. 0 turns the
    /// cache off.
    #[schemars(range(max = 1_048_576))]
    pub prompt_cache_entries: usize,
}

impl Default for FileApi {
    fn default() -> Self {
        Self {
            inspect_max_body_bytes: 10 * 1024 * 1024,
            on_uninspectable: "refuse".into(),
            prompt_cache_entries: crate::prompt::ENTRIES,
        }
    }
}

/// One `[tiers.NAME]`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileTier {
    /// Requests per minute (sustained).
    pub requests_per_minute: u64,
    /// Requests that may arrive at once above the sustained rate.
    pub burst_requests: u64,
    /// Estimated prompt tokens per minute.
    pub input_tokens_per_minute: u64,
    /// Output tokens per minute, charged after the response (post-paid).
    pub output_tokens_per_minute: u64,
    /// Requests in flight at once.
    pub max_concurrent: u32,
}

fn default_tiers() -> std::collections::BTreeMap<String, FileTier> {
    let mut m = std::collections::BTreeMap::new();
    m.insert(
        "default".to_string(),
        FileTier {
            requests_per_minute: 60,
            burst_requests: 20,
            input_tokens_per_minute: 400_000,
            output_tokens_per_minute: 80_000,
            max_concurrent: 16,
        },
    );
    m
}

/// `[accounts]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileAccounts {
    /// Accounts file (TOML `[[account]]` tables or CSV `id,tier,allow`) that
    /// maps account ids (from `distill-guard hash-key`) to tiers and to
    /// `allow` (never slowed or blocked by detection).
    pub file: Option<String>,
    /// Tier of accounts not in the file.
    pub default_tier: String,
    /// Tier of keyless requests when `identity.missing_key = "anonymous"`.
    pub anonymous_tier: String,
    /// Accounts whose state is kept at most; beyond it the longest-idle of
    /// those that owe nothing and carry no detection evidence are dropped
    /// (counted). Accounts that owe or carry evidence are never dropped for
    /// the cap: while only they remain, new accounts are rate-limited per
    /// client network, and never admitted past twice the cap.
    pub max_tracked: u64,
    /// Accounts whose tenure (first seen, and how old they were then) is
    /// kept after their state is dropped, at most; beyond it the least
    /// recently seen are forgotten, and no account is read as younger than
    /// the history kept since (about 40 bytes per account).
    pub max_tenure: u64,
    /// File the accounts' tenure is kept in across restarts (written every
    /// five minutes and at shutdown, read at start; relative paths are
    /// relative to the config file). Used only with an identity hash secret
    /// (account ids must survive the restart); a file written under another
    /// secret is set aside. Absent: every start begins a new history, and
    /// for its first 72 hours no account reads young.
    pub tenure_path: Option<String>,
    /// Account state idle this long (and owing nothing) is dropped.
    pub idle_evict_ms: u64,
    /// While the account store is full, new accounts admitted per client
    /// network prefix per minute (429 with scope "network" beyond it).
    pub new_accounts_per_minute_at_capacity: u64,
}

impl Default for FileAccounts {
    fn default() -> Self {
        Self {
            file: None,
            default_tier: "default".into(),
            anonymous_tier: "default".into(),
            max_tracked: 1_000_000,
            max_tenure: 1_000_000,
            tenure_path: None,
            idle_evict_ms: 600_000,
            new_accounts_per_minute_at_capacity: 60,
        }
    }
}

/// One `[[listener]]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    /// `IP:PORT` to bind, e.g. `"0.0.0.0:8443"` or `"[::1]:8080"`.
    pub address: String,
    /// Terminate TLS on this listener (rustls). Absent: plain TCP (HTTP/1.1
    /// and HTTP/2 with prior knowledge).
    pub tls: Option<FileTls>,
    /// Expect a PROXY protocol (v1 or v2) header first; believed only from
    /// peers in `identity.trusted_proxies`.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// `[listener.tls]`: PEM files.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// PEM certificate chain, leaf first. Relative paths are relative to the
    /// config file.
    pub cert_path: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: String,
}

/// `[upstream]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    /// Base URL of the model API, `http://` or `https://`, e.g.
    /// `"https://api.anthropic.com"`. A path prefix is kept and prepended.
    pub url: String,
    /// Extra PEM CA certificates trusted for the upstream, besides the
    /// built-in web PKI roots (for private CAs and tests).
    pub ca_path: Option<String>,
    /// Time allowed to open a TCP connection (and TLS) to the upstream.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time allowed from sending the request to the upstream's response head.
    #[serde(default = "default_first_byte_timeout_ms")]
    pub first_byte_timeout_ms: u64,
    /// Longest silence allowed between two pieces of a response body.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// How long an unused pooled upstream connection is kept.
    #[serde(default = "default_pool_idle_timeout_ms")]
    pub pool_idle_timeout_ms: u64,
}

/// `[limits]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileLimits {
    /// Largest request body accepted; larger ones get 413.
    pub max_request_body_bytes: u64,
    /// Time a connection has, once accepted (and past TLS), to deliver its
    /// first complete request head, on every protocol (HTTP/1, HTTP/2, a
    /// lone byte that never becomes either); also the HTTP/1 head deadline
    /// of later requests.
    pub request_head_timeout_ms: u64,
    /// Time a new connection has to send its first bytes and, on TLS
    /// listeners, complete the handshake.
    pub handshake_timeout_ms: u64,
    /// Open client connections across all listeners; further connections
    /// are closed at once.
    pub max_connections: u32,
    /// Open connections one client address (an IPv4 address, an IPv6 /64)
    /// may hold; peers in `identity.trusted_proxies` are exempt. 0 = no
    /// per-address share.
    pub max_connections_per_address: u32,
    /// Longest a connection may stay open with no request in flight
    /// (keep-alive HTTP/1, idle HTTP/2); it is then closed gracefully.
    pub idle_connection_timeout_ms: u64,
    /// Longest gap between two pieces of a request body.
    pub body_read_timeout_ms: u64,
    /// Slowest average rate a request body may arrive at, checked once it
    /// has been arriving for `body_read_timeout_ms`. 0 = no rate floor.
    pub min_body_bytes_per_second: u64,
    /// Longest a response may wait for the client to read it (a client
    /// that stops reading); the connection is then closed.
    pub write_stall_timeout_ms: u64,
    /// HTTP/2 PING interval on a connection that has been silent this long
    /// (0 = no pings); a peer that does not answer within
    /// `h2_keepalive_timeout_ms` is closed.
    pub h2_keepalive_interval_ms: u64,
    /// How long an HTTP/2 PING may go unanswered.
    pub h2_keepalive_timeout_ms: u64,
}

impl Default for FileLimits {
    fn default() -> Self {
        Self {
            max_request_body_bytes: 10 * 1024 * 1024,
            request_head_timeout_ms: 30_000,
            handshake_timeout_ms: 10_000,
            max_connections: 10_000,
            max_connections_per_address: 512,
            idle_connection_timeout_ms: 60_000,
            body_read_timeout_ms: 30_000,
            min_body_bytes_per_second: 1024,
            write_stall_timeout_ms: 60_000,
            h2_keepalive_interval_ms: 30_000,
            h2_keepalive_timeout_ms: 20_000,
        }
    }
}

/// `[server]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileServer {
    /// Worker threads, each a single-threaded runtime; 0 = one per CPU this
    /// process may run on.
    pub workers: u32,
    /// On SIGTERM/SIGINT, how long in-flight requests and streams may run on
    /// before the process exits anyway.
    pub shutdown_grace_ms: u64,
}

impl Default for FileServer {
    fn default() -> Self {
        Self {
            workers: 0,
            shutdown_grace_ms: 30_000,
        }
    }
}

/// `[logging]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileLogging {
    /// `"json"` (one object per line) or `"text"`.
    #[schemars(extend("enum" = ["json", "text"]))]
    pub format: String,
    /// A `tracing` filter such as `"info"` or `"distill_guard=debug"`;
    /// `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for FileLogging {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_first_byte_timeout_ms() -> u64 {
    600_000
}
fn default_idle_timeout_ms() -> u64 {
    300_000
}
fn default_pool_idle_timeout_ms() -> u64 {
    90_000
}

/// `[cluster]`: accounts that share fingerprints are linked into clusters;
/// a cluster at or above `score_min_strength` with at least `min_members`
/// is scored as a whole by detection; at or above `min_strength` it also
/// shares one budget, which grows sublinearly with its size:
/// `budget × min(max_multiplier, 1 + per_member_fraction × members^growth_exponent)`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileCluster {
    /// Link accounts and enforce cluster budgets at all.
    pub enabled: bool,
    /// Weakest link that makes a cluster share a budget: "weak", "medium", "strong".
    #[schemars(extend("enum" = ["weak", "medium", "strong"]))]
    pub min_strength: String,
    /// Weakest link that makes detection score a cluster as a whole.
    #[schemars(extend("enum" = ["weak", "medium", "strong"]))]
    pub score_min_strength: String,
    /// With detection on, a cluster shares its budget only while its own
    /// level is at least this: "allow" (always), "slow", "degrade", "throttle".
    #[schemars(extend("enum" = ["allow", "slow", "degrade", "throttle"]))]
    pub budget_min_level: String,
    /// Smallest cluster that shares a budget.
    pub min_members: u32,
    /// Links expire by generation: one to two of these. No shorter than the
    /// longest rule window, or a link found across that window expires before
    /// the slower account sends again (docs/link.md).
    pub generation_ms: u64,
    /// Accounts remembered per attribute value (1 to 65536).
    #[schemars(range(min = 1, max = 65536))]
    pub max_accounts_per_value: u32,
    /// Attribute values remembered (the index cap; least recently used go).
    /// A request with a new prompt adds 32 with the shipped rules, so the cap
    /// bounds how far back linking sees: values = 32 x requests/s x seconds (32-byte slots,
    /// 2 to 2.7 a value when full).
    pub max_index_values: u64,
    /// Index entries (an account under a value) held over all values, at
    /// least max_index_values; beyond it the least recently used values go,
    /// as beyond max_index_values. 16 bytes each (a little more in lists of
    /// three or more), so with the table it bounds the index's memory, which
    /// max_index_values x max_accounts_per_value alone does not.
    pub max_index_entries: u64,
    /// Other accounts one request may be linked to.
    pub max_links_per_request: u32,
    /// Accounts held in clusters at most.
    pub max_linked_accounts: u64,
    /// Evidence classes (client stack, network, prompt, request shape) a
    /// link rule must span for its links to join accounts into clusters; a
    /// rule spanning fewer only feeds the template_reuse signal.
    pub min_link_classes: u32,
    /// Distinct prompt bands (of a signature's 16) a request must share with
    /// another account before a link found only by rules with no client-stack
    /// or network attribute (e.g. template+shape) joins them: short prompts
    /// ending in one stock phrase share a band by it.
    #[schemars(range(min = 1, max = 16))]
    pub min_prompt_bands: u8,
    /// Such a link to a request more than this long before (within the
    /// rule's window) needs `late_min_prompt_bands` bands instead; 0: off.
    pub late_after_ms: u64,
    /// See `late_after_ms`: at least `min_prompt_bands`.
    #[schemars(range(min = 1, max = 16))]
    pub late_min_prompt_bands: u8,
    /// A link to a request with more than this many requests observed since
    /// is late too, however recent: on a busy API the part of the window
    /// where min_prompt_bands links holds as many requests as on a quiet
    /// one. 0: off; else 64 to 67108864.
    pub late_after_requests: u64,
    /// A link on one prompt band alone (no client stack, no network, one
    /// band) joins two accounts only once one of them has been found so with
    /// at least this many distinct accounts (this one included) within one
    /// to two generations. 1: every such link joins.
    #[schemars(range(min = 1, max = 16))]
    pub single_band_contacts: u8,
    /// Budget growth per member (fraction of the base budget) ...
    pub per_member_fraction: f64,
    /// ... times members to this power (below 1: sublinear) ...
    pub growth_exponent: f64,
    /// ... capped at this multiple of the base budget.
    pub max_multiplier: f64,
    /// The base budget of a cluster (same keys as a tier).
    pub budget: FileTier,
    /// Rules that link two accounts (`[[cluster.link]]`).
    #[serde(rename = "link")]
    pub links: Vec<FileLinkRule>,
    /// Values shared by many unrelated clients: never used for linking.
    pub ignore: FileAttrValues,
    /// Values that weaken a link by one step (weak links through them vanish).
    pub downweight: FileAttrValues,
}

impl Default for FileCluster {
    fn default() -> Self {
        // An hour for the template rules (the shipped config says why), ten minutes for the weak one.
        let rule = |name: &str, attrs: &[&str], strength: &str, window_ms| FileLinkRule {
            name: name.into(),
            attributes: attrs.iter().map(|a| a.to_string()).collect(),
            strength: strength.into(),
            window_ms,
        };
        Self {
            enabled: true,
            min_strength: "medium".into(),
            score_min_strength: "medium".into(),
            budget_min_level: "slow".into(),
            min_members: 3,
            generation_ms: 3_600_000,
            max_accounts_per_value: 64,
            max_index_values: 1 << 22,
            max_index_entries: 1 << 24,
            max_links_per_request: 8,
            max_linked_accounts: 1 << 20,
            min_link_classes: 2,
            min_prompt_bands: 1,
            late_after_ms: 600_000,
            late_min_prompt_bands: 2,
            late_after_requests: 4_000,
            single_band_contacts: 2,
            per_member_fraction: 0.25,
            growth_exponent: 0.5,
            max_multiplier: 4.0,
            budget: FileTier {
                requests_per_minute: 120,
                burst_requests: 30,
                input_tokens_per_minute: 800_000,
                output_tokens_per_minute: 160_000,
                max_concurrent: 32,
            },
            links: vec![
                rule(
                    "network+template",
                    &["ip_prefix", "prompt"],
                    "strong",
                    3_600_000,
                ),
                rule("template+shape", &["prompt", "shape"], "medium", 3_600_000),
                rule("tls+network", &["ja4", "ip_prefix"], "weak", 600_000),
            ],
            ignore: FileAttrValues::default(),
            downweight: FileAttrValues::default(),
        }
    }
}

/// One `[[cluster.link]]` rule.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileLinkRule {
    /// Name shown in reasons.
    pub name: String,
    /// Attributes that must all be equal: "ja4", "http", "h2", "ip_prefix",
    /// "asn", "prompt" (prompt-shape signature), "shape" (request shape:
    /// model, scale of the output limit).
    pub attributes: Vec<String>,
    /// "weak", "medium" or "strong".
    #[schemars(extend("enum" = ["weak", "medium", "strong"]))]
    pub strength: String,
    /// The other account used the same values within this long.
    pub window_ms: u64,
}

/// Attribute values by kind (`[cluster.ignore]`, `[cluster.downweight]`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileAttrValues {
    /// JA4 strings.
    pub ja4: Vec<String>,
    /// HTTP fingerprints (our format).
    pub http: Vec<String>,
    /// HTTP/2 (Akamai-style) fingerprints.
    pub h2: Vec<String>,
    /// Networks (CIDR); client prefixes inside them match.
    pub ip_prefix: Vec<String>,
    /// AS numbers.
    pub asn: Vec<u32>,
    /// Files holding the start of a prompt many unrelated clients send (a
    /// popular tool's system prompt): its prompt-signature keys.
    pub prompt_files: Vec<String>,
}

/// `[admin]`: a separate listener for health, metrics, admin actions and
/// the analyst console (`/console`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileAdmin {
    /// Serve the admin API at all.
    pub enabled: bool,
    /// `IP:PORT`; without a token it must be a loopback address.
    pub address: String,
    /// Environment variable holding the bearer token (preferred).
    pub token_env: Option<String>,
    /// The bearer token itself.
    pub token: Option<String>,
    /// File where manual block/allow decisions are kept across restarts.
    pub state_path: Option<String>,
    /// Watch the config file (and the files it names) and reload on change;
    /// SIGHUP reloads in any case.
    pub watch_config: bool,
    /// Open admin connections at most; more are closed at once. Admin
    /// connections run under the `[limits]` deadlines (first request,
    /// idle, write stall).
    pub max_connections: u32,
}

impl Default for FileAdmin {
    fn default() -> Self {
        Self {
            enabled: true,
            address: "127.0.0.1:9901".into(),
            token_env: Some("DISTILL_GUARD_ADMIN_TOKEN".into()),
            token: None,
            state_path: None,
            watch_config: true,
            max_connections: 64,
        }
    }
}

/// `[audit]`: JSON Lines, one per decision that is not a plain allow.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileAudit {
    /// File to append to (absent: no audit log).
    pub path: Option<String>,
    /// Also write a line for every allowed request.
    pub all_requests: bool,
    /// Records queued for the writer at most; beyond it records are dropped
    /// (and counted), never waited for.
    pub queue_capacity: u32,
}

impl Default for FileAudit {
    fn default() -> Self {
        Self {
            path: None,
            all_requests: false,
            queue_capacity: 65_536,
        }
    }
}

/// `[detection]`: behavioural signals, a weighted score per account and per
/// cluster, and the action ladder (slow, degrade, throttle, block).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileDetection {
    /// Compute signals and scores at all.
    pub enabled: bool,
    /// "enforce", or "shadow" (compute and log everything, change nothing).
    #[schemars(extend("enum" = ["enforce", "shadow"]))]
    pub mode: String,
    /// Share of accounts (0–100, by account id) on which actions are
    /// enforced; the rest are in shadow mode.
    #[schemars(range(max = 100))]
    pub enforce_percent: u8,
    /// Half-life of every signal window.
    pub half_life_ms: u64,
    /// Half-life of a group's onset window (clusters, behaviour cohorts,
    /// network pools): a group is scored by the higher of its
    /// `half_life_ms` window and this one, so that its traffic of an hour
    /// ago does not dilute what it does now. 0: no onset window. Below
    /// `half_life_ms`.
    pub onset_half_life_ms: u64,
    /// Phrase-list files (one phrase per line, `#` comments; the list is
    /// named by the file stem). Empty: the built-in lists.
    pub phrase_lists: Vec<String>,
    /// Weight per signal (names as in the audit log's reasons); unlisted
    /// signals keep their default weight.
    pub weights: std::collections::BTreeMap<String, f32>,
    /// Score marks: each level is entered at `*_enter` and left below `*_exit`.
    pub thresholds: FileThresholds,
    /// A member's requests count in its cluster's core when its own raw
    /// score (before the amount of evidence is weighed) reaches this, 0–1.
    /// A cluster is scored by the higher of its core's score and all its
    /// members': honest accounts below the mark cannot dilute a campaign.
    pub core_min_raw: f32,
    /// An account whose own raw score reaches this (0–1; above 1: never)
    /// sends its requests into its behaviour cohorts — accounts that
    /// behave alike, linked or not — and is scored with their pooled
    /// evidence, never above its own raw score.
    pub cohort_min_raw: f32,
    /// ...once it has sent at least this many requests (its behaviour is
    /// known from them).
    pub cohort_min_requests: u32,
    /// An account whose own raw score reaches this (0–1; above 1: never),
    /// and that takes long answers itself, sends its requests into its
    /// client network's pool — the accounts
    /// on one network prefix that show some of the same evidence — and,
    /// once the pool holds `network_pool_min_members` of them, is scored
    /// by the pool's evidence as a whole (its long-answer yield per member
    /// among it): many accounts on few addresses that each take long
    /// answers at a modest rate.
    pub network_pool_min_raw: f32,
    /// Distinct accounts a network pool must have seen (over the current
    /// and the previous half-life) before its score counts.
    pub network_pool_min_members: u32,
    /// `max_tokens` at or above this fraction of the model's output ceiling
    /// counts as pinned (the pinned_max_tokens signal), in (0, 1].
    pub pinned_fraction: f32,
    /// Output-token ceiling of models that neither a
    /// `[[detection.model_ceiling]]` nor the built-in table names.
    pub default_model_ceiling: u32,
    /// Output-token ceilings by model-name prefix
    /// (`[[detection.model_ceiling]]`), added to the built-in table of
    /// Anthropic and OpenAI models; an entry replaces a built-in one of the
    /// same prefix, and the longest matching prefix wins.
    #[serde(rename = "model_ceiling")]
    pub model_ceilings: Vec<FileModelCeiling>,
    /// Slow: a delay before forwarding and a lower concurrency cap for the
    /// account.
    pub slow: FileSlow,
    /// Degrade: clamp the output limit and remove thinking/reasoning parameters.
    pub degrade: FileDegrade,
    /// Throttle: the account's and cluster's budgets multiplied down.
    pub throttle: FileThrottle,
    /// Block: 403.
    pub block: FileBlock,
    /// Newly released models (`[[detection.new_model]]`): a move of traffic
    /// to them by young accounts is the release-pivot signal.
    #[serde(rename = "new_model")]
    pub new_models: Vec<FileNewModel>,
}

impl Default for FileDetection {
    fn default() -> Self {
        // The pinned mark and the default ceiling are the engine's own.
        let score = crate::engine::score::ScorePolicy::default();
        Self {
            enabled: true,
            mode: "enforce".into(),
            enforce_percent: 100,
            half_life_ms: 3_600_000,
            onset_half_life_ms: 600_000,
            core_min_raw: 0.45,
            cohort_min_raw: 0.55,
            cohort_min_requests: 2,
            network_pool_min_raw: 2.0,
            network_pool_min_members: 4,
            pinned_fraction: score.pinned_fraction,
            default_model_ceiling: score.default_ceiling,
            model_ceilings: Vec::new(),
            phrase_lists: Vec::new(),
            weights: std::collections::BTreeMap::new(),
            thresholds: FileThresholds::default(),
            slow: FileSlow::default(),
            degrade: FileDegrade::default(),
            throttle: FileThrottle::default(),
            block: FileBlock::default(),
            new_models: Vec::new(),
        }
    }
}

/// `[detection.thresholds]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileThresholds {
    /// Enter Slow at this score (0–1).
    pub slow_enter: f32,
    /// Leave Slow below this score.
    pub slow_exit: f32,
    /// Enter Degrade.
    pub degrade_enter: f32,
    /// Leave Degrade.
    pub degrade_exit: f32,
    /// Enter Throttle.
    pub throttle_enter: f32,
    /// Leave Throttle.
    pub throttle_exit: f32,
    /// Enter Block.
    pub block_enter: f32,
    /// Leave Block.
    pub block_exit: f32,
}

impl Default for FileThresholds {
    fn default() -> Self {
        Self {
            slow_enter: 0.50,
            slow_exit: 0.40,
            degrade_enter: 0.55,
            degrade_exit: 0.45,
            throttle_enter: 0.75,
            throttle_exit: 0.62,
            block_enter: 0.90,
            block_exit: 0.78,
        }
    }
}

/// Mode of one action.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileActionMode {
    /// "enforce" or "shadow".
    #[schemars(extend("enum" = ["enforce", "shadow"]))]
    pub mode: String,
    /// Share of accounts (0–100) on which this action is enforced.
    #[schemars(range(max = 100))]
    pub enforce_percent: u8,
}

impl Default for FileActionMode {
    fn default() -> Self {
        Self {
            mode: "enforce".into(),
            enforce_percent: 100,
        }
    }
}

/// `[detection.slow]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileSlow {
    /// "enforce" or "shadow".
    #[schemars(extend("enum" = ["enforce", "shadow"]))]
    pub mode: String,
    /// Share of accounts (0–100) on which slowing is enforced.
    #[schemars(range(max = 100))]
    pub enforce_percent: u8,
    /// Delay at the Slow mark; it grows with the score ...
    pub min_delay_ms: u64,
    /// ... up to this.
    pub max_delay_ms: u64,
    /// Requests in flight allowed to a slowed account.
    pub max_concurrent: u32,
    /// Slow only while the score rests on fewer than this many (decayed)
    /// requests; with as many or more, a score at the Slow mark is acted on
    /// as Degrade. A campaign is throughput-bound: delay takes nothing from
    /// it. 0: Slow never turns into Degrade.
    pub while_requests_below: u32,
}

impl Default for FileSlow {
    fn default() -> Self {
        Self {
            mode: "enforce".into(),
            enforce_percent: 100,
            min_delay_ms: 500,
            max_delay_ms: 8_000,
            max_concurrent: 2,
            while_requests_below: 16,
        }
    }
}

/// `[detection.degrade]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileDegrade {
    /// "enforce" or "shadow".
    #[schemars(extend("enum" = ["enforce", "shadow"]))]
    pub mode: String,
    /// Share of accounts (0–100) on which degrading is enforced.
    #[schemars(range(max = 100))]
    pub enforce_percent: u8,
    /// Output limit forwarded upstream (max_tokens and friends clamped to it).
    pub max_output_tokens: u32,
}

impl Default for FileDegrade {
    fn default() -> Self {
        Self {
            mode: "enforce".into(),
            enforce_percent: 100,
            max_output_tokens: 512,
        }
    }
}

/// `[detection.throttle]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileThrottle {
    /// "enforce" or "shadow".
    #[schemars(extend("enum" = ["enforce", "shadow"]))]
    pub mode: String,
    /// Share of accounts (0–100) on which throttling is enforced.
    #[schemars(range(max = 100))]
    pub enforce_percent: u8,
    /// Budgets are multiplied by this (0 < f < 1).
    pub budget_factor: f64,
}

impl Default for FileThrottle {
    fn default() -> Self {
        Self {
            mode: "enforce".into(),
            enforce_percent: 100,
            budget_factor: 0.25,
        }
    }
}

/// `[detection.block]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileBlock {
    /// "enforce" or "shadow".
    #[schemars(extend("enum" = ["enforce", "shadow"]))]
    pub mode: String,
    /// Share of accounts (0–100) on which blocking is enforced.
    #[schemars(range(max = 100))]
    pub enforce_percent: u8,
    /// A scored cluster acted on at Degrade or above for this long without
    /// a break is blocked (0: never by time alone).
    pub cluster_after_degrade_ms: u64,
}

impl Default for FileBlock {
    fn default() -> Self {
        Self {
            mode: "enforce".into(),
            enforce_percent: 100,
            cluster_after_degrade_ms: 0,
        }
    }
}

/// One `[[detection.model_ceiling]]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileModelCeiling {
    /// Model-name prefix, e.g. "claude-opus-5".
    pub prefix: String,
    /// The most output tokens the model returns for one request.
    pub max_output_tokens: u32,
}

/// One `[[detection.new_model]]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileNewModel {
    /// Model-name prefix, e.g. "claude-opus-5".
    pub prefix: String,
    /// Release time, milliseconds since the Unix epoch.
    pub released_unix_ms: u64,
}

/// `[record]`: one JSON line per request with what the engine needs and
/// nothing sensitive, for `distill-guard replay` (off by default).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileRecord {
    /// File to append to (absent: no traffic record).
    pub path: Option<String>,
    /// Records queued for the writer at most; beyond it records are dropped.
    pub queue_capacity: u32,
}

impl Default for FileRecord {
    fn default() -> Self {
        Self {
            path: None,
            queue_capacity: 65_536,
        }
    }
}

/// `[state]`: where budget cells and manual decisions live. `local` (the
/// default) keeps them in this process; `redis` shares them between every
/// replica through one Redis (or Valkey) server (`docs/distributed.md`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileState {
    /// `local` or `redis`.
    pub backend: String,
    /// `redis://HOST:PORT/DB` or `rediss://HOST:PORT/DB` (TLS); a user name
    /// may be given (`redis://USER@HOST:PORT`), a password may not: it
    /// comes from `password_env`. With `cluster = true`, one or several
    /// seed nodes of the Redis Cluster (a list of such URLs, database 0).
    pub url: Option<FileUrls>,
    /// The server is a Redis Cluster (or Valkey cluster): the client finds
    /// the nodes from the seeds in `url` and sends each call to the node
    /// owning its keys' slot (`docs/distributed.md`, "Redis Cluster").
    pub cluster: bool,
    /// Environment variable holding the Redis password (never the file).
    pub password_env: Option<String>,
    /// PEM file of the CA certificates that sign the Redis server's
    /// certificate (`rediss://` only); absent: the web PKI roots and the
    /// system's.
    pub ca_path: Option<String>,
    /// Connections to Redis (each multiplexes many requests); a worker
    /// thread keeps to one, so at least `server.workers` gives each its own.
    pub pool_size: u32,
    /// A Redis command that has not answered by then has failed: the
    /// request goes on under `on_failure`, it never waits longer.
    pub command_timeout_ms: u64,
    /// Establishing a connection gives up after this.
    pub connect_timeout_ms: u64,
    /// Every key starts with it (letters, digits, `-`, `_`, `.`, `:`).
    pub key_prefix: String,
    /// What a request gets while Redis fails or the breaker is open:
    /// `local` (this replica's own cells), `open` (admitted unchecked) or
    /// `closed` (refused with a 503/529 in the API's shape).
    pub on_failure: String,
    /// Consecutive failures (errors or timeouts) that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one request probes Redis.
    pub breaker_open_ms: u64,
    /// How often manual decisions are checked for changes made through
    /// another replica (one `GET` of a version key).
    pub manual_sync_ms: u64,
    /// A request in flight counts against concurrency caps at most this
    /// long (a replica that dies cannot hold its slots forever).
    pub in_flight_lease_ms: u64,
    /// Share every request's observation (hashed fingerprints, prompt
    /// keys, signal inputs: never keys or prompt text) through a Redis
    /// Stream that every replica applies in one order, so all replicas
    /// link the same clusters under the same ids (`docs/distributed.md`).
    /// Off: each replica links only what it sees.
    pub share_observations: bool,
    /// Entries the observation stream keeps (`XADD … MAXLEN ~`): a
    /// replica that starts or returns replays at most this many.
    pub stream_max_entries: u64,
    /// Observations waiting to be appended (a bounded queue per replica);
    /// when it is full an observation is dropped and counted. Also the
    /// bound of the outage buffer: the newest this many observations
    /// linked on this replica alone while Redis failed, appended when it
    /// returns (the view is then rebuilt from the stream).
    pub stream_queue_entries: u32,
}

/// `[state] url`: one URL, or several seed nodes of a Redis Cluster.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FileUrls {
    /// One server (or one seed node of a cluster).
    One(String),
    /// Seed nodes of a Redis Cluster (`cluster = true`).
    Seeds(Vec<String>),
}

impl Default for FileState {
    fn default() -> Self {
        Self {
            backend: "local".into(),
            url: None,
            cluster: false,
            password_env: None,
            ca_path: None,
            pool_size: 4,
            command_timeout_ms: 50,
            connect_timeout_ms: 1000,
            key_prefix: "dg".into(),
            on_failure: "local".into(),
            breaker_failures: 5,
            breaker_open_ms: 2000,
            manual_sync_ms: 250,
            in_flight_lease_ms: 600_000,
            share_observations: true,
            stream_max_entries: 200_000,
            stream_queue_entries: 16_384,
        }
    }
}
