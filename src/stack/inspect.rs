//! Phase 4, classify and inspect: the body under the size limit and read
//! deadlines, and for an LLM endpoint its inspection — model, output limit,
//! thinking parameters and the prompt — read from at most
//! `api.inspect_max_body_bytes`. A body that cannot be inspected is refused
//! or passed on as `api.on_uninspectable` says.

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::Method;
use http_body::Body;
use http_body_util::BodyExt as _;

use crate::api::inspect::{self, Inspection};
use crate::api::{ApiKind, Uninspected};
use crate::app::Shared;
use crate::config::{Config, Uninspectable};
use crate::proxy::body::{BodyTimeout, BoxError, ClientBody, RequestBody};
use crate::proxy::error::ProxyError;

/// The most choices (`n`) one request is believed to generate (OpenAI's
/// own limit).
const MAX_CHOICES: u32 = 128;

/// Bodies (and prompts) of at least this many bytes are inspected (and
/// analysed, `super::features`) on tokio's blocking pool, not on the worker:
/// the work is linear in the size, about 7 µs per KiB in all, and on the
/// worker it holds every other connection of that worker for as long (an
/// 8 MiB prompt: about 60 ms of CPU, and up to 105 ms more for every other
/// request on its worker; BENCHMARKS.md, "Long prompts off the worker").
/// Below it the hand-off would cost more than it saves.
pub(super) const OFFLOAD_BYTES: usize = 64 * 1024;

/// What the phase found: the body to forward and what it says.
pub(super) struct Inspected {
    /// The body as it goes upstream (read whole, or streamed on).
    pub body: RequestBody,
    /// The inspection, when the body was read whole.
    pub info: Option<Inspection>,
    /// Why the body could not be inspected, when it could not.
    pub uninspectable: Option<Uninspected>,
    /// Input tokens charged at admission for a body whose prompt was not
    /// read: its size / 4. None for a parsed body: the prompt step
    /// estimates its prompt's (`super::features`).
    pub size_tokens: Option<u64>,
    /// The output limit the client asked for.
    pub max_output: Option<u32>,
    /// How many choices it asks for (OpenAI chat's `n`), at least 1.
    pub choices: u32,
}

/// The phase. Refusals: a body over the limit (413), one that stalls (408),
/// and an uninspectable body when `api.on_uninspectable = "refuse"`.
pub(super) async fn phase<B>(
    config: &Config,
    shared: &Shared,
    api: ApiKind,
    parts: &http::request::Parts,
    body: B,
) -> Result<Inspected, ProxyError>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let (body, read) = read_body(config, api, parts, body).await?;
    let uninspectable = read.uninspectable();
    if let Some(why) = uninspectable {
        let refuse = config.api.on_uninspectable == Uninspectable::Refuse;
        shared.metrics.uninspectable(why, refuse);
        if refuse {
            return Err(match why {
                Uninspected::TooLarge => {
                    ProxyError::BodyTooLarge(config.api.inspect_max_body_bytes)
                }
                Uninspected::Unparseable => ProxyError::BadRequest(
                    "the request body is not a JSON object this API accepts (invalid JSON, \
                     nesting deeper than 128 levels, or an invalid escape)"
                        .into(),
                ),
            });
        }
    }
    let info = match read {
        BodyRead::Inspected(i) => Some(i),
        BodyRead::TooLarge | BodyRead::Skipped => None,
    };
    let parsed = match &info {
        Some(Inspection::Parsed(i)) => Some(i),
        _ => None,
    };
    let max_output = parsed.and_then(|i| i.max_output_tokens);
    // OpenAI chat's `n` generates that many choices, each up to the limit.
    let choices = parsed.map_or(1, |i| i.choices.unwrap_or(1).clamp(1, MAX_CHOICES));
    let size_tokens = match &info {
        Some(Inspection::Parsed(_)) => None,
        Some(Inspection::NotJson { len }) => Some((*len as u64).div_ceil(4)),
        None => Some(body_len_hint(&parts.headers, &body).div_ceil(4)),
    };
    Ok(Inspected {
        body,
        info,
        uninspectable,
        size_tokens,
        max_output,
        choices,
    })
}

/// What the body step could read of a request.
enum BodyRead {
    /// An LLM body read whole and inspected (parsed, or not a JSON object).
    Inspected(Inspection),
    /// An LLM body over `api.inspect_max_body_bytes`, streamed on unread.
    TooLarge,
    /// Not an LLM request body (other endpoints, other methods, empty).
    Skipped,
}

impl BodyRead {
    fn uninspectable(&self) -> Option<Uninspected> {
        match self {
            BodyRead::Inspected(Inspection::NotJson { .. }) => Some(Uninspected::Unparseable),
            BodyRead::TooLarge => Some(Uninspected::TooLarge),
            BodyRead::Inspected(Inspection::Parsed(_)) | BodyRead::Skipped => None,
        }
    }
}

/// The body step: enforce the size limit and, for LLM endpoints, read the
/// body (up to the inspection cap) and inspect it. Bodies over the cap are
/// streamed on after the part already read, uninspected; the body arrives
/// under the read timeout and rate floor.
async fn read_body<B>(
    config: &Config,
    api: ApiKind,
    parts: &http::request::Parts,
    body: B,
) -> Result<(RequestBody, BodyRead), ProxyError>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let limit = config.limits.max_request_body_bytes;
    if let Some(len) = content_length(&parts.headers) {
        if len > limit {
            return Err(ProxyError::BodyTooLarge(limit));
        }
    }
    if body.is_end_stream() {
        return Ok((RequestBody::empty(), BodyRead::Skipped));
    }
    let l = &config.limits;
    let body = ClientBody::new(body, l.body_read_timeout, l.min_body_bytes_per_second);
    if api == ApiKind::Other || parts.method != Method::POST {
        return Ok((stream_body(None, body, limit), BodyRead::Skipped));
    }
    let cap = config.api.inspect_max_body_bytes.min(limit) as usize;
    if content_length(&parts.headers).is_some_and(|l| l > cap as u64)
        && config.api.on_uninspectable == Uninspectable::Refuse
    {
        // Known too large to inspect: refused without reading it.
        return Ok((stream_body(None, body, limit), BodyRead::TooLarge));
    }
    let mut buf = BytesMut::with_capacity(
        content_length(&parts.headers).map_or(8 * 1024, |l| (l as usize).min(cap)),
    );
    let mut body = body;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => {
                return Err(match e.downcast::<BodyTimeout>() {
                    Ok(t) => ProxyError::BodyTimeout(*t),
                    Err(e) => ProxyError::BadRequest(format!("reading the request body: {e}")),
                })
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                    if buf.len() as u64 > limit {
                        return Err(ProxyError::BodyTooLarge(limit));
                    }
                    if buf.len() > cap {
                        // Too big to inspect: forward what was read, then the rest.
                        let prefix = buf.freeze();
                        let remaining = limit - prefix.len() as u64;
                        let rb = RequestBody::Stream {
                            prefix: Some(prefix),
                            rest: body.boxed_unsync(),
                            remaining,
                            limit,
                        };
                        return Ok((rb, BodyRead::TooLarge));
                    }
                }
            }
        }
    }
    let bytes: Bytes = buf.freeze();
    let inspection = if bytes.len() < OFFLOAD_BYTES {
        inspect::inspect(api, &bytes)
    } else {
        let body = bytes.clone();
        tokio::task::spawn_blocking(move || inspect::inspect(api, &body))
            .await
            .map_err(|_| ProxyError::Internal("request inspection did not finish"))?
    };
    Ok((
        RequestBody::Full(Some(bytes)),
        BodyRead::Inspected(inspection),
    ))
}

fn stream_body<B>(prefix: Option<Bytes>, rest: ClientBody<B>, limit: u64) -> RequestBody
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    RequestBody::Stream {
        prefix,
        rest: rest.boxed_unsync(),
        remaining: limit,
        limit,
    }
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn body_len_hint(h: &http::HeaderMap, body: &RequestBody) -> u64 {
    content_length(h).unwrap_or_else(|| body.size_hint().lower())
}
