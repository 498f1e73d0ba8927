//! The config file as written: serde structs that mirror the TOML, every
//! struct `deny_unknown_fields`, every number with its unit in its name.
//! [`super::validate`] turns a [`FileConfig`] into a typed [`super::Config`].

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Listeners that accept client traffic (`[[listener]]`), at least one.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<FileListener>,
    /// The model API distill-guard protects.
    pub upstream: FileUpstream,
    /// Limits on what one client or connection may use.
    #[serde(default)]
    pub limits: FileLimits,
    /// Process-wide settings: workers, shutdown.
    #[serde(default)]
    pub server: FileServer,
    /// Client fingerprinting.
    #[serde(default)]
    pub fingerprint: FileFingerprint,
    /// Log output.
    #[serde(default)]
    pub logging: FileLogging,
}

/// `[fingerprint]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileFingerprint {
    /// IPv4 clients are grouped by this prefix length for linking (0–32).
    pub ipv4_prefix_len: u8,
    /// IPv6 clients are grouped by this prefix length for linking (0–128).
    pub ipv6_prefix_len: u8,
    /// Send the client's JA4 upstream in this header (off when absent).
    pub forward_ja4_header: Option<String>,
    /// Send the request's HTTP fingerprint upstream in this header.
    pub forward_http_header: Option<String>,
    /// Send the connection's HTTP/2 fingerprint upstream in this header.
    pub forward_h2_header: Option<String>,
    /// Known client stacks: a request whose `user-agent` starts with a
    /// listed prefix but whose fingerprints are not among the listed ones is
    /// flagged as inconsistent (`[[fingerprint.known_client]]`).
    #[serde(rename = "known_client")]
    pub known_clients: Vec<FileKnownClient>,
}

impl Default for FileFingerprint {
    fn default() -> Self {
        Self {
            ipv4_prefix_len: 24,
            ipv6_prefix_len: 48,
            forward_ja4_header: None,
            forward_http_header: None,
            forward_h2_header: None,
            known_clients: Vec::new(),
        }
    }
}

/// One `[[fingerprint.known_client]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKnownClient {
    /// A name for logs and reasons, e.g. `"anthropic-python"`.
    pub name: String,
    /// `user-agent` prefix that claims this client, e.g. `"Anthropic/Python"`.
    pub user_agent_prefix: String,
    /// JA4 values this client is known to produce (empty: not checked).
    #[serde(default)]
    pub ja4: Vec<String>,
    /// HTTP fingerprints (our format) it is known to produce (empty: not checked).
    #[serde(default)]
    pub http: Vec<String>,
}

/// One `[[listener]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    /// `IP:PORT` to bind, e.g. `"0.0.0.0:8443"` or `"[::1]:8080"`.
    pub address: String,
    /// Terminate TLS on this listener (rustls). Absent: plain TCP (HTTP/1.1
    /// and HTTP/2 with prior knowledge).
    pub tls: Option<FileTls>,
}

/// `[listener.tls]`: PEM files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// PEM certificate chain, leaf first. Relative paths are relative to the
    /// config file.
    pub cert_path: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: String,
}

/// `[upstream]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    /// Base URL of the model API, `http://` or `https://`, e.g.
    /// `"https://api.anthropic.com"`. A path prefix is kept and prepended.
    pub url: String,
    /// Extra PEM CA certificates trusted for the upstream, besides the
    /// built-in web PKI roots (for private CAs and tests).
    pub ca_path: Option<String>,
    /// Time allowed to open a TCP connection (and TLS) to the upstream.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time allowed from sending the request to the upstream's response head.
    #[serde(default = "default_first_byte_timeout_ms")]
    pub first_byte_timeout_ms: u64,
    /// Longest silence allowed between two pieces of a response body.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// How long an unused pooled upstream connection is kept.
    #[serde(default = "default_pool_idle_timeout_ms")]
    pub pool_idle_timeout_ms: u64,
}

/// `[limits]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileLimits {
    /// Largest request body accepted; larger ones get 413.
    pub max_request_body_bytes: u64,
    /// Time a client has to send a complete request head (HTTP/1), and the
    /// longest a keep-alive connection may sit idle between requests.
    pub request_head_timeout_ms: u64,
    /// Time a new connection has to send its first bytes and, on TLS
    /// listeners, complete the handshake.
    pub handshake_timeout_ms: u64,
    /// Open client connections across all listeners; further connections
    /// are closed at once.
    pub max_connections: u32,
}

impl Default for FileLimits {
    fn default() -> Self {
        Self {
            max_request_body_bytes: 10 * 1024 * 1024,
            request_head_timeout_ms: 30_000,
            handshake_timeout_ms: 10_000,
            max_connections: 10_000,
        }
    }
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileServer {
    /// Worker threads, each a single-threaded runtime; 0 = one per CPU this
    /// process may run on.
    pub workers: u32,
    /// On SIGTERM/SIGINT, how long in-flight requests and streams may run on
    /// before the process exits anyway.
    pub shutdown_grace_ms: u64,
}

impl Default for FileServer {
    fn default() -> Self {
        Self {
            workers: 0,
            shutdown_grace_ms: 30_000,
        }
    }
}

/// `[logging]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileLogging {
    /// `"json"` (one object per line) or `"text"`.
    pub format: String,
    /// A `tracing` filter such as `"info"` or `"distill_guard=debug"`;
    /// `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for FileLogging {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_first_byte_timeout_ms() -> u64 {
    600_000
}
fn default_idle_timeout_ms() -> u64 {
    300_000
}
fn default_pool_idle_timeout_ms() -> u64 {
    90_000
}
