//! Phase 8, forward: the pooled upstream client (hyper-util + hyper-rustls)
//! and [`Upstream`], the tower service that sends one request upstream
//! under the configured timeouts, classifying failures by the side that
//! caused them. The guard ([`crate::stack`]) wraps it as a layer.

pub mod body;
pub mod error;
pub mod headers;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::app::Shared;
use crate::config::UpstreamConfig;
use body::{BodyTimeout, BodyTooLarge, RequestBody};
use error::ProxyError;

/// The pooled upstream client; one per worker runtime.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

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
    // ALPN (h2, http/1.1) is set by the connector builder.
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(tls))
}

/// A pooled client for the upstream, offering h2 and http/1.1 by ALPN on
/// https. Each worker runtime gets its own (its pool's connections are
/// driven by tasks on that runtime).
pub fn upstream_client(cfg: &UpstreamConfig, tls: Arc<rustls::ClientConfig>) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .timer(TokioTimer::new())
        .build(connector)
}

/// The upstream URI for a client request path.
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
    Uri::builder()
        .scheme(cfg.scheme.clone())
        .authority(cfg.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|e| ProxyError::BadRequest(format!("bad path: {e}")))
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
    type Response = Response<Incoming>;
    type Error = ProxyError;
    type Future = UpstreamFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        // hyper-util's pooled client is always ready; its queue is per call.
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
        parts.version = Version::HTTP_11;
        // Set here rather than by the client, which would format it anew
        // for every request (HTTP/1 only; over h2 it equals `:authority`).
        parts.headers.insert(HOST, cfg.host.clone());
        let sent = self.client.request(Request::from_parts(parts, body));
        UpstreamFuture {
            response: Some(tokio::time::timeout(cfg.first_byte_timeout, sent)),
            error: None,
            first_byte: cfg.first_byte_timeout,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response head of an [`Upstream`] call (a named future: no box
    /// per request).
    pub struct UpstreamFuture {
        // The client's call under the first-byte timeout (None: refused
        // before sending, with `error`).
        #[pin]
        response: Option<tokio::time::Timeout<ResponseFuture>>,
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
    type Output = Result<Response<Incoming>, ProxyError>;

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
            Ok(Err(e)) => Err(classify(&e)),
        })
    }
}

fn classify(e: &hyper_util::client::legacy::Error) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<BodyTooLarge>() {
            return ProxyError::BodyTooLarge(t.limit);
        }
        if let Some(t) = s.downcast_ref::<BodyTimeout>() {
            return ProxyError::BodyTimeout(t.clone());
        }
        source = s.source();
    }
    if e.is_connect() {
        // hyper-util reports its own connect timeout as a connect error
        // caused by an I/O error of kind `TimedOut`.
        if io_kind(e) == Some(std::io::ErrorKind::TimedOut) {
            return ProxyError::UpstreamTimeout(std::time::Duration::ZERO);
        }
        return ProxyError::UpstreamConnect(error_chain(e));
    }
    ProxyError::Upstream(error_chain(e))
}

/// The kind of the first I/O error in `e`'s chain of causes.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = s.source();
    }
    None
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
