//! An account's and a cluster's signal state ([`AccountSignals`], [`ClusterSignals`]).

use super::*;

/// One account's behavioural signals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccountSignals {
    w: Window,
    /// Its history went into a cluster's state ([`AccountSignals::join_cluster`]).
    joined: bool,
    /// Keys of the last [`KNOWN_STACKS`] distinct client stacks it used, folded to 32 bits, the latest first (0:
    /// none yet).
    stacks: [u32; KNOWN_STACKS],
    /// The network ([`stack_key`] of the client's prefix; 0: unknown) each of `stacks` was last used from.
    nets: [u32; KNOWN_STACKS],
}

/// Client stacks an account is remembered to use: a request from one of them is not churn. An honest key is used
/// from a few clients (a laptop and a phone, a developer's machine beside the app's server, a team's machines
/// sharing one key, each its own SDK or browser build) and moves between them; a campaign impersonating browsers
/// and SDKs per request draws from more than that. Three (until 2026-12-05) took the keys of teams of four or more
/// for rotation: the tuning family's team keys (4 to 8 machines) were degraded on up to a tenth of their requests.
pub const KNOWN_STACKS: usize = 8;

/// An account's behaviour as plain numbers, for comparing accounts by similarity ([`crate::engine::cohort`]): what it asks
/// for, what it gets, how often, and whether its client stack stays put.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Profile {
    /// Requests observed since the state was created.
    pub requests_total: u32,
    /// Requests per hour over the window.
    pub requests_per_hour: f32,
    /// Estimated prompt tokens per request.
    pub input_per_request: f32,
    /// Output tokens per request served in full (0: none settled yet).
    pub output_per_request: f32,
    /// Output tokens of long yields ([`ScorePolicy::yield_min_output_tokens`], [`ScorePolicy::yield_min_ratio`])
    /// per request served in full, counting `prior_requests` more served requests without a yield (0: none
    /// settled yet): a young account's first long answer is not yet its rate. Shrunk less than
    /// [`Signal::YieldPerHour`] (which counts `min_requests`).
    pub long_yield_per_request: f32,
    /// [`Signal::ReasoningElicitation`]'s raw value.
    pub elicitation: f32,
    /// [`Signal::PinnedMaxTokens`]'s raw value.
    pub pinned: f32,
    /// [`Signal::StackChurn`]'s raw value.
    pub stack_churn: f32,
}

impl AccountSignals {
    /// An account first seen at `first_seen` (its creation time, if the caller knows it, else its first request).
    pub fn new(first_seen: Nanos) -> AccountSignals {
        AccountSignals {
            w: Window::new(first_seen),
            joined: false,
            stacks: [0; KNOWN_STACKS],
            nets: [0; KNOWN_STACKS],
        }
    }

    /// Record the client stack ([`stack_key`] of the hash of its JA4 and HTTP fingerprint; 0: unknown) of the
    /// request about to be observed, and say how new it is to the account — none of the last [`KNOWN_STACKS`]
    /// distinct stacks it used, and not its first: pass that as [`RequestSignals::stack`]. Honest keys keep their
    /// client, or move between the few they are used from; a campaign that rotates stacks per request
    /// (curl-impersonate style) brings a new one on each of its first requests and, once it has used more than it
    /// is remembered to, on a share of the rest. `net` is the client's network ([`stack_key`] of its prefix key; 0:
    /// unknown): a new stack from a network none of the remembered stacks was last used from is another machine
    /// ([`StackNovelty::Elsewhere`]), one from a network the account already used is its client changing in place.
    pub fn note_stack(&mut self, k: u32, net: u32) -> StackNovelty {
        if k == 0 {
            return StackNovelty::Known;
        }
        let known = self.stacks.iter().position(|&s| s == k);
        let moved = net != 0 && !self.nets.contains(&net);
        let changed = match (known, self.stacks) {
            (Some(_), _) | (None, [0, ..]) => StackNovelty::Known,
            (None, _) if moved => StackNovelty::Elsewhere,
            (None, [_, 0, ..]) => StackNovelty::Second,
            (None, _) => StackNovelty::Further,
        };
        // Move it to the front; a new one pushes out the least recent.
        let end = known.unwrap_or(KNOWN_STACKS - 1);
        self.stacks.copy_within(0..end, 1);
        self.nets.copy_within(0..end, 1);
        self.stacks[0] = k;
        self.nets[0] = net;
        changed
    }

    /// The account's own requests per hour at `now`, over a window taken as at least 10 minutes old (as the yield
    /// signals take it), for [`RequestSignals::sender_requests_per_hour`].
    pub fn requests_per_hour(&self, now: Nanos, policy: &ScorePolicy) -> f32 {
        let age = now.saturating_sub(self.w.first_seen).max(YIELD_MIN_AGE);
        (rate_per_sec(self.w.requests(now, policy), policy.half_life, age) * 3600.0) as f32
    }

    /// The account's behaviour at `now`, for [`crate::engine::cohort::keys`].
    pub fn profile(&self, now: Nanos, policy: &ScorePolicy) -> Profile {
        let c = &self.w.c;
        let age = now.saturating_sub(self.w.first_seen);
        let n = self.w.requests(now, policy);
        Profile {
            requests_total: self.w.requests_total,
            requests_per_hour: (rate_per_sec(n, policy.half_life, age) * 3600.0) as f32,
            input_per_request: if c.n > f32::EPSILON {
                c.input / c.n
            } else {
                0.0
            },
            output_per_request: if c.full > f32::EPSILON {
                c.full_output / c.full
            } else {
                0.0
            },
            long_yield_per_request: if c.full > f32::EPSILON {
                c.yield_output / (c.full + policy.prior_requests.max(0.0))
            } else {
                0.0
            },
            elicitation: share(c.elicit, c.n),
            pinned: share(c.pinned, c.n),
            stack_churn: share(c.churn, c.n),
        }
    }

    /// The account's history so far, the first time it is called (later: `None`), for
    /// [`ClusterSignals::absorb_member`] when the account joins a scored cluster or is first seen in one: call it
    /// before observing the current request, which the cluster observes itself. Only the first cluster gets the
    /// history: when that cluster merges into another, its state (history included) goes along
    /// ([`ClusterSignals::absorb_cluster`]); if it dissolves, a later cluster sees only later requests.
    pub fn join_cluster(&mut self) -> Option<AccountSignals> {
        if self.joined {
            return None;
        }
        self.joined = true;
        Some(*self)
    }

    /// Record a request with the phrase lists its prompt matched (scanned once by the prompt step, before the
    /// engine; the same hits feed the account and its cluster). `tier_rpm` is the account tier's requests per minute.
    pub fn observe_hits(
        &mut self,
        req: &RequestSignals<'_>,
        hits: PhraseHits,
        policy: &ScorePolicy,
        tier_rpm: u64,
    ) {
        self.w
            .observe(req, hits, policy, tier_rpm, req.churn(false));
    }

    /// Record what a response served in full actually produced.
    pub fn settle(&mut self, output_tokens: u64, now: Nanos, policy: &ScorePolicy) {
        self.w.settle(output_tokens, None, now, policy, true);
    }

    /// Record what a degraded response produced: nothing of it counts for [`Signal::OutputRatio`] or
    /// [`Signal::OutputLength`] (the clamp, not the client, set its length); its request was counted when observed.
    pub fn settle_degraded(&mut self, output_tokens: u64, now: Nanos, policy: &ScorePolicy) {
        self.w.settle(output_tokens, None, now, policy, false);
    }

    /// Record what a response produced, served in full (`full`) or degraded, with its request's input tokens
    /// (None: unknown): a long yield ([`ScorePolicy::yield_min_output_tokens`], [`ScorePolicy::yield_min_ratio`])
    /// is kept apart: for the account's own [`Signal::YieldPerHour`], and for the clusters and cohorts its
    /// history goes to ([`Signal::YieldPerMember`]).
    pub fn settle_request(
        &mut self,
        output_tokens: u64,
        input_tokens: Option<u64>,
        now: Nanos,
        policy: &ScorePolicy,
        full: bool,
    ) {
        self.w
            .settle(output_tokens, input_tokens, now, policy, full);
    }

    /// The score at `now`, with every signal but [`Signal::Lockstep`]. Does not change the state.
    pub fn score(&self, now: Nanos, policy: &ScorePolicy) -> Score {
        self.w.score(now, policy, None)
    }

    /// First seen (engine time).
    pub fn first_seen(&self) -> Nanos {
        self.w.first_seen
    }

    /// Set how old the account already was when this state was first seen (its tenure: stated by the auth front,
    /// or kept by the engine beyond this state); [`Signal::AccountAge`] reads the first-seen age plus this.
    pub fn set_tenure(&mut self, age: Nanos) {
        self.w.tenure_min = u32::try_from(age / MINUTE).unwrap_or(u32::MAX);
    }

    /// The account's age at `now`: its tenure when first seen plus the time since.
    pub fn age(&self, now: Nanos) -> Nanos {
        self.w.age(now)
    }

    /// Last request seen (engine time; the first-seen time before any request).
    pub fn last_seen(&self) -> Nanos {
        self.w.last_arrival
    }

    /// Requests observed since this state was created.
    pub fn requests_total(&self) -> u32 {
        self.w.requests_total
    }

    /// Decayed requests in the window at `now`: when this is far below `min_requests` the state can be dropped.
    pub fn requests(&self, now: Nanos, policy: &ScorePolicy) -> f32 {
        self.w.requests(now, policy)
    }
}

/// A client stack as accounts and groups remember it ([`RequestSignals::stack_key`]): folded to 32 bits (two of one
/// account's few stacks collide about once in 10^8 accounts) and never 0; 0 for an unknown stack.
pub fn stack_key(stack: Option<u64>) -> u32 {
    stack.map_or(0, |k| (k ^ (k >> 32)) as u32 | 1)
}

/// A stack that was new to the members that sent it, and how many did lately ([`ClusterSignals::fresh_stack`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct FreshStack {
    key: u32,
    count: f32,
}

/// Stacks new to their members that a group counts.
const FRESH_SLOTS: usize = 4;

/// One second of cluster traffic: requests and a 256-bit sketch of the distinct members that sent them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct SecondSlot {
    /// Second index + 1 (0: unused).
    second: u64,
    count: u32,
    zeros: u16,
    flagged: bool,
    bits: [u64; 4],
}

/// One cluster's behavioural signals: the account signals over all its members' requests, plus lockstep. Also a
/// behaviour cohort's and a network pool's. Besides its window of [`ScorePolicy::half_life`] it keeps an onset window
/// of [`ScorePolicy::onset_half_life`] over the same requests and is scored by the higher of the two.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClusterSignals {
    w: Window,
    /// The same requests over the onset half-life (not updated while the policy has none).
    onset: Window,
    /// Decayed requests that landed in lockstep seconds.
    lock: f32,
    /// Members, as of the last request ([`ClusterSignals::set_members`]).
    members: u32,
    ring: [SecondSlot; LOCK_RING],
    /// Distinct members whose requests it observed, for [`Signal::YieldPerMember`].
    senders: Senders,
    /// The stacks that were new to their members, heaviest kept, and when their counts were last decayed.
    fresh: [FreshStack; FRESH_SLOTS],
    fresh_at: Nanos,
}

impl ClusterSignals {
    /// A cluster formed at `formed_at` (the linker's `ClusterView::formed_at`).
    pub fn new(formed_at: Nanos) -> ClusterSignals {
        ClusterSignals {
            w: Window::new(formed_at),
            onset: Window::onset(formed_at),
            lock: 0.0,
            members: 0,
            ring: [SecondSlot::default(); LOCK_RING],
            senders: Senders::default(),
            fresh: [FreshStack::default(); FRESH_SLOTS],
            fresh_at: formed_at,
        }
    }

    /// The cluster's member count now (the linker's `ClusterView::members`), for [`Signal::MemberSpread`].
    pub fn set_members(&mut self, members: u32) {
        self.members = members;
    }

    /// Record a member's request with the phrase lists its prompt matched. `member` is the account id (keyed hash);
    /// `tier_rpm` is the requests per minute that count as normal for the cluster (its budget's, or one account
    /// tier's to measure volume in accounts' worth).
    pub fn observe_hits(
        &mut self,
        member: u64,
        req: &RequestSignals<'_>,
        hits: PhraseHits,
        policy: &ScorePolicy,
        tier_rpm: u64,
    ) {
        let f = self.w.decay_to(req.now, policy);
        self.lock *= f;
        let mut churn = req.churn(true);
        if req.stack != StackNovelty::Known {
            churn *= self.fresh_stack(req.stack_key, req.now, policy.half_life);
        }
        self.w.observe(req, hits, policy, tier_rpm, churn);
        if policy.onset_half_life > 0 {
            self.onset.observe(req, hits, policy, tier_rpm, churn);
        }
        self.lockstep(member, req.now, policy);
        self.senders.insert(req.now, policy.half_life, member);
    }

    /// Record a stack that was new to the member that sent it (`key` as [`stack_key`]) and return what it weighs as
    /// the group's churn, 0..=1: 1 while the group's new stacks are spread, falling to 0 as this one becomes all of
    /// them. Members that take up one new stack are a common client upgraded (a fleet's SDK, a new header order):
    /// every member shows its second stack at once, which would otherwise be the group's churn at its top and, with
    /// a templated fleet's regular timing, take it to Degrade. A rotating campaign's members draw from a dozen
    /// stacks, a team's machines are each their own: no one stack is most of theirs. The counts (decayed by
    /// `half_life`, heaviest kept) are a space-saving sketch; an unknown key weighs 1, as before.
    pub(super) fn fresh_stack(&mut self, key: u32, now: Nanos, half_life: Nanos) -> f32 {
        if key == 0 {
            return 1.0;
        }
        if now > self.fresh_at {
            let f = decay_factor(now - self.fresh_at, half_life);
            for s in &mut self.fresh {
                s.count *= f;
            }
            self.fresh_at = now;
        }
        let i = match self.fresh.iter().position(|s| s.key == key) {
            Some(i) => i,
            None => {
                let (i, min) = self
                    .fresh
                    .iter()
                    .enumerate()
                    .min_by(|a, b| a.1.count.total_cmp(&b.1.count))
                    .map_or((0, 0.0), |(i, s)| (i, s.count));
                self.fresh[i] = FreshStack { key, count: min };
                i
            }
        };
        self.fresh[i].count += 1.0;
        let total: f32 = self.fresh.iter().map(|s| s.count).sum();
        let share = self.fresh[i].count / total.max(f32::EPSILON);
        (2.0 * (1.0 - share)).clamp(0.0, 1.0)
    }

    fn lockstep(&mut self, member: u64, now: Nanos, policy: &ScorePolicy) {
        let second = now / SECOND + 1;
        let Some(slot) = self.ring.get_mut((second % LOCK_RING as u64) as usize) else {
            return;
        };
        if slot.second > second {
            // Older than the ring: too late to tell.
            return;
        }
        if slot.second < second {
            *slot = SecondSlot {
                second,
                zeros: LOCK_BITS as u16,
                ..SecondSlot::default()
            };
        }
        slot.count = slot.count.saturating_add(1);
        let bit = (splitmix64(member) % u64::from(LOCK_BITS)) as usize;
        if let Some(word) = slot.bits.get_mut(bit / 64) {
            let mask = 1u64 << (bit % 64);
            if *word & mask == 0 {
                *word |= mask;
                slot.zeros = slot.zeros.saturating_sub(1);
            }
        }
        let age = now.saturating_sub(self.w.first_seen);
        let rate = rate_per_sec(self.w.c.n, policy.half_life, age);
        let need = f64::from(policy.lockstep_min_members)
            .max(f64::from(policy.lockstep_rate_factor) * rate);
        if f64::from(linear_count(u32::from(slot.zeros), LOCK_BITS)) >= need {
            if slot.flagged {
                self.lock += 1.0;
            } else {
                slot.flagged = true;
                self.lock += slot.count as f32;
            }
        }
    }

    /// Adds a member's history from before it was in this cluster (its requests, what they carried and produced,
    /// its first-seen time), so a cluster that forms out of accounts which already sent is scored on everything its
    /// members sent, not only on what arrived after the link. Call once per member, before its current request.
    pub fn absorb_member(&mut self, member: &AccountSignals, now: Nanos, policy: &ScorePolicy) {
        let f = self.w.absorb(&member.w, now, policy);
        if policy.onset_half_life > 0 {
            self.onset.absorb(&member.w, now, policy);
        }
        self.lock *= f;
    }

    /// Adds the state of a cluster that merged into this one (the linker's [`crate::engine::link::Linker::changes`]):
    /// evidence is not lost when two clusters become one.
    pub fn absorb_cluster(&mut self, other: &ClusterSignals, now: Nanos, policy: &ScorePolicy) {
        let f = self.w.absorb(&other.w, now, policy);
        if policy.onset_half_life > 0 {
            self.onset.absorb(&other.onset, now, policy);
        }
        self.lock = self.lock * f
            + other.lock * decay_factor(now.saturating_sub(other.w.updated), policy.half_life);
        self.members = self.members.max(other.members);
        self.senders = self.senders.union(other.senders);
    }

    /// Record what a member's response served in full actually produced.
    pub fn settle(&mut self, output_tokens: u64, now: Nanos, policy: &ScorePolicy) {
        self.settle_as(output_tokens, now, policy, true);
    }

    /// [`ClusterSignals::settle`] for a request that was served in full (`full`) or degraded (its output counts for
    /// no output signal; see [`AccountSignals::settle_degraded`]).
    pub fn settle_as(&mut self, output_tokens: u64, now: Nanos, policy: &ScorePolicy, full: bool) {
        self.settle_request(output_tokens, None, now, policy, full);
    }

    /// [`ClusterSignals::settle_as`] with the request's input tokens (None: unknown), so that a long yield counts
    /// towards [`Signal::YieldPerMember`].
    pub fn settle_request(
        &mut self,
        output_tokens: u64,
        input_tokens: Option<u64>,
        now: Nanos,
        policy: &ScorePolicy,
        full: bool,
    ) {
        let f = self.w.decay_to(now, policy);
        self.lock *= f;
        self.w
            .settle(output_tokens, input_tokens, now, policy, full);
        if policy.onset_half_life > 0 {
            self.onset
                .settle(output_tokens, input_tokens, now, policy, full);
        }
    }

    /// The score at `now`, with every signal: the higher of its window's and its onset window's. Does not change
    /// the state.
    ///
    /// A group's shares and yields are ratios over its window, so an hour of benign traffic before an extraction
    /// starts (a campaign's warm-up, or cover traffic sent ahead) holds them down for as long as it stays in the
    /// hour; the onset window forgets it within minutes. A group whose traffic is the same throughout reads about
    /// the same in both, the onset one noisier but on fewer requests (so less evidence). Lockstep is counted in
    /// the hour window only (the onset score reads 0 there).
    pub fn score(&self, now: Nanos, policy: &ScorePolicy) -> Score {
        let senders = self.senders.count(now, policy.half_life);
        // Shares are ratios of counters decayed to the same time, so the lockstep count goes in as stored.
        let hour = self.w.score(
            now,
            policy,
            Some(ClusterFacts {
                lock: self.lock,
                members: self.members,
                senders,
            }),
        );
        if policy.onset_half_life == 0 || self.onset.requests(now, policy) < policy.min_requests {
            return hour;
        }
        let onset = self.onset.score(
            now,
            policy,
            Some(ClusterFacts {
                lock: 0.0,
                members: self.members,
                senders,
            }),
        );
        if onset.value > hour.value {
            onset
        } else {
            hour
        }
    }

    /// Formed at (engine time).
    pub fn first_seen(&self) -> Nanos {
        self.w.first_seen
    }

    /// Last request seen (engine time).
    pub fn last_seen(&self) -> Nanos {
        self.w.last_arrival
    }

    /// Requests observed since this state was created.
    pub fn requests_total(&self) -> u32 {
        self.w.requests_total
    }

    /// Decayed requests in the window at `now`.
    pub fn requests(&self, now: Nanos, policy: &ScorePolicy) -> f32 {
        self.w.requests(now, policy)
    }

    /// Distinct members whose requests it observed over the current and the previous epoch (one half-life each),
    /// estimated at `now`.
    pub fn senders(&self, now: Nanos, policy: &ScorePolicy) -> f32 {
        self.senders.count(now, policy.half_life)
    }
}
