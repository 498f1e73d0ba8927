//! Config loader (`distill_guard::config::parse`: TOML, then validation)
//! and the scenario loader that shares its TOML path
//! (`distill_guard::simulate::scenario::parse`).
//!
//! Input: `[mode][text ...]` (the text must be UTF-8, as `config::read_file`
//! requires). `mode & 1` clear: a config file; set: a scenario file. The file
//! is named as if it sat in the repository's `config/` folder, so the
//! shipped config's relative paths (phrase lists) resolve. Texts that name
//! `/dev/`, `/proc/` or `/sys/` are skipped: reading those is the
//! operator's choice, not a parser bug.
//!
//! Checked besides "no panic": every error names the file it was given, has
//! a reason, a 1-based position that lies within the text (line at most the
//! number of lines + 1), and a `Display` that starts with the file name.
#![no_main]

use std::path::Path;

use distill_guard::config::ConfigError;
use libfuzzer_sys::fuzz_target;

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/fuzz.toml");

fn check(path: &Path, text: &str, e: &ConfigError) {
    assert_eq!(e.file, path);
    assert!(!e.reason.is_empty(), "empty reason: {e:?}");
    if let Some((line, col)) = e.position {
        assert!(line >= 1 && col >= 1, "position not 1-based: {e:?}");
        assert!(
            line <= text.lines().count() + 1,
            "line {line} past the end of the text: {e:?}"
        );
    }
    let shown = e.to_string();
    assert!(shown.starts_with(&path.display().to_string()), "{shown}");
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if ["/dev/", "/proc/", "/sys/"].iter().any(|p| text.contains(p)) {
        return;
    }
    let path = Path::new(FILE);
    if mode & 1 == 0 {
        if let Err(e) = distill_guard::config::parse(path, text) {
            check(path, text, &e);
        }
    } else if let Err(e) = distill_guard::simulate::scenario::parse(path, text) {
        check(path, text, &e);
    }
});
