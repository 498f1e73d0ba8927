//! The request path, in order — the one place that knows it:
//!
//! ```text
//! request id → API kind → fingerprint → body limit → forward upstream
//!   → response hygiene
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
use crate::config::Config;
use crate::fingerprint::{self, ClientFingerprint, HttpFingerprint};
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
    let fp = client_fingerprint(&config, conn, &req);
    let limit = config.limits.max_request_body_bytes;
    let (mut parts, body) = req.into_parts();
    forward_fingerprint(&config, &fp, &mut parts.headers);
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

/// The fingerprint step: connection-level parts from the accept path, the
/// request head's HTTP fingerprint from the tap, the network prefix and the
/// consistency flag.
fn client_fingerprint(
    config: &Config,
    conn: &ConnInfo,
    req: &Request<Incoming>,
) -> ClientFingerprint {
    let fc = &config.fingerprint;
    let (h2, http) = match (&conn.tap, req.version()) {
        (Some(tap), http::Version::HTTP_2) => {
            let (h2, first) = tap.h2();
            let http = first.unwrap_or_else(|| {
                HttpFingerprint::from_h2(
                    req.method().as_str(),
                    req.headers().keys().map(|k| k.as_str()),
                )
            });
            (h2, Some(http))
        }
        (Some(tap), _) => (None, tap.next_h1()),
        (None, _) => (None, None),
    };
    let mut fp = ClientFingerprint {
        ja4: conn.ja4,
        http,
        h2,
        ip_prefix: Some(fingerprint::network::prefix(
            conn.peer.ip(),
            fc.ipv4_prefix_len,
            fc.ipv6_prefix_len,
        )),
        inconsistent_with: None,
    };
    if !fc.known_clients.is_empty() {
        let ua = req
            .headers()
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        let ja4 = fp.ja4.as_ref().map(|j| j.as_str());
        let http = fp.http.as_ref().map(|h| h.as_str());
        fp.inconsistent_with = fingerprint::consistency::mismatch(&fc.known_clients, ua, ja4, http)
            .map(|k| k.name.clone());
    }
    fp
}

/// Optionally tell the upstream what was observed; a client can never set
/// these headers itself.
fn forward_fingerprint(config: &Config, fp: &ClientFingerprint, headers: &mut http::HeaderMap) {
    let fc = &config.fingerprint;
    let values = [
        (
            &fc.forward_ja4_header,
            fp.ja4.as_ref().map(|j| j.as_str().to_string()),
        ),
        (
            &fc.forward_http_header,
            fp.http.as_ref().map(|h| h.as_str().to_string()),
        ),
        (
            &fc.forward_h2_header,
            fp.h2.as_ref().map(|h| h.akamai().to_string()),
        ),
    ];
    for (name, value) in values {
        let Some(name) = name else { continue };
        headers.remove(name);
        if let Some(v) = value.and_then(|v| http::HeaderValue::try_from(v).ok()) {
            headers.insert(name.clone(), v);
        }
    }
}
