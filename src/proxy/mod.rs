//! Phase 8, forward: the pooled upstream client ([`h1`]: HTTP/1.1, plain or
//! rustls) and [`Upstream`], the tower service that sends one request
//! upstream under the configured timeouts, classifying failures by the side
//! that caused them. The guard ([`crate::stack`]) wraps it as a layer.

pub mod body;
pub mod error;
pub mod h1;
pub mod headers;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::app::Shared;
use crate::config::UpstreamConfig;
use body::{BodyTimeout, BodyTooLarge, RequestBody};
use error::ProxyError;

/// The pooled upstream client; one per worker runtime.
pub type UpstreamClient = h1::Client;

/// The upstream TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The extra CA file could not be read or parsed.
    #[error("upstream.ca_path {path}: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls rejected the settings.
    #[error("upstream TLS settings: {0}")]
    Tls(#[from] rustls::Error),
}

/// rustls client settings for the upstream: web PKI roots plus the
/// configured extra CAs.
pub fn upstream_tls(cfg: &UpstreamConfig) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &cfg.ca_path {
        let ca_err = |reason: String| ClientError::Ca {
            path: path.display().to_string(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_err(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ca_err(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_err("no CERTIFICATE found".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| ca_err(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // ALPN (http/1.1) is set by the client.
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(tls))
}

/// A pooled client for the upstream (HTTP/1.1; `http/1.1` by ALPN on
/// https). Each worker runtime gets its own: its pool's connections are
/// used by that runtime's tasks only.
pub fn upstream_client(tls: Arc<rustls::ClientConfig>) -> UpstreamClient {
    h1::Client::new(tls)
}

/// The upstream request's target (origin form: path and query, after the
/// configured prefix) for a client request URI.
pub fn upstream_uri(cfg: &UpstreamConfig, client_uri: &Uri) -> Result<Uri, ProxyError> {
    let pq = client_uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let pq = if cfg.path_prefix.is_empty() {
        pq
    } else {
        PathAndQuery::try_from(format!("{}{}", cfg.path_prefix, pq.as_str()))
            .map_err(|e| ProxyError::BadRequest(format!("bad path: {e}")))?
    };
    Ok(Uri::from(pq))
}

/// The upstream as a tower service: the client request, already guarded
/// (its forwarding headers set), sent to the configured upstream with its
/// URI rewritten; the response head must arrive within the first-byte
/// timeout. Cheap to clone (one per request, as tower wants).
#[derive(Clone)]
pub struct Upstream {
    client: UpstreamClient,
    shared: Arc<Shared>,
}

impl Upstream {
    /// Requests through `client`, to the upstream `shared`'s config names
    /// (read per request: a reload applies to the next one).
    pub fn new(client: UpstreamClient, shared: Arc<Shared>) -> Upstream {
        Upstream { client, shared }
    }
}

impl tower::Service<Request<RequestBody>> for Upstream {
    type Response = Response<h1::Body>;
    type Error = ProxyError;
    type Future = UpstreamFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        // The pooled client is always ready: a request without an idle
        // connection opens one.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody>) -> UpstreamFuture {
        let config = self.shared.config.load();
        let cfg = &config.upstream;
        let (mut parts, body) = req.into_parts();
        parts.uri = match upstream_uri(cfg, &parts.uri) {
            Ok(uri) => uri,
            Err(e) => return UpstreamFuture::failed(e),
        };
        parts.headers.insert(HOST, cfg.host.clone());
        let client = self.client.clone();
        let target = h1::Target::of(cfg);
        let sent: h1::SendFuture =
            Box::pin(async move { client.send(Request::from_parts(parts, body), target).await });
        UpstreamFuture {
            response: Some(tokio::time::timeout(cfg.first_byte_timeout, sent)),
            error: None,
            first_byte: cfg.first_byte_timeout,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response head of an [`Upstream`] call.
    pub struct UpstreamFuture {
        // The client's call under the first-byte timeout (None: refused
        // before sending, with `error`).
        #[pin]
        response: Option<tokio::time::Timeout<h1::SendFuture>>,
        error: Option<ProxyError>,
        first_byte: std::time::Duration,
    }
}

impl UpstreamFuture {
    fn failed(error: ProxyError) -> UpstreamFuture {
        UpstreamFuture {
            response: None,
            error: Some(error),
            first_byte: std::time::Duration::ZERO,
        }
    }
}

impl Future for UpstreamFuture {
    type Output = Result<Response<h1::Body>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(response) = this.response.as_pin_mut() else {
            return Poll::Ready(Err(this
                .error
                .take()
                .unwrap_or_else(|| ProxyError::Upstream("polled after completion".into()))));
        };
        Poll::Ready(match ready!(response.poll(cx)) {
            Err(_) => Err(ProxyError::UpstreamTimeout(*this.first_byte)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(e)),
        })
    }
}

/// A failure of the exchange, by the side that caused it.
fn classify(e: h1::Failure) -> ProxyError {
    match e {
        h1::Failure::ConnectTimeout(_) => ProxyError::UpstreamTimeout(std::time::Duration::ZERO),
        h1::Failure::Connect { .. } => ProxyError::UpstreamConnect(error_chain(&e)),
        h1::Failure::Body(body) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(body.as_ref());
            while let Some(s) = source {
                if let Some(t) = s.downcast_ref::<BodyTooLarge>() {
                    return ProxyError::BodyTooLarge(t.limit);
                }
                if let Some(t) = s.downcast_ref::<BodyTimeout>() {
                    return ProxyError::BodyTimeout(t.clone());
                }
                source = s.source();
            }
            ProxyError::Upstream(format!("request body: {}", error_chain(body.as_ref())))
        }
        e => ProxyError::Upstream(error_chain(&e)),
    }
}

/// `error: cause: cause` on one line, for logs.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
