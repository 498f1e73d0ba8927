//! Body types of the forward step: what goes upstream ([`RequestBody`]:
//! buffered for inspection, or streamed under the size limit) and what goes
//! back to the client ([`ResponseBody`]: a refusal, or the upstream's body
//! streamed frame by frame under the idle timeout, every frame shown to a
//! [`ResponseObserver`] on its way).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// Boxed error for body streams.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client sent more body than `limits.max_request_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit in bytes.
    pub limit: u64,
}

/// The client sent its request body too slowly.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodyTimeout {
    /// Nothing arrived for `limits.body_read_timeout_ms`.
    #[error("the request body stalled: nothing arrived for {} ms", .0.as_millis())]
    Stalled(Duration),
    /// It arrived slower than `limits.min_body_bytes_per_second`.
    #[error("the request body arrived at {rate} bytes/s, below the minimum of {min} bytes/s")]
    TooSlow {
        /// Average rate so far.
        rate: u64,
        /// The floor.
        min: u64,
    },
}

/// The client's request body under the read limits: no gap between pieces
/// longer than `read_timeout`, and, once it has been arriving for that
/// long, an average rate of at least `min_rate` bytes per second.
#[derive(Debug)]
pub struct ClientBody<B = Incoming> {
    inner: B,
    read_timeout: Duration,
    min_rate: u64,
    started: Instant,
    last_activity: Instant,
    received: u64,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> ClientBody<B> {
    /// `inner` under `read_timeout` and `min_rate` (0: no floor), starting now.
    pub fn new(inner: B, read_timeout: Duration, min_rate: u64) -> Self {
        let now = Instant::now();
        ClientBody {
            inner,
            read_timeout,
            min_rate,
            started: now,
            last_activity: now,
            received: 0,
            sleep: None,
        }
    }

    fn too_slow(&self, now: Instant) -> Option<BodyTimeout> {
        let elapsed = now.duration_since(self.started);
        if self.min_rate == 0 || elapsed < self.read_timeout {
            return None;
        }
        let rate = (self.received as f64 / elapsed.as_secs_f64()) as u64;
        (rate < self.min_rate).then_some(BodyTimeout::TooSlow {
            rate,
            min: self.min_rate,
        })
    }
}

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let now = Instant::now();
                    this.last_activity = now;
                    if let Some(d) = frame.data_ref() {
                        this.received += d.len() as u64;
                    }
                    if !this.inner.is_end_stream() {
                        if let Some(e) = this.too_slow(now) {
                            return Poll::Ready(Some(Err(Box::new(e))));
                        }
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(other) => return Poll::Ready(other.map(|r| r.map_err(Into::into))),
                Poll::Pending => {}
            }
            // Re-armed lazily, as the upstream body's idle timer is.
            let deadline = this.last_activity + this.read_timeout;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            ready!(sleep.as_mut().poll(cx));
            if deadline <= Instant::now() {
                return Poll::Ready(Some(Err(Box::new(BodyTimeout::Stalled(this.read_timeout)))));
            }
            sleep.as_mut().reset(deadline);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream stopped sending a response body for longer than allowed.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body idle for more than {0:?}")]
pub struct UpstreamIdle(pub Duration);

/// Request body sent upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// Fully buffered (already inspected, or empty).
    Full(Option<Bytes>),
    /// Streamed from the client, after an optional already-read prefix,
    /// failing with [`BodyTooLarge`] past the limit.
    Stream {
        /// Bytes already read from `rest` (sent first).
        prefix: Option<Bytes>,
        /// The remainder of the client's body ([`ClientBody`] over whatever
        /// body the server or the embedding gateway gave), boxed: a request
        /// waits in the upstream client's dispatch queue, whose slots are
        /// sized by the largest variant, and most bodies are `Full`.
        rest: UnsyncBoxBody<Bytes, BoxError>,
        /// Bytes that may still pass.
        remaining: u64,
        /// The configured limit (for the error).
        limit: u64,
    },
}

impl RequestBody {
    /// An empty body.
    pub fn empty() -> Self {
        RequestBody::Full(None)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RequestBody::Stream {
                prefix,
                rest,
                remaining,
                limit,
            } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                match ready!(Pin::new(rest).poll_frame(cx)) {
                    None => Poll::Ready(None),
                    Some(Err(e)) => Poll::Ready(Some(Err(e))),
                    Some(Ok(frame)) => {
                        if let Some(d) = frame.data_ref() {
                            let n = d.len() as u64;
                            if n > *remaining {
                                *remaining = 0;
                                return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                                    limit: *limit,
                                }))));
                            }
                            *remaining -= n;
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Full(b) => b.is_none(),
            RequestBody::Stream { prefix, rest, .. } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Full(None) => SizeHint::with_exact(0),
            RequestBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RequestBody::Stream { prefix, rest, .. } => {
                let p = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + p);
                if let Some(u) = r.upper() {
                    h.set_upper(u + p);
                }
                h
            }
        }
    }
}

/// Sees each response body frame as it passes, and the end of the response
/// (complete, failed, or dropped because the client went away).
pub trait ResponseObserver: Send + 'static {
    /// A data frame passed to the client.
    fn on_data(&mut self, data: &Bytes);
    /// The body ended: `complete` is false when it failed or was abandoned.
    fn on_end(&mut self, complete: bool);
}

/// Response body returned to the client: made here, or the body of the
/// guarded service's response (the upstream's, for the proxy) streamed on.
pub enum ResponseBody<B = Incoming> {
    /// A response made here (refusals, errors, mock).
    Full(Option<Bytes>),
    /// The upstream's body, streamed.
    Upstream(Box<UpstreamBody<B>>),
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseBody::Full(b) => f.debug_tuple("Full").field(b).finish(),
            ResponseBody::Upstream(_) => f.write_str("Upstream(..)"),
        }
    }
}

/// The upstream's response body with its idle timer and observer.
pub struct UpstreamBody<B = Incoming> {
    inner: B,
    idle_timeout: Duration,
    /// When the body last asked the upstream for more and found nothing:
    /// the upstream has been silent since (at most) then.
    last_activity: Instant,
    /// A frame came since `last_activity` was read.
    active: bool,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The idle timer's deadline and the waker it was last polled with:
    /// until then, the timer cannot have fired, and it wakes that task
    /// when it does, so it need not be polled again. Each event of a
    /// stream ends in such a wait, and polling the timer there touched its
    /// entry every time (a cache miss per event with thousands of streams).
    armed: Option<(Instant, Waker)>,
    observer: Option<Box<dyn ResponseObserver>>,
    ended: bool,
}

impl<B> ResponseBody<B> {
    /// A complete body.
    pub fn full(b: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(b.into()))
    }

    /// An empty body.
    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }

    /// Stream `inner`, failing if no frame arrives within `idle_timeout`.
    pub fn upstream(
        inner: B,
        idle_timeout: Duration,
        observer: Option<Box<dyn ResponseObserver>>,
    ) -> Self {
        ResponseBody::Upstream(Box::new(UpstreamBody {
            inner,
            idle_timeout,
            last_activity: Instant::now(),
            active: false,
            sleep: None,
            armed: None,
            observer,
            ended: false,
        }))
    }
}

impl<B> UpstreamBody<B> {
    fn end(&mut self, complete: bool) {
        if !self.ended {
            self.ended = true;
            if let Some(o) = self.observer.as_mut() {
                o.on_end(complete);
            }
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        loop {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(None) => {
                    self.end(true);
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    self.end(false);
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // The clock is read when the body next waits (at once,
                    // unless the client is slow to take this frame).
                    self.active = true;
                    if let (Some(d), Some(o)) = (frame.data_ref(), self.observer.as_mut()) {
                        o.on_data(d);
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Pending => {}
            }
            // No frame yet: wait on the idle timer.
            let now = Instant::now();
            if std::mem::take(&mut self.active) {
                self.last_activity = now;
            }
            if let Some((at, waker)) = &self.armed {
                if now < *at && waker.will_wake(cx.waker()) {
                    return Poll::Pending;
                }
            }
            // The timer is re-armed lazily, only when it fires after
            // activity, so busy streams never reset it.
            let deadline = self.last_activity + self.idle_timeout;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if sleep.as_mut().poll(cx).is_pending() {
                self.armed = Some((sleep.deadline(), cx.waker().clone()));
                return Poll::Pending;
            }
            self.armed = None;
            if deadline <= now {
                self.end(false);
                return Poll::Ready(Some(Err(Box::new(UpstreamIdle(self.idle_timeout)))));
            }
            sleep.as_mut().reset(deadline);
            // Activity happened since the timer was armed: loop to re-arm.
        }
    }
}

impl<B> Drop for UpstreamBody<B> {
    fn drop(&mut self) {
        // The client went away (or hyper gave up) before the end.
        self.end(false);
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Upstream(u) => u.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(b) => b.is_none(),
            ResponseBody::Upstream(u) => u.ended || u.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(None) => SizeHint::with_exact(0),
            ResponseBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResponseBody::Upstream(u) => u.inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    use super::*;

    /// An upstream body whose frames the test sends.
    struct Script(mpsc::UnboundedReceiver<Bytes>);

    impl Body for Script {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    fn upstream(idle_ms: u64) -> (mpsc::UnboundedSender<Bytes>, ResponseBody<Script>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let body = ResponseBody::upstream(Script(rx), Duration::from_millis(idle_ms), None);
        (tx, body)
    }

    /// The idle timeout counts from the last time the body found nothing
    /// to read, to the millisecond, however the timer was armed before.
    #[tokio::test(start_paused = true)]
    async fn an_upstream_silent_past_its_idle_timeout_fails_on_time() {
        let start = Instant::now();
        let (tx, mut body) = upstream(1000);
        tx.send(Bytes::from_static(b"a")).unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        let waiting = tokio::spawn(async move {
            let first = body.frame().await.map(|f| f.is_ok());
            let second = body
                .frame()
                .await
                .map(|f| f.map(|_| ()).map_err(|e| e.to_string()));
            (first, second, start.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        tx.send(Bytes::from_static(b"b")).unwrap();
        let (first, second, elapsed) = waiting.await.unwrap();
        assert_eq!(first, Some(true));
        let err = second.unwrap().unwrap_err();
        assert!(err.contains("idle for more than"), "{err}");
        assert_eq!(elapsed, Duration::from_millis(1500));
        drop(tx);
    }

    /// Frames spaced under the timeout keep a stream open however long it
    /// runs in all.
    #[tokio::test(start_paused = true)]
    async fn an_upstream_that_keeps_sending_is_never_idle() {
        let (tx, mut body) = upstream(1000);
        let sender = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(900)).await;
                tx.send(Bytes::from_static(b"x")).unwrap();
            }
        });
        for _ in 0..10 {
            assert!(body.frame().await.unwrap().is_ok());
        }
        sender.await.unwrap();
        assert!(body.frame().await.is_none(), "the end, not a timeout");
    }

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The idle timer is not polled again while it cannot have fired, but
    /// a poll from another task moves its wake-up there.
    #[tokio::test(start_paused = true)]
    async fn the_idle_timer_wakes_the_task_that_polled_last() {
        let (tx, mut body) = upstream(1000);
        let (a, b) = (Arc::new(Count::default()), Arc::new(Count::default()));
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        assert!(Pin::new(&mut body)
            .poll_frame(&mut Context::from_waker(&wa))
            .is_pending());
        assert!(Pin::new(&mut body)
            .poll_frame(&mut Context::from_waker(&wa))
            .is_pending());
        assert!(Pin::new(&mut body)
            .poll_frame(&mut Context::from_waker(&wb))
            .is_pending());
        // The paused clock moved past the deadline: the timer fires.
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(a.0.load(Ordering::SeqCst), 0);
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
        match Pin::new(&mut body).poll_frame(&mut Context::from_waker(&wb)) {
            Poll::Ready(Some(Err(e))) => assert!(e.is::<UpstreamIdle>(), "{e}"),
            other => panic!("expected the idle error, got {other:?}"),
        }
        drop(tx);
    }
}
