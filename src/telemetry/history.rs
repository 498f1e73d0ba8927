//! Score history for the console's drill-downs (`GET
//! /admin/{accounts|clusters}/{id}/history`): every [`SAMPLE_INTERVAL`] the
//! admin thread samples the behaviour score, with each signal's value and
//! contribution, of the largest clusters, of the accounts of the latest
//! non-allow decisions, and of whatever a console asked about in the last
//! [`WATCH`]. The engine keeps decayed windows, not a past: this is the
//! past, kept for at most [`SUBJECTS`] subjects × [`POINTS`] points (about
//! 200 bytes a point, 4 MiB in all).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::engine::score::{Level, Score, Signal};
use crate::engine::{AccountId, Engine, Nanos};

/// How often scores are sampled (real time).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
/// Points kept per subject (ten minutes at two seconds).
pub const POINTS: usize = 300;
/// Subjects kept; beyond it the one sampled longest ago goes.
pub const SUBJECTS: usize = 64;
/// A subject asked about is sampled for this long afterwards.
pub const WATCH: Duration = Duration::from_secs(600);
/// Largest clusters sampled every round.
const AUTO_CLUSTERS: usize = 12;
/// Accounts of the latest decisions sampled every round.
const AUTO_ACCOUNTS: usize = 12;

/// Whose score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    /// An account.
    Account(AccountId),
    /// A cluster, by id.
    Cluster(u64),
}

/// One sample.
#[derive(Debug, Clone)]
pub struct Point {
    /// Wall-clock time, ms since the Unix epoch.
    pub unix_ms: u64,
    /// Engine time, ms since the proxy started (scenario time in `demo
    /// --traffic`, whose engine clock runs faster).
    pub engine_ms: u64,
    /// The score, 0..=1.
    pub score: f32,
    /// The level the ladder holds.
    pub level: Level,
    /// Per signal (index [`Signal::index`]): its raw value and its
    /// contribution to the score; None where it does not apply.
    pub signals: [Option<(f32, f32)>; Signal::COUNT],
}

impl Point {
    fn new(unix_ms: u64, now: Nanos, score: &Score, level: Level) -> Point {
        let mut signals = [None; Signal::COUNT];
        for c in &score.contributions {
            signals[c.signal.index()] = Some((c.value, c.contribution));
        }
        Point {
            unix_ms,
            engine_ms: now / 1_000_000,
            score: score.value,
            level,
            signals,
        }
    }
}

#[derive(Debug, Default)]
struct Series {
    points: VecDeque<Point>,
    /// Sampled every round until then, even when not picked otherwise.
    watched_until: Option<Instant>,
    /// Round of the last sample.
    round: u64,
}

/// The sampled histories.
#[derive(Debug, Default)]
pub struct History {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    series: HashMap<Subject, Series>,
    round: u64,
}

impl Inner {
    /// The series of `s`, made (evicting the stalest when full) if new.
    fn series(&mut self, s: Subject) -> &mut Series {
        if !self.series.contains_key(&s) && self.series.len() >= SUBJECTS {
            let stalest = self
                .series
                .iter()
                .min_by_key(|(_, v)| (v.round, v.watched_until))
                .map(|(k, _)| *k);
            if let Some(k) = stalest {
                self.series.remove(&k);
            }
        }
        self.series.entry(s).or_default()
    }
}

impl History {
    /// A console asked about `s`: sample it for the next [`WATCH`].
    pub fn watch(&self, s: Subject, at: Instant) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.series(s).watched_until = Some(at + WATCH);
        }
    }

    /// One round: sample the largest clusters, `accounts` (those of the
    /// latest decisions) and every watched subject at engine time `now`.
    pub fn sample(
        &self,
        engine: &Engine,
        accounts: &[AccountId],
        now: Nanos,
        unix_ms: u64,
        at: Instant,
    ) {
        let mut subjects: Vec<Subject> = engine
            .clusters(AUTO_CLUSTERS)
            .into_iter()
            .map(|c| Subject::Cluster(c.id))
            .collect();
        subjects.extend(
            accounts
                .iter()
                .take(AUTO_ACCOUNTS)
                .map(|a| Subject::Account(*a)),
        );
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.round += 1;
        let round = inner.round;
        subjects.extend(
            inner
                .series
                .iter()
                .filter(|(_, v)| v.watched_until.is_some_and(|w| w > at))
                .map(|(k, _)| *k),
        );
        subjects.sort_unstable_by_key(|s| match s {
            Subject::Account(a) => (0, a.0),
            Subject::Cluster(c) => (1, *c),
        });
        subjects.dedup();
        for s in subjects {
            let scored = match s {
                Subject::Account(a) => engine.account_score(a, now),
                Subject::Cluster(c) => engine.cluster_score(c, now),
            };
            let Some((score, level)) = scored else {
                continue;
            };
            let series = inner.series(s);
            if series.points.len() >= POINTS {
                series.points.pop_front();
            }
            series
                .points
                .push_back(Point::new(unix_ms, now, &score, level));
            series.round = round;
        }
    }

    /// The points held for `s`, oldest first.
    pub fn points(&self, s: Subject) -> Vec<Point> {
        self.inner
            .lock()
            .ok()
            .and_then(|inner| {
                inner
                    .series
                    .get(&s)
                    .map(|v| v.points.iter().cloned().collect())
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_capped_and_the_stalest_goes() {
        let h = History::default();
        let t = Instant::now();
        for i in 0..(SUBJECTS as u64 + 5) {
            h.watch(Subject::Cluster(i), t);
        }
        let inner = h.inner.lock().unwrap();
        assert_eq!(inner.series.len(), SUBJECTS);
        // The latest watched is held.
        assert!(inner
            .series
            .contains_key(&Subject::Cluster(SUBJECTS as u64 + 4)));
    }
}
