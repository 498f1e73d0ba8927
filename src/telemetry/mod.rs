//! Outputs of the request path: Prometheus [`metrics`], the [`audit`] log
//! and the traffic record (JSON lines), the process log's queue to
//! [`stderr`], the fingerprint [`indicators`] of
//! clusters, and what the console shows of them ([`recent`] decisions,
//! score [`history`]). Written by the request path and the server, read by
//! the admin API; it imports neither.

pub mod audit;
pub mod history;
pub mod indicators;
pub mod metrics;
pub mod recent;
pub mod stderr;
