//! The analyst console: a static page (`GET /console`, one HTML file, one
//! script, one style sheet, compiled into the binary; no data, no external
//! resources, so it is served without the token and works air-gapped) and
//! the JSON it reads with the admin token: `GET /admin/summary`,
//! `/admin/clusters` (top clusters), `/admin/clusters/{id}/graph` (members
//! and the links between them), `/admin/{accounts|clusters}/{id}/history`
//! (score and signals over time, [`super::history`]), `/admin/decisions`
//! (the latest decisions, [`crate::telemetry::recent`]) and `/admin/audit` (the audit
//! file's tail). The page keeps the token in the tab's `sessionStorage` and
//! sends it as `Authorization: Bearer`; it never puts it in a URL.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use super::{cluster_json, error, json_reply, score_json};
use crate::app::Shared;
use crate::engine::score::Signal;
use crate::engine::{AccountId, ClusterId, SECOND};
use crate::telemetry::history::{Point, Subject};
use crate::telemetry::recent::Filter;

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// Nodes drawn in a cluster's graph, at most.
const GRAPH_NODES: usize = 150;
/// Links considered for a cluster's graph, at most.
const GRAPH_LINKS: usize = 2000;
/// Clusters scored for the top-clusters list (the largest), at most.
const CLUSTERS_SCANNED: usize = 500;
/// The audit file's tail read for `GET /admin/audit`, at most.
const AUDIT_TAIL_BYTES: u64 = 1 << 20;

/// The page and its two assets, by path (None: not a console path).
pub(super) fn asset(path: &str) -> Option<Response<Full<Bytes>>> {
    let (content_type, body) = match path {
        "/console" | "/console/" => ("text/html; charset=utf-8", INDEX_HTML),
        "/console/console.js" => ("text/javascript; charset=utf-8", CONSOLE_JS),
        "/console/console.css" => ("text/css; charset=utf-8", CONSOLE_CSS),
        _ => return None,
    };
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    // Only this origin's script and style, fetches to this origin, no
    // framing: injected markup could neither run nor send the token away.
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        http::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    Some(r)
}

/// `key=value` pairs of a query string (values are ids and numbers: no
/// percent-decoding needed).
fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn number(query: &str, key: &str, default: u64, max: u64) -> u64 {
    param(query, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .min(max)
}

/// The `account` and `cluster` parameters, each optional; None when one
/// is not an id.
fn subject_params(query: &str) -> Option<(Option<&str>, Option<&str>)> {
    let id = |key| match param(query, key) {
        None | Some("") => Some(None),
        Some(v) => super::parse_id(v).map(|_| Some(v)),
    };
    Some((id("account")?, id("cluster")?))
}

/// `GET /admin/summary`: requests by decision since start, what the engine
/// holds, and the engine clock.
pub(super) fn summary(shared: &Shared) -> Response<Full<Bytes>> {
    let requests: serde_json::Map<String, serde_json::Value> = shared
        .metrics
        .requests_by_decision()
        .into_iter()
        .map(|(d, n)| (d.to_string(), json!(n)))
        .collect();
    let config = shared.config.load();
    let d = &config.detection;
    let mode = match (d.enabled, d.policy.mode.enforce) {
        (false, _) => "off".to_string(),
        (true, false) => "shadow".to_string(),
        (true, true) => format!("enforce on {} % of accounts", d.policy.mode.enforce_percent),
    };
    json_reply(
        StatusCode::OK,
        &json!({
            "requests": requests,
            "accounts": shared.engine.tracked_accounts(),
            "clusters": shared.engine.link_stats().map_or(0, |l| l.clusters),
            "engine_seconds": shared.clock.now() / SECOND,
            "clock_speed": shared.clock.speed(),
            "detection": mode,
            "audit_log": shared.audit.is_some(),
        }),
    )
}

/// `GET /admin/clusters?by=score|members&limit=N`: the top clusters (of the
/// [`CLUSTERS_SCANNED`] largest).
pub(super) fn clusters(shared: &Shared, query: &str) -> Response<Full<Bytes>> {
    let by = param(query, "by").unwrap_or("score");
    if by != "score" && by != "members" {
        return error(StatusCode::BAD_REQUEST, "by must be score or members");
    }
    let limit = number(query, "limit", 20, 200) as usize;
    let now = shared.clock.now();
    let mut rows: Vec<(f32, serde_json::Value)> = shared
        .engine
        .clusters(CLUSTERS_SCANNED)
        .iter()
        .map(|c| {
            let score = shared
                .engine
                .cluster_score(c.id, now)
                .map_or(0.0, |s| s.0.value);
            (score, cluster_json(shared, c))
        })
        .collect();
    if by == "score" {
        // Stable: equal scores keep the larger cluster first.
        rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    }
    rows.truncate(limit);
    json_reply(
        StatusCode::OK,
        &json!({"by": by, "clusters": rows.into_iter().map(|r| r.1).collect::<Vec<_>>()}),
    )
}

/// `GET /admin/clusters/{id}/graph`: up to [`GRAPH_NODES`] members, each
/// with its score, and the links between them, each with the rules that
/// made it, their attribute kinds and its strength. The members shown are
/// taken breadth first from the best-linked one, so what is drawn is a
/// connected piece of the cluster, not scattered pairs.
pub(super) fn graph(shared: &Shared, id: u64) -> Response<Full<Bytes>> {
    use std::collections::{HashMap, HashSet, VecDeque};
    let Some(c) = shared.engine.cluster(id) else {
        return error(
            StatusCode::NOT_FOUND,
            "no such cluster (it may have dissolved)",
        );
    };
    let policy = shared.engine.policy();
    let now = shared.clock.now();
    let links = shared.engine.cluster_links(id, GRAPH_LINKS);
    let mut adjacent: HashMap<u64, Vec<u64>> = HashMap::new();
    for e in &links {
        adjacent.entry(e.from).or_default().push(e.to);
        adjacent.entry(e.to).or_default().push(e.from);
    }
    // Breadth first from the best-linked account, then from the next one
    // not reached yet, until the cap.
    let mut starts: Vec<(&u64, &Vec<u64>)> = adjacent.iter().collect();
    starts.sort_unstable_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    let mut shown: HashSet<u64> = HashSet::new();
    let mut nodes: Vec<u64> = Vec::new();
    for (&first, _) in starts {
        if nodes.len() >= GRAPH_NODES {
            break;
        }
        if shown.contains(&first) {
            continue;
        }
        let mut queue = VecDeque::from([first]);
        shown.insert(first);
        while let Some(a) = queue.pop_front() {
            nodes.push(a);
            if nodes.len() >= GRAPH_NODES {
                break;
            }
            for &b in adjacent.get(&a).map_or(&[][..], |v| &v[..]) {
                if shown.len() < GRAPH_NODES && shown.insert(b) {
                    queue.push_back(b);
                }
            }
        }
        // Queued but not reached before the cap: not shown.
        shown = nodes.iter().copied().collect();
    }
    // Members with no remembered link (older than the links kept) fill up.
    for a in shared
        .engine
        .cluster_members(id, GRAPH_NODES.saturating_mul(4))
    {
        if nodes.len() >= GRAPH_NODES {
            break;
        }
        if shown.insert(a.0) {
            nodes.push(a.0);
        }
    }
    let rules = &policy.cluster.link.rules;
    let edges: Vec<serde_json::Value> = links
        .iter()
        .filter(|e| shown.contains(&e.from) && shown.contains(&e.to))
        .map(|e| {
            let matched: Vec<&crate::engine::link::LinkRule> = rules
                .iter()
                .enumerate()
                .filter(|(i, _)| *i < 32 && e.rules & (1 << i) != 0)
                .map(|(_, r)| r)
                .collect();
            let mut kinds: Vec<&str> = matched
                .iter()
                .flat_map(|r| r.kinds.iter().map(|k| k.as_str()))
                .collect();
            kinds.sort_unstable();
            kinds.dedup();
            json!({
                "from": AccountId(e.from).to_string(),
                "to": AccountId(e.to).to_string(),
                "rules": matched.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
                "kinds": kinds,
                "strength": e.strength.as_str(),
                "seconds_ago": now.saturating_sub(e.at) / SECOND,
            })
        })
        .collect();
    let nodes: Vec<serde_json::Value> = nodes
        .iter()
        .map(|&a| {
            let account = AccountId(a);
            let score = shared.engine.account_score(account, now);
            json!({
                "id": account.to_string(),
                "score": score.as_ref().map(|s| s.0.value),
                "level": score.map(|s| s.1.as_str()),
                "manual": shared.engine.manual_account(account),
            })
        })
        .collect();
    json_reply(
        StatusCode::OK,
        &json!({
            "id": ClusterId(id).to_string(),
            "members": c.members,
            "nodes_shown": nodes.len(),
            "nodes": nodes,
            "edges": edges,
        }),
    )
}

fn point_json(p: &Point) -> serde_json::Value {
    let signals: serde_json::Map<String, serde_json::Value> = Signal::ALL
        .iter()
        .filter_map(|s| {
            p.signals[s.index()].map(|(value, contribution)| {
                (
                    s.as_str().to_string(),
                    json!({"value": value, "contribution": contribution}),
                )
            })
        })
        .collect();
    json!({
        "unix_ms": p.unix_ms,
        "engine_ms": p.engine_ms,
        "score": p.score,
        "level": p.level.as_str(),
        "signals": signals,
    })
}

/// `GET /admin/{accounts|clusters}/{id}/history`: the sampled score and
/// signals of the subject, oldest first; from now on the subject is sampled
/// every round for [`crate::telemetry::history::WATCH`].
pub(super) fn history(shared: &Shared, subject: Subject) -> Response<Full<Bytes>> {
    shared.history.watch(subject, std::time::Instant::now());
    let now = shared.clock.now();
    let (kind, id, current) = match subject {
        Subject::Account(a) => (
            "account",
            a.to_string(),
            shared.engine.account_score(a, now),
        ),
        Subject::Cluster(c) => (
            "cluster",
            ClusterId(c).to_string(),
            shared.engine.cluster_score(c, now),
        ),
    };
    let points: Vec<serde_json::Value> = shared
        .history
        .points(subject)
        .iter()
        .map(point_json)
        .collect();
    let units: serde_json::Map<String, serde_json::Value> = Signal::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), json!(s.unit())))
        .collect();
    json_reply(
        StatusCode::OK,
        &json!({
            "subject": kind,
            "id": id,
            "interval_seconds": crate::telemetry::history::SAMPLE_INTERVAL.as_secs(),
            "engine_ms_now": now / 1_000_000,
            "units": units,
            "current": score_json(current),
            "points": points,
        }),
    )
}

/// `GET /admin/decisions?after=SEQ&limit=N&account=ID&cluster=ID`: the
/// newest held decisions numbered above `after`, oldest first.
pub(super) fn decisions(shared: &Shared, query: &str) -> Response<Full<Bytes>> {
    let Some((account, cluster)) = subject_params(query) else {
        return error(StatusCode::BAD_REQUEST, "ids are 16 hex digits");
    };
    let filter = Filter {
        after: number(query, "after", 0, u64::MAX),
        account,
        cluster,
    };
    let limit = number(query, "limit", 100, 500) as usize;
    let Some(recent) = &shared.recent else {
        return json_reply(StatusCode::OK, &json!({"last": 0, "decisions": []}));
    };
    let (items, last) = recent.query(filter, limit);
    let rows: Vec<serde_json::Value> = items
        .into_iter()
        .map(|n| {
            let mut v = serde_json::to_value(&n.record).unwrap_or_default();
            v["seq"] = json!(n.seq);
            v
        })
        .collect();
    json_reply(StatusCode::OK, &json!({"last": last, "decisions": rows}))
}

/// `GET /admin/audit?account=ID&cluster=ID&kind=K&limit=N`: the last lines
/// of the audit file (its last [`AUDIT_TAIL_BYTES`] read) about the subject,
/// of kind `decision` or `manual_decision` when given.
pub(super) async fn audit_tail(shared: &Shared, query: &str) -> Response<Full<Bytes>> {
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
    let Some((account, cluster)) = subject_params(query) else {
        return error(StatusCode::BAD_REQUEST, "ids are 16 hex digits");
    };
    let limit = number(query, "limit", 50, 500) as usize;
    let kind = param(query, "kind").filter(|k| !k.is_empty());
    let Some(path) = shared.audit.as_ref().map(|a| a.path().to_path_buf()) else {
        return json_reply(
            StatusCode::OK,
            &json!({"path": null, "lines": [], "note": "no [audit] path configured"}),
        );
    };
    let read = async {
        let mut f = tokio::fs::File::open(&path).await?;
        let len = f.metadata().await?.len();
        let start = len.saturating_sub(AUDIT_TAIL_BYTES);
        f.seek(std::io::SeekFrom::Start(start)).await?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        f.take(AUDIT_TAIL_BYTES).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>((start, buf))
    };
    let (start, buf) = match read.await {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot read the audit log {}: {e}", path.display()),
            )
        }
    };
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.split('\n');
    if start > 0 {
        lines.next(); // a line cut by the window's start
    }
    let mut out: Vec<serde_json::Value> = lines
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            account.is_none_or(|a| v["account"] == a)
                && cluster.is_none_or(|c| v["cluster"] == c)
                && kind.is_none_or(|k| v["kind"] == k)
        })
        .take(limit)
        .collect();
    out.reverse();
    json_reply(
        StatusCode::OK,
        &json!({
            "path": path.display().to_string(),
            "scanned_bytes": buf.len(),
            "lines": out,
        }),
    )
}
