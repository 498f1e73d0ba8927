//! What the binary ships about itself: `--version` with the commit,
//! shell completions and man pages from the clap definitions, and the
//! config's JSON Schema (the committed copy current, every shipped config
//! valid against it, and bad files refused by it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value as Json;

const BIN: &str = env!("CARGO_BIN_EXE_distill-guard");

mod support;
use support::{read_repo_file as read, repo_root as root};

/// Every config file the project ships: the default, the examples and the
/// deployment configs.
fn shipped_configs() -> Vec<String> {
    let mut out = Vec::new();
    for dir in [
        "config",
        "config/examples",
        "deploy/container",
        "deploy/compose",
        "deploy/kubernetes",
    ] {
        let Ok(entries) = std::fs::read_dir(root().join(dir)) else {
            continue;
        };
        for e in entries {
            let name = e.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".toml") {
                out.push(format!("{dir}/{name}"));
            }
        }
    }
    out.sort();
    assert!(
        out.iter().any(|c| c == "config/distill-guard.toml"),
        "{out:?}"
    );
    out
}

// ------------------------------------------------------------------ schema

#[test]
fn the_committed_schema_is_the_generated_one() {
    let committed = read(distill_guard::config::schema::COMMITTED_PATH);
    let generated = distill_guard::config::schema::schema_text();
    assert!(
        committed == generated,
        "{} is stale: regenerate it with \
         `cargo run -- schema > config/distill-guard.schema.json`",
        distill_guard::config::schema::COMMITTED_PATH
    );
    let out = Command::new(BIN).arg("schema").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);
}

fn validator() -> jsonschema::Validator {
    let schema: Json = serde_json::from_str(&read("config/distill-guard.schema.json")).unwrap();
    assert_eq!(
        schema["$schema"], "http://json-schema.org/draft-07/schema#",
        "editors (taplo) support draft-07"
    );
    jsonschema::draft7::new(&schema).unwrap()
}

fn errors(v: &jsonschema::Validator, instance: &Json) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn every_shipped_config_validates_against_the_schema() {
    let v = validator();
    for rel in shipped_configs() {
        let json: Json = toml::from_str(&read(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let errs = errors(&v, &json);
        assert!(errs.is_empty(), "{rel}: {errs:#?}");
    }
}

#[test]
fn every_shipped_config_names_the_schema_for_editors() {
    // taplo / Even Better TOML read a `#:schema PATH` first line, the path
    // relative to the TOML file.
    let schema = root()
        .join(distill_guard::config::schema::COMMITTED_PATH)
        .canonicalize()
        .unwrap();
    for rel in shipped_configs() {
        let text = read(&rel);
        let first = text.lines().next().unwrap_or("");
        let path = first
            .strip_prefix("#:schema ")
            .unwrap_or_else(|| panic!("{rel}: first line {first:?}"));
        let dir = root().join(&rel).parent().unwrap().to_path_buf();
        assert_eq!(
            dir.join(path.trim()).canonicalize().ok().as_ref(),
            Some(&schema),
            "{rel}: {path}"
        );
    }
}

#[test]
fn the_schema_refuses_what_the_parser_refuses() {
    let v = validator();
    let base = "[upstream]\nurl = \"http://127.0.0.1:9000\"\n";
    let json = |text: &str| -> Json { toml::from_str(text).unwrap() };
    assert!(errors(&v, &json(base)).is_empty());
    for (bad, why) in [
        ("[upstream]\n", "upstream.url missing"),
        ("", "no [upstream]"),
        (
            "[upstream]\nurl = \"x\"\nconnect_timeout = 5\n",
            "unknown key",
        ),
        (
            "[upstream]\nurl = \"x\"\n[server]\nshutdown_grace_ms = \"30s\"\n",
            "a string for a number",
        ),
        (
            "[upstream]\nurl = \"x\"\n[logging]\nformat = \"yaml\"\n",
            "not a format",
        ),
        (
            "[upstream]\nurl = \"x\"\n[fingerprint]\nipv4_prefix_len = 33\n",
            "out of range",
        ),
        (
            "[upstream]\nurl = \"x\"\n[tiers.gold]\nrequests_per_minute = 1\n",
            "a tier without its other keys",
        ),
    ] {
        assert!(!errors(&v, &json(bad)).is_empty(), "{why}: {bad}");
    }
}

// ------------------------------------------------------------------ the binary

#[test]
fn version_completions_and_man_pages_come_from_the_binary() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let version = String::from_utf8(out.stdout).unwrap();
    assert!(
        version.starts_with(&format!(
            "distill-guard {} (commit ",
            env!("CARGO_PKG_VERSION")
        )) && version.trim_end().ends_with(')'),
        "{version}"
    );
    // HEAD's short commit in a git checkout, "unknown" in a tarball.
    let commit = version
        .trim_end()
        .trim_end_matches(')')
        .rsplit(' ')
        .next()
        .unwrap();
    assert!(
        commit == "unknown" || (commit.len() >= 4 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{version}"
    );

    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8(out.stdout).unwrap();
        for sub in ["serve", "check", "replay", "mock-upstream", "schema"] {
            assert!(text.contains(sub), "{shell} completion without {sub}");
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["manpage", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    for page in [
        "distill-guard.1",
        "distill-guard-serve.1",
        "distill-guard-check.1",
        "distill-guard-replay.1",
    ] {
        assert!(pages.iter().any(|p| p == page), "{page} not in {pages:?}");
    }
    assert!(
        !pages.iter().any(|p| p.contains("completions")),
        "hidden commands get no page"
    );
    let out = Command::new(BIN).arg("manpage").output().unwrap();
    let main = String::from_utf8(out.stdout).unwrap();
    assert!(main.contains(".TH distill-guard 1"), "{main}");
}
