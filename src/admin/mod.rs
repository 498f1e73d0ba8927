//! Admin API and metrics (operations).

pub mod metrics;
