//! The bytes of the upstream hop: a request head written once into a buffer
//! of its own size, a response head parsed with `httparse`, and the body's
//! framing ([`Decoder`]: a length, chunked, until close, or none) decoded as
//! bytes arrive, keeping no buffer between reads.

use std::io::{self, Write};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH};
use http::{Method, Response, StatusCode, Version};

/// Most header fields a response head may carry (hyper's default).
pub const MAX_HEADERS: usize = 100;

/// Largest response head accepted, in bytes.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How a request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// `content-length` (already among the headers, or set to this).
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
}

/// The request head: `METHOD target HTTP/1.1`, the headers as given, and
/// the framing header when `framing` says one is needed.
pub fn encode_head(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    framing: Option<RequestFraming>,
) -> Vec<u8> {
    // The request line, each `name: value\r\n`, the framing header (at
    // most `content-length: ` and 20 digits) and the blank line: one
    // allocation of the head's own size.
    let mut len = method.as_str().len() + 1 + target.len() + 11;
    for (name, value) in headers {
        len += name.as_str().len() + value.len() + 4;
    }
    len += 38 + 2;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if framing.is_some() && (name == CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING)
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Some(RequestFraming::Length(n)) => {
            // Writing to a Vec cannot fail.
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Some(RequestFraming::Chunked) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        None => {}
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A chunk's size line, for a chunked request body.
pub fn chunk_size_line(n: usize) -> Vec<u8> {
    format!("{n:x}\r\n").into_bytes()
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    /// Status, version and headers (no body yet).
    pub response: Response<()>,
    /// How its body is framed.
    pub framing: Decoder,
    /// Whether the connection may carry another request afterwards.
    pub keep_alive: bool,
}

/// A parsed head: informational, or the final one.
#[derive(Debug)]
pub enum Parsed {
    /// An informational (1xx) head, to be skipped.
    Informational,
    /// The final head.
    Complete(Head),
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// The length of the response head at the start of `buf`, once all of it
/// has arrived (None: more bytes are needed).
pub fn head_len(buf: &[u8]) -> io::Result<Option<usize>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::Response::new(&mut headers).parse(buf) {
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => Err(invalid(format!(
            "response head larger than {MAX_HEAD_BYTES} bytes"
        ))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(invalid(format!("invalid response head: {e}"))),
    }
}

/// Parse a complete response head (as [`head_len`] measured it), for a
/// request made with `method`. Header values share `head`'s bytes.
pub fn parse_head(head: &Bytes, method: &Method) -> io::Result<Parsed> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    match res.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(invalid("incomplete response head")),
        Err(e) => return Err(invalid(format!("invalid response head: {e}"))),
    }
    let code = res.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| invalid(format!("invalid status {code}")))?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(invalid(
                "101 Switching Protocols to a request that asked for none",
            ));
        }
        return Ok(Parsed::Informational);
    }
    let version = if res.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // Room for what the guard adds (x-request-id; one more costs less than
    // growing). hyper's server keeps a response's map for the next request
    // head on its connection, and that request's map then grows once when
    // the guard adds its four: a reallocation per request, kept rather than
    // ~2.3 KiB more per open stream for a map of 24 fields (BENCHMARKS.md,
    // "The upstream hop's own HTTP/1.1 client").
    let mut map = HeaderMap::with_capacity(res.headers.len() + 2);
    let mut keep_alive = version == Version::HTTP_11;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut encoded = false;
    for h in res.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| invalid(format!("invalid header name {:?}", h.name)))?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(h.value))
            .map_err(|_| invalid(format!("invalid value of header {name}")))?;
        if name == CONTENT_LENGTH {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| invalid("invalid content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid("conflicting content-length values"));
            }
            length = Some(n);
        } else if name == http::header::TRANSFER_ENCODING {
            encoded = true;
            // Only the last coding decides whether the body is chunked.
            chunked = value
                .to_str()
                .ok()
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if name == CONNECTION {
            for option in value.to_str().unwrap_or("").split(',') {
                let option = option.trim();
                if option.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if option.eq_ignore_ascii_case("keep-alive") && version == Version::HTTP_10 {
                    keep_alive = true;
                }
            }
        }
        map.append(name, value);
    }
    // RFC 9112 §6.3: no body for HEAD, 204 and 304; chunked wins over a
    // length; another coding, or no length at all, runs until close.
    let framing = if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Decoder::Done
    } else if encoded {
        if length.is_some() {
            // Both framings: chunked wins, and the connection is not trusted
            // with another exchange (RFC 9112 §6.3, a smuggling guard).
            keep_alive = false;
        }
        if chunked {
            Decoder::Chunked(Chunk::Size {
                value: 0,
                digits: 0,
            })
        } else {
            keep_alive = false;
            Decoder::Close
        }
    } else if let Some(n) = length {
        if n == 0 {
            Decoder::Done
        } else {
            Decoder::Length(n)
        }
    } else {
        keep_alive = false;
        Decoder::Close
    };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = map;
    Ok(Parsed::Complete(Head {
        response,
        framing,
        keep_alive,
    }))
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// In a size line's hex digits.
    Size {
        /// The size so far.
        value: u64,
        /// Digits read.
        digits: u8,
    },
    /// After the size, in extensions or whitespace, up to LF.
    SizeRest {
        /// The size read.
        value: u64,
    },
    /// In a chunk's data.
    Data(u64),
    /// After a chunk's data: CR expected.
    DataCr,
    /// After a chunk's data and CR: LF expected.
    DataLf,
    /// After the last chunk: at the start of a trailer line (or the end).
    TrailerStart,
    /// In a trailer line, up to LF.
    Trailer,
    /// After CR of the empty line that ends the body: LF expected.
    EndLf,
}

/// A response body's framing, and where in it the body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// So many bytes still to come.
    Length(u64),
    /// Chunked.
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Close,
    /// The body is complete.
    Done,
}

impl Decoder {
    /// Whether the body is complete.
    pub fn is_done(&self) -> bool {
        matches!(self, Decoder::Done)
    }

    /// Decode `input`, appending the body's data to `out`. Returns how many
    /// bytes of `input` belonged to the body: all of them until the body
    /// ends, fewer when bytes follow its end.
    pub fn decode(&mut self, input: &[u8], out: &mut BytesMut) -> io::Result<usize> {
        match self {
            Decoder::Done => Ok(0),
            Decoder::Close => {
                out.extend_from_slice(input);
                Ok(input.len())
            }
            Decoder::Length(rest) => {
                let n = (*rest).min(input.len() as u64) as usize;
                out.extend_from_slice(&input[..n]);
                *rest -= n as u64;
                if *rest == 0 {
                    *self = Decoder::Done;
                }
                Ok(n)
            }
            Decoder::Chunked(state) => {
                let (used, done) = decode_chunked(state, input, out)?;
                if done {
                    *self = Decoder::Done;
                }
                Ok(used)
            }
        }
    }
}

/// Longest chunk-size line's hex digits (a `u64`).
const MAX_SIZE_DIGITS: u8 = 16;

fn decode_chunked(
    state: &mut Chunk,
    input: &[u8],
    out: &mut BytesMut,
) -> io::Result<(usize, bool)> {
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        match *state {
            Chunk::Size { value, digits } => {
                let d = match b {
                    b'0'..=b'9' => Some(b - b'0'),
                    b'a'..=b'f' => Some(b - b'a' + 10),
                    b'A'..=b'F' => Some(b - b'A' + 10),
                    _ => None,
                };
                match d {
                    Some(d) if digits < MAX_SIZE_DIGITS => {
                        *state = Chunk::Size {
                            value: value << 4 | u64::from(d),
                            digits: digits + 1,
                        };
                    }
                    Some(_) => return Err(invalid("chunk size too large")),
                    None if digits == 0 => return Err(invalid("invalid chunk size line")),
                    None if b == b'\n' => *state = after_size(value),
                    None if matches!(b, b';' | b' ' | b'\t' | b'\r') => {
                        *state = Chunk::SizeRest { value }
                    }
                    None => return Err(invalid("invalid chunk size line")),
                }
                i += 1;
            }
            Chunk::SizeRest { value } => {
                // Extensions are ignored; the line ends at LF.
                match memchr::memchr(b'\n', &input[i..]) {
                    Some(at) => {
                        i += at + 1;
                        *state = after_size(value);
                    }
                    None => i = input.len(),
                }
            }
            Chunk::Data(rest) => {
                let n = rest.min((input.len() - i) as u64) as usize;
                out.extend_from_slice(&input[i..i + n]);
                i += n;
                *state = if rest == n as u64 {
                    Chunk::DataCr
                } else {
                    Chunk::Data(rest - n as u64)
                };
            }
            Chunk::DataCr => {
                *state = match b {
                    b'\r' => Chunk::DataLf,
                    b'\n' => Chunk::Size {
                        value: 0,
                        digits: 0,
                    },
                    _ => return Err(invalid("chunk data not followed by CRLF")),
                };
                i += 1;
            }
            Chunk::DataLf => {
                if b != b'\n' {
                    return Err(invalid("chunk data not followed by CRLF"));
                }
                *state = Chunk::Size {
                    value: 0,
                    digits: 0,
                };
                i += 1;
            }
            Chunk::TrailerStart => {
                i += 1;
                match b {
                    b'\n' => return Ok((i, true)),
                    b'\r' => *state = Chunk::EndLf,
                    _ => *state = Chunk::Trailer,
                }
            }
            Chunk::Trailer => match memchr::memchr(b'\n', &input[i..]) {
                Some(at) => {
                    i += at + 1;
                    *state = Chunk::TrailerStart;
                }
                None => i = input.len(),
            },
            Chunk::EndLf => {
                if b != b'\n' {
                    return Err(invalid("chunked body not ended by CRLF"));
                }
                return Ok((i + 1, true));
            }
        }
    }
    Ok((i, false))
}

fn after_size(value: u64) -> Chunk {
    if value == 0 {
        Chunk::TrailerStart
    } else {
        Chunk::Data(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(mut d: Decoder, input: &[u8], step: usize) -> io::Result<(Vec<u8>, usize, bool)> {
        let mut out = BytesMut::new();
        let mut used = 0;
        for piece in input.chunks(step.max(1)) {
            let n = d.decode(piece, &mut out)?;
            used += n;
            if n < piece.len() {
                break;
            }
        }
        Ok((out.to_vec(), used, d.is_done()))
    }

    fn chunked() -> Decoder {
        Decoder::Chunked(Chunk::Size {
            value: 0,
            digits: 0,
        })
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_reads_split() {
        let wire =
            b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let body_len = wire.len() - 4;
        for step in 1..wire.len() {
            let (out, used, done) = decode_all(chunked(), wire, step).unwrap();
            assert_eq!(out, b"hello 0123456789", "step {step}");
            assert!(done, "step {step}");
            assert_eq!(
                used, body_len,
                "step {step}: bytes after the end are not the body's"
            );
        }
    }

    #[test]
    fn bare_lf_line_ends_are_accepted_and_garbage_is_not() {
        let (out, _, done) = decode_all(chunked(), b"3\nabc\n0\n\n", 64).unwrap();
        assert_eq!((out.as_slice(), done), (&b"abc"[..], true));
        for bad in [
            &b"zz\r\n"[..],
            b"3\r\nabcX",
            b"\r\n",
            b"11111111111111111\r\n",
        ] {
            assert!(decode_all(chunked(), bad, 64).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_length_ends_where_it_says() {
        let (out, used, done) = decode_all(Decoder::Length(5), b"helloEXTRA", 3).unwrap();
        assert_eq!((out.as_slice(), used, done), (&b"hello"[..], 5, true));
        let (out, _, done) = decode_all(Decoder::Length(9), b"hello", 2).unwrap();
        assert_eq!((out.as_slice(), done), (&b"hello"[..], false));
    }

    /// `buf` measured, then parsed: the head, and the bytes after it.
    fn parse(buf: &[u8], method: &Method) -> io::Result<Option<(Parsed, usize)>> {
        let Some(len) = head_len(buf)? else {
            return Ok(None);
        };
        let head = Bytes::copy_from_slice(&buf[..len]);
        Ok(Some((parse_head(&head, method)?, len)))
    }

    fn complete(buf: &[u8], method: &Method) -> Head {
        match parse(buf, method).unwrap() {
            Some((Parsed::Complete(h), _)) => h,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn heads_decide_framing_and_reuse() {
        let h = complete(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc",
            &Method::POST,
        );
        assert_eq!((h.framing, h.keep_alive), (Decoder::Length(3), true));
        assert_eq!(
            parse(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc",
                &Method::POST
            )
            .unwrap()
            .unwrap()
            .1,
            38
        );
        let h = complete(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\ncontent-length: 9\r\n\r\n",
            &Method::POST,
        );
        assert!(matches!(h.framing, Decoder::Chunked(_)) && !h.keep_alive);
        let h = complete(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            &Method::POST,
        );
        assert!(matches!(h.framing, Decoder::Chunked(_)) && h.keep_alive);
        let h = complete(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n",
            &Method::GET,
        );
        assert_eq!((h.framing, h.keep_alive), (Decoder::Close, false));
        let h = complete(
            b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n",
            &Method::HEAD,
        );
        assert_eq!((h.framing, h.keep_alive), (Decoder::Done, true));
        let h = complete(b"HTTP/1.1 204 No Content\r\n\r\n", &Method::POST);
        assert_eq!(h.framing, Decoder::Done);
        let h = complete(
            b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(
            (h.response.version(), h.keep_alive),
            (Version::HTTP_10, false)
        );
        let h = complete(
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 1\r\n\r\n",
            &Method::GET,
        );
        assert!(h.keep_alive);
        assert_eq!(h.response.headers()["content-length"], "1");
    }

    #[test]
    fn informational_heads_are_skipped_and_bad_heads_refused() {
        let buf = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert!(matches!(
            parse(buf, &Method::POST).unwrap(),
            Some((Parsed::Informational, 25))
        ));
        assert!(parse(&buf[25..], &Method::POST).unwrap().is_none());
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            assert!(parse(bad, &Method::GET).is_err(), "{bad:?}");
        }
        let long = [b'a'; MAX_HEAD_BYTES];
        let mut big = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        big.extend_from_slice(&long);
        assert!(parse(&big, &Method::GET).is_err());
    }

    #[test]
    fn request_heads_carry_the_framing_they_are_given() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("up:8080"));
        h.insert("content-length", HeaderValue::from_static("99"));
        let head = encode_head(
            &Method::POST,
            "/v1/messages?x=1",
            &h,
            Some(RequestFraming::Length(12345)),
        );
        assert_eq!(
            head,
            b"POST /v1/messages?x=1 HTTP/1.1\r\nhost: up:8080\r\ncontent-length: 12345\r\n\r\n"
        );
        let head = encode_head(&Method::GET, "/", &h, None);
        assert_eq!(
            head,
            b"GET / HTTP/1.1\r\nhost: up:8080\r\ncontent-length: 99\r\n\r\n"
        );
        let head = encode_head(
            &Method::PUT,
            "/",
            &HeaderMap::new(),
            Some(RequestFraming::Chunked),
        );
        assert_eq!(
            head,
            b"PUT / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(chunk_size_line(255), b"ff\r\n");
    }
}
