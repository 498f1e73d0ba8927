//! The accounts file: which account ids (keyed hashes printed by
//! `distill-guard hash-key`, never raw keys) get which tier, and which are
//! allow-listed. TOML (`[[account]]` tables) or CSV (`id,tier,allow`),
//! chosen by the file's extension.
//!
//! ```toml
//! [[account]]
//! id = "3f9a0c4b5d6e7f80"   # distill-guard hash-key
//! tier = "enterprise"
//! allow = true              # never slowed or blocked by detection
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

use super::{AccountEntry, TierConfig};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAccounts {
    #[serde(default)]
    account: Vec<FileAccount>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAccount {
    id: String,
    tier: String,
    #[serde(default)]
    allow: bool,
}

/// An account id as written in files and logs: 16 lower-case hex digits.
pub fn parse_account_id(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Load and check an accounts file; errors say `FILE:LINE: reason`.
pub fn load(
    path: &Path,
    tiers: &BTreeMap<String, TierConfig>,
) -> Result<HashMap<u64, AccountEntry>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let at = |line: usize, reason: String| format!("{}:{line}: {reason}", path.display());
    let mut rows: Vec<(usize, String, String, bool)> = Vec::new();
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            if i == 0 && cols.first() == Some(&"id") {
                continue; // header
            }
            let (id, tier, allow) = match cols.as_slice() {
                [id, tier] => (*id, *tier, false),
                [id, tier, allow] => {
                    let allow = match *allow {
                        "true" | "1" | "yes" => true,
                        "false" | "0" | "no" | "" => false,
                        other => {
                            return Err(at(
                                line_no,
                                format!("allow: expected true or false, got {other:?}"),
                            ))
                        }
                    };
                    (*id, *tier, allow)
                }
                _ => return Err(at(line_no, "expected id,tier[,allow]".into())),
            };
            rows.push((line_no, id.to_string(), tier.to_string(), allow));
        }
    } else {
        let file: FileAccounts = toml::from_str(&text).map_err(|e| {
            let line = e.span().map_or(0, |s| {
                text[..s.start.min(text.len())].matches('\n').count() + 1
            });
            at(line, e.message().trim().to_string())
        })?;
        // Line numbers of TOML entries: find each id's line.
        for a in file.account {
            let line = text
                .lines()
                .position(|l| l.contains(&a.id))
                .map_or(0, |p| p + 1);
            rows.push((line, a.id, a.tier, a.allow));
        }
    }
    let mut out = HashMap::with_capacity(rows.len());
    for (line, id, tier, allow) in rows {
        let Some(parsed) = parse_account_id(&id) else {
            return Err(at(
                line,
                format!("id: expected 16 hex digits from `distill-guard hash-key`, got {id:?}"),
            ));
        };
        if !tiers.contains_key(&tier) {
            return Err(at(line, format!("tier: no [tiers.{tier}] in the config")));
        }
        if out.insert(parsed, AccountEntry { tier, allow }).is_some() {
            return Err(at(line, format!("id {id} is listed twice")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiers() -> BTreeMap<String, TierConfig> {
        let t = TierConfig {
            requests_per_minute: 1,
            burst_requests: 1,
            input_tokens_per_minute: 1,
            output_tokens_per_minute: 1,
            max_concurrent: 1,
        };
        [("default".to_string(), t.clone()), ("gold".to_string(), t)]
            .into_iter()
            .collect()
    }

    #[test]
    fn toml_and_csv_files_load() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("a.toml");
        std::fs::write(
            &toml_path,
            "[[account]]\nid = \"00000000000000ff\"\ntier = \"gold\"\nallow = true\n",
        )
        .unwrap();
        let m = load(&toml_path, &tiers()).unwrap();
        assert_eq!(
            m[&0xff],
            AccountEntry {
                tier: "gold".into(),
                allow: true
            }
        );

        let csv_path = dir.path().join("a.csv");
        std::fs::write(
            &csv_path,
            "id,tier,allow\n00000000000000aa,default,false\n00000000000000bb,gold\n",
        )
        .unwrap();
        let m = load(&csv_path, &tiers()).unwrap();
        assert_eq!(m.len(), 2);
        assert!(!m[&0xbb].allow);
    }

    #[test]
    fn bad_entries_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(&p, "00000000000000aa,default\nnot-an-id,default\n").unwrap();
        let e = load(&p, &tiers()).unwrap_err();
        assert!(e.contains("a.csv:2: id"), "{e}");
        std::fs::write(&p, "00000000000000aa,platinum\n").unwrap();
        let e = load(&p, &tiers()).unwrap_err();
        assert!(e.contains(":1: tier"), "{e}");
        let p = dir.path().join("a.toml");
        std::fs::write(
            &p,
            "[[account]]\nid = \"00000000000000aa\"\ntier = \"gold\"\nbogus = 1\n",
        )
        .unwrap();
        let e = load(&p, &tiers()).unwrap_err();
        assert!(e.contains("a.toml:4: unknown field `bogus`"), "{e}");
    }
}
