//! The state file of manual decisions (`[admin] state_path`): which
//! accounts and clusters an admin blocked or allowed, so a restart does not
//! forget them. JSON, written to a temporary file and renamed into place.
//!
//! ```json
//! {"version":1,"accounts":{"3f9a0c4b5d6e7f80":"block"},"clusters":{}}
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::engine::{AccountId, Engine, Manual};

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
            .map(|(c, m)| (format!("{c:016x}"), m))
            .collect(),
    };
    let text = serde_json::to_string_pretty(&file).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
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
    use crate::engine::{Policy, Tier};

    fn engine() -> Engine {
        Engine::new(Policy::single_tier(Tier::from_config(
            "t",
            &crate::config::TierConfig {
                requests_per_minute: 1,
                burst_requests: 1,
                input_tokens_per_minute: 1,
                output_tokens_per_minute: 1,
                max_concurrent: 1,
            },
        )))
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
}
