//! One view of clusters: every replica appends its requests' observations
//! to one Redis Stream and applies the whole stream — its own entries
//! included, and only as they come back — to its linker and behaviour
//! state in stream order, at the times the stream gave them, so every
//! replica links the same clusters under the same ids
//! (`docs/distributed.md`, "One view of clusters").
//!
//! The request path never waits on the stream: it decides on the state as
//! of the last applied entry ([`Engine::assess_view`]) and queues its
//! observation on a bounded channel; a task on the state thread appends
//! what is queued in one pipelined round trip, and another reads the
//! stream (`XREAD`, one reader per replica: every replica needs every
//! entry) and applies it. While Redis fails, requests are linked and
//! observed here alone (as in local mode) and their entries are held; when
//! it returns they are appended and this replica's view is rebuilt from
//! the stream, so every replica holds one view again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::redis::{Op, RedisStore};
use crate::config::StreamConfig;
use crate::engine::score::PhraseHits;
use crate::engine::{
    cohort, signature, AccountId, Engine, Nanos, Observation, ObservedAttrs, RequestFacts, Ticket,
    Usage, SECOND,
};
use crate::telemetry::metrics::{labelled, Histogram};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Entries appended in one pipelined round trip at most.
const APPEND_BATCH: usize = 512;
/// Entries one `XREAD` returns at most.
const READ_COUNT: usize = 1024;
/// How long one `XREAD` waits for new entries.
const READ_BLOCK: Duration = Duration::from_millis(200);
/// How often the lag is measured.
const LAG_EVERY: Duration = Duration::from_secs(1);
/// Re-syncs (each a replay of the retained stream) at most this often:
/// a flapping Redis costs one replay per interval, not one per flap.
const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// Entries behind counted at most (the count walks them on the server,
/// once a second).
const LAG_COUNT_CAP: u64 = 10_000;

/// The lag: `{entries after ARGV[1] (at most ARGV[2]), the newest id}`.
const LAG_LUA: &str = r"
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 then return {0, '0-0'} end
if last[1][1] == ARGV[1] then return {0, ARGV[1]} end
local n = #redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
return {n, last[1][1]}
";

/// One stream entry (field `o`, JSON): a request's observation or a
/// settlement's signal inputs. Hashes, counts and flags only — never an
/// API key or prompt text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum Entry {
    /// A request, as [`Engine::apply`] takes it.
    #[serde(rename = "o")]
    Observed(Observed),
    /// What the response produced, for [`Engine::settle_signals`].
    #[serde(rename = "s")]
    Settled(Settled),
}

/// A request's observation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    /// Account id.
    pub a: u64,
    /// Anonymous.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub an: bool,
    /// Estimated input tokens.
    pub it: u64,
    /// Hashed attributes: JA4, HTTP, HTTP/2, network, AS.
    pub fp: [Option<u64>; 5],
    /// Prompt-shape index keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<Vec<u64>>,
    /// Thinking budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tb: Option<u32>,
    /// Reasoning effort high.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rh: bool,
    /// Requested output limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mo: Option<u32>,
    /// Requested model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m: Option<String>,
    /// Distinct-fill key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f: Option<u64>,
    /// Fingerprints inconsistent with the user-agent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inc: bool,
    /// Phrase lists the prompt matched (bit per list of the config).
    #[serde(default)]
    pub ph: u32,
    /// The account's age in seconds, as the trusted auth front stated it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ag: Option<u64>,
}

/// A settlement's signal inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settled {
    /// Account id.
    pub a: u64,
    /// Output tokens.
    pub out: u64,
    /// Forwarded degraded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dg: bool,
    /// The cluster whose behaviour state observed the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sc: Option<u64>,
    /// Counted in that cluster's core.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub core: bool,
    /// Cohorts that observed it.
    #[serde(default)]
    pub co: [u64; cohort::KEYS],
    /// The network pool that observed it (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub po: u64,
}

fn is_zero(x: &u64) -> bool {
    *x == 0
}

impl Entry {
    /// The entry for a request (its prompt scanned into `hits` already).
    pub fn observed(obs: &Observation, hits: PhraseHits) -> Entry {
        let a = &obs.attrs;
        let f = &obs.request;
        Entry::Observed(Observed {
            a: obs.account.0,
            an: obs.anonymous,
            it: obs.input_tokens,
            fp: [a.ja4, a.http, a.h2, a.ip_prefix, a.asn],
            p: a.prompt.map(|k| k.to_vec()),
            tb: f.thinking_budget,
            rh: f.reasoning_effort_high,
            mo: f.max_output_tokens,
            m: f.model.clone(),
            f: f.fill_key,
            inc: f.fingerprint_inconsistent,
            ph: hits.0,
            ag: obs.account_age.map(|a| a / SECOND),
        })
    }

    /// The entry for a settlement.
    pub fn settled(ticket: &Ticket, usage: Usage) -> Entry {
        Entry::Settled(Settled {
            a: ticket.account.0,
            out: usage.output_tokens,
            dg: ticket.degraded,
            sc: ticket.scored_cluster,
            core: ticket.scored_core,
            co: ticket.scored_cohorts,
            po: ticket.scored_pool,
        })
    }

    /// Apply the entry to `engine` at `now` (the entry's stream time).
    /// False when it is malformed (nothing applied).
    pub fn apply(&self, engine: &Engine, now: Nanos) -> bool {
        match self {
            Entry::Observed(o) => {
                let prompt = match &o.p {
                    None => None,
                    Some(keys) => {
                        let mut k = [0u64; signature::INDEX_KEYS];
                        if keys.len() != k.len() {
                            return false;
                        }
                        k.copy_from_slice(keys);
                        Some(k)
                    }
                };
                let [ja4, http, h2, ip_prefix, asn] = o.fp;
                let obs = Observation {
                    account: AccountId(o.a),
                    anonymous: o.an,
                    input_tokens: o.it,
                    attrs: ObservedAttrs {
                        ja4,
                        http,
                        h2,
                        ip_prefix,
                        asn,
                        prompt,
                    },
                    request: RequestFacts {
                        thinking_budget: o.tb,
                        reasoning_effort_high: o.rh,
                        max_output_tokens: o.mo,
                        model: o.m.clone(),
                        fill_key: o.f,
                        fingerprint_inconsistent: o.inc,
                        phrase_hits: PhraseHits(o.ph),
                    },
                    account_age: o.ag.map(|s| s.saturating_mul(SECOND)),
                };
                engine.apply(&obs, now);
            }
            Entry::Settled(s) => {
                let ticket = Ticket {
                    account: AccountId(s.a),
                    anonymous: false,
                    input_charged: 0,
                    cluster: None,
                    scored_cluster: s.sc,
                    scored_core: s.core,
                    throttled: false,
                    scored_cohorts: s.co,
                    scored_pool: s.po,
                    degraded: s.dg,
                };
                let usage = Usage {
                    input_tokens: None,
                    output_tokens: s.out,
                };
                engine.settle_signals(&ticket, usage, now);
            }
        }
        true
    }
}

/// A stream entry id's milliseconds (`MS-SEQ`).
fn id_ms(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct DroppedLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct AppliedLabels {
    kind: &'static str,
}

/// The stream's metrics, each series resolved once.
#[derive(Debug)]
struct StreamMetrics {
    registry: Registry,
    view: Gauge,
    appended: Counter,
    /// Dropped: [queue full, Redis failed or breaker open, outage buffer
    /// full, outage not re-synced (Redis came back without the stream)].
    dropped: [Counter; 4],
    /// Views forgotten and rebuilt from the stream after an outage.
    resyncs: Counter,
    /// Entries linked here alone, held for appending when Redis returns.
    held: Gauge,
    /// Applied: [observations, settlements, malformed].
    applied: [Counter; 3],
    lag_entries: Gauge,
    lag_seconds: Gauge<f64, AtomicU64>,
    /// Age of an entry when applied here (this host's clock against the
    /// entry's server milliseconds).
    delay: Histogram,
}

impl Default for StreamMetrics {
    fn default() -> Self {
        let mut r = Registry::default();
        let view = Gauge::default();
        r.register(
            "distill_guard_state_stream_view",
            "Requests decided on the shared view of clusters (1) or linked on this replica alone (0)",
            view.clone(),
        );
        let lag_entries = Gauge::default();
        r.register(
            "distill_guard_state_stream_lag_entries",
            format!(
                "Observation stream entries not applied here yet (measured every second, counted up to {LAG_COUNT_CAP})"
            ),
            lag_entries.clone(),
        );
        let lag_seconds = Gauge::<f64, AtomicU64>::default();
        r.register(
            "distill_guard_state_stream_lag_seconds",
            "Stream time between the newest entry and the last one applied here (measured every second)",
            lag_seconds.clone(),
        );
        let delay = Histogram::default();
        r.register(
            "distill_guard_state_stream_delay_seconds",
            "Age of an observation stream entry when applied here (this host's clock against the entry's Redis time)",
            delay.clone(),
        );
        let appended = Counter::default();
        r.register(
            "distill_guard_state_stream_appended",
            "Observations and settlements appended to the stream by this replica",
            appended.clone(),
        );
        let (dropped, family) = labelled(
            [
                "queue_full",
                "redis_failed",
                "outage_full",
                "outage_not_resynced",
            ],
            |reason| DroppedLabels { reason },
        );
        r.register(
            "distill_guard_state_stream_dropped",
            "Entries never appended: the queue was full, Redis failed, the outage buffer was full, or Redis came back without the stream",
            family,
        );
        let resyncs = Counter::default();
        r.register(
            "distill_guard_state_stream_resyncs",
            "Views of clusters forgotten and rebuilt from the stream after an outage in which this replica linked alone",
            resyncs.clone(),
        );
        let held = Gauge::default();
        r.register(
            "distill_guard_state_stream_outage_held_entries",
            "Entries linked on this replica alone during an outage, held to be appended when Redis returns",
            held.clone(),
        );
        let (applied, family) = labelled(["observation", "settlement", "malformed"], |kind| {
            AppliedLabels { kind }
        });
        r.register(
            "distill_guard_state_stream_applied",
            "Stream entries applied here (every replica's), by kind",
            family,
        );
        StreamMetrics {
            registry: r,
            view,
            appended,
            dropped,
            resyncs,
            held,
            applied,
            lag_entries,
            lag_seconds,
            delay,
        }
    }
}

/// The observation stream of one replica: its append queue, its read
/// position and its health.
pub struct ObservationStream {
    key: String,
    cfg: StreamConfig,
    tx: mpsc::Sender<Entry>,
    rx: Mutex<Option<mpsc::Receiver<Entry>>>,
    /// The reader reads (its last `XREAD` answered).
    reading: AtomicBool,
    /// Decisions are made on the shared view (1) or linked here (0).
    view: AtomicBool,
    /// The last entry applied here ("0-0": none).
    last_id: Mutex<String>,
    /// Entries linked here alone while the view was off (an outage), the
    /// newest `queue_entries` of them, to append when Redis returns.
    outage: Mutex<VecDeque<Entry>>,
    /// Held (read) while a request is linked and held here alone, taken
    /// (write) by a re-sync while it drains what is held: a request linked
    /// alone before a re-sync is appended by it, never held after it.
    alone_gate: RwLock<()>,
    /// Requests and settlements linked or observed here alone since the
    /// view was last rebuilt: a re-sync is due when it is above 0.
    alone: AtomicU64,
    last_ms: AtomicI64,
    metrics: StreamMetrics,
}

impl std::fmt::Debug for ObservationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservationStream")
            .field("key", &self.key)
            .field("view", &self.view.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ObservationStream {
    /// A stream under `{prefix:obs}`, not read yet (so not in use until
    /// the reader's first answer).
    pub fn new(prefix: &str, cfg: StreamConfig) -> ObservationStream {
        let (tx, rx) = mpsc::channel(cfg.queue_entries);
        ObservationStream {
            key: format!("{{{prefix}:obs}}"),
            cfg,
            tx,
            rx: Mutex::new(Some(rx)),
            reading: AtomicBool::new(false),
            view: AtomicBool::new(false),
            last_id: Mutex::new("0-0".into()),
            outage: Mutex::new(VecDeque::new()),
            alone_gate: RwLock::new(()),
            alone: AtomicU64::new(0),
            last_ms: AtomicI64::new(-1),
            metrics: StreamMetrics::default(),
        }
    }

    /// Whether a request is decided on the shared view now: the reader
    /// reads and Redis answers (the breaker is closed). Otherwise it is
    /// linked and observed here alone, as in local mode.
    pub fn in_view(&self) -> bool {
        self.view.load(Ordering::Relaxed)
    }

    /// Link or observe a request through `f`: on the shared view when it
    /// is on (`f(true)`), here alone while it is off (`f(false)`); the
    /// entry `f` gives is queued for appending, or held while the view is
    /// off. Linking alone and holding happen under one gate a re-sync
    /// takes to drain what is held, so a request linked here alone is
    /// either appended by the re-sync or sees the view back on — nothing
    /// linked alone before Redis returned stays held after it.
    pub fn record<T>(&self, f: impl FnOnce(bool) -> (T, Option<Entry>)) -> T {
        if self.in_view() {
            let (out, entry) = f(true);
            if let Some(entry) = entry {
                self.push(entry);
            }
            return out;
        }
        let _alone = self.alone_gate.read();
        let view = self.in_view();
        let (out, entry) = f(view);
        match entry {
            Some(entry) if view => self.push(entry),
            Some(entry) => self.hold(entry),
            None => {}
        }
        out
    }

    /// Queue an entry for appending; never waits. A full queue drops it
    /// (counted): that observation is then applied by no replica.
    fn push(&self, entry: Entry) {
        if self.tx.try_send(entry).is_err() {
            self.metrics.dropped[0].inc();
        }
    }

    /// Keep an entry this replica linked or observed alone (the view is
    /// off: Redis failed) to append it when Redis returns; the buffer keeps
    /// the newest `stream_queue_entries` (older ones are dropped, counted).
    fn hold(&self, entry: Entry) {
        self.alone.fetch_add(1, Ordering::Relaxed);
        let Ok(mut q) = self.outage.lock() else {
            return;
        };
        if q.len() >= self.cfg.queue_entries {
            q.pop_front();
            self.metrics.dropped[2].inc();
        }
        q.push_back(entry);
    }

    /// Re-evaluate whether requests are decided on the shared view; log
    /// once per change.
    fn set_view(&self, store: &RedisStore) {
        let on = self.reading.load(Ordering::Relaxed) && store.answering();
        if self.view.swap(on, Ordering::Relaxed) != on {
            if on {
                info!(
                    from = %self.last_id.lock().map(|l| l.clone()).unwrap_or_default(),
                    "observation stream read: requests decided on the shared view of clusters"
                );
            } else {
                warn!("observation stream unavailable: requests linked on this replica alone until Redis answers");
            }
        }
    }

    /// Append what is queued, in batches of up to [`APPEND_BATCH`] (one
    /// pipelined round trip each), until `shutdown`.
    pub async fn run_appender(
        self: Arc<Self>,
        store: Arc<RedisStore>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Some(mut rx) = self.rx.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        let mut batch = Vec::with_capacity(APPEND_BATCH);
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                n = rx.recv_many(&mut batch, APPEND_BATCH) => if n == 0 { break },
            }
            let Some(probe) = store.gate() else {
                self.metrics.dropped[1].inc_by(batch.len() as u64);
                batch.clear();
                continue;
            };
            let n = batch.len() as u64;
            match self.append(&store, probe, &batch).await {
                Ok(()) => self.metrics.appended.inc_by(n),
                Err(()) => self.metrics.dropped[1].inc_by(n),
            };
            batch.clear();
        }
    }

    /// Append `entries` in one pipelined round trip.
    async fn append(&self, store: &RedisStore, probe: bool, entries: &[Entry]) -> Result<(), ()> {
        let mut pipe = ::redis::pipe();
        for e in entries {
            let Ok(json) = serde_json::to_string(e) else {
                continue;
            };
            pipe.cmd("XADD")
                .arg(&self.key)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.cfg.max_entries)
                .arg("*")
                .arg("o")
                .arg(json)
                .ignore();
        }
        let pipe = &pipe;
        store
            .run(Op::Append, probe, |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await
    }

    /// What was linked here alone (a count) and held, taken for a re-sync.
    /// The view is on (the reader re-syncs only then): once the gate is
    /// taken, every request linked here alone has held its entry, and the
    /// next ones are decided on the view.
    fn take_held(&self) -> (u64, Vec<Entry>) {
        let _drain = self.alone_gate.write();
        let alone = self.alone.swap(0, Ordering::Relaxed);
        let held = self
            .outage
            .lock()
            .map(|mut q| q.drain(..).collect())
            .unwrap_or_default();
        (alone, held)
    }

    /// After an outage in which this replica linked alone: append what it
    /// held, forget its view and read the stream again from its start, so
    /// its view is rebuilt from the same entries, in the same order, as
    /// every other replica's. Only when the stream still holds the last
    /// entry applied here (Redis kept its data): a stream that came back
    /// empty (or trimmed past this replica) would rebuild a view of less
    /// than this replica holds, so then the view is kept and what was held
    /// is dropped (counted), as it is already in this replica's view.
    /// Returns whether the view was reset.
    async fn resync(&self, store: &RedisStore, engine: &Engine) -> bool {
        if self.alone.load(Ordering::Relaxed) == 0 || !store.answering() {
            return false;
        }
        let Some(probe) = store.gate() else {
            return false;
        };
        let from = self.last_id.lock().map(|l| l.clone()).unwrap_or_default();
        let kept = if from == "0-0" {
            Ok(true)
        } else {
            let mut range = ::redis::cmd("XRANGE");
            range.arg(&self.key).arg(&from).arg(&from);
            let range = &range;
            store
                .run(Op::Read, probe, |mut c| async move {
                    range
                        .query_async::<Vec<(String, Vec<(String, String)>)>>(&mut c)
                        .await
                })
                .await
                .map(|e| !e.is_empty())
        };
        let Ok(kept) = kept else { return false };
        let (alone, held) = self.take_held();
        if !kept {
            self.metrics.dropped[3].inc_by(held.len() as u64);
            warn!(
                held = held.len(),
                "Redis came back without the observation stream applied here (restarted \
                 empty?): this replica keeps its view; what it linked alone stays its own"
            );
            return false;
        }
        for chunk in held.chunks(APPEND_BATCH) {
            let n = chunk.len() as u64;
            let sent = match store.gate() {
                Some(probe) => self.append(store, probe, chunk).await,
                None => Err(()),
            };
            match sent {
                Ok(()) => self.metrics.appended.inc_by(n),
                Err(()) => self.metrics.dropped[1].inc_by(n),
            };
        }
        engine.reset_view();
        if let Ok(mut l) = self.last_id.lock() {
            *l = "0-0".into();
        }
        self.metrics.resyncs.inc();
        info!(
            alone,
            appended = held.len(),
            "observation stream back after an outage: view rebuilt from the stream"
        );
        true
    }

    /// Read the stream from the last entry applied (from its start when
    /// none: a replica starting late replays what the stream retains) and
    /// apply every entry to `engine` at its stream time, until `shutdown`.
    pub async fn run_reader(
        self: Arc<Self>,
        store: Arc<RedisStore>,
        engine: Arc<Engine>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let lag = ::redis::Script::new(LAG_LUA);
        let mut next_lag = Instant::now();
        let mut conn = store.reader();
        let mut last_resync: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let from = self.last_id.lock().map(|l| l.clone()).unwrap_or_default();
            let mut read = ::redis::cmd("XREAD");
            read.arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(READ_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.key)
                .arg(&from);
            type Reply = Option<Vec<(String, Vec<(String, Vec<(String, String)>)>)>>;
            let started = Instant::now();
            let reply = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                r = tokio::time::timeout(
                    READ_BLOCK + store.background_timeout(),
                    read.query_async::<Reply>(&mut conn),
                ) => r,
            };
            store.note_read(started.elapsed(), reply.as_ref().map(|r| r.is_ok()).ok());
            let entries = match reply {
                Ok(Ok(r)) => r.into_iter().flatten().flat_map(|(_, e)| e),
                _ => {
                    self.reading.store(false, Ordering::Relaxed);
                    self.set_view(&store);
                    tokio::select! {
                        _ = shutdown.wait_for(|s| *s) => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                    continue;
                }
            };
            let wall_ms = crate::telemetry::audit::now_unix_ms();
            let mut last = None;
            for (id, fields) in entries {
                let ms = id_ms(&id).unwrap_or(0);
                let entry = fields
                    .iter()
                    .find(|(f, _)| f == "o")
                    .and_then(|(_, v)| serde_json::from_str::<Entry>(v).ok());
                let applied = entry
                    .as_ref()
                    .map(|e| e.apply(&engine, ms.saturating_mul(1_000_000)));
                match (&entry, applied) {
                    (Some(Entry::Observed(_)), Some(true)) => &self.metrics.applied[0],
                    (Some(Entry::Settled(_)), Some(true)) => &self.metrics.applied[1],
                    _ => &self.metrics.applied[2],
                }
                .inc();
                self.metrics
                    .delay
                    .observe(Duration::from_millis(wall_ms.saturating_sub(ms)));
                last = Some((id, ms));
            }
            if let Some((id, ms)) = last {
                if let Ok(mut l) = self.last_id.lock() {
                    *l = id;
                }
                self.last_ms
                    .store(i64::try_from(ms).unwrap_or(i64::MAX), Ordering::Relaxed);
            }
            self.reading.store(true, Ordering::Relaxed);
            self.set_view(&store);
            if self.in_view()
                && last_resync.is_none_or(|t| t.elapsed() >= RESYNC_EVERY)
                && self.resync(&store, &engine).await
            {
                last_resync = Some(Instant::now());
                continue;
            }
            if Instant::now() >= next_lag {
                next_lag = Instant::now() + LAG_EVERY;
                self.measure_lag(&store, &lag).await;
            }
        }
    }

    /// Entries between the last applied here and the stream's newest, and
    /// the milliseconds between them.
    async fn measure_lag(&self, store: &RedisStore, lag: &::redis::Script) {
        let Some(probe) = store.gate() else { return };
        let from = self.last_id.lock().map(|l| l.clone()).unwrap_or_default();
        let mut inv = lag.prepare_invoke();
        inv.key(&self.key).arg(&from).arg(LAG_COUNT_CAP);
        let inv = &inv;
        let Ok((n, newest)) = store
            .run(Op::Read, probe, |mut c| async move {
                inv.invoke_async::<(u64, String)>(&mut c).await
            })
            .await
        else {
            return;
        };
        self.metrics
            .lag_entries
            .set(i64::try_from(n).unwrap_or(i64::MAX));
        let behind = match (id_ms(&newest), id_ms(&from)) {
            (Some(a), Some(b)) => a.saturating_sub(b),
            _ => 0,
        };
        self.metrics.lag_seconds.set(behind as f64 / 1000.0);
    }

    /// OpenMetrics text of the stream's metrics (no `# EOF`).
    pub fn render_metrics(&self, out: &mut String) {
        let m = &self.metrics;
        m.view.set(i64::from(self.in_view()));
        m.held.set(self.outage.lock().map_or(0, |q| q.len() as i64));
        let _ = prometheus_client::encoding::text::encode_registry(out, &m.registry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outage_buffer_keeps_the_newest_entries_up_to_its_bound() {
        let s = ObservationStream::new(
            "t",
            StreamConfig {
                max_entries: 1000,
                queue_entries: 64,
            },
        );
        for a in 0..100u64 {
            s.hold(settled(a));
        }
        let q = s.outage.lock().unwrap();
        assert_eq!(q.len(), 64);
        assert!(matches!(q.front(), Some(Entry::Settled(e)) if e.a == 36));
        assert_eq!(s.metrics.dropped[2].get(), 36);
        assert_eq!(s.alone.load(Ordering::Relaxed), 100);
    }

    fn settled(a: u64) -> Entry {
        Entry::Settled(Settled {
            a,
            out: 1,
            dg: false,
            sc: None,
            core: false,
            co: [0; cohort::KEYS],
            po: 0,
        })
    }

    /// The race a replica met once Redis returned: a request linked here
    /// alone while the view was off, whose entry was held only after the
    /// re-sync had drained the buffer, stayed held (its observation in no
    /// other replica's view) until the next re-sync, 30 s on.
    #[test]
    fn a_request_linked_alone_as_redis_returns_is_taken_by_the_resync_not_left_held() {
        let s = Arc::new(ObservationStream::new(
            "t",
            StreamConfig {
                max_entries: 1000,
                queue_entries: 64,
            },
        ));
        let (inside, linking) = std::sync::mpsc::channel();
        let (finish, go) = std::sync::mpsc::channel::<()>();
        let request = {
            let s = s.clone();
            std::thread::spawn(move || {
                s.record(|view| {
                    inside.send(view).unwrap();
                    go.recv().unwrap();
                    ((), Some(settled(7)))
                })
            })
        };
        assert!(!linking.recv().unwrap(), "linked alone: the view is off");
        // Redis answers again: the view is on and the re-sync drains.
        s.view.store(true, Ordering::Relaxed);
        let resync = {
            let s = s.clone();
            std::thread::spawn(move || s.take_held())
        };
        finish.send(()).unwrap();
        request.join().unwrap();
        let (alone, held) = resync.join().unwrap();
        assert_eq!((alone, held.len()), (1, 1), "the re-sync took the request");
        assert!(s.outage.lock().unwrap().is_empty(), "nothing stays held");
        assert_eq!(s.alone.load(Ordering::Relaxed), 0);
        // The next request is decided on the view and queued, not held.
        s.record(|view| {
            assert!(view);
            ((), Some(settled(8)))
        });
        assert!(s.outage.lock().unwrap().is_empty());
        let queued = s.rx.lock().unwrap().as_mut().unwrap().try_recv();
        assert!(matches!(queued, Ok(Entry::Settled(e)) if e.a == 8));
    }

    #[test]
    fn entries_round_trip_through_json_without_text() {
        let obs = Observation {
            account: AccountId(0xdead_beef),
            anonymous: false,
            input_tokens: 42,
            attrs: ObservedAttrs {
                ja4: Some(1),
                http: Some(2),
                h2: None,
                ip_prefix: Some(3),
                asn: None,
                prompt: Some([7; signature::INDEX_KEYS]),
            },
            request: RequestFacts {
                model: Some("m".into()),
                max_output_tokens: Some(16),
                fill_key: Some(9),
                ..Default::default()
            },
            account_age: Some(86_400 * SECOND),
        };
        let e = Entry::observed(&obs, PhraseHits(5));
        let json = serde_json::to_string(&e).unwrap();
        // (An observation holds no prompt text at all now: the prompt step
        // turned it into features before the engine.)
        assert!(!json.contains("secret"), "{json}");
        assert_eq!(serde_json::from_str::<Entry>(&json).unwrap(), e);
        assert_eq!(id_ms("1733212345678-3"), Some(1_733_212_345_678));
    }
}
