//! The request path: the guard, as a tower [`Layer`] around the service
//! that forwards a request (the proxy's [`Upstream`](crate::proxy::Upstream),
//! or an embedding gateway's own handler), and the ordered list of its
//! phases over one request:
//!
//! ```text
//! 1 accept facts (ConnInfo, from the server's accept path)
//!   → 2 fingerprint → 3 identify → 4 classify and inspect
//!   → 5 prompt features → 6 decide → 7 act → 8 forward (the inner service)
//!   → 9 meter → 10 settle (when the response body ends)
//! ```
//!
//! Each phase is a function in its own module; [`Guard::serve`] only calls
//! them in order. A phase that refuses returns a [`ProxyError`], and every
//! refusal and failure becomes a response in one place ([`refuse`], in the
//! API's own error shape). The telemetry of a decision is one call
//! ([`report::decision`]); the access line and the request counter, one per
//! request, are written here. `docs/request-path.md` walks one request
//! through the phases.

mod act;
mod features;
mod fingerprint;
mod identify;
mod inspect;
mod report;
mod settle;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body::Body;
use tower::{Layer, Service, ServiceExt as _};
use tracing::{debug, info};

use crate::api::ApiKind;
use crate::app::{ConnInfo, Shared};
use crate::engine::AccountId;
use crate::proxy::body::{BoxError, RequestBody, ResponseBody};
use crate::proxy::error::{refuse, ProxyError};
use crate::proxy::headers::{self, X_REQUEST_ID};

/// A body the guard streams: the client's request body, or the forwarding
/// service's response body.
pub trait StreamBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

impl<B> StreamBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

/// What the guard wraps: a service that forwards an admitted request and
/// answers with a response whose body (`RB`) the guard streams back.
pub trait Forward<RB>:
    Service<Request<RequestBody>, Response = Response<RB>, Error: Into<BoxError>, Future: Send>
    + Clone
    + Send
{
}

impl<S, RB> Forward<RB> for S where
    S: Service<Request<RequestBody>, Response = Response<RB>, Error: Into<BoxError>, Future: Send>
        + Clone
        + Send
{
}

/// The guard as a tower layer: wraps the service that forwards a request.
#[derive(Clone)]
pub struct GuardLayer {
    shared: Arc<Shared>,
}

impl GuardLayer {
    /// A guard deciding with `shared`'s config, engine and state.
    pub fn new(shared: Arc<Shared>) -> GuardLayer {
        GuardLayer { shared }
    }

    /// A guard for a gateway that embeds it: `config`'s identity,
    /// fingerprint, cluster, detection and budget policy, with state kept
    /// in this process. What belongs to the proxy binary is not started
    /// here: listeners, the admin API, config reload, the audit log and a
    /// Redis backend (`[state] backend = "redis"` is refused: its
    /// connections and sync loop need the server's state runtime).
    pub fn from_config(config: crate::config::Config) -> Result<GuardLayer, String> {
        if !matches!(config.state, crate::config::StateConfig::Local) {
            return Err("an embedded guard keeps its state in process: \
                        [state] backend must be \"local\""
                .into());
        }
        let upstream_tls =
            crate::proxy::upstream_tls(&config.upstream).map_err(|e| e.to_string())?;
        let hasher = match &config.identity.hash_secret {
            Some(secret) => crate::identity::KeyHasher::new(secret),
            None => crate::identity::KeyHasher::random(),
        };
        let clock = crate::app::Clock::new();
        let engine = Arc::new(crate::engine::Engine::new(
            config.policy_at(clock.now(), crate::telemetry::audit::now_unix_ms()),
        ));
        let shared = Shared::new(
            config,
            engine,
            crate::state::State::Local,
            hasher,
            clock,
            upstream_tls,
        );
        Ok(GuardLayer::new(Arc::new(shared)))
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            shared: self.shared.clone(),
            inner,
        }
    }
}

/// The guard in front of `S`, the service that forwards an admitted
/// request. `S` gets the request with its body inspected (and degraded
/// when the decision says so) and its forwarding headers set; its
/// response streams back through the meter.
#[derive(Clone)]
pub struct Guard<S> {
    shared: Arc<Shared>,
    inner: S,
}

impl<S> Guard<S> {
    /// The process-wide state the guard decides with.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Serve one client request that arrived on `conn`. The binary calls
    /// this with the connection its accept path saw; the tower
    /// [`Service`] impl reads the connection from the request's
    /// extensions.
    pub async fn serve<B, RB>(&self, conn: &ConnInfo, req: Request<B>) -> Response<ResponseBody<RB>>
    where
        B: StreamBody,
        S: Forward<RB>,
        RB: StreamBody,
    {
        let mut ctx = RequestCtx::new(&req);
        let served = match ApiKind::disguised(ctx.uri.path()) {
            // A path an upstream would read as an LLM endpoint must be
            // written as one, or it would pass uninspected: refused in that
            // API's shape.
            Some(kind) => {
                ctx.api = kind;
                Err(ProxyError::BadRequest(format!(
                    "the request path is not in canonical form; send it as {}",
                    kind.path()
                )))
            }
            None => self.phases(&mut ctx, conn, req).await,
        };
        let resp = served.unwrap_or_else(|e| {
            debug!(request_id = ?ctx.request_id, error = %e, "request refused or failed");
            ctx.outcome = e.label();
            refuse(ctx.api.error_shape(), &e)
        });
        ctx.finish(&self.shared, conn, resp)
    }

    /// Phases 2 to 9 (10 runs when the response body ends).
    async fn phases<B, RB>(
        &self,
        ctx: &mut RequestCtx,
        conn: &ConnInfo,
        req: Request<B>,
    ) -> Result<Response<ResponseBody<RB>>, ProxyError>
    where
        B: StreamBody,
        S: Forward<RB>,
        RB: StreamBody,
    {
        let shared = &self.shared;
        let config = shared.config.load();
        // Whether the request's headers come from a trusted front: one rule
        // for every header a front states (x-forwarded-for, [fingerprint.front],
        // the account's creation time).
        let trusted = fingerprint::trusted_front(&config, conn);
        // 2. fingerprint (with the client address a trusted front vouches for)
        let (fp, client_ip) = fingerprint::phase(&config, shared, conn, trusted, &req);
        ctx.client = Some(client_ip);
        // 3. identify (with the account age a trusted front states)
        let caller = identify::phase(&config, shared, trusted, client_ip, &req)?;
        ctx.account = Some(caller.account);
        let (mut parts, body) = req.into_parts();
        fingerprint::rewrite_headers(&config, &fp, &mut parts.headers);
        // 4. classify and inspect
        let mut inspected = inspect::phase(&config, shared, ctx.api, &parts, body).await?;
        // 5. prompt features
        let obs = features::phase(&config, caller, &fp, &mut inspected).await?;
        // 6. decide
        let (decision, receipt) = shared
            .state
            .decide(&shared.engine, &obs, shared.clock.now())
            .await
            .map_err(|_| ProxyError::StateUnavailable)?;
        ctx.outcome = decision.label();
        let facts = report::Facts {
            request_id: &ctx.request_id,
            account: caller.account,
            anonymous: caller.anonymous,
            fp: &fp,
            obs: &obs,
        };
        let record = report::decision(shared, &config, &facts, &decision);
        // 7. act: refuse, or (from here the ticket is settled exactly once,
        // whatever happens) restrict, degrade, slow.
        let ticket = act::admitted(&decision)?.clone();
        // Boxed now, as the response body will hold it: the request's future
        // holds it across the upstream call, and unboxed it would be copied
        // with that future.
        let mut settlement = Box::new(settle::Settlement::new(
            shared.clone(),
            (ticket, receipt),
            &inspected,
            &decision.verdict,
            record,
        ));
        act::phase(
            shared,
            ctx.api,
            &decision,
            &mut inspected,
            &mut parts.headers,
        )
        .await?;
        shared.metrics.proxy_overhead.observe(ctx.started.elapsed());
        // 8. forward
        headers::prepare_upstream_request(
            &mut parts.headers,
            conn.client.ip(),
            conn.tls,
            &ctx.request_id,
        );
        let req = Request::from_parts(parts, inspected.body);
        let upstream = self
            .inner
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| upstream_error(e.into()))?;
        shared
            .metrics
            .upstream_latency
            .observe(ctx.started.elapsed());
        shared.metrics.upstream_status(upstream.status().as_u16());
        // 9. meter, and 10. settle when the body ends
        let (mut parts, body) = upstream.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        settlement.meter(ctx.api, &parts);
        settlement.start_stream();
        let body = ResponseBody::upstream(body, config.upstream.idle_timeout, Some(settlement));
        Ok(Response::from_parts(parts, body))
    }
}

/// The forwarding service's failure as the proxy's: its own
/// [`ProxyError`] as it is, anything else an upstream failure (502).
fn upstream_error(e: BoxError) -> ProxyError {
    match e.downcast::<ProxyError>() {
        Ok(e) => *e,
        Err(e) => ProxyError::Upstream(crate::proxy::error_chain(&*e)),
    }
}

/// The guard for gateways that embed it (axum, hyper, any tower stack):
/// the connection's facts come from the request's extensions — a
/// [`ConnInfo`] the embedding server inserted (see
/// [`ConnInfo::from_peer`]). Without one the request is refused (500): the
/// guard cannot fingerprint or link a client whose address it does not
/// know.
impl<S, B, RB> Service<Request<B>> for Guard<S>
where
    B: StreamBody,
    // The response's body type named here, so the impl determines `RB`.
    S: Service<Request<RequestBody>, Response = Response<RB>> + Forward<RB> + Sync + 'static,
    RB: StreamBody,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The inner service is cloned per request and made ready then.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let guard = self.clone();
        Box::pin(async move {
            let Some(conn) = req.extensions().get::<ConnInfo>().cloned() else {
                let e = ProxyError::Internal("the guard was not given the connection's ConnInfo");
                let api = ApiKind::from_path(req.uri().path());
                tracing::error!(error = %e, "request refused");
                return Ok(refuse(api.error_shape(), &e));
            };
            Ok(guard.serve(&conn, req).await)
        })
    }
}

/// One request as the guard's phases fill it in; the access line reads it.
struct RequestCtx {
    started: std::time::Instant,
    request_id: HeaderValue,
    api: ApiKind,
    method: Method,
    /// A clone shares the URI's bytes (no copy of the path).
    uri: Uri,
    /// The address believed (a trusted front's word, else the peer).
    client: Option<std::net::IpAddr>,
    account: Option<AccountId>,
    /// allow / slow / degrade / throttle / block, or a failure's kind.
    outcome: &'static str,
}

impl RequestCtx {
    fn new<B>(req: &Request<B>) -> RequestCtx {
        RequestCtx {
            started: std::time::Instant::now(),
            request_id: headers::request_id(req.headers()),
            api: ApiKind::from_path(req.uri().path()),
            method: req.method().clone(),
            uri: req.uri().clone(),
            client: None,
            account: None,
            outcome: "",
        }
    }

    /// The request counter, one access line (the account is its keyed hash,
    /// never the key), and `x-request-id` on the response.
    fn finish<RB>(
        self,
        shared: &Shared,
        conn: &ConnInfo,
        mut resp: Response<ResponseBody<RB>>,
    ) -> Response<ResponseBody<RB>> {
        shared.metrics.request(if self.outcome.is_empty() {
            "other"
        } else {
            self.outcome
        });
        info!(
            target: "distill_guard::access",
            request_id = ?self.request_id,
            client = %self.client.unwrap_or_else(|| conn.client.ip()),
            peer = %conn.peer.ip(),
            method = %self.method,
            path = %self.uri.path(),
            account = self.account.map(|a| a.to_string()).unwrap_or_default(),
            decision = self.outcome,
            status = resp.status().as_u16(),
            head_us = self.started.elapsed().as_micros() as u64,
            "request"
        );
        resp.headers_mut()
            .insert(X_REQUEST_ID.clone(), self.request_id);
        resp
    }
}
