//! HTTP fingerprint tap on a connection's read side: every byte hyper reads
//! is also shown to [`H1Tap`] or [`H2Tap`] (chosen by the first bytes: the
//! HTTP/2 preface or not) until the tap is done or gives up. The service
//! reads the results per request through [`TapHandle`].

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::fingerprint::h2::{H2Fingerprint, H2Tap};
use crate::fingerprint::http::{H1Tap, HttpFingerprint};

/// Largest request head the HTTP/1 tap buffers.
const MAX_HEAD_BYTES: usize = 16 * 1024;

enum TapState {
    /// Nothing read yet.
    Undecided,
    /// HTTP/1: one fingerprint per request head, in order.
    H1(H1Tap),
    /// HTTP/2: one fingerprint per connection.
    H2(Box<H2Tap>),
    /// Finished or gave up: reads pass straight through.
    Off,
}

struct Shared {
    state: TapState,
    /// The HTTP/2 result, kept once the tap is done.
    h2: Option<Arc<H2Fingerprint>>,
    /// Whether the first HTTP/2 request has taken the tap's HTTP fingerprint.
    h2_first_taken: bool,
}

/// The service's view of a connection's tap.
#[derive(Clone)]
pub struct TapHandle(Arc<Mutex<Shared>>);

impl std::fmt::Debug for TapHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TapHandle")
    }
}

impl TapHandle {
    fn new() -> Self {
        TapHandle(Arc::new(Mutex::new(Shared {
            state: TapState::Undecided,
            h2: None,
            h2_first_taken: false,
        })))
    }

    /// The HTTP/1 fingerprint of the next request head on this connection.
    pub fn next_h1(&self) -> Option<HttpFingerprint> {
        let mut s = self.0.lock().ok()?;
        match &mut s.state {
            TapState::H1(t) => t.pop(),
            _ => None,
        }
    }

    /// The connection's HTTP/2 fingerprint, and for its first request the
    /// HTTP fingerprint decoded from HPACK (later requests build theirs from
    /// the header map).
    pub fn h2(&self) -> (Option<Arc<H2Fingerprint>>, Option<HttpFingerprint>) {
        let Ok(mut s) = self.0.lock() else {
            return (None, None);
        };
        let first = if s.h2_first_taken {
            None
        } else {
            s.h2_first_taken = true;
            s.h2.as_ref().and_then(|h| h.http_fingerprint().cloned())
        };
        (s.h2.clone(), first)
    }

    fn feed(&self, data: &[u8]) -> bool {
        let Ok(mut s) = self.0.lock() else {
            return false;
        };
        if let TapState::Undecided = s.state {
            s.state = if data.starts_with(b"PRI ") {
                TapState::H2(Box::default())
            } else {
                TapState::H1(H1Tap::new(MAX_HEAD_BYTES))
            };
        }
        match &mut s.state {
            TapState::H1(t) => {
                t.feed(data);
                // A disabled tap keeps answering `None`; keep its state.
                !t.is_disabled()
            }
            TapState::H2(t) => {
                t.feed(data);
                if t.is_done() {
                    let result = t.take().map(Arc::new);
                    s.h2 = result;
                    s.state = TapState::Off;
                    false
                } else {
                    true
                }
            }
            TapState::Undecided | TapState::Off => false,
        }
    }
}

/// A connection whose reads are shown to the fingerprint tap.
pub struct Tapped<S> {
    inner: S,
    handle: TapHandle,
    active: bool,
}

impl<S> Tapped<S> {
    /// Wrap `inner`; the handle goes to the service.
    pub fn new(inner: S) -> (Self, TapHandle) {
        let handle = TapHandle::new();
        (
            Tapped {
                inner,
                handle: handle.clone(),
                active: true,
            },
            handle,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tapped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.active {
            if let Poll::Ready(Ok(())) = r {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    self.active = self.handle.feed(new);
                }
            }
        }
        r
    }
}

delegate_async_write!(Tapped);
