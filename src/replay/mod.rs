//! Traffic records and `replay`: the proxy can write one JSON line per
//! request with what the engine needs and nothing sensitive (schema in
//! `docs/traffic-record.md`, version 2); `distill-guard replay` runs a
//! policy on such a record with a virtual clock driven by its timestamps —
//! no network, no sleeping — and reports what the policy would have done.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::engine::score::PhraseHits;
use crate::engine::{
    observed_attrs, signature, AccountId, ClusterId, Decision, Engine, Nanos, Observation,
    RequestFacts, Usage,
};

mod outcome;
pub use outcome::{Headline, PopulationOutcome, CONTAINED_SERVED_FRACTION};

/// Version of [`TrafficRecord`]'s schema written now. Version 3 added the
/// proxy's `sources`, version 2 the simulator's `population` and `attack`;
/// version 1 and 2 lines are still read.
pub const RECORD_VERSION: u32 = 3;

/// The oldest schema version `replay` reads.
pub const OLDEST_RECORD_VERSION: u32 = 1;

/// One request as the traffic record keeps it: hashes and fingerprints,
/// never keys or prompt text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficRecord {
    /// Schema version ([`RECORD_VERSION`]).
    pub v: u32,
    /// Arrival, milliseconds since the Unix epoch.
    pub t_ms: u64,
    /// The request's `x-request-id`.
    #[serde(default)]
    pub request_id: Option<String>,
    /// Account id (keyed hash, 16 hex digits).
    pub account: String,
    /// No API key: limited by client prefix.
    #[serde(default)]
    pub anonymous: bool,
    /// JA4.
    #[serde(default)]
    pub ja4: Option<String>,
    /// HTTP fingerprint.
    #[serde(default)]
    pub http: Option<String>,
    /// HTTP/2 fingerprint.
    #[serde(default)]
    pub h2: Option<String>,
    /// Client network prefix (CIDR).
    #[serde(default)]
    pub ip_prefix: Option<String>,
    /// AS number.
    #[serde(default)]
    pub asn: Option<u32>,
    /// Where each fingerprint part came from: `observed` by distill-guard
    /// or told by a trusted `front` (live records only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<crate::fingerprint::Sources>,
    /// Requested model.
    #[serde(default)]
    pub model: Option<String>,
    /// Estimated prompt tokens.
    #[serde(default)]
    pub input_tokens: u64,
    /// Requested output limit.
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    /// Thinking budget when enabled.
    #[serde(default)]
    pub thinking_budget: Option<u32>,
    /// Reasoning effort "high".
    #[serde(default)]
    pub reasoning_high: bool,
    /// Prompt-shape signature index keys (16 hex digits each); empty when
    /// the prompt was not informative.
    #[serde(default)]
    pub prompt_keys: Vec<String>,
    /// Distinct-fill key of the prompt (16 hex digits).
    #[serde(default)]
    pub fill_key: Option<String>,
    /// Names of the phrase lists the prompt matched.
    #[serde(default)]
    pub phrase_lists: Vec<String>,
    /// The user-agent claimed a client its fingerprints denied.
    #[serde(default)]
    pub inconsistent: bool,
    /// The account's age in seconds at this request, as the trusted auth
    /// front stated it (`[identity] account_created_header`); absent: the
    /// engine's own tenure is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_age_s: Option<u64>,
    /// Output tokens the response produced (0 when refused).
    #[serde(default)]
    pub output_tokens: u64,
    /// What the live proxy decided: allow, slow, degrade, throttle, block
    /// (empty in simulated records).
    #[serde(default)]
    pub decision: String,
    /// Simulated records only: the scenario population that sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub population: Option<String>,
    /// Simulated records only: that population is an attack (ground truth
    /// for the headline figures).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attack: bool,
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

impl TrafficRecord {
    /// The engine observation this record stands for under `config`.
    pub fn observation(&self, config: &Config, line: usize) -> Result<Observation, String> {
        let account = crate::config::accounts_file::parse_account_id(&self.account)
            .ok_or_else(|| format!("line {line}: account: expected 16 hex digits"))?;
        let prompt = if self.prompt_keys.is_empty() {
            None
        } else {
            let mut keys = [0u64; signature::INDEX_KEYS];
            if self.prompt_keys.len() != keys.len() {
                return Err(format!(
                    "line {line}: prompt_keys: expected {} keys, got {} (a record from a build \
                     with another key construction cannot be compared with this one's)",
                    keys.len(),
                    self.prompt_keys.len()
                ));
            }
            for (k, s) in keys.iter_mut().zip(&self.prompt_keys) {
                *k = hex(s).ok_or_else(|| format!("line {line}: prompt_keys: bad hex {s:?}"))?;
            }
            Some(keys)
        };
        let ip_prefix = match &self.ip_prefix {
            None => None,
            Some(p) => Some(
                p.parse::<ipnet::IpNet>()
                    .map_err(|_| format!("line {line}: ip_prefix: expected a CIDR, got {p:?}"))?,
            ),
        };
        let c = &config.cluster.policy;
        let attrs = if c.enabled {
            observed_attrs(
                self.ja4.as_deref(),
                self.http.as_deref(),
                self.h2.as_deref(),
                ip_prefix,
                self.asn,
                prompt,
                &c.ignore_nets,
                &c.downweight_nets,
            )
        } else {
            Default::default()
        };
        let names = config.detection.phrases.list_names();
        let hits = self
            .phrase_lists
            .iter()
            .filter_map(|n| names.iter().position(|x| x == n))
            .filter(|i| *i < 32)
            .fold(0u32, |m, i| m | (1 << i));
        Ok(Observation {
            account: AccountId(account),
            anonymous: self.anonymous,
            input_tokens: self.input_tokens,
            attrs,
            request: RequestFacts {
                thinking_budget: self.thinking_budget,
                reasoning_effort_high: self.reasoning_high,
                max_output_tokens: self.max_output_tokens,
                model: self.model.clone(),
                fill_key: self.fill_key.as_deref().and_then(hex),
                fingerprint_inconsistent: self.inconsistent,
                phrase_hits: PhraseHits(hits),
            },
            account_age: self
                .account_age_s
                .map(|s| s.saturating_mul(crate::engine::SECOND)),
        })
    }
}

/// What `replay` found.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// Lines read (including skipped ones).
    pub lines: u64,
    /// Lines replayed.
    pub replayed: u64,
    /// Malformed lines: (line number, reason), at most 100 kept.
    pub skipped: Vec<(usize, String)>,
    /// Malformed lines in all.
    pub skipped_total: u64,
    /// Decisions by action under the replayed policy.
    pub by_action: BTreeMap<String, u64>,
    /// Decisions by action in the record (what the live proxy did).
    pub live_by_action: BTreeMap<String, u64>,
    /// Requests whose replayed decision equals the recorded one.
    pub agree: u64,
    /// The largest clusters at the end: (id, members).
    pub top_clusters: Vec<(String, u32)>,
    /// Accounts the replayed policy slowed, degraded, throttled or blocked
    /// that the live proxy never did: (account, strongest action).
    pub newly_actioned: BTreeMap<String, String>,
    /// Headline figures per population, when the record is labelled
    /// (simulated traffic).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headline: Option<Headline>,
    /// With `--compare`: the other policy's decisions by action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare_by_action: Option<BTreeMap<String, u64>>,
    /// With `--compare`: accounts whose strongest action differs between
    /// the two policies: (this policy's, the other's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare_changes: Option<BTreeMap<String, (String, String)>>,
    /// With `--compare` on a labelled record: the other policy's headline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare_headline: Option<Headline>,
}

/// How to replay.
#[derive(Debug, Default)]
pub struct ReplayOptions {
    /// Stop at the first malformed line.
    pub strict: bool,
    /// Also run this other policy on the same lines and report the accounts
    /// whose strongest action differs.
    pub compare: Option<Config>,
}

const RANK: [&str; 5] = ["allow", "slow", "degrade", "throttle", "block"];

fn rank(a: &str) -> usize {
    RANK.iter().position(|x| *x == a).unwrap_or(0)
}

/// One policy replaying a record: its engine on the record's virtual clock
/// and what it decided, account by account and population by population.
pub struct Run<'c> {
    config: &'c Config,
    engine: Engine,
    last_now: Nanos,
    by_action: BTreeMap<String, u64>,
    strongest: BTreeMap<String, usize>,
    populations: BTreeMap<String, PopulationOutcome>,
}

impl<'c> Run<'c> {
    /// A run of `config`'s policy with no state.
    pub fn new(config: &'c Config) -> Run<'c> {
        Run {
            config,
            engine: Engine::new(config.policy()),
            last_now: 0,
            by_action: BTreeMap::new(),
            strongest: BTreeMap::new(),
            populations: BTreeMap::new(),
        }
    }

    /// Decide one record on the virtual clock (its time, never going
    /// backwards) and settle it at once with its output tokens — as many as
    /// the record says, or the degraded limit when this policy degrades it.
    /// `line` names the record in errors.
    pub fn step(&mut self, rec: &TrafficRecord, line: usize) -> Result<Decision, String> {
        let obs = rec.observation(self.config, line)?;
        let now = rec.t_ms.saturating_mul(1_000_000).max(self.last_now);
        self.last_now = now;
        let d = self.engine.decide(&obs, now);
        let served = d.verdict.clamp_output(rec.output_tokens);
        if let Some(t) = d.verdict.ticket() {
            self.engine.settle(
                t,
                Usage {
                    input_tokens: None,
                    output_tokens: served,
                },
                now,
            );
        }
        let label = d.label();
        *self.by_action.entry(label.to_string()).or_default() += 1;
        let first = !self.strongest.contains_key(&rec.account);
        let m = self.strongest.entry(rec.account.clone()).or_default();
        *m = (*m).max(rank(label));
        if let Some(p) = &rec.population {
            self.populations
                .entry(p.clone())
                .or_insert_with(|| PopulationOutcome::new(rec.attack, rec.t_ms))
                .record(rec, &d, served, first);
        }
        Ok(d)
    }

    /// The engine (clusters, scores) as the run left it.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Decisions by action so far.
    pub fn by_action(&self) -> &BTreeMap<String, u64> {
        &self.by_action
    }

    /// The headline figures, when the records were labelled.
    pub fn headline(&self) -> Option<Headline> {
        (!self.populations.is_empty()).then(|| Headline::new(&self.populations))
    }

    /// The largest clusters now: (id, members), at most `n`.
    fn top_clusters(&self, n: usize) -> Vec<(String, u32)> {
        let mut clusters: BTreeMap<u64, u32> = BTreeMap::new();
        for account in self.strongest.keys() {
            if let Some(id) = crate::config::accounts_file::parse_account_id(account) {
                if let Some(c) = self.engine.cluster_of(AccountId(id)) {
                    clusters.insert(c.id, c.members);
                }
            }
        }
        let mut top: Vec<(u64, u32)> = clusters.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top.into_iter()
            .take(n)
            .map(|(id, m)| (ClusterId(id).to_string(), m))
            .collect()
    }
}

/// The latest `t_ms` replay accepts: 2^63 ns after the epoch (April 2262,
/// where signed nanosecond clocks end). The engine adds windows and
/// intervals to its clock; this leaves it 292 years of headroom.
pub const MAX_T_MS: u64 = (1 << 63) / 1_000_000;

/// Parse one record line; `n` is its line number.
pub fn parse_line(line: &str, n: usize) -> Result<TrafficRecord, String> {
    let r = serde_json::from_str::<TrafficRecord>(line).map_err(|e| format!("line {n}: {e}"))?;
    if !(OLDEST_RECORD_VERSION..=RECORD_VERSION).contains(&r.v) {
        return Err(format!(
            "line {n}: record version {} (this build reads {OLDEST_RECORD_VERSION} to {RECORD_VERSION})",
            r.v
        ));
    }
    if r.t_ms > MAX_T_MS {
        return Err(format!(
            "line {n}: t_ms: expected at most {MAX_T_MS} (year 2262), got {}",
            r.t_ms
        ));
    }
    Ok(r)
}

/// Replay the record at `input` under `config`; per-request decisions go
/// to `decisions` as JSON lines when given.
pub fn replay(
    config: &Config,
    input: &mut dyn BufRead,
    options: &ReplayOptions,
    mut decisions: Option<&mut dyn Write>,
) -> Result<Summary, String> {
    let mut run = Run::new(config);
    // `--compare`: the other policy runs in lockstep on the same lines.
    let mut other = options.compare.as_ref().map(Run::new);
    let mut s = Summary::default();
    let mut live_max: BTreeMap<String, usize> = BTreeMap::new();
    let mut line = String::new();
    let mut n = 0usize;
    loop {
        line.clear();
        match input.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("line {}: cannot read: {e}", n + 1)),
        }
        n += 1;
        s.lines += 1;
        if line.trim().is_empty() {
            continue;
        }
        let step = parse_line(&line, n).and_then(|rec| {
            let d = run.step(&rec, n)?;
            Ok((rec, d))
        });
        let (rec, d) = match step {
            Ok(x) => x,
            Err(reason) => {
                if options.strict {
                    return Err(reason);
                }
                s.skipped_total += 1;
                if s.skipped.len() < 100 {
                    s.skipped.push((n, reason));
                }
                continue;
            }
        };
        if let Some(o) = other.as_mut() {
            o.step(&rec, n)
                .map_err(|reason| format!("--compare: {reason}"))?;
        }
        let label = d.label();
        s.replayed += 1;
        if !rec.decision.is_empty() {
            *s.live_by_action.entry(rec.decision.clone()).or_default() += 1;
            if rec.decision == label {
                s.agree += 1;
            }
        }
        let lm = live_max.entry(rec.account.clone()).or_default();
        *lm = (*lm).max(rank(&rec.decision));
        if let Some(out) = decisions.as_deref_mut() {
            let now = rec.t_ms.saturating_mul(1_000_000);
            let cluster_score = d
                .cluster
                .and_then(|c| run.engine().cluster_score(c.id, now))
                .map(|(sc, _)| {
                    let reasons: Vec<String> = sc
                        .top(5)
                        .iter()
                        .map(|c| format!("{}={:.3}", c.signal, c.contribution))
                        .collect();
                    serde_json::json!({
                        "score": sc.value,
                        "raw": sc.raw,
                        "evidence": sc.evidence,
                        "requests": sc.requests,
                        "reasons": reasons,
                    })
                });
            let v = serde_json::json!({
                "line": n,
                "t_ms": rec.t_ms,
                "request_id": rec.request_id,
                "account": rec.account,
                "population": rec.population,
                "decision": label,
                "recorded": rec.decision,
                "cluster": d.cluster.map(|c| ClusterId(c.id).to_string()),
                "cluster_members": d.cluster.map(|c| c.members),
                "cluster_enforced": d.cluster_enforced,
                "cluster_score": cluster_score,
                "score": d.detection.as_ref().map(|x| x.score.value),
                "scope": d.detection.as_ref().map(|x| x.scope.as_str()),
                "raw": d.detection.as_ref().map(|x| x.score.raw),
                "reasons": d.detection.as_ref().map(|x| {
                    x.score
                        .top(4)
                        .iter()
                        .map(|c| format!("{}={:.3}", c.signal, c.contribution))
                        .collect::<Vec<_>>()
                }),
            });
            writeln!(out, "{v}").map_err(|e| format!("writing decisions: {e}"))?;
        }
    }
    for (account, r) in &run.strongest {
        if *r > 0 && *r > live_max.get(account).copied().unwrap_or(0) {
            s.newly_actioned
                .insert(account.clone(), RANK[*r].to_string());
        }
    }
    if let Some(o) = &other {
        let mut changes = BTreeMap::new();
        for (account, r) in &run.strongest {
            let theirs = o.strongest.get(account).copied().unwrap_or(0);
            if theirs != *r {
                changes.insert(
                    account.clone(),
                    (RANK[*r].to_string(), RANK[theirs].to_string()),
                );
            }
        }
        s.compare_changes = Some(changes);
        s.compare_by_action = Some(o.by_action.clone());
        s.compare_headline = o.headline();
    }
    s.by_action = run.by_action.clone();
    s.headline = run.headline();
    s.top_clusters = run.top_clusters(10);
    Ok(s)
}

/// Replay a record file.
pub fn replay_file(
    config: &Config,
    path: &Path,
    options: &ReplayOptions,
    decisions: Option<&mut dyn Write>,
) -> Result<Summary, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    replay(config, &mut std::io::BufReader::new(f), options, decisions)
        .map_err(|e| format!("{}: {e}", path.display()))
}

impl Summary {
    /// The human-readable report `replay` prints.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "replayed {} of {} lines ({} malformed, skipped)",
            self.replayed, self.lines, self.skipped_total
        );
        for (line, reason) in self.skipped.iter().take(10) {
            // The reason names its line itself (for --strict's error).
            let prefix = format!("line {line}: ");
            let reason = reason.strip_prefix(&prefix).unwrap_or(reason);
            let _ = writeln!(out, "  skipped line {line}: {reason}");
        }
        let _ = writeln!(out, "decisions (replayed | recorded):");
        for a in RANK {
            let _ = writeln!(
                out,
                "  {a:<9} {:>10} | {:>10}",
                self.by_action.get(a).copied().unwrap_or(0),
                self.live_by_action.get(a).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(
            out,
            "same decision as recorded: {} of {}",
            self.agree, self.replayed
        );
        let _ = writeln!(out, "largest clusters at the end:");
        for (id, m) in &self.top_clusters {
            let _ = writeln!(out, "  {id}  {m} members");
        }
        let _ = writeln!(
            out,
            "accounts newly slowed/degraded/throttled/blocked: {}",
            self.newly_actioned.len()
        );
        for (a, action) in self.newly_actioned.iter().take(20) {
            let _ = writeln!(out, "  {a}  {action}");
        }
        if let Some(h) = &self.headline {
            let _ = writeln!(out, "headline (labelled traffic):");
            let other = self.compare_headline.as_ref().map(|o| ("other", o));
            out.push_str(&h.render("this policy", other));
        }
        if let (Some(by), Some(changes)) = (&self.compare_by_action, &self.compare_changes) {
            let _ = writeln!(out, "compared with the other policy (this | other):");
            for a in RANK {
                let _ = writeln!(
                    out,
                    "  {a:<9} {:>10} | {:>10}",
                    self.by_action.get(a).copied().unwrap_or(0),
                    by.get(a).copied().unwrap_or(0)
                );
            }
            let _ = writeln!(
                out,
                "accounts whose strongest action differs: {}",
                changes.len()
            );
            for (a, (this, other)) in changes.iter().take(50) {
                let _ = writeln!(out, "  {a}  {this} -> {other}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A live record says where its fingerprint parts came from (v3); the
    /// line reads back as written, and version 2 lines without it still read.
    #[test]
    fn sources_round_trip_and_older_lines_still_read() {
        use crate::fingerprint::{Source, Sources};
        let rec = TrafficRecord {
            v: RECORD_VERSION,
            account: "00000000000000aa".into(),
            ja4: Some("t13d1516h2_8daaf6152771_e5627efa2ab1".into()),
            ip_prefix: Some("198.51.100.0/24".into()),
            sources: Some(Sources {
                ja4: Some(Source::Front),
                address: Some(Source::Front),
                http: Some(Source::Observed),
                ..Sources::default()
            }),
            ..Default::default()
        };
        let line = serde_json::to_string(&rec).unwrap();
        assert!(
            line.contains(r#""sources":{"ja4":"front","http":"observed","address":"front"}"#),
            "{line}"
        );
        assert_eq!(parse_line(&line, 1).unwrap(), rec);
        let v2 =
            r#"{"v":2,"t_ms":1,"account":"00000000000000aa","input_tokens":1,"output_tokens":1}"#;
        assert_eq!(parse_line(v2, 1).unwrap().sources, None);
    }

    /// Found by the `traffic_record` fuzz target: `t_ms` = u64::MAX became
    /// a clock of u64::MAX nanoseconds and the engine's next maintenance
    /// time overflowed (a panic with overflow checks, maintenance on every
    /// request without). Such a line is now malformed, and a record at the
    /// limit, with the largest token counts, replays.
    #[test]
    fn times_past_the_clock_are_malformed_lines() {
        let config = crate::demo::default_config().unwrap();
        let fuzzed = r#"{"v":2,"t_ms":18446744073709551615,"account":"00000000000000aa","ip_prefix":"2001:db8::/48","anonymous":true,"output_tokens":18446744073709551615,"input_tokens":18446744073709551615}"#;
        let e = parse_line(fuzzed, 7).unwrap_err();
        assert!(e.starts_with("line 7: t_ms: expected at most"), "{e}");
        let late = fuzzed.replace(
            "18446744073709551615,\"account",
            &format!("{},\"account", MAX_T_MS + 1),
        );
        assert!(parse_line(&late, 1).is_err());

        let mut run = Run::new(&config);
        for (i, t) in [0, 1_700_000_000_000, MAX_T_MS - 1, MAX_T_MS]
            .into_iter()
            .enumerate()
        {
            let line = fuzzed.replace("18446744073709551615,\"account", &format!("{t},\"account"));
            let rec = parse_line(&line, i + 1).unwrap();
            run.step(&rec, i + 1).unwrap();
            run.step(&rec, i + 1).unwrap();
        }
    }
}
