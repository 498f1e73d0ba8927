//! The tenure file (`[accounts] tenure_path`): what the engine knows of
//! accounts' ages ([`Engine::export_tenure`]), so that a restart does not
//! start the engine's history again — without it, for 72 hours after every
//! restart no account reads young (docs/score.md, "Account tenure").
//!
//! Binary, little-endian: the magic `DGTENURE`, a version (u32), a probe of
//! the identity hash secret (u64: the account id of a fixed key, so a file
//! written under another secret, whose account ids mean nothing now, is not
//! taken for this one's), the Unix time it was written (ms), the history's
//! length then (ms; `u64::MAX`: none), the count, and per account its id
//! (u64), its age and its idle time (minutes, u32 each) — 16 bytes an
//! account. Written like the manual-decision file: to a temporary file,
//! synced, renamed into place (the directory synced too); a file that cannot
//! be read at start is set aside, not fatal.

use std::path::Path;

use crate::engine::{AccountId, Engine, Nanos, TenureExport};
use crate::identity::KeyHasher;

use super::manual_file::Restored;

const MAGIC: &[u8; 8] = b"DGTENURE";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 8 + 8 + 8 + 8;
const ENTRY: usize = 16;
const MS: Nanos = 1_000_000;
const MINUTE: Nanos = 60_000 * MS;

/// The probe of `hasher`'s secret written into the file.
pub fn probe(hasher: &KeyHasher) -> u64 {
    hasher.account_id(b"distill-guard tenure probe").0
}

/// Write what `engine` knows of accounts' ages at engine time `now`, Unix
/// time `unix_ms`, to `path`. Returns the accounts written.
pub fn save(
    path: &Path,
    engine: &Engine,
    now: Nanos,
    unix_ms: u64,
    probe: u64,
) -> std::io::Result<usize> {
    let export = engine.export_tenure(now);
    let mut buf = Vec::with_capacity(HEADER + export.accounts.len() * ENTRY);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    buf.extend_from_slice(&probe.to_le_bytes());
    buf.extend_from_slice(&unix_ms.to_le_bytes());
    buf.extend_from_slice(&export.history.map_or(u64::MAX, |h| h / MS).to_le_bytes());
    buf.extend_from_slice(&(export.accounts.len() as u64).to_le_bytes());
    let minutes = |t: Nanos| u32::try_from(t / MINUTE).unwrap_or(u32::MAX);
    for (account, age, idle) in &export.accounts {
        buf.extend_from_slice(&account.0.to_le_bytes());
        buf.extend_from_slice(&minutes(*age).to_le_bytes());
        buf.extend_from_slice(&minutes(*idle).to_le_bytes());
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(export.accounts.len())
}

/// Load the file at start (engine time `now`, Unix time `unix_ms`). A
/// truncated, corrupt or foreign file (another secret, another version)
/// does not stop the proxy: it is renamed to `<path>.bad-<unix ms>` and the
/// engine starts a history of its own. Fails only when the bad file cannot
/// be moved aside.
pub fn restore(
    path: &Path,
    engine: &Engine,
    now: Nanos,
    unix_ms: u64,
    probe: u64,
) -> Result<Restored, String> {
    super::manual_file::loaded_or_set_aside(path, load(path, engine, now, unix_ms, probe))
}

/// Load `path` into `engine`; a missing file is empty. Returns the accounts
/// loaded.
pub fn load(
    path: &Path,
    engine: &Engine,
    now: Nanos,
    unix_ms: u64,
    probe: u64,
) -> Result<usize, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
    };
    let (export, saved_ms) =
        parse(&bytes, probe).map_err(|e| format!("{}: {e}", path.display()))?;
    // The time between the write and now: no request reached the API
    // through this replica meanwhile (a clock set back counts as none).
    let gap = unix_ms.saturating_sub(saved_ms).saturating_mul(MS);
    engine.import_tenure(now, &export, gap);
    Ok(export.accounts.len())
}

/// The file's export and the Unix time (ms) it was written at.
fn parse(bytes: &[u8], probe: u64) -> Result<(TenureExport, u64), String> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err("not a tenure file".into());
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap_or([0; 8]));
    let version = u32_at(8);
    if version != VERSION {
        return Err(format!("version {version}, expected {VERSION}"));
    }
    if u64_at(12) != probe {
        return Err(
            "written under another identity hash secret: its account ids are not this one's".into(),
        );
    }
    let saved_ms = u64_at(20);
    let history = match u64_at(28) {
        u64::MAX => None,
        h => Some(h.saturating_mul(MS)),
    };
    let count = u64_at(36);
    let body = bytes.len() - HEADER;
    if Some(body)
        != usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(ENTRY))
    {
        return Err(format!(
            "{count} accounts announced, {body} bytes of them (truncated?)"
        ));
    }
    let accounts = bytes[HEADER..]
        .chunks_exact(ENTRY)
        .map(|e| {
            let id = u64::from_le_bytes(e[..8].try_into().unwrap_or([0; 8]));
            let age = u32::from_le_bytes(e[8..12].try_into().unwrap_or([0; 4]));
            let idle = u32::from_le_bytes(e[12..16].try_into().unwrap_or([0; 4]));
            (
                AccountId(id),
                u64::from(age) * MINUTE,
                u64::from(idle) * MINUTE,
            )
        })
        .collect();
    Ok((TenureExport { history, accounts }, saved_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Nanos = 60 * MINUTE;

    fn engine() -> Engine {
        let c = crate::demo::default_config().expect("the default config loads");
        Engine::new(c.policy_at(0, 0))
    }

    /// A restarted engine takes over the history and the ages: an account
    /// first seen before the restart is as old as it was plus the downtime,
    /// and one first seen after it is new as soon as the history (before
    /// and across the restart) reaches the horizon.
    #[test]
    fn tenure_survives_a_restart_and_the_downtime_counts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tenure.bin");
        let hasher = KeyHasher::new(b"0123456789abcdef-secret");
        let before = engine();
        let obs = |account: u64, age: Option<Nanos>| crate::engine::Observation {
            account: AccountId(account),
            account_age: age,
            ..Default::default()
        };
        // The history starts at hour 1; account 1 is stated 10 days old at
        // hour 2; saved at hour 82.
        let t = 5 * HOUR;
        before.decide(&obs(2, None), t - 4 * HOUR);
        before.decide(&obs(1, Some(240 * HOUR)), t - 3 * HOUR);
        let later = t + 77 * HOUR;
        let n = save(&path, &before, later, 1_000_000_000, probe(&hasher)).expect("saved");
        assert_eq!(n, 2);

        // Restarted (a new clock from 0) one hour later.
        let after = engine();
        let r = restore(&path, &after, 0, 1_000_000_000 + 3_600_000, probe(&hasher));
        assert_eq!(r, Ok(Restored::Loaded(2)));
        let e = after.export_tenure(0);
        let age = |id: u64| {
            e.accounts
                .iter()
                .find(|a| a.0 .0 == id)
                .map(|a| a.1 / HOUR)
                .expect("account kept")
        };
        // Stated 240 h at hour 2, saved at hour 82, restarted an hour later.
        assert_eq!(age(1), 240 + 80 + 1);
        assert_eq!(e.history.map(|h| h / HOUR), Some(82));
        // A newcomer now reads new: the history is longer than the horizon.
        after.decide(&obs(3, None), MINUTE);
        let e = after.export_tenure(MINUTE);
        let newcomer = e.accounts.iter().find(|a| a.0 .0 == 3).expect("recorded");
        assert!(newcomer.1 < HOUR, "{:?}", newcomer);
    }

    /// A file from another secret, a truncated one and garbage are set
    /// aside; the engine then starts a history of its own.
    #[test]
    fn a_foreign_or_broken_file_is_set_aside() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tenure.bin");
        let e = engine();
        e.decide(
            &crate::engine::Observation {
                account: AccountId(7),
                ..Default::default()
            },
            HOUR,
        );
        let mine = probe(&KeyHasher::new(b"0123456789abcdef-secret"));
        let theirs = probe(&KeyHasher::new(b"another-secret-0123456789"));
        save(&path, &e, HOUR, 5_000, theirs).expect("saved");
        let fresh = engine();
        match restore(&path, &fresh, 0, 6_000, mine) {
            Ok(Restored::SetAside { reason, aside }) => {
                assert!(reason.contains("another identity hash secret"), "{reason}");
                assert!(aside.exists() && !path.exists());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fresh.tracked_tenure(), 0);
        save(&path, &e, HOUR, 5_000, mine).expect("saved");
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 3]).expect("truncated");
        assert!(matches!(
            restore(&path, &fresh, 0, 6_000, mine),
            Ok(Restored::SetAside { .. })
        ));
        std::fs::write(&path, b"{\"version\":1}").expect("garbage");
        assert!(matches!(
            restore(&path, &fresh, 0, 6_000, mine),
            Ok(Restored::SetAside { .. })
        ));
        // No file: nothing to load, not an error.
        assert_eq!(
            restore(&path, &fresh, 0, 6_000, mine),
            Ok(Restored::Loaded(0))
        );
    }
}
