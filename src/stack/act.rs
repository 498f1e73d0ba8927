//! Phase 7, act: carry out the five-way decision. Throttle and block
//! refuse (through the one refusal function, as the API's error); slow
//! waits before forwarding; degrade rewrites the body with a clamped output
//! limit and no thinking / reasoning parameters. A body that cannot be
//! inspected cannot be degraded: at degrade or above it is refused.

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::HeaderValue;

use crate::api::ApiKind;
use crate::app::Shared;
use crate::engine::score::Level;
use crate::engine::{Decision, Ticket, Verdict};
use crate::proxy::body::RequestBody;
use crate::proxy::error::ProxyError;

use super::inspect::Inspected;

/// The refusals: the ticket of an admitted request, else why not.
pub(super) fn admitted(decision: &Decision) -> Result<&Ticket, ProxyError> {
    match &decision.verdict {
        Verdict::Throttle(hit) => Err(ProxyError::Throttled(*hit)),
        Verdict::Block { scope, by } => Err(ProxyError::Blocked {
            scope: *scope,
            by: *by,
        }),
        v => v.ticket().ok_or(ProxyError::StateUnavailable),
    }
}

/// The actions on an admitted request: restrict, degrade, slow.
pub(super) async fn phase(
    shared: &Shared,
    api: ApiKind,
    decision: &Decision,
    inspected: &mut Inspected,
    headers: &mut http::HeaderMap,
) -> Result<(), ProxyError> {
    let enforced = decision
        .detection
        .as_ref()
        .map_or(Level::Allow, |d| d.enforced);
    if inspected.uninspectable.is_some() && enforced >= Level::Degrade {
        return Err(ProxyError::Restricted);
    }
    if let Some(max) = decision.verdict.max_output() {
        let body = std::mem::replace(&mut inspected.body, RequestBody::empty());
        inspected.body = degrade(api, body, max, headers);
    }
    if let Some(delay) = decision.verdict.delay() {
        // A timer on this connection's task, not a held thread.
        tokio::time::sleep(shared.clock.real(delay)).await;
    }
    Ok(())
}

/// The degrade step: clamp the output limit and drop thinking / reasoning
/// parameters in an inspected body; the upstream gets the rewritten bytes
/// with their own length. Uninspected (streamed) bodies pass unchanged.
fn degrade(
    api: ApiKind,
    body: RequestBody,
    max: u32,
    headers: &mut http::HeaderMap,
) -> RequestBody {
    let RequestBody::Full(Some(bytes)) = &body else {
        return body;
    };
    match crate::api::inspect::rewrite_degrade(api, bytes, max) {
        Some(new) => {
            headers.remove(CONTENT_LENGTH);
            headers.insert(CONTENT_LENGTH, HeaderValue::from(new.len()));
            RequestBody::Full(Some(Bytes::from(new)))
        }
        None => body,
    }
}
