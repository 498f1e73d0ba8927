//! Admin API, on a separate listener (`[admin] address`,
//! loopback by default): `GET /healthz`, `GET /readyz`, `GET /metrics`,
//! `GET /admin/accounts/{id}`, `GET /admin/clusters/{id}`,
//! `GET /admin/top?by=score|requests|tokens`,
//! `POST /admin/{accounts|clusters}/{id}/{block|unblock|allow}`,
//! `GET /admin/export/indicators` (fingerprints, prefixes and prompt-shape
//! keys of blocked clusters), and the analyst console (`GET /console` and
//! the JSON it reads, [`console`]).
//!
//! With a token configured every endpoint but the two probes and the
//! console's static files needs `Authorization: Bearer <token>` (compared
//! in constant time); without one the listener must be on a loopback
//! address (config validation refuses anything else). Manual decisions are
//! written to `[admin] state_path` and recorded in the audit stream
//! (`distill_guard::audit` log target).

pub mod console;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::app::deadline::{drive, ConnWatch, Deadlines, Watched};
use crate::app::Shared;
use crate::engine::{AccountId, ClusterId, Manual};
use crate::state::manual_file as state;
use crate::telemetry::{audit, history, metrics, recent};

/// Serve the admin API until `shutdown` turns true. Connections are capped
/// (`admin.max_connections`) and run under the client listeners' deadlines:
/// a half-sent head or an idle connection cannot hold a slot.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let cap = shared.config.load().admin.max_connections;
    let permits = Arc::new(tokio::sync::Semaphore::new(cap));
    // Every connection holds a receiver: the sender sees when all are gone.
    let (open_tx, open_rx) = watch::channel(());
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    shared.accept_failed("admin", &e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shared.metrics.admin_conn_rejected();
            continue;
        };
        let config = shared.config.load_full();
        let deadlines = Deadlines::from_limits(&config.limits);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.limits.request_head_timeout);
        builder.http2().timer(TokioTimer::new());
        let watch = ConnWatch::new();
        let svc = {
            let shared = shared.clone();
            let watch = watch.clone();
            hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                let in_flight = watch.request();
                async move {
                    let resp = handle(&shared, peer, req).await;
                    Ok::<_, Infallible>(resp.map(|b| Watched::new(b, in_flight)))
                }
            })
        };
        let shutdown = shutdown.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            let _held = (permit, open);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let graceful =
                |c: std::pin::Pin<&mut auto::Connection<'_, _, _, _>>| c.graceful_shutdown();
            let _ = drive(conn, graceful, &watch, &deadlines, &shutdown).await;
        });
    }
    drop(open_rx);
    let _ = tokio::time::timeout(Duration::from_secs(2), open_tx.closed()).await;
}

/// One round of score sampling for the console's histories (run by the
/// housekeeping task while the admin API is served).
pub fn sample_history(shared: &Shared) {
    let accounts: Vec<AccountId> = shared
        .recent
        .as_ref()
        .map(|r| r.recent_accounts(16))
        .unwrap_or_default()
        .iter()
        .filter_map(|a| parse_id(a).map(AccountId))
        .collect();
    shared.history.sample(
        &shared.engine,
        &accounts,
        shared.clock.now(),
        audit::now_unix_ms(),
        std::time::Instant::now(),
    );
}

/// Indicators of dissolved clusters go, unless an admin blocked them (run
/// by the housekeeping task, whether or not the admin API is served).
pub fn sweep_indicators(shared: &Shared) {
    let e = &shared.engine;
    shared
        .indicators
        .retain(|id| e.cluster(id).is_some() || e.manual_cluster(id).is_some());
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

fn json_reply(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", v.to_string())
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_reply(status, &json!({"error": message}))
}

/// Equal in time independent of where the inputs differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(shared: &Shared, req: &Request<Incoming>) -> bool {
    let config = shared.config.load();
    let Some(token) = &config.admin.token else {
        return true;
    };
    let Some(v) = req.headers().get(http::header::AUTHORIZATION) else {
        return false;
    };
    let v = v.as_bytes();
    v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") && ct_eq(&v[7..], token.as_bytes())
}

fn parse_id(s: &str) -> Option<u64> {
    crate::config::accounts_file::parse_account_id(s)
}

async fn handle(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => return reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => return readyz(shared).await,
        (&Method::GET, p) => {
            // The console's page and assets hold no data.
            if let Some(r) = console::asset(p) {
                return r;
            }
        }
        _ => {}
    }
    if !authorized(shared, &req) {
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, parts.as_slice()) {
        (&Method::GET, ["metrics"]) => {
            let mut text = shared.metrics.render(
                &shared.engine,
                metrics::Outputs {
                    audit: shared
                        .audit
                        .as_ref()
                        .map(|a| (a.dropped(), a.write_errors())),
                    record: shared
                        .record
                        .as_ref()
                        .map(|r| (r.dropped(), r.write_errors())),
                    stderr: crate::telemetry::stderr::Stderr::installed_counts(),
                    prompts: Some(shared.config.load().detection.phrases.cache().stats()),
                },
            );
            shared.state.render_metrics(&mut text);
            metrics::finish(&mut text);
            reply(StatusCode::OK, metrics::CONTENT_TYPE, text)
        }
        (&Method::GET, ["admin", "accounts", id]) => match parse_id(id) {
            Some(id) => account(shared, AccountId(id)),
            None => error(StatusCode::BAD_REQUEST, "account ids are 16 hex digits"),
        },
        (&Method::GET, ["admin", "clusters", id]) => match parse_id(id) {
            Some(id) => cluster(shared, id),
            None => error(StatusCode::BAD_REQUEST, "cluster ids are 16 hex digits"),
        },
        (&Method::GET, ["admin", "top"]) => top(shared, req.uri().query().unwrap_or("")),
        (&Method::GET, ["admin", "export", "indicators"]) => export_indicators(shared),
        (&Method::GET, ["admin", "summary"]) => console::summary(shared),
        (&Method::GET, ["admin", "clusters"]) => {
            console::clusters(shared, req.uri().query().unwrap_or(""))
        }
        (&Method::GET, ["admin", "clusters", id, "graph"]) => match parse_id(id) {
            Some(id) => console::graph(shared, id),
            None => error(StatusCode::BAD_REQUEST, "cluster ids are 16 hex digits"),
        },
        (&Method::GET, ["admin", kind @ ("accounts" | "clusters"), id, "history"]) => {
            match parse_id(id) {
                Some(id) if *kind == "accounts" => {
                    console::history(shared, history::Subject::Account(AccountId(id)))
                }
                Some(id) => console::history(shared, history::Subject::Cluster(id)),
                None => error(StatusCode::BAD_REQUEST, "ids are 16 hex digits"),
            }
        }
        (&Method::GET, ["admin", "decisions"]) => {
            console::decisions(shared, req.uri().query().unwrap_or(""))
        }
        (&Method::GET, ["admin", "audit"]) => {
            console::audit_tail(shared, req.uri().query().unwrap_or("")).await
        }
        (&Method::POST, ["admin", kind @ ("accounts" | "clusters"), id, action]) => {
            let Some(id) = parse_id(id) else {
                return error(StatusCode::BAD_REQUEST, "ids are 16 hex digits");
            };
            let manual = match *action {
                "block" => Some(Manual::Block),
                "allow" => Some(Manual::Allow),
                "unblock" => None,
                _ => return error(StatusCode::NOT_FOUND, "actions are block, unblock, allow"),
            };
            manual_decision(shared, peer, kind, id, action, manual).await
        }
        _ => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
    }
}

async fn readyz(shared: &Shared) -> Response<Full<Bytes>> {
    let config = shared.config.load();
    let u = &config.upstream;
    let port = u
        .authority
        .port_u16()
        .unwrap_or(if u.scheme == http::uri::Scheme::HTTPS {
            443
        } else {
            80
        });
    let target = format!("{}:{port}", u.authority.host());
    let connect = async {
        let addrs = tokio::net::lookup_host(&target).await?;
        let mut last = std::io::Error::other("no address");
        for a in addrs {
            match tokio::net::TcpStream::connect(a).await {
                Ok(_) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    let (state_ok, state_line) = shared.state.readiness();
    if !state_ok {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("{state_line}: requests are refused until Redis answers\n"),
        );
    }
    match tokio::time::timeout(u.connect_timeout.min(Duration::from_secs(2)), connect).await {
        Ok(Ok(())) => reply(
            StatusCode::OK,
            "text/plain",
            format!("ready\n{state_line}\n"),
        ),
        Ok(Err(e)) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("upstream {target} unreachable: {e}\n"),
        ),
        Err(_) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("upstream {target} did not accept a connection in time\n"),
        ),
    }
}

/// A behaviour score with every signal's value and contribution.
fn score_json(
    s: Option<(crate::engine::score::Score, crate::engine::score::Level)>,
) -> serde_json::Value {
    match s {
        None => serde_json::Value::Null,
        Some((score, level)) => json!({
            "value": score.value,
            "level": format!("{level:?}").to_lowercase(),
            "evidence": score.evidence,
            "activity": score.activity,
            "requests": score.requests,
            "signals": score.contributions.iter().map(|c| json!({
                "signal": c.signal.as_str(),
                "unit": c.signal.unit(),
                "value": c.value,
                "normalised": c.normalised,
                "weight": c.weight,
                "contribution": c.contribution,
            })).collect::<Vec<_>>(),
        }),
    }
}

fn cluster_json(shared: &Shared, c: &crate::engine::link::ClusterView) -> serde_json::Value {
    let policy = shared.engine.policy();
    let now = shared.clock.now();
    let rules: Vec<&str> = policy
        .cluster
        .link
        .rules
        .iter()
        .enumerate()
        .filter(|(i, _)| *i < 32 && c.rules & (1 << i) != 0)
        .map(|(_, r)| r.name.as_str())
        .collect();
    json!({
        "id": ClusterId(c.id).to_string(),
        "members": c.members,
        "strength": c.strength.as_str(),
        "links": rules,
        "formed_seconds_ago": now.saturating_sub(c.formed_at) / crate::engine::SECOND,
        "shares_budget": policy.cluster.applies(c),
        "budget_multiplier": policy.cluster.multiplier(c.members),
        "manual": shared.engine.manual_cluster(c.id),
        "score": score_json(shared.engine.cluster_score(c.id, now)),
    })
}

fn account(shared: &Shared, id: AccountId) -> Response<Full<Bytes>> {
    let now = shared.clock.now();
    let budgets = shared.engine.account_budgets(id, now);
    let manual = shared.engine.manual_account(id);
    if budgets.is_none() && manual.is_none() {
        return error(StatusCode::NOT_FOUND, "no state held for this account");
    }
    let cluster = shared
        .engine
        .cluster_of(id)
        .map(|c| cluster_json(shared, &c));
    let b = budgets.map(|b| {
        json!({
            "tier": &*b.tier,
            "allow_listed": b.allow_listed,
            "requests_remaining": b.requests_remaining,
            "input_tokens_remaining": b.input_tokens_remaining,
            "output_tokens_remaining": b.output_tokens_remaining,
            "output_tokens_debt": b.output_tokens_debt,
            "in_flight": b.in_flight,
            "first_seen_seconds_ago": now.saturating_sub(b.first_seen) / crate::engine::SECOND,
            "last_seen_seconds_ago": now.saturating_sub(b.last_seen) / crate::engine::SECOND,
        })
    });
    json_reply(
        StatusCode::OK,
        &json!({
            "id": id.to_string(),
            "manual": manual,
            "budgets": b,
            "cluster": cluster,
            "score": score_json(shared.engine.account_score(id, now)),
        }),
    )
}

fn cluster(shared: &Shared, id: u64) -> Response<Full<Bytes>> {
    let manual = shared.engine.manual_cluster(id);
    let Some(c) = shared.engine.cluster(id) else {
        if manual.is_some() {
            return json_reply(
                StatusCode::OK,
                &json!({"id": ClusterId(id).to_string(), "members": 0, "manual": manual, "dissolved": true}),
            );
        }
        return error(
            StatusCode::NOT_FOUND,
            "no such cluster (it may have dissolved)",
        );
    };
    let mut v = cluster_json(shared, &c);
    let members: Vec<String> = shared
        .engine
        .cluster_members(id, 100)
        .into_iter()
        .map(|a| a.to_string())
        .collect();
    v["member_ids"] = json!(members);
    json_reply(StatusCode::OK, &v)
}

fn top(shared: &Shared, query: &str) -> Response<Full<Bytes>> {
    let by = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("by="))
        .unwrap_or("requests");
    let now = shared.clock.now();
    let row = |id: AccountId, requests: u64, tokens: u64| {
        let cluster = shared
            .engine
            .cluster_of(id)
            .map(|c| ClusterId(c.id).to_string());
        let score = shared.engine.account_score(id, now);
        json!({
            "id": id.to_string(),
            "requests": requests,
            "tokens": tokens,
            "cluster": cluster,
            "score": score.as_ref().map(|s| s.0.value),
            "level": score.map(|s| format!("{:?}", s.1).to_lowercase()),
        })
    };
    let rows: Vec<serde_json::Value> = match by {
        "requests" | "tokens" => shared
            .engine
            .top_accounts(20, by == "tokens")
            .into_iter()
            .map(|(id, r, t)| row(id, r, t))
            .collect(),
        "score" => shared
            .engine
            .top_scores(20, now)
            .into_iter()
            .map(|(id, r, t)| row(id, r, t))
            .collect(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "by must be score, requests or tokens",
            )
        }
    };
    json_reply(StatusCode::OK, &json!({"by": by, "accounts": rows}))
}

async fn manual_decision(
    shared: &Shared,
    peer: SocketAddr,
    kind: &str,
    id: u64,
    action: &str,
    manual: Option<Manual>,
) -> Response<Full<Bytes>> {
    // Shared first: a decision every replica cannot see is not made at
    // all (the admin retries), rather than made on one replica only and
    // undone by the next sync.
    let shared_version = match shared.state.redis() {
        None => None,
        Some(r) => {
            match r.store_manual(kind == "clusters", id, manual).await {
                Ok(v) => Some(v),
                Err(e) => {
                    warn!(error = %e, "manual decision not stored in Redis");
                    return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not applied: the shared state store (Redis) cannot take it: {e}; retry"),
                );
                }
            }
        }
    };
    if kind == "accounts" {
        shared.engine.set_manual_account(AccountId(id), manual);
    } else {
        shared.engine.set_manual_cluster(id, manual);
    }
    let config = shared.config.load();
    let persisted = match &config.admin.state_path {
        Some(path) => match state::save(path, &shared.engine) {
            Ok(()) => true,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot persist manual decisions");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("applied in memory but not persisted: {e}"),
                );
            }
        },
        None => false,
    };
    let when = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    info!(
        target: "distill_guard::audit",
        kind = "manual_decision",
        subject = kind.trim_end_matches('s'),
        id = %format!("{id:016x}"),
        action,
        who = %peer,
        when_unix_ms = when as u64,
        persisted,
        "admin decision"
    );
    if shared.audit.is_some() || shared.recent.is_some() {
        let subject = kind.trim_end_matches('s');
        let record = audit::AuditRecord {
            time_unix_ms: audit::now_unix_ms(),
            kind: "manual_decision",
            request_id: None,
            account: (subject == "account").then(|| AccountId(id).to_string()),
            cluster: (subject == "cluster").then(|| ClusterId(id).to_string()),
            fingerprints: None,
            decision: action.to_string(),
            reasons: vec![json!({"persisted": persisted}).into()],
            mode: format!("admin@{peer}"),
        };
        recent::tee(shared.recent.as_ref(), shared.audit.as_ref(), record);
    }
    json_reply(
        StatusCode::OK,
        &json!({
            "id": format!("{id:016x}"),
            "subject": kind.trim_end_matches('s'),
            "manual": manual,
            "persisted": persisted,
            "shared_version": shared_version,
        }),
    )
}

fn export_indicators(shared: &Shared) -> Response<Full<Bytes>> {
    let (_, clusters) = shared.engine.manual_decisions();
    let blocked: Vec<serde_json::Value> = clusters
        .into_iter()
        .filter(|(_, m)| *m == Manual::Block)
        .map(|(id, _)| {
            let members = shared.engine.cluster(id).map_or(0, |c| c.members);
            json!({
                "cluster": ClusterId(id).to_string(),
                "members": members,
                "indicators": shared.indicators.get(id),
            })
        })
        .collect();
    let generated = audit::now_unix_ms();
    let mut r = json_reply(
        StatusCode::OK,
        &json!({
            "format": "distill-guard-indicators/1",
            "generated_unix_ms": generated,
            "prompt_signature": "engine::signature index keys (hex); comparable only with the same signature version and key",
            "clusters": blocked,
        }),
    );
    if let Ok(v) = http::HeaderValue::from_str(&format!(
        "attachment; filename=\"distill-guard-indicators-{generated}.json\""
    )) {
        r.headers_mut().insert(http::header::CONTENT_DISPOSITION, v);
    }
    r
}
