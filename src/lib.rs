//! distill-guard: an edge reverse proxy for LLM model APIs that stops
//! distillation campaigns inline.
//!
//! Modules are declared in the order of the request path (see
//! `../shared/DESIGN.md`); [`stack`] is the one place that orders the steps.
//! [`app`] (the process and its connections, as every step sees them) comes
//! first, its `AsyncWrite` delegation macro being used by [`server`];
//! [`telemetry`] holds the outputs of the path. `tests/module_graph.rs`
//! keeps the imports between these modules free of circles.

#[macro_use]
pub mod app;
pub mod config;
pub mod telemetry;
pub mod server;
pub mod fingerprint;
pub mod identity;
pub mod api;
pub mod prompt;
pub mod engine;
pub mod state;
pub mod proxy;
pub mod stack;
pub mod admin;
pub mod replay;
pub mod simulate;
pub mod mock;
pub mod demo;
