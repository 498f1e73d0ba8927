//! State step: where a request's budget cells are checked and charged, and
//! where manual decisions live — in this process (`[state] backend =
//! "local"`, the default), or in Redis, shared by every replica
//! ([`redis`], `docs/distributed.md`).
//!
//! The seam is the budget admission: the engine decides everything else
//! ([`Engine::assess`]), the request's [`BudgetAsk`] is answered by the
//! engine's own cells in local mode ([`Engine::decide`], at once) or by a
//! [`BudgetStore`] (Redis), and the engine concludes
//! ([`Pending::conclude`]). The request path calls [`State::decide`] and
//! [`State::settle`] and never knows which answered.

pub mod breaker;
pub mod manual_file;
pub mod redis;
pub mod stream;
pub mod tenure_file;

use std::future::Future;
use std::sync::Arc;

use futures_util::future::{BoxFuture, Either};

use crate::engine::{
    Admission, Assessment, BudgetAsk, Decision, Engine, LimitKind, Nanos, Observation, Pending,
    Ticket, Usage, Verdict,
};

/// Where a request's budget cells are kept: checked and charged all at
/// once ([`BudgetStore::admit`]), settled after the response
/// ([`BudgetStore::settle`]).
pub trait BudgetStore {
    /// Check and charge the cells `ask` names (every one admits or none
    /// is charged). `Err` only when the store cannot answer and its
    /// failure mode is to refuse.
    fn admit(
        &self,
        engine: &Engine,
        ask: &BudgetAsk,
        now: Nanos,
    ) -> impl Future<Output = Result<(Admission, Receipt), Unavailable>> + Send;

    /// Settle what an admitted request cost in this store's cells (the
    /// engine's own cells are settled by [`Engine::settle`] in any case).
    fn settle(&self, engine: &Engine, ticket: &Ticket, receipt: Receipt, usage: Usage);
}

/// Where an admitted request was charged, to settle it in the same place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// In this process's cells only.
    Local,
    /// In the shared cells too, holding in-flight slot `slot`.
    Shared {
        /// This request's in-flight slot (unique per replica).
        slot: u64,
        /// On a Redis Cluster, the cluster under whose hash tag the
        /// account's cells were charged (settled there too).
        member_of: Option<u64>,
    },
}

/// The shared store could not answer and `on_failure = "closed"`: the
/// request is refused (503 / 529).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the shared state store is unavailable")]
pub struct Unavailable;

/// The budgets' half of a decision: what the engine admitted asks `store`.
async fn conclude<S: BudgetStore>(
    store: &S,
    engine: &Engine,
    assessment: Assessment,
    now: Nanos,
) -> Result<(Decision, Receipt), Unavailable> {
    match assessment {
        Assessment::Decided(d) => Ok((d, Receipt::Local)),
        Assessment::Admit(pending) => {
            let pending: Pending = pending;
            let (admission, receipt) = store.admit(engine, pending.ask(), now).await?;
            Ok((pending.conclude(admission), receipt))
        }
    }
}

/// The state backend in use.
pub enum State {
    /// In this process only.
    Local,
    /// Shared through Redis.
    Redis(Arc<redis::RedisStore>),
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Local => f.write_str("State::Local"),
            State::Redis(_) => f.write_str("State::Redis"),
        }
    }
}

/// A request's decision ([`State::decide`]).
pub type Decide<'a> = Either<
    std::future::Ready<Result<(Decision, Receipt), Unavailable>>,
    BoxFuture<'a, Result<(Decision, Receipt), Unavailable>>,
>;

/// [`State::decide`] on Redis.
async fn decide_shared(
    r: &Arc<redis::RedisStore>,
    engine: &Engine,
    obs: &Observation,
    now: Nanos,
) -> Result<(Decision, Receipt), Unavailable> {
    let Some(stream) = r.stream() else {
        return conclude(r, engine, engine.assess(obs, now), now).await;
    };
    // On the shared view; or, while the stream is unavailable, linked here
    // alone and held to be appended when Redis returns (the view is then
    // rebuilt from the stream).
    let assessment = stream.record(|view| {
        let assessment = if view {
            engine.assess_view(obs, now)
        } else {
            engine.assess(obs, now)
        };
        // Every request the engine would have linked goes to the stream (a
        // new account refused for want of room leaves no trace, as in
        // `assess`), when anything applies it.
        let traceless = matches!(
            &assessment,
            Assessment::Decided(Decision { verdict: Verdict::Throttle(h), .. })
                if h.kind == LimitKind::NewAccounts
        );
        let entry = (!traceless)
            .then(|| engine.observation_hits(obs))
            .flatten()
            .map(|hits| stream::Entry::observed(obs, hits));
        (assessment, entry)
    });
    conclude(r, engine, assessment, now).await
}

impl State {
    /// Decide a request: the engine's checks, then the budgets in this
    /// backend's store.
    ///
    /// The local store waits for nothing, so its decision is made here and
    /// the future is ready; only Redis's is a future of its own, boxed. A
    /// request's future holds this one while it waits, and every request's
    /// future is moved whole into its box when it starts: unboxed, the Redis
    /// path's state (2.3 KB) would be copied for every request on either
    /// backend.
    pub fn decide<'a>(
        &'a self,
        engine: &'a Engine,
        obs: &'a Observation,
        now: Nanos,
    ) -> Decide<'a> {
        match self {
            State::Local => Either::Left(std::future::ready(Ok((
                engine.decide(obs, now),
                Receipt::Local,
            )))),
            State::Redis(r) => Either::Right(Box::pin(decide_shared(r, engine, obs, now))),
        }
    }

    /// Settle an admitted request: the engine's cells and signals, and the
    /// shared cells where it was charged there.
    pub fn settle(
        &self,
        engine: &Engine,
        ticket: &Ticket,
        receipt: Receipt,
        usage: Usage,
        now: Nanos,
    ) {
        match self {
            State::Local => engine.settle(ticket, usage, now),
            State::Redis(r) => {
                match r.stream() {
                    Some(s) => s.record(|view| {
                        if view {
                            // The signal half comes back from the stream.
                            engine.settle_budgets(ticket, usage, now);
                        } else {
                            // Observed here alone; held for the stream.
                            engine.settle(ticket, usage, now);
                        }
                        let entry = engine.policy().detection.is_some();
                        ((), entry.then(|| stream::Entry::settled(ticket, usage)))
                    }),
                    None => engine.settle(ticket, usage, now),
                }
                r.settle(engine, ticket, receipt, usage);
            }
        }
    }

    /// The Redis store, when that is the backend.
    pub fn redis(&self) -> Option<&Arc<redis::RedisStore>> {
        match self {
            State::Local => None,
            State::Redis(r) => Some(r),
        }
    }

    /// For `/readyz`: whether this replica can serve as configured, and a
    /// line saying what the backend is doing.
    pub fn readiness(&self) -> (bool, String) {
        match self {
            State::Local => (true, "state: local".into()),
            State::Redis(r) => r.readiness(),
        }
    }

    /// Whether requests are decided on the shared view of clusters now.
    pub fn in_shared_view(&self) -> bool {
        self.redis()
            .and_then(|r| r.stream())
            .is_some_and(|s| s.in_view())
    }

    /// The backend's metrics in Prometheus text (nothing for local).
    pub fn render_metrics(&self, out: &mut String) {
        if let State::Redis(r) = self {
            r.render_metrics(out);
        }
    }
}
