//! The process and its connections, as every step sees them: the state
//! shared by all workers ([`Shared`]: config, engine, state backend,
//! telemetry), the engine's [`Clock`], and what an
//! accepted connection knows of itself ([`ConnInfo`], its [`deadline`]s and
//! HTTP [`tap`]). The server, the request path and the admin API import it;
//! it imports none of them.

/// `AsyncWrite` for a read-side wrapper `$ty<S>` whose writes go straight to
/// its `inner` stream (used by the ClientHello rewind and the HTTP tap).
macro_rules! delegate_async_write {
    ($ty:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty<S> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
        }
    };
}

pub mod deadline;
pub mod tap;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use tracing::warn;

use crate::config::Config;
use crate::engine::{Engine, Nanos};
use crate::fingerprint::Ja4Fingerprint;
use crate::identity::KeyHasher;
use crate::telemetry::metrics::Metrics;

/// State shared by all workers.
pub struct Shared {
    /// The policy and settings in force (swapped whole on reload).
    pub config: ArcSwap<Config>,
    /// Open client connections, capped by `limits.max_connections`.
    pub(crate) conn_permits: Arc<Semaphore>,
    /// Open client connections per address, capped by
    /// `limits.max_connections_per_address`.
    pub(crate) addresses: Arc<deadline::AddressShares>,
    /// Process metrics.
    pub metrics: Metrics,
    /// rustls settings for the upstream.
    pub(crate) upstream_tls: Arc<rustls::ClientConfig>,
    /// The policy engine.
    pub engine: Arc<Engine>,
    /// Where budgets and manual decisions are kept (`[state]`).
    pub state: crate::state::State,
    /// API key → account id.
    pub hasher: KeyHasher,
    /// The engine's clock: monotonic nanoseconds since start.
    pub clock: Clock,
    /// Fingerprints seen per cluster, for indicator export.
    pub indicators: crate::telemetry::indicators::Indicators,
    /// The audit log, when configured (opened at start; its path needs a
    /// restart to change).
    pub audit: Option<crate::telemetry::audit::AuditLog>,
    /// The traffic record, when configured.
    pub record: Option<crate::telemetry::audit::JsonLines<crate::replay::TrafficRecord>>,
    /// The latest decisions for the console, while the admin API is served.
    pub recent: Option<crate::telemetry::recent::RecentDecisions>,
    /// Sampled score histories for the console.
    pub history: crate::telemetry::history::History,
    /// Each listener's TLS settings (None for plain listeners), swapped when
    /// certificates are reloaded; handshakes pick up the current one.
    pub tls: Vec<Option<ArcSwap<rustls::ServerConfig>>>,
    /// Warnings a client can cause (a failed accept when descriptors run
    /// out) are logged within this budget and counted in full in metrics.
    pub(crate) warnings: governor::DefaultDirectRateLimiter,
}

/// At most this many rate-limited warnings a minute, across workers.
pub(crate) const WARNINGS_PER_MINUTE: u32 = 6;

impl Shared {
    /// The state of a process deciding with `config`, `engine` and `state`:
    /// no audit log, traffic record, console or TLS listeners yet (the
    /// server sets those it has).
    pub fn new(
        config: Config,
        engine: Arc<Engine>,
        state: crate::state::State,
        hasher: KeyHasher,
        clock: Clock,
        upstream_tls: Arc<rustls::ClientConfig>,
    ) -> Shared {
        Shared {
            conn_permits: Arc::new(Semaphore::new(config.limits.max_connections)),
            addresses: Default::default(),
            metrics: Metrics::default(),
            upstream_tls,
            engine,
            state,
            hasher,
            clock,
            indicators: Default::default(),
            audit: None,
            record: None,
            recent: None,
            history: Default::default(),
            tls: Vec::new(),
            config: ArcSwap::from_pointee(config),
            warnings: governor::RateLimiter::direct(governor::Quota::per_minute(
                std::num::NonZeroU32::new(WARNINGS_PER_MINUTE).unwrap_or(std::num::NonZeroU32::MIN),
            )),
        }
    }

    /// `accept` failed on a `listener` ("client" or "admin"): out of file
    /// descriptors and the like, which clients can cause by opening
    /// connections. Counted every time; logged within a budget.
    pub(crate) fn accept_failed(&self, listener: &'static str, e: &std::io::Error) {
        self.metrics.accept_error();
        if self.warnings.check().is_ok() {
            warn!(
                listener,
                error = %e,
                failed_so_far = self.metrics.accept_error_count(),
                "accept failed (logged at most {WARNINGS_PER_MINUTE} times a minute)"
            );
        }
    }
}

/// Monotonic time for the engine (which never reads a clock itself).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: std::time::Instant,
    /// Engine time at `origin` (0, or the Unix time for [`Clock::wall`]).
    base: Nanos,
    /// Engine nanoseconds per real nanosecond (1.0 except in `demo
    /// --traffic`, which plays a scenario faster than real time).
    speed: f64,
    /// Engine time set by whoever drives it (`demo --traffic`'s player: the
    /// scenario time of the latest request sent), instead of the real time
    /// since `origin`.
    driven: Option<&'static std::sync::atomic::AtomicU64>,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        Clock {
            origin: std::time::Instant::now(),
            base: 0,
            speed: 1.0,
            driven: None,
        }
    }

    /// A clock whose time is what the returned handle says (nanoseconds,
    /// only ever raised: store with `fetch_max`), for a player that sends a
    /// scenario's requests `speed` times faster than real time: the engine
    /// sees the scenario's own time line however far a loaded machine makes
    /// the player lag, and a slow-down of `d` engine time waits `d / speed`.
    /// The handle lives as long as the process (one per demo run).
    pub fn driven(speed: f64) -> (Clock, &'static std::sync::atomic::AtomicU64) {
        let handle: &'static std::sync::atomic::AtomicU64 =
            Box::leak(Box::new(std::sync::atomic::AtomicU64::new(0)));
        let clock = Clock {
            driven: Some(handle),
            ..Clock::with_speed(speed)
        };
        (clock, handle)
    }

    /// `self`'s speed on a clock that starts at the Unix time in
    /// nanoseconds and runs monotonically from there: the time line of the
    /// shared observation stream (whose entries carry the Redis server's
    /// milliseconds), so a replica's own requests and the stream's entries
    /// are on one clock (give or take the skew between hosts).
    pub fn wall(self) -> Clock {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Clock {
            origin: std::time::Instant::now(),
            base: unix,
            speed: self.speed,
            driven: self.driven,
        }
    }

    /// A clock starting now that runs `speed` times faster than real time
    /// (for demos replaying a scenario; values that are not finite and
    /// positive mean 1.0).
    pub fn with_speed(speed: f64) -> Clock {
        Clock {
            speed: if speed.is_finite() && speed > 0.0 {
                speed
            } else {
                1.0
            },
            ..Clock::new()
        }
    }

    /// `self` started afresh now (from 0; speed and driver kept).
    pub fn afresh(self) -> Clock {
        Clock {
            origin: std::time::Instant::now(),
            base: 0,
            ..self
        }
    }

    /// How many times faster than real time this clock runs.
    pub fn speed(&self) -> f64 {
        self.speed
    }

    /// The real time an engine-time span takes: the same, unless the clock
    /// runs faster than real time (`demo --traffic`).
    pub fn real(&self, span: Nanos) -> std::time::Duration {
        std::time::Duration::from_nanos(span).div_f64(self.speed)
    }

    /// Nanoseconds since the clock started (plus its base).
    pub fn now(&self) -> Nanos {
        if let Some(t) = self.driven {
            return self
                .base
                .saturating_add(t.load(std::sync::atomic::Ordering::Relaxed));
        }
        let real = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let elapsed = if self.speed == 1.0 {
            real
        } else {
            // Saturating float-to-int conversion.
            (real as f64 * self.speed) as u64
        };
        self.base.saturating_add(elapsed)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// What one accepted connection knows about itself.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The socket peer.
    pub peer: SocketAddr,
    /// The client: the peer, or the source a trusted PROXY header announced.
    pub client: SocketAddr,
    /// The local address it arrived on.
    pub local: SocketAddr,
    /// Whether TLS was terminated here.
    pub tls: bool,
    /// JA4 of the ClientHello (TLS listeners only).
    pub ja4: Option<Ja4Fingerprint>,
    /// HTTP fingerprints seen on this connection's read side.
    pub tap: Option<tap::TapHandle>,
}

impl ConnInfo {
    /// A connection known only by its addresses: what a gateway embedding
    /// the guard as a tower layer knows (no ClientHello capture, no tap, so
    /// no JA4 and no HTTP fingerprint). Insert it into each request's
    /// extensions.
    pub fn from_peer(peer: SocketAddr, local: SocketAddr, tls: bool) -> ConnInfo {
        ConnInfo {
            peer,
            client: peer,
            local,
            tls,
            ja4: None,
            tap: None,
        }
    }
}
