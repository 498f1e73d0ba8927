//! Phase 3, identify: whose request this is — the keyed hash of its API key
//! (never the key itself), or an anonymous account per client prefix when
//! the config allows keyless requests.

use http::Request;

use crate::config::{Config, MissingKey};
use crate::engine::AccountId;
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
    pub account_age: Option<crate::engine::Nanos>,
}

/// The identify step: the account of a request (keyed hash of its API key),
/// or an anonymous account for its client prefix when allowed; refused
/// with 401 when it has no key and anonymous access is off.
pub(super) fn phase<B>(
    config: &Config,
    hasher: &identity::KeyHasher,
    client_ip: std::net::IpAddr,
    req: &Request<B>,
) -> Result<Caller, ProxyError> {
    let id = &config.identity;
    if let Some(key) = identity::api_key(req.headers(), &id.key_sources) {
        return Ok(Caller {
            account: hasher.account_id(key),
            anonymous: false,
            account_age: None,
        });
    }
    match id.missing_key {
        MissingKey::Reject => Err(ProxyError::Unauthorized),
        MissingKey::Anonymous => {
            let prefix = identity::anonymous_prefix(client_ip, id.ipv6_key_prefix_len);
            Ok(Caller {
                account: hasher.anonymous_id(&prefix),
                anonymous: true,
                account_age: None,
            })
        }
    }
}
