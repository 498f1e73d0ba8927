//! Scenario files: the populations `simulate` generates traffic for.
//! TOML, unknown keys are errors, every error is located
//! (`FILE:LINE:COL: key: reason`). `config/scenarios/*.toml` are annotated
//! examples; `docs/scenarios.md` describes every key.

use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

use crate::config::ConfigError;

/// The small scenario (two simulated hours), compiled in so the demo and
/// the tuning family run from any directory.
pub const SMALL_SCENARIO: &str = include_str!("../../config/scenarios/small.toml");

/// A scenario as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default = "default_start")]
    start_unix_ms: u64,
    duration_minutes: u64,
    #[serde(rename = "population")]
    populations: Vec<PopulationFile>,
}

fn default_seed() -> u64 {
    1
}

/// 2026-01-01T00:00:00Z.
fn default_start() -> u64 {
    1_767_225_600_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PopulationFile {
    name: String,
    #[serde(default)]
    attack: bool,
    accounts: u32,
    requests_per_account_per_hour: f64,
    #[serde(default)]
    start_minute: u64,
    #[serde(default)]
    end_minute: Option<u64>,
    #[serde(default)]
    timing: TimingFile,
    #[serde(default)]
    jitter: f64,
    #[serde(default = "default_wave_period")]
    wave_period_s: u64,
    #[serde(default = "default_wave_spread")]
    wave_spread_ms: u64,
    #[serde(default = "default_sessions_per_day")]
    sessions_per_day: f64,
    #[serde(default = "default_session_minutes")]
    session_minutes: [u64; 2],
    #[serde(default)]
    ja4: Vec<String>,
    #[serde(default)]
    http: Vec<String>,
    #[serde(default)]
    h2: Vec<String>,
    #[serde(default)]
    fingerprint_per: Per,
    networks: Vec<String>,
    #[serde(default)]
    asns: Vec<u32>,
    addresses: u32,
    #[serde(default)]
    address_per: Per,
    #[serde(default = "default_models")]
    models: Vec<String>,
    #[serde(default)]
    templates: Vec<String>,
    #[serde(default = "default_template_per")]
    template_per: Per,
    #[serde(default = "default_words")]
    prompt_words: [u32; 2],
    #[serde(default = "default_fill")]
    fill_words: [u32; 2],
    #[serde(default)]
    elicitation_share: f64,
    #[serde(default)]
    elicitation_phrases: Vec<String>,
    max_tokens: Vec<u32>,
    #[serde(default)]
    pinned_max_tokens_share: f64,
    #[serde(default)]
    thinking_share: f64,
    #[serde(default)]
    thinking_budget: u32,
    output_tokens: [u64; 2],
    #[serde(default)]
    inconsistent_share: f64,
    #[serde(default)]
    stealth: bool,
    #[serde(default = "default_paraphrase")]
    paraphrase_share: f64,
    #[serde(default)]
    warmup_minutes: u64,
    #[serde(default)]
    cover_share: f64,
    #[serde(default)]
    community: Option<String>,
    #[serde(default)]
    tenure_hours: Option<[f64; 2]>,
    #[serde(default)]
    new_accounts: f64,
    #[serde(default)]
    second_client: Option<SecondClientFile>,
}

/// `second_client` of a population in a scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecondClientFile {
    accounts: f64,
    requests: f64,
    networks: Vec<String>,
    #[serde(default)]
    asns: Vec<u32>,
    addresses: u32,
    #[serde(default = "one")]
    clients: u32,
}

fn one() -> u32 {
    1
}

fn default_paraphrase() -> f64 {
    1.0
}

fn default_wave_period() -> u64 {
    60
}
fn default_wave_spread() -> u64 {
    2000
}
fn default_sessions_per_day() -> f64 {
    3.0
}
fn default_session_minutes() -> [u64; 2] {
    [20, 90]
}
fn default_models() -> Vec<String> {
    vec!["claude-sonnet-4-5".into()]
}
fn default_template_per() -> Per {
    Per::Request
}
fn default_words() -> [u32; 2] {
    [10, 80]
}
fn default_fill() -> [u32; 2] {
    [10, 40]
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum TimingFile {
    #[default]
    Poisson,
    Periodic,
    Waves,
    Sessions,
}

/// Whether a choice is made once per account or for every request.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    /// Each account keeps one value (chosen by its index).
    #[default]
    Account,
    /// Each request picks one at random.
    Request,
}

/// When a population's accounts send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Timing {
    /// Independent random arrivals at the account's rate.
    Poisson,
    /// Fixed period from a random phase, each gap varied by ± `jitter` of
    /// the period (0: machine-regular).
    Periodic {
        /// Relative jitter, 0 ≤ jitter < 1.
        jitter: f64,
    },
    /// Coordinated waves every `period_ms`: each account joins a wave with
    /// probability rate × period, at a random offset within `spread_ms`.
    Waves {
        /// Milliseconds between waves.
        period_ms: u64,
        /// A wave's requests fall within this many milliseconds.
        spread_ms: u64,
    },
    /// Working sessions: each account starts sessions at random
    /// (`per_day` a day on average, so in a short scenario many accounts
    /// have none) and sends at the population's rate only while one runs —
    /// a heavy user's bursts.
    Sessions {
        /// Mean sessions an account starts a day.
        per_day: f64,
        /// A session's length in minutes: [min, max], drawn uniformly.
        minutes: [u64; 2],
    },
}

/// A piece of a prompt template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text.
    Text(String),
    /// `{a|b|c}`: one alternative, chosen per request (a paraphrase).
    Choice(Vec<String>),
    /// `{}`: a fill of `fill_words` random words.
    Fill,
}

/// A validated population.
#[derive(Debug, Clone)]
pub struct Population {
    /// Name (the record's `population`).
    pub name: String,
    /// An attack (ground truth for the headline figures).
    pub attack: bool,
    /// Accounts.
    pub accounts: u32,
    /// Mean requests per account per hour.
    pub rate_per_hour: f64,
    /// Active from this many ms after the scenario start…
    pub start_ms: u64,
    /// …until this many.
    pub end_ms: u64,
    /// Arrival process.
    pub timing: Timing,
    /// JA4 values (empty: none recorded).
    pub ja4: Vec<String>,
    /// HTTP fingerprints.
    pub http: Vec<String>,
    /// HTTP/2 fingerprints.
    pub h2: Vec<String>,
    /// Fingerprint choice per account or per request.
    pub fingerprint_per: Per,
    /// The population's distinct client addresses.
    pub addresses: Vec<IpAddr>,
    /// AS number of each address (parallel to `addresses`; empty: none).
    pub address_asns: Vec<u32>,
    /// Address choice per account or per request.
    pub address_per: Per,
    /// Models.
    pub models: Vec<String>,
    /// Prompt templates (empty: free text).
    pub templates: Vec<Vec<Piece>>,
    /// Template choice per account or per request.
    pub template_per: Per,
    /// Words of a free-text prompt: [min, max].
    pub prompt_words: [u32; 2],
    /// Words of one template fill: [min, max].
    pub fill_words: [u32; 2],
    /// Share of requests that end with an elicitation phrase.
    pub elicitation_share: f64,
    /// The phrases.
    pub elicitation_phrases: Vec<String>,
    /// `max_tokens` values (one per request, uniformly).
    pub max_tokens: Vec<u32>,
    /// Share of accounts whose client pins one `max_tokens` of the list
    /// (chosen by the account) instead of varying it per request.
    pub pinned_max_tokens_share: f64,
    /// Share of requests with thinking enabled.
    pub thinking_share: f64,
    /// Its budget.
    pub thinking_budget: u32,
    /// Output tokens a full answer has: [min, max].
    pub output_tokens: [u64; 2],
    /// Share of requests whose user-agent claims a client its fingerprints
    /// deny.
    pub inconsistent_share: f64,
    /// A stealth-style campaign (reported on its own by family runs).
    pub stealth: bool,
    /// Share of `{a|b}` choices drawn at random; the rest take the first
    /// alternative (1: every choice paraphrased, 0: the template verbatim).
    pub paraphrase_share: f64,
    /// From `start_ms`, this many ms of cover traffic only (warm-up).
    pub warmup_ms: u64,
    /// After the warm-up, share of requests that are cover traffic.
    pub cover_share: f64,
    /// Honest populations with the same community are users of one product
    /// (one app or coding tool, its system prompt in their requests): a
    /// cluster that joins them is not a mixed cluster of strangers. None:
    /// a community of its own.
    pub community: Option<String>,
    /// How old its accounts are at the scenario start, in hours: drawn per
    /// account, log-uniformly between the two, and stated with every
    /// request as a trusted auth front would (the record's
    /// `account_age_s`). None: not stated (the proxy's own tenure is used).
    pub tenure_hours: Option<[f64; 2]>,
    /// Share of its accounts that are new instead: made within the minute
    /// before the population starts (sign-ups of the day).
    pub new_accounts: f64,
    /// Accounts whose key is also used from a second client (None: none).
    pub second_client: Option<SecondClient>,
}

/// The most other clients a key can have in a scenario.
pub const MAX_OTHER_CLIENTS: u32 = 16;

/// Other clients some of a population's accounts also send from — a
/// developer's laptop beside the app's server, a phone beside a laptop, or
/// (`clients` above 1) a team's machines sharing one key: each another
/// client stack (of the population's list, chosen by the client) on
/// another network, interleaved with the first request by request.
/// Honest accounts look like this; a churn signal must not take them for a
/// campaign rotating its stacks or addresses.
#[derive(Debug, Clone, PartialEq)]
pub struct SecondClient {
    /// Share of the population's accounts that have them (chosen by the
    /// account's key).
    pub accounts: f64,
    /// Share of such an account's requests sent from them (drawn per
    /// request).
    pub requests: f64,
    /// How many other clients such an account has (1: a second client);
    /// each of those requests comes from one of them, drawn per request.
    pub clients: u32,
    /// Its addresses (one kept per account).
    pub addresses: Vec<IpAddr>,
    /// AS number of each address (parallel to `addresses`; empty: none).
    pub address_asns: Vec<u32>,
}

impl SecondClient {
    /// Whether request `n` of stream `stream` of account `account_key` is
    /// sent from the second client. Hashed, not drawn from the request's
    /// stream, so the request's other draws are what they are without it.
    pub fn sends(&self, account_key: u64, stream: u64, n: u32) -> bool {
        let unit = super::unit_of;
        unit(super::mix(account_key, 0x5ec0_c11e)) < self.accounts
            && unit(super::mix(super::mix(stream, u64::from(n)), 0x5ec0_c11e)) < self.requests
    }

    /// Which of the other clients sends request `n` of stream `stream`
    /// (one that [`SecondClient::sends`]): `0..clients`, hashed like it.
    pub fn client(&self, stream: u64, n: u32) -> u32 {
        let h = super::mix(super::mix(stream, u64::from(n)), 0xc11e_0a7e);
        (h % u64::from(self.clients.max(1))) as u32
    }
}

impl Population {
    /// The age in seconds of account `account_key` (the generator's
    /// per-account key) at `since_start_ms` into the scenario, as stated
    /// to the proxy: [`Population::tenure_hours`] or
    /// [`Population::new_accounts`].
    pub fn account_age_s(&self, account_key: u64, since_start_ms: u64) -> Option<u64> {
        let [lo, hi] = self.tenure_hours?;
        let h = super::mix(account_key, 0x7e4e_5eed);
        let unit = super::unit_of;
        let age_at_start_ms = if unit(h) < self.new_accounts {
            // Made at most a minute before the population's start.
            -(self.start_ms as f64) + unit(super::mix(h, 1)) * 60_000.0
        } else {
            let (lo, hi) = (lo.max(1.0 / 60.0), hi.max(lo.max(1.0 / 60.0)));
            (lo.ln() + unit(super::mix(h, 2)) * (hi.ln() - lo.ln())).exp() * 3_600_000.0
        };
        Some(((age_at_start_ms + since_start_ms as f64).max(0.0) / 1000.0) as u64)
    }
}

/// A validated scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name.
    pub name: String,
    /// What it models.
    pub description: String,
    /// Seed: the same scenario and seed give the same traffic.
    pub seed: u64,
    /// Start (ms since the Unix epoch).
    pub start_unix_ms: u64,
    /// Length in ms.
    pub duration_ms: u64,
    /// Populations.
    pub populations: Vec<Population>,
}

/// Read and validate a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ConfigError> {
    load_with_seed(path, None)
}

/// Read and validate a scenario file, with its seed replaced by `seed` when
/// given (everything drawn from the seed, addresses included, follows it).
pub fn load_with_seed(path: &Path, seed: Option<u64>) -> Result<Scenario, ConfigError> {
    parse_with_seed(path, &crate::config::read_file(path)?, seed)
}

/// Parse and validate scenario text; `path` names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<Scenario, ConfigError> {
    parse_with_seed(path, text, None)
}

/// [`parse`], with the file's seed replaced by `seed` when given.
pub fn parse_with_seed(
    path: &Path,
    text: &str,
    seed: Option<u64>,
) -> Result<Scenario, ConfigError> {
    crate::config::parse_toml(path, text, |mut f: ScenarioFile| {
        if let Some(seed) = seed {
            f.seed = seed;
        }
        validate(f)
    })
}

type Invalid = (String, String);

fn validate(f: ScenarioFile) -> Result<Scenario, Invalid> {
    const MINUTE: u64 = 60_000;
    if f.duration_minutes == 0 || f.duration_minutes > 7 * 24 * 60 {
        return Err((
            "duration_minutes".into(),
            "expected 1 to 10080 (a week)".into(),
        ));
    }
    if f.populations.is_empty() {
        return Err(("population".into(), "expected at least one".into()));
    }
    let mut populations = Vec::with_capacity(f.populations.len());
    for (i, p) in f.populations.into_iter().enumerate() {
        let key = |k: &str| format!("population[{i}].{k}");
        let bad = |k: &str, reason: &str| Err((key(k), reason.to_string()));
        if p.name.is_empty() || populations.iter().any(|q: &Population| q.name == p.name) {
            return bad("name", "expected a unique, non-empty name");
        }
        if p.accounts == 0 || p.accounts > 10_000_000 {
            return bad("accounts", "expected 1 to 10000000");
        }
        if !(p.requests_per_account_per_hour > 0.0 && p.requests_per_account_per_hour <= 36_000.0) {
            return bad(
                "requests_per_account_per_hour",
                "expected more than 0 and at most 36000",
            );
        }
        let end = p.end_minute.unwrap_or(f.duration_minutes);
        if end > f.duration_minutes || p.start_minute >= end {
            return bad(
                "end_minute",
                "expected start_minute < end_minute <= duration_minutes",
            );
        }
        let timing = match p.timing {
            TimingFile::Poisson => Timing::Poisson,
            TimingFile::Periodic => {
                if !(0.0..1.0).contains(&p.jitter) {
                    return bad("jitter", "expected 0 <= jitter < 1");
                }
                Timing::Periodic { jitter: p.jitter }
            }
            TimingFile::Waves => {
                if p.wave_period_s == 0 || p.wave_spread_ms > p.wave_period_s * 1000 {
                    return bad(
                        "wave_spread_ms",
                        "expected wave_period_s > 0 and a spread no longer than the period",
                    );
                }
                Timing::Waves {
                    period_ms: p.wave_period_s * 1000,
                    spread_ms: p.wave_spread_ms,
                }
            }
            TimingFile::Sessions => {
                if !(p.sessions_per_day > 0.0 && p.sessions_per_day <= 1440.0) {
                    return bad("sessions_per_day", "expected more than 0 and at most 1440");
                }
                let [lo, hi] = p.session_minutes;
                if lo == 0 || lo > hi || hi > 1440 {
                    return bad(
                        "session_minutes",
                        "expected [min, max] with 1 <= min <= max <= 1440",
                    );
                }
                Timing::Sessions {
                    per_day: p.sessions_per_day,
                    minutes: p.session_minutes,
                }
            }
        };
        let (addresses, address_asns) = addresses_in(&p.networks, &p.asns, p.addresses, f.seed)
            .map_err(|(k, r)| (key(k), r))?;
        if p.models.is_empty() || p.models.iter().any(String::is_empty) {
            return bad("models", "expected at least one model name");
        }
        let mut templates = Vec::with_capacity(p.templates.len());
        for (t, text) in p.templates.iter().enumerate() {
            let pieces = parse_template(text)
                .map_err(|reason| (format!("population[{i}].templates[{t}]"), reason))?;
            templates.push(pieces);
        }
        for (k, [lo, hi]) in [
            ("prompt_words", p.prompt_words),
            ("fill_words", p.fill_words),
        ] {
            if lo > hi || hi > 100_000 {
                return bad(k, "expected [min, max] with min <= max <= 100000");
            }
        }
        if templates.is_empty() && p.prompt_words[1] == 0 {
            return bad("prompt_words", "a population without templates needs words");
        }
        for (k, v) in [
            ("elicitation_share", p.elicitation_share),
            ("thinking_share", p.thinking_share),
            ("inconsistent_share", p.inconsistent_share),
            ("paraphrase_share", p.paraphrase_share),
            ("cover_share", p.cover_share),
            ("pinned_max_tokens_share", p.pinned_max_tokens_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(k, "expected a share from 0 to 1");
            }
        }
        if p.elicitation_share > 0.0 && p.elicitation_phrases.is_empty() {
            return bad(
                "elicitation_phrases",
                "elicitation_share > 0 needs at least one phrase",
            );
        }
        if p.max_tokens.is_empty() || p.max_tokens.contains(&0) {
            return bad("max_tokens", "expected at least one value above 0");
        }
        if p.thinking_share > 0.0 && p.thinking_budget < 1024 {
            return bad(
                "thinking_budget",
                "expected at least 1024 when thinking_share > 0",
            );
        }
        if p.output_tokens[0] > p.output_tokens[1] {
            return bad("output_tokens", "expected [min, max] with min <= max");
        }
        if let Some([lo, hi]) = p.tenure_hours {
            if !(lo >= 0.0 && lo <= hi && hi <= 24.0 * 365.0 * 30.0) {
                return bad(
                    "tenure_hours",
                    "expected [min, max] hours with 0 <= min <= max <= 262800 (30 years)",
                );
            }
        }
        if !(0.0..=1.0).contains(&p.new_accounts) {
            return bad("new_accounts", "expected a share from 0 to 1");
        }
        if p.new_accounts > 0.0 && p.tenure_hours.is_none() {
            return bad(
                "new_accounts",
                "needs tenure_hours (the ages of the other accounts)",
            );
        }
        let second_client = match p.second_client {
            None => None,
            Some(c) => {
                let key = |k: &str| format!("population[{i}].second_client.{k}");
                let (addresses, address_asns) =
                    addresses_in(&c.networks, &c.asns, c.addresses, f.seed ^ 0x5ec0)
                        .map_err(|(k, r)| (key(k), r))?;
                for (k, v) in [("accounts", c.accounts), ("requests", c.requests)] {
                    if !(0.0..=1.0).contains(&v) {
                        return Err((key(k), "expected a share from 0 to 1".into()));
                    }
                }
                if !(1..=MAX_OTHER_CLIENTS).contains(&c.clients) {
                    return Err((key("clients"), format!("expected 1 to {MAX_OTHER_CLIENTS}")));
                }
                Some(SecondClient {
                    accounts: c.accounts,
                    requests: c.requests,
                    clients: c.clients,
                    addresses,
                    address_asns,
                })
            }
        };
        if p.start_minute + p.warmup_minutes > end {
            return bad(
                "warmup_minutes",
                "expected the warm-up to end by end_minute",
            );
        }
        populations.push(Population {
            name: p.name,
            attack: p.attack,
            accounts: p.accounts,
            rate_per_hour: p.requests_per_account_per_hour,
            start_ms: p.start_minute * MINUTE,
            end_ms: end * MINUTE,
            timing,
            ja4: p.ja4,
            http: p.http,
            h2: p.h2,
            fingerprint_per: p.fingerprint_per,
            addresses,
            address_asns,
            address_per: p.address_per,
            models: p.models,
            templates,
            template_per: p.template_per,
            prompt_words: p.prompt_words,
            fill_words: p.fill_words,
            elicitation_share: p.elicitation_share,
            elicitation_phrases: p.elicitation_phrases,
            max_tokens: p.max_tokens,
            pinned_max_tokens_share: p.pinned_max_tokens_share,
            thinking_share: p.thinking_share,
            thinking_budget: p.thinking_budget,
            output_tokens: p.output_tokens,
            inconsistent_share: p.inconsistent_share,
            stealth: p.stealth,
            paraphrase_share: p.paraphrase_share,
            warmup_ms: p.warmup_minutes * MINUTE,
            cover_share: p.cover_share,
            community: p.community,
            tenure_hours: p.tenure_hours,
            new_accounts: p.new_accounts,
            second_client,
        });
    }
    Ok(Scenario {
        name: f.name,
        description: f.description,
        seed: f.seed,
        start_unix_ms: f.start_unix_ms,
        duration_ms: f.duration_minutes * MINUTE,
        populations,
    })
}

/// Addresses and, parallel to them, their AS numbers (empty: none).
type Addresses = (Vec<IpAddr>, Vec<u32>);

/// `n` addresses spread over the CIDRs `networks` (with `asns`, one per
/// network or none), validated as a scenario file states them: on error,
/// the offending field and why.
fn addresses_in(
    networks: &[String],
    asns: &[u32],
    n: u32,
    seed: u64,
) -> Result<Addresses, (&'static str, String)> {
    let networks = networks
        .iter()
        .map(|n| n.parse::<ipnet::IpNet>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ("networks", "expected CIDRs like 203.0.113.0/24".to_string()))?;
    if networks.is_empty() {
        return Err(("networks", "expected at least one network".into()));
    }
    if !asns.is_empty() && asns.len() != networks.len() {
        return Err(("asns", "expected one AS number per network, or none".into()));
    }
    if n == 0 || n > 10_000_000 {
        return Err(("addresses", "expected 1 to 10000000".into()));
    }
    Ok(spread_addresses(&networks, asns, n, seed))
}

/// [`spread_addresses`] over built-in `(CIDR, AS number)` pairs (the
/// families' and strategies' networks; a pair that does not parse is
/// skipped).
pub(crate) fn spread_over(nets: &[(&str, u32)], n: u32, seed: u64) -> Addresses {
    let networks: Vec<ipnet::IpNet> = nets.iter().filter_map(|(n, _)| n.parse().ok()).collect();
    let asns: Vec<u32> = nets.iter().map(|(_, a)| *a).collect();
    spread_addresses(&networks, &asns, n, seed)
}

/// `n` distinct-ish addresses spread over `networks` in turn (address `i`
/// in network `i % len`, at a hashed host offset), with their AS numbers.
fn spread_addresses(
    networks: &[ipnet::IpNet],
    asns: &[u32],
    n: u32,
    seed: u64,
) -> (Vec<IpAddr>, Vec<u32>) {
    let mut out = Vec::with_capacity(n as usize);
    let mut out_asns = Vec::with_capacity(if asns.is_empty() { 0 } else { n as usize });
    for i in 0..n {
        let k = i as usize % networks.len();
        let net = networks[k];
        let h = super::mix(seed ^ 0xadd7, u64::from(i));
        let addr = match net {
            ipnet::IpNet::V4(v4) => {
                let host_bits = 32 - u32::from(v4.prefix_len());
                let span = if host_bits == 32 {
                    u64::from(u32::MAX)
                } else {
                    (1u64 << host_bits) - 1
                };
                let base = u32::from(v4.network());
                // Skip the network address itself when the net has room.
                let off = if span >= 2 { 1 + h % (span - 1) } else { 0 };
                IpAddr::V4((base.wrapping_add(off as u32)).into())
            }
            ipnet::IpNet::V6(v6) => {
                let host_bits = 128 - u32::from(v6.prefix_len());
                let mask = if host_bits >= 64 {
                    u64::MAX
                } else {
                    (1u64 << host_bits) - 1
                };
                let base = u128::from(v6.network());
                IpAddr::V6((base | u128::from(h & mask).max(1)).into())
            }
        };
        out.push(addr);
        if !asns.is_empty() {
            out_asns.push(asns[k]);
        }
    }
    (out, out_asns)
}

/// Parse `{a|b}` choices and `{}` fills; braces do not nest.
pub(crate) fn parse_template(text: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .map(|c| open + c)
            .ok_or("a '{' without its '}'")?;
        let inner = &rest[open + 1..close];
        if inner.contains('{') {
            return Err("braces do not nest".into());
        }
        if inner.is_empty() {
            pieces.push(Piece::Fill);
        } else {
            pieces.push(Piece::Choice(inner.split('|').map(String::from).collect()));
        }
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err("a '}' without its '{'".into());
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
duration_minutes = 10

[[population]]
name = "chat"
accounts = 5
requests_per_account_per_hour = 6.0
networks = ["198.51.100.0/24"]
addresses = 5
max_tokens = [1024]
output_tokens = [100, 200]
"#;

    #[test]
    fn templates_parse_choices_and_fills() {
        assert_eq!(
            parse_template("{Imagine|Picture} the {} now").unwrap(),
            vec![
                Piece::Choice(vec!["Imagine".into(), "Picture".into()]),
                Piece::Text(" the ".into()),
                Piece::Fill,
                Piece::Text(" now".into()),
            ]
        );
        assert!(parse_template("a {b").is_err());
        assert!(parse_template("a }b").is_err());
        assert!(parse_template("{a{b}}").is_err());
    }

    #[test]
    fn a_minimal_scenario_validates_with_defaults() {
        let s = parse(Path::new("s.toml"), MINIMAL).unwrap();
        assert_eq!(s.duration_ms, 600_000);
        let p = &s.populations[0];
        assert_eq!(p.end_ms, 600_000);
        assert_eq!(p.timing, Timing::Poisson);
        assert_eq!(p.addresses.len(), 5);
        assert!(p.addresses.iter().all(|a| "198.51.100.0/24"
            .parse::<ipnet::IpNet>()
            .unwrap()
            .contains(a)));
    }

    /// An account with a second client sends some requests from it (its own
    /// address, on the second client's network) and the rest from its first;
    /// the other requests are as they were without it.
    #[test]
    fn a_second_client_sends_a_share_of_its_accounts_requests() {
        let path = Path::new("s.toml");
        let without = MINIMAL
            .replace("duration_minutes = 10", "duration_minutes = 600")
            .replace(
                "addresses = 5\n",
                "addresses = 5\nja4 = [\"a\", \"b\", \"c\"]\n",
            );
        let with = format!(
            "{without}second_client = {{ accounts = 1.0, requests = 0.3, \
             networks = [\"100.0.0.0/10\"], asns = [64660], addresses = 5 }}\n"
        );
        let (a, b) = (parse(path, &with).unwrap(), parse(path, &without).unwrap());
        let second: ipnet::IpNet = "100.0.0.0/10".parse().unwrap();
        let (ra, rb): (Vec<_>, Vec<_>) = (
            crate::simulate::Generator::new(&a).collect(),
            crate::simulate::Generator::new(&b).collect(),
        );
        assert_eq!(ra.len(), rb.len());
        let mut from_second = 0;
        for (x, y) in ra.iter().zip(&rb) {
            assert_eq!(
                (x.t_ms, x.account, &x.prompt),
                (y.t_ms, y.account, &y.prompt)
            );
            if second.contains(&x.address) {
                from_second += 1;
                assert_eq!(x.asn, Some(64660));
            } else {
                assert_eq!((x.address, x.profile), (y.address, y.profile));
            }
        }
        let share = f64::from(from_second) / ra.len() as f64;
        assert!((0.2..0.4).contains(&share), "{from_second} of {}", ra.len());
        // Each account keeps one second address.
        for account in 0..5 {
            let seen: std::collections::BTreeSet<_> = ra
                .iter()
                .filter(|r| r.account == account && second.contains(&r.address))
                .map(|r| r.address)
                .collect();
            assert!(seen.len() <= 1, "{seen:?}");
        }
        let bad = with.replace("accounts = 1.0", "accounts = 1.5");
        let e = parse(path, &bad).unwrap_err();
        assert_eq!(e.key, "population[0].second_client.accounts");
        let bad = with.replace("addresses = 5 }", "addresses = 5, clients = 0 }");
        let e = parse(path, &bad).unwrap_err();
        assert_eq!(e.key, "population[0].second_client.clients");
    }

    /// A team's key: each of its other clients keeps its own address and
    /// stack, and their requests are spread over all of them.
    #[test]
    fn a_key_shared_by_a_team_is_sent_from_each_of_its_clients() {
        let path = Path::new("s.toml");
        let ja4: Vec<String> = (0..12).map(|i| format!("\"j{i}\"")).collect();
        let text = MINIMAL
            .replace("duration_minutes = 10", "duration_minutes = 600")
            .replace(
                "addresses = 5\n",
                &format!("addresses = 5\nja4 = [{}]\n", ja4.join(", ")),
            )
            + "second_client = { accounts = 1.0, requests = 0.8, networks = [\"100.0.0.0/10\"], \
               addresses = 40, clients = 4 }\n";
        let s = parse(path, &text).unwrap();
        let second: ipnet::IpNet = "100.0.0.0/10".parse().unwrap();
        let reqs: Vec<_> = crate::simulate::Generator::new(&s).collect();
        for account in 0..5 {
            let mut clients = std::collections::BTreeMap::new();
            for r in reqs
                .iter()
                .filter(|r| r.account == account && second.contains(&r.address))
            {
                *clients.entry((r.address, r.profile)).or_insert(0u32) += 1;
            }
            // Four clients, unless two drew the same address and stack.
            assert!((3..=4).contains(&clients.len()), "{clients:?}");
            let addresses: std::collections::BTreeSet<_> = clients.keys().map(|k| k.0).collect();
            assert_eq!(
                addresses.len(),
                clients.len(),
                "one stack per address: {clients:?}"
            );
            let total: u32 = clients.values().sum();
            assert!(
                clients.values().all(|&n| n * 10 > total),
                "each sends a share: {clients:?}"
            );
        }
    }

    #[test]
    fn a_seed_override_replaces_the_files_seed_everywhere() {
        let path = Path::new("s.toml");
        let file = parse(path, MINIMAL).unwrap();
        assert_eq!(file.seed, 1, "the default seed");
        let same = parse_with_seed(path, MINIMAL, Some(1)).unwrap();
        assert_eq!(same.populations[0].addresses, file.populations[0].addresses);
        let other = parse_with_seed(path, MINIMAL, Some(2)).unwrap();
        assert_eq!(other.seed, 2);
        assert_ne!(
            other.populations[0].addresses, file.populations[0].addresses,
            "addresses follow the seed"
        );
        let written = MINIMAL.replace("name = \"t\"", "name = \"t\"\nseed = 2");
        let from_file = parse(path, &written).unwrap();
        assert_eq!(
            from_file.populations[0].addresses,
            other.populations[0].addresses
        );
    }

    #[test]
    fn errors_name_the_key_and_its_line() {
        let text = MINIMAL.replace("addresses = 5", "addresses = 0");
        let e = parse(Path::new("s.toml"), &text).unwrap_err();
        assert_eq!(e.key, "population[0].addresses");
        assert_eq!(e.position.map(|p| p.0), Some(10));
        let text = MINIMAL.replace("max_tokens", "max_tokenz");
        let e = parse(Path::new("s.toml"), &text).unwrap_err();
        assert!(e.to_string().contains("max_tokenz"), "{e}");
        let text = MINIMAL.replace("output_tokens = [100, 200]", "output_tokens = [300, 200]");
        let e = parse(Path::new("s.toml"), &text).unwrap_err();
        assert_eq!(e.key, "population[0].output_tokens");
    }
}
