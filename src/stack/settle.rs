//! Phases 9 and 10, meter and settle: what an admitted request actually
//! cost, metered from the response as it streams and settled exactly once —
//! when the body ends, fails, or is dropped because the client went away —
//! against the budgets and signals that admitted it.

use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;

use crate::api::meter::UsageMeter;
use crate::api::ApiKind;
use crate::app::Shared;
use crate::engine::{Ticket, Usage, Verdict};
use crate::proxy::body::ResponseObserver;
use crate::replay::TrafficRecord;

use super::inspect::Inspected;

/// What the upstream may report at most: the output limit the request was
/// forwarded with, times its choices. Input is bounded only by what no
/// model reads: a body's bytes are no bound (stored responses, files and
/// tool results count as input without being in the body).
fn ceiling(inspected: &Inspected, verdict: &Verdict) -> Usage {
    let limit = inspected.max_output.map_or(MAX_OUTPUT_UNKNOWN, |m| {
        verdict.max_output().map_or(m, |d| d.min(m))
    });
    Usage {
        input_tokens: Some(MAX_INPUT_BELIEVED),
        output_tokens: u64::from(limit).saturating_mul(u64::from(inspected.choices)),
    }
}

/// The output ceiling of a request whose output limit is unknown (the
/// OpenAI APIs allow leaving it out).
const MAX_OUTPUT_UNKNOWN: u32 = 1 << 20;

/// The most input tokens an upstream report is believed for one request:
/// past any model's context window, far short of a 4e9 that would mean a
/// retry-after of years.
const MAX_INPUT_BELIEVED: u64 = 1 << 24;

/// What the engine is owed for an admitted request: settled once, when the
/// response body ends, fails or is dropped (client gone), with the usage
/// metered from the stream.
pub(super) struct Settlement {
    shared: Arc<Shared>,
    ticket: Option<Ticket>,
    /// Where the ticket was charged (settled there too).
    receipt: crate::state::Receipt,
    /// The most the upstream's reported usage is believed.
    ceiling: Usage,
    meter: Option<UsageMeter>,
    streaming: bool,
    record: Option<TrafficRecord>,
}

impl Settlement {
    /// What `ticket` owes, charged where `receipt` says; `record` is the
    /// request's traffic-record line, written when it settles.
    pub(super) fn new(
        shared: Arc<Shared>,
        (ticket, receipt): (Ticket, crate::state::Receipt),
        inspected: &Inspected,
        verdict: &Verdict,
        record: Option<TrafficRecord>,
    ) -> Self {
        Settlement {
            shared,
            ticket: Some(ticket),
            receipt,
            ceiling: ceiling(inspected, verdict),
            meter: None,
            streaming: false,
            record,
        }
    }

    /// Phase 9, meter: an LLM endpoint's successful response is metered as
    /// it streams (the usage it reports, else its text estimated).
    pub(super) fn meter(&mut self, api: ApiKind, head: &http::response::Parts) {
        if api != ApiKind::Other && head.status.is_success() {
            let streaming = head
                .headers
                .get(CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            self.meter = Some(UsageMeter::new(api, streaming));
        }
    }

    /// The response body starts streaming to the client.
    pub(super) fn start_stream(&mut self) {
        self.streaming = true;
        self.shared.metrics.stream(1);
    }

    fn settle(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let reported = match self.meter.take() {
            Some(m) => {
                let u = m.finish();
                Usage {
                    input_tokens: u.input_tokens.map(u64::from),
                    output_tokens: u64::from(u.output_tokens),
                }
            }
            None => Usage::default(),
        };
        let usage = Usage {
            input_tokens: match (reported.input_tokens, self.ceiling.input_tokens) {
                (Some(r), Some(c)) => Some(r.min(c)),
                (r, _) => r,
            },
            output_tokens: reported.output_tokens.min(self.ceiling.output_tokens),
        };
        if usage != reported {
            self.shared.metrics.usage_clamped();
        }
        self.shared.state.settle(
            &self.shared.engine,
            &ticket,
            self.receipt,
            usage,
            self.shared.clock.now(),
        );
        if let (Some(log), Some(mut r)) = (&self.shared.record, self.record.take()) {
            r.output_tokens = usage.output_tokens;
            log.record(r);
        }
        if self.streaming {
            self.streaming = false;
            self.shared.metrics.stream(-1);
        }
    }
}

impl ResponseObserver for Settlement {
    fn on_data(&mut self, data: &Bytes) {
        if let Some(m) = self.meter.as_mut() {
            m.feed(data);
        }
    }

    fn on_end(&mut self, _complete: bool) {
        self.settle();
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        self.settle();
    }
}
