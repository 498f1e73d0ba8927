//! Telemetry of a decision, in one call ([`decision`]): the audit lines
//! (detection above allow, shadow or enforced; throttles; admin blocks;
//! every allow when `audit.all_requests`), the traffic record (refusals now,
//! admitted requests when they settle), the budget metrics and the
//! indicators of the account's cluster. The access line and the request
//! counter are written once per request by the guard, whatever happened.

use http::HeaderValue;
use tracing::debug;

use crate::app::Shared;
use crate::config::Config;
use crate::engine::score::Level;
use crate::engine::{AccountId, Blocker, ClusterId, Decision, Observation, Verdict};
use crate::fingerprint::ClientFingerprint;
use crate::replay::TrafficRecord;
use crate::telemetry::audit::{DetectionReason, Fingerprints, Reason, SignalReason};

/// What a decision's telemetry needs to know of its request.
pub(super) struct Facts<'a> {
    pub request_id: &'a HeaderValue,
    pub account: AccountId,
    pub anonymous: bool,
    pub fp: &'a ClientFingerprint,
    pub obs: &'a Observation,
}

/// Report `decision`. Returns the traffic-record line an admitted request
/// writes when it settles (None when nothing is recorded, or when the
/// refusal was recorded now).
pub(super) fn decision(
    shared: &Shared,
    config: &Config,
    facts: &Facts<'_>,
    decision: &Decision,
) -> Option<TrafficRecord> {
    let audit = Audit {
        shared,
        request_id: facts.request_id,
        account: facts.account,
        decision,
        fp: facts.fp,
    };
    if let Some(d) = decision
        .detection
        .as_ref()
        .filter(|d| d.level > Level::Allow)
    {
        audit.detection(d);
    }
    if let Some(c) = decision.cluster {
        shared.indicators.observe(
            c.id,
            facts.fp,
            facts.obs.attrs.prompt.as_ref().map(|k| &k[..]),
        );
    }
    match &decision.verdict {
        Verdict::Allow(_) | Verdict::Slow { .. } | Verdict::Degrade { .. } => {
            if config.audit.all_requests {
                audit.line("allow", Vec::new(), "enforce");
            }
        }
        Verdict::Throttle(hit) => {
            shared.metrics.limit_hit(hit.scope, hit.kind);
            let reason = serde_json::json!({
                "scope": hit.scope.as_str(),
                "limit": hit.kind.as_str(),
                "retry_after_s": hit.retry_after.div_ceil(crate::engine::SECOND),
                "remaining": hit.remaining,
            });
            audit.line("throttle", vec![reason.into()], "enforce");
            debug!(
                request_id = ?facts.request_id,
                account = %facts.account,
                limit = hit.kind.as_str(),
                scope = hit.scope.as_str(),
                "throttled"
            );
        }
        Verdict::Block {
            scope,
            by: Blocker::Admin,
        } => {
            let reason = serde_json::json!({"manual_block": scope.as_str()});
            audit.line("block", vec![reason.into()], "enforce");
        }
        // Its detection line above holds the reasons.
        Verdict::Block {
            by: Blocker::Detection,
            ..
        } => {}
    }
    let log = shared.record.as_ref()?;
    let record = traffic_record(facts, decision);
    if decision.verdict.ticket().is_some() {
        return Some(record);
    }
    log.record(record);
    None
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Allow => "allow",
        Level::Slow => "slow",
        Level::Degrade => "degrade",
        Level::Throttle => "throttle",
        Level::Block => "block",
    }
}

/// The traffic-record line of a request (see `replay`): fingerprints,
/// hashes and counts, never the key or the prompt.
fn traffic_record(facts: &Facts<'_>, decision: &Decision) -> TrafficRecord {
    let Facts {
        request_id,
        account,
        anonymous,
        fp,
        obs,
    } = *facts;
    let input_tokens = obs.input_tokens;
    let f = &obs.request;
    crate::replay::TrafficRecord {
        v: crate::replay::RECORD_VERSION,
        t_ms: crate::telemetry::audit::now_unix_ms(),
        request_id: request_id.to_str().ok().map(String::from),
        account: account.to_string(),
        anonymous,
        ja4: fp.ja4.as_ref().map(|j| j.as_str().to_string()),
        http: fp.http.as_ref().map(|h| h.as_str().to_string()),
        h2: fp.h2.as_ref().map(|h| h.akamai().to_string()),
        ip_prefix: fp.ip_prefix.map(|p| p.to_string()),
        asn: fp.asn,
        sources: Some(fp.sources),
        model: f.model.clone(),
        input_tokens,
        max_output_tokens: f.max_output_tokens,
        thinking_budget: f.thinking_budget,
        reasoning_high: f.reasoning_effort_high,
        prompt_keys: obs
            .attrs
            .prompt
            .map(|k| k.iter().map(|x| format!("{x:016x}")).collect())
            .unwrap_or_default(),
        fill_key: f.fill_key.map(|k| format!("{k:016x}")),
        phrase_lists: decision
            .detection
            .as_ref()
            .map(|d| d.phrase_hits.clone())
            .unwrap_or_default(),
        inconsistent: f.fingerprint_inconsistent,
        account_age_s: obs.account_age.map(|a| a / crate::engine::SECOND),
        output_tokens: 0,
        decision: decision.label().to_string(),
        population: None,
        attack: false,
    }
}

/// What every audit line of one request shares.
struct Audit<'a> {
    shared: &'a Shared,
    request_id: &'a HeaderValue,
    account: AccountId,
    decision: &'a Decision,
    fp: &'a ClientFingerprint,
}

impl Audit<'_> {
    /// One audit line, to the audit log and the console's latest decisions
    /// (no-op without either).
    fn line(&self, action: &str, reasons: Vec<Reason>, mode: &str) {
        if !self.wanted() {
            return;
        }
        let record = crate::telemetry::audit::AuditRecord {
            time_unix_ms: crate::telemetry::audit::now_unix_ms(),
            kind: "decision",
            request_id: self.request_id.to_str().ok().map(String::from),
            account: Some(self.account.to_string()),
            cluster: self.decision.cluster.map(|c| ClusterId(c.id).to_string()),
            fingerprints: Some(Fingerprints(self.fp.clone())),
            decision: action.to_string(),
            reasons,
            mode: mode.to_string(),
        };
        crate::telemetry::recent::tee(
            self.shared.recent.as_ref(),
            self.shared.audit.as_ref(),
            record,
        );
    }

    /// Whether anyone takes audit lines.
    fn wanted(&self) -> bool {
        self.shared.audit.is_some() || self.shared.recent.is_some()
    }

    /// The line for a detection level above allow, enforced or in shadow
    /// mode, with every signal's value and contribution.
    fn detection(&self, d: &crate::engine::Detection) {
        if !self.wanted() {
            return;
        }
        let mut reasons = vec![Reason::Detection(Box::new(DetectionReason {
            score: f64::from(d.score.value),
            scope: d.scope.as_str(),
            level: level_name(d.level),
            enforced_level: level_name(d.enforced),
            phrase_lists: d.phrase_hits.clone(),
            by_cohort: d.by_cohort,
            by_network_pool: d.by_pool,
            sustained_degrade: d.sustained,
        }))];
        reasons.extend(
            d.score
                .contributions
                .iter()
                .filter(|c| c.contribution > 0.0)
                .map(|c| {
                    Reason::Signal(SignalReason {
                        signal: c.signal.as_str(),
                        value: f64::from(c.value),
                        weight: f64::from(c.weight),
                        contribution: f64::from(c.contribution),
                    })
                }),
        );
        let mode = if d.enforced >= d.level {
            "enforce"
        } else {
            "shadow"
        };
        self.line(level_name(d.level), reasons, mode);
    }
}
