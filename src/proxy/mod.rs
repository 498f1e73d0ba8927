//! Forward step: the pooled upstream client (hyper-util + hyper-rustls) and
//! the function that sends one request upstream under the configured
//! timeouts, classifying failures by the side that caused them.

pub mod body;
pub mod error;
pub mod headers;

use std::net::IpAddr;
use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

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

/// Send one request upstream. `parts` are the client's request head (URI,
/// headers rewritten here); the response head must arrive within the
/// first-byte timeout.
pub async fn forward(
    client: &UpstreamClient,
    cfg: &UpstreamConfig,
    mut parts: http::request::Parts,
    body: RequestBody,
    peer_ip: IpAddr,
    tls: bool,
    request_id: &HeaderValue,
) -> Result<Response<Incoming>, ProxyError> {
    parts.uri = upstream_uri(cfg, &parts.uri)?;
    parts.version = Version::HTTP_11;
    headers::prepare_upstream_request(&mut parts.headers, peer_ip, tls, request_id);
    let req = Request::from_parts(parts, body);
    match tokio::time::timeout(cfg.first_byte_timeout, client.request(req)).await {
        Err(_) => Err(ProxyError::UpstreamTimeout(cfg.first_byte_timeout)),
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(classify(&e)),
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
    let detail = error_chain(e);
    if e.is_connect() {
        // hyper-util reports its own connect timeout as a connect error.
        if detail.contains("timed out") {
            return ProxyError::UpstreamTimeout(std::time::Duration::ZERO);
        }
        return ProxyError::UpstreamConnect(detail);
    }
    ProxyError::Upstream(detail)
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
