//! Connection deadlines: what closes a connection that holds a slot and does
//! nothing useful with it, on every protocol. Each connection has one small
//! shared record ([`ConnWatch`]) that the request path updates (a request
//! starts; its response yields a frame, is read on, or ends) and one timer
//! ([`drive`]) that closes the connection when no first request came in
//! time, when nothing was in flight for too long, or when a response waited
//! too long for the client to read it. [`AddressShares`] caps the
//! connections one client address may hold.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Limits;
pub use crate::telemetry::metrics::Expired;

/// The deadlines one connection runs under (read from the config when it
/// was accepted).
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Accepted → first complete request head.
    pub first_request: Duration,
    /// Nothing in flight for this long → closed gracefully.
    pub idle: Duration,
    /// A response frame not taken by the client for this long → closed.
    pub write_stall: Duration,
}

impl Deadlines {
    /// The client listeners' deadlines.
    pub fn from_limits(l: &Limits) -> Deadlines {
        Deadlines {
            first_request: l.request_head_timeout,
            idle: l.idle_connection_timeout,
            write_stall: l.write_stall_timeout,
        }
    }

    /// The furthest the timer looks ahead: a deadline that is not running
    /// yet (the connection going idle, a response starting to wait for the
    /// client) starts no earlier than now, so it passes no earlier than now
    /// plus the shorter of those two.
    fn horizon(&self) -> Duration {
        self.idle.min(self.write_stall)
    }
}

/// What one connection is doing, as the deadlines need it.
#[derive(Debug)]
pub struct ConnWatch {
    origin: Instant,
    requests: AtomicU64,
    active: AtomicU32,
    /// Milliseconds since `origin` when `active` last fell to 0.
    idle_since_ms: AtomicU64,
    /// Each in-flight response's "waiting for the client since" clock.
    responses: Mutex<Vec<Weak<Waiting>>>,
}

/// One response's "waiting for the client since" clock, with its
/// connection's origin copied beside it: a streamed frame reads the clock
/// and stores here, and with thousands of open streams each frame's first
/// touch of a stream's state is a cache miss. Aligned so that the `Arc`
/// holding it (two counts and this) is one 64-byte line.
#[derive(Debug)]
#[repr(align(32))]
struct Waiting {
    /// 0: not waiting on the client; else 1 + ms since `origin` when the
    /// response began waiting for the client to read.
    since: AtomicU64,
    origin: Instant,
}

impl Waiting {
    fn now_ms(&self) -> u64 {
        ms_since(self.origin)
    }
}

/// Milliseconds from `origin` to now.
fn ms_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl ConnWatch {
    /// A connection that starts now.
    pub fn new() -> Arc<ConnWatch> {
        Arc::new(ConnWatch {
            origin: Instant::now(),
            requests: AtomicU64::new(0),
            active: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            responses: Mutex::new(Vec::new()),
        })
    }

    fn now_ms(&self) -> u64 {
        ms_since(self.origin)
    }

    /// A request head arrived: it is in flight until the returned value
    /// (attached to its response body) is dropped.
    pub fn request(self: &Arc<Self>) -> RequestWatch {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.active.fetch_add(1, Ordering::SeqCst);
        let waiting = Arc::new(Waiting {
            since: AtomicU64::new(0),
            origin: self.origin,
        });
        if let Ok(mut r) = self.responses.lock() {
            r.retain(|w| w.strong_count() > 0);
            r.push(Arc::downgrade(&waiting));
        }
        RequestWatch {
            conn: self.clone(),
            waiting,
        }
    }

    /// Requests started on this connection.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// The deadline that has passed now, if any.
    pub fn check(&self, d: &Deadlines) -> Option<Expired> {
        self.look(d).err()
    }

    /// The deadline that has passed now, or how many milliseconds from
    /// now the next one can pass at the earliest: the earliest of those
    /// running, and of those that may start later ([`Deadlines::horizon`]).
    fn look(&self, d: &Deadlines) -> Result<u64, Expired> {
        let now = self.now_ms();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let left =
            |since: u64, limit: Duration| (since.saturating_add(ms(limit))).saturating_sub(now);
        let horizon = ms(d.horizon());
        if self.requests.load(Ordering::SeqCst) == 0 {
            return match left(0, d.first_request) {
                0 => Err(Expired::FirstRequest),
                l => Ok(l.min(horizon)),
            };
        }
        if self.active.load(Ordering::SeqCst) == 0 {
            let since = self.idle_since_ms.load(Ordering::SeqCst);
            return match left(since, d.idle) {
                0 => Err(Expired::Idle),
                l => Ok(l.min(horizon)),
            };
        }
        let mut next = horizon;
        if let Ok(r) = self.responses.lock() {
            for w in r.iter().filter_map(Weak::upgrade) {
                let since = w.since.load(Ordering::SeqCst);
                if since > 0 {
                    match left(since - 1, d.write_stall) {
                        0 => return Err(Expired::WriteStall),
                        l => next = next.min(l),
                    }
                }
            }
        }
        Ok(next)
    }

    /// Resolves when a deadline passes, to the millisecond. The timer
    /// sleeps until the earliest moment one can pass (at most
    /// [`Deadlines::horizon`] ahead), not on a fixed tick: an open stream
    /// costs one timer wake a minute with the default deadlines, not one a
    /// second.
    pub async fn expired(&self, d: &Deadlines) -> Expired {
        loop {
            match self.look(d) {
                Err(e) => return e,
                Ok(ms) => tokio::time::sleep(Duration::from_millis(ms.max(1))).await,
            }
        }
    }
}

/// One request in flight on a watched connection.
#[derive(Debug)]
pub struct RequestWatch {
    conn: Arc<ConnWatch>,
    waiting: Arc<Waiting>,
}

impl Drop for RequestWatch {
    fn drop(&mut self) {
        self.waiting.since.store(0, Ordering::SeqCst);
        self.conn
            .idle_since_ms
            .store(self.conn.now_ms(), Ordering::SeqCst);
        self.conn.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body whose frames are watched: after yielding a frame it
/// waits for the client (the connection writes it, then asks for more);
/// asked again, it is not waiting. Dropping it ends the request.
#[derive(Debug)]
pub struct Watched<B> {
    inner: B,
    watch: RequestWatch,
}

impl<B> Watched<B> {
    /// `inner`, in flight under `watch`.
    pub fn new(inner: B, watch: RequestWatch) -> Self {
        Watched { inner, watch }
    }
}

impl<B> Body for Watched<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        // Relaxed: the clock is one value, read by the connection's timer
        // alone; it orders nothing else.
        let waiting = &this.watch.waiting;
        waiting.since.store(0, Ordering::Relaxed);
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &r {
            waiting.since.store(waiting.now_ms() + 1, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How long a connection closed for idleness gets to finish gracefully
/// (an HTTP/1 client in the middle of a head) before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Drive `conn` to its end under `watch`'s deadlines and the process
/// shutdown signal. Shutdown and idleness close it gracefully (`graceful`);
/// a missed first request or a write stall drops it at once. Returns the
/// connection's own result, or the deadline that cut it.
///
/// The deadlines and the shutdown signal are watched by a task of their
/// own ([`cut`]), which tells this one through a oneshot: the connection
/// wakes for every read and write, and a timer and a watch polled beside
/// it would be polled on each of those wakes.
pub async fn drive<F: Future>(
    mut conn: Pin<&mut F>,
    graceful: impl FnOnce(Pin<&mut F>),
    watch: &Arc<ConnWatch>,
    deadlines: &Deadlines,
    shutdown: &watch::Receiver<bool>,
) -> Result<F::Output, Expired> {
    let (cut_tx, cut_rx) = tokio::sync::oneshot::channel();
    let watcher = tokio::spawn(cut(watch.clone(), *deadlines, shutdown.clone(), cut_tx));
    let _stop_watcher = AbortOnDrop(watcher.abort_handle());
    let cut = tokio::select! {
        biased;
        r = conn.as_mut() => return Ok(r),
        Ok(cut) = cut_rx => cut,
    };
    match cut {
        // The worker's grace period bounds this wait.
        None => {
            graceful(conn.as_mut());
            Ok(conn.await)
        }
        Some(Expired::Idle) => {
            graceful(conn.as_mut());
            let _ = tokio::time::timeout(IDLE_CLOSE_GRACE, conn).await;
            Err(Expired::Idle)
        }
        Some(e) => Err(e),
    }
}

/// Watch one connection: send `None` on shutdown, or the deadline that
/// passed first.
async fn cut(
    watch: Arc<ConnWatch>,
    deadlines: Deadlines,
    mut shutdown: watch::Receiver<bool>,
    tx: tokio::sync::oneshot::Sender<Option<Expired>>,
) {
    let cut = tokio::select! {
        Ok(_) = shutdown.wait_for(|stop| *stop) => None,
        e = watch.expired(&deadlines) => Some(e),
    };
    let _ = tx.send(cut);
}

/// Aborts a task when dropped (the connection's watcher, when the
/// connection ends whichever way).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Open connections per client address (IPv4 address, IPv6 /64).
#[derive(Debug, Default)]
pub struct AddressShares {
    open: DashMap<IpAddr, u32>,
}

impl AddressShares {
    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    IpAddr::V6(bits.into())
                }
            },
        }
    }

    /// Take one of `ip`'s `limit` slots (None when it holds them all).
    pub fn take(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<AddressSlot> {
        let key = Self::key(ip);
        let mut n = self.open.entry(key).or_insert(0);
        if *n as usize >= limit {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            shares: self.clone(),
            key,
        })
    }

    /// Addresses holding at least one connection.
    pub fn addresses(&self) -> usize {
        self.open.len()
    }
}

/// One connection's slot in its address's share; released on drop.
#[derive(Debug)]
pub struct AddressSlot {
    shares: Arc<AddressShares>,
    key: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.shares.open.remove_if_mut(&self.key, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadlines(ms: u64) -> Deadlines {
        let d = Duration::from_millis(ms);
        Deadlines {
            first_request: d,
            idle: d,
            write_stall: d,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_first_request_expires() {
        let w = ConnWatch::new();
        let d = deadlines(1000);
        assert_eq!(w.check(&d), None);
        assert_eq!(w.expired(&d).await, Expired::FirstRequest);
        assert!(w.origin.elapsed() >= Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_last_response_end() {
        let w = ConnWatch::new();
        let d = deadlines(1000);
        let r = w.request();
        tokio::time::advance(Duration::from_millis(5000)).await;
        // In flight and not waiting on the client: nothing expires.
        assert_eq!(w.check(&d), None);
        drop(r);
        assert_eq!(w.check(&d), None);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(w.check(&d), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(w.check(&d), Some(Expired::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_the_client_does_not_take_stalls() {
        let w = ConnWatch::new();
        let d = deadlines(1000);
        let mut body = Watched::new(
            http_body_util::Full::new(Bytes::from_static(b"x")),
            w.request(),
        );
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(w.check(&d), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(w.check(&d), Some(Expired::WriteStall));
        // Asked for more: no longer waiting on the client.
        let _ = Pin::new(&mut body).poll_frame(&mut cx);
        assert_eq!(w.check(&d), None);
    }

    /// The timer wakes at the deadline itself, not on a tick after it.
    #[tokio::test(start_paused = true)]
    async fn a_deadline_is_enforced_when_it_passes() {
        let w = ConnWatch::new();
        let d = Deadlines {
            first_request: Duration::from_millis(10_500),
            idle: Duration::from_millis(7_000),
            write_stall: Duration::from_millis(60_000),
        };
        assert_eq!(w.expired(&d).await, Expired::FirstRequest);
        assert_eq!(w.origin.elapsed(), Duration::from_millis(10_500));
    }

    /// A deadline that starts while the timer sleeps (a response starts
    /// waiting for the client) is enforced on time: the timer never sleeps
    /// past the earliest moment one could pass.
    #[tokio::test(start_paused = true)]
    async fn a_write_stall_that_starts_while_the_timer_sleeps_is_caught_on_time() {
        let w = ConnWatch::new();
        let d = Deadlines {
            first_request: Duration::from_millis(300_000),
            idle: Duration::from_millis(60_000),
            write_stall: Duration::from_millis(5_500),
        };
        let timer = tokio::spawn({
            let w = w.clone();
            async move { w.expired(&d).await }
        });
        tokio::time::advance(Duration::from_millis(1_000)).await;
        let mut body = Watched::new(
            http_body_util::Full::new(Bytes::from_static(b"x")),
            w.request(),
        );
        tokio::time::advance(Duration::from_millis(1_000)).await;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        // Waiting for the client since 2 s: stalled at 7.5 s, whatever the
        // timer was sleeping towards when the wait began.
        assert_eq!(timer.await.unwrap(), Expired::WriteStall);
        assert_eq!(w.origin.elapsed(), Duration::from_millis(7_500));
    }

    /// A stream that waits on its upstream (a response in flight, no frame
    /// waiting for the client) wakes the timer once per horizon, not once
    /// a second.
    #[tokio::test(start_paused = true)]
    async fn an_open_stream_wakes_the_timer_once_per_horizon() {
        let w = ConnWatch::new();
        let d = deadlines(60_000);
        let _in_flight = w.request();
        assert_eq!(w.look(&d), Ok(60_000));
        tokio::time::advance(Duration::from_millis(59_000)).await;
        assert_eq!(w.look(&d), Ok(60_000));
    }

    /// With the two counts of its `Arc`, a response's clock is one 64-byte
    /// line: what a streamed frame touches of its request's watch.
    #[test]
    fn a_responses_clock_is_one_line_with_its_counts() {
        assert_eq!(std::mem::align_of::<Waiting>(), 32);
        assert_eq!(std::mem::size_of::<Waiting>(), 32);
    }

    #[test]
    fn address_shares_cap_and_release() {
        let s = Arc::new(AddressShares::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = s.take(ip, 2).unwrap();
        let _b = s.take(ip, 2).unwrap();
        assert!(s.take(ip, 2).is_none());
        // Another address has its own share; IPv6 hosts share their /64.
        assert!(s.take("192.0.2.2".parse().unwrap(), 2).is_some());
        let v6a = s.take("2001:db8::1".parse().unwrap(), 1).unwrap();
        assert!(s.take("2001:db8::2".parse().unwrap(), 1).is_none());
        drop(v6a);
        drop(a);
        assert!(s.take(ip, 2).is_some());
        assert_eq!(s.addresses(), 1);
    }
}
