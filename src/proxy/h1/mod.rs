//! The upstream hop over HTTP/1.1 (plain, or TLS by rustls), with a codec
//! of its own ([`codec`]) in place of hyper's client.
//!
//! Why not hyper's client: every connection of hyper's HTTP/1 client is a
//! task of its own, fed through a channel (a tokio mpsc block of 32
//! request slots per connection) and holding two 8 KiB buffers for its
//! life, and every response body is a second channel back from that task.
//! An LLM stream is one long response on one connection, so each open
//! stream paid for a task, two buffers and a channel block it never
//! needed, and every event crossed from one task to another. Here a
//! request is written and its head read by the request's own future; the
//! response body owns the connection and reads it when the client side
//! asks for the next frame, into a buffer on the stack, keeping only the
//! bytes it passes on. When the body ends whole the connection goes back
//! to a per-worker pool ([`Pool`]).
//!
//! The hop speaks HTTP/1.1 only, as nginx's and most edge proxies' upstream
//! hops do: TLS offers `http/1.1` by ALPN. Clients may still speak h2 to
//! the proxy.

pub mod codec;

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::body::{BoxError, RequestBody};
use codec::{Decoder, Parsed, RequestFraming};

/// Bytes read from the upstream at a time (a buffer on the stack).
const READ_BYTES: usize = 16 * 1024;

/// How late an expired idle connection may be closed, so that the sweep
/// wakes once for those that expire together.
const SWEEP_SLACK: Duration = Duration::from_millis(250);

/// Bytes the response head's buffer starts with.
const HEAD_BYTES: usize = 4096;

/// A connection to the upstream.
pub enum Io {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: rustls' connection state is large).
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, b),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Io {
    /// Whether an idle connection is still usable: nothing to read and not
    /// closed (one non-blocking read; an idle connection that has bytes to
    /// read is out of step and is dropped too).
    fn is_open(&mut self) -> bool {
        let waker = futures_util::task::noop_waker_ref();
        let mut cx = Context::from_waker(waker);
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        let mut buf = ReadBuf::uninit(&mut byte);
        Pin::new(self).poll_read(&mut cx, &mut buf).is_pending()
    }
}

/// Where requests go: the upstream's scheme and authority (the pool's key),
/// and the timeouts that apply to its connections. Read from the config
/// per request, so that a reload applies to the next one.
#[derive(Debug, Clone)]
pub struct Target {
    /// `https`: TLS to the upstream.
    pub https: bool,
    /// Host and port.
    pub authority: Authority,
    /// TCP + TLS handshake.
    pub connect_timeout: Duration,
    /// How long an idle connection is kept.
    pub pool_idle_timeout: Duration,
}

impl Target {
    /// The upstream `cfg` names.
    pub fn of(cfg: &crate::config::UpstreamConfig) -> Target {
        Target {
            https: cfg.scheme == Scheme::HTTPS,
            authority: cfg.authority.clone(),
            connect_timeout: cfg.connect_timeout,
            pool_idle_timeout: cfg.pool_idle_timeout,
        }
    }

    fn same_upstream(&self, other: &Target) -> bool {
        self.https == other.https && self.authority == other.authority
    }

    fn port(&self) -> u16 {
        self.authority
            .port_u16()
            .unwrap_or(if self.https { 443 } else { 80 })
    }

    /// The host without an IPv6 literal's brackets.
    fn host(&self) -> &str {
        let h = self.authority.host();
        h.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(h)
    }
}

/// Why an exchange with the upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No connection could be made (TCP or TLS).
    #[error("connecting to {authority}")]
    Connect {
        /// Where to.
        authority: Authority,
        /// Why.
        source: io::Error,
    },
    /// The connection (TCP + TLS) took longer than the connect timeout.
    #[error("connecting to {0}: timed out")]
    ConnectTimeout(Authority),
    /// The client's request body failed while it was being sent.
    #[error("request body: {0}")]
    Body(BoxError),
    /// Writing the request failed.
    #[error("sending the request: {0}")]
    Write(io::Error),
    /// The upstream closed the connection before any byte of a response.
    #[error("the connection was closed before a response")]
    Closed,
    /// Reading or parsing the response head failed.
    #[error("reading the response head: {0}")]
    Head(io::Error),
}

impl Failure {
    /// Whether the request can be sent again on a new connection: a pooled
    /// connection the upstream had closed (the write failed, or it closed
    /// before answering), for a body that can be sent again.
    fn stale(&self) -> bool {
        match self {
            Failure::Write(_) | Failure::Closed => true,
            Failure::Head(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }
}

/// The per-worker upstream client: a pool of idle connections and the TLS
/// settings. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    pool: Arc<Pool>,
    tls: TlsConnector,
}

impl Client {
    /// A client with an empty pool, verifying https upstreams with `tls`
    /// (its ALPN is set to `http/1.1` here).
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Client {
        let mut tls = (*tls).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Client {
            pool: Arc::new(Pool::default()),
            tls: TlsConnector::from(Arc::new(tls)),
        }
    }

    /// Idle connections held (for tests and metrics).
    pub fn idle(&self) -> usize {
        self.pool.lock().idle.len()
    }

    /// Send `req` (origin-form URI, `host` already set) to `target` and
    /// read its response head. A pooled connection the upstream had closed
    /// is retried once on a new one when the body can be sent again.
    pub async fn send(
        &self,
        req: Request<RequestBody>,
        target: Target,
    ) -> Result<Response<Body>, Failure> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let framing = framing(&parts.method, &parts.headers, &body);
        let head = codec::encode_head(&parts.method, path, &parts.headers, framing);
        let replay = match &body {
            RequestBody::Full(b) => Some(b.clone().unwrap_or_default()),
            RequestBody::Stream { .. } => None,
        };
        let mut body = Some(body);
        let mut fresh_only = false;
        loop {
            let pooled = if fresh_only {
                None
            } else {
                self.pool.checkout(&target)
            };
            let reused = pooled.is_some();
            let mut io = match pooled {
                Some(io) => io,
                // Boxed: a new connection is seldom made, and unboxed its
                // state (TCP and TLS setup) would be half of every request's.
                None => Box::pin(self.connect(&target)).await?,
            };
            let result = match (&replay, body.take()) {
                (Some(bytes), _) => write_full(&mut io, &head, bytes).await,
                (None, Some(b)) => write_streamed(&mut io, &head, b, framing).await,
                // Not reached: a streamed body is never sent again.
                (None, None) => Err(Failure::Body("the request body was already sent".into())),
            };
            let result = match result {
                Ok(()) => read_head(&mut io, &parts.method).await,
                Err(e) => Err(e),
            };
            match result {
                Ok((head, rest)) => {
                    let codec::Head {
                        response,
                        framing,
                        keep_alive,
                        ..
                    } = head;
                    let conn = Conn {
                        io,
                        pool: Arc::downgrade(&self.pool),
                        target,
                    };
                    let body = Body::new(conn, framing, keep_alive, rest);
                    return Ok(response.map(|()| body));
                }
                Err(e) if reused && replay.is_some() && e.stale() => {
                    tracing::debug!(error = %e, "pooled upstream connection was closed; retrying on a new one");
                    fresh_only = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn connect(&self, target: &Target) -> Result<Io, Failure> {
        let connect = async {
            let port = target.port();
            let tcp = match target.host().parse::<IpAddr>() {
                Ok(ip) => TcpStream::connect((ip, port)).await?,
                Err(_) => TcpStream::connect((target.host(), port)).await?,
            };
            tcp.set_nodelay(true)?;
            if !target.https {
                return Ok(Io::Plain(tcp));
            }
            let name = ServerName::try_from(target.host().to_owned())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tls = self.tls.connect(name, tcp).await?;
            Ok(Io::Tls(Box::new(tls)))
        };
        match tokio::time::timeout(target.connect_timeout, connect).await {
            Err(_) => Err(Failure::ConnectTimeout(target.authority.clone())),
            Ok(Err(source)) => Err(Failure::Connect {
                authority: target.authority.clone(),
                source,
            }),
            Ok(Ok(io)) => Ok(io),
        }
    }
}

/// How the request body goes on the wire: a buffered body's own length
/// (it may differ from what the client declared: degrade rewrites bodies);
/// a streamed body's declared length, or chunked when there is none.
fn framing(
    method: &Method,
    headers: &http::HeaderMap,
    body: &RequestBody,
) -> Option<RequestFraming> {
    // The declared length, read only where it decides: not for a buffered
    // body (every inspected request), whose own length is sent.
    let declared = || {
        headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    match body {
        RequestBody::Full(Some(b)) => Some(RequestFraming::Length(b.len() as u64)),
        RequestBody::Full(None) => match (declared(), method) {
            (Some(0), _) => None,
            (Some(_), _) => Some(RequestFraming::Length(0)),
            (None, &Method::POST | &Method::PUT | &Method::PATCH) => {
                Some(RequestFraming::Length(0))
            }
            (None, _) => None,
        },
        RequestBody::Stream { .. } => Some(match declared() {
            Some(n) => RequestFraming::Length(n),
            None => RequestFraming::Chunked,
        }),
    }
}

async fn write_full(io: &mut Io, head: &[u8], body: &Bytes) -> Result<(), Failure> {
    // One vectored write for head and body where the socket takes it.
    let mut buf = Buf::chain(head, &body[..]);
    io.write_all_buf(&mut buf).await.map_err(Failure::Write)?;
    io.flush().await.map_err(Failure::Write)
}

async fn write_streamed(
    io: &mut Io,
    head: &[u8],
    mut body: RequestBody,
    framing: Option<RequestFraming>,
) -> Result<(), Failure> {
    io.write_all(head).await.map_err(Failure::Write)?;
    let mut sent: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Failure::Body)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not forwarded over HTTP/1.1
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        match framing {
            Some(RequestFraming::Length(n)) if sent > n => {
                return Err(Failure::Body(
                    "request body longer than its content-length".into(),
                ))
            }
            Some(RequestFraming::Chunked) => {
                let line = codec::chunk_size_line(data.len());
                let mut buf = Buf::chain(Buf::chain(&line[..], &data[..]), &b"\r\n"[..]);
                io.write_all_buf(&mut buf).await.map_err(Failure::Write)?;
            }
            _ => io.write_all(&data).await.map_err(Failure::Write)?,
        }
        io.flush().await.map_err(Failure::Write)?;
    }
    match framing {
        Some(RequestFraming::Length(n)) if sent < n => Err(Failure::Body(
            "request body shorter than its content-length".into(),
        )),
        Some(RequestFraming::Chunked) => {
            io.write_all(b"0\r\n\r\n").await.map_err(Failure::Write)?;
            io.flush().await.map_err(Failure::Write)
        }
        _ => io.flush().await.map_err(Failure::Write),
    }
}

/// Read until the final response head is complete: the head, and the bytes
/// that followed it (the start of the body). The head's header values share
/// the one buffer it was read into.
async fn read_head(io: &mut Io, method: &Method) -> Result<(codec::Head, Bytes), Failure> {
    let mut buf = BytesMut::with_capacity(HEAD_BYTES);
    let mut got_any = false;
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(HEAD_BYTES);
        }
        let n = io.read_buf(&mut buf).await.map_err(Failure::Head)?;
        if n == 0 {
            return Err(if got_any {
                Failure::Head(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection was closed in the response head",
                ))
            } else {
                Failure::Closed
            });
        }
        got_any = true;
        while let Some(len) = codec::head_len(&buf).map_err(Failure::Head)? {
            let head = buf.split_to(len).freeze();
            match codec::parse_head(&head, method).map_err(Failure::Head)? {
                Parsed::Informational => {}
                Parsed::Complete(head) => {
                    // An empty remainder would still hold the buffer.
                    let rest = if buf.is_empty() {
                        Bytes::new()
                    } else {
                        buf.freeze()
                    };
                    return Ok((head, rest));
                }
            }
        }
    }
}

/// A connection lent to a response body, and where to return it.
struct Conn {
    io: Io,
    pool: Weak<Pool>,
    target: Target,
}

/// A response body read straight from its connection. Its connection goes
/// back to the pool when the body has ended whole and the upstream left it
/// open; a body dropped before its end closes it.
pub struct Body {
    conn: Option<Conn>,
    decoder: Decoder,
    keep_alive: bool,
    /// Bytes read with the head, not yet decoded.
    rest: Bytes,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("decoder", &self.decoder)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

impl Body {
    fn new(conn: Conn, decoder: Decoder, keep_alive: bool, rest: Bytes) -> Body {
        let mut body = Body {
            conn: Some(conn),
            decoder,
            keep_alive,
            rest,
        };
        if body.decoder.is_done() {
            if !body.rest.is_empty() {
                body.keep_alive = false;
            }
            body.release();
        }
        body
    }

    /// Give the connection back if the body ended whole on a connection
    /// the upstream keeps open; otherwise close it.
    fn release(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.keep_alive && self.decoder.is_done() {
            if let Some(pool) = conn.pool.upgrade() {
                pool.checkin(conn.target, conn.io);
            }
        }
    }

    /// Bytes read with the head, of a body that is not chunked: its data as
    /// they are (no copy), the connection released if that was all of it.
    fn unframed(&mut self, rest: &Bytes) -> Option<Bytes> {
        let take = match self.decoder {
            Decoder::Length(n) => n.min(rest.len() as u64) as usize,
            Decoder::Close => rest.len(),
            _ => return None,
        };
        if take < rest.len() {
            self.keep_alive = false;
        }
        if let Decoder::Length(n) = &mut self.decoder {
            *n -= take as u64;
            if *n == 0 {
                self.decoder = Decoder::Done;
                self.release();
            }
        }
        Some(rest.slice(..take))
    }

    fn decode(&mut self, input: &[u8], out: &mut BytesMut) -> io::Result<()> {
        let used = self.decoder.decode(input, out)?;
        if used < input.len() {
            // Bytes after the end of the body: the connection is out of step.
            self.keep_alive = false;
        }
        Ok(())
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let mut out = BytesMut::new();
        if !this.rest.is_empty() {
            let rest = std::mem::take(&mut this.rest);
            if let Some(frame) = this.unframed(&rest) {
                // Sent as it is, sharing the head's buffer.
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
            if let Err(e) = this.decode(&rest, &mut out) {
                this.conn = None;
                return Poll::Ready(Some(Err(e)));
            }
        }
        loop {
            if this.decoder.is_done() {
                this.release();
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
            if this.decoder.is_done() {
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(Some(Err(io::Error::other(
                    "the upstream connection is gone",
                ))));
            };
            let mut raw = [MaybeUninit::<u8>::uninit(); READ_BYTES];
            let mut buf = ReadBuf::uninit(&mut raw);
            match Pin::new(&mut conn.io).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Ok(())) => {}
            }
            let read = buf.filled();
            if read.is_empty() {
                if this.decoder == Decoder::Close {
                    this.decoder = Decoder::Done;
                    this.keep_alive = false;
                    continue;
                }
                this.conn = None;
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the upstream closed the connection before the end of the body",
                ))));
            }
            if let Err(e) = this.decode(read, &mut out) {
                this.conn = None;
                return Poll::Ready(Some(Err(e)));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done() && self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Done => SizeHint::with_exact(0),
            Decoder::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        self.release();
    }
}

/// Idle connections of one worker, oldest first.
#[derive(Default)]
struct Pool {
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    idle: VecDeque<Idle>,
    /// A task closes expired connections while there are any.
    sweeping: bool,
}

struct Idle {
    target: Target,
    io: Io,
    expires: Instant,
}

impl PoolState {
    fn expire(&mut self, now: Instant) {
        while self.idle.front().is_some_and(|i| i.expires <= now) {
            self.idle.pop_front();
        }
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently parked open connection to `target`'s upstream.
    fn checkout(&self, target: &Target) -> Option<Io> {
        loop {
            let mut io = {
                let mut state = self.lock();
                state.expire(Instant::now());
                let at = state
                    .idle
                    .iter()
                    .rposition(|i| i.target.same_upstream(target))?;
                state.idle.remove(at)?.io
            };
            if io.is_open() {
                return Some(io);
            }
        }
    }

    fn checkin(self: Arc<Self>, target: Target, io: Io) {
        if target.pool_idle_timeout.is_zero() {
            return;
        }
        let expires = Instant::now() + target.pool_idle_timeout;
        let mut state = self.lock();
        state.idle.push_back(Idle {
            target,
            io,
            expires,
        });
        if !state.sweeping {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                state.sweeping = true;
                rt.spawn(sweep(Arc::downgrade(&self)));
            }
        }
    }
}

/// Close idle connections as they expire, until none is left (or the pool
/// is gone).
async fn sweep(pool: Weak<Pool>) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else { return };
            let mut state = pool.lock();
            state.expire(Instant::now());
            // Oldest first: the front expires first (but for a reload that
            // shortened the timeout, whose connections wait their turn).
            // A little slack lets one wake-up close those parked together.
            match state.idle.front() {
                Some(i) => i.expires + SWEEP_SLACK,
                None => {
                    state.sweeping = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(next).await;
    }
}

/// The future of [`Client::send`], boxed (an `async fn`'s type has no name).
pub type SendFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Failure>> + Send>>;

#[cfg(test)]
mod tests;
