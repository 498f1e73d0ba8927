//! A stand-in model API for tests, demos and benchmarks (`distill-guard
//! mock-upstream`): Anthropic `POST /v1/messages`, OpenAI
//! `POST /v1/chat/completions` and `POST /v1/responses`, each as JSON or as
//! that API's real SSE event sequence, with usage counts derived from the
//! prompt and `max_tokens`.
//!
//! Usage rule: `input_tokens` = the proxy's own estimate of the prompt
//! ([`crate::api::inspect`], so the two agree exactly); `output_tokens` =
//! `min(max_tokens, 32 + input_tokens)`, one generated word per token.
//!
//! Per-request knobs, as request headers (for tests):
//! `x-mock-latency-ms` (delay before the response head),
//! `x-mock-pause-after-first-ms` (pause after the first SSE event),
//! `x-mock-token-delay-ms` (delay per streamed token),
//! `x-mock-output-tokens` (output length instead of the rule above, still
//! capped by `max_tokens`), `x-mock-report-output-tokens` (report this
//! output count in usage whatever was sent: an upstream that lies),
//! `x-mock-status`
//! (answer with this status and an error body), `x-mock-no-usage: 1` (omit
//! usage fields). `GET /mock/requests` returns the last requests received
//! (method, path, headers, body) as JSON.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::api::estimate::estimate_tokens;
use crate::api::inspect::{inspect, Inspection, RequestInfo};
use crate::api::ApiKind;

/// Defaults applied to every request (headers can override per request).
#[derive(Debug, Clone, Default)]
pub struct MockOptions {
    /// Delay before the response head.
    pub latency: Duration,
    /// Delay per streamed token.
    pub token_delay: Duration,
}

/// One request as the mock saw it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SeenRequest {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, lower-case names, in `HeaderMap` order.
    pub headers: Vec<(String, String)>,
    /// Body as UTF-8 (lossy).
    pub body: String,
}

const KEEP_REQUESTS: usize = 256;

/// Longer JSON answers are streamed rather than built whole.
const STREAM_JSON_TOKENS: u32 = 65_536;

/// Text pieces joined into chunks of about `size` bytes.
trait CollectChunks: Iterator<Item = String> + Sized {
    fn collect_chunks(self, size: usize) -> impl Iterator<Item = String> {
        let mut it = self.peekable();
        std::iter::from_fn(move || {
            let mut chunk = it.next()?;
            while chunk.len() < size {
                match it.next() {
                    Some(p) => chunk.push_str(&p),
                    None => break,
                }
            }
            Some(chunk)
        })
    }
}

impl<I: Iterator<Item = String>> CollectChunks for I {}

struct MockState {
    options: MockOptions,
    seen: Mutex<VecDeque<SeenRequest>>,
}

/// A running mock upstream.
pub struct MockHandle {
    addr: SocketAddr,
    state: Arc<MockState>,
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The requests received so far (at most the last 256).
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.state
            .seen
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Stop the mock and wait for it.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Block until the mock stops (it stops only when stopped elsewhere or the
    /// process ends).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Bind `addr` and serve the mock API on its own thread.
pub fn start(addr: SocketAddr, options: MockOptions) -> std::io::Result<MockHandle> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let state = Arc::new(MockState {
        options,
        seen: Mutex::new(VecDeque::new()),
    });
    let (tx, mut rx) = watch::channel(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let st = state.clone();
    let thread = std::thread::Builder::new()
        .name("dg-mock".into())
        .spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                    return;
                };
                let builder = auto::Builder::new(TokioExecutor::new());
                let graceful = GracefulShutdown::new();
                loop {
                    let (stream, _) = tokio::select! {
                        _ = rx.wait_for(|s| *s) => break,
                        a = listener.accept() => match a {
                            Ok(a) => a,
                            Err(_) => {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        },
                    };
                    let _ = stream.set_nodelay(true);
                    let st = st.clone();
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), svc)
                        .into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), graceful.shutdown()).await;
            })
        })?;
    Ok(MockHandle {
        addr,
        state,
        shutdown: tx,
        thread: Some(thread),
    })
}

/// Response body of the mock: complete, or fed event by event from a task.
pub enum MockBody {
    /// A complete body.
    Full(Option<Bytes>),
    /// Streamed chunks.
    Channel(mpsc::Receiver<Bytes>),
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            MockBody::Full(b) => {
                http_body::SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            MockBody::Channel(_) => http_body::SizeHint::default(),
        }
    }
}

fn header_ms(h: &HeaderMap, name: &str) -> Option<Duration> {
    h.get(name)?
        .to_str()
        .ok()?
        .parse::<u64>()
        .ok()
        .map(Duration::from_millis)
}

fn json_response(status: StatusCode, v: &Value) -> Response<MockBody> {
    let mut r = Response::new(MockBody::Full(Some(Bytes::from(v.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(
    state: Arc<MockState>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let path = parts.uri.path().to_string();
    if parts.method == Method::GET && path == "/mock/requests" {
        let seen = state.seen.lock().map(|s| s.clone()).unwrap_or_default();
        return Ok(json_response(StatusCode::OK, &json!(seen)));
    }
    if let Ok(mut seen) = state.seen.lock() {
        if seen.len() >= KEEP_REQUESTS {
            seen.pop_front();
        }
        seen.push_back(SeenRequest {
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or(path.clone(), |p| p.to_string()),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect(),
            body: String::from_utf8_lossy(&body).into(),
        });
    }

    let h = &parts.headers;
    let latency = header_ms(h, "x-mock-latency-ms").unwrap_or(state.options.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(status) = h
        .get("x-mock-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
    {
        let v = json!({"type":"error","error":{"type":"api_error","message":"mock error"}});
        return Ok(json_response(status, &v));
    }

    let api = match (parts.method.clone(), path.as_str()) {
        (Method::POST, "/v1/messages") => Api::Anthropic,
        (Method::POST, "/v1/chat/completions") => Api::Chat,
        (Method::POST, "/v1/responses") => Api::Responses,
        _ => {
            let v = json!({"type":"error","error":{"type":"not_found_error","message":"mock: no such endpoint"}});
            return Ok(json_response(StatusCode::NOT_FOUND, &v));
        }
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        let v = match api {
            Api::Anthropic => {
                json!({"type":"error","error":{"type":"invalid_request_error","message":"mock: body is not JSON"}})
            }
            _ => {
                json!({"error":{"message":"mock: body is not JSON","type":"invalid_request_error","param":null,"code":null}})
            }
        };
        return Ok(json_response(StatusCode::BAD_REQUEST, &v));
    };
    let plan = Plan::new(api, &body, &req, h, &state.options);
    if plan.stream {
        Ok(plan.stream_response())
    } else {
        Ok(plan.json_response())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Anthropic,
    Chat,
    Responses,
}

/// What one mock answer will contain.
struct Plan {
    api: Api,
    model: String,
    stream: bool,
    include_usage: bool,
    input_tokens: u32,
    output_tokens: u32,
    /// The output count usage reports (normally `output_tokens`).
    reported_output: u32,
    stop_at_limit: bool,
    pause_after_first: Duration,
    token_delay: Duration,
}

impl Plan {
    fn new(api: Api, body: &[u8], req: &Value, h: &HeaderMap, opts: &MockOptions) -> Plan {
        let kind = match api {
            Api::Anthropic => ApiKind::Anthropic,
            Api::Chat => ApiKind::OpenAiChat,
            Api::Responses => ApiKind::OpenAiResponses,
        };
        // The same inspection (and token estimator) the proxy uses, so the
        // mock's input_tokens equal the proxy's estimate.
        let info = match inspect(kind, body) {
            Inspection::Parsed(i) => i,
            Inspection::NotJson { .. } => RequestInfo::default(),
        };
        let max_tokens = info.max_output_tokens.unwrap_or(1024);
        let input_tokens = estimate_tokens(&info.prompt).max(1);
        let natural = h
            .get("x-mock-output-tokens")
            .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())
            .unwrap_or_else(|| 32u32.saturating_add(input_tokens));
        let no_usage = h.get("x-mock-no-usage").is_some_and(|v| v == "1");
        let include_usage = !no_usage
            && (!info.stream
                || match api {
                    Api::Chat => req
                        .pointer("/stream_options/include_usage")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                    _ => true,
                });
        Plan {
            api,
            model: info.model.unwrap_or_else(|| "mock-model".to_string()),
            stream: info.stream,
            include_usage,
            input_tokens,
            output_tokens: natural.min(max_tokens),
            reported_output: h
                .get("x-mock-report-output-tokens")
                .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())
                .unwrap_or(natural.min(max_tokens)),
            stop_at_limit: natural >= max_tokens,
            pause_after_first: header_ms(h, "x-mock-pause-after-first-ms").unwrap_or_default(),
            token_delay: header_ms(h, "x-mock-token-delay-ms").unwrap_or(opts.token_delay),
        }
    }

    fn text(&self) -> String {
        self.pieces().collect()
    }

    fn json_body(&self) -> Value {
        self.json_body_with(self.text())
    }

    fn json_body_with(&self, text: String) -> Value {
        let (i, o) = (self.input_tokens, self.reported_output);
        let mut v = match self.api {
            Api::Anthropic => json!({
                "id": "msg_mock",
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": if self.stop_at_limit { "max_tokens" } else { "end_turn" },
                "stop_sequence": null,
                "usage": {"input_tokens": i, "output_tokens": o}
            }),
            Api::Chat => json!({
                "id": "chatcmpl-mock",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": if self.stop_at_limit { "length" } else { "stop" }}],
                "usage": {"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o}
            }),
            Api::Responses => json!({
                "id": "resp_mock",
                "object": "response",
                "status": "completed",
                "model": self.model,
                "output": [{"type": "message", "role": "assistant",
                            "content": [{"type": "output_text", "text": text}]}],
                "usage": {"input_tokens": i, "output_tokens": o, "total_tokens": i + o}
            }),
        };
        if !self.include_usage {
            if let Some(o) = v.as_object_mut() {
                o.remove("usage");
            }
        }
        v
    }

    /// The text pieces streamed one per SSE delta (4 words each), made as
    /// they are sent: a long answer is never held in memory whole.
    fn pieces(&self) -> impl Iterator<Item = String> + Send + 'static {
        const WORDS: [&str; 8] = [
            "lorem",
            "ipsum",
            "dolor",
            "sit",
            "amet",
            "consectetur",
            "adipiscing",
            "elit",
        ];
        let n = self.output_tokens as usize;
        (0..n.div_ceil(4)).map(move |c| {
            let mut s = String::with_capacity(48);
            for i in c * 4..(c * 4 + 4).min(n) {
                if i > 0 {
                    s.push(' ');
                }
                s.push_str(WORDS[i % WORDS.len()]);
            }
            s
        })
    }

    /// The SSE events of this answer, in order: the opening events, one
    /// event per text piece (made lazily), and the closing events.
    fn events(&self) -> impl Iterator<Item = String> + Send + 'static {
        let (i, o) = (self.input_tokens, self.reported_output);
        let api = self.api;
        let model = self.model.clone();
        let sse = |event: Option<&str>, data: &Value| match event {
            Some(e) => format!("event: {e}\ndata: {data}\n\n"),
            None => format!("data: {data}\n\n"),
        };
        let chat_chunk = {
            let model = model.clone();
            move |delta: Value, finish: Value| json!({"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1_700_000_000,"model":model,"choices":[{"index":0,"delta":delta,"finish_reason":finish}]})
        };
        let mut head = Vec::with_capacity(3);
        let mut tail = Vec::with_capacity(3);
        match api {
            Api::Anthropic => {
                let mut start = json!({"type":"message_start","message":{"id":"msg_mock","type":"message","role":"assistant","model":model,"content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":i,"output_tokens":1}}});
                if !self.include_usage {
                    if let Some(m) = start.get_mut("message").and_then(Value::as_object_mut) {
                        m.remove("usage");
                    }
                }
                head.push(sse(Some("message_start"), &start));
                head.push(sse(Some("content_block_start"), &json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})));
                head.push(sse(Some("ping"), &json!({"type":"ping"})));
                tail.push(sse(
                    Some("content_block_stop"),
                    &json!({"type":"content_block_stop","index":0}),
                ));
                let stop = if self.stop_at_limit {
                    "max_tokens"
                } else {
                    "end_turn"
                };
                let mut delta = json!({"type":"message_delta","delta":{"stop_reason":stop,"stop_sequence":null},"usage":{"output_tokens":o}});
                if !self.include_usage {
                    if let Some(m) = delta.as_object_mut() {
                        m.remove("usage");
                    }
                }
                tail.push(sse(Some("message_delta"), &delta));
                tail.push(sse(Some("message_stop"), &json!({"type":"message_stop"})));
            }
            Api::Chat => {
                head.push(sse(
                    None,
                    &chat_chunk(json!({"role":"assistant","content":""}), Value::Null),
                ));
                let finish = if self.stop_at_limit { "length" } else { "stop" };
                tail.push(sse(None, &chat_chunk(json!({}), json!(finish))));
                if self.include_usage {
                    tail.push(sse(None, &json!({"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1_700_000_000,"model":model,"choices":[],"usage":{"prompt_tokens":i,"completion_tokens":o,"total_tokens":i+o}})));
                }
                tail.push("data: [DONE]\n\n".to_string());
            }
            Api::Responses => {
                head.push(sse(Some("response.created"), &json!({"type":"response.created","response":{"id":"resp_mock","object":"response","status":"in_progress","model":model}})));
                let mut done = json!({"type":"response.completed","response":{"id":"resp_mock","object":"response","status":"completed","model":model,"usage":{"input_tokens":i,"output_tokens":o,"total_tokens":i+o}}});
                if !self.include_usage {
                    if let Some(r) = done.get_mut("response").and_then(Value::as_object_mut) {
                        r.remove("usage");
                    }
                }
                tail.push(sse(Some("response.completed"), &done));
            }
        }
        let piece = move |p: String| match api {
            Api::Anthropic => sse(
                Some("content_block_delta"),
                &json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":p}}),
            ),
            Api::Chat => sse(None, &chat_chunk(json!({"content":p}), Value::Null)),
            Api::Responses => sse(
                Some("response.output_text.delta"),
                &json!({"type":"response.output_text.delta","item_id":"msg_mock","output_index":0,"content_index":0,"delta":p}),
            ),
        };
        head.into_iter().chain(self.pieces().map(piece)).chain(tail)
    }

    /// The JSON answer: built whole when short; past [`STREAM_JSON_TOKENS`]
    /// its text is sent piece by piece between the JSON around it, so a
    /// multi-million-token answer costs the mock no more memory than a
    /// short one.
    fn json_response(self) -> Response<MockBody> {
        if self.output_tokens <= STREAM_JSON_TOKENS {
            return json_response(StatusCode::OK, &self.json_body());
        }
        const MARK: &str = "\u{1}mock-text\u{1}";
        let shell = self.json_body_with(MARK.to_string()).to_string();
        let escaped = serde_json::to_string(MARK).unwrap_or_default();
        let inner = escaped.trim_matches('"');
        let (before, after) = shell.split_once(inner).unwrap_or((&shell, ""));
        let (before, after) = (before.to_string(), after.to_string());
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let pieces = self.pieces();
        tokio::spawn(async move {
            let chunks = std::iter::once(before)
                .chain(pieces.collect_chunks(16 * 1024))
                .chain(std::iter::once(after));
            for c in chunks {
                if tx.send(Bytes::from(c)).await.is_err() {
                    return;
                }
            }
        });
        let mut r = Response::new(MockBody::Channel(rx));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    }

    fn stream_response(self) -> Response<MockBody> {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let events = self.events();
        let pause = self.pause_after_first;
        let per_event = self.token_delay * 4;
        tokio::spawn(async move {
            for (n, e) in events.enumerate() {
                if tx.send(Bytes::from(e)).await.is_err() {
                    return;
                }
                if n == 0 && !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                } else if !per_event.is_zero() {
                    tokio::time::sleep(per_event).await;
                }
            }
        });
        let mut r = Response::new(MockBody::Channel(rx));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        r.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-cache"),
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(api: Api, req: Value) -> Plan {
        let body = req.to_string();
        Plan::new(
            api,
            body.as_bytes(),
            &req,
            &HeaderMap::new(),
            &MockOptions::default(),
        )
    }

    #[test]
    fn usage_follows_prompt_and_max_tokens() {
        let p = plan(
            Api::Anthropic,
            json!({"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hello there"}]}),
        );
        assert_eq!(p.output_tokens, 10);
        assert!(p.stop_at_limit);
        let body = p.json_body();
        assert_eq!(body["usage"]["output_tokens"], 10);
        assert_eq!(
            body["content"][0]["text"]
                .as_str()
                .unwrap()
                .split(' ')
                .count(),
            10
        );
    }

    #[test]
    fn anthropic_stream_has_the_real_event_sequence() {
        let p = plan(
            Api::Anthropic,
            json!({"model":"m","max_tokens":9,"stream":true,"messages":[{"role":"user","content":"hi"}]}),
        );
        let names: Vec<String> = p
            .events()
            .map(|e| {
                e.lines()
                    .next()
                    .unwrap()
                    .trim_start_matches("event: ")
                    .to_string()
            })
            .collect();
        assert_eq!(names.first().unwrap(), "message_start");
        assert_eq!(names.last().unwrap(), "message_stop");
        assert_eq!(names[names.len() - 2], "message_delta");
        assert_eq!(
            names.iter().filter(|n| *n == "content_block_delta").count(),
            3
        );
        let text: String = p
            .events()
            .filter(|e| e.contains("text_delta"))
            .map(|e| {
                let data = e.lines().nth(1).unwrap().trim_start_matches("data: ");
                let v: Value = serde_json::from_str(data).unwrap();
                v["delta"]["text"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(text.split(' ').count(), 9);
    }

    #[tokio::test]
    async fn long_json_answers_stream_and_stay_valid_json() {
        let p = plan(
            Api::Anthropic,
            json!({"model":"m","max_tokens":200000,"messages":[{"role":"user","content":"hi"}]}),
        );
        let mut p = p;
        p.output_tokens = 200_000;
        p.reported_output = 200_000;
        let body = p.json_response().into_body();
        let bytes = http_body_util::BodyExt::collect(body)
            .await
            .unwrap()
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let text = v["content"][0]["text"].as_str().unwrap();
        assert_eq!(text.split(' ').count(), 200_000);
        assert_eq!(v["usage"]["output_tokens"], 200_000);
    }

    #[test]
    fn openai_stream_reports_usage_only_when_asked() {
        let without = plan(
            Api::Chat,
            json!({"model":"m","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}),
        );
        assert!(!without.events().any(|e| e.contains("\"usage\"")));
        let with = plan(
            Api::Chat,
            json!({"model":"m","max_tokens":5,"stream":true,"stream_options":{"include_usage":true},
                   "messages":[{"role":"user","content":"hi"}]}),
        );
        let ev: Vec<String> = with.events().collect();
        assert_eq!(ev.last().unwrap(), "data: [DONE]\n\n");
        assert!(ev[ev.len() - 2].contains("\"completion_tokens\":5"));
    }
}
