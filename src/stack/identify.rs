//! Phase 3, identify: whose request this is — the keyed hash of its API key
//! (never the key itself), or an anonymous account per client prefix when
//! the config allows keyless requests — and how old its account is, when a
//! trusted auth front states it.

use http::Request;

use crate::app::Shared;
use crate::config::{Config, MissingKey};
use crate::engine::{AccountId, Nanos};
use crate::identity;
use crate::proxy::error::ProxyError;

/// Whose request it is.
#[derive(Debug, Clone, Copy)]
pub(super) struct Caller {
    /// The account: the keyed hash of the key, or of the client prefix.
    pub account: AccountId,
    /// Keyless, counted per client prefix.
    pub anonymous: bool,
    /// The account's age, as a trusted auth front states it.
    pub account_age: Option<Nanos>,
}

/// The identify step: the account of a request (keyed hash of its API key),
/// or an anonymous account for its client prefix when allowed; refused
/// with 401 when it has no key and anonymous access is off. A keyed
/// account's age comes from `[identity] account_created_header` when the
/// request's headers are a `trusted` front's.
pub(super) fn phase<B>(
    config: &Config,
    shared: &Shared,
    trusted: bool,
    client_ip: std::net::IpAddr,
    req: &Request<B>,
) -> Result<Caller, ProxyError> {
    let id = &config.identity;
    if let Some(key) = identity::api_key(req.headers(), &id.key_sources) {
        return Ok(Caller {
            account: shared.hasher.account_id(key),
            anonymous: false,
            account_age: account_age(config, shared, trusted, req.headers()),
        });
    }
    match id.missing_key {
        MissingKey::Reject => Err(ProxyError::Unauthorized),
        MissingKey::Anonymous => {
            let prefix = identity::anonymous_prefix(client_ip, id.ipv6_key_prefix_len);
            Ok(Caller {
                account: shared.hasher.anonymous_id(&prefix),
                anonymous: true,
                account_age: None,
            })
        }
    }
}

/// The account's age from the creation time a trusted front states, at
/// this host's wall clock. Not believed from an untrusted peer; a trusted
/// peer's value that is repeated (a front that appends instead of
/// replacing would let a client's own copy through), not Unix seconds, or
/// too far in the future is ignored and counted.
fn account_age(
    config: &Config,
    shared: &Shared,
    trusted: bool,
    headers: &http::HeaderMap,
) -> Option<Nanos> {
    let name = config.identity.account_created_header.as_ref()?;
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if !trusted {
        return None;
    }
    let age = match values.next() {
        None => identity::account_age(first.as_bytes(), crate::telemetry::audit::now_unix_ms()),
        Some(_) => None,
    };
    if age.is_none() {
        shared.metrics.account_created_invalid();
    }
    age
}
