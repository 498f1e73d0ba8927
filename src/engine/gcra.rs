//! GCRA buckets with an injected clock and post-paid debt.
//!
//! Every budget in the engine — an account's or a cluster's requests, input
//! tokens and output tokens — is one [`Gcra`] cell: a single "theoretical
//! arrival time" (`tat`, nanoseconds on the engine's clock) checked against a
//! [`Rate`]. It is the algorithm `governor` implements, written out here
//! because the engine needs three things `governor`'s keyed limiters do not
//! give:
//!
//! 1. **Time as an argument.** The engine never reads a clock: `replay` and
//!    the tests drive it with virtual time, so every check takes `now`.
//!    (`governor` reads its own `Clock`; a shared fake clock would race
//!    between worker threads.)
//! 2. **Debt.** Output tokens are only known after (or while) a response
//!    streams. They are charged post-paid with [`Gcra::charge`], which may
//!    push `tat` past the burst window; the next request is refused until
//!    the debt is repaid. A stream is never cut off by a budget.
//! 3. **Quotas that change under live state.** The rate is passed on every
//!    call rather than baked into the cell, so a reload that changes a tier's
//!    quota applies at once without resetting anyone's debt.
//!
//! A rate allows `per_period` units per `period` with a burst of `burst`
//! units: the emission interval is `T = period / per_period` and the bucket
//! holds `C = burst × T` of "time credit".

/// Nanoseconds on the engine's clock (an arbitrary monotonic epoch).
pub type Nanos = u64;

/// One second in [`Nanos`].
pub const SECOND: Nanos = 1_000_000_000;

/// A quota: `per_period` units per `period`, bursting to `burst` units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Nanoseconds per unit (`T`), at least 1.
    emission: Nanos,
    /// Burst capacity in nanoseconds (`C = burst × T`).
    capacity: Nanos,
    /// Units per period (for the `RateLimit-Policy` header).
    per_period: u64,
    /// The period in seconds.
    period_secs: u64,
}

impl Rate {
    /// `per_minute` units per minute with a burst of `burst` units (both at
    /// least 1; 0 is treated as 1).
    pub fn per_minute(per_minute: u64, burst: u64) -> Rate {
        Rate::new(per_minute, 60, burst)
    }

    /// `per_period` units every `period_secs` seconds, bursting to `burst`.
    pub fn new(per_period: u64, period_secs: u64, burst: u64) -> Rate {
        let per_period = per_period.max(1);
        let period = period_secs.max(1).saturating_mul(SECOND);
        let emission = (period / per_period).max(1);
        Rate {
            emission,
            capacity: emission.saturating_mul(burst.max(1)),
            per_period,
            period_secs: period_secs.max(1),
        }
    }

    /// The same quota multiplied by `factor` (e.g. 0.25 when throttled, or a
    /// cluster's member-scaled budget); never below 1 unit per period.
    pub fn scaled(&self, factor: f64) -> Rate {
        let burst = (self.capacity / self.emission).max(1);
        let scale = |v: u64| ((v as f64 * factor).round() as u64).max(1);
        Rate::new(scale(self.per_period), self.period_secs, scale(burst))
    }

    /// Units per period.
    pub fn per_period(&self) -> u64 {
        self.per_period
    }

    /// The period in seconds.
    pub fn period_secs(&self) -> u64 {
        self.period_secs
    }

    /// Nanoseconds per unit (the emission interval).
    pub fn emission(&self) -> Nanos {
        self.emission
    }

    /// Burst capacity in nanoseconds (burst × emission interval).
    pub fn capacity(&self) -> Nanos {
        self.capacity
    }

    /// Burst in units.
    pub fn burst(&self) -> u64 {
        self.capacity / self.emission
    }
}

/// Why a cell refused, and when it will accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Time until the cell conforms again.
    pub retry_after: Nanos,
}

/// One bucket's state: its theoretical arrival time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gcra {
    tat: Nanos,
}

impl Gcra {
    /// Take `n` units now if they fit in the burst; otherwise refuse and
    /// leave the cell unchanged.
    pub fn check(&mut self, rate: &Rate, n: u64, now: Nanos) -> Result<(), Refusal> {
        let start = self.tat.max(now);
        let new_tat = start.saturating_add(n.saturating_mul(rate.emission));
        let limit = now.saturating_add(rate.capacity);
        if new_tat > limit {
            return Err(Refusal {
                retry_after: new_tat - limit,
            });
        }
        self.tat = new_tat;
        Ok(())
    }

    /// Whether the cell has room for at least one unit now (not in debt).
    pub fn admits(&self, rate: &Rate, now: Nanos) -> Result<(), Refusal> {
        let need = self.tat.max(now).saturating_add(rate.emission);
        let limit = now.saturating_add(rate.capacity);
        if need > limit {
            return Err(Refusal {
                retry_after: need - limit,
            });
        }
        Ok(())
    }

    /// Charge `n` units unconditionally (post-paid); may go into debt.
    pub fn charge(&mut self, rate: &Rate, n: u64, now: Nanos) {
        self.tat = self
            .tat
            .max(now)
            .saturating_add(n.saturating_mul(rate.emission));
    }

    /// Give back `n` units charged earlier (e.g. a pre-charge larger than
    /// what was used); never below `now`.
    pub fn refund(&mut self, rate: &Rate, n: u64, now: Nanos) {
        self.tat = self
            .tat
            .saturating_sub(n.saturating_mul(rate.emission))
            .max(now);
    }

    /// Units that could be taken now (0 while in debt).
    pub fn remaining(&self, rate: &Rate, now: Nanos) -> u64 {
        let used = self.tat.saturating_sub(now);
        rate.capacity.saturating_sub(used) / rate.emission
    }

    /// Units owed beyond the burst (0 when not in debt).
    pub fn debt(&self, rate: &Rate, now: Nanos) -> u64 {
        self.tat
            .saturating_sub(now.saturating_add(rate.capacity))
            .div_ceil(rate.emission)
    }

    /// Time until the bucket is full again.
    pub fn reset_after(&self, now: Nanos) -> Nanos {
        self.tat.saturating_sub(now)
    }

    /// Whether the bucket is full (nothing used, nothing owed): state that
    /// can be dropped without forgiving anything.
    pub fn is_idle(&self, now: Nanos) -> bool {
        self.tat <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: Nanos = 60 * SECOND;

    #[test]
    fn requests_burst_then_pace() {
        let rate = Rate::per_minute(60, 5); // 1 per second, burst 5
        let mut g = Gcra::default();
        let t0 = 1_000 * SECOND;
        for _ in 0..5 {
            g.check(&rate, 1, t0).unwrap();
        }
        let r = g.check(&rate, 1, t0).unwrap_err();
        assert_eq!(r.retry_after, SECOND);
        assert_eq!(g.remaining(&rate, t0), 0);
        // One second later exactly one more fits.
        g.check(&rate, 1, t0 + SECOND).unwrap();
        assert!(g.check(&rate, 1, t0 + SECOND).is_err());
        // After a full window the whole burst is back.
        assert_eq!(g.remaining(&rate, t0 + MIN), 5);
        assert!(g.is_idle(t0 + MIN));
    }

    #[test]
    fn post_paid_debt_blocks_until_repaid() {
        let rate = Rate::per_minute(600, 600); // 10 tokens/s, burst one minute
        let mut g = Gcra::default();
        let t0 = 10 * MIN;
        g.admits(&rate, t0).unwrap();
        // A stream used 1200 tokens: twice the per-minute budget.
        g.charge(&rate, 1200, t0);
        assert_eq!(g.debt(&rate, t0), 600);
        let r = g.admits(&rate, t0).unwrap_err();
        // Debt of 600 tokens at 10/s = 60 s, plus one token's interval.
        assert_eq!(r.retry_after, MIN + SECOND / 10);
        assert!(g.admits(&rate, t0 + MIN).is_err());
        g.admits(&rate, t0 + MIN + SECOND / 10).unwrap();
        assert_eq!(g.reset_after(t0), 2 * MIN);
    }

    #[test]
    fn quota_change_keeps_debt() {
        let slow = Rate::per_minute(60, 60);
        let fast = Rate::per_minute(6000, 6000);
        let mut g = Gcra::default();
        g.charge(&slow, 120, 0); // 2 minutes of the slow quota
        assert!(g.admits(&slow, 0).is_err());
        // The faster quota's larger window swallows the same debt: the state
        // (tat) is the same cell, only the rate moved.
        assert!(g.admits(&fast, 0).is_err());
        assert!(g
            .admits(&fast, 2 * MIN - fast.capacity + fast.emission)
            .is_ok());
    }

    #[test]
    fn scaled_rates() {
        let r = Rate::per_minute(100, 20);
        let q = r.scaled(0.25);
        assert_eq!(q.per_period(), 25);
        assert_eq!(q.burst(), 5);
        assert_eq!(Rate::per_minute(1, 1).scaled(0.01).per_period(), 1);
    }

    proptest! {
        /// Over any window, a cell never admits more than burst + rate × window.
        #[test]
        fn never_exceeds_rate_plus_burst(
            per_min in 1u64..10_000,
            burst in 1u64..1_000,
            gaps in proptest::collection::vec(0u64..2 * SECOND, 1..400),
            cost in 1u64..50,
        ) {
            let rate = Rate::per_minute(per_min, burst);
            let mut g = Gcra::default();
            let mut now = 5 * MIN;
            let start = now;
            let mut taken = 0u64;
            for gap in gaps {
                now += gap;
                if g.check(&rate, cost, now).is_ok() {
                    taken += cost;
                }
            }
            let elapsed = now - start;
            let allowed = rate.burst() + (elapsed as u128 * per_min as u128 / MIN as u128) as u64 + 1;
            prop_assert!(taken <= allowed, "taken {} allowed {}", taken, allowed);
        }

        /// retry_after is exact: waiting that long makes the same check pass.
        #[test]
        fn retry_after_is_exact(per_min in 1u64..10_000, burst in 1u64..100, n in 1u64..100, pre in 0u64..500) {
            let rate = Rate::per_minute(per_min, burst);
            let mut g = Gcra::default();
            let now = 10 * MIN;
            g.charge(&rate, pre, now);
            if let Err(r) = g.check(&rate, n.min(burst), now) {
                prop_assert!(g.check(&rate, n.min(burst), now + r.retry_after - 1).is_err());
                prop_assert!(g.check(&rate, n.min(burst), now + r.retry_after).is_ok());
            }
        }
    }
}
