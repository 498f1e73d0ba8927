//! Process metrics as atomics, rendered in the Prometheus text exposition
//! format. Hot paths only do relaxed atomic adds.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::fingerprint::tls::HelloError;

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
}

const REJECT_LABELS: [&str; 9] = [
    "over_cap",
    "handshake_timeout",
    "tls_handshake",
    "not_tls",
    "not_client_hello",
    "too_large",
    "truncated",
    "malformed",
    "io",
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
        }
    }
}

/// Counters and gauges of the running process.
#[derive(Debug, Default)]
pub struct Metrics {
    connections_accepted: AtomicU64,
    connections_open: AtomicU64,
    connections_rejected: [AtomicU64; REJECT_LABELS.len()],
}

impl Metrics {
    /// A connection was accepted (and is now open).
    pub fn conn_opened(&self) {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    /// An accepted connection closed.
    pub fn conn_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// A connection was closed before HTTP for `reason`.
    pub fn conn_rejected(&self, reason: ConnReject) {
        self.connections_rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// How many connections were rejected for `reason`.
    pub fn rejected(&self, reason: ConnReject) -> u64 {
        self.connections_rejected[reason.index()].load(Ordering::Relaxed)
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let _ = writeln!(
            out,
            "# HELP distill_guard_connections_accepted_total Client connections accepted.\n\
             # TYPE distill_guard_connections_accepted_total counter\n\
             distill_guard_connections_accepted_total {}",
            self.connections_accepted.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP distill_guard_connections_open Client connections open now.\n\
             # TYPE distill_guard_connections_open gauge\n\
             distill_guard_connections_open {}",
            self.connections_open.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP distill_guard_connections_rejected_total Connections closed before HTTP, by reason.\n\
             # TYPE distill_guard_connections_rejected_total counter"
        );
        for (i, label) in REJECT_LABELS.iter().enumerate() {
            let _ = writeln!(
                out,
                "distill_guard_connections_rejected_total{{reason=\"{label}\"}} {}",
                self.connections_rejected[i].load(Ordering::Relaxed)
            );
        }
        out
    }
}
