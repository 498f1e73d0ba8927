//! ClientHello capture for the TLS step: read ahead until the whole
//! ClientHello is buffered (reassembled across records, capped at 16 KiB),
//! fingerprint it, then replay the same bytes into rustls through
//! [`Rewind`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::fingerprint::tls::{self, HelloError, HelloProgress, Ja4Fingerprint};

/// Why a connection was closed before its TLS handshake.
#[derive(Debug)]
pub enum CaptureError {
    /// The bytes were not an acceptable ClientHello.
    Hello(HelloError),
    /// The socket failed.
    Io(io::Error),
}

/// A captured ClientHello: every byte read (to replay into the TLS
/// handshake), its JA4, and what it said that is worth counting.
#[derive(Debug)]
pub struct Captured {
    /// The bytes read so far, ClientHello first.
    pub buf: BytesMut,
    /// JA4 of the ClientHello.
    pub ja4: Ja4Fingerprint,
    /// The SNI was an IP address (illegal; counted, not logged per
    /// connection).
    pub sni_is_ip: bool,
}

/// Read from `stream` until a whole ClientHello is buffered, starting with
/// the bytes already in `buf`. Returns all bytes read (possibly more than
/// the hello), the hello's JA4 and whether its SNI was an IP address.
pub async fn capture<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut buf: BytesMut,
) -> Result<Captured, CaptureError> {
    loop {
        match tls::client_hello_progress(&buf, tls::MAX_CLIENT_HELLO_LEN) {
            HelloProgress::Complete { len } => {
                let hello = tls::parse_client_hello(&buf[..len]).map_err(CaptureError::Hello)?;
                let ja4 = tls::ja4_fingerprint(&hello);
                // RFC 6066 forbids IP literals as SNI; rustls ignores them.
                let sni_is_ip = hello
                    .server_name()
                    .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok());
                return Ok(Captured {
                    buf,
                    ja4,
                    sni_is_ip,
                });
            }
            HelloProgress::Invalid(e) => return Err(CaptureError::Hello(e)),
            HelloProgress::NeedMore => {
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(4096);
                }
                let n = stream.read_buf(&mut buf).await.map_err(CaptureError::Io)?;
                if n == 0 {
                    return Err(CaptureError::Hello(HelloError::Truncated));
                }
            }
        }
    }
}

/// Read a PROXY protocol (v1/v2) header from the start of `stream`. Returns
/// the client address it announces (None for LOCAL/UNKNOWN) and the bytes
/// read past the header.
pub async fn proxy_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Option<std::net::SocketAddr>, BytesMut), CaptureError> {
    use crate::identity::proxy_protocol::{parse, Parsed};
    let mut buf = BytesMut::with_capacity(512);
    loop {
        match parse(&buf) {
            Parsed::Header { len, source } => {
                let rest = buf.split_off(len);
                return Ok((source, rest));
            }
            Parsed::Invalid => return Err(CaptureError::Hello(HelloError::Malformed)),
            Parsed::NeedMore => {
                let n = stream.read_buf(&mut buf).await.map_err(CaptureError::Io)?;
                if n == 0 {
                    return Err(CaptureError::Hello(HelloError::Truncated));
                }
            }
        }
    }
}

/// A stream that first yields bytes already read from it.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S> Rewind<S> {
    /// Replay `prefix`, then read from `inner`.
    pub fn new(prefix: BytesMut, inner: S) -> Self {
        Rewind { prefix, inner }
    }

    /// The wrapped stream.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() && buf.remaining() > 0 {
                // What has arrived since comes in the same read: hyper
                // reserves room for each read, so a short first read made
                // it double its buffer for the second. Pending, EOF or an
                // error here shows again on the next read (an error at
                // worst as EOF), so nothing is lost by ignoring it.
                let _ = Pin::new(&mut self.inner).poll_read(cx, buf);
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

delegate_async_write!(Rewind);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rewind_replays_the_prefix_then_reads_on() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b" world")
            .await
            .unwrap();
        drop(a);
        let mut r = Rewind::new(BytesMut::from(&b"hello"[..]), b);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn rewind_hands_over_what_has_arrived_with_the_prefix() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b" world")
            .await
            .unwrap();
        let mut r = Rewind::new(BytesMut::from(&b"hello"[..]), b);
        let mut out = [0u8; 32];
        let n = r.read(&mut out).await.unwrap();
        assert_eq!(&out[..n], b"hello world");
        // Nothing more has arrived: the next read waits for it.
        tokio::io::AsyncWriteExt::write_all(&mut a, b"!")
            .await
            .unwrap();
        let n = r.read(&mut out).await.unwrap();
        assert_eq!(&out[..n], b"!");
    }

    #[tokio::test]
    async fn capture_reports_non_tls_and_truncation() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"GET / HTTP/1.1\r\n")
            .await
            .unwrap();
        assert!(matches!(
            capture(&mut b, BytesMut::new()).await,
            Err(CaptureError::Hello(HelloError::NotTls))
        ));
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, &[0x16, 0x03, 0x01, 0x00, 0x40, 0x01])
            .await
            .unwrap();
        drop(a);
        assert!(matches!(
            capture(&mut b, BytesMut::new()).await,
            Err(CaptureError::Hello(HelloError::Truncated))
        ));
    }
}
