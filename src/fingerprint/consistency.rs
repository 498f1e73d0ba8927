//! Consistency flag of a client fingerprint: the `user-agent` claims a known
//! client (a browser or an official SDK, from `[[fingerprint.known_client]]`)
//! whose known TLS/HTTP fingerprints do not include the observed ones — a
//! script dressed up as something else.

/// A client stack whose fingerprints are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownClient {
    /// Name used in reasons.
    pub name: String,
    /// `user-agent` prefix claiming it.
    pub user_agent_prefix: String,
    /// Known JA4 values (empty: not checked).
    pub ja4: Vec<String>,
    /// Known HTTP fingerprints (empty: not checked).
    pub http: Vec<String>,
}

/// The known client a request claims to be but whose fingerprints it does
/// not match, if any. Fingerprints that were not observed (no TLS, no tap)
/// are not held against the client.
pub fn mismatch<'a>(
    known: &'a [KnownClient],
    user_agent: Option<&str>,
    ja4: Option<&str>,
    http: Option<&str>,
) -> Option<&'a KnownClient> {
    let ua = user_agent?;
    let claimed = known
        .iter()
        .find(|k| ua.starts_with(&k.user_agent_prefix))?;
    let differs = |list: &[String], seen: Option<&str>| {
        !list.is_empty() && seen.is_some_and(|s| !list.iter().any(|l| l == s))
    };
    (differs(&claimed.ja4, ja4) || differs(&claimed.http, http)).then_some(claimed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdk() -> Vec<KnownClient> {
        vec![KnownClient {
            name: "anthropic-python".into(),
            user_agent_prefix: "Anthropic/Python".into(),
            ja4: vec!["t13d1312h2_f57a46bbacb6_ab7e3b40a677".into()],
            http: vec![],
        }]
    }

    #[test]
    fn claimed_client_with_other_fingerprint_is_flagged() {
        let k = sdk();
        let ua = Some("Anthropic/Python 0.40.0");
        assert!(mismatch(&k, ua, Some("t13d1312h2_f57a46bbacb6_ab7e3b40a677"), None).is_none());
        assert_eq!(
            mismatch(&k, ua, Some("t13d1516h2_8daaf6152771_e5627efa2ab1"), None)
                .map(|k| k.name.as_str()),
            Some("anthropic-python")
        );
        // Unclaimed user agents and unobserved fingerprints are not flagged.
        assert!(mismatch(&k, Some("curl/8.0"), Some("x"), None).is_none());
        assert!(mismatch(&k, ua, None, None).is_none());
        assert!(mismatch(&k, None, Some("x"), None).is_none());
    }
}
