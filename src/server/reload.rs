//! Live reload: the config file (and the files it names: accounts, ASN
//! database, TLS certificates and keys) is re-read on SIGHUP and whenever a
//! watched file changes. The new config is validated completely before it
//! replaces the old one; a bad file is rejected with the same
//! `FILE:LINE:COL` message as `check`, logged and counted, and the old
//! policy stays. Engine state (buckets, debts, clusters, manual decisions)
//! is untouched: only the policy is swapped. Settings that cannot change
//! under a running process keep their running value and are reported.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher as _;
use tracing::{info, warn};

use super::tls;
use crate::app::Shared;
use crate::config::{self, Config, ConfigError};

/// Re-read the config file and apply it.
pub fn reload(shared: &Shared) -> Result<(), ConfigError> {
    let old = shared.config.load_full();
    let result = load_checked(&old).map(|(mut new, certs)| {
        for note in keep_restart_only(&old, &mut new) {
            warn!(
                setting = note,
                "changed in the config file; takes effect only after a restart"
            );
        }
        for (slot, cert) in shared.tls.iter().zip(certs) {
            if let (Some(slot), Some(cert)) = (slot, cert) {
                slot.store(cert);
            }
        }
        shared
            .engine
            .set_policy(new.policy_at(shared.clock.now(), crate::telemetry::audit::now_unix_ms()));
        shared.config.store(Arc::new(new));
    });
    match &result {
        Ok(()) => {
            shared.metrics.reload(true);
            info!(file = %old.source.display(), "config reloaded");
        }
        Err(e) => {
            shared.metrics.reload(false);
            warn!(error = %e, "config reload rejected; the running policy stays");
        }
    }
    result
}

type Certs = Vec<Option<Arc<rustls::ServerConfig>>>;

/// Load the file and every TLS certificate it names, or fail whole.
fn load_checked(old: &Config) -> Result<(Config, Certs), ConfigError> {
    let new = config::load(&old.source)?;
    let mut certs = Vec::with_capacity(old.listeners.len());
    // Listener addresses cannot change live; certificates of the running
    // listeners are re-read from the files the new config names.
    for (i, running) in old.listeners.iter().enumerate() {
        let files = new
            .listeners
            .iter()
            .find(|l| l.address == running.address)
            .and_then(|l| l.tls.as_ref())
            .or(running.tls.as_ref());
        match (running.tls.is_some(), files) {
            (true, Some(files)) => {
                let cfg = tls::server_config(files).map_err(|e| ConfigError {
                    file: old.source.clone(),
                    position: None,
                    key: format!("listener[{i}].tls"),
                    reason: e.to_string(),
                })?;
                certs.push(Some(cfg));
            }
            _ => certs.push(None),
        }
    }
    Ok((new, certs))
}

/// Put back the running value of every setting that needs a restart;
/// returns the names of those that differed.
fn keep_restart_only(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut notes = Vec::new();
    let same_listeners = old.listeners.len() == new.listeners.len()
        && old.listeners.iter().zip(&new.listeners).all(|(a, b)| {
            a.address == b.address
                && a.tls.is_some() == b.tls.is_some()
                && a.proxy_protocol == b.proxy_protocol
        });
    if !same_listeners {
        notes.push("listener");
        new.listeners = old.listeners.clone();
    }
    if old.server.workers != new.server.workers {
        notes.push("server.workers");
        new.server.workers = old.server.workers;
    }
    if old.limits.max_connections != new.limits.max_connections {
        notes.push("limits.max_connections");
        new.limits.max_connections = old.limits.max_connections;
    }
    if old.admin.address != new.admin.address {
        notes.push("admin.address");
        new.admin.address = old.admin.address;
    }
    if old.audit.path != new.audit.path || old.audit.queue_capacity != new.audit.queue_capacity {
        notes.push("audit.path/queue_capacity");
        new.audit.path = old.audit.path.clone();
        new.audit.queue_capacity = old.audit.queue_capacity;
    }
    if old.record != new.record {
        notes.push("record.path/queue_capacity");
        new.record = old.record.clone();
    }
    if old.logging.level != new.logging.level || old.logging.format != new.logging.format {
        // The subscriber is installed once per process.
        notes.push("logging.level/format");
        new.logging = old.logging.clone();
    }
    if old.admin.max_connections != new.admin.max_connections {
        notes.push("admin.max_connections");
        new.admin.max_connections = old.admin.max_connections;
    }
    if old.state != new.state {
        // The store and its connections are made once, at start.
        notes.push("state");
        new.state = old.state.clone();
    }
    if old.identity.hash_secret != new.identity.hash_secret {
        notes.push("identity.hash_secret");
        new.identity.hash_secret = old.identity.hash_secret.clone();
    }
    let (o, n) = (&old.upstream, &mut new.upstream);
    if o.scheme != n.scheme
        || o.authority != n.authority
        || o.ca_path != n.ca_path
        || o.connect_timeout != n.connect_timeout
        || o.pool_idle_timeout != n.pool_idle_timeout
    {
        notes.push("upstream.url/ca_path/connect_timeout_ms/pool_idle_timeout_ms");
        n.scheme = o.scheme.clone();
        n.authority = o.authority.clone();
        n.ca_path = o.ca_path.clone();
        n.connect_timeout = o.connect_timeout;
        n.pool_idle_timeout = o.pool_idle_timeout;
    }
    notes
}

/// Files whose change triggers a reload, as the config names them.
fn listed_files(c: &Config) -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::new();
    files.insert(c.source.clone());
    if let Some(f) = &c.accounts.file {
        files.insert(f.clone());
    }
    files.extend(c.detection.phrase_list_files.iter().cloned());
    files.extend(c.cluster.prompt_files.iter().cloned());
    for l in &c.listeners {
        if let Some(t) = &l.tls {
            files.insert(t.cert_path.clone());
            files.insert(t.key_path.clone());
        }
    }
    files
}

/// Files whose change triggers a reload, symlinks resolved.
fn watched_files(c: &Config) -> BTreeSet<PathBuf> {
    listed_files(c)
        .into_iter()
        .map(|f| std::fs::canonicalize(&f).unwrap_or(f))
        .collect()
}

/// Directories to watch: those of the files as named and as resolved. A
/// Kubernetes ConfigMap volume updates by pointing a symlink (`..data`) in
/// the named directory at a new directory and deleting the old one: the
/// resolved directory alone would see one update and then nothing.
fn watched_dirs(c: &Config) -> BTreeSet<PathBuf> {
    listed_files(c)
        .into_iter()
        .chain(watched_files(c))
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .filter(|d| d.is_dir())
        .collect()
}

/// Watches the config files and reloads on change (debounced).
pub struct Watcher {
    _inner: Arc<std::sync::Mutex<notify::RecommendedWatcher>>,
}

impl Watcher {
    /// Start watching the directories of the files the config names.
    pub fn start(shared: Arc<Shared>) -> notify::Result<Watcher> {
        let (tx, rx) = std::sync::mpsc::channel::<notify::Result<notify::Event>>();
        let mut inner = notify::recommended_watcher(move |ev| {
            let _ = tx.send(ev);
        })?;
        let mut files = watched_files(&shared.config.load());
        let mut dirs = watched_dirs(&shared.config.load());
        for d in &dirs {
            inner.watch(d, notify::RecursiveMode::NonRecursive)?;
        }
        let inner = Arc::new(std::sync::Mutex::new(inner));
        // The thread must not keep the watcher (and with it the sender)
        // alive: it ends when the `Watcher` is dropped.
        let weak = Arc::downgrade(&inner);
        let spawned = std::thread::Builder::new()
            .name("dg-config-watch".into())
            .spawn(move || {
                while let Ok(ev) = rx.recv() {
                    let touches_a_file = match &ev {
                        Ok(ev) => {
                            !ev.kind.is_access()
                                && ev.paths.iter().any(|p| {
                                    let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
                                    files.contains(&p)
                                })
                        }
                        Err(_) => false,
                    };
                    // A symlink on the way to a file now points elsewhere.
                    let retargeted = || watched_files(&shared.config.load()) != files;
                    if !touches_a_file && !retargeted() {
                        continue;
                    }
                    // Editors write in several steps: wait for quiet.
                    while rx.recv_timeout(Duration::from_millis(200)).is_ok() {}
                    let _ = reload(&shared);
                    // Whether or not the reload was taken, watch what the
                    // running config names now, where it resolves now.
                    let config = shared.config.load();
                    files = watched_files(&config);
                    let Some(inner) = weak.upgrade() else { break };
                    let mut inner = match inner.lock() {
                        Ok(w) => w,
                        Err(poisoned) => poisoned.into_inner(),
                    };
                    dirs.retain(|d| d.is_dir());
                    for d in watched_dirs(&config) {
                        if !dirs.contains(&d) {
                            match inner.watch(&d, notify::RecursiveMode::NonRecursive) {
                                Ok(()) => {
                                    dirs.insert(d);
                                }
                                Err(e) => warn!(dir = %d.display(), error = %e, "cannot watch"),
                            }
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            return Err(notify::Error::io(e));
        }
        Ok(Watcher { _inner: inner })
    }
}
