//! Configuration: one TOML file, parsed into [`file::FileConfig`] (serde,
//! unknown keys rejected), then validated into [`Config`], whose types cannot
//! hold a bad value. Every error names `FILE:LINE:COL: key.path: reason`.

pub mod file;
pub mod accounts_file;
pub mod schema;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;

use crate::engine::attr_hash;
use crate::engine::link::{AttrKind, LinkPolicy, LinkRule, Strength};
use crate::engine::policy::nanos;
use crate::engine::{ActionMode, ClusterPolicy, DetectionPolicy, Nanos, Policy, Rate, Tier};
use crate::fingerprint::consistency::KnownClient;
use crate::fingerprint::front::{AddressFormat, FrontConfig};
use crate::identity::KeySource;
use file::FileConfig;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (relative paths inside it are resolved against
    /// its directory).
    pub source: PathBuf,
    /// Client-facing listeners.
    pub listeners: Vec<ListenerConfig>,
    /// The protected model API.
    pub upstream: UpstreamConfig,
    /// Per-client and per-connection limits.
    pub limits: Limits,
    /// Workers and shutdown.
    pub server: ServerConfig,
    /// Client fingerprinting.
    pub fingerprint: FingerprintConfig,
    /// API keys, account ids, client IPs.
    pub identity: IdentityConfig,
    /// LLM request inspection.
    pub api: ApiConfig,
    /// Quotas by tier name.
    pub tiers: BTreeMap<String, TierConfig>,
    /// Account → tier mapping and state bounds.
    pub accounts: AccountsConfig,
    /// Cluster linkage and budgets.
    pub cluster: ClusterConfig,
    /// Admin API.
    pub admin: AdminConfig,
    /// Audit log.
    pub audit: AuditConfig,
    /// Traffic record (path, queue bound).
    pub record: Option<(PathBuf, usize)>,
    /// Behaviour detection.
    pub detection: DetectionConfig,
    /// Log output.
    pub logging: LoggingConfig,
    /// Where budgets and manual decisions are kept.
    pub state: StateConfig,
}

/// Where budget cells and manual decisions are kept (`[state]`).
// Made once per config load: a box would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StateConfig {
    /// In this process only.
    #[default]
    Local,
    /// In Redis, shared by every replica.
    Redis(RedisConfig),
}

/// What a request gets while Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// This replica's own cells decide.
    Local,
    /// Admitted without a budget check.
    Open,
    /// Refused (503 / 529 in the API's shape).
    Closed,
}

impl OnFailure {
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Local => "local",
            OnFailure::Open => "open",
            OnFailure::Closed => "closed",
        }
    }
}

/// The Redis backend's settings, validated.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// The server URL as written (no password in it); the seed nodes,
    /// comma-separated, for a cluster.
    pub url: String,
    /// The server's URL, or the cluster's seed nodes.
    pub urls: Vec<String>,
    /// A Redis Cluster: calls go to the node owning their keys' slot.
    pub cluster: bool,
    /// The password, from the environment variable `[state] password_env`.
    pub password: Option<String>,
    /// PEM CA certificates for `rediss://` (None: the default roots).
    pub ca_pem: Option<Vec<u8>>,
    /// Connections kept.
    pub pool_size: usize,
    /// Bound on one command.
    pub command_timeout: Duration,
    /// Bound on one connection attempt.
    pub connect_timeout: Duration,
    /// Key prefix.
    pub key_prefix: String,
    /// What requests get while Redis fails.
    pub on_failure: OnFailure,
    /// Consecutive failures that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before a probe.
    pub breaker_open: Duration,
    /// Poll interval of the manual decisions' version.
    pub manual_sync: Duration,
    /// Lease of one in-flight slot.
    pub in_flight_lease: Duration,
    /// The observation stream, when observations are shared.
    pub stream: Option<StreamConfig>,
}

/// The shared observation stream's settings (`docs/distributed.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// Entries kept (approximately: `MAXLEN ~`).
    pub max_entries: u64,
    /// Observations queued for appending at most.
    pub queue_entries: usize,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.url)
            .field("cluster", &self.cluster)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("pool_size", &self.pool_size)
            .field("command_timeout", &self.command_timeout)
            .field("key_prefix", &self.key_prefix)
            .field("on_failure", &self.on_failure)
            .finish_non_exhaustive()
    }
}

/// What happens to a request without an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingKey {
    /// 401 in the API's error shape.
    Reject,
    /// Limited by client IP as an anonymous account.
    Anonymous,
}

/// Identity settings.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Key sources in order.
    pub key_sources: Vec<KeySource>,
    /// Secret of the keyed hash (None: random per process).
    pub hash_secret: Option<Vec<u8>>,
    /// Keyless requests.
    pub missing_key: MissingKey,
    /// Trusted proxy networks.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// IPv6 prefix length for anonymous keying.
    pub ipv6_key_prefix_len: u8,
    /// Where a trusted auth front states the account's creation time
    /// (Unix seconds); None: not read.
    pub account_created_header: Option<http::HeaderName>,
}

/// Request inspection settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Bodies up to this size are inspected.
    pub inspect_max_body_bytes: u64,
    /// What happens to an LLM body that cannot be inspected.
    pub on_uninspectable: Uninspectable,
    /// Prompts whose walks the prompt cache keeps (0: no cache). The cache
    /// itself belongs to [`DetectionConfig::phrases`].
    pub prompt_cache_entries: usize,
}

/// What happens to an LLM request body that cannot be inspected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uninspectable {
    /// 400 (413 when too large) in the API's shape.
    Refuse,
    /// Forwarded at the account's enforced level; degrade becomes a refusal.
    Strictest,
}

/// One tier's quotas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierConfig {
    /// Requests per minute.
    pub requests_per_minute: u64,
    /// Request burst.
    pub burst_requests: u64,
    /// Input tokens per minute.
    pub input_tokens_per_minute: u64,
    /// Output tokens per minute.
    pub output_tokens_per_minute: u64,
    /// Requests in flight.
    pub max_concurrent: u32,
}

impl TierConfig {
    /// The engine's tier named `name` with these quotas (token bursts: one
    /// minute's worth).
    pub fn tier(&self, name: &str) -> Tier {
        Tier {
            name: name.into(),
            requests: Rate::per_minute(self.requests_per_minute, self.burst_requests),
            input: Rate::per_minute(self.input_tokens_per_minute, self.input_tokens_per_minute),
            output: Rate::per_minute(self.output_tokens_per_minute, self.output_tokens_per_minute),
            max_concurrent: self.max_concurrent,
        }
    }
}

impl Config {
    /// The engine's policy, for an engine whose clock reads `now` while the
    /// wall clock reads `now_unix_ms` (to place the release times of new
    /// models on the engine's clock).
    pub fn policy_at(&self, now: Nanos, now_unix_ms: u64) -> Policy {
        let mut p = self.policy();
        if let Some(d) = p.detection.as_mut() {
            d.score.new_models = self
                .detection
                .new_models_unix_ms
                .iter()
                .map(|(prefix, ms)| {
                    let ago = now_unix_ms.saturating_sub(*ms).saturating_mul(1_000_000);
                    let ahead = ms.saturating_sub(now_unix_ms).saturating_mul(1_000_000);
                    (
                        prefix.clone(),
                        now.saturating_sub(ago).saturating_add(ahead),
                    )
                })
                .collect();
        }
        p
    }

    /// The engine's policy (new-model release times taken as engine time in
    /// milliseconds, as `replay` uses).
    pub fn policy(&self) -> Policy {
        let names: Vec<&String> = self.tiers.keys().collect();
        let index = |n: &str| names.iter().position(|t| t.as_str() == n).unwrap_or(0);
        let a = &self.accounts;
        Policy {
            tiers: self.tiers.iter().map(|(n, t)| t.tier(n)).collect(),
            default_tier: index(&a.default_tier),
            anonymous_tier: index(&a.anonymous_tier),
            accounts: a
                .entries
                .iter()
                .map(|(id, e)| (*id, (index(&e.tier), e.allow)))
                .collect(),
            max_tracked: a.max_tracked,
            max_tenure: a.max_tenure,
            idle_evict: a.idle_evict,
            new_accounts_at_capacity: Rate::per_minute(
                a.new_accounts_per_minute_at_capacity,
                a.new_accounts_per_minute_at_capacity,
            ),
            cluster: self.cluster.policy.clone(),
            detection: self.detection.enabled.then(|| {
                let mut d = self.detection.policy.clone();
                d.score.new_models = self
                    .detection
                    .new_models_unix_ms
                    .iter()
                    .map(|(p, ms)| (p.clone(), ms.saturating_mul(1_000_000)))
                    .collect();
                d
            }),
        }
    }
}

/// One entry of the accounts file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountEntry {
    /// Tier name (exists in `tiers`).
    pub tier: String,
    /// Never slowed or blocked by detection.
    pub allow: bool,
}

/// Account settings, with the accounts file loaded.
#[derive(Debug, Clone)]
pub struct AccountsConfig {
    /// The accounts file, if any.
    pub file: Option<PathBuf>,
    /// Account id (16 hex digits) → entry.
    pub entries: HashMap<u64, AccountEntry>,
    /// Tier of unlisted accounts.
    pub default_tier: String,
    /// Tier of anonymous clients.
    pub anonymous_tier: String,
    /// State cap.
    pub max_tracked: usize,
    /// Tenure cap.
    pub max_tenure: usize,
    /// Where tenure is kept across restarts.
    pub tenure_path: Option<PathBuf>,
    /// Idle state lifetime.
    pub idle_evict: Duration,
    /// New accounts per client network per minute while the store is full.
    pub new_accounts_per_minute_at_capacity: u64,
}

/// Behaviour detection, validated: the engine's [`DetectionPolicy`] and
/// what only the config knows of it.
#[derive(Debug, Clone)]
pub struct DetectionConfig {
    /// Compute signals at all.
    pub enabled: bool,
    /// What the engine decides by when detection is on.
    pub policy: DetectionPolicy,
    /// New models: (prefix, release time in Unix milliseconds).
    pub new_models_unix_ms: Vec<(String, u64)>,
    /// The phrase-list files (watched for reload).
    pub phrase_list_files: Vec<PathBuf>,
    /// The phrase lists, compiled: the prompt step matches them, and
    /// prompt signatures leave their phrases out.
    pub phrases: std::sync::Arc<crate::prompt::PhraseMatcher>,
}

/// Audit log settings.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The file (None: off).
    pub path: Option<PathBuf>,
    /// A line for every request, not only for non-allow decisions.
    pub all_requests: bool,
    /// Queue bound.
    pub queue_capacity: usize,
}

/// Admin API settings.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Listener address (None: no admin API).
    pub address: Option<SocketAddr>,
    /// Bearer token (None: open, loopback only).
    pub token: Option<String>,
    /// Where manual decisions persist.
    pub state_path: Option<PathBuf>,
    /// Watch files and reload on change.
    pub watch_config: bool,
    /// Open admin connections at most.
    pub max_connections: usize,
}

/// Cluster linkage and budgets, validated: the engine's [`ClusterPolicy`]
/// and the files it was built from.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// What the engine links and budgets by.
    pub policy: ClusterPolicy,
    /// The `prompt_files` of `[cluster.ignore]` and `[cluster.downweight]`
    /// (watched for reload).
    pub prompt_files: Vec<PathBuf>,
}

/// One listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Address to bind.
    pub address: SocketAddr,
    /// A PROXY protocol header comes first (from trusted proxies).
    pub proxy_protocol: bool,
    /// TLS files when this listener terminates TLS.
    pub tls: Option<TlsFiles>,
}

/// Certificate chain and key, as absolute paths.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert_path: PathBuf,
    /// PEM private key.
    pub key_path: PathBuf,
}

/// Where requests go.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host and port.
    pub authority: Authority,
    /// The `Host` the upstream is sent: the URL's host, with its port
    /// unless it is the scheme's default (made once here, not per request).
    pub host: http::HeaderValue,
    /// Path prefix without a trailing `/` (empty for none).
    pub path_prefix: String,
    /// Extra CA certificates (PEM) for an https upstream.
    pub ca_path: Option<PathBuf>,
    /// TCP (+TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Request sent → response head received.
    pub first_byte_timeout: Duration,
    /// Longest gap between response body frames.
    pub idle_timeout: Duration,
    /// Pooled idle connection lifetime.
    pub pool_idle_timeout: Duration,
}

/// Limits on clients and connections.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body.
    pub max_request_body_bytes: u64,
    /// Deadline for a connection's first complete request head (every
    /// protocol), and for later HTTP/1 heads.
    pub request_head_timeout: Duration,
    /// First bytes / TLS handshake deadline.
    pub handshake_timeout: Duration,
    /// Open client connections.
    pub max_connections: usize,
    /// Open connections per client address (0 = unlimited).
    pub max_connections_per_address: usize,
    /// A connection with no request in flight for this long is closed.
    pub idle_connection_timeout: Duration,
    /// Longest gap between pieces of a request body.
    pub body_read_timeout: Duration,
    /// Slowest average request-body rate (bytes per second, 0 = none).
    pub min_body_bytes_per_second: u64,
    /// Longest a response may wait for the client to read it.
    pub write_stall_timeout: Duration,
    /// HTTP/2 PING interval (None = no pings).
    pub h2_keepalive_interval: Option<Duration>,
    /// How long an HTTP/2 PING may go unanswered.
    pub h2_keepalive_timeout: Duration,
}

/// Process settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Worker threads; never 0 after validation.
    pub workers: usize,
    /// Grace period on shutdown.
    pub shutdown_grace: Duration,
}

/// Fingerprinting settings.
#[derive(Debug, Clone)]
pub struct FingerprintConfig {
    /// IPv4 grouping prefix length.
    pub ipv4_prefix_len: u8,
    /// IPv6 grouping prefix length.
    pub ipv6_prefix_len: u8,
    /// The ASN database, loaded.
    pub asn_db: Option<std::sync::Arc<crate::fingerprint::asn::AsnDb>>,
    /// Header carrying the JA4 upstream.
    pub forward_ja4_header: Option<http::HeaderName>,
    /// Header carrying the HTTP fingerprint upstream.
    pub forward_http_header: Option<http::HeaderName>,
    /// Header carrying the HTTP/2 fingerprint upstream.
    pub forward_h2_header: Option<http::HeaderName>,
    /// Known client stacks for the consistency flag.
    pub known_clients: Vec<KnownClient>,
    /// Headers a trusted front passes its observations in.
    pub front: FrontConfig,
}

/// Log settings.
#[derive(Debug, Clone)]
pub struct LoggingConfig {
    /// JSON lines or human text.
    pub format: LogFormat,
    /// `tracing` filter directive.
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// A config file that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub position: Option<(usize, usize)>,
    /// Dotted key path (`upstream.url`, `listener[0].address`), or empty.
    pub key: String,
    /// What was expected.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Read, parse and validate a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    parse(path, &read_file(path)?)
}

/// A config-like file's text, or the error that names it.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        position: None,
        key: String::new(),
        reason: format!("cannot read: {e}"),
    })
}

/// Parse and validate config text; `path` names the file in errors and
/// anchors relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    parse_toml(path, text, |file: FileConfig| validate(path, &base, file))
}

/// Deserialize TOML text into `T` and validate it with `validate`, whose
/// error is (dotted key path, reason); every error is located in the file
/// (`FILE:LINE:COL: key: reason`). Config files and scenario files alike.
pub fn parse_toml<T: serde::de::DeserializeOwned, V>(
    path: &Path,
    text: &str,
    validate: impl FnOnce(T) -> Result<V, (String, String)>,
) -> Result<V, ConfigError> {
    let located = |key: String, span: Option<std::ops::Range<usize>>, reason: String| {
        let span = span.or_else(|| span_of_key(text, &key));
        ConfigError {
            file: path.to_path_buf(),
            position: span.map(|s| line_col(text, s.start)),
            key,
            reason,
        }
    };
    let de = toml::Deserializer::new(text);
    let file: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = path_string(e.path());
        let inner = e.into_inner();
        let span = inner.span();
        // The TOML parser's syntax errors can come without a message (a
        // control character in a comment, for one): name what is there.
        let reason = match inner.message().trim() {
            "" => match span
                .as_ref()
                .and_then(|s| text.get(s.start..)?.chars().next())
            {
                Some(c) => format!("invalid TOML: unexpected {c:?}"),
                None => "invalid TOML".to_string(),
            },
            m => m.to_string(),
        };
        located(key, span, reason)
    })?;
    validate(file).map_err(|(key, reason)| located(key, None, reason))
}

/// serde_path_to_error's path as `a.b[0].c`.
fn path_string(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// Byte span of the value at a dotted key path (`listener[0].address`), or
/// of the deepest table on that path that exists.
fn span_of_key(text: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item: &toml_edit::Item = doc.as_item();
    let mut best = None;
    for part in key.split('.').filter(|p| !p.is_empty()) {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some(next) = item.get(name) else { break };
        item = next;
        if let Some(i) = index {
            let Some(next) = item.get(i) else { break };
            item = next;
        }
        best = item.span().or(best);
    }
    best
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let col = text
        .get(line_start..offset)
        .map_or(offset - line_start, |s| s.chars().count())
        + 1;
    (line, col)
}

type Invalid = (String, String);

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Invalid {
    (key.into(), reason.into())
}

fn nonzero_ms(key: &str, ms: u64) -> Result<Duration, Invalid> {
    if ms == 0 {
        return Err(invalid(key, "expected a duration in milliseconds above 0"));
    }
    // Timers add these to the current instant: a bound keeps that sum
    // representable (and a year is past any sensible setting).
    if ms > MAX_DURATION_MS {
        return Err(invalid(
            key,
            format!("expected at most {MAX_DURATION_MS} milliseconds (a year)"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

/// The longest duration any `_ms` setting may have: 365 days.
const MAX_DURATION_MS: u64 = 365 * 24 * 3600 * 1000;

/// A file a config names (resolved against `base`) and its text; an error
/// names the config key.
fn read_named(base: &Path, p: &str, key: String) -> Result<(PathBuf, String), Invalid> {
    let path = resolve(base, p);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((path, text)),
        Err(e) => Err(invalid(key, format!("cannot read {}: {e}", path.display()))),
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn validate(path: &Path, base: &Path, f: FileConfig) -> Result<Config, Invalid> {
    if f.listeners.is_empty() {
        return Err(invalid(
            "listener",
            "expected at least one [[listener]] with an address",
        ));
    }
    let mut listeners = Vec::with_capacity(f.listeners.len());
    for (i, l) in f.listeners.iter().enumerate() {
        let key = format!("listener[{i}].address");
        let address: SocketAddr = l.address.parse().map_err(|_| {
            invalid(
                &key,
                format!(
                    "expected IP:PORT such as \"0.0.0.0:8443\" or \"[::1]:8080\", got {:?}",
                    l.address
                ),
            )
        })?;
        if listeners
            .iter()
            .any(|o: &ListenerConfig| o.address == address && address.port() != 0)
        {
            return Err(invalid(key, format!("address {address} is listed twice")));
        }
        let tls = match &l.tls {
            None => None,
            Some(t) => {
                let cert_path = resolve(base, &t.cert_path);
                let key_path = resolve(base, &t.key_path);
                for (k, p) in [("cert_path", &cert_path), ("key_path", &key_path)] {
                    if !p.is_file() {
                        return Err(invalid(
                            format!("listener[{i}].tls.{k}"),
                            format!(
                                "expected a readable PEM file, {} does not exist",
                                p.display()
                            ),
                        ));
                    }
                }
                Some(TlsFiles {
                    cert_path,
                    key_path,
                })
            }
        };
        listeners.push(ListenerConfig {
            address,
            tls,
            proxy_protocol: l.proxy_protocol,
        });
    }

    let u = &f.upstream;
    let uri: Uri = u.url.parse().map_err(|_| {
        invalid(
            "upstream.url",
            format!("expected an http:// or https:// URL, got {:?}", u.url),
        )
    })?;
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::HTTP,
        Some("https") => Scheme::HTTPS,
        _ => {
            return Err(invalid(
                "upstream.url",
                format!("expected an http:// or https:// URL, got {:?}", u.url),
            ))
        }
    };
    let authority = uri.authority().cloned().ok_or_else(|| {
        invalid(
            "upstream.url",
            format!("expected a host in the URL, got {:?}", u.url),
        )
    })?;
    if uri.query().is_some() {
        return Err(invalid("upstream.url", "expected no query string"));
    }
    let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
    let host = match authority.port_u16() {
        Some(port) if port != default_port => format!("{}:{port}", authority.host()),
        _ => authority.host().to_string(),
    };
    let host = http::HeaderValue::try_from(host).map_err(|_| {
        invalid(
            "upstream.url",
            format!("expected a host in the URL, got {:?}", u.url),
        )
    })?;
    let path_prefix = uri.path().trim_end_matches('/').to_string();
    let ca_path = match &u.ca_path {
        None => None,
        Some(p) => {
            let p = resolve(base, p);
            if !p.is_file() {
                return Err(invalid(
                    "upstream.ca_path",
                    format!(
                        "expected a readable PEM file, {} does not exist",
                        p.display()
                    ),
                ));
            }
            Some(p)
        }
    };
    let upstream = UpstreamConfig {
        scheme,
        authority,
        host,
        path_prefix,
        ca_path,
        connect_timeout: nonzero_ms("upstream.connect_timeout_ms", u.connect_timeout_ms)?,
        first_byte_timeout: nonzero_ms("upstream.first_byte_timeout_ms", u.first_byte_timeout_ms)?,
        idle_timeout: nonzero_ms("upstream.idle_timeout_ms", u.idle_timeout_ms)?,
        pool_idle_timeout: nonzero_ms("upstream.pool_idle_timeout_ms", u.pool_idle_timeout_ms)?,
    };

    let l = &f.limits;
    if l.max_request_body_bytes == 0 {
        return Err(invalid(
            "limits.max_request_body_bytes",
            "expected a size in bytes above 0",
        ));
    }
    if l.max_connections == 0 {
        return Err(invalid(
            "limits.max_connections",
            "expected a count above 0",
        ));
    }
    let limits = Limits {
        max_request_body_bytes: l.max_request_body_bytes,
        request_head_timeout: nonzero_ms(
            "limits.request_head_timeout_ms",
            l.request_head_timeout_ms,
        )?,
        handshake_timeout: nonzero_ms("limits.handshake_timeout_ms", l.handshake_timeout_ms)?,
        max_connections: l.max_connections as usize,
        max_connections_per_address: l.max_connections_per_address as usize,
        idle_connection_timeout: nonzero_ms(
            "limits.idle_connection_timeout_ms",
            l.idle_connection_timeout_ms,
        )?,
        body_read_timeout: nonzero_ms("limits.body_read_timeout_ms", l.body_read_timeout_ms)?,
        min_body_bytes_per_second: l.min_body_bytes_per_second,
        write_stall_timeout: nonzero_ms("limits.write_stall_timeout_ms", l.write_stall_timeout_ms)?,
        h2_keepalive_interval: (l.h2_keepalive_interval_ms > 0)
            .then(|| Duration::from_millis(l.h2_keepalive_interval_ms)),
        h2_keepalive_timeout: nonzero_ms(
            "limits.h2_keepalive_timeout_ms",
            l.h2_keepalive_timeout_ms,
        )?,
    };

    let workers = match f.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n if n > 1024 => return Err(invalid("server.workers", "expected 0 (auto) to 1024")),
        n => n as usize,
    };
    let server = ServerConfig {
        workers,
        shutdown_grace: Duration::from_millis(f.server.shutdown_grace_ms),
    };

    let fingerprint = validate_fingerprint(base, &f.fingerprint)?;
    let identity = validate_identity(&f.identity)?;
    if f.api.inspect_max_body_bytes == 0 {
        return Err(invalid(
            "api.inspect_max_body_bytes",
            "expected a size in bytes above 0",
        ));
    }
    let api = ApiConfig {
        inspect_max_body_bytes: f.api.inspect_max_body_bytes,
        on_uninspectable: match f.api.on_uninspectable.as_str() {
            "refuse" => Uninspectable::Refuse,
            "strictest" => Uninspectable::Strictest,
            other => {
                return Err(invalid(
                    "api.on_uninspectable",
                    format!("expected \"refuse\" or \"strictest\", got {other:?}"),
                ))
            }
        },
        prompt_cache_entries: f.api.prompt_cache_entries,
    };
    if api.prompt_cache_entries > MAX_PROMPT_CACHE_ENTRIES {
        return Err(invalid(
            "api.prompt_cache_entries",
            format!(
                "expected at most {MAX_PROMPT_CACHE_ENTRIES} (about 1 GiB of memory), got {}",
                api.prompt_cache_entries
            ),
        ));
    }
    let tiers = validate_tiers(&f.tiers)?;
    let accounts = validate_accounts(base, &f.accounts, &tiers)?;
    // Detection first: its phrase lists are the stock phrases prompt
    // signatures leave out, ignored prompt files included.
    let detection = validate_detection(base, &f.detection, api.prompt_cache_entries)?;
    let cluster = validate_cluster(base, &f.cluster, detection.phrases.stock_shingles())?;
    let admin = validate_admin(base, &f.admin)?;
    if f.audit.queue_capacity == 0 {
        return Err(invalid("audit.queue_capacity", "expected a count above 0"));
    }
    if f.record.queue_capacity == 0 {
        return Err(invalid("record.queue_capacity", "expected a count above 0"));
    }
    let record = f
        .record
        .path
        .as_ref()
        .map(|p| (resolve(base, p), f.record.queue_capacity as usize));
    let audit = AuditConfig {
        path: f.audit.path.as_ref().map(|p| resolve(base, p)),
        all_requests: f.audit.all_requests,
        queue_capacity: f.audit.queue_capacity as usize,
    };

    let format = match f.logging.format.as_str() {
        "json" => LogFormat::Json,
        "text" => LogFormat::Text,
        other => {
            return Err(invalid(
                "logging.format",
                format!("expected \"json\" or \"text\", got {other:?}"),
            ))
        }
    };
    if tracing_subscriber::EnvFilter::try_new(&f.logging.level).is_err() {
        return Err(invalid(
            "logging.level",
            format!(
                "expected a tracing filter such as \"info\", got {:?}",
                f.logging.level
            ),
        ));
    }
    let logging = LoggingConfig {
        format,
        level: f.logging.level.clone(),
    };

    Ok(Config {
        source: path.to_path_buf(),
        listeners,
        upstream,
        limits,
        server,
        fingerprint,
        identity,
        api,
        tiers,
        accounts,
        cluster,
        admin,
        audit,
        record,
        detection,
        logging,
        state: validate_state(base, &f.state)?,
    })
}

fn validate_state(base: &Path, f: &file::FileState) -> Result<StateConfig, Invalid> {
    match f.backend.as_str() {
        "local" => return Ok(StateConfig::Local),
        "redis" => {}
        other => {
            return Err(invalid(
                "state.backend",
                format!("expected \"local\" or \"redis\", got {other:?}"),
            ))
        }
    }
    let urls = match &f.url {
        None => {
            return Err(invalid(
                "state.url",
                "backend = \"redis\" needs a url such as \"redis://127.0.0.1:6379/0\"",
            ))
        }
        Some(file::FileUrls::One(u)) => vec![u.clone()],
        Some(file::FileUrls::Seeds(_)) if !f.cluster => {
            return Err(invalid(
                "state.url",
                "a list of URLs names the seed nodes of a Redis Cluster: set state.cluster = \
                 true, or give one URL",
            ))
        }
        Some(file::FileUrls::Seeds(u)) if u.is_empty() => {
            return Err(invalid("state.url", "expected at least one seed node URL"))
        }
        Some(file::FileUrls::Seeds(u)) => u.clone(),
    };
    let mut scheme = None;
    for url in &urls {
        let parsed = validate_redis_url(url, f.cluster)?;
        if scheme.get_or_insert_with(|| parsed.scheme().to_string()) != parsed.scheme() {
            return Err(invalid(
                "state.url",
                "the seed nodes must all be redis:// or all rediss:// (TLS)",
            ));
        }
    }
    let tls = scheme.as_deref() == Some("rediss");
    let ca_pem = match &f.ca_path {
        None => None,
        Some(_) if !tls => {
            return Err(invalid(
                "state.ca_path",
                "a CA is only used with TLS: the url must start with rediss://",
            ))
        }
        Some(p) => {
            let path = resolve(base, p);
            let pem = std::fs::read(&path).map_err(|e| {
                invalid(
                    "state.ca_path",
                    format!("expected a readable PEM file, {}: {e}", path.display()),
                )
            })?;
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(invalid(
                    "state.ca_path",
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
            Some(pem)
        }
    };
    let password = match &f.password_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(v),
            _ => {
                return Err(invalid(
                    "state.password_env",
                    format!("the environment variable {var} is not set (or empty)"),
                ))
            }
        },
    };
    if f.pool_size == 0 || f.pool_size > 64 {
        return Err(invalid(
            "state.pool_size",
            format!("expected 1 to 64 connections, got {}", f.pool_size),
        ));
    }
    let prefix_ok = !f.key_prefix.is_empty()
        && f.key_prefix.len() <= 64
        && f.key_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if !prefix_ok {
        return Err(invalid(
            "state.key_prefix",
            format!(
                "expected 1 to 64 letters, digits, '-', '_', '.' or ':' (braces are the \
                 key's hash tag, added by distill-guard), got {:?}",
                f.key_prefix
            ),
        ));
    }
    let on_failure = match f.on_failure.as_str() {
        "local" => OnFailure::Local,
        "open" => OnFailure::Open,
        "closed" => OnFailure::Closed,
        other => {
            return Err(invalid(
                "state.on_failure",
                format!("expected \"local\", \"open\" or \"closed\", got {other:?}"),
            ))
        }
    };
    if f.breaker_failures == 0 {
        return Err(invalid(
            "state.breaker_failures",
            "expected a count above 0",
        ));
    }
    let command_timeout = nonzero_ms("state.command_timeout_ms", f.command_timeout_ms)?;
    if command_timeout > Duration::from_secs(10) {
        return Err(invalid(
            "state.command_timeout_ms",
            "expected at most 10000: every request may wait this long for Redis",
        ));
    }
    let in_flight_lease = nonzero_ms("state.in_flight_lease_ms", f.in_flight_lease_ms)?;
    if !(1000..=100_000_000).contains(&f.stream_max_entries) {
        return Err(invalid(
            "state.stream_max_entries",
            format!(
                "expected 1000 to 100000000 entries, got {}",
                f.stream_max_entries
            ),
        ));
    }
    if !(64..=1_048_576).contains(&f.stream_queue_entries) {
        return Err(invalid(
            "state.stream_queue_entries",
            format!(
                "expected 64 to 1048576 entries, got {}",
                f.stream_queue_entries
            ),
        ));
    }
    let stream = f.share_observations.then_some(StreamConfig {
        max_entries: f.stream_max_entries,
        queue_entries: f.stream_queue_entries as usize,
    });
    Ok(StateConfig::Redis(RedisConfig {
        url: urls.join(", "),
        urls,
        cluster: f.cluster,
        password,
        ca_pem,
        pool_size: f.pool_size as usize,
        command_timeout,
        connect_timeout: nonzero_ms("state.connect_timeout_ms", f.connect_timeout_ms)?,
        key_prefix: f.key_prefix.clone(),
        on_failure,
        breaker_failures: f.breaker_failures,
        breaker_open: nonzero_ms("state.breaker_open_ms", f.breaker_open_ms)?,
        manual_sync: nonzero_ms("state.manual_sync_ms", f.manual_sync_ms)?,
        in_flight_lease,
        stream,
    }))
}

/// One `[state] url` (of a server, or of a cluster's seed node).
fn validate_redis_url(url: &str, cluster: bool) -> Result<url::Url, Invalid> {
    let parsed = url::Url::parse(url).map_err(|e| {
        invalid(
            "state.url",
            format!("expected a redis:// or rediss:// URL: {e}"),
        )
    })?;
    if !matches!(parsed.scheme(), "redis" | "rediss") {
        return Err(invalid(
            "state.url",
            format!(
                "expected a redis:// or rediss:// (TLS) URL, got scheme {:?}",
                parsed.scheme()
            ),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid(
            "state.url",
            "expected a host: redis://HOST:PORT/DB",
        ));
    }
    if parsed.password().is_some() {
        return Err(invalid(
            "state.url",
            "a password in the URL would be in the config file: put it in an environment \
             variable and name that variable in state.password_env",
        ));
    }
    let db = parsed.path().trim_start_matches('/');
    if !db.is_empty() && db.parse::<u32>().is_err() {
        return Err(invalid(
            "state.url",
            format!("expected a database number after the host, got {db:?}"),
        ));
    }
    if cluster && !db.is_empty() && db != "0" {
        return Err(invalid(
            "state.url",
            format!("a Redis Cluster has database 0 only, got {db:?}"),
        ));
    }
    Ok(parsed)
}

fn validate_admin(base: &Path, f: &file::FileAdmin) -> Result<AdminConfig, Invalid> {
    let address = if f.enabled {
        let a: SocketAddr = f.address.parse().map_err(|_| {
            invalid(
                "admin.address",
                format!(
                    "expected IP:PORT such as \"127.0.0.1:9901\", got {:?}",
                    f.address
                ),
            )
        })?;
        Some(a)
    } else {
        None
    };
    let token = match (&f.token_env, &f.token) {
        (Some(var), fallback) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(v),
            _ => fallback.clone(),
        },
        (None, t) => t.clone(),
    };
    if let Some(a) = address {
        if token.is_none() && !a.ip().is_loopback() {
            return Err(invalid(
                "admin.address",
                format!(
                    "{a} is not a loopback address: set a token (admin.token_env or admin.token) \
                     or listen on 127.0.0.1 / ::1"
                ),
            ));
        }
    }
    if token.as_ref().is_some_and(|t| t.len() < 16) {
        return Err(invalid(
            "admin.token",
            "expected a token of at least 16 bytes",
        ));
    }
    if f.max_connections == 0 {
        return Err(invalid("admin.max_connections", "expected a count above 0"));
    }
    Ok(AdminConfig {
        address,
        token,
        state_path: f.state_path.as_ref().map(|p| resolve(base, p)),
        watch_config: f.watch_config,
        max_connections: f.max_connections as usize,
    })
}

fn strength(key: &str, s: &str) -> Result<Strength, Invalid> {
    match s {
        "weak" => Ok(Strength::Weak),
        "medium" => Ok(Strength::Medium),
        "strong" => Ok(Strength::Strong),
        other => Err(invalid(
            key,
            format!("expected \"weak\", \"medium\" or \"strong\", got {other:?}"),
        )),
    }
}

fn attr_kind(key: &str, s: &str) -> Result<AttrKind, Invalid> {
    AttrKind::ALL
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| {
            invalid(
                key,
                format!("expected one of ja4, http, h2, ip_prefix, asn, prompt, shape; got {s:?}"),
            )
        })
}

fn nets(key: &str, list: &[String]) -> Result<Vec<ipnet::IpNet>, Invalid> {
    list.iter()
        .map(|n| {
            n.parse::<ipnet::IpNet>().map(|n| n.trunc()).map_err(|_| {
                invalid(
                    key,
                    format!("expected a CIDR such as \"10.0.0.0/8\", got {n:?}"),
                )
            })
        })
        .collect()
}

/// Hashed (kind, value) pairs of a `[cluster.ignore]`-style table; IP
/// networks are returned separately (matched by containment).
/// Hashed attribute values and the networks among them.
type AttrValues = (Vec<(AttrKind, u64)>, Vec<ipnet::IpNet>);

fn attr_values(
    key: &str,
    base: &Path,
    v: &file::FileAttrValues,
    stock: &crate::engine::signature::StockShingles,
    files: &mut Vec<PathBuf>,
) -> Result<AttrValues, Invalid> {
    let mut out = Vec::new();
    // A prompt file stands for the prompts that start with it: its
    // signature's head keys are theirs when it fills the head region
    // (about 28 words); its tail keys only match prompts ending with it.
    for (i, p) in v.prompt_files.iter().enumerate() {
        let (path, text) = read_named(base, p, format!("{key}.prompt_files[{i}]"))?;
        let sig = crate::engine::signature::signature_with(&text, stock);
        if !sig.is_informative() {
            return Err(invalid(
                format!("{key}.prompt_files[{i}]"),
                format!("{}: too short to identify a prompt", path.display()),
            ));
        }
        out.extend(
            sig.index_keys()
                .into_iter()
                .filter(|&k| k != 0)
                .map(|k| (AttrKind::Prompt, k)),
        );
        files.push(path);
    }
    for (kind, list) in [
        (AttrKind::Ja4, &v.ja4),
        (AttrKind::Http, &v.http),
        (AttrKind::H2, &v.h2),
    ] {
        out.extend(list.iter().map(|s| (kind, attr_hash(kind, s.as_bytes()))));
    }
    out.extend(v.asn.iter().map(|a| {
        (
            AttrKind::Asn,
            attr_hash(AttrKind::Asn, a.to_string().as_bytes()),
        )
    }));
    let nets = nets(&format!("{key}.ip_prefix"), &v.ip_prefix)?;
    // A downweighted network stands for every prefix inside it: the engine
    // reports such prefixes as the network itself.
    out.extend(nets.iter().map(|n| {
        (
            AttrKind::IpPrefix,
            attr_hash(AttrKind::IpPrefix, n.to_string().as_bytes()),
        )
    }));
    Ok((out, nets))
}

fn validate_cluster(
    base: &Path,
    f: &file::FileCluster,
    stock: &crate::engine::signature::StockShingles,
) -> Result<ClusterConfig, Invalid> {
    let min_strength = strength("cluster.min_strength", &f.min_strength)?;
    let score_min_strength = strength("cluster.score_min_strength", &f.score_min_strength)?;
    let budget_min_level = crate::engine::score::Level::ALL
        .into_iter()
        .filter(|l| *l != crate::engine::score::Level::Block)
        .find(|l| l.as_str() == f.budget_min_level)
        .ok_or_else(|| {
            invalid(
                "cluster.budget_min_level",
                "expected \"allow\", \"slow\", \"degrade\" or \"throttle\"",
            )
        })?;
    if f.min_members < 2 {
        return Err(invalid("cluster.min_members", "expected 2 or more"));
    }
    if !(1..=16).contains(&f.min_prompt_bands) {
        return Err(invalid(
            "cluster.min_prompt_bands",
            "expected a count from 1 to 16 (a prompt signature has 16 bands)",
        ));
    }
    if !(f.min_prompt_bands..=16).contains(&f.late_min_prompt_bands) {
        return Err(invalid(
            "cluster.late_min_prompt_bands",
            "expected a count from min_prompt_bands to 16 (a prompt signature has 16 bands)",
        ));
    }
    if f.late_after_requests != 0 && !(64..=1 << 26).contains(&f.late_after_requests) {
        return Err(invalid(
            "cluster.late_after_requests",
            "expected 0 (off) or a count from 64 to 67108864",
        ));
    }
    if !(1..=crate::engine::link::MAX_SPILL as u32).contains(&f.max_accounts_per_value) {
        return Err(invalid(
            "cluster.max_accounts_per_value",
            "expected a count of accounts from 1 to 65536",
        ));
    }
    if f.max_index_entries < f.max_index_values {
        return Err(invalid(
            "cluster.max_index_entries",
            "expected at least max_index_values (every value holds one entry)",
        ));
    }
    if !(1..=16).contains(&f.single_band_contacts) {
        return Err(invalid(
            "cluster.single_band_contacts",
            "expected a count of accounts from 1 (every link on one band joins) to 16",
        ));
    }
    if !(1..=4).contains(&f.min_link_classes) {
        return Err(invalid(
            "cluster.min_link_classes",
            "expected 1 to 4 (client stack, network, prompt, request shape)",
        ));
    }
    let generation = nonzero_ms("cluster.generation_ms", f.generation_ms)?;
    for (k, v) in [
        ("cluster.per_member_fraction", f.per_member_fraction),
        ("cluster.growth_exponent", f.growth_exponent),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(invalid(k, "expected a number of 0 or more"));
        }
    }
    if !(f.max_multiplier.is_finite() && f.max_multiplier >= 1.0) {
        return Err(invalid(
            "cluster.max_multiplier",
            "expected a number of 1 or more",
        ));
    }
    let budget = validate_tiers(
        &[("cluster.budget".to_string(), f.budget.clone())]
            .into_iter()
            .collect(),
    )
    .map_err(|(k, r)| (k.replacen("tiers.", "", 1), r))?
    .into_values()
    .next()
    .ok_or_else(|| invalid("cluster.budget", "missing"))?;
    let mut rules = Vec::with_capacity(f.links.len());
    for (i, l) in f.links.iter().enumerate() {
        let key = format!("cluster.link[{i}]");
        if l.attributes.is_empty() {
            return Err(invalid(
                format!("{key}.attributes"),
                "expected at least one attribute",
            ));
        }
        let kinds = l
            .attributes
            .iter()
            .map(|a| attr_kind(&format!("{key}.attributes"), a))
            .collect::<Result<Vec<_>, _>>()?;
        rules.push(LinkRule {
            name: l.name.clone(),
            kinds,
            strength: strength(&format!("{key}.strength"), &l.strength)?,
            window: nanos(nonzero_ms(&format!("{key}.window_ms"), l.window_ms)?),
        });
    }
    let mut prompt_files = Vec::new();
    let (ignored, ignore_nets) =
        attr_values("cluster.ignore", base, &f.ignore, stock, &mut prompt_files)?;
    let (downweighted, downweight_nets) = attr_values(
        "cluster.downweight",
        base,
        &f.downweight,
        stock,
        &mut prompt_files,
    )?;
    let link = LinkPolicy {
        rules,
        ignored,
        downweighted,
        max_accounts_per_value: f.max_accounts_per_value as usize,
        max_values: usize::try_from(f.max_index_values).unwrap_or(usize::MAX),
        max_entries: usize::try_from(f.max_index_entries).unwrap_or(usize::MAX),
        generation: nanos(generation),
        max_links_per_request: f.max_links_per_request.max(1) as usize,
        max_linked_accounts: usize::try_from(f.max_linked_accounts).unwrap_or(usize::MAX),
        min_classes: f.min_link_classes as u8,
        min_prompt_bands: f.min_prompt_bands,
        late_after: nanos(Duration::from_millis(f.late_after_ms)),
        late_min_prompt_bands: f.late_min_prompt_bands,
        late_after_requests: f.late_after_requests,
        single_band_contacts: f.single_band_contacts,
    };
    link.validate()
        .map_err(|e| invalid("cluster", e.to_string()))?;
    Ok(ClusterConfig {
        policy: ClusterPolicy {
            enabled: f.enabled,
            min_strength,
            score_min_strength,
            budget_min_level,
            min_members: f.min_members,
            base: budget.tier("cluster"),
            per_member_fraction: f.per_member_fraction,
            growth_exponent: f.growth_exponent,
            max_multiplier: f.max_multiplier,
            link,
            ignore_nets,
            downweight_nets,
        },
        prompt_files,
    })
}

fn validate_identity(f: &file::FileIdentity) -> Result<IdentityConfig, Invalid> {
    if f.key_headers.is_empty() {
        return Err(invalid(
            "identity.key_headers",
            "expected at least one header name",
        ));
    }
    let mut key_sources = Vec::with_capacity(f.key_headers.len());
    for h in &f.key_headers {
        if h.eq_ignore_ascii_case("authorization") {
            key_sources.push(KeySource::Bearer);
        } else {
            let name = http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                invalid(
                    "identity.key_headers",
                    format!("expected header names, got {h:?}"),
                )
            })?;
            key_sources.push(KeySource::Header(name));
        }
    }
    let hash_secret = match (&f.hash_secret_env, &f.hash_secret) {
        (Some(var), fallback) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(v.into_bytes()),
            _ => fallback.as_ref().map(|s| s.clone().into_bytes()),
        },
        (None, s) => s.as_ref().map(|s| s.clone().into_bytes()),
    };
    if hash_secret.as_ref().is_some_and(|s| s.len() < 16) {
        return Err(invalid(
            "identity.hash_secret",
            "expected a secret of at least 16 bytes",
        ));
    }
    let missing_key = match f.missing_key.as_str() {
        "reject" => MissingKey::Reject,
        "anonymous" => MissingKey::Anonymous,
        other => {
            return Err(invalid(
                "identity.missing_key",
                format!("expected \"reject\" or \"anonymous\", got {other:?}"),
            ))
        }
    };
    let mut trusted_proxies = Vec::with_capacity(f.trusted_proxies.len());
    for (i, t) in f.trusted_proxies.iter().enumerate() {
        let net: ipnet::IpNet = t
            .parse()
            .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                invalid(
                    format!("identity.trusted_proxies[{i}]"),
                    format!("expected a CIDR such as \"10.0.0.0/8\" or an IP, got {t:?}"),
                )
            })?;
        trusted_proxies.push(net.trunc());
    }
    if f.ipv6_key_prefix_len > 128 {
        return Err(invalid("identity.ipv6_key_prefix_len", "expected 0 to 128"));
    }
    let account_created_header =
        header_name("identity.account_created_header", &f.account_created_header)?;
    if let Some(n) = account_created_header
        .as_ref()
        .filter(|n| client_header(n) || key_sources.contains(&KeySource::Header((*n).clone())))
    {
        return Err(invalid(
            "identity.account_created_header",
            format!(
                "expected a header the auth front sets for distill-guard alone, got {:?}",
                n.as_str()
            ),
        ));
    }
    Ok(IdentityConfig {
        key_sources,
        hash_secret,
        missing_key,
        trusted_proxies,
        ipv6_key_prefix_len: f.ipv6_key_prefix_len,
        account_created_header,
    })
}

fn validate_tiers(
    tiers: &BTreeMap<String, file::FileTier>,
) -> Result<BTreeMap<String, TierConfig>, Invalid> {
    let mut out = BTreeMap::new();
    for (name, t) in tiers {
        let key = |k: &str| format!("tiers.{name}.{k}");
        for (k, v) in [
            ("requests_per_minute", t.requests_per_minute),
            ("burst_requests", t.burst_requests),
            ("input_tokens_per_minute", t.input_tokens_per_minute),
            ("output_tokens_per_minute", t.output_tokens_per_minute),
            ("max_concurrent", u64::from(t.max_concurrent)),
        ] {
            if v == 0 {
                return Err(invalid(key(k), "expected a number above 0"));
            }
        }
        out.insert(
            name.clone(),
            TierConfig {
                requests_per_minute: t.requests_per_minute,
                burst_requests: t.burst_requests,
                input_tokens_per_minute: t.input_tokens_per_minute,
                output_tokens_per_minute: t.output_tokens_per_minute,
                max_concurrent: t.max_concurrent,
            },
        );
    }
    Ok(out)
}

fn validate_accounts(
    base: &Path,
    f: &file::FileAccounts,
    tiers: &BTreeMap<String, TierConfig>,
) -> Result<AccountsConfig, Invalid> {
    for (k, t) in [
        ("accounts.default_tier", &f.default_tier),
        ("accounts.anonymous_tier", &f.anonymous_tier),
    ] {
        if !tiers.contains_key(t) {
            return Err(invalid(
                k,
                format!(
                    "expected one of the [tiers] ({}), got {t:?}",
                    tiers.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    if f.max_tracked == 0 {
        return Err(invalid("accounts.max_tracked", "expected a count above 0"));
    }
    if f.max_tenure == 0 {
        return Err(invalid("accounts.max_tenure", "expected a count above 0"));
    }
    if f.new_accounts_per_minute_at_capacity == 0 {
        return Err(invalid(
            "accounts.new_accounts_per_minute_at_capacity",
            "expected a count above 0",
        ));
    }
    let (file, entries) = match &f.file {
        None => (None, HashMap::new()),
        Some(p) => {
            let path = resolve(base, p);
            let entries = accounts_file::load(&path, tiers)
                .map_err(|e| invalid("accounts.file", e.to_string()))?;
            (Some(path), entries)
        }
    };
    Ok(AccountsConfig {
        file,
        entries,
        default_tier: f.default_tier.clone(),
        anonymous_tier: f.anonymous_tier.clone(),
        max_tracked: usize::try_from(f.max_tracked).unwrap_or(usize::MAX),
        max_tenure: usize::try_from(f.max_tenure).unwrap_or(usize::MAX),
        tenure_path: f.tenure_path.as_ref().map(|p| resolve(base, p)),
        idle_evict: nonzero_ms("accounts.idle_evict_ms", f.idle_evict_ms)?,
        new_accounts_per_minute_at_capacity: f.new_accounts_per_minute_at_capacity,
    })
}

fn header_name(key: &str, v: &Option<String>) -> Result<Option<http::HeaderName>, Invalid> {
    match v {
        None => Ok(None),
        Some(name) => http::HeaderName::from_bytes(name.as_bytes())
            .map(Some)
            .map_err(|_| invalid(key, format!("expected an HTTP header name, got {name:?}"))),
    }
}

fn validate_fingerprint(
    base: &Path,
    f: &file::FileFingerprint,
) -> Result<FingerprintConfig, Invalid> {
    if f.ipv4_prefix_len > 32 {
        return Err(invalid("fingerprint.ipv4_prefix_len", "expected 0 to 32"));
    }
    if f.ipv6_prefix_len > 128 {
        return Err(invalid("fingerprint.ipv6_prefix_len", "expected 0 to 128"));
    }
    let mut known_clients = Vec::with_capacity(f.known_clients.len());
    for (i, k) in f.known_clients.iter().enumerate() {
        if k.user_agent_prefix.is_empty() {
            return Err(invalid(
                format!("fingerprint.known_client[{i}].user_agent_prefix"),
                "expected a non-empty user-agent prefix",
            ));
        }
        known_clients.push(KnownClient {
            name: k.name.clone(),
            user_agent_prefix: k.user_agent_prefix.clone(),
            ja4: k.ja4.clone(),
            http: k.http.clone(),
        });
    }
    let asn_db = match &f.asn_database_path {
        None => None,
        Some(p) => {
            let path = resolve(base, p);
            let db = crate::fingerprint::asn::AsnDb::open(&path)
                .map_err(|e| invalid("fingerprint.asn_database_path", e.to_string()))?;
            Some(std::sync::Arc::new(db))
        }
    };
    Ok(FingerprintConfig {
        ipv4_prefix_len: f.ipv4_prefix_len,
        ipv6_prefix_len: f.ipv6_prefix_len,
        asn_db,
        forward_ja4_header: header_name("fingerprint.forward_ja4_header", &f.forward_ja4_header)?,
        forward_http_header: header_name(
            "fingerprint.forward_http_header",
            &f.forward_http_header,
        )?,
        forward_h2_header: header_name("fingerprint.forward_h2_header", &f.forward_h2_header)?,
        known_clients,
        front: validate_front(&f.front)?,
    })
}

fn validate_front(f: &file::FileFront) -> Result<FrontConfig, Invalid> {
    let address_format = match f.address_format.as_deref() {
        None | Some("ip") => AddressFormat::Ip,
        Some("ip_port") => AddressFormat::IpPort,
        Some(other) => {
            return Err(invalid(
                "fingerprint.front.address_format",
                format!("expected \"ip\" or \"ip_port\", got {other:?}"),
            ))
        }
    };
    if f.address_format.is_some() && f.address_header.is_none() {
        return Err(invalid(
            "fingerprint.front.address_format",
            "set only with fingerprint.front.address_header",
        ));
    }
    let front = FrontConfig {
        ja4_header: header_name("fingerprint.front.ja4_header", &f.ja4_header)?,
        h2_header: header_name("fingerprint.front.h2_header", &f.h2_header)?,
        address_header: header_name("fingerprint.front.address_header", &f.address_header)?,
        address_format,
        asn_header: header_name("fingerprint.front.asn_header", &f.asn_header)?,
    };
    // A header that carries the client's own credentials or routing cannot
    // also be a front's statement: it would be stripped before forwarding.
    for (key, name) in [
        ("ja4_header", &front.ja4_header),
        ("h2_header", &front.h2_header),
        ("address_header", &front.address_header),
        ("asn_header", &front.asn_header),
    ] {
        if let Some(n) = name {
            if client_header(n) {
                return Err(invalid(
                    format!("fingerprint.front.{key}"),
                    format!(
                        "expected a header the front sets for distill-guard alone, got {:?} \
                         (it is removed before forwarding)",
                        n.as_str()
                    ),
                ));
            }
        }
    }
    Ok(front)
}

/// A header that carries the client's own credentials, body framing or
/// routing: never a front's statement.
fn client_header(n: &http::HeaderName) -> bool {
    matches!(
        n.as_str(),
        "host"
            | "authorization"
            | "x-api-key"
            | "content-type"
            | "content-length"
            | "x-forwarded-for"
            | "x-request-id"
    )
}

#[cfg(test)]
mod tests;

fn action_mode(key: &str, mode: &str, percent: u8) -> Result<ActionMode, Invalid> {
    let enforce = match mode {
        "enforce" => true,
        "shadow" => false,
        other => {
            return Err(invalid(
                format!("{key}.mode"),
                format!("expected \"enforce\" or \"shadow\", got {other:?}"),
            ))
        }
    };
    if percent > 100 {
        return Err(invalid(
            format!("{key}.enforce_percent"),
            "expected 0 to 100",
        ));
    }
    Ok(ActionMode {
        enforce,
        enforce_percent: percent,
    })
}

/// Most entries `api.prompt_cache_entries` may ask for (about 1 KiB each).
const MAX_PROMPT_CACHE_ENTRIES: usize = 1 << 20;

fn validate_detection(
    base: &Path,
    f: &file::FileDetection,
    prompt_cache_entries: usize,
) -> Result<DetectionConfig, Invalid> {
    use crate::engine::score::{Mark, ScorePolicy, Signal};
    use crate::prompt::PhraseMatcher;
    let mode = {
        let enforce = match f.mode.as_str() {
            "enforce" => true,
            "shadow" => false,
            other => {
                return Err(invalid(
                    "detection.mode",
                    format!("expected \"enforce\" or \"shadow\", got {other:?}"),
                ))
            }
        };
        if f.enforce_percent > 100 {
            return Err(invalid("detection.enforce_percent", "expected 0 to 100"));
        }
        ActionMode {
            enforce,
            enforce_percent: f.enforce_percent,
        }
    };
    let half_life = nanos(nonzero_ms("detection.half_life_ms", f.half_life_ms)?);
    if f.onset_half_life_ms >= f.half_life_ms {
        return Err(invalid(
            "detection.onset_half_life_ms",
            "expected 0 (no onset window) or less than detection.half_life_ms",
        ));
    }
    let mut score = ScorePolicy {
        half_life,
        onset_half_life: nanos(Duration::from_millis(f.onset_half_life_ms)),
        pinned_fraction: f.pinned_fraction,
        default_ceiling: f.default_model_ceiling,
        ..ScorePolicy::default()
    };
    if f.default_model_ceiling == 0 {
        return Err(invalid(
            "detection.default_model_ceiling",
            "expected a count above 0",
        ));
    }
    for (i, c) in f.model_ceilings.iter().enumerate() {
        if c.prefix.is_empty() {
            return Err(invalid(
                format!("detection.model_ceiling[{i}].prefix"),
                "expected a non-empty model-name prefix",
            ));
        }
        if c.max_output_tokens == 0 {
            return Err(invalid(
                format!("detection.model_ceiling[{i}].max_output_tokens"),
                "expected a count above 0",
            ));
        }
        if f.model_ceilings[..i].iter().any(|o| o.prefix == c.prefix) {
            return Err(invalid(
                format!("detection.model_ceiling[{i}].prefix"),
                format!(
                    "expected each prefix once; \"{}\" is listed before",
                    c.prefix
                ),
            ));
        }
        score.model_ceilings.retain(|(p, _)| *p != c.prefix);
        score
            .model_ceilings
            .push((c.prefix.clone(), c.max_output_tokens));
    }
    for (name, w) in &f.weights {
        let Some(sig) = Signal::ALL.into_iter().find(|s| s.as_str() == name) else {
            return Err(invalid(
                format!("detection.weights.{name}"),
                format!(
                    "expected one of {}",
                    Signal::ALL
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        score.weights.set(sig, *w);
    }
    let t = &f.thresholds;
    score.thresholds.slow = Mark {
        enter: t.slow_enter,
        exit: t.slow_exit,
    };
    score.thresholds.degrade = Mark {
        enter: t.degrade_enter,
        exit: t.degrade_exit,
    };
    score.thresholds.throttle = Mark {
        enter: t.throttle_enter,
        exit: t.throttle_exit,
    };
    score.thresholds.block = Mark {
        enter: t.block_enter,
        exit: t.block_exit,
    };
    score.validate().map_err(|e| {
        invalid(
            format!("detection.{}", e.field),
            format!("expected {}", e.expected),
        )
    })?;
    let matcher = if f.phrase_lists.is_empty() {
        PhraseMatcher::with_defaults()
    } else {
        let mut lists = Vec::with_capacity(f.phrase_lists.len());
        for (i, p) in f.phrase_lists.iter().enumerate() {
            let (path, text) = read_named(base, p, format!("detection.phrase_lists[{i}]"))?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("list{i}"));
            let phrases: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect();
            lists.push((name, phrases));
        }
        let refs: Vec<(&str, Vec<String>)> =
            lists.iter().map(|(n, p)| (n.as_str(), p.clone())).collect();
        PhraseMatcher::new(&refs)
    }
    .map_err(|e| invalid("detection.phrase_lists", e.to_string()))?;
    let slow = action_mode("detection.slow", &f.slow.mode, f.slow.enforce_percent)?;
    if f.slow.max_delay_ms < f.slow.min_delay_ms {
        return Err(invalid(
            "detection.slow.max_delay_ms",
            "expected at least min_delay_ms",
        ));
    }
    if f.slow.max_concurrent == 0 {
        return Err(invalid(
            "detection.slow.max_concurrent",
            "expected a count above 0",
        ));
    }
    let degrade = action_mode(
        "detection.degrade",
        &f.degrade.mode,
        f.degrade.enforce_percent,
    )?;
    if f.degrade.max_output_tokens == 0 {
        return Err(invalid(
            "detection.degrade.max_output_tokens",
            "expected a count above 0",
        ));
    }
    let throttle = action_mode(
        "detection.throttle",
        &f.throttle.mode,
        f.throttle.enforce_percent,
    )?;
    if !(f.throttle.budget_factor > 0.0 && f.throttle.budget_factor <= 1.0) {
        return Err(invalid(
            "detection.throttle.budget_factor",
            "expected a number above 0, at most 1",
        ));
    }
    let block = action_mode("detection.block", &f.block.mode, f.block.enforce_percent)?;
    let block_cluster_after_degrade = match f.block.cluster_after_degrade_ms {
        0 => None,
        ms => Some(nonzero_ms("detection.block.cluster_after_degrade_ms", ms)?),
    };
    if !(0.0..=1.0).contains(&f.core_min_raw) {
        return Err(invalid(
            "detection.core_min_raw",
            "expected a number from 0 to 1",
        ));
    }
    if !(f.cohort_min_raw.is_finite() && f.cohort_min_raw >= 0.0) {
        return Err(invalid(
            "detection.cohort_min_raw",
            "expected a number >= 0 (above 1: no cohorts)",
        ));
    }
    if !(f.network_pool_min_raw.is_finite() && f.network_pool_min_raw >= 0.0) {
        return Err(invalid(
            "detection.network_pool_min_raw",
            "expected a number >= 0 (above 1: no network pools)",
        ));
    }
    if f.network_pool_min_members < 2 {
        return Err(invalid(
            "detection.network_pool_min_members",
            "expected a count of at least 2",
        ));
    }
    if f.cohort_min_requests == 0 {
        return Err(invalid(
            "detection.cohort_min_requests",
            "expected a count above 0",
        ));
    }
    Ok(DetectionConfig {
        enabled: f.enabled,
        policy: DetectionPolicy {
            mode,
            score,
            phrase_lists: matcher.list_names().to_vec(),
            core_min_raw: f.core_min_raw,
            cohort_min_raw: f.cohort_min_raw,
            cohort_min_requests: f.cohort_min_requests,
            network_pool_min_raw: f.network_pool_min_raw,
            network_pool_min_members: f.network_pool_min_members,
            slow,
            slow_min_delay: Duration::from_millis(f.slow.min_delay_ms),
            slow_max_delay: Duration::from_millis(f.slow.max_delay_ms),
            slow_max_concurrent: f.slow.max_concurrent,
            slow_while_requests_below: f.slow.while_requests_below,
            degrade,
            degrade_max_output_tokens: f.degrade.max_output_tokens,
            throttle,
            throttle_factor: f.throttle.budget_factor,
            block,
            block_cluster_after_degrade: block_cluster_after_degrade.map(nanos),
        },
        new_models_unix_ms: f
            .new_models
            .iter()
            .map(|m| (m.prefix.clone(), m.released_unix_ms))
            .collect(),
        phrase_list_files: f.phrase_lists.iter().map(|p| resolve(base, p)).collect(),
        phrases: std::sync::Arc::new(matcher.with_cache_entries(prompt_cache_entries)),
    })
}
