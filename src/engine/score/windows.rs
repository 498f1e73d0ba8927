//! Decaying windows shared by accounts and clusters (docs/score.md, "Windows").

use super::*;

/// Decayed sums: every field is multiplied by the same factor as time passes, except `gap_mean` (a mean).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Counters {
    /// Requests.
    pub(super) n: f32,
    /// Elicitation credit (1 per phrase hit, `elicitation_param_credit` per parameter-only request).
    pub(super) elicit: f32,
    /// Requests with a shared template.
    shared: f32,
    /// Requests with pinned `max_tokens`.
    pub(super) pinned: f32,
    /// Requests with inconsistent fingerprints.
    flagged: f32,
    /// Youth-weighted requests to new models.
    pivot: f32,
    /// Input tokens.
    pub(super) input: f32,
    /// Weight of the gap statistics.
    gap_w: f32,
    /// Weighted mean gap (seconds).
    gap_mean: f32,
    /// Weighted sum of squared deviations of gaps.
    gap_m2: f32,
    /// Requests whose client stack changed from the account's previous one.
    pub(super) churn: f32,
    /// Requests settled in full (not degraded).
    pub(super) full: f32,
    /// Output tokens of those.
    pub(super) full_output: f32,
    /// Output tokens of those that were long yields ([`ScorePolicy::yield_min_output_tokens`],
    /// [`ScorePolicy::yield_min_ratio`]).
    pub(super) yield_output: f32,
    /// Requests per hour of each request's sender ([`RequestSignals::sender_requests_per_hour`]; 0 when not
    /// given).
    sender_rate: f32,
    /// Hours of age of each request's sender ([`RequestSignals::sender_age`]), each at most the account-age
    /// ramp's far end.
    sender_age: f32,
}

impl Counters {
    fn scale(&mut self, f: f32) {
        self.n *= f;
        self.elicit *= f;
        self.shared *= f;
        self.pinned *= f;
        self.flagged *= f;
        self.pivot *= f;
        self.input *= f;
        self.gap_w *= f;
        self.gap_m2 *= f;
        self.churn *= f;
        self.full *= f;
        self.full_output *= f;
        self.yield_output *= f;
        self.sender_rate *= f;
        self.sender_age *= f;
    }

    /// Adds another window's sums (already decayed to the same time). The gap statistics stay this window's own:
    /// inter-arrival times of two request streams do not combine into those of the merged stream.
    fn add_sums(&mut self, o: &Counters) {
        self.n += o.n;
        self.elicit += o.elicit;
        self.shared += o.shared;
        self.pinned += o.pinned;
        self.flagged += o.flagged;
        self.pivot += o.pivot;
        self.input += o.input;
        self.churn += o.churn;
        self.full += o.full;
        self.full_output += o.full_output;
        self.yield_output += o.yield_output;
        self.sender_rate += o.sender_rate;
        self.sender_age += o.sender_age;
    }

    /// Add one gap (seconds): West's weighted incremental mean and variance.
    fn add_gap(&mut self, x: f32) {
        let w = self.gap_w + 1.0;
        let delta = x - self.gap_mean;
        let mean = self.gap_mean + delta / w;
        self.gap_m2 = (self.gap_m2 + delta * (x - mean)).max(0.0);
        self.gap_mean = mean;
        self.gap_w = w;
    }
}

/// Distinct fill keys and template keys of the current and the previous epoch (an epoch is one half-life), as
/// 128-bit linear-counting bitmaps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Breadth {
    pub(super) epoch: u32,
    pub(super) fills: [u64; 2],
    pub(super) templates: [u64; 2],
    pub(super) prev_fills: [u64; 2],
    pub(super) prev_templates: [u64; 2],
}

pub(super) fn epoch_of(now: Nanos, half_life: Nanos) -> u32 {
    // Truncation is fine: only equality and the difference of neighbouring epochs are used.
    (now / half_life.max(1)) as u32
}

pub(super) fn set_bit(words: &mut [u64; 2], h: u64) {
    let bit = (h % u64::from(BREADTH_BITS)) as usize;
    if let Some(w) = words.get_mut(bit / 64) {
        *w |= 1 << (bit % 64);
    }
}

/// Linear-counting estimate of the distinct keys set into an `m`-bit map with `zeros` bits still clear:
/// `m · ln(m / zeros)`, with `zeros` taken as at least ½ (a full map reads `m · ln 2m`).
pub(super) fn linear_count(zeros: u32, m: u32) -> f32 {
    if zeros >= m {
        return 0.0;
    }
    let m = f64::from(m);
    (m * (m / f64::from(zeros).max(0.5)).ln()) as f32
}

pub(super) fn zeros(words: [u64; 2]) -> u32 {
    BREADTH_BITS - words[0].count_ones() - words[1].count_ones()
}

impl Breadth {
    pub(super) fn insert(&mut self, now: Nanos, half_life: Nanos, template: u64, fill: u64) {
        let e = epoch_of(now, half_life);
        let ahead = e.wrapping_sub(self.epoch) as i32;
        if ahead == 1 {
            self.prev_fills = self.fills;
            self.prev_templates = self.templates;
            self.fills = [0; 2];
            self.templates = [0; 2];
            self.epoch = e;
        } else if ahead > 1 {
            *self = Breadth {
                epoch: e,
                ..Breadth::default()
            };
        }
        set_bit(&mut self.fills, splitmix64(fill));
        set_bit(
            &mut self.templates,
            splitmix64(template ^ 0x9e37_79b9_7f4a_7c15),
        );
    }

    /// This sketch as it would read in epoch `e` (not earlier than its own).
    fn at_epoch(self, e: u32) -> Breadth {
        match e.wrapping_sub(self.epoch) as i32 {
            i32::MIN..=0 => self,
            1 => Breadth {
                epoch: e,
                fills: [0; 2],
                templates: [0; 2],
                prev_fills: self.fills,
                prev_templates: self.templates,
            },
            _ => Breadth {
                epoch: e,
                ..Breadth::default()
            },
        }
    }

    /// The union of two sketches (the keys either has seen), in the later of their epochs.
    pub(super) fn union(self, other: Breadth) -> Breadth {
        let e = if (other.epoch.wrapping_sub(self.epoch) as i32) > 0 {
            other.epoch
        } else {
            self.epoch
        };
        let (a, b) = (self.at_epoch(e), other.at_epoch(e));
        let or = |x: [u64; 2], y: [u64; 2]| [x[0] | y[0], x[1] | y[1]];
        Breadth {
            epoch: e,
            fills: or(a.fills, b.fills),
            templates: or(a.templates, b.templates),
            prev_fills: or(a.prev_fills, b.prev_fills),
            prev_templates: or(a.prev_templates, b.prev_templates),
        }
    }

    /// Distinct fills ÷ distinct templates over the current and previous epoch as seen at `now` (0: no keys).
    pub(super) fn ratio(&self, now: Nanos, half_life: Nanos) -> f32 {
        let ahead = epoch_of(now, half_life).wrapping_sub(self.epoch) as i32;
        let (f, t) = match ahead {
            i32::MIN..=0 => (
                [
                    self.fills[0] | self.prev_fills[0],
                    self.fills[1] | self.prev_fills[1],
                ],
                [
                    self.templates[0] | self.prev_templates[0],
                    self.templates[1] | self.prev_templates[1],
                ],
            ),
            1 => (self.fills, self.templates),
            _ => return 0.0,
        };
        let fills = linear_count(zeros(f), BREADTH_BITS);
        if fills <= 0.0 {
            return 0.0;
        }
        fills / linear_count(zeros(t), BREADTH_BITS).max(1.0)
    }
}

/// A response of `output` tokens to a prompt of `input` tokens is a long yield: long
/// ([`ScorePolicy::yield_min_output_tokens`]) and many times its prompt ([`ScorePolicy::yield_min_ratio`]).
pub(super) fn is_long_yield(output: u64, input: u64, policy: &ScorePolicy) -> bool {
    output >= u64::from(policy.yield_min_output_tokens)
        && output as f64 >= f64::from(policy.yield_min_ratio) * input as f64
}

/// `2^(−dt / half_life)`, exactly 1 when no time passed.
pub(super) fn decay_factor(dt: Nanos, half_life: Nanos) -> f32 {
    if dt == 0 {
        return 1.0;
    }
    if half_life == 0 {
        return 0.0;
    }
    (-(dt as f64) / half_life as f64).exp2() as f32
}

/// Events per second of a counter decayed with `half_life`, corrected for a window younger than its time constant
/// `τ = half_life / ln 2`: `count / (τ · (1 − e^(−age/τ)))`, the exact rate of a steady source.
pub(super) fn rate_per_sec(count: f32, half_life: Nanos, age: Nanos) -> f64 {
    let tau = half_life as f64 / SECOND as f64 / std::f64::consts::LN_2;
    if tau <= 0.0 || count <= 0.0 {
        return 0.0;
    }
    let age = age.max(MIN_RATE_AGE) as f64 / SECOND as f64;
    let fill = -(-age / tau).exp_m1();
    f64::from(count) / (tau * fill)
}

pub(super) fn share(x: f32, n: f32) -> f32 {
    if n > f32::EPSILON {
        (x / n).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// What only a cluster has, for its score.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ClusterFacts {
    /// Decayed requests in lockstep seconds.
    pub(super) lock: f32,
    /// Members now.
    pub(super) members: u32,
    /// Distinct members that sent in the current and the previous epoch (0: none).
    pub(super) senders: f32,
}

/// Bits of a cluster's distinct-senders sketch.
const SENDER_BITS: u32 = 256;

/// Distinct members that sent requests in the current and the previous epoch (one half-life each), as 256-bit
/// linear-counting bitmaps (saturating near 1 600). Counted from the requests a state observed, so a cluster's core
/// counts only the members whose requests it holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Senders {
    epoch: u32,
    cur: [u64; 4],
    prev: [u64; 4],
}

impl Senders {
    pub(super) fn insert(&mut self, now: Nanos, half_life: Nanos, member: u64) {
        *self = self.at_epoch(epoch_of(now, half_life));
        let bit = (splitmix64(member ^ 0x5e4d_e125) % u64::from(SENDER_BITS)) as usize;
        if let Some(w) = self.cur.get_mut(bit / 64) {
            *w |= 1 << (bit % 64);
        }
    }

    /// This sketch as it would read in epoch `e` (not earlier than its own).
    fn at_epoch(self, e: u32) -> Senders {
        match e.wrapping_sub(self.epoch) as i32 {
            i32::MIN..=0 => self,
            1 => Senders {
                epoch: e,
                cur: [0; 4],
                prev: self.cur,
            },
            _ => Senders {
                epoch: e,
                ..Senders::default()
            },
        }
    }

    /// The members either has seen, in the later of their epochs.
    pub(super) fn union(self, other: Senders) -> Senders {
        let e = if (other.epoch.wrapping_sub(self.epoch) as i32) > 0 {
            other.epoch
        } else {
            self.epoch
        };
        let (a, b) = (self.at_epoch(e), other.at_epoch(e));
        let mut out = Senders {
            epoch: e,
            ..Senders::default()
        };
        for i in 0..4 {
            out.cur[i] = a.cur[i] | b.cur[i];
            out.prev[i] = a.prev[i] | b.prev[i];
        }
        out
    }

    /// Distinct senders in the current and previous epoch as seen at `now`.
    pub(super) fn count(&self, now: Nanos, half_life: Nanos) -> f32 {
        let s = self.at_epoch(epoch_of(now, half_life));
        let ones: u32 = (0..4).map(|i| (s.cur[i] | s.prev[i]).count_ones()).sum();
        linear_count(SENDER_BITS - ones, SENDER_BITS)
    }
}

/// State shared by accounts and clusters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Window {
    pub(super) first_seen: Nanos,
    /// Time the counters were last decayed to.
    pub(super) updated: Nanos,
    /// Last arrival (for gaps).
    pub(super) last_arrival: Nanos,
    pub(super) requests_total: u32,
    tier_rpm: u32,
    /// Minutes the account already existed when first seen (accounts only; 0 for groups).
    pub(super) tenure_min: u32,
    /// Requests decayed with the activity half-life.
    fast: f32,
    pub(super) c: Counters,
    breadth: Breadth,
    /// Decays with the onset half-life ([`ScorePolicy::onset_half_life`]) instead of the policy's.
    onset: bool,
}

/// Signal values and the factors of the score at one time.
pub(super) struct Snapshot {
    values: [f32; Signal::COUNT],
    n: f32,
    evidence: f32,
    activity: f32,
}

impl Window {
    pub(super) fn new(first_seen: Nanos) -> Window {
        Window {
            first_seen,
            updated: first_seen,
            last_arrival: first_seen,
            requests_total: 0,
            tier_rpm: 0,
            tenure_min: 0,
            fast: 0.0,
            c: Counters::default(),
            breadth: Breadth::default(),
            onset: false,
        }
    }

    /// A window that decays with the onset half-life (a group's recent requests; see [`ClusterSignals`]).
    pub(super) fn onset(first_seen: Nanos) -> Window {
        Window {
            onset: true,
            ..Window::new(first_seen)
        }
    }

    /// The half-lives this window decays with, its counters' and its activity's: the policy's, or for an onset
    /// window the onset half-life and an activity half-life of at most half of it.
    fn half_lives(&self, policy: &ScorePolicy) -> (Nanos, Nanos) {
        if self.onset {
            let h = policy.onset_half_life;
            (h, policy.activity_half_life.min(h / 2).max(1))
        } else {
            (policy.half_life, policy.activity_half_life)
        }
    }

    /// The age at `now`: since first seen, plus the tenure it had then.
    pub(super) fn age(&self, now: Nanos) -> Nanos {
        now.saturating_sub(self.first_seen)
            .saturating_add(u64::from(self.tenure_min) * MINUTE)
    }

    /// Decay everything to `now` (never backwards); returns the factor applied to the main counters.
    pub(super) fn decay_to(&mut self, now: Nanos, policy: &ScorePolicy) -> f32 {
        let dt = now.saturating_sub(self.updated);
        if dt == 0 {
            return 1.0;
        }
        let (half_life, activity) = self.half_lives(policy);
        let f = decay_factor(dt, half_life);
        self.c.scale(f);
        self.fast *= decay_factor(dt, activity);
        self.updated = now;
        f
    }

    /// Count a request; `churn`: what its client stack adds to [`Signal::StackChurn`]'s count here (its
    /// [`StackNovelty::churn`], in a group weighed by [`ClusterSignals`]).
    pub(super) fn observe(
        &mut self,
        req: &RequestSignals<'_>,
        hits: PhraseHits,
        policy: &ScorePolicy,
        tier_rpm: u64,
        churn: f32,
    ) {
        let now = req.now;
        self.decay_to(now, policy);
        if self.requests_total > 0 && now >= self.last_arrival {
            let gap = (now - self.last_arrival) as f64 / SECOND as f64;
            self.c.add_gap(gap as f32);
        }
        if self.requests_total == 0 || now > self.last_arrival {
            self.last_arrival = now;
        }
        self.requests_total = self.requests_total.saturating_add(1);
        self.tier_rpm = u32::try_from(tier_rpm).unwrap_or(u32::MAX);
        self.first_seen = self.first_seen.min(now);

        self.c.n += 1.0;
        self.c.sender_rate += req.sender_requests_per_hour.max(0.0);
        let age = req.sender_age.unwrap_or_else(|| self.age(now));
        self.c.sender_age +=
            ((age as f64 / HOUR as f64) as f32).min(policy.account_age_horizon_hours());
        self.fast += 1.0;
        let by_params = req
            .thinking_budget
            .is_some_and(|b| b >= policy.thinking_budget_threshold)
            || req.reasoning_effort_high;
        self.c.elicit += if hits.any() {
            1.0
        } else if by_params {
            policy.elicitation_param_credit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        if req.template_shared {
            self.c.shared += 1.0;
        }
        if let Some(max) = req.max_output_tokens {
            let ceiling = f64::from(policy.ceiling(req.model));
            if f64::from(max) >= f64::from(policy.pinned_fraction) * ceiling {
                self.c.pinned += 1.0;
            }
        }
        if req.fingerprint_inconsistent {
            self.c.flagged += 1.0;
        }
        self.c.churn += churn;
        if let Some(release) = req.model.and_then(|m| policy.release_of(m)) {
            if now >= release && now - release <= policy.new_model_window {
                let born = self
                    .first_seen
                    .saturating_sub(u64::from(self.tenure_min) * MINUTE);
                let young = born.saturating_add(policy.pivot_young) >= release;
                self.c.pivot += if young {
                    1.0
                } else {
                    policy.pivot_old_weight.clamp(0.0, 1.0)
                };
            }
        }
        self.c.input += req.input_tokens as f32;
        if let Some(fill) = req.fill_key {
            let template = req.template_key.unwrap_or(fill);
            self.breadth
                .insert(now, self.half_lives(policy).0, template, fill);
        }
    }

    /// `full`: the request was served in full (not degraded), so its output counts towards
    /// [`Signal::OutputLength`] too, and towards [`Signal::YieldPerMember`] (a cluster's) or
    /// [`Signal::YieldPerHour`] (an account's) when it is a long yield of its
    /// `input_tokens` (None: the input is not known, and the yield is not counted).
    pub(super) fn settle(
        &mut self,
        output_tokens: u64,
        input_tokens: Option<u64>,
        now: Nanos,
        policy: &ScorePolicy,
        full: bool,
    ) {
        self.decay_to(now, policy);
        if full {
            self.c.full += 1.0;
            self.c.full_output += output_tokens as f32;
            if input_tokens.is_some_and(|i| is_long_yield(output_tokens, i, policy)) {
                self.c.yield_output += output_tokens as f32;
            }
        }
    }

    /// Adds `other`'s evidence, decayed to `now`, as if its requests had been observed here: its requests and what
    /// they carried, its activity, its breadth sketch, and its first-seen time. Returns the factor this window's own
    /// counters were decayed by (for state kept beside it).
    pub(super) fn absorb(&mut self, other: &Window, now: Nanos, policy: &ScorePolicy) -> f32 {
        let f = self.decay_to(now, policy);
        let dt = now.saturating_sub(other.updated);
        let (half_life, activity) = self.half_lives(policy);
        let mut c = other.c;
        c.scale(decay_factor(dt, half_life));
        self.c.add_sums(&c);
        self.fast += other.fast * decay_factor(dt, activity);
        self.requests_total = self.requests_total.saturating_add(other.requests_total);
        self.first_seen = self.first_seen.min(other.first_seen);
        self.last_arrival = self.last_arrival.max(other.last_arrival);
        self.breadth = self.breadth.union(other.breadth);
        f
    }

    /// Decayed requests at `now`.
    pub(super) fn requests(&self, now: Nanos, policy: &ScorePolicy) -> f32 {
        self.c.n * decay_factor(now.saturating_sub(self.updated), self.half_lives(policy).0)
    }

    /// Every signal's raw value at `now` (the cluster-only signals from `cluster`, if any), without changing the
    /// state.
    fn snapshot(
        &self,
        now: Nanos,
        policy: &ScorePolicy,
        cluster: Option<ClusterFacts>,
    ) -> Snapshot {
        let group = cluster.is_some();
        let cluster = cluster.unwrap_or_default();
        let dt = now.saturating_sub(self.updated);
        let (half_life, activity_half_life) = self.half_lives(policy);
        let f = decay_factor(dt, half_life);
        let n = self.c.n * f;
        let fast = self.fast * decay_factor(dt, activity_half_life);
        let c = &self.c;
        let age = now.saturating_sub(self.first_seen);

        let mut v = [0.0f32; Signal::COUNT];
        v[Signal::ReasoningElicitation.index()] = share(c.elicit, c.n);
        v[Signal::TemplateReuse.index()] = share(c.shared, c.n);
        // Output per request served in full over input per request: degraded (clamped) and refused answers
        // are censored, not short, so acting on an account or cluster does not take this evidence away.
        v[Signal::OutputRatio.index()] = if c.full > f32::EPSILON && c.n > 0.0 {
            (c.full_output / c.full) / (c.input.max(c.n) / c.n)
        } else {
            0.0
        };
        v[Signal::PinnedMaxTokens.index()] = share(c.pinned, c.n);
        let gap_w = c.gap_w * f;
        v[Signal::TimingRegularity.index()] = if gap_w >= MIN_GAPS {
            (c.gap_m2 / c.gap_w).max(0.0).sqrt() / c.gap_mean.max(MIN_GAP_MEAN_SECS)
        } else {
            1.0
        };
        v[Signal::Lockstep.index()] = share(cluster.lock, c.n);
        let rate = rate_per_sec(n, half_life, age);
        v[Signal::MemberSpread.index()] =
            if cluster.members >= policy.spread_min_members && rate > 0.0 {
                (f64::from(cluster.members) / (rate * 60.0)) as f32
            } else {
                0.0
            };
        v[Signal::Volume.index()] = if self.tier_rpm > 0 {
            (rate * 60.0 / f64::from(self.tier_rpm)) as f32
        } else {
            0.0
        };
        // An account's own age; a group's, its requests' mean sender age (a cluster formed today of accounts
        // years old is not young; one of accounts opened today is).
        v[Signal::AccountAge.index()] = if group && c.n > f32::EPSILON {
            c.sender_age / c.n
        } else {
            (self.age(now) as f64 / HOUR as f64) as f32
        };
        v[Signal::Breadth.index()] = self.breadth.ratio(now, half_life);
        v[Signal::FingerprintInconsistency.index()] = share(c.flagged, c.n);
        v[Signal::ReleasePivot.index()] = share(c.pivot, c.n);
        v[Signal::StackChurn.index()] = share(c.churn, c.n);
        v[Signal::OutputLength.index()] = if c.full > f32::EPSILON {
            c.full_output / c.full
        } else {
            0.0
        };
        // Per request served in full, so that acting on the cluster (degraded or refused answers) does not
        // take its own evidence away, shrunk towards 0 by `min_requests` requests (a few long answers are not a
        // yield); times the requests each sender sends an hour, over at least `YIELD_MIN_AGE` (a cluster that
        // is still forming counts each member from its first request, so its young rate per member is high).
        // Senders, not the linker's members: the members whose requests this state holds (a cluster's core
        // holds only its own, so honest members linked in do not dilute it).
        // A group whose requests carry their senders' own rates (a network pool) takes the mean of those instead:
        // the rate per sender is then the same however a sender spreads its requests over groups (one account's
        // requests rotated over five addresses are in five pools, each seeing it at a fifth of its rate).
        v[Signal::YieldPerMember.index()] = if cluster.senders >= 1.0 {
            let per_request = c.yield_output / (c.full + policy.min_requests.max(1.0));
            let per_member_hour = if c.sender_rate > 0.0 {
                f64::from(c.sender_rate / c.n.max(f32::EPSILON))
            } else {
                let rate = rate_per_sec(n, half_life, age.max(YIELD_MIN_AGE));
                rate * 3600.0 / f64::from(cluster.senders)
            };
            (f64::from(per_request) * per_member_hour) as f32
        } else {
            0.0
        };
        // The same yield for one account (an account's score; a cluster's has the per-member form above): what a
        // slow-and-low campaign's account takes an hour, which cover traffic dilutes only by its own share.
        v[Signal::YieldPerHour.index()] = {
            let per_request = c.yield_output / (c.full + policy.min_requests.max(1.0));
            let rate = rate_per_sec(n, half_life, age.max(YIELD_MIN_AGE));
            (f64::from(per_request) * rate * 3600.0) as f32
        };

        let evidence = if n < policy.min_requests || n <= 0.0 {
            0.0
        } else {
            n / (n + policy.prior_requests.max(0.0))
        };
        let fast_rate = rate_per_sec(fast, activity_half_life, age);
        let activity = if rate > 0.0 {
            (fast_rate / rate).min(1.0) as f32
        } else {
            0.0
        };
        Snapshot {
            values: v,
            n,
            evidence,
            activity,
        }
    }

    pub(super) fn score(
        &self,
        now: Nanos,
        policy: &ScorePolicy,
        cluster: Option<ClusterFacts>,
    ) -> Score {
        let snap = self.snapshot(now, policy, cluster);
        let mut contributions = Vec::with_capacity(Signal::COUNT);
        let mut raw = 0.0f32;
        for s in Signal::ALL {
            if s.cluster_only() && cluster.is_none() || s.account_only() && cluster.is_some() {
                continue;
            }
            let value = snap.values[s.index()];
            let normalised = policy.ramps.get(s).apply(value);
            let weight = policy.weights.get(s).max(0.0);
            let points = weight * normalised;
            if points.is_finite() {
                raw += points;
            }
            contributions.push(Contribution {
                signal: s,
                value,
                normalised,
                weight,
                contribution: points,
            });
        }
        let scale = snap.evidence * snap.activity / raw.max(1.0);
        for c in &mut contributions {
            c.contribution *= scale;
        }
        contributions.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
        let raw = raw.min(1.0);
        let value = (raw * snap.evidence * snap.activity).clamp(0.0, 1.0);
        Score {
            value,
            raw,
            evidence: snap.evidence,
            activity: snap.activity,
            requests: snap.n,
            contributions,
        }
    }
}
