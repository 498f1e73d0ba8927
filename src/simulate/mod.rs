//! `distill-guard simulate`: generate traffic from a scenario (ordinary
//! users, a corporate NAT, batch jobs, evaluation runs, a hydra cluster, a
//! stealthier campaign — see [`scenario`]) and measure what a policy does to
//! it, beside a per-key-limits-only policy (what other gateways can do).
//!
//! Generation is deterministic: the same scenario and seed give the same
//! requests, byte for byte, on every run. Each population draws from its
//! own streams (seeded by the scenario's seed and the population's name),
//! so adding or removing a population leaves the others' traffic as it
//! was. It is also open-loop: a campaign's accounts send on their schedule
//! whatever the answers were (a refused exchange is counted as refused, not
//! retried), so the figures say what share of a fixed campaign got through.
//!
//! A [`SimRequest`] is one request with its prompt text; [`Generator`]
//! yields them in time order. `simulate` turns each into a traffic record
//! (the same fields the proxy records, schema version 2, labelled with its
//! population) and replays it under both policies ([`crate::replay::Run`]);
//! `demo --traffic` sends the same requests through the real proxy.

pub mod family;
pub mod redteam;
pub mod scenario;
pub mod strategy;

use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::config::Config;
use crate::engine::{AccountId, Decision};
use crate::prompt::PhraseMatcher;
use crate::replay::{Headline, Run, TrafficRecord, RECORD_VERSION};
pub use scenario::{Piece, Population, Scenario, Timing};

/// SplitMix64 finaliser of `a` and `b`: a stable 64-bit mix for seeds and
/// per-account choices.
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a
        .wrapping_add(b.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The random stream of one population of a scenario: drawn from the
/// scenario's seed and the population's name (unique in a scenario), never
/// from its position, so adding or removing a population leaves every
/// other population's draws — and so its traffic — as they were. `purpose`
/// tells apart the streams one population uses (its parameters, its
/// schedule, its requests).
pub(crate) fn population_stream(seed: u64, name: &str, purpose: u64) -> u64 {
    mix(mix(seed, name_hash(name)), purpose)
}

/// [`population_stream`] as a generator.
pub(crate) fn population_rng(seed: u64, name: &str, purpose: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(population_stream(seed, name, purpose))
}

/// Purposes of a population's streams.
const SCHEDULE_STREAM: u64 = 0x5c4e;
const REQUEST_STREAM: u64 = 0x5eed;

/// One generated request.
#[derive(Debug, Clone, PartialEq)]
pub struct SimRequest {
    /// Arrival, ms since the Unix epoch.
    pub t_ms: u64,
    /// Index of the population in the scenario.
    pub population: usize,
    /// Index of the account in its population.
    pub account: u32,
    /// Index of the client profile (into the population's ja4/http/h2
    /// lists, each taken modulo its length).
    pub profile: usize,
    /// Client address.
    pub address: IpAddr,
    /// Its AS number.
    pub asn: Option<u32>,
    /// Model.
    pub model: String,
    /// Prompt text.
    pub prompt: String,
    /// Requested output limit.
    pub max_tokens: u32,
    /// Thinking budget when thinking is on.
    pub thinking_budget: Option<u32>,
    /// Output tokens a full answer has.
    pub output_tokens: u64,
    /// The user-agent claims a client its fingerprints deny.
    pub inconsistent: bool,
    /// Cover traffic of an attack (warm-up or mixed in): an ordinary
    /// question, not extraction. Its record carries no population label,
    /// so the headline figures count only the extraction.
    pub cover: bool,
}

/// One scheduled request. Ties in time are broken by the population's
/// stream (not its position) and the account, so the order of two
/// populations' requests does not depend on a third.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    t_ms: u64,
    /// The population's request stream ([`population_stream`]).
    stream: u64,
    account: u32,
    /// The request's number in its population's schedule: with `stream`,
    /// what seeds the request's own draws.
    n: u32,
    population: u32,
}

/// A scenario's requests in time order.
#[derive(Debug)]
pub struct Generator<'s> {
    scenario: &'s Scenario,
    events: Vec<Event>,
    next: usize,
}

impl<'s> Generator<'s> {
    /// Schedule every request of the scenario (arrival times only; the
    /// requests themselves are made as they are taken).
    pub fn new(scenario: &'s Scenario) -> Generator<'s> {
        let mut events = Vec::new();
        for (i, p) in scenario.populations.iter().enumerate() {
            let mut rng = population_rng(scenario.seed, &p.name, SCHEDULE_STREAM);
            let stream = population_stream(scenario.seed, &p.name, REQUEST_STREAM);
            schedule(p, (i as u32, stream), &mut rng, &mut events);
        }
        events.sort_unstable();
        for e in &mut events {
            e.t_ms += scenario.start_unix_ms;
        }
        Generator {
            scenario,
            events,
            next: 0,
        }
    }

    /// Requests in all.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// No requests at all.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Requests not yet taken.
    pub fn remaining(&self) -> usize {
        self.events.len() - self.next
    }
}

impl Iterator for Generator<'_> {
    type Item = SimRequest;

    fn next(&mut self) -> Option<SimRequest> {
        let e = *self.events.get(self.next)?;
        self.next += 1;
        Some(make_request(self.scenario, e))
    }
}

/// Arrival times (ms from the scenario start) of one population, the
/// population's position and request stream.
fn schedule(
    p: &Population,
    (index, stream): (u32, u64),
    rng: &mut ChaCha8Rng,
    out: &mut Vec<Event>,
) {
    let per_ms = p.rate_per_hour / 3_600_000.0;
    let (start, end) = (p.start_ms as f64, p.end_ms as f64);
    let mut n = 0u32;
    let mut push = |t: f64, account: u32| {
        if t >= start && t < end {
            out.push(Event {
                t_ms: t as u64,
                stream,
                account,
                n,
                population: index,
            });
            n = n.wrapping_add(1);
        }
    };
    match p.timing {
        Timing::Poisson => {
            for a in 0..p.accounts {
                let mut t = start;
                loop {
                    t += -(1.0 - rng.gen::<f64>()).ln() / per_ms;
                    if t >= end {
                        break;
                    }
                    push(t, a);
                }
            }
        }
        Timing::Periodic { jitter } => {
            let period = 1.0 / per_ms;
            for a in 0..p.accounts {
                let mut t = start + rng.gen::<f64>() * period;
                while t < end {
                    push(t, a);
                    t += period * (1.0 + jitter * (2.0 * rng.gen::<f64>() - 1.0));
                }
            }
        }
        Timing::Sessions {
            per_day,
            minutes: [lo, hi],
        } => {
            let sessions_per_ms = per_day / 86_400_000.0;
            for a in 0..p.accounts {
                // A session that began before `start` may still run.
                let mut session = start - (hi * 60_000) as f64;
                loop {
                    session += -(1.0 - rng.gen::<f64>()).ln() / sessions_per_ms;
                    if session >= end {
                        break;
                    }
                    let until = session + (rng.gen_range(lo..=hi) * 60_000) as f64;
                    let mut t = session;
                    loop {
                        t += -(1.0 - rng.gen::<f64>()).ln() / per_ms;
                        if t >= until || t >= end {
                            break;
                        }
                        push(t, a);
                    }
                }
            }
        }
        Timing::Waves {
            period_ms,
            spread_ms,
        } => {
            let join = (per_ms * period_ms as f64).min(1.0);
            let mut wave = start;
            while wave < end {
                for a in 0..p.accounts {
                    if rng.gen::<f64>() < join {
                        push(wave + rng.gen::<f64>() * spread_ms as f64, a);
                    }
                }
                wave += period_ms as f64;
            }
        }
    }
}

/// Common English words mixed into prompts, so unrelated prompts share
/// the stock words real ones do.
const COMMON: [&str; 48] = [
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "for",
    "that",
    "with",
    "on",
    "how",
    "what",
    "can",
    "you",
    "my",
    "this",
    "please",
    "explain",
    "write",
    "why",
    "when",
    "best",
    "make",
    "use",
    "should",
    "about",
    "from",
    "help",
    "need",
    "would",
    "code",
    "data",
    "email",
    "list",
    "time",
    "work",
    "team",
    "plan",
    "idea",
    "short",
    "simple",
    "example",
    "difference",
    "between",
    "summary",
    "question",
    "answer",
];

const SYLLABLES: [&str; 24] = [
    "ka", "lo", "mi", "ter", "an", "su", "vel", "ro", "din", "pa", "qui", "es", "bor", "li", "nu",
    "ga", "tas", "re", "om", "fi", "del", "cu", "zan", "ep",
];

/// `n` words: a quarter common words, the rest drawn from ~14k made-up
/// three-syllable words (so distinct users' topics rarely coincide).
fn words(rng: &mut ChaCha8Rng, n: u32, out: &mut String) {
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        if rng.gen_bool(0.25) {
            out.push_str(COMMON[rng.gen_range(0..COMMON.len())]);
        } else {
            for _ in 0..3 {
                out.push_str(SYLLABLES[rng.gen_range(0..SYLLABLES.len())]);
            }
        }
    }
}

/// An index below `len` (at least 1): fixed by the account, or drawn.
fn pick(rng: &mut ChaCha8Rng, per: scenario::Per, account_key: u64, len: usize) -> usize {
    let len = len.max(1);
    match per {
        scenario::Per::Account => (account_key % len as u64) as usize,
        scenario::Per::Request => rng.gen_range(0..len),
    }
}

/// A hash as a number in [0, 1) (its top 53 bits), for per-account draws
/// that come from the account's key rather than a stream.
pub(crate) fn unit_of(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The generator's key of account `account` of population `p`: what its
/// per-account choices (stack, address, template, tenure) are drawn from.
fn account_key(s: &Scenario, p: &scenario::Population, account: u32) -> u64 {
    mix(mix(s.seed, name_hash(&p.name)), u64::from(account))
}

/// The request of event `e`: its draws come from its population's request
/// stream and its number there, nothing else.
fn make_request(s: &Scenario, e: Event) -> SimRequest {
    let p = &s.populations[e.population as usize];
    let mut rng = ChaCha8Rng::seed_from_u64(mix(e.stream, u64::from(e.n)));
    let account_key = account_key(s, p, e.account);
    let profiles = p.ja4.len().max(p.http.len()).max(p.h2.len());
    let mut profile = pick(&mut rng, p.fingerprint_per, account_key, profiles);
    let a = pick(
        &mut rng,
        p.address_per,
        account_key >> 16,
        p.addresses.len(),
    );
    let (mut address, mut asn) = (p.addresses[a], p.address_asns.get(a).copied());
    if let Some(c) = p
        .second_client
        .as_ref()
        .filter(|c| c.sends(account_key, e.stream, e.n))
    {
        // One of the account's other clients: its own stack and address.
        let second = match c.client(e.stream, e.n) {
            0 => account_key.rotate_left(23),
            k => mix(account_key.rotate_left(23), u64::from(k)),
        };
        profile = pick(&mut rng, scenario::Per::Account, second, profiles);
        let b = pick(
            &mut rng,
            scenario::Per::Account,
            second >> 16,
            c.addresses.len(),
        );
        (address, asn) = (c.addresses[b], c.address_asns.get(b).copied());
    }
    let t = pick(
        &mut rng,
        p.template_per,
        account_key >> 32,
        p.templates.len(),
    );
    let mut prompt = String::with_capacity(512);
    let since_start = e.t_ms.saturating_sub(s.start_unix_ms);
    let cover = (p.warmup_ms > 0 && since_start < p.start_ms + p.warmup_ms)
        || (p.cover_share > 0.0 && rng.gen_bool(p.cover_share));
    if cover {
        return cover_request(p, e, &mut rng, profile, (address, asn));
    }
    match p.templates.get(t) {
        None => {
            let n = rng.gen_range(p.prompt_words[0]..=p.prompt_words[1]);
            words(&mut rng, n, &mut prompt);
        }
        Some(pieces) => {
            for piece in pieces {
                match piece {
                    Piece::Text(x) => prompt.push_str(x),
                    Piece::Choice(alts) => {
                        let paraphrased =
                            p.paraphrase_share >= 1.0 || rng.gen_bool(p.paraphrase_share);
                        let i = if paraphrased {
                            rng.gen_range(0..alts.len())
                        } else {
                            0
                        };
                        prompt.push_str(&alts[i]);
                    }
                    Piece::Fill => {
                        let n = rng.gen_range(p.fill_words[0]..=p.fill_words[1]);
                        words(&mut rng, n, &mut prompt);
                    }
                }
            }
        }
    }
    if p.elicitation_share > 0.0 && rng.gen_bool(p.elicitation_share) {
        let phrase = &p.elicitation_phrases[rng.gen_range(0..p.elicitation_phrases.len())];
        prompt.push_str(". ");
        prompt.push_str(phrase);
    }
    let thinking = p.thinking_share > 0.0 && rng.gen_bool(p.thinking_share);
    SimRequest {
        t_ms: e.t_ms,
        population: e.population as usize,
        account: e.account,
        profile,
        address,
        asn,
        model: p.models[rng.gen_range(0..p.models.len())].clone(),
        prompt,
        max_tokens: max_tokens(p, &mut rng, account_key),
        thinking_budget: thinking.then_some(p.thinking_budget),
        output_tokens: rng.gen_range(p.output_tokens[0]..=p.output_tokens[1]),
        inconsistent: p.inconsistent_share > 0.0 && rng.gen_bool(p.inconsistent_share),
        cover: false,
    }
}

/// A request's `max_tokens`: drawn per request, or the one its account's
/// client pins (a share of the accounts, chosen by the account's key).
fn max_tokens(p: &Population, rng: &mut ChaCha8Rng, account_key: u64) -> u32 {
    let drawn = p.max_tokens[rng.gen_range(0..p.max_tokens.len())];
    let pins = unit_of(mix(account_key, 0x919));
    if pins < p.pinned_max_tokens_share {
        p.max_tokens[(account_key >> 40) as usize % p.max_tokens.len()]
    } else {
        drawn
    }
}

/// `max_tokens` of cover requests: what chat clients send.
const COVER_MAX_TOKENS: [u32; 3] = [1024, 2048, 4096];

/// A cover request of an attack account: an ordinary free-text question
/// from the account's client, with a chat client's limits and a short
/// answer.
fn cover_request(
    p: &Population,
    e: Event,
    rng: &mut ChaCha8Rng,
    profile: usize,
    (address, asn): (IpAddr, Option<u32>),
) -> SimRequest {
    let mut prompt = String::with_capacity(256);
    let n = rng.gen_range(8..=120);
    words(rng, n, &mut prompt);
    SimRequest {
        t_ms: e.t_ms,
        population: e.population as usize,
        account: e.account,
        profile,
        address,
        asn,
        model: p.models[rng.gen_range(0..p.models.len())].clone(),
        prompt,
        max_tokens: COVER_MAX_TOKENS[rng.gen_range(0..COVER_MAX_TOKENS.len())],
        thinking_budget: None,
        output_tokens: rng.gen_range(80..=1200),
        inconsistent: false,
        cover: true,
    }
}

impl SimRequest {
    /// The API key this request's account sends (through the real proxy).
    pub fn api_key(&self, s: &Scenario) -> String {
        format!(
            "sim-{}-{}-{}",
            s.seed, s.populations[self.population].name, self.account
        )
    }

    /// The account id a record carries for it (16 hex digits; `simulate`
    /// has no proxy secret, so this is a plain hash of the key).
    pub fn account_id(&self, s: &Scenario) -> u64 {
        account_id(s, self.population, self.account)
    }

    /// Its account's age in seconds at this request, as a trusted auth
    /// front states it ([`scenario::Population::account_age_s`]); None:
    /// its population states none.
    pub fn account_age_s(&self, s: &Scenario) -> Option<u64> {
        let p = &s.populations[self.population];
        p.account_age_s(
            account_key(s, p, self.account),
            self.t_ms.saturating_sub(s.start_unix_ms),
        )
    }

    /// The traffic record the proxy would write for this request under
    /// `config` (its prefix lengths, phrase lists), with the population
    /// label, and the output a full answer has.
    pub fn record(&self, s: &Scenario, config: &Config, matcher: &PhraseMatcher) -> TrafficRecord {
        let p = &s.populations[self.population];
        let fp =
            |list: &[String]| (!list.is_empty()).then(|| list[self.profile % list.len()].clone());
        let prompt = crate::prompt::features(matcher, &self.prompt, crate::prompt::Wanted::ALL);
        TrafficRecord {
            v: RECORD_VERSION,
            t_ms: self.t_ms,
            request_id: None,
            account: AccountId(self.account_id(s)).to_string(),
            anonymous: false,
            account_age_s: self.account_age_s(s),
            ja4: fp(&p.ja4),
            http: fp(&p.http),
            h2: fp(&p.h2),
            ip_prefix: Some(
                crate::fingerprint::network::prefix(
                    self.address,
                    config.fingerprint.ipv4_prefix_len,
                    config.fingerprint.ipv6_prefix_len,
                )
                .to_string(),
            ),
            asn: self.asn,
            sources: None,
            model: Some(self.model.clone()),
            input_tokens: u64::from(prompt.input_tokens),
            max_output_tokens: Some(self.max_tokens),
            thinking_budget: self.thinking_budget,
            reasoning_high: false,
            prompt_keys: prompt
                .keys
                .iter()
                .flatten()
                .map(|k| format!("{k:016x}"))
                .collect(),
            fill_key: prompt.fill_key.map(|k| format!("{k:016x}")),
            phrase_lists: matcher
                .hit_names(prompt.phrase_hits)
                .map(String::from)
                .collect(),
            inconsistent: self.inconsistent,
            output_tokens: self.output_tokens,
            decision: String::new(),
            population: (!self.cover).then(|| p.name.clone()),
            attack: p.attack && !self.cover,
        }
    }
}

/// The account id of account `account` of population `population`, as
/// [`SimRequest::account_id`] gives it.
pub fn account_id(s: &Scenario, population: usize, account: u32) -> u64 {
    let key = format!(
        "sim-{}-{}-{account}",
        s.seed, s.populations[population].name
    );
    mix(s.seed ^ 0xacc0, name_hash(&key))
}

/// The per-key-limits-only policy of `config`: the same tiers and
/// accounts, no clusters, no behaviour detection — what a gateway with
/// per-key rate limits does.
pub fn per_key_only(config: &Config) -> Config {
    let mut c = config.clone();
    c.cluster.policy.enabled = false;
    c.detection.enabled = false;
    c
}

/// What `simulate` measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// The seed the traffic was generated from.
    pub seed: u64,
    /// Requests generated.
    pub requests: u64,
    /// The policy's headline figures.
    #[serde(flatten)]
    pub policy: Headline,
    /// The per-key-only baseline's.
    pub baseline: Headline,
}

impl Report {
    /// The report as text: the headline figures side by side.
    pub fn render(&self) -> String {
        format!(
            "scenario {} (seed {}): {} requests\n{}",
            self.scenario,
            self.seed,
            self.requests,
            self.policy
                .render("policy", Some(("per-key only", &self.baseline)))
        )
    }
}

/// Generate the scenario's traffic, write it as a traffic record to
/// `record` when given, and replay it under `config` and under
/// `baseline`.
pub fn simulate(
    scenario: &Scenario,
    config: &Config,
    baseline: &Config,
    mut record: Option<&mut dyn Write>,
) -> Result<Report, String> {
    let (policy, base, n) = drive(scenario, config, baseline, |rec, _, _| {
        if let Some(out) = record.as_deref_mut() {
            serde_json::to_writer(&mut *out, rec)
                .map_err(|e| format!("writing the record: {e}"))?;
            out.write_all(b"\n")
                .map_err(|e| format!("writing the record: {e}"))?;
        }
        Ok(())
    })?;
    Ok(Report {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        requests: n,
        policy: policy.headline().unwrap_or_default(),
        baseline: base.headline().unwrap_or_default(),
    })
}

/// Generate the scenario's traffic and replay it under `config` and under
/// `baseline`; `each` sees every record with the policy's decision and the
/// policy's run as it stands after it. Returns both runs and the number of
/// requests.
pub fn drive<'c>(
    scenario: &Scenario,
    config: &'c Config,
    baseline: &'c Config,
    mut each: impl FnMut(&TrafficRecord, &Decision, &Run<'c>) -> Result<(), String>,
) -> Result<(Run<'c>, Run<'c>, u64), String> {
    let matcher = config.detection.phrases.clone();
    let mut policy = Run::new(config);
    let mut base = Run::new(baseline);
    let mut n = 0u64;
    // Generation (prompt text, signatures, phrase scans) runs on its own
    // thread, a batch ahead of the two replays; order is kept, so the
    // result is the same as in one thread.
    const BATCH: usize = 4096;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<TrafficRecord>>(4);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            for req in Generator::new(scenario) {
                batch.push(req.record(scenario, config, &matcher));
                if batch.len() == BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    if tx.send(full).is_err() {
                        return; // the consumer stopped on an error
                    }
                }
            }
            let _ = tx.send(batch);
        });
        for batch in rx {
            for rec in &batch {
                n += 1;
                let line = usize::try_from(n).unwrap_or(usize::MAX);
                let d = policy.step(rec, line)?;
                base.step(rec, line)?;
                each(rec, &d, &policy)?;
            }
        }
        Ok::<(), String>(())
    })?;
    Ok((policy, base, n))
}

/// The least, the median and the greatest of one figure over several runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread<T> {
    /// The least.
    pub min: T,
    /// The median (of an even count, the mean of the middle two; `None` in
    /// a containment median means a middle run never contained).
    pub median: T,
    /// The greatest.
    pub max: T,
}

/// The spread of sorted values; `mid` is the median of the middle two of an
/// even count.
fn spread_sorted<T: Copy + Default>(xs: &[T], mid: impl Fn(T, T) -> T) -> Spread<T> {
    let n = xs.len();
    let at = |i: usize| xs.get(i).copied().unwrap_or_default();
    let median = match n {
        0 => T::default(),
        _ if n % 2 == 1 => at(n / 2),
        _ => mid(at(n / 2 - 1), at(n / 2)),
    };
    Spread {
        min: at(0),
        median,
        max: at(n.saturating_sub(1)),
    }
}

fn spread_of(mut xs: Vec<f64>) -> Spread<f64> {
    xs.sort_by(f64::total_cmp);
    spread_sorted(&xs, |a, b| (a + b) / 2.0)
}

/// Seconds, `None` for never: never sorts after every time.
fn spread_of_seconds(mut xs: Vec<Option<u64>>) -> Spread<Option<u64>> {
    xs.sort_by_key(|x| x.unwrap_or(u64::MAX));
    spread_sorted(&xs, |a, b| a.zip(b).map(|(a, b)| (a + b) / 2))
}

/// The policy's headline figures over several seeds of one scenario.
#[derive(Debug, Serialize)]
pub struct SeedsReport {
    /// Scenario name.
    pub scenario: String,
    /// Each seed's full report, in seed order.
    pub runs: Vec<Report>,
    /// Spread of `attack_served_fraction`.
    pub attack_served_fraction: Spread<f64>,
    /// Spread of `attack_first_served_fraction`.
    pub attack_first_served_fraction: Spread<f64>,
    /// Spread of `attack_output_tokens_fraction`.
    pub attack_output_tokens_fraction: Spread<f64>,
    /// Spread of `legit_refused_fraction`.
    pub legit_refused_fraction: Spread<f64>,
    /// Spread of `legit_slowed_fraction`.
    pub legit_slowed_fraction: Spread<f64>,
    /// Spread of `legit_degraded_fraction`.
    pub legit_degraded_fraction: Spread<f64>,
    /// Spread of `containment_seconds`.
    pub containment_seconds: Spread<Option<u64>>,
    /// Spread of `sustained_containment_seconds`.
    pub sustained_containment_seconds: Spread<Option<u64>>,
}

impl SeedsReport {
    /// Sums up the runs (one per seed).
    pub fn new(runs: Vec<Report>) -> SeedsReport {
        let f =
            |get: fn(&Headline) -> f64| spread_of(runs.iter().map(|r| get(&r.policy)).collect());
        let secs = |get: fn(&Headline) -> Option<u64>| {
            spread_of_seconds(runs.iter().map(|r| get(&r.policy)).collect())
        };
        SeedsReport {
            scenario: runs.first().map(|r| r.scenario.clone()).unwrap_or_default(),
            attack_served_fraction: f(|h| h.attack_served_fraction),
            attack_first_served_fraction: f(|h| h.attack_first_served_fraction),
            attack_output_tokens_fraction: f(|h| h.attack_output_tokens_fraction),
            legit_refused_fraction: f(|h| h.legit_refused_fraction),
            legit_slowed_fraction: f(|h| h.legit_slowed_fraction),
            legit_degraded_fraction: f(|h| h.legit_degraded_fraction),
            containment_seconds: secs(|h| h.containment_seconds),
            sustained_containment_seconds: secs(|h| h.sustained_containment_seconds),
            runs,
        }
    }

    /// The report as text: the policy's figures, a line per seed, then their spread.
    pub fn render(&self) -> String {
        let pct = |x: f64| format!("{:.3} %", x * 100.0);
        let secs = |x: Option<u64>| x.map_or("never".to_string(), |s| format!("{s} s"));
        let mut out = format!("scenario {}: {} seeds\n", self.scenario, self.runs.len());
        let mut line = |cols: [&str; 9]| {
            let [a, b, c, d, e, f, g, h, i] = cols;
            let _ = writeln!(
                out,
                "{a:>6} {b:>9} {c:>14} {d:>14} {e:>12} {f:>12} {g:>14} {h:>14} {i:>14}"
            );
        };
        line([
            "seed",
            "requests",
            "attack served",
            "first contact",
            "containment",
            "sustained",
            "legit refused",
            "legit slowed",
            "legit degraded",
        ]);
        for r in &self.runs {
            let h = &r.policy;
            let cols = [
                r.seed.to_string(),
                r.requests.to_string(),
                pct(h.attack_served_fraction),
                pct(h.attack_first_served_fraction),
                secs(h.containment_seconds),
                secs(h.sustained_containment_seconds),
                pct(h.legit_refused_fraction),
                pct(h.legit_slowed_fraction),
                pct(h.legit_degraded_fraction),
            ];
            line(cols.each_ref().map(String::as_str));
        }
        let _ = writeln!(out, "spread over the seeds (min / median / max):");
        let mut row = |label: &str, s: [String; 3]| {
            let _ = writeln!(out, "  {label:<38} {} / {} / {}", s[0], s[1], s[2]);
        };
        let p = |s: &Spread<f64>| [pct(s.min), pct(s.median), pct(s.max)];
        let t = |s: &Spread<Option<u64>>| [secs(s.min), secs(s.median), secs(s.max)];
        row("attack served in full", p(&self.attack_served_fraction));
        row(
            "  of it on accounts' first requests",
            p(&self.attack_first_served_fraction),
        );
        row(
            "attack output tokens let out",
            p(&self.attack_output_tokens_fraction),
        );
        row(
            "first containment (slowest attack)",
            t(&self.containment_seconds),
        );
        row(
            "sustained containment",
            t(&self.sustained_containment_seconds),
        );
        row("legitimate refused", p(&self.legit_refused_fraction));
        row("legitimate slowed", p(&self.legit_slowed_fraction));
        row("legitimate degraded", p(&self.legit_degraded_fraction));
        out
    }
}

#[cfg(test)]
mod tests;
