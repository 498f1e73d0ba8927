//! Phase 2, fingerprint: what the client's connection and request head
//! say about its software and network — JA4 from the accept path, the HTTP
//! and HTTP/2 fingerprints from the tap, the network prefix and AS of the
//! client's address (the address a trusted front vouches for, else the
//! peer's), and whether they agree with the client's claimed user agent.

use http::{HeaderValue, Request};

use crate::app::{ConnInfo, Shared};
use crate::config::Config;
use crate::fingerprint::{self, ClientFingerprint, HttpFingerprint};
use crate::identity;

/// Whether the request's headers were written by a trusted front: the
/// client the connection names (the peer, or the source a trusted PROXY
/// header announced) is in `identity.trusted_proxies`. A front's headers
/// (`x-forwarded-for`, `[fingerprint.front]`, `[identity]
/// account_created_header`) are believed only then.
pub(super) fn trusted_front(config: &Config, conn: &ConnInfo) -> bool {
    identity::is_trusted(conn.client.ip(), &config.identity.trusted_proxies)
}

/// The phase: the client's address and its fingerprint. Front headers are
/// read here (and only believed from a `trusted` peer, [`trusted_front`]),
/// so the network prefix and ASN are the client's, not a front's.
pub(super) fn phase<B>(
    config: &Config,
    shared: &Shared,
    conn: &ConnInfo,
    trusted: bool,
    req: &Request<B>,
) -> (ClientFingerprint, std::net::IpAddr) {
    let front = fingerprint::front::read(
        &config.fingerprint.front,
        req.headers(),
        trusted,
        |part, outcome| shared.metrics.front_header(part, outcome),
    );
    let client_ip = front.address.unwrap_or_else(|| {
        identity::client_ip(
            conn.client.ip(),
            req.headers(),
            &config.identity.trusted_proxies,
        )
    });
    (
        client_fingerprint(config, conn, client_ip, front, req),
        client_ip,
    )
}

/// What travels upstream of this phase: front headers never do, believed
/// or not (the upstream cannot mistake a forged one for the front's), nor
/// does the account-created header; the observed fingerprints do when
/// configured.
pub(super) fn rewrite_headers(
    config: &Config,
    fp: &ClientFingerprint,
    headers: &mut http::HeaderMap,
) {
    fingerprint::front::strip(&config.fingerprint.front, headers);
    if let Some(h) = &config.identity.account_created_header {
        headers.remove(h);
    }
    forward_fingerprint(config, fp, headers);
}

/// The fingerprint step: connection-level parts from the accept path, the
/// request head's HTTP fingerprint from the tap, the network prefix and ASN
/// of `client_ip` (the identity step's client address: the peer, or what a
/// trusted front said) and the consistency flag. What a trusted front said
/// in its headers (`front`) replaces what was observed, part by part, and
/// [`ClientFingerprint::sources`] says which is which.
fn client_fingerprint<B>(
    config: &Config,
    conn: &ConnInfo,
    client_ip: std::net::IpAddr,
    front: fingerprint::front::FrontFacts,
    req: &Request<B>,
) -> ClientFingerprint {
    use fingerprint::Source::{Front, Observed};
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
    // A tapped connection that yields no fingerprint for this request.
    let unreadable = conn.tap.is_some()
        && match req.version() {
            http::Version::HTTP_2 => h2.is_none(),
            _ => http.is_none(),
        };
    /// What a front told, else what was seen (looked up only then).
    fn pick<T>(
        told: Option<T>,
        seen: impl FnOnce() -> Option<T>,
    ) -> (Option<T>, Option<fingerprint::Source>) {
        match told {
            Some(v) => (Some(v), Some(Front)),
            None => {
                let v = seen();
                let source = v.as_ref().map(|_| Observed);
                (v, source)
            }
        }
    }
    let (ja4, ja4_source) = pick(front.ja4, || conn.ja4);
    let (h2, h2_source) = pick(front.h2, || h2);
    let (asn, asn_source) = pick(front.asn, || {
        fc.asn_db
            .as_ref()
            .and_then(|db| db.lookup(client_ip))
            .map(|a| a.number)
    });
    // The address is a front's when it is not the socket peer's: a front
    // header, a trusted `x-forwarded-for` or a PROXY protocol source.
    let peer = identity::canonical(conn.peer.ip());
    let sources = fingerprint::Sources {
        ja4: ja4_source,
        http: http.as_ref().map(|_| Observed),
        h2: h2_source,
        address: Some(if client_ip == peer { Observed } else { Front }),
        asn: asn_source,
    };
    let mut fp = ClientFingerprint {
        ja4,
        http,
        h2,
        ip_prefix: Some(fingerprint::network::prefix(
            client_ip,
            fc.ipv4_prefix_len,
            fc.ipv6_prefix_len,
        )),
        asn,
        inconsistent_with: None,
        unreadable,
        sources,
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
        (&fc.forward_ja4_header, fp.ja4.as_ref().map(|j| j.as_str())),
        (
            &fc.forward_http_header,
            fp.http.as_ref().map(|h| h.as_str()),
        ),
        (&fc.forward_h2_header, fp.h2.as_ref().map(|h| h.akamai())),
    ];
    for (name, value) in values {
        let Some(name) = name else { continue };
        headers.remove(name);
        // Copied into a header value only when its header is configured.
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name.clone(), v);
        }
    }
}
