//! The attack strategy space: what a distillation campaign can choose
//! (accounts, addresses, client stacks, paraphrasing, rate, warm-up, cover
//! traffic, models) as one value, drawn at random within documented ranges
//! by the scenario families and searched by `redteam`. A strategy becomes
//! an ordinary [`Population`]; `docs/scenarios.md` lists the ranges.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::scenario::{Per, Piece, Population, Timing};

/// Client stacks (JA4, HTTP fingerprint) honest users have: browsers and the
/// common SDKs.
pub(crate) const HONEST_STACKS: [(&str, &str); 6] = [
    (
        "t13d1516h2_8daaf6152771_02713d6af862",
        "ge11nn12enus_chrome",
    ),
    (
        "t13d1715h2_5b57614c22b0_3d5424432f57",
        "ge11nn10enus_firefox",
    ),
    (
        "t13d2014h2_a09f3c656075_14788d8d241b",
        "ge11nn09enus_safari",
    ),
    (
        "t13d1812h2_e8a523a41297_ef7df7f74e48",
        "po11nn06_sdk_python",
    ),
    ("t13d1713h2_5b57614c22b0_06a6a26b8c29", "po11nn07_sdk_node"),
    ("t13d3112h2_e8f1e7e78f70_6bebaf5329ac", "ge11nn11enus_edge"),
];

/// A campaign's own tooling (an HTTP library, not an SDK).
pub(crate) const TOOL_STACKS: [(&str, &str); 2] = [
    ("t13d1312h2_f57a46bbacb6_e7c285222651", "po11nn04_httpx"),
    ("t13d1812h1_85036bcba153_375ca2c5e164", "po10nn03_requests"),
];

/// What per-request rotation draws from (curl-impersonate style): the
/// honest stacks and impersonated builds of them.
pub(crate) const ROTATION_STACKS: [(&str, &str); 12] = [
    HONEST_STACKS[0],
    HONEST_STACKS[1],
    HONEST_STACKS[2],
    HONEST_STACKS[3],
    HONEST_STACKS[4],
    HONEST_STACKS[5],
    (
        "t13d1516h2_8daaf6152771_b0da82dd1658",
        "ge11nn12enus_chrome",
    ),
    (
        "t13d1715h2_5b57614c22b0_7121afd63204",
        "ge11nn10engb_firefox",
    ),
    (
        "t13d1517h2_8daaf6152771_b1ff8ab2d16f",
        "ge11nn13enus_chrome",
    ),
    (
        "t13d1812h2_e8a523a41297_a7e1b3c4d5f6",
        "po11nn06_sdk_python",
    ),
    ("t13d1713h2_5b57614c22b0_9f0e1d2c3b4a", "po11nn07_sdk_node"),
    (
        "t13d2014h2_a09f3c656075_e5f4a3b2c1d0",
        "ge11nn09engb_safari",
    ),
];

/// Models a campaign can spread over, in the order it adds them.
pub(crate) const MODELS: [&str; 3] = ["claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5"];

/// Residential ISPs (honest users live there; residential proxies rent
/// addresses there).
pub(crate) const RESIDENTIAL: [(&str, u32); 2] =
    [("198.18.0.0/15", 64600), ("100.64.0.0/10", 64601)];

/// Reseller and hosting networks (cheap proxy pools).
pub(crate) const RESELLER: [(&str, u32); 4] = [
    ("203.0.113.0/24", 64900),
    ("198.51.100.0/24", 64901),
    ("45.80.0.0/20", 64902),
    ("91.200.0.0/20", 64903),
];

/// One attack strategy: a point of the space. Read back (`redteam
/// --reprice`) from the form it is written in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackStrategy {
    /// Accounts the campaign opens.
    pub accounts: u32,
    /// Client addresses it rents per account (the pool is accounts × this,
    /// at least one): 1 is a residential proxy per account, 0.02 fifty
    /// accounts on one address.
    pub addresses_per_account: f64,
    /// Each request takes an address from the pool (otherwise each account
    /// keeps one).
    pub address_rotation: bool,
    /// Each request takes a client stack (JA4, HTTP fingerprint) from
    /// twelve (otherwise each account keeps one).
    pub stack_rotation: bool,
    /// Stacks and headers copied from the honest SDKs and browsers
    /// (otherwise the campaign's own HTTP library).
    pub sdk_mimic: bool,
    /// Share of template choices paraphrased (0: templates verbatim).
    pub paraphrase_share: f64,
    /// Requests per account per hour (every per-key norm is far above).
    pub requests_per_account_per_hour: f64,
    /// Relative jitter of each account's request period, 0 to 0.9.
    pub jitter: f64,
    /// Minutes of cover traffic only before extraction starts.
    pub warmup_minutes: u32,
    /// After the warm-up, share of requests that are cover traffic.
    pub cover_share: f64,
    /// Models spread over, 1 to 3.
    pub models: u32,
    /// `max_tokens` pinned at one ceiling (otherwise varied like a client).
    pub pinned_max_tokens: bool,
    /// Days its accounts existed before the campaign (0: opened for it):
    /// aged accounts bought or opened ahead and kept dormant, so that the
    /// auth front states an old account. Priced by `redteam`'s cost model.
    pub aged_days: f64,
}

/// The ranges of the space (inclusive).
pub mod range {
    /// Accounts.
    pub const ACCOUNTS: (u32, u32) = (20, 600);
    /// Addresses per account.
    pub const ADDRESSES_PER_ACCOUNT: (f64, f64) = (0.02, 1.5);
    /// Requests per account per hour.
    pub const RATE: (f64, f64) = (2.0, 40.0);
    /// Jitter.
    pub const JITTER: (f64, f64) = (0.0, 0.9);
    /// Warm-up minutes.
    pub const WARMUP_MINUTES: (u32, u32) = (0, 30);
    /// Cover share.
    pub const COVER_SHARE: (f64, f64) = (0.0, 0.5);
    /// Models.
    pub const MODELS: (u32, u32) = (1, 3);
    /// Days the accounts were aged (0, or from 0.5).
    pub const AGED_DAYS: (f64, f64) = (0.0, 90.0);
}

/// How long a campaign ages its accounts, drawn: half open them for the
/// campaign, half age them 12 hours to 90 days (log-uniform). Drawn from
/// its own stream by callers, so the other parameters keep their draws.
pub fn draw_aged_days(rng: &mut ChaCha8Rng) -> f64 {
    if rng.gen_bool(0.5) {
        0.0
    } else {
        log_uniform(rng, (0.5, range::AGED_DAYS.1))
    }
}

fn log_uniform(rng: &mut ChaCha8Rng, (lo, hi): (f64, f64)) -> f64 {
    (lo.ln() + rng.gen::<f64>() * (hi.ln() - lo.ln())).exp()
}

impl AttackStrategy {
    /// A strategy drawn uniformly from the space (log-uniform for counts
    /// and rates), its accounts new ([`draw_aged_days`] draws their age).
    pub fn draw(rng: &mut ChaCha8Rng) -> AttackStrategy {
        let (alo, ahi) = range::ACCOUNTS;
        AttackStrategy {
            accounts: log_uniform(rng, (f64::from(alo), f64::from(ahi))).round() as u32,
            addresses_per_account: log_uniform(rng, range::ADDRESSES_PER_ACCOUNT),
            address_rotation: rng.gen_bool(0.5),
            stack_rotation: rng.gen_bool(0.5),
            sdk_mimic: rng.gen_bool(0.5),
            paraphrase_share: rng.gen::<f64>(),
            requests_per_account_per_hour: log_uniform(rng, range::RATE),
            jitter: rng.gen_range(range::JITTER.0..=range::JITTER.1),
            warmup_minutes: rng.gen_range(range::WARMUP_MINUTES.0..=range::WARMUP_MINUTES.1),
            cover_share: rng.gen_range(range::COVER_SHARE.0..=range::COVER_SHARE.1),
            models: rng.gen_range(range::MODELS.0..=range::MODELS.1),
            pinned_max_tokens: rng.gen_bool(0.5),
            aged_days: 0.0,
        }
        .clamped()
    }

    /// The stealth campaign of the small scenario, as a point of the space:
    /// where `redteam` starts.
    pub fn starting_point() -> AttackStrategy {
        AttackStrategy {
            accounts: 400,
            addresses_per_account: 0.75,
            address_rotation: true,
            stack_rotation: false,
            sdk_mimic: true,
            paraphrase_share: 1.0,
            requests_per_account_per_hour: 12.0,
            jitter: 0.6,
            warmup_minutes: 0,
            cover_share: 0.0,
            models: 1,
            pinned_max_tokens: false,
            aged_days: 0.0,
        }
    }

    /// The cheapest way through per-key limits alone: few addresses, no
    /// warm-up, no cover, the top of the rate range.
    pub fn per_key_optimum() -> AttackStrategy {
        AttackStrategy {
            accounts: 100,
            addresses_per_account: range::ADDRESSES_PER_ACCOUNT.0,
            address_rotation: false,
            stack_rotation: false,
            sdk_mimic: false,
            paraphrase_share: 0.0,
            requests_per_account_per_hour: range::RATE.1,
            jitter: 0.0,
            warmup_minutes: 0,
            cover_share: 0.0,
            models: 1,
            pinned_max_tokens: true,
            aged_days: 0.0,
        }
    }

    /// A neighbour: one to three parameters moved (a step of about a
    /// quarter of the range, a flag flipped).
    pub fn mutate(&self, rng: &mut ChaCha8Rng) -> AttackStrategy {
        let mut s = self.clone();
        let moves = rng.gen_range(1..=3);
        for _ in 0..moves {
            let scale = |rng: &mut ChaCha8Rng| (rng.gen::<f64>() * 1.2 - 0.6).exp();
            match rng.gen_range(0..13) {
                0 => s.accounts = (f64::from(s.accounts) * scale(rng)).round() as u32,
                1 => s.addresses_per_account *= scale(rng) * scale(rng),
                2 => s.address_rotation = !s.address_rotation,
                3 => s.stack_rotation = !s.stack_rotation,
                4 => s.sdk_mimic = !s.sdk_mimic,
                5 => s.paraphrase_share += rng.gen_range(-0.3..=0.3),
                6 => s.requests_per_account_per_hour *= scale(rng),
                7 => s.jitter += rng.gen_range(-0.25..=0.25),
                8 => {
                    s.warmup_minutes = (i64::from(s.warmup_minutes) + rng.gen_range(-10..=10))
                        .clamp(0, i64::from(range::WARMUP_MINUTES.1))
                        as u32
                }
                9 => s.cover_share += rng.gen_range(-0.15..=0.15),
                10 => s.models = rng.gen_range(range::MODELS.0..=range::MODELS.1),
                11 => {
                    s.aged_days = if s.aged_days <= 0.0 {
                        log_uniform(rng, (0.5, 7.0))
                    } else if rng.gen_bool(0.2) {
                        0.0
                    } else {
                        s.aged_days * scale(rng) * scale(rng)
                    }
                }
                _ => s.pinned_max_tokens = !s.pinned_max_tokens,
            }
        }
        s.clamped()
    }

    /// The same strategy with every parameter inside its range.
    pub fn clamped(mut self) -> AttackStrategy {
        self.accounts = self.accounts.clamp(range::ACCOUNTS.0, range::ACCOUNTS.1);
        self.addresses_per_account = self.addresses_per_account.clamp(
            range::ADDRESSES_PER_ACCOUNT.0,
            range::ADDRESSES_PER_ACCOUNT.1,
        );
        self.paraphrase_share = self.paraphrase_share.clamp(0.0, 1.0);
        self.requests_per_account_per_hour = self
            .requests_per_account_per_hour
            .clamp(range::RATE.0, range::RATE.1);
        self.jitter = self.jitter.clamp(range::JITTER.0, range::JITTER.1);
        self.warmup_minutes = self
            .warmup_minutes
            .clamp(range::WARMUP_MINUTES.0, range::WARMUP_MINUTES.1);
        self.cover_share = self
            .cover_share
            .clamp(range::COVER_SHARE.0, range::COVER_SHARE.1);
        self.models = self.models.clamp(range::MODELS.0, range::MODELS.1);
        self.aged_days = self.aged_days.clamp(range::AGED_DAYS.0, range::AGED_DAYS.1);
        self
    }

    /// The client addresses it rents.
    pub fn addresses(&self) -> u32 {
        ((f64::from(self.accounts) * self.addresses_per_account).round() as u32).max(1)
    }

    /// Stealth-style: it hides from attribute linking (an address or a
    /// stack per request, an address per account, or paraphrased
    /// templates), as opposed to a hydra's shared pools and fixed tools.
    pub fn is_stealth(&self) -> bool {
        self.address_rotation && self.addresses_per_account >= 0.5
            || self.stack_rotation
            || self.addresses_per_account >= 0.9
            || self.paraphrase_share >= 0.5
    }

    /// The campaign as a population named `name`, active from `start_ms`
    /// to `end_ms` (scenario time), with these templates; `seed` and the
    /// name place its addresses.
    pub fn population(
        &self,
        name: &str,
        templates: Vec<Vec<Piece>>,
        (start_ms, end_ms): (u64, u64),
        seed: u64,
    ) -> Population {
        let residential = self.sdk_mimic || self.addresses_per_account >= 0.25;
        let nets: &[(&str, u32)] = if residential { &RESIDENTIAL } else { &RESELLER };
        let (addresses, address_asns) = super::scenario::spread_over(
            nets,
            self.addresses(),
            super::family::address_seed(seed, name),
        );
        let stacks: &[(&str, &str)] = match (self.stack_rotation, self.sdk_mimic) {
            (true, _) => &ROTATION_STACKS,
            (false, true) => &HONEST_STACKS,
            (false, false) => &TOOL_STACKS,
        };
        let warmup_ms = u64::from(self.warmup_minutes) * 60_000;
        Population {
            name: name.to_string(),
            attack: true,
            accounts: self.accounts,
            rate_per_hour: self.requests_per_account_per_hour,
            start_ms,
            end_ms: end_ms.max(start_ms + warmup_ms + 60_000),
            timing: Timing::Periodic {
                jitter: self.jitter,
            },
            ja4: stacks.iter().map(|s| s.0.to_string()).collect(),
            http: stacks.iter().map(|s| s.1.to_string()).collect(),
            h2: Vec::new(),
            fingerprint_per: if self.stack_rotation {
                Per::Request
            } else {
                Per::Account
            },
            addresses,
            address_asns,
            address_per: if self.address_rotation {
                Per::Request
            } else {
                Per::Account
            },
            models: MODELS[..self.models as usize]
                .iter()
                .map(|m| m.to_string())
                .collect(),
            templates,
            template_per: Per::Request,
            prompt_words: [10, 80],
            fill_words: [15, 60],
            elicitation_share: 0.0,
            elicitation_phrases: Vec::new(),
            max_tokens: if self.pinned_max_tokens {
                vec![32000]
            } else {
                vec![4096, 8192, 16000, 32000]
            },
            pinned_max_tokens_share: 0.0,
            thinking_share: 0.3,
            thinking_budget: 24000,
            output_tokens: [1500, 6000],
            inconsistent_share: if self.sdk_mimic { 0.0 } else { 0.05 },
            stealth: self.is_stealth(),
            paraphrase_share: self.paraphrase_share,
            warmup_ms,
            cover_share: self.cover_share,
            community: None,
            // Accounts opened for the campaign are made when it starts.
            tenure_hours: Some([self.aged_days * 24.0; 2]),
            new_accounts: if self.aged_days > 0.0 { 0.0 } else { 1.0 },
            second_client: None,
        }
    }

    /// One line: the parameters that matter most.
    pub fn describe(&self) -> String {
        format!(
            "{} accounts{}, {} addresses ({:.2}/account, {}), stacks {}{}, paraphrase {:.0} %, {:.1} req/account/h, jitter {:.2}, warm-up {} min, cover {:.0} %, {} model(s), max_tokens {}",
            self.accounts,
            if self.aged_days > 0.0 {
                format!(" aged {:.1} days", self.aged_days)
            } else {
                " opened for it".to_string()
            },
            self.addresses(),
            self.addresses_per_account,
            if self.address_rotation { "rotated per request" } else { "kept per account" },
            if self.stack_rotation { "rotated per request" } else { "kept per account" },
            match (self.stack_rotation, self.sdk_mimic) {
                (true, _) => " (honest and impersonated)",
                (false, true) => " (honest SDKs)",
                (false, false) => " (own tooling)",
            },
            self.paraphrase_share * 100.0,
            self.requests_per_account_per_hour,
            self.jitter,
            self.warmup_minutes,
            self.cover_share * 100.0,
            self.models,
            if self.pinned_max_tokens { "pinned" } else { "varied" },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn draws_and_mutations_stay_in_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut s = AttackStrategy::starting_point();
        for _ in 0..500 {
            let d = AttackStrategy::draw(&mut rng);
            assert_eq!(d.clone().clamped(), d);
            s = s.mutate(&mut rng);
            assert_eq!(s.clone().clamped(), s);
            assert!(s.addresses() >= 1);
        }
    }

    #[test]
    fn warm_up_is_cover_and_paraphrase_zero_keeps_the_wording() {
        let s = AttackStrategy {
            accounts: 20,
            warmup_minutes: 10,
            cover_share: 0.0,
            paraphrase_share: 0.0,
            ..AttackStrategy::starting_point()
        };
        let templates =
            vec![crate::simulate::scenario::parse_template("{Say|Tell} {}").unwrap_or_default()];
        let scenario = crate::simulate::Scenario {
            name: "t".into(),
            description: String::new(),
            seed: 1,
            start_unix_ms: 0,
            duration_ms: 30 * 60_000,
            populations: vec![s.population("campaign", templates, (0, 30 * 60_000), 1)],
        };
        let config = crate::demo::default_config().unwrap();
        let matcher = config.detection.phrases.clone();
        let reqs: Vec<_> = crate::simulate::Generator::new(&scenario).collect();
        assert!(!reqs.is_empty());
        for r in &reqs {
            let warm = r.t_ms < 10 * 60_000;
            assert_eq!(r.cover, warm, "{r:?}");
            let rec = r.record(&scenario, &config, &matcher);
            assert_eq!(rec.population.is_none(), warm);
            assert_eq!(rec.attack, !warm);
            if !warm {
                assert!(r.prompt.starts_with("Say "), "{}", r.prompt);
            }
        }
    }

    #[test]
    fn a_strategy_becomes_a_population() {
        let s = AttackStrategy {
            warmup_minutes: 5,
            ..AttackStrategy::starting_point()
        };
        let p = s.population("x", Vec::new(), (0, 3_600_000), 1);
        assert_eq!(p.accounts, 400);
        assert_eq!(p.addresses.len(), 300);
        assert_eq!(p.address_per, Per::Request);
        assert_eq!(p.warmup_ms, 300_000);
        assert!(p.stealth && p.attack);
        assert_eq!(p.ja4.len(), HONEST_STACKS.len());
    }
}
