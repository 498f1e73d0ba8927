//! distill-guard embedded in an axum app, as a tower layer.
//!
//! The app's own model endpoint (here a stand-in handler that answers like
//! the Anthropic Messages API) sits behind the guard: every request is
//! fingerprinted, identified, inspected, linked and scored, and refused,
//! slowed or degraded as the policy says, before the handler sees it.
//!
//! ```text
//! cargo run --example axum_guard -- [CONFIG] [ADDRESS]
//! curl -s localhost:8088/v1/messages -H 'x-api-key: k1' \
//!      -d '{"model":"m","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}'
//! ```
//!
//! CONFIG defaults to `config/distill-guard.toml` (its `[state]` must be
//! local; its listeners and upstream are not used: the app listens itself
//! and its handler is the upstream); ADDRESS to `127.0.0.1:8088` (port 0 picks a free one). The
//! address it listens on is logged to stderr as `listening address=ADDRESS`.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use distill_guard::app::ConnInfo;
use distill_guard::stack::GuardLayer;
use tower::Layer as _;

/// The app's own model call: what an admitted request reaches.
async fn messages(Json(body): Json<serde_json::Value>) -> Json<serde_json::Value> {
    let max = body["max_tokens"].as_u64().unwrap_or(0);
    Json(serde_json::json!({
        "id": "msg_embedded",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": format!("answered with max_tokens={max}")}],
        "usage": {"input_tokens": 10, "output_tokens": 5}
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let config_path = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "config/distill-guard.toml".into()),
    );
    let address: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8088".into())
        .parse()?;
    let config = distill_guard::config::load(&config_path)?;
    let guard = GuardLayer::from_config(config).map_err(anyhow::Error::msg)?;

    let api = Router::new().route("/v1/messages", post(messages));
    let listener = tokio::net::TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    // The guard needs the client's address: axum's ConnectInfo, handed to
    // it as a ConnInfo in the request's extensions.
    let app = Router::new()
        .fallback_service(guard.layer(api))
        .layer(axum::middleware::from_fn(
            move |ConnectInfo(peer): ConnectInfo<SocketAddr>, mut req: Request, next: Next| async move {
                req.extensions_mut()
                    .insert(ConnInfo::from_peer(peer, local, false));
                let resp: Response = next.run(req).await;
                resp
            },
        ));
    eprintln!("listening address={local}");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
