//! Indicators of clusters, for `GET /admin/export/indicators`: the client
//! fingerprints, network prefixes and prompt-shape index keys seen from each
//! cluster's members, kept in small bounded sets (the engine itself holds
//! only hashes). What is exported for blocked clusters is meant for sharing
//! with other providers: no account ids, no keys, no prompt text.

use std::collections::BTreeSet;

use dashmap::DashMap;
use serde::Serialize;

/// Distinct values kept per kind and cluster.
const KEEP: usize = 16;
/// Clusters whose indicators are kept.
const MAX_CLUSTERS: usize = 10_000;

/// One cluster's indicators.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ClusterIndicators {
    /// JA4 values.
    pub ja4: BTreeSet<String>,
    /// HTTP fingerprints (distill-guard's format).
    pub http: BTreeSet<String>,
    /// HTTP/2 fingerprints (Akamai format).
    pub h2: BTreeSet<String>,
    /// Client network prefixes.
    pub ip_prefixes: BTreeSet<String>,
    /// AS numbers.
    pub asns: BTreeSet<u32>,
    /// Prompt-shape signature index keys (hex), comparable across providers
    /// that run the same signature with the same key.
    pub prompt_keys: BTreeSet<String>,
}

/// What one cluster's members were seen with, as kept: text values as
/// strings, prefixes and index keys in their own types (turned into text by
/// [`Indicators::get`], not on the request path).
#[derive(Debug, Default)]
struct Seen {
    ja4: BTreeSet<String>,
    http: BTreeSet<String>,
    h2: BTreeSet<String>,
    ip_prefixes: BTreeSet<ipnet::IpNet>,
    asns: BTreeSet<u32>,
    prompt_keys: BTreeSet<u64>,
}

fn add<T: Ord>(set: &mut BTreeSet<T>, v: T) {
    if set.len() < KEEP {
        set.insert(v);
    }
}

/// [`add`] for text, copied only when it is new.
fn add_str(set: &mut BTreeSet<String>, v: &str) {
    if set.len() < KEEP && !set.contains(v) {
        set.insert(v.to_owned());
    }
}

/// Indicators of every cluster seen recently.
#[derive(Debug, Default)]
pub struct Indicators {
    clusters: DashMap<u64, Seen>,
}

impl Indicators {
    /// Remember what one request of cluster `id` looked like. Called for
    /// every request of a clustered account: allocates only for a value the
    /// cluster has not shown before.
    pub fn observe(
        &self,
        id: u64,
        fp: &crate::fingerprint::ClientFingerprint,
        prompt_keys: Option<&[u64]>,
    ) {
        if !self.clusters.contains_key(&id) && self.clusters.len() >= MAX_CLUSTERS {
            return;
        }
        let mut e = self.clusters.entry(id).or_default();
        if let Some(j) = &fp.ja4 {
            add_str(&mut e.ja4, j.as_str());
        }
        if let Some(h) = &fp.http {
            add_str(&mut e.http, h.as_str());
        }
        if let Some(h) = &fp.h2 {
            add_str(&mut e.h2, h.akamai());
        }
        if let Some(p) = fp.ip_prefix {
            add(&mut e.ip_prefixes, p);
        }
        if let Some(a) = fp.asn {
            add(&mut e.asns, a);
        }
        for &k in prompt_keys.unwrap_or(&[]).iter().take(2) {
            add(&mut e.prompt_keys, k);
        }
    }

    /// The indicators of cluster `id`.
    pub fn get(&self, id: u64) -> Option<ClusterIndicators> {
        self.clusters.get(&id).map(|e| ClusterIndicators {
            ja4: e.ja4.clone(),
            http: e.http.clone(),
            h2: e.h2.clone(),
            ip_prefixes: e.ip_prefixes.iter().map(|p| p.to_string()).collect(),
            asns: e.asns.clone(),
            prompt_keys: e.prompt_keys.iter().map(|k| format!("{k:016x}")).collect(),
        })
    }

    /// Forget clusters for which `keep` is false (dissolved ones).
    pub fn retain(&self, keep: impl Fn(u64) -> bool) {
        self.clusters.retain(|id, _| keep(*id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::ClientFingerprint;

    fn fp(prefix: &str) -> ClientFingerprint {
        ClientFingerprint {
            ip_prefix: Some(prefix.parse().unwrap()),
            asn: Some(64500),
            ..ClientFingerprint::default()
        }
    }

    #[test]
    fn indicators_are_written_as_text_sorted_and_bounded() {
        let ind = Indicators::default();
        ind.observe(7, &fp("9.9.9.0/24"), Some(&[0xab, 0x1, 0x2]));
        ind.observe(7, &fp("10.0.0.0/24"), Some(&[0xab]));
        ind.observe(7, &fp("9.9.9.0/24"), None);
        let got = ind.get(7).unwrap();
        // Sorted as text, as the export always was ("10." before "9.").
        assert_eq!(
            got.ip_prefixes.into_iter().collect::<Vec<_>>(),
            ["10.0.0.0/24", "9.9.9.0/24"]
        );
        // The first two keys of each request, as 16 hex digits.
        assert_eq!(
            got.prompt_keys.into_iter().collect::<Vec<_>>(),
            ["0000000000000001", "00000000000000ab"]
        );
        assert_eq!(got.asns.into_iter().collect::<Vec<_>>(), [64500]);
        assert!(ind.get(8).is_none());

        for i in 0..40u32 {
            ind.observe(7, &fp(&format!("10.0.{i}.0/24")), None);
        }
        assert_eq!(ind.get(7).unwrap().ip_prefixes.len(), KEEP);
        ind.retain(|id| id != 7);
        assert!(ind.get(7).is_none());
    }
}
