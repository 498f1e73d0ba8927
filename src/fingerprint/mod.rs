//! Fingerprint step: what identifies a client's software stack and network,
//! independent of the account it claims. Pure parsers of untrusted bytes:
//! [`tls`] (JA4 from the raw ClientHello), [`http`] (HTTP/1 tap and our HTTP
//! fingerprint format), [`h2`] (Akamai-style HTTP/2 fingerprint), [`network`]
//! (address prefixes), [`asn`] (AS numbers from a MaxMind database),
//! [`consistency`] (claimed client vs observed stack) and [`front`] (what a
//! trusted CDN or load balancer observed, from its headers).
//!
//! Connection-level parts are computed once per connection and shared by all
//! of its requests; [`ClientFingerprint`] gathers them per request.

pub mod tls;
pub mod http;
pub mod h2;
pub mod network;
pub mod consistency;
pub mod asn;
pub mod front;

use std::sync::Arc;

pub use h2::H2Fingerprint;
pub use http::HttpFingerprint;
pub use tls::Ja4Fingerprint;

/// Everything known about the client stack of one request.
#[derive(Debug, Clone, Default)]
pub struct ClientFingerprint {
    /// JA4 of the connection's ClientHello (TLS listeners only).
    pub ja4: Option<Ja4Fingerprint>,
    /// Our HTTP fingerprint of this request's head.
    pub http: Option<HttpFingerprint>,
    /// The connection's HTTP/2 (Akamai-style) fingerprint.
    pub h2: Option<Arc<H2Fingerprint>>,
    /// The client address grouped to its configured prefix.
    pub ip_prefix: Option<ipnet::IpNet>,
    /// The client's AS number (when an ASN database is configured).
    pub asn: Option<u32>,
    /// The known client the `user-agent` claims but the fingerprints deny.
    pub inconsistent_with: Option<String>,
    /// The connection's tap could not read this request's HTTP (or HTTP/2)
    /// fingerprint (a head over the tap's limit, more pipelined heads than
    /// it queues, a preface it could not follow): a client that hides its
    /// fingerprint is counted as inconsistent, not ignored.
    pub unreadable: bool,
    /// Where each part came from.
    pub sources: Sources,
}

/// Where a part of a fingerprint came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Seen by distill-guard itself: the ClientHello, the HTTP/2 preface,
    /// the socket peer (or the address database).
    #[default]
    Observed,
    /// Told by a trusted front: a `[fingerprint.front]` header,
    /// `x-forwarded-for` or a PROXY protocol header from a peer in
    /// `identity.trusted_proxies`.
    Front,
}

/// Where each part of a [`ClientFingerprint`] came from (absent parts have
/// no source). Written in the traffic record and in audit lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sources {
    /// Of `ja4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ja4: Option<Source>,
    /// Of `http` (always observed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Source>,
    /// Of `h2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2: Option<Source>,
    /// Of the client address behind `ip_prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Source>,
    /// Of `asn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<Source>,
}
