//! LLM API shapes (placeholder until the inspection module lands): which API a
//! path belongs to, and refusal bodies in that API's own error shape.

use bytes::Bytes;

/// Which model API a request path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    /// Anthropic Messages API (`/v1/messages`).
    Anthropic,
    /// OpenAI Chat Completions (`/v1/chat/completions`).
    OpenAiChat,
    /// OpenAI Responses (`/v1/responses`).
    OpenAiResponses,
    /// Anything else.
    Other,
}

impl ApiKind {
    /// Classify a request path (query ignored).
    pub fn from_path(path: &str) -> ApiKind {
        let path = path.split('?').next().unwrap_or(path);
        match path {
            "/v1/messages" => ApiKind::Anthropic,
            "/v1/chat/completions" => ApiKind::OpenAiChat,
            "/v1/responses" => ApiKind::OpenAiResponses,
            _ => ApiKind::Other,
        }
    }

    /// The error shape refusals on this API use.
    pub fn error_shape(self) -> ErrorShape {
        match self {
            ApiKind::OpenAiChat | ApiKind::OpenAiResponses => ErrorShape::OpenAi,
            ApiKind::Anthropic | ApiKind::Other => ErrorShape::Anthropic,
        }
    }
}

/// Error body layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    /// `{"type":"error","error":{"type":…,"message":…}}`
    Anthropic,
    /// `{"error":{"message":…,"type":…,"param":null,"code":…}}`
    OpenAi,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 429.
    RateLimited,
    /// 403.
    Forbidden,
    /// 401.
    Unauthorized,
    /// 413.
    PayloadTooLarge,
    /// 502.
    BadGateway,
    /// 504.
    GatewayTimeout,
    /// 400.
    InvalidRequest,
    /// 503.
    Overloaded,
    /// 500.
    Internal,
}

/// HTTP status for an error kind.
pub fn status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::RateLimited => 429,
        ErrorKind::Forbidden => 403,
        ErrorKind::Unauthorized => 401,
        ErrorKind::PayloadTooLarge => 413,
        ErrorKind::BadGateway => 502,
        ErrorKind::GatewayTimeout => 504,
        ErrorKind::InvalidRequest => 400,
        ErrorKind::Overloaded => 503,
        ErrorKind::Internal => 500,
    }
}

/// A JSON error body in the API's own shape.
pub fn error_body(shape: ErrorShape, kind: ErrorKind, message: &str) -> Bytes {
    let (anthropic_type, openai_type, openai_code) = match kind {
        ErrorKind::RateLimited => (
            "rate_limit_error",
            "rate_limit_exceeded",
            "rate_limit_exceeded",
        ),
        ErrorKind::Forbidden => ("permission_error", "invalid_request_error", "forbidden"),
        ErrorKind::Unauthorized => (
            "authentication_error",
            "invalid_request_error",
            "invalid_api_key",
        ),
        ErrorKind::PayloadTooLarge => (
            "request_too_large",
            "invalid_request_error",
            "request_too_large",
        ),
        ErrorKind::BadGateway => ("api_error", "server_error", "bad_gateway"),
        ErrorKind::GatewayTimeout => ("api_error", "server_error", "timeout"),
        ErrorKind::InvalidRequest => (
            "invalid_request_error",
            "invalid_request_error",
            "invalid_request",
        ),
        ErrorKind::Overloaded => ("overloaded_error", "server_error", "overloaded"),
        ErrorKind::Internal => ("api_error", "server_error", "internal_error"),
    };
    let v = match shape {
        ErrorShape::Anthropic => serde_json::json!({
            "type": "error",
            "error": {"type": anthropic_type, "message": message}
        }),
        ErrorShape::OpenAi => serde_json::json!({
            "error": {"message": message, "type": openai_type, "param": null, "code": openai_code}
        }),
    };
    Bytes::from(v.to_string())
}

/// Estimated LLM tokens of a text (placeholder: bytes / 4, rounded up).
pub fn estimate_tokens(text: &str) -> u32 {
    u32::try_from(text.len().div_ceil(4)).unwrap_or(u32::MAX)
}
