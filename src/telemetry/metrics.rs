//! Process metrics with `prometheus-client`, served as OpenMetrics text
//! (`GET /metrics` on the admin listener). Every label set is a type
//! ([`EncodeLabelSet`]) whose values are enums, so a label cannot be
//! misspelt; every labelled series is resolved to its counter once, when
//! [`Metrics`] is built ([`labelled`]), so hot paths do one relaxed atomic
//! add and no map lookup, and series are written in a fixed order. Engine gauges and the audit/record counters are read at render
//! time.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{
    text, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder,
    NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Metric, Registry};

use crate::api::Uninspected;
use crate::engine::{Engine, LimitKind, Scope};
use crate::fingerprint::front::{Outcome as FrontOutcome, Part as FrontPart};
use crate::fingerprint::tls::HelloError;

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why a connection was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expired {
    /// No complete request head within the first-request deadline.
    FirstRequest,
    /// Nothing in flight for the idle deadline (closed gracefully).
    Idle,
    /// A response waited for the client to read it past the deadline.
    WriteStall,
}

impl Expired {
    const ALL: [Expired; 3] = [Expired::FirstRequest, Expired::Idle, Expired::WriteStall];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Expired::FirstRequest => "first_request_timeout",
            Expired::Idle => "idle_timeout",
            Expired::WriteStall => "write_stall",
        }
    }
}

/// Reasons a connection is closed before HTTP, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnReject {
    /// Over `limits.max_connections`.
    OverCap,
    /// No bytes (or no complete ClientHello) before the handshake deadline.
    HandshakeTimeout,
    /// rustls refused the handshake.
    TlsHandshake,
    /// The ClientHello capture rejected the bytes.
    Hello(HelloError),
    /// The socket failed during the handshake.
    Io,
    /// The peer's address already holds `limits.max_connections_per_address`.
    OverAddressShare,
}

impl ConnReject {
    const ALL: [ConnReject; 10] = [
        ConnReject::OverCap,
        ConnReject::HandshakeTimeout,
        ConnReject::TlsHandshake,
        ConnReject::Hello(HelloError::NotTls),
        ConnReject::Hello(HelloError::NotClientHello),
        ConnReject::Hello(HelloError::TooLarge),
        ConnReject::Hello(HelloError::Truncated),
        ConnReject::Hello(HelloError::Malformed),
        ConnReject::Io,
        ConnReject::OverAddressShare,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnReject::OverCap => "over_cap",
            ConnReject::HandshakeTimeout => "handshake_timeout",
            ConnReject::TlsHandshake => "tls_handshake",
            ConnReject::Hello(HelloError::NotTls) => "not_tls",
            ConnReject::Hello(HelloError::NotClientHello) => "not_client_hello",
            ConnReject::Hello(HelloError::TooLarge) => "too_large",
            ConnReject::Hello(HelloError::Truncated) => "truncated",
            ConnReject::Hello(HelloError::Malformed) => "malformed",
            ConnReject::Io => "io",
            ConnReject::OverAddressShare => "over_address_share",
        }
    }

    fn index(self) -> usize {
        match self {
            ConnReject::OverCap => 0,
            ConnReject::HandshakeTimeout => 1,
            ConnReject::TlsHandshake => 2,
            ConnReject::Hello(HelloError::NotTls) => 3,
            ConnReject::Hello(HelloError::NotClientHello) => 4,
            ConnReject::Hello(HelloError::TooLarge) => 5,
            ConnReject::Hello(HelloError::Truncated) => 6,
            ConnReject::Hello(HelloError::Malformed) => 7,
            ConnReject::Io => 8,
            ConnReject::OverAddressShare => 9,
        }
    }
}

/// Outcome of a request, as the `decision` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestOutcome {
    /// Forwarded as asked.
    Allow,
    /// Forwarded after a delay.
    Slow,
    /// Forwarded with a lower output limit.
    Degrade,
    /// Refused by a budget (429).
    Throttle,
    /// Refused by a block (403).
    Block,
    /// No usable API key (401).
    Unauthorized,
    /// Body over the limit (413).
    PayloadTooLarge,
    /// The upstream failed (502).
    BadGateway,
    /// The upstream did not answer in time (504).
    GatewayTimeout,
    /// The request was malformed (400).
    InvalidRequest,
    /// The client did not send its body in time (408).
    RequestTimeout,
    /// The proxy failed (500).
    Internal,
    /// Anything else.
    Other,
}

impl RequestOutcome {
    /// Every outcome, in the order `/metrics` and the console list them.
    pub const ALL: [RequestOutcome; 13] = [
        RequestOutcome::Allow,
        RequestOutcome::Slow,
        RequestOutcome::Degrade,
        RequestOutcome::Throttle,
        RequestOutcome::Block,
        RequestOutcome::Unauthorized,
        RequestOutcome::PayloadTooLarge,
        RequestOutcome::BadGateway,
        RequestOutcome::GatewayTimeout,
        RequestOutcome::InvalidRequest,
        RequestOutcome::RequestTimeout,
        RequestOutcome::Internal,
        RequestOutcome::Other,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestOutcome::Allow => "allow",
            RequestOutcome::Slow => "slow",
            RequestOutcome::Degrade => "degrade",
            RequestOutcome::Throttle => "throttle",
            RequestOutcome::Block => "block",
            RequestOutcome::Unauthorized => "unauthorized",
            RequestOutcome::PayloadTooLarge => "payload_too_large",
            RequestOutcome::BadGateway => "bad_gateway",
            RequestOutcome::GatewayTimeout => "gateway_timeout",
            RequestOutcome::InvalidRequest => "invalid_request",
            RequestOutcome::RequestTimeout => "request_timeout",
            RequestOutcome::Internal => "internal",
            RequestOutcome::Other => "other",
        }
    }

    /// The outcome a decision or error label names; labels without an
    /// outcome of their own (`rate_limited`, `forbidden`, `overloaded`, …)
    /// are [`RequestOutcome::Other`].
    pub fn from_label(label: &str) -> RequestOutcome {
        RequestOutcome::ALL
            .into_iter()
            .find(|o| o.as_str() == label)
            .unwrap_or(RequestOutcome::Other)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What was done with an uninspectable body (`api.on_uninspectable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UninspectableAction {
    /// Refused in the API's error shape.
    Refused,
    /// Forwarded at the account's strictest level.
    Strictest,
}

/// An upstream response's status class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusClass(u8);

/// Which way a config reload went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadResult {
    /// Applied.
    Ok,
    /// Rejected; the old config stays.
    Rejected,
}

/// Which output file a line was meant for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum OutputLog {
    Audit,
    Record,
    Stderr,
}

/// How much of a prompt was walked (the prompt cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PromptWalk {
    None,
    Rest,
    All,
}

/// What became of a line that did not reach its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum OutputOutcome {
    Dropped,
    WriteError,
}

/// Label values written as the strings `/metrics` has always used.
macro_rules! label_values {
    ($($t:ty => |$v:ident| $s:expr;)*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
                let $v = *self;
                encoder.write_str($s)
            }
        }
    )*};
}

label_values! {
    Expired => |v| v.as_str();
    ConnReject => |v| v.as_str();
    RequestOutcome => |v| v.as_str();
    Uninspected => |v| v.as_str();
    UninspectableAction => |v| match v {
        UninspectableAction::Refused => "refused",
        UninspectableAction::Strictest => "strictest",
    };
    FrontPart => |v| v.as_str();
    FrontOutcome => |v| v.as_str();
    Scope => |v| v.as_str();
    LimitKind => |v| v.as_str();
    StatusClass => |v| ["1xx", "2xx", "3xx", "4xx", "5xx"][usize::from(v.0).min(4)];
    ReloadResult => |v| match v {
        ReloadResult::Ok => "ok",
        ReloadResult::Rejected => "rejected",
    };
    OutputLog => |v| match v {
        OutputLog::Audit => "audit",
        OutputLog::Record => "record",
        OutputLog::Stderr => "stderr",
    };
    PromptWalk => |v| match v {
        PromptWalk::None => "none",
        PromptWalk::Rest => "rest",
        PromptWalk::All => "all",
    };
    OutputOutcome => |v| match v {
        OutputOutcome::Dropped => "dropped",
        OutputOutcome::WriteError => "write_error",
    };
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct RejectLabels {
    reason: ConnReject,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct CutLabels {
    reason: Expired,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct UninspectableLabels {
    reason: Uninspected,
    action: UninspectableAction,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct FrontLabels {
    part: FrontPart,
    outcome: FrontOutcome,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct DecisionLabels {
    decision: RequestOutcome,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct LimitLabels {
    scope: Scope,
    limit: LimitKind,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct ClassLabels {
    class: StatusClass,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct ReloadLabels {
    result: ReloadResult,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct PromptWalkLabels {
    walked: PromptWalk,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct OutputLabels {
    log: OutputLog,
    outcome: OutputOutcome,
}

/// Bucket bounds in seconds, shared by the latency histograms.
const BUCKETS: [f64; 18] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 5.0, 30.0, 120.0,
];

#[derive(Debug, Default)]
struct HistogramCells {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

/// A fixed-bucket latency histogram: a handle (clones share the cells) that
/// records with relaxed atomic adds and no lock, encoded by
/// `prometheus-client` as an OpenMetrics histogram.
#[derive(Debug, Clone, Default)]
pub struct Histogram(Arc<HistogramCells>);

impl Histogram {
    /// Record one observation.
    pub fn observe(&self, d: Duration) {
        let cells = &self.0;
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            cells.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        cells.count.fetch_add(1, Ordering::Relaxed);
        cells.sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> fmt::Result {
        let cells = &self.0;
        let mut buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .zip(&cells.buckets)
            .map(|(b, n)| (*b, n.load(Ordering::Relaxed)))
            .collect();
        let count = cells.count.load(Ordering::Relaxed);
        // Observations past the last bound are only in the count.
        let bounded: u64 = buckets.iter().map(|(_, n)| n).sum();
        buckets.push((f64::INFINITY, count.saturating_sub(bounded)));
        let sum = cells.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Labelled counters whose values are read at render time (they are
/// counted elsewhere, e.g. by the audit log's writer).
#[derive(Debug)]
struct ConstFamily<S>(Vec<(S, u64)>);

impl<S: EncodeLabelSet + fmt::Debug + Send + Sync + 'static> EncodeMetric for ConstFamily<S> {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> fmt::Result {
        for (labels, v) in &self.0 {
            encoder
                .encode_family(labels)?
                .encode_counter::<NoLabelSet, _, u64>(v, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Register `metric` as `name`; `help` is written as given (the library
/// adds the final full stop).
fn register(registry: &mut Registry, name: &str, help: &str, metric: impl Metric) {
    registry.register(name, help.trim_end_matches('.'), metric);
}

/// A counter family whose series are fixed when it is built: one counter
/// per label set, resolved once (no map lookup when counting), encoded in
/// the order the label sets were given.
#[derive(Debug, Clone)]
pub struct Labelled<S>(Vec<(S, Counter)>);

impl<S: EncodeLabelSet + fmt::Debug + Send + Sync + 'static> EncodeMetric for Labelled<S> {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> fmt::Result {
        for (labels, counter) in &self.0 {
            counter.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// One counter for each of `all`, and the family that encodes them with
/// the label set `labels` makes of each.
pub fn labelled<S, L: Copy, const N: usize>(
    all: [L; N],
    labels: impl Fn(L) -> S,
) -> ([Counter; N], Labelled<S>) {
    let counters: [Counter; N] = std::array::from_fn(|_| Counter::default());
    let series = all
        .iter()
        .zip(&counters)
        .map(|(l, c)| (labels(*l), c.clone()))
        .collect();
    (counters, Labelled(series))
}

/// [`labelled`] over two labels: one counter for each pair of `a` × `b`.
pub fn labelled2<S, A: Copy, B: Copy, const N: usize, const M: usize>(
    a: [A; N],
    b: [B; M],
    labels: impl Fn(A, B) -> S,
) -> ([[Counter; M]; N], Labelled<S>) {
    let counters: [[Counter; M]; N] =
        std::array::from_fn(|_| std::array::from_fn(|_| Counter::default()));
    let mut series = Vec::with_capacity(N * M);
    for (x, row) in a.iter().zip(&counters) {
        for (y, c) in b.iter().zip(row) {
            series.push((labels(*x, *y), c.clone()));
        }
    }
    (counters, Labelled(series))
}

/// The request path's outputs as counters: (dropped, write errors) of the
/// audit log and of the traffic record, where configured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outputs {
    /// The audit log.
    pub audit: Option<(u64, u64)>,
    /// The traffic record.
    pub record: Option<(u64, u64)>,
    /// The process log's queue to stderr ([`super::stderr`]): lines dropped, batches that failed to write.
    pub stderr: Option<(u64, u64)>,
    /// How prompts were walked (the prompt cache of the config in force; a reload starts a new one).
    pub prompts: Option<crate::prompt::CacheStats>,
}

/// Counters and gauges of the running process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections_accepted: Counter,
    connections_open: Gauge,
    connections_rejected: [Counter; ConnReject::ALL.len()],
    connections_cut: [Counter; Expired::ALL.len()],
    admin_connections_rejected: Counter,
    usage_clamped: Counter,
    sni_ip: Counter,
    accept_errors: Counter,
    /// [unparseable, too_large] × [refused, forwarded at strictest].
    uninspectable: [[Counter; 2]; 2],
    /// `[fingerprint.front]` headers: part × outcome.
    front_headers: [[Counter; FrontOutcome::ALL.len()]; FrontPart::ALL.len()],
    /// `[identity] account_created_header` values from trusted peers that
    /// were ignored.
    account_created_invalid: Counter,
    requests: [Counter; RequestOutcome::ALL.len()],
    /// scope × limit.
    limits_hit: [[Counter; KINDS.len()]; SCOPES.len()],
    upstream_status: [Counter; 5],
    streams_open: Gauge,
    /// [ok, rejected].
    reloads: [Counter; 2],
    /// Time from request start to response head from the upstream.
    pub upstream_latency: Histogram,
    /// Time the proxy spends on a request before forwarding it (fingerprint,
    /// identity, body read and inspection, engine decision).
    pub proxy_overhead: Histogram,
    /// Time one sweep of idle state takes on the housekeeping thread (every
    /// 10 s, and when a full store asks for room; it locks the engine's maps
    /// a shard at a time, and the linker).
    pub sweep: Histogram,
    /// Time one step of the link index's compaction holds the linker (the
    /// arena a compaction leaves is dropped after it, unlocked and untimed).
    pub link_compaction_step: Histogram,
}

const SCOPES: [Scope; 3] = [Scope::Account, Scope::Cluster, Scope::Network];
const KINDS: [LimitKind; 5] = [
    LimitKind::Requests,
    LimitKind::InputTokens,
    LimitKind::OutputTokens,
    LimitKind::Concurrency,
    LimitKind::NewAccounts,
];
const UNINSPECTED: [Uninspected; 2] = [Uninspected::Unparseable, Uninspected::TooLarge];
const ACTIONS: [UninspectableAction; 2] =
    [UninspectableAction::Refused, UninspectableAction::Strictest];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// One open client connection in `distill_guard_connections_open`.
#[derive(Debug)]
pub struct OpenConnection<'a>(&'a Metrics);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

impl Metrics {
    /// Every metric registered, every labelled series resolved.
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let connections_accepted = Counter::default();
        register(
            &mut r,
            "distill_guard_connections_accepted",
            "Client connections accepted.",
            connections_accepted.clone(),
        );
        let connections_open = Gauge::default();
        register(
            &mut r,
            "distill_guard_connections_open",
            "Client connections open now.",
            connections_open.clone(),
        );
        let (connections_rejected, family) =
            labelled(ConnReject::ALL, |reason| RejectLabels { reason });
        register(
            &mut r,
            "distill_guard_connections_rejected",
            "Connections closed before HTTP, by reason.",
            family,
        );
        let (connections_cut, family) = labelled(Expired::ALL, |reason| CutLabels { reason });
        register(
            &mut r,
            "distill_guard_connections_closed_by_deadline",
            "Connections closed by a deadline: no first request in time, idle, or a client that stopped reading.",
            family,
        );
        let admin_connections_rejected = Counter::default();
        register(
            &mut r,
            "distill_guard_admin_connections_rejected",
            "Admin connections closed at once because admin.max_connections were open.",
            admin_connections_rejected.clone(),
        );
        let sni_ip = Counter::default();
        register(
            &mut r,
            "distill_guard_tls_sni_ip",
            "TLS ClientHellos that named an IP address as SNI (illegal; ignored by the handshake).",
            sni_ip.clone(),
        );
        let accept_errors = Counter::default();
        register(
            &mut r,
            "distill_guard_accept_errors",
            "Failed accepts on the client and admin listeners (e.g. out of file descriptors); logged at most 6 times a minute.",
            accept_errors.clone(),
        );
        let usage_clamped = Counter::default();
        register(
            &mut r,
            "distill_guard_usage_clamped",
            "Settlements whose upstream-reported usage exceeded what the request allowed (output limit, body size) and was clamped.",
            usage_clamped.clone(),
        );
        let (uninspectable, family) = labelled2(UNINSPECTED, ACTIONS, |reason, action| {
            UninspectableLabels { reason, action }
        });
        register(
            &mut r,
            "distill_guard_uninspectable",
            "LLM request bodies that could not be inspected, by reason and what was done (api.on_uninspectable).",
            family,
        );
        let (front_headers, family) =
            labelled2(FrontPart::ALL, FrontOutcome::ALL, |part, outcome| {
                FrontLabels { part, outcome }
            });
        register(
            &mut r,
            "distill_guard_front_headers",
            "[fingerprint.front] headers requests carried, by part and outcome: used (trusted peer, well-formed), malformed (trusted peer, ignored) or untrusted (peer not in identity.trusted_proxies, ignored). All are removed before forwarding.",
            family,
        );
        let account_created_invalid = Counter::default();
        register(
            &mut r,
            "distill_guard_account_created_invalid",
            "[identity] account_created_header values from trusted peers that were ignored: not Unix seconds, repeated, or more than 5 minutes in the future (the engine's own tenure is used instead).",
            account_created_invalid.clone(),
        );
        let (requests, family) =
            labelled(RequestOutcome::ALL, |decision| DecisionLabels { decision });
        register(
            &mut r,
            "distill_guard_requests",
            "Requests by decision.",
            family,
        );
        let (limits_hit, family) =
            labelled2(SCOPES, KINDS, |scope, limit| LimitLabels { scope, limit });
        register(
            &mut r,
            "distill_guard_limits_hit",
            "Requests refused by a budget, by scope (account, cluster) and limit.",
            family,
        );
        let (upstream_status, family) = labelled([0, 1, 2, 3, 4], |c| ClassLabels {
            class: StatusClass(c),
        });
        register(
            &mut r,
            "distill_guard_upstream_responses",
            "Upstream response heads by status class.",
            family,
        );
        let upstream_latency = Histogram::default();
        register(
            &mut r,
            "distill_guard_upstream_response_seconds",
            "Time from the request's arrival to the upstream's response head.",
            upstream_latency.clone(),
        );
        let proxy_overhead = Histogram::default();
        register(
            &mut r,
            "distill_guard_proxy_overhead_seconds",
            "Time the proxy spends on a request before forwarding it.",
            proxy_overhead.clone(),
        );
        let sweep = Histogram::default();
        register(
            &mut r,
            "distill_guard_sweep_seconds",
            "Time one sweep of idle state takes on the housekeeping thread (every 10 s, and when a full store asks for room).",
            sweep.clone(),
        );
        let link_compaction_step = Histogram::default();
        register(
            &mut r,
            "distill_guard_link_compaction_step_seconds",
            "Time one step of the link index's compaction holds the linker.",
            link_compaction_step.clone(),
        );
        let streams_open = Gauge::default();
        register(
            &mut r,
            "distill_guard_streams_open",
            "Response bodies being streamed now.",
            streams_open.clone(),
        );
        let (reloads, family) = labelled([ReloadResult::Ok, ReloadResult::Rejected], |result| {
            ReloadLabels { result }
        });
        register(
            &mut r,
            "distill_guard_config_reloads",
            "Config reloads by result.",
            family,
        );
        Metrics {
            registry: r,
            connections_accepted,
            connections_open,
            connections_rejected,
            connections_cut,
            admin_connections_rejected,
            usage_clamped,
            sni_ip,
            accept_errors,
            uninspectable,
            front_headers,
            account_created_invalid,
            requests,
            limits_hit,
            upstream_status,
            streams_open,
            reloads,
            upstream_latency,
            proxy_overhead,
            sweep,
            link_compaction_step,
        }
    }

    /// A connection was accepted (and is now open) until the returned
    /// guard drops: on every exit of its task, a panic or a cancelled task
    /// at shutdown included.
    #[must_use = "the connection counts as open while the guard lives"]
    pub fn conn_opened(&self) -> OpenConnection<'_> {
        self.connections_accepted.inc();
        self.connections_open.inc();
        OpenConnection(self)
    }

    /// Connections accepted and not yet closed.
    pub fn open_connections(&self) -> i64 {
        self.connections_open.get()
    }

    /// A connection was closed before HTTP for `reason`.
    pub fn conn_rejected(&self, reason: ConnReject) {
        self.connections_rejected[reason.index()].inc();
    }

    /// A TLS client named an IP address as SNI (illegal, RFC 6066): counted
    /// here instead of a log line per connection.
    pub fn sni_ip(&self) {
        self.sni_ip.inc();
    }

    /// `accept` on a client or admin listener failed (out of file
    /// descriptors and the like).
    pub fn accept_error(&self) {
        self.accept_errors.inc();
    }

    /// How many accepts failed.
    pub fn accept_error_count(&self) -> u64 {
        self.accept_errors.get()
    }

    /// How many TLS clients named an IP address as SNI.
    pub fn sni_ip_count(&self) -> u64 {
        self.sni_ip.get()
    }

    /// The upstream reported more usage than the request allowed; the
    /// settlement was clamped.
    pub fn usage_clamped(&self) {
        self.usage_clamped.inc();
    }

    /// How many settlements were clamped.
    pub fn usage_clamped_count(&self) -> u64 {
        self.usage_clamped.get()
    }

    /// An admin connection was refused: `admin.max_connections` are open.
    pub fn admin_conn_rejected(&self) {
        self.admin_connections_rejected.inc();
    }

    fn uninspectable_counter(&self, why: Uninspected, refused: bool) -> &Counter {
        let w = usize::from(why == Uninspected::TooLarge);
        &self.uninspectable[w][usize::from(!refused)]
    }

    /// An LLM request body could not be inspected; `refused` or forwarded.
    pub fn uninspectable(&self, why: Uninspected, refused: bool) {
        self.uninspectable_counter(why, refused).inc();
    }

    /// How many uninspectable bodies were seen for `why`, `refused` or not.
    pub fn uninspectable_count(&self, why: Uninspected, refused: bool) -> u64 {
        self.uninspectable_counter(why, refused).get()
    }

    fn front_counter(&self, part: FrontPart, outcome: FrontOutcome) -> &Counter {
        let p = FrontPart::ALL.iter().position(|x| *x == part).unwrap_or(0);
        let o = FrontOutcome::ALL
            .iter()
            .position(|x| *x == outcome)
            .unwrap_or(0);
        &self.front_headers[p][o]
    }

    /// A request carried a `[fingerprint.front]` header; what became of it.
    pub fn front_header(&self, part: FrontPart, outcome: FrontOutcome) {
        self.front_counter(part, outcome).inc();
    }

    /// How many front headers of `part` had `outcome`.
    pub fn front_header_count(&self, part: FrontPart, outcome: FrontOutcome) -> u64 {
        self.front_counter(part, outcome).get()
    }

    /// A trusted peer's account creation time was ignored (malformed,
    /// repeated, or too far in the future).
    pub fn account_created_invalid(&self) {
        self.account_created_invalid.inc();
    }

    /// How many stated account creation times were ignored.
    pub fn account_created_invalid_count(&self) -> u64 {
        self.account_created_invalid.get()
    }

    fn cut_counter(&self, why: Expired) -> &Counter {
        let i = Expired::ALL.iter().position(|x| *x == why).unwrap_or(0);
        &self.connections_cut[i]
    }

    /// A connection was closed by a deadline.
    pub fn conn_cut(&self, why: Expired) {
        self.cut_counter(why).inc();
    }

    /// How many connections a deadline closed for `why`.
    pub fn cut(&self, why: Expired) -> u64 {
        self.cut_counter(why).get()
    }

    /// How many connections were rejected for `reason`.
    pub fn rejected(&self, reason: ConnReject) -> u64 {
        self.connections_rejected[reason.index()].get()
    }

    /// Requests so far by decision (every [`RequestOutcome`]).
    pub fn requests_by_decision(&self) -> Vec<(&'static str, u64)> {
        RequestOutcome::ALL
            .iter()
            .map(|o| (o.as_str(), self.requests[o.index()].get()))
            .collect()
    }

    /// A request ended with the decision or error labelled `decision`
    /// ([`RequestOutcome::from_label`]).
    pub fn request(&self, decision: &str) {
        self.request_outcome(RequestOutcome::from_label(decision));
    }

    /// A request ended with `outcome`.
    pub fn request_outcome(&self, outcome: RequestOutcome) {
        self.requests[outcome.index()].inc();
    }

    /// A budget refused a request.
    pub fn limit_hit(&self, scope: Scope, kind: LimitKind) {
        let s = SCOPES.iter().position(|x| *x == scope).unwrap_or(0);
        let k = KINDS.iter().position(|x| *x == kind).unwrap_or(0);
        self.limits_hit[s][k].inc();
    }

    /// The upstream answered with `status`.
    pub fn upstream_status(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.upstream_status[class].inc();
    }

    /// A response body started (+1) or ended (-1) streaming.
    pub fn stream(&self, delta: i64) {
        self.streams_open.inc_by(delta);
    }

    /// A config reload was applied (`ok`) or rejected.
    pub fn reload(&self, ok: bool) {
        self.reloads[usize::from(!ok)].inc();
    }

    /// Reloads applied and rejected so far.
    pub fn reloads(&self) -> (u64, u64) {
        (self.reloads[0].get(), self.reloads[1].get())
    }

    /// OpenMetrics text of every metric, with the engine's gauges and the
    /// output counters read now. Not terminated: more registries (the
    /// state backend's) may follow; [`finish`] ends the exposition.
    pub fn render(&self, engine: &Engine, outputs: Outputs) -> String {
        let mut out = String::with_capacity(8192);
        let _ = text::encode_registry(&mut out, &self.registry);
        let _ = text::encode_registry(&mut out, &scrape_time(engine, outputs));
        out
    }
}

/// End an exposition begun by [`Metrics::render`] (`# EOF`).
pub fn finish(out: &mut String) {
    let _ = text::encode_eof(out);
}

/// The metrics read at render time: engine gauges and counters, and what
/// the audit log and traffic record lost.
fn scrape_time(engine: &Engine, outputs: Outputs) -> Registry {
    let mut r = Registry::default();
    let gauge = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    let (audit_dropped, audit_errors) = outputs.audit.unwrap_or_default();
    let (record_dropped, record_errors) = outputs.record.unwrap_or_default();
    let (stderr_dropped, stderr_errors) = outputs.stderr.unwrap_or_default();
    register(
        &mut r,
        "distill_guard_audit_dropped",
        "Audit records dropped because the audit queue was full.",
        ConstCounter::new(audit_dropped),
    );
    let output = |log, outcome| OutputLabels { log, outcome };
    register(
        &mut r,
        "distill_guard_output_records",
        "Audit log, traffic record and process log (stderr) lines that did not reach their file: dropped (queue \
         full) or failed to write (for stderr, batches of lines).",
        ConstFamily(vec![
            (output(OutputLog::Audit, OutputOutcome::Dropped), audit_dropped),
            (output(OutputLog::Audit, OutputOutcome::WriteError), audit_errors),
            (output(OutputLog::Record, OutputOutcome::Dropped), record_dropped),
            (output(OutputLog::Record, OutputOutcome::WriteError), record_errors),
            (output(OutputLog::Stderr, OutputOutcome::Dropped), stderr_dropped),
            (output(OutputLog::Stderr, OutputOutcome::WriteError), stderr_errors),
        ]),
    );
    if let Some(p) = outputs.prompts {
        register(
            &mut r,
            "distill_guard_prompts_walked",
            "Prompts of at least 512 bytes analysed while api.prompt_cache_entries is not 0, by how much of \
             them was walked: none (the account sent the same prompt before), the part past one of its earlier \
             requests' prompts (a conversation's history sent again), or all of it. Since the config in force \
             was loaded.",
            ConstFamily(vec![
                (PromptWalkLabels { walked: PromptWalk::None }, p.whole),
                (PromptWalkLabels { walked: PromptWalk::Rest }, p.continued),
                (PromptWalkLabels { walked: PromptWalk::All }, p.walked),
            ]),
        );
    }
    let size = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    register(
        &mut r,
        "distill_guard_tracked_accounts",
        "Accounts whose budget state is held.",
        gauge(size(engine.tracked_accounts())),
    );
    register(
        &mut r,
        "distill_guard_tracked_behaviour_states",
        "Accounts whose behaviour (detection signal) state is held; it outlives idle budget state \
         while the account's requests have not decayed away, within twice accounts.max_tracked.",
        gauge(size(engine.tracked_behaviour())),
    );
    register(
        &mut r,
        "distill_guard_tracked_tenure_accounts",
        "Accounts whose age the engine remembers beyond their behaviour state, within \
         accounts.max_tenure (kept across restarts in accounts.tenure_path).",
        gauge(size(engine.tracked_tenure())),
    );
    register(
        &mut r,
        "distill_guard_tracked_account_cap",
        "Configured cap on tracked accounts (accounts.max_tracked).",
        gauge(size(engine.policy().max_tracked)),
    );
    register(
        &mut r,
        "distill_guard_tracked_cluster_budgets",
        "Clusters whose budget state is held.",
        gauge(size(engine.tracked_clusters())),
    );
    let stats = engine.stats();
    register(
        &mut r,
        "distill_guard_account_evictions",
        "Account states dropped (idle, or over the cap).",
        ConstCounter::new(stats.evicted_accounts.load(Ordering::Relaxed)),
    );
    register(
        &mut r,
        "distill_guard_tracked_accounts_kept_over_cap",
        "Accounts over accounts.max_tracked that are not dropped because they owe, are in flight or carry evidence.",
        gauge(stats.kept_over_cap.load(Ordering::Relaxed)),
    );
    register(
        &mut r,
        "distill_guard_new_accounts_refused",
        "New accounts refused while the account store was full (per-network new-account budget).",
        ConstCounter::new(stats.new_accounts_refused.load(Ordering::Relaxed)),
    );
    if let Some(l) = engine.link_stats() {
        register(
            &mut r,
            "distill_guard_clusters",
            "Clusters of linked accounts.",
            gauge(size(l.clusters)),
        );
        register(
            &mut r,
            "distill_guard_linked_accounts",
            "Accounts held in clusters.",
            gauge(size(l.accounts)),
        );
        register(
            &mut r,
            "distill_guard_link_index_values",
            "Attribute values in the linkage index.",
            gauge(size(l.values)),
        );
        register(
            &mut r,
            "distill_guard_link_index_cap",
            "Configured cap on index values (cluster.max_index_values).",
            gauge(size(engine.policy().cluster.link.max_values)),
        );
        register(
            &mut r,
            "distill_guard_link_index_entries",
            "Account entries in the linkage index.",
            gauge(size(l.entries)),
        );
        register(
            &mut r,
            "distill_guard_link_index_entries_cap",
            "Configured cap on index entries (cluster.max_index_entries).",
            gauge(size(engine.policy().cluster.link.max_entries)),
        );
        register(
            &mut r,
            "distill_guard_link_index_evictions",
            "Index values evicted by the cap while still in their window.",
            ConstCounter::new(l.evicted_total),
        );
        register(
            &mut r,
            "distill_guard_link_index_evicted_age_seconds",
            "Age of the index values the cap evicts while still in their window (moving average): how far \
             back linking reaches (0: none evicted early). Below the link windows: raise cluster.max_index_values.",
            gauge(l.evicted_age / 1_000_000_000),
        );
        register(
            &mut r,
            "distill_guard_links_refused",
            "Links refused because cluster.max_linked_accounts accounts are held in clusters: above zero, \
             campaigns seen now cannot be linked; raise the cap (links last one to two cluster.generation_ms).",
            ConstCounter::new(l.links_dropped_total),
        );
        register(
            &mut r,
            "distill_guard_link_single_band_held",
            "Links on one prompt band alone held back until one of the two accounts has met a second partner so \
             (cluster.single_band_contacts).",
            ConstCounter::new(l.single_band_held_total),
        );
        register(
            &mut r,
            "distill_guard_link_single_band_unrecorded",
            "Links on one prompt band alone that joined unchecked because the record of such contacts was full \
             (2^16 pairs a generation).",
            ConstCounter::new(l.single_band_unrecorded_total),
        );
        register(
            &mut r,
            "distill_guard_link_memory_bytes",
            "Estimated bytes held by the linkage index and clusters.",
            gauge(size(l.approx_bytes)),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Policy, Rate, Tier};

    fn engine() -> Engine {
        Engine::new(Policy::single_tier(Tier {
            name: "t".into(),
            requests: Rate::per_minute(1, 1),
            input: Rate::per_minute(1, 1),
            output: Rate::per_minute(1, 1),
            max_concurrent: 1,
        }))
    }

    #[test]
    fn series_keep_their_names_and_label_values() {
        let m = Metrics::new();
        m.request("allow");
        m.request("rate_limited");
        m.conn_rejected(ConnReject::Hello(HelloError::NotTls));
        m.limit_hit(Scope::Cluster, LimitKind::OutputTokens);
        m.uninspectable(Uninspected::TooLarge, false);
        m.upstream_status(503);
        m.reload(false);
        m.account_created_invalid();
        m.proxy_overhead.observe(Duration::from_micros(30));
        m.sweep.observe(Duration::from_millis(7));
        m.link_compaction_step.observe(Duration::from_micros(200));
        let mut text = m.render(&engine(), Outputs::default());
        finish(&mut text);
        for line in [
            "# TYPE distill_guard_requests counter",
            "distill_guard_requests_total{decision=\"allow\"} 1",
            "distill_guard_requests_total{decision=\"other\"} 1",
            "distill_guard_requests_total{decision=\"slow\"} 0",
            "distill_guard_connections_rejected_total{reason=\"not_tls\"} 1",
            "distill_guard_limits_hit_total{scope=\"cluster\",limit=\"output_tokens\"} 1",
            "distill_guard_uninspectable_total{reason=\"too_large\",action=\"strictest\"} 1",
            "distill_guard_upstream_responses_total{class=\"5xx\"} 1",
            "distill_guard_config_reloads_total{result=\"rejected\"} 1",
            "distill_guard_account_created_invalid_total 1",
            "distill_guard_output_records_total{log=\"record\",outcome=\"write_error\"} 0",
            "distill_guard_proxy_overhead_seconds_count 1",
            "distill_guard_proxy_overhead_seconds_bucket{le=\"+Inf\"} 1",
            "distill_guard_sweep_seconds_count 1",
            "distill_guard_sweep_seconds_bucket{le=\"0.01\"} 1",
            "distill_guard_link_compaction_step_seconds_count 1",
            "distill_guard_link_compaction_step_seconds_bucket{le=\"0.00025\"} 1",
            "distill_guard_tracked_account_cap 1000000",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(m.requests_by_decision().len(), RequestOutcome::ALL.len());
    }

    #[test]
    fn every_outcome_label_reads_back_as_itself() {
        for o in RequestOutcome::ALL {
            assert_eq!(RequestOutcome::from_label(o.as_str()), o);
        }
        assert_eq!(
            RequestOutcome::from_label("forbidden"),
            RequestOutcome::Other
        );
    }
}
