//! Why a request is not forwarded (a refusal of the guard, or a failure and
//! which side caused it), and [`refuse`]: the one function that turns any of
//! them into a response in the API's own error shape.

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::api::{self, ErrorKind, ErrorShape};
use crate::engine::{Blocker, LimitHit, LimitKind, Scope, SECOND};
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
    /// Refused: a budget is spent (429 with `RateLimit` headers).
    #[error("{} {} budget spent", .0.scope.as_str(), .0.kind.as_str())]
    Throttled(LimitHit),
    /// Refused: the account or its cluster is blocked (403).
    #[error("{} blocked", scope.as_str())]
    Blocked {
        /// Whose block.
        scope: Scope,
        /// An admin's or detection's.
        by: Blocker,
    },
    /// Refused: detection restricts the account at degrade or above and its
    /// body cannot be inspected, so it cannot be degraded (429).
    #[error("restricted and uninspectable")]
    Restricted,
    /// Internal: the guard was embedded without what it needs, or work handed
    /// to the blocking pool did not come back (the runtime is shutting down).
    #[error("{0}")]
    Internal(&'static str),
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
            ProxyError::Throttled(_) | ProxyError::Restricted => ErrorKind::RateLimited,
            ProxyError::Blocked { .. } => ErrorKind::Forbidden,
            ProxyError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The access log's and the metrics' word for the outcome: a refusal of
    /// the guard is named for its action (throttle, block), a failure for
    /// its error kind.
    pub fn label(&self) -> &'static str {
        match self {
            ProxyError::Throttled(_) | ProxyError::Restricted => "throttle",
            ProxyError::Blocked { .. } => "block",
            e => e.kind().label(),
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
            ProxyError::Throttled(hit) => format!(
                "rate limit exceeded: this {}'s {} budget ({}) is used up; retry in {} s",
                hit.scope.as_str(),
                hit.kind.describe(),
                quota_text(hit),
                ceil_secs(hit.retry_after),
            ),
            ProxyError::Blocked {
                scope,
                by: Blocker::Detection,
            } => format!(
                "this {}'s traffic matches a model-distillation campaign and is blocked",
                scope.as_str()
            ),
            ProxyError::Blocked {
                scope,
                by: Blocker::Admin,
            } => format!("this {} is blocked", scope.as_str()),
            ProxyError::Restricted => "this account's traffic is restricted and this request \
                                       body cannot be inspected; send a JSON body the API accepts"
                .into(),
            ProxyError::Internal(why) => format!("internal error: {why}"),
        }
    }

    /// Seconds after which a retry may succeed, when the failure says.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::StateUnavailable => Some(1),
            ProxyError::Restricted => Some(60),
            ProxyError::Throttled(hit) => Some(ceil_secs(hit.retry_after)),
            _ => None,
        }
    }
}

/// The one refusal function: any refusal or failure as a response in the
/// API's error shape, with `retry-after` when a retry can succeed and, for
/// a spent budget, the IETF `RateLimit-Policy` / `RateLimit` headers naming
/// it.
pub fn refuse<B>(shape: ErrorShape, e: &ProxyError) -> Response<ResponseBody<B>> {
    let mut r = error_response(shape, e.kind(), &e.client_message());
    let h = r.headers_mut();
    if let Some(s) = e.retry_after() {
        h.insert(http::header::RETRY_AFTER, HeaderValue::from(s));
    }
    if let ProxyError::Throttled(hit) = e {
        let (policy, state) = ratelimit_headers(hit);
        if let Ok(v) = HeaderValue::try_from(policy) {
            h.insert("ratelimit-policy", v);
        }
        if let Ok(v) = HeaderValue::try_from(state) {
            h.insert("ratelimit", v);
        }
    }
    r
}

/// A response made here, in the API's error shape.
fn error_response<B>(
    shape: ErrorShape,
    kind: ErrorKind,
    message: &str,
) -> Response<ResponseBody<B>> {
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

/// The quota that was hit, in words.
fn quota_text(hit: &LimitHit) -> String {
    match (hit.kind, hit.quota) {
        (LimitKind::Concurrency, _) | (_, None) => format!("{} at once", hit.max_concurrent),
        (_, Some(q)) => format!("{} per {} s", q.per_period(), q.period_secs()),
    }
}

/// The `RateLimit-Policy` and `RateLimit` header values of a spent budget.
fn ratelimit_headers(hit: &LimitHit) -> (String, String) {
    let name = format!("{}-{}", hit.scope.as_str(), hit.kind.as_str());
    let policy = match (hit.kind, hit.quota) {
        (LimitKind::Concurrency, _) | (_, None) => format!("\"{name}\";q={}", hit.max_concurrent),
        (_, Some(q)) => format!("\"{name}\";q={};w={}", q.per_period(), q.period_secs()),
    };
    let state = format!(
        "\"{name}\";r={};t={}",
        hit.remaining,
        ceil_secs(hit.reset_after.max(hit.retry_after))
    );
    (policy, state)
}
