//! A circuit breaker in front of the shared store: after `threshold`
//! consecutive failures (errors or timeouts) it opens, and requests go
//! straight to the failure mode without waiting on Redis; after `open_for`
//! one call is let through as a probe (half-open): its success closes the
//! breaker, its failure opens it again for another `open_for`.
//!
//! Lock-free (atomics); the clock is read by the caller's side of the
//! process, never by the engine. Transitions are returned to the caller,
//! which logs and counts them.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are skipped until a probe is due.
    Open,
    /// One probe is in flight; other calls are skipped.
    HalfOpen,
}

impl BreakerState {
    /// Label for metrics, logs and `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The gauge value: 0 closed, 1 open, 2 half open.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    fn from_u8(v: u8) -> BreakerState {
        match v {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Call (the breaker is closed).
    Call,
    /// Call as the probe (report the outcome with `probe = true`).
    Probe,
    /// Do not call: apply the failure mode.
    Skip,
}

/// A state change, for the caller to log once and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Before.
    pub from: BreakerState,
    /// After.
    pub to: BreakerState,
}

/// The breaker.
#[derive(Debug)]
pub struct Breaker {
    state: AtomicU8,
    failures: AtomicU32,
    /// Milliseconds since `origin` when a probe is due.
    probe_at_ms: AtomicU64,
    probing: AtomicBool,
    origin: Instant,
    threshold: u32,
    open_for: Duration,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, open_for: Duration) -> Breaker {
        Breaker {
            state: AtomicU8::new(0),
            failures: AtomicU32::new(0),
            probe_at_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            origin: Instant::now(),
            threshold: threshold.max(1),
            open_for,
        }
    }

    /// The state now.
    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn set(&self, to: BreakerState) -> Option<Transition> {
        let from = BreakerState::from_u8(self.state.swap(to as u8, Ordering::AcqRel));
        (from != to).then_some(Transition { from, to })
    }

    /// May a call be made now? While open, the first caller after
    /// `open_for` becomes the probe (and the breaker half-open).
    pub fn gate(&self) -> (Gate, Option<Transition>) {
        match self.state() {
            BreakerState::Closed => (Gate::Call, None),
            BreakerState::HalfOpen => (Gate::Skip, None),
            BreakerState::Open => {
                if self.now_ms() >= self.probe_at_ms.load(Ordering::Acquire)
                    && self
                        .probing
                        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    (Gate::Probe, self.set(BreakerState::HalfOpen))
                } else {
                    (Gate::Skip, None)
                }
            }
        }
    }

    /// A call succeeded. A probe's success closes the breaker; a late
    /// success of a call made before it opened changes nothing.
    pub fn success(&self, probe: bool) -> Option<Transition> {
        if probe {
            self.failures.store(0, Ordering::Release);
            let t = self.set(BreakerState::Closed);
            self.probing.store(false, Ordering::Release);
            return t;
        }
        if self.state() == BreakerState::Closed {
            self.failures.store(0, Ordering::Release);
        }
        None
    }

    /// A call failed (error or timeout). The `threshold`-th consecutive
    /// failure opens the breaker; a failed probe opens it again.
    pub fn failure(&self, probe: bool) -> Option<Transition> {
        if probe {
            self.probe_at_ms
                .store(self.now_ms() + self.open_ms(), Ordering::Release);
            let t = self.set(BreakerState::Open);
            self.probing.store(false, Ordering::Release);
            return t;
        }
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.threshold && self.state() == BreakerState::Closed {
            self.probe_at_ms
                .store(self.now_ms() + self.open_ms(), Ordering::Release);
            if self
                .state
                .compare_exchange(
                    BreakerState::Closed as u8,
                    BreakerState::Open as u8,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            {
                return Some(Transition {
                    from: BreakerState::Closed,
                    to: BreakerState::Open,
                });
            }
        }
        None
    }

    fn open_ms(&self) -> u64 {
        u64::try_from(self.open_for.as_millis()).unwrap_or(u64::MAX / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes_once() {
        let b = Breaker::new(3, Duration::ZERO);
        assert_eq!(b.gate().0, Gate::Call);
        assert_eq!(b.failure(false), None);
        assert_eq!(b.failure(false), None);
        let t = b.failure(false).unwrap();
        assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Open));
        // open_for is zero: the next caller probes, the one after waits.
        let (g, t) = b.gate();
        assert_eq!(g, Gate::Probe);
        assert_eq!(t.unwrap().to, BreakerState::HalfOpen);
        assert_eq!(b.gate().0, Gate::Skip);
        // The probe fails: open again; the next probe succeeds: closed.
        assert_eq!(b.failure(true).unwrap().to, BreakerState::Open);
        assert_eq!(b.gate().0, Gate::Probe);
        assert_eq!(b.success(true).unwrap().to, BreakerState::Closed);
        assert_eq!(b.gate().0, Gate::Call);
    }

    #[test]
    fn success_resets_the_count_and_late_successes_do_not_close() {
        let b = Breaker::new(2, Duration::from_secs(3600));
        b.failure(false);
        b.success(false);
        assert_eq!(b.failure(false), None, "the count restarted");
        assert!(b.failure(false).is_some());
        // A call made before it opened answers late: still open.
        assert_eq!(b.success(false), None);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.gate().0, Gate::Skip, "no probe before open_for");
    }
}
