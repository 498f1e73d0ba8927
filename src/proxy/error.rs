//! Failures of the forward step, which side caused them, and the one place
//! that turns a failure or refusal into a response in the API's own error
//! shape.

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::api::{self, ErrorKind, ErrorShape};
use crate::engine::{LimitHit, LimitKind, SECOND};
use crate::proxy::body::ResponseBody;

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Downstream: the client sent a body over the limit.
    #[error("request body exceeds {0} bytes")]
    BodyTooLarge(u64),
    /// Downstream: the client's request was unusable.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Downstream: the client's body stalled or crawled past the limits.
    #[error("{0}")]
    BodyTimeout(crate::proxy::body::BodyTimeout),
    /// Downstream: no API key, and anonymous access is off.
    #[error("no API key")]
    Unauthorized,
    /// Upstream: no connection could be made.
    #[error("upstream unreachable: {0}")]
    UpstreamConnect(String),
    /// Upstream: no response head within the first-byte timeout.
    #[error("upstream did not answer within {0:?}")]
    UpstreamTimeout(std::time::Duration),
    /// Upstream: the exchange failed after connecting.
    #[error("upstream failed: {0}")]
    Upstream(String),
    /// Internal: the shared state store cannot answer and `[state]
    /// on_failure = "closed"` refuses rather than decide without it.
    #[error("shared state unavailable")]
    StateUnavailable,
}

impl ProxyError {
    /// The error kind the client sees.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ProxyError::BodyTooLarge(_) => ErrorKind::PayloadTooLarge,
            ProxyError::BadRequest(_) => ErrorKind::InvalidRequest,
            ProxyError::BodyTimeout(_) => ErrorKind::RequestTimeout,
            ProxyError::Unauthorized => ErrorKind::Unauthorized,
            ProxyError::UpstreamConnect(_) | ProxyError::Upstream(_) => ErrorKind::BadGateway,
            ProxyError::UpstreamTimeout(_) => ErrorKind::GatewayTimeout,
            ProxyError::StateUnavailable => ErrorKind::Overloaded,
        }
    }

    /// The message the client sees (no internals beyond the failing side).
    pub fn client_message(&self) -> String {
        match self {
            ProxyError::BodyTooLarge(n) => format!("request body exceeds the limit of {n} bytes"),
            ProxyError::BadRequest(m) => m.clone(),
            ProxyError::BodyTimeout(t) => t.to_string(),
            ProxyError::Unauthorized => {
                "missing API key: send it in x-api-key or as Authorization: Bearer".into()
            }
            ProxyError::UpstreamConnect(_) => "the upstream API could not be reached".into(),
            ProxyError::UpstreamTimeout(_) => "the upstream API did not answer in time".into(),
            ProxyError::Upstream(_) => "the upstream API connection failed".into(),
            ProxyError::StateUnavailable => {
                "rate limits cannot be checked right now; retry shortly".into()
            }
        }
    }

    /// Seconds after which a retry may succeed, when the failure says.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            ProxyError::StateUnavailable => Some(1),
            _ => None,
        }
    }
}

/// A response made here, in the API's error shape.
pub fn error_response(shape: ErrorShape, kind: ErrorKind, message: &str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(api::error_body(shape, kind, message)));
    *r.status_mut() =
        StatusCode::from_u16(api::status(kind)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(SECOND).max(1)
}

/// 429 for a spent budget: `retry-after` in whole seconds (rounded up), the
/// IETF `RateLimit-Policy` / `RateLimit` headers naming the budget, and a
/// body in the API's shape that says which limit was hit.
pub fn throttle_response(shape: ErrorShape, hit: &LimitHit) -> Response<ResponseBody> {
    let retry = ceil_secs(hit.retry_after);
    let name = format!("{}-{}", hit.scope.as_str(), hit.kind.as_str());
    let (policy, quota_text) = match (hit.kind, hit.quota) {
        (LimitKind::Concurrency, _) | (_, None) => (
            format!("\"{name}\";q={}", hit.max_concurrent),
            format!("{} at once", hit.max_concurrent),
        ),
        (_, Some(q)) => (
            format!("\"{name}\";q={};w={}", q.per_period(), q.period_secs()),
            format!("{} per {} s", q.per_period(), q.period_secs()),
        ),
    };
    let state = format!(
        "\"{name}\";r={};t={}",
        hit.remaining,
        ceil_secs(hit.reset_after.max(hit.retry_after))
    );
    let message = format!(
        "rate limit exceeded: this {}'s {} budget ({quota_text}) is used up; retry in {retry} s",
        hit.scope.as_str(),
        hit.kind.describe(),
    );
    let mut r = error_response(shape, ErrorKind::RateLimited, &message);
    let h = r.headers_mut();
    h.insert(http::header::RETRY_AFTER, HeaderValue::from(retry));
    if let Ok(v) = HeaderValue::try_from(policy) {
        h.insert("ratelimit-policy", v);
    }
    if let Ok(v) = HeaderValue::try_from(state) {
        h.insert("ratelimit", v);
    }
    r
}
