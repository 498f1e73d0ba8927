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

fn add<T: Ord>(set: &mut BTreeSet<T>, v: T) {
    if set.len() < KEEP {
        set.insert(v);
    }
}

/// Indicators of every cluster seen recently.
#[derive(Debug, Default)]
pub struct Indicators {
    clusters: DashMap<u64, ClusterIndicators>,
}

impl Indicators {
    /// Remember what one request of cluster `id` looked like.
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
            add(&mut e.ja4, j.as_str().to_string());
        }
        if let Some(h) = &fp.http {
            add(&mut e.http, h.as_str().to_string());
        }
        if let Some(h) = &fp.h2 {
            add(&mut e.h2, h.akamai().to_string());
        }
        if let Some(p) = fp.ip_prefix {
            add(&mut e.ip_prefixes, p.to_string());
        }
        if let Some(a) = fp.asn {
            add(&mut e.asns, a);
        }
        for k in prompt_keys.unwrap_or(&[]).iter().take(2) {
            add(&mut e.prompt_keys, format!("{k:016x}"));
        }
    }

    /// The indicators of cluster `id`.
    pub fn get(&self, id: u64) -> Option<ClusterIndicators> {
        self.clusters.get(&id).map(|e| e.clone())
    }

    /// Forget clusters for which `keep` is false (dissolved ones).
    pub fn retain(&self, keep: impl Fn(u64) -> bool) {
        self.clusters.retain(|id, _| keep(*id));
    }
}
