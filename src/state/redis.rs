//! The shared store: budget cells and manual decisions in Redis (or
//! Valkey), so that every replica enforces one budget per account and per
//! cluster, and a block made through one replica refuses on all of them.
//!
//! One Lua script call per decision checks and charges all of a request's
//! cells atomically on the server's clock (`TIME`); one per settlement
//! charges the output post-paid. Every call is bounded by
//! `command_timeout_ms` and goes through a [`Breaker`]; when Redis cannot
//! answer, `on_failure` decides (this replica's own cells, admit, or
//! refuse). Key layout, the scripts and what a restart of Redis forgives:
//! `docs/distributed.md`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::{ClusterClient, ClusterConfig};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Script, Value};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::breaker::{Breaker, BreakerState, Gate, Transition};
use super::{BudgetStore, Receipt, Unavailable};
use crate::config::{OnFailure, RedisConfig};
use crate::engine::gcra::Rate;
use crate::engine::{
    AccountId, Admission, BudgetAsk, ClusterId, Engine, LimitHit, LimitKind, Manual, Nanos, Scope,
    Ticket, Tier, Usage,
};
use crate::telemetry::metrics::{labelled, labelled2, Histogram};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Admission: for each scope (account, then cluster) check concurrency
/// (dropping expired in-flight leases when at the cap), the request cell
/// (take 1) and the token cells (not in debt); only when every cell of
/// every scope admits,
/// charge them all. Times are microseconds on the server's clock; the
/// state of one scope is a hash (`r`, `i`, `o`: theoretical arrival times)
/// and a sorted set of in-flight slots scored by their lease's end.
const ADMIT_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lease = tonumber(ARGV[2])
local input = tonumber(ARGV[3])
local function fmt(x) return string.format('%.3f', x) end
local function remaining(tat, T, C)
  local used = tat - now
  if used < 0 then used = 0 end
  local left = C - used
  if left < 0 then return 0 end
  return math.floor(left / T)
end
local function reset(tat)
  if tat > now then return math.ceil(tat - now) end
  return 0
end
local plan = {}
for s = 1, #KEYS / 2 do
  local h, z = KEYS[2 * s - 1], KEYS[2 * s]
  local b = 3 + (s - 1) * 7
  local maxc = tonumber(ARGV[b + 1])
  local rT, rC = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local iT, iC = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  local oT, oC = tonumber(ARGV[b + 6]), tonumber(ARGV[b + 7])
  if redis.call('ZCARD', z) >= maxc then
    -- At the cap: drop slots whose lease ended (their replica died or
    -- lost the settlement) before refusing. Below it they wait.
    redis.call('ZREMRANGEBYSCORE', z, '-inf', fmt(now))
    if redis.call('ZCARD', z) >= maxc then
      return {0, s, 1, 1000000, 0, 1000000}
    end
  end
  local c = redis.call('HMGET', h, 'r', 'i', 'o')
  local r, i, o = tonumber(c[1]) or 0, tonumber(c[2]) or 0, tonumber(c[3]) or 0
  local nr = math.max(r, now) + rT
  if nr > now + rC then
    return {0, s, 2, math.ceil(nr - now - rC), remaining(r, rT, rC), reset(r)}
  end
  local need = math.max(i, now) + iT
  if need > now + iC then
    return {0, s, 3, math.ceil(need - now - iC), remaining(i, iT, iC), reset(i)}
  end
  need = math.max(o, now) + oT
  if need > now + oC then
    return {0, s, 4, math.ceil(need - now - oC), remaining(o, oT, oC), reset(o)}
  end
  plan[s] = {h, z, nr, math.max(i, now) + input * iT, o}
end
for s = 1, #plan do
  local p = plan[s]
  redis.call('HSET', p[1], 'r', fmt(p[3]), 'i', fmt(p[4]))
  redis.call('ZADD', p[2], fmt(now + lease), ARGV[1])
  local last = math.max(p[3], p[4], p[5])
  redis.call('PEXPIRE', p[1], string.format('%d', math.ceil((last - now) / 1000) + 1000))
  redis.call('PEXPIRE', p[2], string.format('%d', math.ceil(lease / 1000) + 1000))
end
return {1}
";

/// Settlement: free the in-flight slot, charge the output post-paid (may
/// go into debt), correct the input estimate by what the upstream
/// reported (`ARGV[4]` < 0: nothing reported).
const SETTLE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = tonumber(ARGV[2])
local charged = tonumber(ARGV[3])
local actual = tonumber(ARGV[4])
local function fmt(x) return string.format('%.3f', x) end
for s = 1, #KEYS / 2 do
  local h, z = KEYS[2 * s - 1], KEYS[2 * s]
  local b = 4 + (s - 1) * 2
  local iT, oT = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  redis.call('ZREM', z, ARGV[1])
  local c = redis.call('HMGET', h, 'r', 'i', 'o')
  local r, i, o = tonumber(c[1]) or 0, tonumber(c[2]) or 0, tonumber(c[3]) or 0
  o = math.max(o, now) + out * oT
  if actual >= 0 then
    if actual > charged then
      i = math.max(i, now) + (actual - charged) * iT
    else
      i = math.max(i - (charged - actual) * iT, now)
    end
  end
  redis.call('HSET', h, 'i', fmt(i), 'o', fmt(o))
  local last = math.max(r, i, o)
  redis.call('PEXPIRE', h, string.format('%d', math.ceil(math.max(last - now, 0) / 1000) + 1000))
end
return 1
";

/// An admin's decision: set or clear one field, bump the version every
/// replica polls. Returns the new version, or -1 while Redis holds no
/// record yet (just started empty: a replica seeds it within one sync).
const MANUAL_LUA: &str = r"
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return redis.call('INCR', KEYS[2])
";

/// Redis holds no record of manual decisions (new, or restarted empty):
/// seed it with this replica's, unless another replica did first. The
/// version starts at the server's time in microseconds, so it never
/// repeats one a replica saw before a restart of Redis (a replica that
/// missed the restart would take a repeated version for one it applied).
const SEED_LUA: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
for k = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[k], ARGV[k + 1])
end
local t = redis.call('TIME')
redis.call('SET', KEYS[2], t[1] .. string.format('%06d', tonumber(t[2])))
return 1
";

/// The thread that runs the store's sync loop (named by the server).
pub const STATE_THREAD: &str = "dg-state";

/// A connection to Redis: to one server (re-made when lost), or to a
/// Redis Cluster (one multiplexed connection per node; each call goes to
/// the node owning its keys' slot, following `MOVED` and `ASK`).
#[derive(Clone)]
pub(super) enum Conn {
    /// One server (`cluster = false`).
    Server(ConnectionManager),
    /// A Redis Cluster (`cluster = true`).
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Server(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The store's connections: the state thread's own, the stream reader's
/// (its `XREAD` blocks), then the pool the worker threads keep to.
// Made once per store: a box would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Conns {
    /// To one server, made lazily by their first call.
    Server(Vec<ConnectionManager>),
    /// To a Redis Cluster: each made by the first thread that uses it, on
    /// that thread's runtime (the cluster client spawns its I/O task when
    /// made), so a worker's calls wake no other thread.
    Cluster {
        client: ClusterClient,
        config: ClusterConfig,
        conns: Vec<std::sync::OnceLock<ClusterConnection>>,
    },
}

impl Conns {
    fn len(&self) -> usize {
        match self {
            Conns::Server(c) => c.len(),
            Conns::Cluster { conns, .. } => conns.len(),
        }
    }

    /// Connection `i` (0: the state thread's, 1: the reader's, then the
    /// pool's). Must be called inside a runtime's context.
    fn get(&self, i: usize) -> Conn {
        match self {
            Conns::Server(c) => Conn::Server(c[i].clone()),
            Conns::Cluster {
                client,
                config,
                conns,
            } => Conn::Cluster(
                conns[i]
                    .get_or_init(|| client.get_pending_async_connection_with_config(config.clone()))
                    .clone(),
            ),
        }
    }
}

/// The least time a call no request waits on may take.
const BACKGROUND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// What a Redis call was for (metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Admit,
    Settle,
    Sync,
    Manual,
    /// Observations appended to the stream (one pipeline per batch).
    Append,
    /// The stream read (`XREAD`) and its lag measured.
    Read,
}

const OPS: [&str; 6] = ["admit", "settle", "sync", "manual", "append", "read"];

/// Whether a failed Redis call failed or timed out (metrics label).
#[derive(Debug, Clone, Copy)]
enum Failure {
    Error,
    Timeout,
}

impl EncodeLabelValue for Op {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(OPS[*self as usize])
    }
}

impl EncodeLabelValue for Failure {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(match self {
            Failure::Error => "error",
            Failure::Timeout => "timeout",
        })
    }
}

impl EncodeLabelValue for BreakerState {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for OnFailure {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct OpLabels {
    op: Op,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct ErrorLabels {
    op: Op,
    kind: Failure,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct TransitionLabels {
    to: BreakerState,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct FallbackLabels {
    mode: OnFailure,
}

const ALL_OPS: [Op; 6] = [
    Op::Admit,
    Op::Settle,
    Op::Sync,
    Op::Manual,
    Op::Append,
    Op::Read,
];

/// The shared store's metrics, each labelled series resolved once.
#[derive(Debug)]
struct StoreMetrics {
    registry: Registry,
    round_trip: Histogram,
    commands: [Counter; 6],
    /// [op] × [error, timeout].
    errors: [[Counter; 2]; 6],
    /// Transitions into [closed, open, half_open].
    transitions: [Counter; 3],
    /// Decisions made under on_failure: [local, open, closed].
    fallback: [Counter; 3],
    settles_skipped: Counter,
    breaker_state: Gauge,
    manual_version: Gauge,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        let mut r = Registry::default();
        let round_trip = Histogram::default();
        r.register(
            "distill_guard_state_redis_round_trip_seconds",
            "Time for one Redis call (script or command), timeouts included",
            round_trip.clone(),
        );
        let (commands, family) = labelled(ALL_OPS, |op| OpLabels { op });
        r.register(
            "distill_guard_state_redis_commands",
            "Redis calls made, by purpose",
            family,
        );
        let (errors, family) =
            labelled2(ALL_OPS, [Failure::Error, Failure::Timeout], |op, kind| {
                ErrorLabels { op, kind }
            });
        r.register(
            "distill_guard_state_redis_errors",
            "Redis calls that failed, by purpose and kind",
            family,
        );
        let breaker_state = Gauge::default();
        r.register(
            "distill_guard_state_breaker_state",
            "The Redis breaker: 0 closed, 1 open, 2 half open",
            breaker_state.clone(),
        );
        let (transitions, family) = labelled(
            [
                BreakerState::Closed,
                BreakerState::Open,
                BreakerState::HalfOpen,
            ],
            |to| TransitionLabels { to },
        );
        r.register(
            "distill_guard_state_breaker_transitions",
            "Breaker transitions, by the state entered",
            family,
        );
        let (fallback, family) = labelled(
            [OnFailure::Local, OnFailure::Open, OnFailure::Closed],
            |mode| FallbackLabels { mode },
        );
        r.register(
            "distill_guard_state_fallback",
            "Budget decisions made under on_failure because Redis could not answer",
            family,
        );
        let settles_skipped = Counter::default();
        r.register(
            "distill_guard_state_settles_skipped",
            "Settlements not sent to Redis (breaker open); the shared cells do not see that output",
            settles_skipped.clone(),
        );
        let manual_version = Gauge::default();
        r.register(
            "distill_guard_state_manual_version",
            "The version of the shared manual decisions applied here (-1: none yet)",
            manual_version.clone(),
        );
        StoreMetrics {
            registry: r,
            round_trip,
            commands,
            errors,
            transitions,
            fallback,
            settles_skipped,
            breaker_state,
            manual_version,
        }
    }
}

/// Budget cells and manual decisions in Redis.
pub struct RedisStore {
    cfg: RedisConfig,
    /// The state thread's, the stream reader's, then the pool's.
    conns: Conns,
    /// The shared observation stream (`share_observations`).
    stream: Option<Arc<super::stream::ObservationStream>>,
    next: AtomicUsize,
    breaker: Breaker,
    admit: Script,
    settle: Script,
    manual: Script,
    seed: Script,
    /// This process's id in in-flight slot names.
    replica: u64,
    slots: AtomicU64,
    /// The manual decisions' version last applied (-1: none yet).
    manual_version: AtomicI64,
    metrics: StoreMetrics,
    /// The state thread's runtime: settlements and the sync loop run there.
    rt: tokio::runtime::Handle,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("cfg", &self.cfg)
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connections are made lazily (the first command connects, a lost
    /// connection is re-made by the next one), so a replica starts while
    /// Redis is down and serves under `on_failure` until it is back. Must
    /// be called inside `rt`'s context.
    pub fn new(cfg: &RedisConfig, rt: tokio::runtime::Handle) -> Result<RedisStore, String> {
        let n = cfg.pool_size + 2;
        let conns = if cfg.cluster {
            Self::cluster_conns(cfg, n)?
        } else {
            Self::server_conns(cfg, n)?
        };
        if conns.len() < 3 {
            return Err("state.pool_size: no connection".into());
        }
        Ok(RedisStore {
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_open),
            cfg: cfg.clone(),
            conns,
            stream: cfg
                .stream
                .map(|s| Arc::new(super::stream::ObservationStream::new(&cfg.key_prefix, s))),
            next: AtomicUsize::new(0),
            admit: Script::new(ADMIT_LUA),
            settle: Script::new(SETTLE_LUA),
            manual: Script::new(MANUAL_LUA),
            seed: Script::new(SEED_LUA),
            replica: rand::random(),
            slots: AtomicU64::new(0),
            manual_version: AtomicI64::new(-1),
            metrics: StoreMetrics::default(),
            rt,
        })
    }

    /// `n` lazy connections to one server.
    fn server_conns(cfg: &RedisConfig, n: usize) -> Result<Conns, String> {
        let info = cfg
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("state.url: {e}"))?;
        let info = match &cfg.password {
            Some(p) => {
                let settings = info.redis_settings().clone().set_password(p);
                info.set_redis_settings(settings)
            }
            None => info,
        };
        let client = match &cfg.ca_pem {
            None => ::redis::Client::open(info),
            Some(pem) => ::redis::Client::build_with_tls(
                info,
                ::redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
        }
        .map_err(|e| format!("state.url: {e}"))?;
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(Some(cfg.command_timeout.max(BACKGROUND_TIMEOUT)))
            .set_number_of_retries(1)
            .set_min_delay(std::time::Duration::from_millis(20))
            .set_max_delay(std::time::Duration::from_millis(200));
        (0..n)
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), manager_cfg.clone()))
            .collect::<RedisResult<Vec<_>>>()
            .map(Conns::Server)
            .map_err(|e| format!("redis: {e}"))
    }

    /// `n` connections to a Redis Cluster, found from the seed nodes in
    /// `url`, each made on first use.
    fn cluster_conns(cfg: &RedisConfig, n: usize) -> Result<Conns, String> {
        let mut b = ClusterClient::builder(cfg.urls.iter().map(String::as_str))
            .connection_timeout(cfg.connect_timeout)
            .response_timeout(cfg.command_timeout.max(BACKGROUND_TIMEOUT))
            // Redirections (MOVED / ASK) and a node lost are retried
            // quickly; every call stays bounded by its own timeout.
            .retries(3)
            .min_retry_wait(10)
            .max_retry_wait(100);
        if let Some(p) = &cfg.password {
            b = b.password(p);
        }
        if let Some(pem) = &cfg.ca_pem {
            b = b.certs(::redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            });
        }
        let client = b.build().map_err(|e| format!("state.url: {e}"))?;
        let config = ClusterConfig::new()
            .set_connection_timeout(cfg.connect_timeout)
            .set_response_timeout(cfg.command_timeout.max(BACKGROUND_TIMEOUT));
        Ok(Conns::Cluster {
            client,
            config,
            conns: (0..n).map(|_| std::sync::OnceLock::new()).collect(),
        })
    }

    /// The connection of the calling thread: each thread keeps to one
    /// pooled connection, whose I/O task then runs on that thread's
    /// runtime (a connection is made by the first call on it), so a call
    /// wakes no other thread. The state thread (settlements off a
    /// runtime, the sync) has a connection of its own.
    fn conn(&self) -> Conn {
        thread_local! {
            static SLOT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
        }
        if std::thread::current().name() == Some(STATE_THREAD) {
            return self.conns.get(0);
        }
        let i = SLOT.with(|slot| {
            slot.get().unwrap_or_else(|| {
                let i = self.next.fetch_add(1, Ordering::Relaxed);
                slot.set(Some(i));
                i
            })
        });
        self.conns.get(2 + i % (self.conns.len() - 2))
    }

    /// `{prefix:a:ID}` / `{prefix:c:ID}`: one hash tag per budget owner.
    fn cell_keys(&self, kind: char, id: u64) -> (String, String) {
        let h = format!("{{{}:{kind}:{id:016x}}}", self.cfg.key_prefix);
        let z = format!("{h}:f");
        (h, z)
    }

    /// The account's cells. On a Redis Cluster, while the account is
    /// charged as a member of an enforced cluster, they live under the
    /// cluster's hash tag (`{prefix:c:CLUSTER}:a:ACCOUNT`), so one script
    /// call touches one slot; on one server always under the account's own.
    fn account_keys(&self, account: u64, member_of: Option<u64>) -> (String, String) {
        match member_of {
            Some(c) if self.cfg.cluster => {
                let (ch, _) = self.cell_keys('c', c);
                let h = format!("{ch}:a:{account:016x}");
                let z = format!("{h}:f");
                (h, z)
            }
            _ => self.cell_keys('a', account),
        }
    }

    fn manual_keys(&self) -> (String, String) {
        let h = format!("{{{}:manual}}", self.cfg.key_prefix);
        let v = format!("{h}:v");
        (h, v)
    }

    fn slot_name(&self, slot: u64) -> String {
        format!("{:016x}:{slot}", self.replica)
    }

    fn transition(&self, t: Option<Transition>) {
        let Some(t) = t else { return };
        let i = match t.to {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        };
        self.metrics.transitions[i].inc();
        match (t.from, t.to) {
            (BreakerState::Closed, BreakerState::Open) => warn!(
                failures = self.cfg.breaker_failures,
                on_failure = self.cfg.on_failure.as_str(),
                probe_after_ms = self.cfg.breaker_open.as_millis() as u64,
                "redis state store failing: breaker open, requests go on under on_failure"
            ),
            (_, BreakerState::Closed) => info!("redis state store answering again: breaker closed"),
            (from, to) => debug!(
                from = from.as_str(),
                to = to.as_str(),
                "redis state store breaker"
            ),
        }
    }

    /// Whether a call may be made now, and whether it is the probe.
    pub(super) fn gate(&self) -> Option<bool> {
        let (g, t) = self.breaker.gate();
        self.transition(t);
        match g {
            Gate::Call => Some(false),
            Gate::Probe => Some(true),
            Gate::Skip => None,
        }
    }

    /// The bound on one call: `command_timeout_ms` where a request waits
    /// on it (admission); calls no request waits on (settlements, the
    /// manual-decision sync, an admin's decision) get at least
    /// [`BACKGROUND_TIMEOUT`], so a slow moment does not drop a settlement
    /// (and leave its in-flight slot held until the lease ends).
    fn timeout(&self, op: Op) -> std::time::Duration {
        match op {
            Op::Admit => self.cfg.command_timeout,
            Op::Settle | Op::Sync | Op::Manual | Op::Append | Op::Read => self.background_timeout(),
        }
    }

    /// The bound on a call no request waits on.
    pub(super) fn background_timeout(&self) -> std::time::Duration {
        self.cfg.command_timeout.max(BACKGROUND_TIMEOUT)
    }

    /// The stream reader's connection (on a cluster, a connection of its
    /// own to every node: its blocking `XREAD` holds the connection to the
    /// node owning the stream's slot, and no other call waits behind it).
    pub(super) fn reader(&self) -> Conn {
        self.conns.get(1)
    }

    /// Redis answers (the breaker is closed).
    pub(super) fn answering(&self) -> bool {
        self.breaker.state() == BreakerState::Closed
    }

    /// Count one stream read (`ok`: answered, failed, or None: timed
    /// out). Reads do not feed the breaker, which is the request path's;
    /// nor the round-trip histogram, since they block by design.
    pub(super) fn note_read(&self, _took: std::time::Duration, ok: Option<bool>) {
        let i = Op::Read as usize;
        self.metrics.commands[i].inc();
        match ok {
            Some(true) => {}
            Some(false) => drop(self.metrics.errors[i][0].inc()),
            None => drop(self.metrics.errors[i][1].inc()),
        }
    }

    /// The shared observation stream, when observations are shared.
    pub fn stream(&self) -> Option<&Arc<super::stream::ObservationStream>> {
        self.stream.as_ref()
    }

    /// Run one Redis call (on a pooled connection) under its timeout;
    /// feed the breaker and the metrics. A call that fails because its
    /// connection was lost (Redis restarted, an idle connection cut) is
    /// sent once more, within the same timeout, on the connection made
    /// anew: a restart of Redis then costs no request a fallback.
    pub(super) async fn run<T, F, Fut>(&self, op: Op, probe: bool, call: F) -> Result<T, ()>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let started = Instant::now();
        let conn = self.conn();
        let attempts = async {
            match call(conn.clone()).await {
                Err(e) if e.is_connection_dropped() || e.is_io_error() => call(conn).await,
                r => r,
            }
        };
        let r = tokio::time::timeout(self.timeout(op), attempts).await;
        self.metrics.round_trip.observe(started.elapsed());
        self.metrics.commands[op as usize].inc();
        let failed = match r {
            Ok(Ok(v)) => {
                self.transition(self.breaker.success(probe));
                return Ok(v);
            }
            Ok(Err(e)) => {
                debug!(op = OPS[op as usize], error = %e, "redis call failed");
                0
            }
            Err(_) => 1,
        };
        self.metrics.errors[op as usize][failed].inc();
        self.transition(self.breaker.failure(probe));
        Err(())
    }

    /// The admission script's reply as an [`Admission`].
    fn admission(reply: &[i64], ask: &BudgetAsk) -> Result<Admission, ()> {
        match reply {
            [1] => Ok(Ok(ask.cluster.as_ref().map(|c| (c.id, c.members)))),
            &[0, scope, kind, retry_us, remaining, reset_us] => {
                let (scope, tier) = match (scope, &ask.cluster) {
                    (1, _) => (Scope::Account, &ask.tier),
                    (2, Some(c)) => (Scope::Cluster, &c.budget),
                    _ => return Err(()),
                };
                let (kind, quota) = match kind {
                    1 => (LimitKind::Concurrency, None),
                    2 => (LimitKind::Requests, Some(tier.requests)),
                    3 => (LimitKind::InputTokens, Some(tier.input)),
                    4 => (LimitKind::OutputTokens, Some(tier.output)),
                    _ => return Err(()),
                };
                let ns = |us: i64| u64::try_from(us).unwrap_or(0).saturating_mul(1000);
                Ok(Err(LimitHit {
                    scope,
                    kind,
                    retry_after: ns(retry_us).max(1),
                    quota,
                    max_concurrent: tier.max_concurrent,
                    remaining: u64::try_from(remaining).unwrap_or(0),
                    reset_after: ns(reset_us),
                }))
            }
            _ => Err(()),
        }
    }

    /// What a request gets while Redis cannot answer.
    fn fall_back(
        &self,
        engine: &Engine,
        ask: &BudgetAsk,
        now: Nanos,
    ) -> Result<(Admission, Receipt), Unavailable> {
        let mode = self.cfg.on_failure;
        self.metrics.fallback[mode as usize].inc();
        match mode {
            OnFailure::Local => Ok((engine.admit_local(ask, now), Receipt::Local)),
            OnFailure::Open => {
                engine.record_admission(ask, now);
                let cluster = ask.cluster.as_ref().map(|c| (c.id, c.members));
                Ok((Ok(cluster), Receipt::Local))
            }
            OnFailure::Closed => Err(Unavailable),
        }
    }

    /// Record an admin's decision in Redis (every replica applies it
    /// within `manual_sync_ms`). `Err` says why it could not be.
    pub async fn store_manual(
        &self,
        cluster: bool,
        id: u64,
        manual: Option<Manual>,
    ) -> Result<i64, String> {
        let Some(probe) = self.gate() else {
            return Err("the Redis breaker is open (Redis failed recently)".into());
        };
        let (h, v) = self.manual_keys();
        let field = format!("{}:{id:016x}", if cluster { 'c' } else { 'a' });
        let value = match manual {
            Some(Manual::Block) => "block",
            Some(Manual::Allow) => "allow",
            None => "",
        };
        let mut inv = self.manual.prepare_invoke();
        inv.key(&h).key(&v).arg(&field).arg(value);
        let inv = &inv;
        let stored = self
            .run(Op::Manual, probe, |mut c| async move {
                inv.invoke_async::<i64>(&mut c).await
            })
            .await;
        match stored {
            Ok(-1) => Err(format!(
                "Redis holds no manual decisions yet (it restarted empty); the replicas \
                 seed it within {} ms",
                self.cfg.manual_sync.as_millis()
            )),
            Ok(v) => Ok(v),
            Err(()) => Err(format!(
                "Redis failed or did not answer within {} ms",
                self.timeout(Op::Manual).as_millis()
            )),
        }
    }

    /// Poll the manual decisions' version every `manual_sync_ms` and apply
    /// Redis's decisions when it moved; seed Redis with this replica's
    /// when it holds none, persisting what changed to the state file
    /// `state_path` names at the time (`[admin] state_path`, reloadable).
    /// Runs until `shutdown`.
    pub async fn run_sync(
        self: Arc<Self>,
        engine: Arc<Engine>,
        state_path: impl Fn() -> Option<std::path::PathBuf>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        if let Some(stream) = self.stream.clone() {
            tokio::spawn(stream.clone().run_appender(self.clone(), shutdown.clone()));
            tokio::spawn(stream.run_reader(self.clone(), engine.clone(), shutdown.clone()));
        }
        let mut tick = tokio::time::interval(self.cfg.manual_sync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                _ = tick.tick() => {}
            }
            self.sync_manual(&engine, &state_path).await;
        }
    }

    async fn sync_manual(
        &self,
        engine: &Engine,
        state_path: &impl Fn() -> Option<std::path::PathBuf>,
    ) {
        let Some(probe) = self.gate() else { return };
        let (h, v) = self.manual_keys();
        let mut get = ::redis::cmd("GET");
        get.arg(&v);
        let get = &get;
        let Ok(version) = self
            .run(Op::Sync, probe, |mut c| async move {
                get.query_async::<Option<i64>>(&mut c).await
            })
            .await
        else {
            return;
        };
        match version {
            None => {
                let (accounts, clusters) = engine.manual_decisions();
                let mut inv = self.seed.prepare_invoke();
                inv.key(&h).key(&v);
                let n = accounts.len() + clusters.len();
                for (a, m) in accounts {
                    inv.arg(format!("a:{a}")).arg(manual_str(m));
                }
                for (c, m) in clusters {
                    inv.arg(format!("c:{}", ClusterId(c))).arg(manual_str(m));
                }
                let inv = &inv;
                let seeded = self
                    .run(Op::Sync, false, |mut c| async move {
                        inv.invoke_async::<i64>(&mut c).await
                    })
                    .await;
                if seeded == Ok(1) {
                    info!(
                        decisions = n,
                        "Redis held no manual decisions: seeded with this replica's"
                    );
                }
                self.manual_version.store(-1, Ordering::Relaxed);
            }
            Some(v) if v != self.manual_version.load(Ordering::Relaxed) => {
                let mut all = ::redis::cmd("HGETALL");
                all.arg(&h);
                let all = &all;
                let Ok(all) = self
                    .run(Op::Sync, false, |mut c| async move {
                        all.query_async::<HashMap<String, String>>(&mut c).await
                    })
                    .await
                else {
                    return;
                };
                let changed = apply_manual(engine, &all);
                self.manual_version.store(v, Ordering::Relaxed);
                if changed > 0 {
                    info!(
                        version = v,
                        changed, "manual decisions updated from Redis (made through a replica)"
                    );
                    if let Some(path) = state_path() {
                        if let Err(e) = super::manual_file::save(&path, engine) {
                            warn!(path = %path.display(), error = %e, "cannot persist manual decisions");
                        }
                    }
                }
            }
            Some(_) => {}
        }
    }

    /// `/readyz`: not ready only when Redis fails and requests are refused
    /// for it (`on_failure = "closed"`).
    pub fn readiness(&self) -> (bool, String) {
        let st = self.breaker.state();
        let ok = st == BreakerState::Closed || self.cfg.on_failure != OnFailure::Closed;
        (
            ok,
            format!(
                "state: {} breaker={} on_failure={}{}",
                if self.cfg.cluster {
                    "redis-cluster"
                } else {
                    "redis"
                },
                st.as_str(),
                self.cfg.on_failure.as_str(),
                match &self.stream {
                    None => "",
                    Some(s) if s.in_view() => " observations=shared",
                    Some(_) => " observations=local",
                }
            ),
        )
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// OpenMetrics text of the store's metrics (no `# EOF`).
    pub fn render_metrics(&self, out: &mut String) {
        let m = &self.metrics;
        m.breaker_state.set(self.breaker.state().gauge());
        m.manual_version
            .set(self.manual_version.load(Ordering::Relaxed));
        let _ = prometheus_client::encoding::text::encode_registry(out, &m.registry);
        if let Some(s) = &self.stream {
            s.render_metrics(out);
        }
    }
}

fn manual_str(m: Manual) -> &'static str {
    match m {
        Manual::Block => "block",
        Manual::Allow => "allow",
    }
}

/// Make the engine's manual decisions those of Redis's hash; returns how
/// many changed.
fn apply_manual(engine: &Engine, all: &HashMap<String, String>) -> usize {
    let mut accounts = HashMap::new();
    let mut clusters = HashMap::new();
    for (field, value) in all {
        let m = match value.as_str() {
            "block" => Manual::Block,
            "allow" => Manual::Allow,
            _ => continue,
        };
        let Some((kind, id)) = field.split_once(':') else {
            continue;
        };
        let Some(id) = crate::config::accounts_file::parse_account_id(id) else {
            continue;
        };
        match kind {
            "a" => accounts.insert(id, m),
            "c" => clusters.insert(id, m),
            _ => None,
        };
    }
    let (have_a, have_c) = engine.manual_decisions();
    let mut changed = 0;
    for (a, m) in &have_a {
        if accounts.get(&a.0) != Some(m) {
            engine.set_manual_account(*a, accounts.get(&a.0).copied());
            changed += 1;
        }
    }
    for (id, m) in accounts {
        if !have_a.iter().any(|(a, h)| a.0 == id && *h == m) {
            engine.set_manual_account(AccountId(id), Some(m));
            changed += 1;
        }
    }
    for (c, m) in &have_c {
        if clusters.get(c) != Some(m) {
            engine.set_manual_cluster(*c, clusters.get(c).copied());
            changed += 1;
        }
    }
    for (id, m) in clusters {
        if !have_c.iter().any(|(c, h)| *c == id && *h == m) {
            engine.set_manual_cluster(id, Some(m));
            changed += 1;
        }
    }
    changed
}

/// A rate's emission interval and burst capacity in microseconds, as the
/// scripts take them.
fn us(rate: &Rate) -> (f64, f64) {
    (
        rate.emission() as f64 / 1000.0,
        rate.capacity() as f64 / 1000.0,
    )
}

fn push_tier(inv: &mut ::redis::ScriptInvocation<'_>, tier: &Tier) {
    let (rt, rc) = us(&tier.requests);
    let (it, ic) = us(&tier.input);
    let (ot, oc) = us(&tier.output);
    inv.arg(tier.max_concurrent)
        .arg(rt)
        .arg(rc)
        .arg(it)
        .arg(ic)
        .arg(ot)
        .arg(oc);
}

impl BudgetStore for Arc<RedisStore> {
    async fn admit(
        &self,
        engine: &Engine,
        ask: &BudgetAsk,
        now: Nanos,
    ) -> Result<(Admission, Receipt), Unavailable> {
        let Some(probe) = self.gate() else {
            return self.fall_back(engine, ask, now);
        };
        let slot = self.slots.fetch_add(1, Ordering::Relaxed);
        let member_of = ask
            .cluster
            .as_ref()
            .filter(|_| self.cfg.cluster)
            .map(|c| c.id);
        let (ah, az) = self.account_keys(ask.account.0, member_of);
        let mut inv = self.admit.prepare_invoke();
        inv.key(&ah)
            .key(&az)
            .arg(self.slot_name(slot))
            .arg(self.cfg.in_flight_lease.as_micros() as u64)
            .arg(ask.input_tokens);
        push_tier(&mut inv, &ask.tier);
        if let Some(c) = &ask.cluster {
            let (ch, cz) = self.cell_keys('c', c.id);
            inv.key(ch).key(cz);
            push_tier(&mut inv, &c.budget);
        }
        let inv = &inv;
        let reply = self
            .run(Op::Admit, probe, |mut c| async move {
                inv.invoke_async::<Vec<i64>>(&mut c).await
            })
            .await;
        match reply.and_then(|r| RedisStore::admission(&r, ask)) {
            Ok(admission) => {
                if admission.is_ok() {
                    engine.record_admission(ask, now);
                }
                Ok((admission, Receipt::Shared { slot, member_of }))
            }
            Err(()) => self.fall_back(engine, ask, now),
        }
    }

    fn settle(&self, engine: &Engine, ticket: &Ticket, receipt: Receipt, usage: Usage) {
        let Receipt::Shared { slot, member_of } = receipt else {
            return;
        };
        let (tier, cluster) = engine.settle_quotas(ticket);
        let mut keys = vec![self.account_keys(ticket.account.0, member_of)];
        let mut rates = vec![(us(&tier.input).0, us(&tier.output).0)];
        if let (Some((id, _)), Some(budget)) = (ticket.cluster, &cluster) {
            keys.push(self.cell_keys('c', id));
            rates.push((us(&budget.input).0, us(&budget.output).0));
        }
        let member = self.slot_name(slot);
        let input_charged = ticket.input_charged;
        let store = self.clone();
        let settle = async move {
            let Some(probe) = store.gate() else {
                store.metrics.settles_skipped.inc();
                return;
            };
            let mut inv = store.settle.prepare_invoke();
            for (h, z) in &keys {
                inv.key(h).key(z);
            }
            inv.arg(&member)
                .arg(usage.output_tokens)
                .arg(input_charged)
                .arg(
                    usage
                        .input_tokens
                        .map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX)),
                );
            for (it, ot) in rates {
                inv.arg(it).arg(ot);
            }
            let inv = &inv;
            let _ = store
                .run(Op::Settle, probe, |mut c| async move {
                    inv.invoke_async::<i64>(&mut c).await
                })
                .await;
        };
        // On the calling worker's runtime when there is one (its
        // connection's task runs there), else on the state thread's.
        match tokio::runtime::Handle::try_current() {
            Ok(h) => drop(h.spawn(settle)),
            Err(_) => drop(self.rt.spawn(settle)),
        }
    }
}
