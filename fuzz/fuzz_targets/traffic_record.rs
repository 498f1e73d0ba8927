//! Traffic-record lines as `replay` reads them
//! (`distill_guard::replay::{parse_line, Run}`, schema in
//! `docs/traffic-record.md`).
//!
//! Input: text (lossy UTF-8), one record per line, as in a record file.
//! Each line goes through `parse_line`; each record it accepts is checked,
//! then replayed with `Run::step` under the shipped default policy
//! (`demo::default_config`), so records with extreme values reach the
//! engine the way `replay` would feed them.
//!
//! Checked besides "no panic":
//! * an accepted record has a version `replay` reads, and writing it back
//!   as JSON gives a line that parses to the same record;
//! * a rejected line's error names its line number (`line N: ...`).
#![no_main]

use std::sync::OnceLock;

use distill_guard::config::Config;
use distill_guard::replay::{parse_line, Run, OLDEST_RECORD_VERSION, RECORD_VERSION};
use libfuzzer_sys::fuzz_target;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| match distill_guard::demo::default_config() {
        Ok(c) => c,
        Err(e) => panic!("the shipped config does not load: {e}"),
    })
}

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    let mut run = Run::new(config());
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        match parse_line(line, n) {
            Ok(rec) => {
                assert!((OLDEST_RECORD_VERSION..=RECORD_VERSION).contains(&rec.v));
                let Ok(json) = serde_json::to_string(&rec) else {
                    panic!("an accepted record does not serialize");
                };
                match parse_line(&json, n) {
                    Ok(back) => assert_eq!(back, rec, "round trip changed the record"),
                    Err(e) => panic!("the record's own JSON is rejected: {e}"),
                }
                let _ = run.step(&rec, n);
            }
            Err(e) => assert!(
                e.starts_with(&format!("line {n}: ")),
                "error does not name its line: {e}"
            ),
        }
    }
    let _ = run.by_action();
    let _ = run.headline();
});
