//! The request path, in order — the one place that knows it:
//!
//! ```text
//! request id → API kind → fingerprint → identify → read + inspect body
//!   → engine.decide (budgets: state) → forward upstream → meter response
//!   → engine.settle (budgets: state)
//! ```
//!
//! Each step is a plain function in its own module; this file only calls them
//! in sequence and turns a refusal or failure into a response in the API's
//! own error shape (see [`crate::proxy::error`]). Every response, refusals
//! included, carries `x-request-id`.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tracing::{debug, info};

use crate::api::inspect::{self, Inspection};
use crate::api::meter::UsageMeter;
use crate::api::{ApiKind, Uninspected};
use crate::app::{ConnInfo, Shared, Worker};
use crate::config::{Config, MissingKey, Uninspectable};
use crate::engine::score::Level;
use crate::engine::{
    signature, AccountId, ClusterId, Observation, ObservedAttrs, Ticket, Usage, Verdict,
};
use crate::fingerprint::{self, ClientFingerprint, HttpFingerprint};
use crate::identity;
use crate::prompt::PromptFeatures;
use crate::proxy::body::{BodyTimeout, ClientBody, RequestBody, ResponseBody, ResponseObserver};
use crate::proxy::error::{error_response, throttle_response, ProxyError};
use crate::proxy::headers::{self, X_REQUEST_ID};

/// Serve one client request.
pub async fn handle(
    worker: &Worker,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let request_id = headers::request_id(req.headers());
    let api = ApiKind::from_path(req.uri().path());
    let method = req.method().clone();
    // For the access line: a Uri clone shares its bytes (no copy of the path).
    let uri = req.uri().clone();
    let mut log = AccessLog {
        started: std::time::Instant::now(),
        account: None,
        client: None,
        decision: "",
    };
    // A path an upstream would read as an LLM endpoint must be written as
    // one, or it would pass uninspected: refused in that API's shape.
    let served = match ApiKind::disguised(uri.path()) {
        Some(kind) => Err((
            kind,
            ProxyError::BadRequest(format!(
                "the request path is not in canonical form; send it as {}",
                kind.path()
            )),
        )),
        None => proxy_request(worker, conn, api, &request_id, req, &mut log)
            .await
            .map_err(|e| (api, e)),
    };
    let mut resp = match served {
        Ok(r) => r,
        Err((api, e)) => {
            debug!(request_id = ?request_id, error = %e, "request failed");
            log.decision = e.kind().label();
            let mut r = error_response(api.error_shape(), e.kind(), &e.client_message());
            if let Some(s) = e.retry_after() {
                r.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(s));
            }
            r
        }
    };
    worker.shared.metrics.request(if log.decision.is_empty() {
        "other"
    } else {
        log.decision
    });
    // One access line per request; the account is its keyed hash, never the
    // key. `client` is the address believed (a trusted front's word, else
    // the peer), `peer` the socket's.
    info!(
        target: "distill_guard::access",
        request_id = ?request_id,
        client = %log.client.unwrap_or_else(|| conn.client.ip()),
        peer = %conn.peer.ip(),
        method = %method,
        path = %uri.path(),
        account = log.account.map(|a| a.to_string()).unwrap_or_default(),
        decision = log.decision,
        status = resp.status().as_u16(),
        head_us = log.started.elapsed().as_micros() as u64,
        "request"
    );
    resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
    resp
}

/// What the access line reports about a request.
#[derive(Debug)]
struct AccessLog {
    started: std::time::Instant,
    account: Option<AccountId>,
    client: Option<std::net::IpAddr>,
    decision: &'static str,
}

async fn proxy_request(
    worker: &Worker,
    conn: &ConnInfo,
    api: ApiKind,
    request_id: &HeaderValue,
    req: Request<Incoming>,
    log: &mut AccessLog,
) -> Result<Response<ResponseBody>, ProxyError> {
    let shared = &worker.shared;
    let config = shared.config.load();
    // What a trusted front says first, then the client address: the
    // fingerprint's network prefix and ASN are the client's, not a front's.
    let trusted = identity::is_trusted(conn.client.ip(), &config.identity.trusted_proxies);
    let front = fingerprint::front::read(
        &config.fingerprint.front,
        req.headers(),
        trusted,
        |part, outcome| shared.metrics.front_header(part, outcome),
    );
    let client_ip = front.address.unwrap_or_else(|| {
        identity::client_ip(
            conn.client.ip(),
            req.headers(),
            &config.identity.trusted_proxies,
        )
    });
    log.client = Some(client_ip);
    let fp = client_fingerprint(&config, conn, client_ip, front, &req);
    let Some((account, anonymous)) = identify(&config, &shared.hasher, client_ip, &req) else {
        return Err(ProxyError::Unauthorized);
    };
    log.account = Some(account);

    let (mut parts, body) = req.into_parts();
    // Front headers never travel on, believed or not: the upstream cannot
    // mistake a forged one for the front's.
    fingerprint::front::strip(&config.fingerprint.front, &mut parts.headers);
    forward_fingerprint(&config, &fp, &mut parts.headers);
    let (mut body, read) = read_body(&config, api, &parts, body).await?;
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
    let requested_max_output = match &info {
        Some(Inspection::Parsed(i)) => i.max_output_tokens,
        _ => None,
    };
    // OpenAI chat's `n` generates that many choices, each up to the limit.
    let choices = match &info {
        Some(Inspection::Parsed(i)) => i.choices.unwrap_or(1).clamp(1, MAX_CHOICES),
        _ => 1,
    };
    let input_tokens = match &info {
        Some(Inspection::Parsed(i)) => u64::from(i.input_tokens_estimate),
        Some(Inspection::NotJson { len }) => (*len as u64).div_ceil(4),
        None => body_len_hint(&parts.headers, &body).div_ceil(4),
    };

    let engine = &shared.engine;
    let prompt = prompt_features(&config, info.as_ref());
    let attrs = observed_attrs(&config, &fp, prompt.keys);
    let request = request_facts(&config, &fp, info.as_ref(), &prompt);
    let obs = Observation {
        account,
        anonymous,
        input_tokens,
        attrs,
        request,
    };
    let (decision, receipt) = shared
        .state
        .decide(engine, &obs, shared.clock.now())
        .await
        .map_err(|_| ProxyError::StateUnavailable)?;
    let audit = Audit {
        shared,
        request_id,
        account,
        decision: &decision,
        fp: &fp,
    };
    if let Some(d) = &decision.detection {
        if d.level > Level::Allow {
            audit.detection(d);
        }
    }
    let mut record = shared.record.as_ref().map(|_| {
        traffic_record(
            request_id,
            account,
            anonymous,
            &fp,
            &obs,
            &decision,
            input_tokens,
        )
    });
    if let (Some(log), Some(r)) = (&shared.record, record.as_ref()) {
        // Refused requests are recorded now; admitted ones when they settle.
        if !matches!(decision.verdict, Verdict::Allow(_)) {
            log.record(r.clone());
            record = None;
        }
    }
    if let Some(c) = decision.cluster {
        shared
            .indicators
            .observe(c.id, &fp, obs.attrs.prompt.as_ref().map(|k| &k[..]));
    }
    let ticket = match &decision.verdict {
        Verdict::Allow(t) => {
            log.decision = decision.label();
            if config.audit.all_requests {
                audit.line("allow", Vec::new(), "enforce");
            }
            t.clone()
        }
        Verdict::Throttle(hit) => {
            log.decision = "throttle";
            shared.metrics.limit_hit(hit.scope, hit.kind);
            let reason = serde_json::json!({
                "scope": hit.scope.as_str(),
                "limit": hit.kind.as_str(),
                "retry_after_s": hit.retry_after.div_ceil(crate::engine::SECOND),
                "remaining": hit.remaining,
            });
            audit.line("throttle", vec![reason], "enforce");
            debug!(
                request_id = ?request_id,
                account = %account,
                limit = hit.kind.as_str(),
                scope = hit.scope.as_str(),
                "throttled"
            );
            return Ok(throttle_response(api.error_shape(), hit));
        }
        Verdict::Block(scope) => {
            log.decision = "block";
            let by_detection = decision
                .detection
                .as_ref()
                .is_some_and(|d| d.enforced == Level::Block);
            // A detection block already has its audit line (with its reasons).
            let message = if by_detection {
                format!(
                    "this {}'s traffic matches a model-distillation campaign and is blocked",
                    scope.as_str()
                )
            } else {
                let reason = serde_json::json!({"manual_block": scope.as_str()});
                audit.line("block", vec![reason], "enforce");
                format!("this {} is blocked", scope.as_str())
            };
            return Ok(error_response(
                api.error_shape(),
                crate::api::ErrorKind::Forbidden,
                &message,
            ));
        }
    };
    // From here the ticket is settled exactly once, whatever happens.
    let mut settlement = Settlement::new(shared.clone(), ticket, receipt);
    settlement.record = record;
    // What the upstream may report at most: the output limit the request
    // was forwarded with, times its choices. Input is bounded only by what
    // no model reads: a body's bytes are no bound (stored responses, files
    // and tool results count as input without being in the body).
    settlement.ceiling = Usage {
        input_tokens: Some(MAX_INPUT_BELIEVED),
        output_tokens: u64::from(requested_max_output.map_or(MAX_OUTPUT_UNKNOWN, |m| {
            decision
                .detection
                .as_ref()
                .and_then(|d| d.degrade_to)
                .map_or(m, |d| d.min(m))
        }))
        .saturating_mul(u64::from(choices)),
    };
    // A body that cannot be inspected cannot be degraded: at degrade or
    // above it is refused (settled unused as the settlement drops).
    let enforced = decision
        .detection
        .as_ref()
        .map_or(Level::Allow, |d| d.enforced);
    if uninspectable.is_some() && enforced >= Level::Degrade {
        log.decision = "throttle";
        let mut r = error_response(
            api.error_shape(),
            crate::api::ErrorKind::RateLimited,
            "this account's traffic is restricted and this request body cannot be inspected; \
             send a JSON body the API accepts",
        );
        r.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(60u32));
        return Ok(r);
    }
    if let Some(d) = &decision.detection {
        if let Some(max) = d.degrade_to {
            body = degrade(api, body, max, &mut parts.headers);
        }
        if let Some(delay) = d.delay {
            // A timer on this connection's task, not a held thread. The
            // delay is engine time: real time unless the engine clock runs
            // faster (`demo --traffic`).
            let real = std::time::Duration::from_nanos(delay).div_f64(shared.clock.speed());
            tokio::time::sleep(real).await;
        }
    }
    shared.metrics.proxy_overhead.observe(log.started.elapsed());

    let upstream = crate::proxy::forward(
        &worker.client,
        &config.upstream,
        parts,
        body,
        conn.client.ip(),
        conn.tls,
        request_id,
    )
    .await?;
    shared
        .metrics
        .upstream_latency
        .observe(log.started.elapsed());
    shared.metrics.upstream_status(upstream.status().as_u16());

    let (mut parts, body) = upstream.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    if api != ApiKind::Other && parts.status.is_success() {
        let streaming = parts
            .headers
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        settlement.meter = Some(UsageMeter::new(api, streaming));
    }
    settlement.start_stream();
    let body = ResponseBody::upstream(
        body,
        config.upstream.idle_timeout,
        Some(Box::new(settlement)),
    );
    Ok(Response::from_parts(parts, body))
}

/// The degrade step: clamp the output limit and drop thinking / reasoning
/// parameters in an inspected body; the upstream gets the rewritten bytes
/// with their own length. Uninspected (streamed) bodies pass unchanged.
fn degrade(
    api: ApiKind,
    body: RequestBody,
    max: u32,
    headers: &mut http::HeaderMap,
) -> RequestBody {
    let RequestBody::Full(Some(bytes)) = &body else {
        return body;
    };
    match crate::api::inspect::rewrite_degrade(api, bytes, max) {
        Some(new) => {
            headers.remove(CONTENT_LENGTH);
            headers.insert(CONTENT_LENGTH, HeaderValue::from(new.len()));
            RequestBody::Full(Some(Bytes::from(new)))
        }
        None => body,
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Allow => "allow",
        Level::Slow => "slow",
        Level::Degrade => "degrade",
        Level::Throttle => "throttle",
        Level::Block => "block",
    }
}

/// The prompt step: what the engine is told of the prompt (its signature's
/// keys, phrase hits, fill key), so that it never sees the text.
fn prompt_features(config: &Config, info: Option<&Inspection>) -> PromptFeatures {
    let wanted = crate::prompt::Wanted {
        linking: config.cluster.policy.enabled,
        detection: config.detection.enabled,
    };
    match info {
        Some(Inspection::Parsed(i)) if !i.prompt.is_empty() => {
            crate::prompt::features(&config.detection.phrases, &i.prompt, wanted)
        }
        _ => PromptFeatures::default(),
    }
}

/// The facts the behaviour signals need, the prompt's as features.
fn request_facts(
    config: &Config,
    fp: &ClientFingerprint,
    info: Option<&Inspection>,
    prompt: &PromptFeatures,
) -> crate::engine::RequestFacts {
    let mut f = crate::engine::RequestFacts {
        fingerprint_inconsistent: fp.inconsistent_with.is_some() || fp.unreadable,
        ..Default::default()
    };
    if !config.detection.enabled {
        return f;
    }
    if let Some(Inspection::Parsed(i)) = info {
        f.thinking_budget = i
            .thinking
            .as_ref()
            .filter(|t| t.is_enabled())
            .and_then(|t| t.budget_tokens);
        f.reasoning_effort_high = i.reasoning_effort.as_deref() == Some("high");
        f.max_output_tokens = i.max_output_tokens;
        f.model = i.model.clone();
        f.fill_key = prompt.fill_key;
        f.phrase_hits = prompt.phrase_hits;
    }
    f
}

/// The traffic-record line of a request (see `replay`): fingerprints,
/// hashes and counts, never the key or the prompt.
fn traffic_record(
    request_id: &HeaderValue,
    account: AccountId,
    anonymous: bool,
    fp: &ClientFingerprint,
    obs: &Observation,
    decision: &crate::engine::Decision,
    input_tokens: u64,
) -> crate::replay::TrafficRecord {
    let f = &obs.request;
    crate::replay::TrafficRecord {
        v: crate::replay::RECORD_VERSION,
        t_ms: crate::telemetry::audit::now_unix_ms(),
        request_id: request_id.to_str().ok().map(String::from),
        account: account.to_string(),
        anonymous,
        ja4: fp.ja4.as_ref().map(|j| j.as_str().to_string()),
        http: fp.http.as_ref().map(|h| h.as_str().to_string()),
        h2: fp.h2.as_ref().map(|h| h.akamai().to_string()),
        ip_prefix: fp.ip_prefix.map(|p| p.to_string()),
        asn: fp.asn,
        sources: Some(fp.sources),
        model: f.model.clone(),
        input_tokens,
        max_output_tokens: f.max_output_tokens,
        thinking_budget: f.thinking_budget,
        reasoning_high: f.reasoning_effort_high,
        prompt_keys: obs
            .attrs
            .prompt
            .map(|k| k.iter().map(|x| format!("{x:016x}")).collect())
            .unwrap_or_default(),
        fill_key: f.fill_key.map(|k| format!("{k:016x}")),
        phrase_lists: decision
            .detection
            .as_ref()
            .map(|d| d.phrase_hits.clone())
            .unwrap_or_default(),
        inconsistent: f.fingerprint_inconsistent,
        output_tokens: 0,
        decision: decision.label().to_string(),
        population: None,
        attack: false,
    }
}

/// What every audit line of one request shares.
struct Audit<'a> {
    shared: &'a Shared,
    request_id: &'a HeaderValue,
    account: AccountId,
    decision: &'a crate::engine::Decision,
    fp: &'a ClientFingerprint,
}

impl Audit<'_> {
    /// One audit line, to the audit log and the console's latest decisions
    /// (no-op without either).
    fn line(&self, action: &str, reasons: Vec<serde_json::Value>, mode: &str) {
        if !self.wanted() {
            return;
        }
        let fp = self.fp;
        let record = crate::telemetry::audit::AuditRecord {
            time_unix_ms: crate::telemetry::audit::now_unix_ms(),
            kind: "decision",
            request_id: self.request_id.to_str().ok().map(String::from),
            account: Some(self.account.to_string()),
            cluster: self.decision.cluster.map(|c| ClusterId(c.id).to_string()),
            fingerprints: Some(serde_json::json!({
                "ja4": fp.ja4.as_ref().map(|j| j.as_str()),
                "http": fp.http.as_ref().map(|h| h.as_str()),
                "h2": fp.h2.as_ref().map(|h| h.akamai()),
                "ip_prefix": fp.ip_prefix.map(|p| p.to_string()),
                "asn": fp.asn,
                "inconsistent_with": fp.inconsistent_with,
                "sources": fp.sources,
            })),
            decision: action.to_string(),
            reasons,
            mode: mode.to_string(),
        };
        crate::telemetry::recent::tee(
            self.shared.recent.as_ref(),
            self.shared.audit.as_ref(),
            record,
        );
    }

    /// Whether anyone takes audit lines.
    fn wanted(&self) -> bool {
        self.shared.audit.is_some() || self.shared.recent.is_some()
    }

    /// The line for a detection level above allow, enforced or in shadow
    /// mode, with every signal's value and contribution.
    fn detection(&self, d: &crate::engine::Detection) {
        if !self.wanted() {
            return;
        }
        let mut reasons: Vec<serde_json::Value> = vec![serde_json::json!({
            "score": d.score.value,
            "scope": d.scope.as_str(),
            "level": level_name(d.level),
            "enforced_level": level_name(d.enforced),
            "phrase_lists": d.phrase_hits,
            "by_cohort": d.by_cohort,
            "sustained_degrade": d.sustained,
        })];
        reasons.extend(
            d.score
                .contributions
                .iter()
                .filter(|c| c.contribution > 0.0)
                .map(|c| {
                    serde_json::json!({
                        "signal": c.signal.as_str(),
                        "value": c.value,
                        "weight": c.weight,
                        "contribution": c.contribution,
                    })
                }),
        );
        let mode = if d.enforced >= d.level {
            "enforce"
        } else {
            "shadow"
        };
        self.line(level_name(d.level), reasons, mode);
    }
}

/// The identify step: the account of a request (keyed hash of its API key),
/// or an anonymous account for its client prefix when allowed; `None` means
/// the request must be refused with 401.
fn identify(
    config: &Config,
    hasher: &identity::KeyHasher,
    client_ip: std::net::IpAddr,
    req: &Request<Incoming>,
) -> Option<(AccountId, bool)> {
    let id = &config.identity;
    if let Some(key) = identity::api_key(req.headers(), &id.key_sources) {
        return Some((hasher.account_id(key), false));
    }
    match id.missing_key {
        MissingKey::Reject => None,
        MissingKey::Anonymous => {
            let prefix = identity::anonymous_prefix(client_ip, id.ipv6_key_prefix_len);
            Some((hasher.anonymous_id(&prefix), true))
        }
    }
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
async fn read_body(
    config: &Config,
    api: ApiKind,
    parts: &http::request::Parts,
    body: Incoming,
) -> Result<(RequestBody, BodyRead), ProxyError> {
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
                            rest: Box::new(body),
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
    let inspection = inspect::inspect(api, &bytes);
    Ok((
        RequestBody::Full(Some(bytes)),
        BodyRead::Inspected(inspection),
    ))
}

fn stream_body(prefix: Option<Bytes>, rest: ClientBody, limit: u64) -> RequestBody {
    RequestBody::Stream {
        prefix,
        rest: Box::new(rest),
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

/// The output ceiling of a request whose output limit is unknown (the
/// OpenAI APIs allow leaving it out).
const MAX_OUTPUT_UNKNOWN: u32 = 1 << 20;

/// The most input tokens an upstream report is believed for one request:
/// past any model's context window, far short of a 4e9 that would mean a
/// retry-after of years.
const MAX_INPUT_BELIEVED: u64 = 1 << 24;

/// The most choices (`n`) one request is believed to generate (OpenAI's
/// own limit).
const MAX_CHOICES: u32 = 128;

/// What the engine is owed for an admitted request: settled once, when the
/// response body ends, fails or is dropped (client gone), with the usage
/// metered from the stream.
struct Settlement {
    shared: Arc<Shared>,
    ticket: Option<Ticket>,
    /// Where the ticket was charged (settled there too).
    receipt: crate::state::Receipt,
    /// The most the upstream's reported usage is believed.
    ceiling: Usage,
    meter: Option<UsageMeter>,
    streaming: bool,
    record: Option<crate::replay::TrafficRecord>,
}

impl Settlement {
    fn new(shared: Arc<Shared>, ticket: Ticket, receipt: crate::state::Receipt) -> Self {
        Settlement {
            shared,
            ticket: Some(ticket),
            receipt,
            ceiling: Usage {
                input_tokens: None,
                output_tokens: u64::from(MAX_OUTPUT_UNKNOWN),
            },
            meter: None,
            streaming: false,
            record: None,
        }
    }

    /// The response body starts streaming to the client.
    fn start_stream(&mut self) {
        self.streaming = true;
        self.shared.metrics.stream(1);
    }

    fn settle(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let reported = match self.meter.take() {
            Some(m) => {
                let u = m.finish();
                Usage {
                    input_tokens: u.input_tokens.map(u64::from),
                    output_tokens: u64::from(u.output_tokens),
                }
            }
            None => Usage::default(),
        };
        let usage = Usage {
            input_tokens: match (reported.input_tokens, self.ceiling.input_tokens) {
                (Some(r), Some(c)) => Some(r.min(c)),
                (r, _) => r,
            },
            output_tokens: reported.output_tokens.min(self.ceiling.output_tokens),
        };
        if usage != reported {
            self.shared.metrics.usage_clamped();
        }
        self.shared.state.settle(
            &self.shared.engine,
            &ticket,
            self.receipt,
            usage,
            self.shared.clock.now(),
        );
        if let (Some(log), Some(mut r)) = (&self.shared.record, self.record.take()) {
            r.output_tokens = usage.output_tokens;
            log.record(r);
        }
        if self.streaming {
            self.streaming = false;
            self.shared.metrics.stream(-1);
        }
    }
}

impl ResponseObserver for Settlement {
    fn on_data(&mut self, data: &Bytes) {
        if let Some(m) = self.meter.as_mut() {
            m.feed(data);
        }
    }

    fn on_end(&mut self, _complete: bool) {
        self.settle();
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        self.settle();
    }
}

/// What the engine links accounts by: the fingerprint's parts hashed, the
/// client prefix (or the configured network it falls in), and the index keys
/// of the prompt's shape signature. Nothing when linking is off.
fn observed_attrs(
    config: &Config,
    fp: &ClientFingerprint,
    prompt: Option<[u64; signature::INDEX_KEYS]>,
) -> ObservedAttrs {
    let c = &config.cluster.policy;
    if !c.enabled {
        // The network alone: new accounts are limited per network when the
        // account store is full, linking or not.
        let net =
            crate::engine::observed_attrs(None, None, None, fp.ip_prefix, None, None, &[], &[]);
        return ObservedAttrs {
            ip_prefix: net.ip_prefix,
            ..ObservedAttrs::default()
        };
    }
    crate::engine::observed_attrs(
        fp.ja4.as_ref().map(|j| j.as_str()),
        fp.http.as_ref().map(|h| h.as_str()),
        fp.h2.as_ref().map(|h| h.akamai()),
        fp.ip_prefix,
        fp.asn,
        prompt,
        &c.ignore_nets,
        &c.downweight_nets,
    )
}

/// The fingerprint step: connection-level parts from the accept path, the
/// request head's HTTP fingerprint from the tap, the network prefix and ASN
/// of `client_ip` (the identity step's client address: the peer, or what a
/// trusted front said) and the consistency flag. What a trusted front said
/// in its headers (`front`) replaces what was observed, part by part, and
/// [`ClientFingerprint::sources`] says which is which.
fn client_fingerprint(
    config: &Config,
    conn: &ConnInfo,
    client_ip: std::net::IpAddr,
    front: fingerprint::front::FrontFacts,
    req: &Request<Incoming>,
) -> ClientFingerprint {
    use fingerprint::Source::{Front, Observed};
    let fc = &config.fingerprint;
    let (h2, http) = match (&conn.tap, req.version()) {
        (Some(tap), http::Version::HTTP_2) => {
            let (h2, first) = tap.h2();
            let http = first.unwrap_or_else(|| {
                HttpFingerprint::from_h2(
                    req.method().as_str(),
                    req.headers().keys().map(|k| k.as_str()),
                )
            });
            (h2, Some(http))
        }
        (Some(tap), _) => (None, tap.next_h1()),
        (None, _) => (None, None),
    };
    // A tapped connection that yields no fingerprint for this request.
    let unreadable = conn.tap.is_some()
        && match req.version() {
            http::Version::HTTP_2 => h2.is_none(),
            _ => http.is_none(),
        };
    /// What a front told, else what was seen (looked up only then).
    fn pick<T>(
        told: Option<T>,
        seen: impl FnOnce() -> Option<T>,
    ) -> (Option<T>, Option<fingerprint::Source>) {
        match told {
            Some(v) => (Some(v), Some(Front)),
            None => {
                let v = seen();
                let source = v.as_ref().map(|_| Observed);
                (v, source)
            }
        }
    }
    let (ja4, ja4_source) = pick(front.ja4, || conn.ja4);
    let (h2, h2_source) = pick(front.h2, || h2);
    let (asn, asn_source) = pick(front.asn, || {
        fc.asn_db
            .as_ref()
            .and_then(|db| db.lookup(client_ip))
            .map(|a| a.number)
    });
    // The address is a front's when it is not the socket peer's: a front
    // header, a trusted `x-forwarded-for` or a PROXY protocol source.
    let peer = identity::canonical(conn.peer.ip());
    let sources = fingerprint::Sources {
        ja4: ja4_source,
        http: http.as_ref().map(|_| Observed),
        h2: h2_source,
        address: Some(if client_ip == peer { Observed } else { Front }),
        asn: asn_source,
    };
    let mut fp = ClientFingerprint {
        ja4,
        http,
        h2,
        ip_prefix: Some(fingerprint::network::prefix(
            client_ip,
            fc.ipv4_prefix_len,
            fc.ipv6_prefix_len,
        )),
        asn,
        inconsistent_with: None,
        unreadable,
        sources,
    };
    if !fc.known_clients.is_empty() {
        let ua = req
            .headers()
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        let ja4 = fp.ja4.as_ref().map(|j| j.as_str());
        let http = fp.http.as_ref().map(|h| h.as_str());
        fp.inconsistent_with = fingerprint::consistency::mismatch(&fc.known_clients, ua, ja4, http)
            .map(|k| k.name.clone());
    }
    fp
}

/// Optionally tell the upstream what was observed; a client can never set
/// these headers itself.
fn forward_fingerprint(config: &Config, fp: &ClientFingerprint, headers: &mut http::HeaderMap) {
    let fc = &config.fingerprint;
    let values = [
        (&fc.forward_ja4_header, fp.ja4.as_ref().map(|j| j.as_str())),
        (
            &fc.forward_http_header,
            fp.http.as_ref().map(|h| h.as_str()),
        ),
        (&fc.forward_h2_header, fp.h2.as_ref().map(|h| h.akamai())),
    ];
    for (name, value) in values {
        let Some(name) = name else { continue };
        headers.remove(name);
        // Copied into a header value only when its header is configured.
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name.clone(), v);
        }
    }
}
