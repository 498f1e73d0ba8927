//! `distill-guard redteam`: an attacker that searches the strategy space
//! ([`AttackStrategy`]) against a policy in simulation for the cheapest
//! extraction — random search and hill climbing, deterministic from a
//! seed, within a budget of evaluations — and prices what it finds against
//! the per-key-only baseline.
//!
//! Each evaluation runs one campaign of the strategy on an honest
//! background (a tuning-family draw, [`family::against_background`]) under
//! the policy and under the baseline. The attacker maximises output tokens
//! extracted per unit of cost ([`CostModel`]: account-hours and rented
//! address-hours).
//!
//! [`reprice`] evaluates given strategies instead of searching: the best
//! evasions earlier searches found, priced under another policy. A search
//! is a climb whose path depends on the policy, so two policies' best
//! evasions are found on different paths; pricing each policy on the same
//! strategies is the comparison that path does not blur.

use std::fmt::Write as _;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::family::{self, Size};
use super::strategy::AttackStrategy;
use crate::config::Config;

/// What a campaign pays, in account-hours: an account for an hour costs 1
/// (sign-up, verification, the payment method behind it), a rented client
/// address for an hour costs `address_hour` of that (a residential proxy),
/// and an account aged before the campaign costs `aged_account_day` per
/// day of age (bought aged, or opened ahead and kept alive dormant: its
/// identity, payment method and phone number held, no traffic).
/// The API's own price per token is left out: the attacker pays it under
/// any policy, for every token it gets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CostModel {
    /// Cost of one account for one hour (the unit).
    pub account_hour: f64,
    /// Cost of one rented address for one hour.
    pub address_hour: f64,
    /// Cost of one account's age, per day: a dormant account-day costs an
    /// active account-hour.
    pub aged_account_day: f64,
}

/// The cost model `redteam` uses.
pub const COST: CostModel = CostModel {
    account_hour: 1.0,
    address_hour: 0.25,
    aged_account_day: 1.0,
};

impl CostModel {
    /// What running `s` for `hours` costs.
    pub fn cost(&self, s: &AttackStrategy, hours: f64) -> f64 {
        self.price(
            s.accounts,
            s.addresses(),
            hours,
            f64::from(s.accounts) * s.aged_days,
        )
    }

    /// What `accounts` accounts and `addresses` rented addresses cost for
    /// `hours`, the accounts' ages summing to `aged_days`.
    pub fn price(&self, accounts: u32, addresses: u32, hours: f64, aged_days: f64) -> f64 {
        hours * (f64::from(accounts) * self.account_hour + f64::from(addresses) * self.address_hour)
            + aged_days * self.aged_account_day
    }
}

/// How a search runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Options {
    /// Seed of the search (the background and the traffic are fixed by
    /// `background_seed`).
    pub seed: u64,
    /// Evaluations in all, the start and the per-key reference included
    /// (at least 2).
    pub budget: u32,
    /// The tuning-family seed whose honest background every evaluation
    /// runs on.
    pub background_seed: u64,
    /// Scenario length in minutes.
    pub minutes: u64,
    /// Honest accounts times this; the strategy's accounts are its own.
    pub scale: f64,
}

/// Where an evaluated strategy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// The starting point (the small scenario's stealth campaign).
    Start,
    /// The cheapest way through per-key limits alone.
    PerKeyOptimum,
    /// Drawn at random from the whole space.
    Random,
    /// A neighbour of the best so far.
    Neighbour,
    /// Given to [`reprice`].
    Given,
}

/// One strategy, evaluated.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Its place in the search (0: the start).
    pub index: u32,
    /// Where it came from.
    pub origin: Origin,
    /// The strategy.
    pub strategy: AttackStrategy,
    /// Hours the campaign runs (warm-up included).
    pub hours: f64,
    /// What it costs.
    pub cost: f64,
    /// Output tokens the policy let out to it.
    pub tokens: u64,
    /// Output tokens the per-key-only baseline let out to it.
    pub baseline_tokens: u64,
    /// `tokens / cost`: the attacker's objective.
    pub tokens_per_cost: f64,
    /// `baseline_tokens / cost`.
    pub baseline_tokens_per_cost: f64,
    /// The cheapest honest population of its background to copy, priced as
    /// a campaign ([`family::cheapest_look_alike`]; its multiple is set
    /// where a report prices against the per-key reference).
    pub look_alike: Option<family::LookAlike>,
}

/// What a search found.
#[derive(Debug, Clone, Serialize)]
pub struct RedteamReport {
    /// How it ran.
    pub options: Options,
    /// The cost model.
    pub cost_model: CostModel,
    /// Every evaluation, in order.
    pub evaluations: Vec<Evaluation>,
    /// The starting point.
    pub start: Evaluation,
    /// The best evasion: the most tokens per cost under the policy.
    pub best: Evaluation,
    /// The cheapest extraction under the per-key-only baseline among the
    /// strategies evaluated.
    pub per_key_reference: Evaluation,
    /// The best evasion's cost per extracted token over the per-key
    /// reference's: how much dearer the policy makes extraction. `None`:
    /// the best evasion extracted nothing.
    pub cost_multiplier: Option<f64>,
    /// The cheapest honest population of the background to copy, on the
    /// best evasion's run, priced against the per-key reference: the
    /// multiple a campaign that copies it pays, which the policy can raise
    /// only by taking from that population.
    pub look_alike: Option<family::LookAlike>,
}

/// One campaign of `strategy` on the honest background of tuning seed
/// `background`, under `config` and under `baseline`, priced.
fn evaluate(
    (background, size): (u64, Size),
    index: u32,
    origin: Origin,
    strategy: AttackStrategy,
    config: &Config,
    baseline: &Config,
) -> Result<Evaluation, String> {
    let s = family::against_background(&strategy, background, size);
    let run = family::evaluate(&s, Some(&strategy), config, baseline)?;
    let (hours, cost) = family::campaign_cost(&s, &strategy).ok_or("the campaign is missing")?;
    let per = |t: u64| if cost > 0.0 { t as f64 / cost } else { 0.0 };
    Ok(Evaluation {
        index,
        origin,
        hours,
        cost,
        tokens: run.campaign_tokens_served,
        baseline_tokens: run.baseline_campaign_tokens_served,
        tokens_per_cost: per(run.campaign_tokens_served),
        baseline_tokens_per_cost: per(run.baseline_campaign_tokens_served),
        look_alike: family::cheapest_look_alike(&run.look_alikes).cloned(),
        strategy,
    })
}

/// Run the search of `options` against `config`, beside `baseline`.
pub fn search(
    options: &Options,
    config: &Config,
    baseline: &Config,
) -> Result<RedteamReport, String> {
    if options.budget < 2 {
        return Err("the budget is at least 2 evaluations".into());
    }
    let size = Size {
        minutes: options.minutes,
        accounts: options.scale,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(super::mix(options.seed, 0x4ed7));
    let evaluate = |index: u32, origin: Origin, strategy: AttackStrategy| {
        evaluate(
            (options.background_seed, size),
            index,
            origin,
            strategy,
            config,
            baseline,
        )
    };
    let start = evaluate(0, Origin::Start, AttackStrategy::starting_point())?;
    let mut evaluations = vec![
        start.clone(),
        evaluate(1, Origin::PerKeyOptimum, AttackStrategy::per_key_optimum())?,
    ];
    let better = |a: &Evaluation, b: &Evaluation| a.tokens_per_cost > b.tokens_per_cost;
    let mut best = if better(&evaluations[1], &start) {
        evaluations[1].clone()
    } else {
        start.clone()
    };
    for index in 2..options.budget {
        // One evaluation in four explores the whole space; the rest climb.
        let (origin, strategy) = if rng.gen_bool(0.25) {
            (Origin::Random, {
                let mut s = AttackStrategy::draw(&mut rng);
                s.aged_days = super::strategy::draw_aged_days(&mut rng);
                s
            })
        } else {
            (Origin::Neighbour, best.strategy.mutate(&mut rng))
        };
        let e = evaluate(index, origin, strategy)?;
        if better(&e, &best) {
            best = e.clone();
        }
        evaluations.push(e);
    }
    let per_key_reference = cheapest_per_key(&evaluations).unwrap_or_else(|| start.clone());
    let cost_multiplier = multiplier(&per_key_reference, &best);
    let look_alike = priced_look_alike(&per_key_reference, best.look_alike.as_ref());
    Ok(RedteamReport {
        options: *options,
        cost_model: COST,
        evaluations,
        start,
        best,
        per_key_reference,
        cost_multiplier,
        look_alike,
    })
}

/// The evaluation that the per-key-only baseline lets extract the most per
/// unit of cost (the earliest of equals).
fn cheapest_per_key(evaluations: &[Evaluation]) -> Option<Evaluation> {
    evaluations
        .iter()
        .max_by(|a, b| {
            a.baseline_tokens_per_cost
                .total_cmp(&b.baseline_tokens_per_cost)
                .then(b.index.cmp(&a.index))
        })
        .cloned()
}

/// How much dearer per extracted token `e` is under the policy than the
/// per-key `reference` under the baseline (None: `e` extracted nothing).
fn multiplier(reference: &Evaluation, e: &Evaluation) -> Option<f64> {
    (e.tokens_per_cost > 0.0).then(|| reference.baseline_tokens_per_cost / e.tokens_per_cost)
}

/// `l` with its multiple against `reference` (None in, None out).
fn priced_look_alike(
    reference: &Evaluation,
    l: Option<&family::LookAlike>,
) -> Option<family::LookAlike> {
    let mut l = l?.clone();
    l.cost_multiplier =
        (l.tokens > 0).then(|| reference.baseline_tokens_per_cost / l.tokens_per_cost());
    Some(l)
}

/// A multiplier as the text reports show it.
fn show_multiplier(m: Option<f64>) -> String {
    m.map_or("unbounded (nothing extracted)".to_string(), |m| {
        format!("{m:.2}x")
    })
}

/// The line of a report that names the cheapest honest look-alike.
fn render_look_alike(out: &mut String, l: Option<&family::LookAlike>) {
    if let Some(l) = l {
        let _ = writeln!(
            out,
            "cheapest honest look-alike on this background: {} ({} accounts, {:.1} h, {} tokens for {:.1}): a campaign that copies it pays {}, and the policy can charge it more only by taking from {}",
            l.population,
            l.accounts,
            l.hours,
            l.tokens,
            l.cost,
            show_multiplier(l.cost_multiplier),
            l.population,
        );
    }
}

/// Where [`reprice`] runs its campaigns.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RepriceOptions {
    /// The tuning-family seed whose honest background every campaign runs
    /// on.
    pub background_seed: u64,
    /// Scenario length in minutes.
    pub minutes: u64,
    /// Honest accounts times this.
    pub scale: f64,
}

/// A given strategy, priced under the policy.
#[derive(Debug, Clone, Serialize)]
pub struct Repriced {
    /// Where it was read from.
    pub source: String,
    /// Its campaign under the policy and under the baseline.
    pub evaluation: Evaluation,
    /// Its cost per extracted token over the per-key reference's (None: it
    /// extracted nothing).
    pub cost_multiplier: Option<f64>,
}

/// Given strategies priced under a policy.
#[derive(Debug, Clone, Serialize)]
pub struct RepriceReport {
    /// Where the campaigns ran.
    pub options: RepriceOptions,
    /// The cost model.
    pub cost_model: CostModel,
    /// The strategies, in the order given.
    pub strategies: Vec<Repriced>,
    /// The cheapest extraction under the per-key-only baseline among the
    /// per-key optimum and the given strategies (as a search takes it from
    /// everything it evaluated).
    pub per_key_reference: Evaluation,
    /// The lowest of the strategies' multipliers: the cheapest of these
    /// evasions under the policy (None: none extracted anything).
    pub cost_multiplier: Option<f64>,
    /// The cheapest honest population of the background to copy, over the
    /// strategies' runs, priced against the per-key reference (as
    /// [`RedteamReport::look_alike`]).
    pub look_alike: Option<family::LookAlike>,
}

/// Price each of `strategies` (a source label and the strategy) under
/// `config` and `baseline` on the background of `options`, beside the per-key
/// optimum. Strategies outside the search space are refused.
pub fn reprice(
    options: &RepriceOptions,
    strategies: Vec<(String, AttackStrategy)>,
    config: &Config,
    baseline: &Config,
) -> Result<RepriceReport, String> {
    let at = (
        options.background_seed,
        Size {
            minutes: options.minutes,
            accounts: options.scale,
        },
    );
    for (source, s) in &strategies {
        if s.clone().clamped() != *s {
            return Err(format!(
                "{source}: the strategy is outside the search space: {}",
                s.describe()
            ));
        }
    }
    let optimum = evaluate(
        at,
        0,
        Origin::PerKeyOptimum,
        AttackStrategy::per_key_optimum(),
        config,
        baseline,
    )?;
    let mut evaluations = vec![optimum];
    let mut sources = Vec::new();
    for (i, (source, strategy)) in strategies.into_iter().enumerate() {
        let index = u32::try_from(i + 1).map_err(|_| "too many strategies")?;
        evaluations.push(evaluate(
            at,
            index,
            Origin::Given,
            strategy,
            config,
            baseline,
        )?);
        sources.push(source);
    }
    let reference = cheapest_per_key(&evaluations).ok_or("nothing evaluated")?;
    let look_alike = priced_look_alike(
        &reference,
        family::cheapest_look_alike(evaluations.iter().filter_map(|e| e.look_alike.as_ref())),
    );
    let strategies: Vec<Repriced> = sources
        .into_iter()
        .zip(evaluations.into_iter().skip(1))
        .map(|(source, evaluation)| Repriced {
            source,
            cost_multiplier: multiplier(&reference, &evaluation),
            evaluation,
        })
        .collect();
    // The cheapest evasion: the lowest multiplier, where extracting nothing
    // counts as the highest.
    let cost_multiplier = strategies
        .iter()
        .map(|r| r.cost_multiplier.unwrap_or(f64::INFINITY))
        .min_by(f64::total_cmp)
        .filter(|m| m.is_finite());
    Ok(RepriceReport {
        options: *options,
        cost_model: COST,
        strategies,
        per_key_reference: reference,
        cost_multiplier,
        look_alike,
    })
}

impl RepriceReport {
    /// The report as text: each strategy's figures, the reference and the
    /// lowest multiplier.
    pub fn render(&self) -> String {
        let mut out = format!(
            "redteam --reprice: {} strategies, background seed {} ({} minutes, honest accounts x{}); cost: account-hour {}, address-hour {}, aged account-day {}\n",
            self.strategies.len(),
            self.options.background_seed,
            self.options.minutes,
            self.options.scale,
            self.cost_model.account_hour,
            self.cost_model.address_hour,
            self.cost_model.aged_account_day,
        );
        for r in &self.strategies {
            let e = &r.evaluation;
            let _ = writeln!(
                out,
                "{}: {:.1} tokens per account-hour ({} tokens for {:.1}; per-key {:.1}), cost multiplier {}\n  {}",
                r.source,
                e.tokens_per_cost,
                e.tokens,
                e.cost,
                e.baseline_tokens_per_cost,
                show_multiplier(r.cost_multiplier),
                e.strategy.describe()
            );
        }
        let _ = writeln!(
            out,
            "per-key reference (baseline): {:.1} tokens per account-hour\n  {}",
            self.per_key_reference.baseline_tokens_per_cost,
            self.per_key_reference.strategy.describe()
        );
        let _ = writeln!(
            out,
            "lowest cost multiplier against the per-key baseline per extracted token: {}",
            show_multiplier(self.cost_multiplier)
        );
        render_look_alike(&mut out, self.look_alike.as_ref());
        out
    }
}

impl RedteamReport {
    /// The report as text: the search, the best evasion, the reference and
    /// the multiplier.
    pub fn render(&self) -> String {
        let mut out = format!(
            "redteam: seed {}, {} evaluations, background seed {} ({} minutes); cost: account-hour {}, address-hour {}, aged account-day {}\n",
            self.options.seed,
            self.evaluations.len(),
            self.options.background_seed,
            self.options.minutes,
            self.cost_model.account_hour,
            self.cost_model.address_hour,
            self.cost_model.aged_account_day,
        );
        let _ = writeln!(
            out,
            "{:>4} {:<16} {:>12} {:>12} {:>10} {:>10}",
            "#", "origin", "tokens/cost", "per-key", "tokens", "cost"
        );
        for e in &self.evaluations {
            let origin = serde_json::to_value(e.origin)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{:>4} {:<16} {:>12.1} {:>12.1} {:>10} {:>10.1}{}",
                e.index,
                origin,
                e.tokens_per_cost,
                e.baseline_tokens_per_cost,
                e.tokens,
                e.cost,
                if e.index == self.best.index {
                    "  <- best"
                } else {
                    ""
                }
            );
        }
        let mut describe = |label: &str, e: &Evaluation, per_key: bool| {
            let (t, tpc) = if per_key {
                (e.baseline_tokens, e.baseline_tokens_per_cost)
            } else {
                (e.tokens, e.tokens_per_cost)
            };
            let _ = writeln!(
                out,
                "{label}: #{} {:.1} tokens per account-hour ({t} tokens for {:.1})\n  {}",
                e.index,
                tpc,
                e.cost,
                e.strategy.describe()
            );
        };
        describe("start (policy)", &self.start, false);
        describe("best evasion (policy)", &self.best, false);
        describe(
            "per-key reference (baseline)",
            &self.per_key_reference,
            true,
        );
        let _ = writeln!(
            out,
            "cost multiplier against the per-key baseline per extracted token: {}",
            show_multiplier(self.cost_multiplier)
        );
        render_look_alike(&mut out, self.look_alike.as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_counts_accounts_and_addresses_by_the_hour() {
        let s = AttackStrategy {
            accounts: 100,
            addresses_per_account: 0.5,
            ..AttackStrategy::starting_point()
        };
        assert_eq!(COST.cost(&s, 2.0), 2.0 * (100.0 + 50.0 * 0.25));
        let aged = AttackStrategy {
            aged_days: 3.0,
            ..s.clone()
        };
        assert_eq!(COST.cost(&aged, 2.0), COST.cost(&s, 2.0) + 100.0 * 3.0);
    }
}
