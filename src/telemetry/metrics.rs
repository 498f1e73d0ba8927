//! Process metrics as atomics, rendered in the Prometheus text exposition
//! format (`GET /metrics` on the admin listener). Hot paths only do relaxed
//! atomic adds; engine gauges are read at render time.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::engine::{Engine, LimitKind, Scope};
use crate::fingerprint::front::{Outcome as FrontOutcome, Part as FrontPart};
use crate::fingerprint::tls::HelloError;

/// Why a connection was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No complete request head within the first-request deadline.
    FirstRequest,
    /// Nothing in flight for the idle deadline (closed gracefully).
    Idle,
    /// A response waited for the client to read it past the deadline.
    WriteStall,
}

impl Expired {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Expired::FirstRequest => "first_request_timeout",
            Expired::Idle => "idle_timeout",
            Expired::WriteStall => "write_stall",
        }
    }
}

const CUT_LABELS: [Expired; 3] = [Expired::FirstRequest, Expired::Idle, Expired::WriteStall];

/// Reasons a connection is closed before HTTP, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

const REJECT_LABELS: [&str; 10] = [
    "over_cap",
    "handshake_timeout",
    "tls_handshake",
    "not_tls",
    "not_client_hello",
    "too_large",
    "truncated",
    "malformed",
    "io",
    "over_address_share",
];

impl ConnReject {
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
pub const DECISIONS: [&str; 13] = [
    "allow",
    "slow",
    "degrade",
    "throttle",
    "block",
    "unauthorized",
    "payload_too_large",
    "bad_gateway",
    "gateway_timeout",
    "invalid_request",
    "request_timeout",
    "internal",
    "other",
];

fn decision_index(d: &str) -> usize {
    DECISIONS
        .iter()
        .position(|x| *x == d)
        .unwrap_or(DECISIONS.len() - 1)
}

const SCOPES: [Scope; 3] = [Scope::Account, Scope::Cluster, Scope::Network];
const KINDS: [LimitKind; 5] = [
    LimitKind::Requests,
    LimitKind::InputTokens,
    LimitKind::OutputTokens,
    LimitKind::Concurrency,
    LimitKind::NewAccounts,
];

/// Bucket bounds in seconds, shared by the latency histograms.
const BUCKETS: [f64; 18] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 5.0, 30.0, 120.0,
];

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Record one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// The request path's outputs as counters: (dropped, write errors) of the
/// audit log and of the traffic record, where configured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outputs {
    /// The audit log.
    pub audit: Option<(u64, u64)>,
    /// The traffic record.
    pub record: Option<(u64, u64)>,
}

/// Counters and gauges of the running process.
#[derive(Debug, Default)]
pub struct Metrics {
    connections_accepted: AtomicU64,
    connections_open: AtomicI64,
    connections_rejected: [AtomicU64; REJECT_LABELS.len()],
    connections_cut: [AtomicU64; CUT_LABELS.len()],
    admin_connections_rejected: AtomicU64,
    usage_clamped: AtomicU64,
    sni_ip: AtomicU64,
    accept_errors: AtomicU64,
    /// [unparseable, too_large] × [refused, forwarded at strictest].
    uninspectable: [[AtomicU64; 2]; 2],
    /// `[fingerprint.front]` headers: part × outcome.
    front_headers: [[AtomicU64; 3]; 4],
    requests: [AtomicU64; DECISIONS.len()],
    limits_hit: [AtomicU64; SCOPES.len() * KINDS.len()],
    upstream_status: [AtomicU64; 5],
    streams_open: AtomicI64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// Time from request start to response head from the upstream.
    pub upstream_latency: Histogram,
    /// Time the proxy spends on a request before forwarding it (fingerprint,
    /// identity, body read and inspection, engine decision).
    pub proxy_overhead: Histogram,
}

/// One open client connection in `distill_guard_connections_open`.
#[derive(Debug)]
pub struct OpenConnection<'a>(&'a Metrics);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// A connection was accepted (and is now open) until the returned
    /// guard drops: on every exit of its task, a panic or a cancelled task
    /// at shutdown included.
    #[must_use = "the connection counts as open while the guard lives"]
    pub fn conn_opened(&self) -> OpenConnection<'_> {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self)
    }

    /// Connections accepted and not yet closed.
    pub fn open_connections(&self) -> i64 {
        self.connections_open.load(Ordering::Relaxed)
    }

    /// A connection was closed before HTTP for `reason`.
    pub fn conn_rejected(&self, reason: ConnReject) {
        self.connections_rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A TLS client named an IP address as SNI (illegal, RFC 6066): counted
    /// here instead of a log line per connection.
    pub fn sni_ip(&self) {
        self.sni_ip.fetch_add(1, Ordering::Relaxed);
    }

    /// `accept` on a client or admin listener failed (out of file
    /// descriptors and the like).
    pub fn accept_error(&self) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// How many accepts failed.
    pub fn accept_error_count(&self) -> u64 {
        self.accept_errors.load(Ordering::Relaxed)
    }

    /// How many TLS clients named an IP address as SNI.
    pub fn sni_ip_count(&self) -> u64 {
        self.sni_ip.load(Ordering::Relaxed)
    }

    /// The upstream reported more usage than the request allowed; the
    /// settlement was clamped.
    pub fn usage_clamped(&self) {
        self.usage_clamped.fetch_add(1, Ordering::Relaxed);
    }

    /// How many settlements were clamped.
    pub fn usage_clamped_count(&self) -> u64 {
        self.usage_clamped.load(Ordering::Relaxed)
    }

    /// An admin connection was refused: `admin.max_connections` are open.
    pub fn admin_conn_rejected(&self) {
        self.admin_connections_rejected
            .fetch_add(1, Ordering::Relaxed);
    }

    /// An LLM request body could not be inspected; `refused` or forwarded.
    pub fn uninspectable(&self, why: crate::api::Uninspected, refused: bool) {
        let w = usize::from(why == crate::api::Uninspected::TooLarge);
        self.uninspectable[w][usize::from(!refused)].fetch_add(1, Ordering::Relaxed);
    }

    /// How many uninspectable bodies were seen for `why`, `refused` or not.
    pub fn uninspectable_count(&self, why: crate::api::Uninspected, refused: bool) -> u64 {
        let w = usize::from(why == crate::api::Uninspected::TooLarge);
        self.uninspectable[w][usize::from(!refused)].load(Ordering::Relaxed)
    }

    /// A request carried a `[fingerprint.front]` header; what became of it.
    pub fn front_header(&self, part: FrontPart, outcome: FrontOutcome) {
        self.front_headers[front_index(part)][outcome_index(outcome)]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// How many front headers of `part` had `outcome`.
    pub fn front_header_count(&self, part: FrontPart, outcome: FrontOutcome) -> u64 {
        self.front_headers[front_index(part)][outcome_index(outcome)].load(Ordering::Relaxed)
    }

    /// A connection was closed by a deadline.
    pub fn conn_cut(&self, why: Expired) {
        let i = CUT_LABELS.iter().position(|x| *x == why).unwrap_or(0);
        self.connections_cut[i].fetch_add(1, Ordering::Relaxed);
    }

    /// How many connections a deadline closed for `why`.
    pub fn cut(&self, why: Expired) -> u64 {
        let i = CUT_LABELS.iter().position(|x| *x == why).unwrap_or(0);
        self.connections_cut[i].load(Ordering::Relaxed)
    }

    /// How many connections were rejected for `reason`.
    pub fn rejected(&self, reason: ConnReject) -> u64 {
        self.connections_rejected[reason.index()].load(Ordering::Relaxed)
    }

    /// Requests so far by decision (every one of [`DECISIONS`]).
    pub fn requests_by_decision(&self) -> Vec<(&'static str, u64)> {
        DECISIONS
            .iter()
            .zip(&self.requests)
            .map(|(d, n)| (*d, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// A request ended with `decision` (one of [`DECISIONS`]).
    pub fn request(&self, decision: &str) {
        self.requests[decision_index(decision)].fetch_add(1, Ordering::Relaxed);
    }

    /// A budget refused a request.
    pub fn limit_hit(&self, scope: Scope, kind: LimitKind) {
        let s = SCOPES.iter().position(|x| *x == scope).unwrap_or(0);
        let k = KINDS.iter().position(|x| *x == kind).unwrap_or(0);
        self.limits_hit[s * KINDS.len() + k].fetch_add(1, Ordering::Relaxed);
    }

    /// The upstream answered with `status`.
    pub fn upstream_status(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.upstream_status[class].fetch_add(1, Ordering::Relaxed);
    }

    /// A response body started (+1) or ended (-1) streaming.
    pub fn stream(&self, delta: i64) {
        self.streams_open.fetch_add(delta, Ordering::Relaxed);
    }

    /// A config reload was applied (`ok`) or rejected.
    pub fn reload(&self, ok: bool) {
        if ok {
            self.reloads_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.reloads_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reloads applied and rejected so far.
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed),
        )
    }

    /// Prometheus text exposition of every metric, with the engine's gauges.
    pub fn render(&self, engine: &Engine, outputs: Outputs) -> String {
        let mut out = String::with_capacity(8192);
        let counter = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

        counter(
            &mut out,
            "distill_guard_connections_accepted_total",
            "Client connections accepted.",
        );
        let _ = writeln!(
            out,
            "distill_guard_connections_accepted_total {}",
            load(&self.connections_accepted)
        );
        gauge(
            &mut out,
            "distill_guard_connections_open",
            "Client connections open now.",
            self.connections_open.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "distill_guard_connections_rejected_total",
            "Connections closed before HTTP, by reason.",
        );
        for (i, label) in REJECT_LABELS.iter().enumerate() {
            let _ = writeln!(
                out,
                "distill_guard_connections_rejected_total{{reason=\"{label}\"}} {}",
                load(&self.connections_rejected[i])
            );
        }
        counter(
            &mut out,
            "distill_guard_connections_closed_by_deadline_total",
            "Connections closed by a deadline: no first request in time, idle, or a client that stopped reading.",
        );
        for (i, why) in CUT_LABELS.iter().enumerate() {
            let _ = writeln!(
                out,
                "distill_guard_connections_closed_by_deadline_total{{reason=\"{}\"}} {}",
                why.as_str(),
                load(&self.connections_cut[i])
            );
        }
        counter(
            &mut out,
            "distill_guard_admin_connections_rejected_total",
            "Admin connections closed at once because admin.max_connections were open.",
        );
        let _ = writeln!(
            out,
            "distill_guard_admin_connections_rejected_total {}",
            load(&self.admin_connections_rejected)
        );
        counter(
            &mut out,
            "distill_guard_tls_sni_ip_total",
            "TLS ClientHellos that named an IP address as SNI (illegal; ignored by the handshake).",
        );
        let _ = writeln!(out, "distill_guard_tls_sni_ip_total {}", load(&self.sni_ip));
        counter(
            &mut out,
            "distill_guard_accept_errors_total",
            "Failed accepts on the client and admin listeners (e.g. out of file descriptors); logged at most 6 times a minute.",
        );
        let _ = writeln!(
            out,
            "distill_guard_accept_errors_total {}",
            load(&self.accept_errors)
        );
        counter(
            &mut out,
            "distill_guard_usage_clamped_total",
            "Settlements whose upstream-reported usage exceeded what the request allowed (output limit, body size) and was clamped.",
        );
        let _ = writeln!(
            out,
            "distill_guard_usage_clamped_total {}",
            load(&self.usage_clamped)
        );
        counter(
            &mut out,
            "distill_guard_uninspectable_total",
            "LLM request bodies that could not be inspected, by reason and what was done (api.on_uninspectable).",
        );
        for (w, why) in ["unparseable", "too_large"].iter().enumerate() {
            for (a, action) in ["refused", "strictest"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "distill_guard_uninspectable_total{{reason=\"{why}\",action=\"{action}\"}} {}",
                    load(&self.uninspectable[w][a])
                );
            }
        }
        counter(
            &mut out,
            "distill_guard_front_headers_total",
            "[fingerprint.front] headers requests carried, by part and outcome: used (trusted peer, well-formed), malformed (trusted peer, ignored) or untrusted (peer not in identity.trusted_proxies, ignored). All are removed before forwarding.",
        );
        for part in FrontPart::ALL {
            for outcome in FrontOutcome::ALL {
                let _ = writeln!(
                    out,
                    "distill_guard_front_headers_total{{part=\"{}\",outcome=\"{}\"}} {}",
                    part.as_str(),
                    outcome.as_str(),
                    self.front_header_count(part, outcome)
                );
            }
        }
        counter(
            &mut out,
            "distill_guard_requests_total",
            "Requests by decision.",
        );
        for (i, d) in DECISIONS.iter().enumerate() {
            let _ = writeln!(
                out,
                "distill_guard_requests_total{{decision=\"{d}\"}} {}",
                load(&self.requests[i])
            );
        }
        counter(
            &mut out,
            "distill_guard_limits_hit_total",
            "Requests refused by a budget, by scope (account, cluster) and limit.",
        );
        for (si, s) in SCOPES.iter().enumerate() {
            for (ki, k) in KINDS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "distill_guard_limits_hit_total{{scope=\"{}\",limit=\"{}\"}} {}",
                    s.as_str(),
                    k.as_str(),
                    load(&self.limits_hit[si * KINDS.len() + ki])
                );
            }
        }
        counter(
            &mut out,
            "distill_guard_upstream_responses_total",
            "Upstream response heads by status class.",
        );
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            let _ = writeln!(
                out,
                "distill_guard_upstream_responses_total{{class=\"{class}\"}} {}",
                load(&self.upstream_status[i])
            );
        }
        self.upstream_latency.render(
            &mut out,
            "distill_guard_upstream_response_seconds",
            "Time from the request's arrival to the upstream's response head.",
        );
        self.proxy_overhead.render(
            &mut out,
            "distill_guard_proxy_overhead_seconds",
            "Time the proxy spends on a request before forwarding it.",
        );
        gauge(
            &mut out,
            "distill_guard_streams_open",
            "Response bodies being streamed now.",
            self.streams_open.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "distill_guard_config_reloads_total",
            "Config reloads by result.",
        );
        let _ = writeln!(
            out,
            "distill_guard_config_reloads_total{{result=\"ok\"}} {}\n\
             distill_guard_config_reloads_total{{result=\"rejected\"}} {}",
            load(&self.reloads_ok),
            load(&self.reloads_failed)
        );

        counter(
            &mut out,
            "distill_guard_audit_dropped_total",
            "Audit records dropped because the audit queue was full.",
        );
        let (audit_dropped, audit_errors) = outputs.audit.unwrap_or_default();
        let (record_dropped, record_errors) = outputs.record.unwrap_or_default();
        let _ = writeln!(out, "distill_guard_audit_dropped_total {audit_dropped}");
        counter(
            &mut out,
            "distill_guard_output_records_total",
            "Audit log and traffic record lines that did not reach their file: dropped (queue full) or failed to write.",
        );
        for (log, dropped, errors) in [
            ("audit", audit_dropped, audit_errors),
            ("record", record_dropped, record_errors),
        ] {
            let _ = writeln!(
                out,
                "distill_guard_output_records_total{{log=\"{log}\",outcome=\"dropped\"}} {dropped}\n\
                 distill_guard_output_records_total{{log=\"{log}\",outcome=\"write_error\"}} {errors}"
            );
        }
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let as_i64u = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        gauge(
            &mut out,
            "distill_guard_tracked_accounts",
            "Accounts whose budget state is held.",
            as_i64u(engine.tracked_accounts()),
        );
        gauge(
            &mut out,
            "distill_guard_tracked_account_cap",
            "Configured cap on tracked accounts (accounts.max_tracked).",
            as_i64u(engine.policy().max_tracked),
        );
        gauge(
            &mut out,
            "distill_guard_tracked_cluster_budgets",
            "Clusters whose budget state is held.",
            as_i64u(engine.tracked_clusters()),
        );
        let stats = engine.stats();
        counter(
            &mut out,
            "distill_guard_account_evictions_total",
            "Account states dropped (idle, or over the cap).",
        );
        let _ = writeln!(
            out,
            "distill_guard_account_evictions_total {}",
            stats.evicted_accounts.load(Ordering::Relaxed)
        );
        gauge(
            &mut out,
            "distill_guard_tracked_accounts_kept_over_cap",
            "Accounts over accounts.max_tracked that are not dropped because they owe, are in flight or carry evidence.",
            as_i64(stats.kept_over_cap.load(Ordering::Relaxed)),
        );
        counter(
            &mut out,
            "distill_guard_new_accounts_refused_total",
            "New accounts refused while the account store was full (per-network new-account budget).",
        );
        let _ = writeln!(
            out,
            "distill_guard_new_accounts_refused_total {}",
            stats.new_accounts_refused.load(Ordering::Relaxed)
        );
        if let Some(l) = engine.link_stats() {
            gauge(
                &mut out,
                "distill_guard_clusters",
                "Clusters of linked accounts.",
                as_i64u(l.clusters),
            );
            gauge(
                &mut out,
                "distill_guard_linked_accounts",
                "Accounts held in clusters.",
                as_i64u(l.accounts),
            );
            gauge(
                &mut out,
                "distill_guard_link_index_values",
                "Attribute values in the linkage index.",
                as_i64u(l.values),
            );
            gauge(
                &mut out,
                "distill_guard_link_index_cap",
                "Configured cap on index values (cluster.max_index_values).",
                as_i64u(engine.policy().cluster.link.max_values),
            );
            gauge(
                &mut out,
                "distill_guard_link_index_entries",
                "Account entries in the linkage index.",
                as_i64u(l.entries),
            );
            counter(
                &mut out,
                "distill_guard_link_index_evictions_total",
                "Index values evicted by the cap while still in their window.",
            );
            let _ = writeln!(
                out,
                "distill_guard_link_index_evictions_total {}",
                l.evicted_total
            );
            gauge(
                &mut out,
                "distill_guard_link_memory_bytes",
                "Estimated bytes held by the linkage index and clusters.",
                as_i64(l.approx_bytes as u64),
            );
        }
        out
    }
}

fn front_index(part: FrontPart) -> usize {
    FrontPart::ALL.iter().position(|p| *p == part).unwrap_or(0)
}

fn outcome_index(outcome: FrontOutcome) -> usize {
    FrontOutcome::ALL
        .iter()
        .position(|o| *o == outcome)
        .unwrap_or(0)
}
