//! Accept step: binds the listeners, runs one single-threaded tokio runtime
//! per worker thread (each with its own upstream pool), accepts connections
//! under the connection cap, terminates TLS, serves HTTP/1.1 and HTTP/2 with
//! hyper, and shuts down gracefully.

pub mod descriptors;
pub mod hello;
pub mod reload;
pub mod tls;

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_rustls::LazyConfigAcceptor;
use tracing::{debug, info, warn};

use crate::app::{deadline, tap, Clock, ConnInfo, Shared};
use crate::config::Config;
use crate::engine::Engine;
use crate::identity::{self, KeyHasher};
use crate::proxy::{self, Upstream, UpstreamClient};
use crate::stack::{Guard, GuardLayer};
use crate::telemetry::metrics::{ConnReject, Metrics};
use tower::Layer as _;

/// The proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A TLS listener's files are unusable.
    #[error("TLS listener {addr}: {source}")]
    Tls {
        /// The listener.
        addr: SocketAddr,
        /// The reason.
        source: tls::TlsError,
    },
    /// The upstream client settings are unusable.
    #[error(transparent)]
    Client(#[from] proxy::ClientError),
    /// A worker thread or runtime could not be created.
    #[error("cannot start worker: {0}")]
    Worker(std::io::Error),
    /// The admin listener could not be bound.
    #[error("cannot listen on {addr} (admin): {source}")]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The state file of manual decisions is unusable.
    #[error("admin.state_path: {0}")]
    State(String),
}

struct Listener {
    tcp: TcpListener,
    index: usize,
    proxy_protocol: bool,
}

/// A running proxy: its bound addresses and the way to stop it.
pub struct Handle {
    addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    _watcher: Option<reload::Watcher>,
}

impl Handle {
    /// The bound listener addresses, in config order (ports resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Shared state (config, counters).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The admin listener's address, if it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Reload the config file now (what SIGHUP does).
    pub fn reload(&self) -> Result<(), crate::config::ConfigError> {
        reload::reload(&self.shared)
    }

    /// Stop accepting; in-flight requests get the configured grace period.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Wait until every worker has finished, then write the tenure file and
    /// flush the audit log.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
        save_tenure(&self.shared);
        if let Some(a) = &self.shared.audit {
            a.close();
        }
        if let Some(r) = &self.shared.record {
            r.close();
        }
    }
}

/// How often the tenure file is written (and once at shutdown).
const TENURE_SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

/// Write the accounts' tenure to `[accounts] tenure_path`, if set (and an
/// identity hash secret keeps account ids across restarts).
fn save_tenure(shared: &Shared) {
    let config = shared.config.load();
    let Some(path) = &config.accounts.tenure_path else {
        return;
    };
    if config.identity.hash_secret.is_none() {
        return;
    }
    let probe = crate::state::tenure_file::probe(&shared.hasher);
    let unix_ms = crate::telemetry::audit::now_unix_ms();
    match crate::state::tenure_file::save(path, &shared.engine, shared.clock.now(), unix_ms, probe)
    {
        Ok(n) => debug!(accounts = n, path = %path.display(), "account tenure written"),
        Err(e) => warn!(path = %path.display(), error = %e, "cannot write the tenure file"),
    }
}

/// Checks of the link index's reach between two warnings about it (the checks are a minute apart).
const REACH_WARN_EVERY: u32 = 10;

/// What the last check of the link index's reach saw.
struct ReachCheck {
    evicted: u64,
    since_warned: u32,
}

impl Default for ReachCheck {
    fn default() -> Self {
        ReachCheck {
            evicted: 0,
            since_warned: REACH_WARN_EVERY,
        }
    }
}

/// When the index evicted keys still in their window since `evicted_before` and reaches back less than the
/// longest rule window: the reach and that window, in seconds.
fn short_reach(
    stats: &crate::engine::link::LinkStats,
    evicted_before: u64,
    policy: &crate::engine::link::LinkPolicy,
) -> Option<(u64, u64)> {
    use crate::engine::SECOND;
    let longest = policy.rules.iter().map(|r| r.window).max().unwrap_or(0);
    (stats.evicted_total > evicted_before && stats.evicted_age < longest)
        .then_some((stats.evicted_age / SECOND, longest / SECOND))
}

/// Warns (at most every [`REACH_WARN_EVERY`] checks) when the link index is too small for the traffic to hold
/// the link windows: linking then sees less far back than the config says (docs/link.md, "Memory").
fn check_link_reach(shared: &Shared, last: &mut ReachCheck) {
    let Some(stats) = shared.engine.link_stats() else {
        return;
    };
    let policy = shared.engine.policy();
    let short = short_reach(&stats, last.evicted, &policy.cluster.link);
    last.evicted = stats.evicted_total;
    last.since_warned = last.since_warned.saturating_add(1);
    if let Some((reach_s, window_s)) = short {
        if last.since_warned >= REACH_WARN_EVERY {
            last.since_warned = 0;
            warn!(
                reach_s,
                window_s,
                max_index_values = policy.cluster.link.max_values,
                "the link index reaches back less than the longest link window on this traffic: \
                 raise [cluster] max_index_values (docs/link.md, \"Memory\")"
            );
        }
    }
}

/// Bind every listener and start the workers. Returns once the sockets are
/// bound, so connections are queued from then on.
pub fn start(config: Config) -> Result<Handle, ServerError> {
    start_with_clock(config, Clock::new())
}

/// [`start`] with the engine on `clock` (started afresh now), e.g. one
/// running faster than real time ([`Clock::with_speed`]).
pub fn start_with_clock(config: Config, clock: Clock) -> Result<Handle, ServerError> {
    let mut bound = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        let tcp = std::net::TcpListener::bind(l.address).map_err(|source| ServerError::Bind {
            addr: l.address,
            source,
        })?;
        tcp.set_nonblocking(true)
            .map_err(|source| ServerError::Bind {
                addr: l.address,
                source,
            })?;
        let tls = match &l.tls {
            None => None,
            Some(files) => Some(ArcSwap::new(tls::server_config(files).map_err(
                |source| ServerError::Tls {
                    addr: l.address,
                    source,
                },
            )?)),
        };
        bound.push((tcp, tls, l.proxy_protocol));
    }
    let addrs = bound
        .iter()
        .map(|(t, _, _)| t.local_addr())
        .collect::<Result<Vec<_>, _>>()
        .map_err(ServerError::Worker)?;

    let upstream_tls = proxy::upstream_tls(&config.upstream)?;
    let workers = config.server.workers.max(1);
    let hasher = match &config.identity.hash_secret {
        Some(secret) => KeyHasher::new(secret),
        None => {
            warn!("no identity hash secret configured: account ids change on every restart");
            KeyHasher::random()
        }
    };
    // With a shared observation stream the engine runs on the stream's
    // time line (Unix time), else from 0 at start.
    let clock = match &config.state {
        crate::config::StateConfig::Redis(r) if r.stream.is_some() => clock.wall(),
        _ => clock.afresh(),
    };
    let engine = Arc::new(Engine::new(
        config.policy_at(clock.now(), crate::telemetry::audit::now_unix_ms()),
    ));
    if let Some(path) = &config.admin.state_path {
        crate::state::manual_file::restore(path, &engine)
            .map_err(ServerError::State)?
            .log(path, "manual decisions", "starting with none");
    }
    if let Some(path) = &config.accounts.tenure_path {
        use crate::state::tenure_file::{probe, restore};
        if config.identity.hash_secret.is_none() {
            warn!(path = %path.display(), "accounts.tenure_path unused: without an identity hash secret account ids change on every restart");
        } else {
            let unix_ms = crate::telemetry::audit::now_unix_ms();
            restore(path, &engine, clock.now(), unix_ms, probe(&hasher))
                .map_err(ServerError::State)?
                .log(path, "account tenure", "the account-age history starts now");
        }
    }
    // The shared store's connections and its sync loop live on a runtime
    // of their own (requests await their calls from the workers).
    let (state, state_rt) = match &config.state {
        crate::config::StateConfig::Local => (crate::state::State::Local, None),
        crate::config::StateConfig::Redis(r) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ServerError::Worker)?;
            let store = {
                let _entered = rt.enter();
                crate::state::redis::RedisStore::new(r, rt.handle().clone())
                    .map_err(ServerError::State)?
            };
            info!(url = %r.url, cluster = r.cluster, on_failure = r.on_failure.as_str(), "state shared through Redis");
            (crate::state::State::Redis(Arc::new(store)), Some(rt))
        }
    };
    let admin_listener = match config.admin.address {
        None => None,
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| ServerError::Admin { addr, source })?;
            Some(l)
        }
    };
    let admin_addr = match &admin_listener {
        Some(l) => Some(l.local_addr().map_err(ServerError::Worker)?),
        None => None,
    };
    let mut tls_slots = Vec::with_capacity(bound.len());
    let mut listen_slots = Vec::with_capacity(bound.len());
    for (tcp, tls, pp) in bound {
        tls_slots.push(tls);
        listen_slots.push((tcp, pp));
    }
    let audit = match &config.audit.path {
        None => None,
        Some(p) => Some(
            crate::telemetry::audit::AuditLog::open(p, config.audit.queue_capacity)
                .map_err(|e| ServerError::State(format!("audit.path {}: {e}", p.display())))?,
        ),
    };
    let record = match &config.record {
        None => None,
        Some((p, cap)) => Some(
            crate::telemetry::audit::JsonLines::open(p, *cap)
                .map_err(|e| ServerError::State(format!("record.path {}: {e}", p.display())))?,
        ),
    };
    let recent = admin_listener.as_ref().map(|_| Default::default());
    let shared = Arc::new(Shared {
        audit,
        record,
        recent,
        tls: tls_slots,
        ..Shared::new(config, engine, state, hasher, clock, upstream_tls)
    });
    // Idle state is swept by housekeeping, off the request threads.
    shared.engine.maintain_outside();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let mut threads = Vec::with_capacity(workers);
    for n in 0..workers {
        let mut listeners = Vec::with_capacity(listen_slots.len());
        for (index, (tcp, pp)) in listen_slots.iter().enumerate() {
            let tcp = tcp.try_clone().map_err(ServerError::Worker)?;
            listeners.push((tcp, index, *pp));
        }
        let shared = shared.clone();
        let shutdown = shutdown_rx.clone();
        let client = proxy::upstream_client(shared.upstream_tls.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServerError::Worker)?;
        let t = std::thread::Builder::new()
            .name(format!("dg-worker-{n}"))
            .spawn(move || rt.block_on(worker_main(shared, client, listeners, shutdown)))
            .map_err(ServerError::Worker)?;
        threads.push(t);
    }
    drop(listen_slots);
    if let (Some(rt), Some(store)) = (state_rt, shared.state.redis().cloned()) {
        let shared = shared.clone();
        let shutdown = shutdown_rx.clone();
        let t = std::thread::Builder::new()
            .name(crate::state::redis::STATE_THREAD.into())
            .spawn(move || {
                let engine = shared.engine.clone();
                let state_path = move || shared.config.load().admin.state_path.clone();
                rt.block_on(store.run_sync(engine, state_path, shutdown))
            })
            .map_err(ServerError::Worker)?;
        threads.push(t);
    }
    // Housekeeping (idle state, indicators, tenure file, console history)
    // and, when configured, the admin API share one thread of their own.
    {
        let shared = shared.clone();
        let mut shutdown = shutdown_rx.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServerError::Worker)?;
        let t = std::thread::Builder::new()
            .name("dg-admin".into())
            .spawn(move || {
                rt.block_on(async move {
                    let housekeeping = {
                        let shared = shared.clone();
                        async move {
                            let mut sweep =
                                tokio::time::interval(std::time::Duration::from_secs(60));
                            let mut maintain =
                                tokio::time::interval(std::time::Duration::from_secs(1));
                            maintain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                            // A full account store asks for room; new accounts wait
                            // on their network's budget until it is made. The link
                            // index's next table is made here too, before its growth,
                            // and its spill lists are compacted a step at a time.
                            let mut room =
                                tokio::time::interval(std::time::Duration::from_millis(100));
                            room.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                            let mut tenure = tokio::time::interval_at(
                                tokio::time::Instant::now() + TENURE_SAVE_INTERVAL,
                                TENURE_SAVE_INTERVAL,
                            );
                            let mut sample =
                                tokio::time::interval(crate::telemetry::history::SAMPLE_INTERVAL);
                            sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                            let mut reach = ReachCheck::default();
                            loop {
                                tokio::select! {
                                    _ = sweep.tick() => {
                                        crate::admin::sweep_indicators(&shared);
                                        check_link_reach(&shared, &mut reach);
                                    }
                                    _ = maintain.tick() => {
                                        let started = std::time::Instant::now();
                                        if shared.engine.maintain_if_due(shared.clock.now()) {
                                            shared.metrics.sweep.observe(started.elapsed());
                                        }
                                    }
                                    _ = room.tick() => {
                                        let started = std::time::Instant::now();
                                        if shared.engine.make_room_if_wanted(shared.clock.now()) {
                                            shared.metrics.sweep.observe(started.elapsed());
                                        }
                                        let started = std::time::Instant::now();
                                        if let Some(step) = shared.engine.compact_links_step() {
                                            shared.metrics.link_compaction_step.observe(started.elapsed());
                                            // What the last step leaves goes after it is timed.
                                            drop(step);
                                        }
                                        // Off this thread: the admin API shares it.
                                        if let Some(len) = shared.engine.index_growth_wanted() {
                                            let shared = shared.clone();
                                            let _ = tokio::task::spawn_blocking(move || {
                                                shared.engine.grow_index_ahead(len)
                                            })
                                            .await;
                                        }
                                    }
                                    _ = tenure.tick() => {
                                        let shared = shared.clone();
                                        let _ = tokio::task::spawn_blocking(move || save_tenure(&shared)).await;
                                    }
                                    // Histories only serve the console.
                                    _ = sample.tick(), if shared.recent.is_some() => {
                                        crate::admin::sample_history(&shared)
                                    }
                                }
                            }
                        }
                    };
                    let admin = async {
                        match admin_listener.map(TcpListener::from_std) {
                            Some(Ok(l)) => {
                                crate::admin::serve(l, shared.clone(), shutdown.clone()).await
                            }
                            Some(Err(e)) => {
                                warn!(error = %e, "admin listener unusable");
                                let _ = shutdown.wait_for(|s| *s).await;
                            }
                            None => {
                                let _ = shutdown.wait_for(|s| *s).await;
                            }
                        }
                    };
                    tokio::select! {
                        () = admin => {}
                        () = housekeeping => {}
                    }
                })
            })
            .map_err(ServerError::Worker)?;
        threads.push(t);
    }
    for a in &addrs {
        info!(address = %a, workers, "listening");
    }
    if let Some(a) = admin_addr {
        info!(address = %a, "admin API listening");
    }
    let watcher = if shared.config.load().admin.watch_config {
        match reload::Watcher::start(shared.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, "cannot watch the config files; reload with SIGHUP");
                None
            }
        }
    } else {
        None
    };
    Ok(Handle {
        addrs,
        admin_addr,
        shutdown: shutdown_tx,
        threads,
        shared,
        _watcher: watcher,
    })
}

/// hyper's connection settings for a new client connection, from the
/// config in force when it was accepted (a reload applies to the next
/// connections).
pub(crate) fn http_builder(config: &Config, http: Http) -> auto::Builder<TokioExecutor> {
    let l = &config.limits;
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(l.request_head_timeout)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(l.h2_keepalive_interval)
        .keep_alive_timeout(l.h2_keepalive_timeout);
    match http {
        Http::One => b.http1_only(),
        Http::Two => b.http2_only(),
        Http::Unknown => b,
    }
}

/// The HTTP version a connection speaks, when its ALPN or its first bytes
/// already say so.
///
/// Serving a known version directly skips hyper-util's own sniff, which
/// reads the first 24 bytes apart and hands them to hyper as a first read
/// of their own: hyper's 8 KiB read buffer then had to grow for the second
/// read, to 16 KiB, and stayed that size for the connection's life (8 KiB
/// more per open stream; BENCHMARKS.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Http {
    One,
    Two,
    /// Not decided yet (e.g. only part of the HTTP/2 preface has arrived):
    /// hyper-util sniffs.
    Unknown,
}

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Http {
    /// From a plain connection's first bytes.
    fn sniff(first: &[u8]) -> Http {
        let n = first.len().min(H2_PREFACE.len());
        if first[..n] != H2_PREFACE[..n] {
            Http::One
        } else if n == H2_PREFACE.len() {
            Http::Two
        } else {
            Http::Unknown
        }
    }

    /// From the protocol a TLS handshake agreed on.
    fn from_alpn(alpn: Option<&[u8]>) -> Http {
        match alpn {
            Some(b"h2") => Http::Two,
            Some(b"http/1.1") => Http::One,
            _ => Http::Unknown,
        }
    }
}

async fn worker_main(
    shared: Arc<Shared>,
    client: UpstreamClient,
    std_listeners: Vec<(std::net::TcpListener, usize, bool)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut listeners = Vec::with_capacity(std_listeners.len());
    for (tcp, index, proxy_protocol) in std_listeners {
        match TcpListener::from_std(tcp) {
            Ok(tcp) => listeners.push(Listener {
                tcp,
                index,
                proxy_protocol,
            }),
            Err(e) => warn!(error = %e, "worker cannot register listener"),
        }
    }
    let worker = Arc::new(Worker {
        guard: GuardLayer::new(shared.clone()).layer(Upstream::new(client, shared.clone())),
        shared: shared.clone(),
    });
    // Every connection holds a receiver: the sender sees when all are gone.
    let (open_tx, open_rx) = watch::channel(());

    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            a = accept_any(&listeners) => a,
        };
        match accepted {
            (i, Ok((stream, peer))) => {
                let Ok(permit) = shared.conn_permits.clone().try_acquire_owned() else {
                    shared.metrics.conn_rejected(ConnReject::OverCap);
                    debug!(%peer, "connection cap reached, closing");
                    drop(stream);
                    continue;
                };
                let Ok(slot) = address_slot(&shared, peer.ip()) else {
                    shared.metrics.conn_rejected(ConnReject::OverAddressShare);
                    debug!(%peer, "address connection share reached, closing");
                    drop(stream);
                    continue;
                };
                let tls = shared.tls[listeners[i].index]
                    .as_ref()
                    .map(|t| t.load_full());
                let proxy_protocol = listeners[i].proxy_protocol;
                tokio::spawn(serve_connection(
                    worker.clone(),
                    stream,
                    peer,
                    (tls, proxy_protocol),
                    Held {
                        shutdown: shutdown.clone(),
                        _open: open_rx.clone(),
                        _permit: permit,
                        _slot: slot,
                    },
                ));
            }
            (_, Err(e)) => {
                // Out of file descriptors and the like: back off briefly.
                shared.accept_failed("client", &e);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    drop(listeners);
    drop(open_rx);
    let grace = shared.config.load().server.shutdown_grace;
    let open = open_tx.receiver_count();
    if open > 0 {
        info!(open, ?grace, "shutting down: waiting for open connections");
    }
    if tokio::time::timeout(grace, open_tx.closed()).await.is_err() {
        warn!(
            ?grace,
            "grace period over, closing the remaining connections"
        );
    }
}

async fn accept_any(listeners: &[Listener]) -> (usize, std::io::Result<(TcpStream, SocketAddr)>) {
    poll_fn(|cx| {
        for (i, l) in listeners.iter().enumerate() {
            if let Poll::Ready(r) = l.tcp.poll_accept(cx) {
                return Poll::Ready((i, r));
            }
        }
        Poll::Pending
    })
    .await
}

/// A slot in the connection cap (and in its address's share), taken when
/// the connection was accepted; per-address when the peer is not a trusted
/// proxy and the share is on.
fn address_slot(
    shared: &Arc<Shared>,
    ip: std::net::IpAddr,
) -> Result<Option<deadline::AddressSlot>, ()> {
    let config = shared.config.load();
    let limit = config.limits.max_connections_per_address;
    if limit == 0 || identity::is_trusted(ip, &config.identity.trusted_proxies) {
        return Ok(None);
    }
    shared.addresses.take(ip, limit).map(Some).ok_or(())
}

/// What an open connection holds until it ends: its slots, the worker's
/// count of open connections, and the shutdown signal.
struct Held {
    shutdown: watch::Receiver<bool>,
    _open: watch::Receiver<()>,
    _permit: OwnedSemaphorePermit,
    _slot: Option<deadline::AddressSlot>,
}

async fn serve_connection(
    worker: Arc<Worker>,
    stream: TcpStream,
    peer: SocketAddr,
    (tls, proxy_protocol): (Option<Arc<rustls::ServerConfig>>, bool),
    mut held: Held,
) {
    let metrics = &worker.shared.metrics;
    let _open = metrics.conn_opened();
    let _ = stream.set_nodelay(true);
    let deadline = worker.shared.config.load().limits.handshake_timeout;
    let trusted = proxy_protocol && {
        let config = worker.shared.config.load();
        identity::is_trusted(peer.ip(), &config.identity.trusted_proxies)
    };
    let is_tls = tls.is_some();
    let accepted =
        tokio::time::timeout(deadline, accept_io(stream, peer, tls, trusted, metrics)).await;
    match accepted {
        Ok(Ok((io, conn, http))) => {
            // Behind a trusted PROXY-protocol front the share is the
            // announced client's: the front itself is exempt.
            if trusted && conn.client.ip() != peer.ip() {
                match address_slot(&worker.shared, conn.client.ip()) {
                    Ok(slot) => held._slot = slot,
                    Err(()) => {
                        metrics.conn_rejected(ConnReject::OverAddressShare);
                        debug!(%peer, client = %conn.client, "address connection share reached, closing");
                        return;
                    }
                }
            }
            let (io, tap) = tap::Tapped::new(io);
            let conn = ConnInfo {
                tap: Some(tap),
                ..conn
            };
            serve_http(worker.clone(), TokioIo::new(io), conn, http, held).await;
        }
        Ok(Err(reason)) => {
            debug!(%peer, ?reason, "connection closed before HTTP");
            metrics.conn_rejected(reason);
        }
        Err(_) => {
            debug!(%peer, tls = is_tls, "handshake deadline passed");
            metrics.conn_rejected(ConnReject::HandshakeTimeout);
        }
    }
}

/// Plain or TLS-terminated client bytes.
enum ClientIo {
    Plain(hello::Rewind<TcpStream>),
    Tls(Box<tokio_rustls::server::TlsStream<hello::Rewind<TcpStream>>>),
}

/// Everything before HTTP: an optional PROXY header (only from a trusted
/// peer), then either the first client bytes (plain) or the ClientHello
/// capture and TLS handshake.
async fn accept_io(
    mut stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    read_proxy_header: bool,
    metrics: &Metrics,
) -> Result<(ClientIo, ConnInfo, Http), ConnReject> {
    let local = stream.local_addr().unwrap_or(peer);
    let hello_err = |e| match e {
        hello::CaptureError::Hello(h) => ConnReject::Hello(h),
        hello::CaptureError::Io(_) => ConnReject::Io,
    };
    let (client, buffered) = if read_proxy_header {
        let (source, rest) = hello::proxy_header(&mut stream).await.map_err(hello_err)?;
        (source.unwrap_or(peer), rest)
    } else {
        (peer, bytes::BytesMut::new())
    };
    let mut conn = ConnInfo {
        peer,
        client,
        local,
        tls: tls.is_some(),
        ja4: None,
        tap: None,
    };
    match tls {
        Some(config) => {
            let hello = hello::capture(&mut stream, buffered)
                .await
                .map_err(hello_err)?;
            conn.ja4 = Some(hello.ja4);
            if hello.sni_is_ip {
                metrics.sni_ip();
            }
            let rewind = hello::Rewind::new(hello.buf, stream);
            let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), rewind)
                .await
                .map_err(|_| ConnReject::TlsHandshake)?;
            let tls = start
                .into_stream(config)
                .await
                .map_err(|_| ConnReject::TlsHandshake)?;
            let http = Http::from_alpn(tls.get_ref().1.alpn_protocol());
            Ok((ClientIo::Tls(Box::new(tls)), conn, http))
        }
        None => {
            let http = if buffered.is_empty() {
                // A client must say something before the deadline; hyper's
                // own header timeout only starts once HTTP/1 is chosen.
                let mut first = [0u8; H2_PREFACE.len()];
                match stream.peek(&mut first).await {
                    Ok(n) if n > 0 => Http::sniff(&first[..n]),
                    _ => return Err(ConnReject::Io),
                }
            } else {
                Http::sniff(&buffered)
            };
            Ok((
                ClientIo::Plain(hello::Rewind::new(buffered, stream)),
                conn,
                http,
            ))
        }
    }
}

impl tokio::io::AsyncRead for ClientIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            ClientIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for ClientIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            ClientIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            ClientIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            ClientIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            ClientIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientIo::Plain(s) => s.is_write_vectored(),
            ClientIo::Tls(s) => s.is_write_vectored(),
        }
    }
}

async fn serve_http<I>(worker: Arc<Worker>, io: I, conn: ConnInfo, http: Http, held: Held)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let config = worker.shared.config.load_full();
    let deadlines = deadline::Deadlines::from_limits(&config.limits);
    let watch = deadline::ConnWatch::new();
    let svc = ProxyService {
        worker: worker.clone(),
        conn: Arc::new(conn),
        watch: watch.clone(),
    };
    let served = http_builder(&config, http)
        .serve_connection(io, svc)
        .into_owned();
    tokio::pin!(served);
    let graceful = |c: std::pin::Pin<
        &mut auto::Connection<'static, I, ProxyService, TokioExecutor>,
    >| { c.graceful_shutdown() };
    match deadline::drive(served, graceful, &watch, &deadlines, &held.shutdown).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%peer, error = %e, "connection ended with an error"),
        Err(cut) => {
            debug!(%peer, reason = cut.as_str(), requests = watch.requests(), "connection closed");
            worker.shared.metrics.conn_cut(cut);
        }
    }
}

/// Per-worker state: lives on one thread's runtime.
pub(crate) struct Worker {
    /// Shared state.
    shared: Arc<Shared>,
    /// The guard around this worker's pooled upstream client: the same
    /// tower layer a gateway embedding distill-guard uses.
    guard: Guard<Upstream>,
}

/// hyper service for one connection: hands each request to the guard,
/// with the connection its accept path saw.
#[derive(Clone)]
struct ProxyService {
    worker: Arc<Worker>,
    conn: Arc<ConnInfo>,
    watch: Arc<deadline::ConnWatch>,
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response =
        http::Response<deadline::Watched<crate::proxy::body::ResponseBody<proxy::h1::Body>>>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let worker = self.worker.clone();
        let conn = self.conn.clone();
        // In flight from here until its response body is dropped.
        let watch = self.watch.request();
        Box::pin(async move {
            let resp = worker.guard.serve(&conn, req).await;
            Ok(resp.map(|b| deadline::Watched::new(b, watch)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every request's future is built and then moved whole into its box
    /// (`ProxyService::call`), so its size is copied per request. The guard's
    /// was 5 840 bytes while it held the Redis path's state on the local
    /// store and the settlement across the upstream call (BENCHMARKS.md, "A
    /// request's future"); 3 080 since.
    #[tokio::test]
    async fn a_request_future_holds_no_state_it_seldom_needs() {
        let cfg = crate::config::parse(
            std::path::Path::new("test.toml"),
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n",
        )
        .expect("config");
        let tls = crate::proxy::upstream_tls(&cfg.upstream).expect("upstream tls");
        let layer = GuardLayer::from_config(cfg).expect("guard");
        let shared = layer.clone().layer(()).shared().clone();
        let guard = layer.layer(Upstream::new(proxy::h1::Client::new(tls), shared));
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("address");
        let conn = ConnInfo::from_peer(addr, addr, false);
        let req = Request::new(http_body_util::Empty::<bytes::Bytes>::new());
        let served = guard.serve::<_, proxy::h1::Body>(&conn, req);
        let size = std::mem::size_of_val(&served);
        assert!(size <= 3584, "the guard's future is {size} bytes");
    }

    #[test]
    fn the_first_bytes_decide_the_version_once_they_can() {
        assert_eq!(Http::sniff(b"POST /v1/messages HTTP/1.1\r\n"), Http::One);
        assert_eq!(Http::sniff(b"G"), Http::One);
        // "PRI" could still be the HTTP/2 preface, or an HTTP/1 method.
        assert_eq!(Http::sniff(b"PRI * HTTP/2"), Http::Unknown);
        assert_eq!(Http::sniff(b"PRI / HTTP/1.1\r\n"), Http::One);
        assert_eq!(Http::sniff(H2_PREFACE), Http::Two);
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(&[0, 0, 0, 4]);
        assert_eq!(Http::sniff(&more), Http::Two);
    }

    #[test]
    fn a_short_reach_is_reported_only_while_keys_go_early() {
        use crate::engine::link::{LinkPolicy, LinkStats};
        use crate::engine::SECOND as SEC;
        let policy = LinkPolicy::default(); // windows of ten minutes
        let stats = |evicted_total, age_s: u64| LinkStats {
            evicted_total,
            evicted_age: age_s * SEC,
            ..LinkStats::default()
        };
        assert_eq!(
            short_reach(&stats(0, 0), 0, &policy),
            None,
            "nothing evicted"
        );
        assert_eq!(short_reach(&stats(5, 120), 0, &policy), Some((120, 600)));
        assert_eq!(short_reach(&stats(5, 120), 5, &policy), None, "none since");
        assert_eq!(
            short_reach(&stats(9, 900), 5, &policy),
            None,
            "reaches past the window"
        );
    }

    #[test]
    fn alpn_decides_the_version_when_there_is_one() {
        assert_eq!(Http::from_alpn(Some(b"h2")), Http::Two);
        assert_eq!(Http::from_alpn(Some(b"http/1.1")), Http::One);
        assert_eq!(Http::from_alpn(None), Http::Unknown);
    }
}
