//! `distill-guard demo`: the mock upstream and the proxy (shipped default
//! policy) in one process, with ready-to-paste curl commands; with
//! `--traffic`, a simulated scenario sent through them ([`traffic`]).

pub mod traffic;

use std::net::SocketAddr;
use std::path::Path;

use crate::config::{self, Config, ListenerConfig};
use crate::{mock, server};

/// The shipped default config, compiled in so `demo` runs from anywhere.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/distill-guard.toml");

/// The shipped default config as compiled in. The shipped phrase-list
/// files are the built-in lists; this uses the built-in copy so it works
/// from any directory.
pub fn default_config() -> Result<Config, config::ConfigError> {
    let text: String = DEFAULT_CONFIG
        .lines()
        .filter(|l| !l.starts_with("phrase_lists"))
        .map(|l| format!("{l}\n"))
        .collect();
    config::parse(Path::new("config/distill-guard.toml"), &text)
}

/// The default policy, listening on `listen` and forwarding to `upstream`.
pub fn demo_config(
    listen: SocketAddr,
    upstream: SocketAddr,
) -> Result<Config, config::ConfigError> {
    let mut cfg = default_config()?;
    cfg.listeners = vec![ListenerConfig {
        address: listen,
        tls: None,
        proxy_protocol: false,
    }];
    cfg.upstream.scheme = http::uri::Scheme::HTTP;
    cfg.upstream.authority = upstream
        .to_string()
        .parse()
        .map_err(|_| config::ConfigError {
            file: "demo".into(),
            position: None,
            key: "upstream.url".into(),
            reason: "bad mock address".into(),
        })?;
    cfg.upstream.path_prefix.clear();
    cfg.upstream.ca_path = None;
    cfg.server.workers = 1;
    // The admin API on a free loopback port (the demo may run beside a proxy).
    cfg.admin.address = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.admin.watch_config = false;
    cfg.server.shutdown_grace = std::time::Duration::from_secs(2);
    Ok(cfg)
}

/// The curl commands printed for a proxy at `addr`.
pub fn curl_commands(addr: SocketAddr) -> [String; 2] {
    let head = format!(
        "curl -sS http://{addr}/v1/messages -H 'x-api-key: demo-key-1' \
         -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json'"
    );
    [
        format!(
            "{head} -d '{{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":64,\"messages\":[{{\"role\":\"user\",\"content\":\"Say hello in five words.\"}}]}}'"
        ),
        format!(
            "{head} -N -d '{{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":64,\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"Count to ten.\"}}]}}'"
        ),
    ]
}

/// The line naming the analyst console of an admin listener at `admin`.
pub fn console_line(admin: SocketAddr, token: bool) -> String {
    let login = if token {
        "log in with the value of DISTILL_GUARD_ADMIN_TOKEN"
    } else {
        "no token: loopback only; set DISTILL_GUARD_ADMIN_TOKEN to require one"
    };
    format!("  console:       http://{admin}/console  ({login})")
}

/// Start the mock upstream and the proxy; returns both handles.
pub fn start(
    listen: SocketAddr,
    options: mock::MockOptions,
) -> Result<(mock::MockHandle, server::Handle), Box<dyn std::error::Error + Send + Sync>> {
    let upstream = mock::start("127.0.0.1:0".parse()?, options)?;
    let cfg = demo_config(listen, upstream.addr())?;
    let proxy = server::start(cfg)?;
    Ok((upstream, proxy))
}
