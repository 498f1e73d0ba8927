//! The request path, in order — the one place that knows it:
//!
//! ```text
//! request id → API kind → body limit → forward upstream → response hygiene
//! ```
//!
//! Each step is a plain function in its own module; this file only calls them
//! in sequence and turns any failure into a response in the API's own error
//! shape. Every response, refusals included, carries `x-request-id`.

use http::header::CONTENT_LENGTH;
use http::{Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use tracing::debug;

use crate::api::ApiKind;
use crate::proxy::body::{RequestBody, ResponseBody};
use crate::proxy::error::{error_response, ProxyError};
use crate::proxy::headers::{self, X_REQUEST_ID};
use crate::server::{ConnInfo, Worker};

/// Serve one client request.
pub async fn handle(
    worker: &Worker,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let request_id = headers::request_id(req.headers());
    let api = ApiKind::from_path(req.uri().path());
    let mut resp = match proxy_request(worker, conn, api, &request_id, req).await {
        Ok(r) => r,
        Err(e) => {
            debug!(request_id = ?request_id, error = %e, "request failed");
            error_response(api.error_shape(), e.kind(), &e.client_message())
        }
    };
    resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
    resp
}

async fn proxy_request(
    worker: &Worker,
    conn: &ConnInfo,
    _api: ApiKind,
    request_id: &http::HeaderValue,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let config = worker.shared.config.load();
    let limit = config.limits.max_request_body_bytes;
    let (parts, body) = req.into_parts();
    if let Some(len) = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit {
            return Err(ProxyError::BodyTooLarge(limit));
        }
    }
    let body = if body.is_end_stream() {
        RequestBody::empty()
    } else {
        RequestBody::Stream {
            prefix: None,
            rest: body,
            remaining: limit,
            limit,
        }
    };

    let upstream = crate::proxy::forward(
        &worker.client,
        &config.upstream,
        parts,
        body,
        conn.peer.ip(),
        conn.tls,
        request_id,
    )
    .await?;

    let (mut parts, body) = upstream.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    let body = ResponseBody::upstream(body, config.upstream.idle_timeout, None);
    Ok(Response::from_parts(parts, body))
}
