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
    /// Nothing read yet, or only a prefix of `"PRI "` (kept here).
    Undecided(Vec<u8>),
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
            state: TapState::Undecided(Vec::new()),
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
        // The protocol is known from the first four bytes; a client that
        // sends the preface a byte at a time is followed all the same.
        let mut first = Vec::new();
        if let TapState::Undecided(seen) = &mut s.state {
            seen.extend_from_slice(data);
            const H2_START: &[u8] = b"PRI ";
            if seen.len() < H2_START.len() && H2_START.starts_with(seen) {
                return true;
            }
            first = std::mem::take(seen);
            s.state = if first.starts_with(H2_START) {
                TapState::H2(Box::default())
            } else {
                TapState::H1(H1Tap::new(MAX_HEAD_BYTES))
            };
        }
        let data = if first.is_empty() { data } else { &first[..] };
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
            TapState::Undecided(_) | TapState::Off => false,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preface_sent_a_byte_at_a_time_is_still_followed_as_http2() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let t = TapHandle::new();
        for b in &preface[..3] {
            assert!(t.feed(std::slice::from_ref(b)), "undecided keeps reading");
        }
        assert!(t.feed(&preface[3..]));
        let s = t.0.lock().unwrap();
        assert!(matches!(s.state, TapState::H2(_)));
    }

    #[test]
    fn http1_is_chosen_as_soon_as_the_bytes_leave_the_preface() {
        let t = TapHandle::new();
        assert!(t.feed(b"P"));
        assert!(t.feed(b"OST / HTTP/1.1\r\nhost: x\r\n\r\n"));
        assert!(t.next_h1().is_some(), "the head fed in two parts is read");
    }
}
