//! The state file of manual decisions (`[admin] state_path`): which
//! accounts and clusters an admin blocked or allowed, so a restart does not
//! forget them. JSON, written to a temporary file, synced, and renamed into
//! place (the directory synced too), so a crash leaves the old file or the
//! new one. A file that cannot be read at start is set aside, not fatal.
//!
//! ```json
//! {"version":1,"accounts":{"3f9a0c4b5d6e7f80":"block"},"clusters":{}}
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::engine::{AccountId, ClusterId, Engine, Manual};

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    #[serde(default)]
    accounts: BTreeMap<String, Manual>,
    #[serde(default)]
    clusters: BTreeMap<String, Manual>,
}

/// Write every manual decision held by `engine` to `path`.
pub fn save(path: &Path, engine: &Engine) -> std::io::Result<()> {
    let (accounts, clusters) = engine.manual_decisions();
    let file = StateFile {
        version: 1,
        accounts: accounts
            .into_iter()
            .map(|(a, m)| (a.to_string(), m))
            .collect(),
        clusters: clusters
            .into_iter()
            .map(|(c, m)| (ClusterId(c).to_string(), m))
            .collect(),
    };
    let text = serde_json::to_string_pretty(&file).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename itself is durable once the directory is synced.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// What [`restore`] did at start.
#[derive(Debug, PartialEq, Eq)]
pub enum Restored {
    /// This many decisions were loaded (0: no file).
    Loaded(usize),
    /// The file was unreadable or corrupt: moved to `aside`, nothing loaded.
    SetAside {
        /// Where the bad file now is.
        aside: std::path::PathBuf,
        /// Why it was unusable.
        reason: String,
    },
}

/// Load the decisions at start. A truncated, empty or corrupt file does not
/// stop the proxy: it is renamed to `<path>.bad-<unix ms>` (kept for an
/// admin to inspect) and the proxy starts with no manual decisions. Fails
/// only when the bad file cannot be moved aside (it would be overwritten).
pub fn restore(path: &Path, engine: &Engine) -> Result<Restored, String> {
    loaded_or_set_aside(path, load(path, engine))
}

/// What a state file's load came to: the count loaded, or the file moved
/// to `<path>.bad-<unix ms>` because of the error (failing only when it
/// cannot be moved).
pub(crate) fn loaded_or_set_aside(
    path: &Path,
    loaded: Result<usize, String>,
) -> Result<Restored, String> {
    match loaded {
        Ok(n) => Ok(Restored::Loaded(n)),
        Err(reason) => {
            let mut aside = path.as_os_str().to_owned();
            aside.push(format!(".bad-{}", crate::telemetry::audit::now_unix_ms()));
            let aside = std::path::PathBuf::from(aside);
            std::fs::rename(path, &aside)
                .map_err(|e| format!("{reason}; and cannot move it aside: {e}"))?;
            Ok(Restored::SetAside { aside, reason })
        }
    }
}

impl Restored {
    /// Log what a restore at start did with the file at `path`: `what` was
    /// restored, or the file was set aside and the process starts `fresh`.
    pub fn log(&self, path: &Path, what: &str, fresh: &str) {
        match self {
            Restored::Loaded(0) => {}
            Restored::Loaded(n) => {
                tracing::info!(count = n, path = %path.display(), "{what} restored")
            }
            Restored::SetAside { aside, reason } => tracing::warn!(
                path = %path.display(),
                aside = %aside.display(),
                %reason,
                "{what}: file unusable, set aside; {fresh}"
            ),
        }
    }
}

/// Load the decisions in `path` into `engine`; a missing file is empty.
/// Returns how many decisions were loaded.
pub fn load(path: &Path, engine: &Engine) -> Result<usize, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
    };
    let file: StateFile =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let id = |s: &str| {
        crate::config::accounts_file::parse_account_id(s)
            .ok_or_else(|| format!("{}: {s:?} is not a 16-hex-digit id", path.display()))
    };
    let mut n = 0;
    for (a, m) in &file.accounts {
        engine.set_manual_account(AccountId(id(a)?), Some(*m));
        n += 1;
    }
    for (c, m) in &file.clusters {
        engine.set_manual_cluster(id(c)?, Some(*m));
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Policy;

    fn engine() -> Engine {
        Engine::new(Policy::single_tier(
            crate::config::TierConfig {
                requests_per_minute: 1,
                burst_requests: 1,
                input_tokens_per_minute: 1,
                output_tokens_per_minute: 1,
                max_concurrent: 1,
            }
            .tier("t"),
        ))
    }

    #[test]
    fn decisions_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let a = engine();
        a.set_manual_account(AccountId(0xabc), Some(Manual::Block));
        a.set_manual_cluster(0xdef, Some(Manual::Allow));
        save(&path, &a).unwrap();
        let b = engine();
        assert_eq!(load(&path, &b).unwrap(), 2);
        assert_eq!(b.manual_account(AccountId(0xabc)), Some(Manual::Block));
        assert_eq!(b.manual_cluster(0xdef), Some(Manual::Allow));
        assert_eq!(load(&dir.path().join("missing.json"), &b).unwrap(), 0);
        std::fs::write(&path, "{nope").unwrap();
        assert!(load(&path, &b).is_err());
    }

    #[test]
    fn a_truncated_or_empty_file_is_set_aside_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        for bad in ["", "{\"version\":1,\"accou"] {
            std::fs::write(&path, bad).unwrap();
            let e = engine();
            match restore(&path, &e).unwrap() {
                Restored::SetAside { aside, .. } => {
                    assert_eq!(std::fs::read_to_string(&aside).unwrap(), bad);
                    assert!(!path.exists());
                    std::fs::remove_file(aside).unwrap();
                }
                other => panic!("{other:?}"),
            }
        }
        // And saving afterwards works as usual.
        let e = engine();
        e.set_manual_account(AccountId(1), Some(Manual::Block));
        save(&path, &e).unwrap();
        assert_eq!(restore(&path, &engine()).unwrap(), Restored::Loaded(1));
    }
}
