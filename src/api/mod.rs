//! Request-path step "classify" (first step of the API layer): tells which LLM
//! API a request targets from its path, and renders the proxy's own error
//! replies in that API's JSON error shape with the matching HTTP status.
//!
//! The submodules are the API layer's later steps: [`inspect`] (request
//! inspection and the degrade rewrite, before policy), [`estimate`] (the
//! token estimator inspection and metering share) and [`meter`]
//! (incremental usage metering of the response body, after forwarding).
//!
//! # Error shapes
//!
//! [`error_body`] renders `{"type":"error","error":{"type":T,"message":M}}`
//! for [`ErrorShape::Anthropic`] and
//! `{"error":{"message":M,"type":T,"param":null,"code":C}}` for
//! [`ErrorShape::OpenAi`]. The message is JSON-escaped by `serde_json`.
//!
//! | [`ErrorKind`]     | [`status`] | Anthropic `error.type`  | OpenAI `error.type`     | OpenAI `error.code`   |
//! |-------------------|-----------:|-------------------------|-------------------------|-----------------------|
//! | `RateLimited`     | 429        | `rate_limit_error`      | `requests`              | `rate_limit_exceeded` |
//! | `Forbidden`       | 403        | `permission_error`      | `request_forbidden`     | `forbidden`           |
//! | `Unauthorized`    | 401        | `authentication_error`  | `invalid_request_error` | `invalid_api_key`     |
//! | `PayloadTooLarge` | 413        | `request_too_large`     | `invalid_request_error` | `request_too_large`   |
//! | `BadGateway`      | 502        | `api_error`             | `server_error`          | `bad_gateway`         |
//! | `GatewayTimeout`  | 504        | `api_error`             | `server_error`          | `timeout`             |
//! | `InvalidRequest`  | 400        | `invalid_request_error` | `invalid_request_error` | `null`                |
//! | `RequestTimeout`  | 408        | `invalid_request_error` | `invalid_request_error` | `request_timeout`     |
//! | `Overloaded`      | 529 / 503  | `overloaded_error`      | `server_error`          | `overloaded`          |
//! | `Internal`        | 500        | `api_error`             | `server_error`          | `null`                |
//!
//! Anthropic types are the ones its error docs list (`invalid_request_error`,
//! `authentication_error`, `permission_error`, `not_found_error`,
//! `request_too_large`, `rate_limit_error`, `api_error`, `overloaded_error`);
//! a gateway timeout is an `api_error` because no dedicated 504 type is in
//! that list. OpenAI types/codes follow what its API returns: `requests` +
//! `rate_limit_exceeded` for 429, `invalid_api_key` for 401,
//! `request_forbidden` for 403 (its region block), `server_error` for 5xx.
//! Overloaded is 529 in Anthropic's shape (its documented status) and 503 in
//! OpenAI's ([`status_for`]); [`status`] alone returns 529.

pub mod estimate;
pub mod inspect;
pub mod meter;

use bytes::Bytes;
use serde::Serialize;

/// Why an LLM request body could not be inspected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uninspected {
    /// Not a JSON object the parser accepts.
    Unparseable,
    /// Over `api.inspect_max_body_bytes`.
    TooLarge,
}

impl Uninspected {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Uninspected::Unparseable => "unparseable",
            Uninspected::TooLarge => "too_large",
        }
    }
}

/// The upstream API a request path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiKind {
    /// Anthropic Messages API, `POST /v1/messages`.
    Anthropic,
    /// OpenAI Chat Completions, `POST /v1/chat/completions`.
    OpenAiChat,
    /// OpenAI Responses API, `POST /v1/responses`.
    OpenAiResponses,
    /// Any other path (forwarded without inspection).
    Other,
}

impl ApiKind {
    /// Classifies a request path. The query string (`?…`) and fragment
    /// (`#…`) are ignored; the match is exact otherwise (no trailing slash,
    /// case-sensitive), so `/v1/messages/count_tokens` is [`ApiKind::Other`].
    pub fn from_path(path: &str) -> ApiKind {
        let end = path.find(['?', '#']).unwrap_or(path.len());
        match path.get(..end).unwrap_or(path) {
            "/v1/messages" => ApiKind::Anthropic,
            "/v1/chat/completions" => ApiKind::OpenAiChat,
            "/v1/responses" => ApiKind::OpenAiResponses,
            _ => ApiKind::Other,
        }
    }

    /// The LLM endpoint a non-canonical `path` names once normalised the
    /// way upstream servers commonly do (percent-decoding, repeated
    /// slashes merged, `.` and `..` segments resolved, a trailing slash
    /// dropped, case folded), when [`ApiKind::from_path`] does not see one
    /// in it as written: such a request would reach the model uninspected.
    /// None for canonical paths and for paths that name no LLM endpoint.
    pub fn disguised(path: &str) -> Option<ApiKind> {
        let end = path.find(['?', '#']).unwrap_or(path.len());
        let raw = path.get(..end).unwrap_or(path);
        if ApiKind::from_path(raw) != ApiKind::Other {
            return None;
        }
        let decoded = percent_decode(raw);
        let mut segments: Vec<&str> = Vec::new();
        for seg in decoded.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    segments.pop();
                }
                s => segments.push(s),
            }
        }
        let normal = format!("/{}", segments.join("/")).to_ascii_lowercase();
        match ApiKind::from_path(&normal) {
            ApiKind::Other => None,
            kind => Some(kind),
        }
    }

    /// The canonical path of this API's endpoint ("" for
    /// [`ApiKind::Other`]).
    pub fn path(self) -> &'static str {
        match self {
            ApiKind::Anthropic => "/v1/messages",
            ApiKind::OpenAiChat => "/v1/chat/completions",
            ApiKind::OpenAiResponses => "/v1/responses",
            ApiKind::Other => "",
        }
    }

    /// The error shape clients of this API expect; [`ApiKind::Other`] gets
    /// Anthropic's.
    pub fn error_shape(self) -> ErrorShape {
        match self {
            ApiKind::OpenAiChat | ApiKind::OpenAiResponses => ErrorShape::OpenAi,
            ApiKind::Anthropic | ApiKind::Other => ErrorShape::Anthropic,
        }
    }
}

/// `%XX` escapes decoded (twice over, as a chain of decoders may); invalid
/// escapes and non-UTF-8 results kept as they are.
fn percent_decode(path: &str) -> String {
    let once = |s: &str| -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b[i],
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (b'%', Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                (c, _, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).unwrap_or_else(|_| s.to_string())
    };
    once(&once(path))
}

/// JSON shape of an error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorShape {
    /// `{"type":"error","error":{"type":…,"message":…}}`.
    Anthropic,
    /// `{"error":{"message":…,"type":…,"param":null,"code":…}}`.
    OpenAi,
}

/// Why the proxy answers with an error (see the table in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Too many requests or tokens (429).
    RateLimited,
    /// The caller is not allowed to do this (403).
    Forbidden,
    /// Missing or invalid credentials (401).
    Unauthorized,
    /// Request body over the size limit (413).
    PayloadTooLarge,
    /// The upstream failed or answered garbage (502).
    BadGateway,
    /// The upstream did not answer in time (504).
    GatewayTimeout,
    /// The request is malformed (400).
    InvalidRequest,
    /// The client sent its request body too slowly (408).
    RequestTimeout,
    /// Temporarily over capacity (529 Anthropic shape, 503 OpenAI shape).
    Overloaded,
    /// A bug or unexpected state in the proxy (500).
    Internal,
}

impl ErrorKind {
    /// Stable snake_case label (logs, metrics).
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::BadGateway => "bad_gateway",
            ErrorKind::GatewayTimeout => "gateway_timeout",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Internal => "internal",
        }
    }

    /// Anthropic `error.type`.
    fn anthropic_type(self) -> &'static str {
        match self {
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::Forbidden => "permission_error",
            ErrorKind::Unauthorized => "authentication_error",
            ErrorKind::PayloadTooLarge => "request_too_large",
            ErrorKind::BadGateway | ErrorKind::GatewayTimeout | ErrorKind::Internal => "api_error",
            ErrorKind::InvalidRequest | ErrorKind::RequestTimeout => "invalid_request_error",
            ErrorKind::Overloaded => "overloaded_error",
        }
    }

    /// OpenAI `error.type` and `error.code`.
    fn openai_type_code(self) -> (&'static str, Option<&'static str>) {
        match self {
            ErrorKind::RateLimited => ("requests", Some("rate_limit_exceeded")),
            ErrorKind::Forbidden => ("request_forbidden", Some("forbidden")),
            ErrorKind::Unauthorized => ("invalid_request_error", Some("invalid_api_key")),
            ErrorKind::PayloadTooLarge => ("invalid_request_error", Some("request_too_large")),
            ErrorKind::BadGateway => ("server_error", Some("bad_gateway")),
            ErrorKind::GatewayTimeout => ("server_error", Some("timeout")),
            ErrorKind::InvalidRequest => ("invalid_request_error", None),
            ErrorKind::RequestTimeout => ("invalid_request_error", Some("request_timeout")),
            ErrorKind::Overloaded => ("server_error", Some("overloaded")),
            ErrorKind::Internal => ("server_error", None),
        }
    }
}

/// HTTP status for an error kind (Anthropic conventions: `Overloaded` is 529).
pub fn status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::RateLimited => 429,
        ErrorKind::Forbidden => 403,
        ErrorKind::Unauthorized => 401,
        ErrorKind::PayloadTooLarge => 413,
        ErrorKind::BadGateway => 502,
        ErrorKind::GatewayTimeout => 504,
        ErrorKind::InvalidRequest => 400,
        ErrorKind::RequestTimeout => 408,
        ErrorKind::Overloaded => 529,
        ErrorKind::Internal => 500,
    }
}

/// HTTP status for an error kind in a given shape: as [`status`], except
/// `Overloaded` is 503 in OpenAI's shape (OpenAI never sends 529).
pub fn status_for(shape: ErrorShape, kind: ErrorKind) -> u16 {
    match (shape, kind) {
        (ErrorShape::OpenAi, ErrorKind::Overloaded) => 503,
        _ => status(kind),
    }
}

#[derive(Serialize)]
struct AnthropicInner<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct AnthropicError<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    error: AnthropicInner<'a>,
}

#[derive(Serialize)]
struct OpenAiInner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    ty: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

#[derive(Serialize)]
struct OpenAiError<'a> {
    error: OpenAiInner<'a>,
}

/// Renders the JSON error body for `kind` in `shape`, with `message`
/// JSON-escaped (see the table in the module docs). Never panics.
pub fn error_body(shape: ErrorShape, kind: ErrorKind, message: &str) -> Bytes {
    let rendered = match shape {
        ErrorShape::Anthropic => serde_json::to_vec(&AnthropicError {
            ty: "error",
            error: AnthropicInner {
                ty: kind.anthropic_type(),
                message,
            },
        }),
        ErrorShape::OpenAi => {
            let (ty, code) = kind.openai_type_code();
            serde_json::to_vec(&OpenAiError {
                error: OpenAiInner {
                    message,
                    ty,
                    param: None,
                    code,
                },
            })
        }
    };
    match rendered {
        Ok(v) => Bytes::from(v),
        // Serialising borrowed strings cannot fail; keep a valid body anyway.
        Err(_) => Bytes::from_static(
            br#"{"type":"error","error":{"type":"api_error","message":"internal error"}}"#,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const ALL: [ErrorKind; 10] = [
        ErrorKind::RateLimited,
        ErrorKind::Forbidden,
        ErrorKind::Unauthorized,
        ErrorKind::PayloadTooLarge,
        ErrorKind::BadGateway,
        ErrorKind::GatewayTimeout,
        ErrorKind::InvalidRequest,
        ErrorKind::RequestTimeout,
        ErrorKind::Overloaded,
        ErrorKind::Internal,
    ];

    #[test]
    fn disguised_llm_paths_are_recognised() {
        for (path, kind) in [
            ("/v1/chat/%63ompletions", ApiKind::OpenAiChat),
            ("//v1/messages", ApiKind::Anthropic),
            ("/v1//messages", ApiKind::Anthropic),
            ("/v1/./messages", ApiKind::Anthropic),
            ("/v1/x/../messages", ApiKind::Anthropic),
            ("/v1/messages/", ApiKind::Anthropic),
            ("/V1/Messages", ApiKind::Anthropic),
            ("/v1%2Fresponses", ApiKind::OpenAiResponses),
            ("/v1/chat/%2563ompletions?x=1", ApiKind::OpenAiChat),
        ] {
            assert_eq!(ApiKind::disguised(path), Some(kind), "{path}");
        }
        for path in [
            "/v1/messages",
            "/v1/messages?beta=true",
            "/v1/messages/count_tokens",
            "/v1/models",
            "/v1/chat/completions/",
            "/%zz/messages",
            "/",
            "",
        ] {
            let want = (path == "/v1/chat/completions/").then_some(ApiKind::OpenAiChat);
            assert_eq!(ApiKind::disguised(path), want, "{path}");
        }
    }

    #[test]
    fn paths() {
        assert_eq!(ApiKind::from_path("/v1/messages"), ApiKind::Anthropic);
        assert_eq!(
            ApiKind::from_path("/v1/messages?beta=true"),
            ApiKind::Anthropic
        );
        assert_eq!(
            ApiKind::from_path("/v1/chat/completions"),
            ApiKind::OpenAiChat
        );
        assert_eq!(
            ApiKind::from_path("/v1/chat/completions?x=1#f"),
            ApiKind::OpenAiChat
        );
        assert_eq!(
            ApiKind::from_path("/v1/responses"),
            ApiKind::OpenAiResponses
        );
        assert_eq!(
            ApiKind::from_path("/v1/responses?"),
            ApiKind::OpenAiResponses
        );
        for p in [
            "",
            "/",
            "?",
            "/v1/messages/count_tokens",
            "/v1/messages/",
            "/V1/messages",
            "/v1/models",
            "/v1/responses/resp_1",
            "v1/messages",
            "/v1/messagesx",
        ] {
            assert_eq!(ApiKind::from_path(p), ApiKind::Other, "{p}");
        }
        assert_eq!(ApiKind::Other.error_shape(), ErrorShape::Anthropic);
        assert_eq!(ApiKind::Anthropic.error_shape(), ErrorShape::Anthropic);
        assert_eq!(ApiKind::OpenAiChat.error_shape(), ErrorShape::OpenAi);
        assert_eq!(ApiKind::OpenAiResponses.error_shape(), ErrorShape::OpenAi);
    }

    #[test]
    fn statuses() {
        let got: Vec<u16> = ALL.iter().map(|k| status(*k)).collect();
        assert_eq!(got, vec![429, 403, 401, 413, 502, 504, 400, 408, 529, 500]);
        assert_eq!(status_for(ErrorShape::OpenAi, ErrorKind::Overloaded), 503);
        assert_eq!(
            status_for(ErrorShape::Anthropic, ErrorKind::Overloaded),
            529
        );
        assert_eq!(status_for(ErrorShape::OpenAi, ErrorKind::RateLimited), 429);
    }

    #[test]
    fn anthropic_body() {
        let msg = "quota \"x\" \\ exceeded\n\u{1}é😀";
        for k in ALL {
            let b = error_body(ErrorShape::Anthropic, k, msg);
            let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["message"], msg);
            assert_eq!(v["error"]["type"], k.anthropic_type());
            assert_eq!(v.as_object().map(|o| o.len()), Some(2));
        }
        let b = error_body(ErrorShape::Anthropic, ErrorKind::RateLimited, "slow down");
        assert_eq!(
            &b[..],
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#
        );
    }

    #[test]
    fn openai_body() {
        let msg = "</script> \"quoted\" \t tab";
        for k in ALL {
            let b = error_body(ErrorShape::OpenAi, k, msg);
            let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
            let (ty, code) = k.openai_type_code();
            assert_eq!(v["error"]["message"], msg);
            assert_eq!(v["error"]["type"], ty);
            assert_eq!(v["error"]["param"], Value::Null);
            match code {
                Some(c) => assert_eq!(v["error"]["code"], c),
                None => assert_eq!(v["error"]["code"], Value::Null),
            }
        }
        let b = error_body(ErrorShape::OpenAi, ErrorKind::RateLimited, "slow down");
        assert_eq!(
            &b[..],
            br#"{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#
        );
    }
}
