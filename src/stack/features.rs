//! Phase 5, prompt features: what the engine decides on, as hashes and
//! counts — the fingerprint's parts and the network hashed for linking, the
//! prompt's shape signature as index keys, the facts the behaviour signals
//! read, and the input tokens admission charges. The prompt text goes no
//! further than the prompt step (`crate::prompt`), which turns it into
//! those features.

use std::sync::Arc;

use crate::api::inspect::Inspection;
use crate::config::Config;
use crate::engine::{signature, Observation, ObservedAttrs};
use crate::fingerprint::ClientFingerprint;
use crate::prompt::PromptFeatures;
use crate::proxy::error::ProxyError;

use super::identify::Caller;
use super::inspect::{Inspected, OFFLOAD_BYTES};

/// The phase: the request as the engine observes it.
pub(super) async fn phase(
    config: &Arc<Config>,
    caller: Caller,
    fp: &ClientFingerprint,
    inspected: &mut Inspected,
) -> Result<Observation, ProxyError> {
    let prompt = prompt_features(config, caller.account.0, inspected.info.as_mut()).await?;
    let attrs = observed_attrs(config, fp, prompt.keys);
    let request = request_facts(config, fp, inspected.info.as_ref(), &prompt);
    Ok(Observation {
        account: caller.account,
        anonymous: caller.anonymous,
        input_tokens: inspected
            .size_tokens
            .unwrap_or(u64::from(prompt.input_tokens)),
        attrs,
        request,
        account_age: caller.account_age,
    })
}

/// The prompt step: what the engine is told of the prompt (its signature's
/// keys, phrase hits, fill key, token estimate), so that it never sees the
/// text. The part of it an earlier request of the same account sent (a
/// conversation's history) is not walked again
/// (`crate::prompt::PromptCache`). A prompt of [`OFFLOAD_BYTES`] or
/// more is analysed on the blocking pool, as its body was inspected.
async fn prompt_features(
    config: &Arc<Config>,
    account: u64,
    info: Option<&mut Inspection>,
) -> Result<PromptFeatures, ProxyError> {
    let wanted = crate::prompt::Wanted {
        linking: config.cluster.policy.enabled,
        detection: config.detection.enabled,
    };
    let Some(Inspection::Parsed(i)) = info else {
        return Ok(PromptFeatures::default());
    };
    if i.prompt.is_empty() {
        return Ok(PromptFeatures::default());
    }
    let cuts = i.prompt_cuts;
    if i.prompt.len() < OFFLOAD_BYTES {
        return Ok(crate::prompt::cached_features(
            &config.detection.phrases,
            &i.prompt,
            cuts.offsets(),
            wanted,
            account,
        ));
    }
    let text = std::mem::take(&mut i.prompt);
    let config = Arc::clone(config);
    let (features, text) = tokio::task::spawn_blocking(move || {
        let f = crate::prompt::cached_features(
            &config.detection.phrases,
            &text,
            cuts.offsets(),
            wanted,
            account,
        );
        (f, text)
    })
    .await
    .map_err(|_| ProxyError::Internal("prompt analysis did not finish"))?;
    i.prompt = text;
    Ok(features)
}

/// The facts the behaviour signals need, the prompt's as features.
fn request_facts(
    config: &Config,
    fp: &ClientFingerprint,
    info: Option<&Inspection>,
    prompt: &PromptFeatures,
) -> crate::engine::RequestFacts {
    let mut f = crate::engine::RequestFacts {
        fingerprint_inconsistent: fp.inconsistent_with.is_some() || fp.unreadable,
        ..Default::default()
    };
    if !config.detection.enabled {
        return f;
    }
    if let Some(Inspection::Parsed(i)) = info {
        f.thinking_budget = i
            .thinking
            .as_ref()
            .filter(|t| t.is_enabled())
            .and_then(|t| t.budget_tokens);
        f.reasoning_effort_high = i.reasoning_effort.as_deref() == Some("high");
        f.max_output_tokens = i.max_output_tokens;
        f.model = i.model.clone();
        f.fill_key = prompt.fill_key;
        f.phrase_hits = prompt.phrase_hits;
    }
    f
}

/// What the engine links accounts by: the fingerprint's parts hashed, the
/// client prefix (or the configured network it falls in), and the index keys
/// of the prompt's shape signature. Nothing when linking is off.
fn observed_attrs(
    config: &Config,
    fp: &ClientFingerprint,
    prompt: Option<[u64; signature::INDEX_KEYS]>,
) -> ObservedAttrs {
    let c = &config.cluster.policy;
    if !c.enabled {
        // The network alone: new accounts are limited per network when the
        // account store is full, linking or not.
        let net =
            crate::engine::observed_attrs(None, None, None, fp.ip_prefix, None, None, &[], &[]);
        return ObservedAttrs {
            ip_prefix: net.ip_prefix,
            ..ObservedAttrs::default()
        };
    }
    crate::engine::observed_attrs(
        fp.ja4.as_ref().map(|j| j.as_str()),
        fp.http.as_ref().map(|h| h.as_str()),
        fp.h2.as_ref().map(|h| h.akamai()),
        fp.ip_prefix,
        fp.asn,
        prompt,
        &c.ignore_nets,
        &c.downweight_nets,
    )
}
