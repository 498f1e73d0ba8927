use super::*;

fn parse_str(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("test.toml"), text)
}

const MINIMAL: &str = r#"
[[listener]]
address = "127.0.0.1:8080"

[upstream]
url = "http://127.0.0.1:9000/base/"
"#;

#[test]
fn minimal_config_gets_defaults() {
    let c = parse_str(MINIMAL).unwrap();
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.upstream.scheme, Scheme::HTTP);
    assert_eq!(c.upstream.authority.as_str(), "127.0.0.1:9000");
    assert_eq!(c.upstream.path_prefix, "/base");
    assert_eq!(c.limits.max_request_body_bytes, 10 * 1024 * 1024);
    assert!(c.server.workers >= 1);
    assert_eq!(c.logging.format, LogFormat::Text);
}

#[test]
fn upstream_host_omits_only_the_default_port() {
    let host = |url: &str| {
        let text = MINIMAL.replace("http://127.0.0.1:9000/base/", url);
        parse_str(&text).unwrap().upstream.host
    };
    assert_eq!(host("http://127.0.0.1:9000/base/"), "127.0.0.1:9000");
    assert_eq!(host("http://api.example:80"), "api.example");
    assert_eq!(host("https://api.example:443/v"), "api.example");
    assert_eq!(host("https://api.example:8443"), "api.example:8443");
    assert_eq!(host("http://[::1]:9000"), "[::1]:9000");
}

#[test]
fn unknown_key_is_an_error_with_position_and_path() {
    let text = format!("{MINIMAL}\n[limits]\nmax_body = 5\n");
    let e = parse_str(&text).unwrap_err();
    let line = text
        .lines()
        .position(|l| l.starts_with("max_body"))
        .unwrap()
        + 1;
    assert_eq!(e.position, Some((line, 1)), "{e}");
    assert!(e.key.starts_with("limits"), "{e}");
    assert!(e.reason.contains("unknown field `max_body`"), "{e}");
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("test.toml:{line}:1: limits")),
        "{shown}"
    );
}

#[test]
fn wrong_type_names_the_key() {
    let text = MINIMAL.replace(
        "url = \"http://127.0.0.1:9000/base/\"",
        "url = \"http://127.0.0.1:9000/base/\"\nconnect_timeout_ms = \"5s\"",
    );
    let e = parse_str(&text).unwrap_err();
    assert_eq!(e.key, "upstream.connect_timeout_ms", "{e}");
    assert_eq!(e.position.map(|p| p.0), Some(7), "{e}");
}

#[test]
fn validation_errors_point_at_the_value() {
    let text = MINIMAL.replace("127.0.0.1:8080", "localhost");
    let e = parse_str(&text).unwrap_err();
    assert_eq!(e.key, "listener[0].address");
    assert_eq!(e.position, Some((3, 11)), "{e}");
    assert!(e.reason.contains("IP:PORT"), "{e}");

    let text = MINIMAL.replace("http://127.0.0.1:9000/base/", "ftp://x");
    let e = parse_str(&text).unwrap_err();
    assert_eq!(e.key, "upstream.url");
    assert_eq!(e.position, Some((6, 7)), "{e}");
}

#[test]
fn bad_values_are_rejected() {
    for (from, to, key) in [
        (
            "url = \"http://127.0.0.1:9000/base/\"",
            "url = \"http://127.0.0.1:9000\"\nidle_timeout_ms = 0",
            "upstream.idle_timeout_ms",
        ),
        (
            "url = \"http://127.0.0.1:9000/base/\"",
            "url = \"https://x\"\nca_path = \"/nonexistent/ca.pem\"",
            "upstream.ca_path",
        ),
        (
            "url = \"http://127.0.0.1:9000/base/\"",
            "url = \"http://127.0.0.1:9000\"\n[limits]\nbody_read_timeout_ms = 9223372036854775807",
            "limits.body_read_timeout_ms",
        ),
    ] {
        let e = parse_str(&MINIMAL.replace(from, to)).unwrap_err();
        assert_eq!(e.key, key, "{e}");
    }
    for bands in [
        "min_prompt_bands = 2\nlate_min_prompt_bands = 1",
        "late_min_prompt_bands = 17",
    ] {
        let e = parse_str(&format!("{MINIMAL}[cluster]\n{bands}\n")).unwrap_err();
        assert_eq!(e.key, "cluster.late_min_prompt_bands", "{e}");
    }
    for count in ["late_after_requests = 63", "late_after_requests = 67108865"] {
        let e = parse_str(&format!("{MINIMAL}[cluster]\n{count}\n")).unwrap_err();
        assert_eq!(e.key, "cluster.late_after_requests", "{e}");
    }
    for count in [
        "max_accounts_per_value = 0",
        "max_accounts_per_value = 65537",
    ] {
        let e = parse_str(&format!("{MINIMAL}[cluster]\n{count}\n")).unwrap_err();
        assert_eq!(e.key, "cluster.max_accounts_per_value", "{e}");
    }
    for count in [
        "max_index_entries = 4194303",
        "max_index_values = 1000\nmax_index_entries = 999",
    ] {
        let e = parse_str(&format!("{MINIMAL}[cluster]\n{count}\n")).unwrap_err();
        assert_eq!(e.key, "cluster.max_index_entries", "{e}");
    }
    for count in ["single_band_contacts = 0", "single_band_contacts = 17"] {
        let e = parse_str(&format!("{MINIMAL}[cluster]\n{count}\n")).unwrap_err();
        assert_eq!(e.key, "cluster.single_band_contacts", "{e}");
    }
    for onset in [
        "onset_half_life_ms = 3600000",
        "half_life_ms = 1800000\nonset_half_life_ms = 1800001",
    ] {
        let e = parse_str(&format!("{MINIMAL}[detection]\n{onset}\n")).unwrap_err();
        assert_eq!(e.key, "detection.onset_half_life_ms", "{e}");
    }
    for (onset, want) in [("onset_half_life_ms = 0", 0), ("", 10 * 60)] {
        let c = parse_str(&format!("{MINIMAL}[detection]\n{onset}\n")).unwrap();
        assert_eq!(
            c.detection.policy.score.onset_half_life,
            want * 1_000_000_000
        );
    }
    let e = parse_str(&format!("{MINIMAL}[api]\nprompt_cache_entries = 1048577\n")).unwrap_err();
    assert_eq!(e.key, "api.prompt_cache_entries", "{e}");
    assert!(e.to_string().contains("at most 1048576"), "{e}");
    for (entries, want) in [
        ("prompt_cache_entries = 0", 0),
        ("", 8192),
        ("prompt_cache_entries = 100", 112),
    ] {
        let c = parse_str(&format!("{MINIMAL}[api]\n{entries}\n")).unwrap();
        assert_eq!(
            c.api.prompt_cache_entries,
            entries
                .split(" = ")
                .nth(1)
                .map_or(8192, |n| n.parse().unwrap())
        );
        assert_eq!(c.detection.phrases.cache().capacity(), want, "{entries:?}");
    }
    let e = parse_str("[upstream]\nurl = \"http://x\"\n").unwrap_err();
    assert_eq!(e.key, "listener");
    let e = parse_str(&format!("{MINIMAL}[logging]\nformat = \"xml\"\n")).unwrap_err();
    assert_eq!(e.key, "logging.format");
    assert!(e.position.is_some());
    let e = parse_str("not toml at all [").unwrap_err();
    assert!(e.position.is_some(), "{e}");
}

#[test]
fn model_ceilings_extend_and_replace_the_built_in_table() {
    let c = parse_str(&format!(
        "{MINIMAL}[detection]\npinned_fraction = 0.5\ndefault_model_ceiling = 4096\n\
         [[detection.model_ceiling]]\nprefix = \"claude-opus-5\"\nmax_output_tokens = 128000\n\
         [[detection.model_ceiling]]\nprefix = \"claude-opus-4\"\nmax_output_tokens = 48000\n"
    ))
    .unwrap();
    let s = &c.detection.policy.score;
    assert_eq!(s.pinned_fraction, 0.5);
    assert_eq!(s.ceiling(Some("claude-opus-5-20270101")), 128_000);
    // Replaces the built-in entry of the same prefix...
    assert_eq!(s.ceiling(Some("claude-opus-4-1")), 48_000);
    assert_eq!(
        s.model_ceilings
            .iter()
            .filter(|(p, _)| p == "claude-opus-4")
            .count(),
        1
    );
    // ... and leaves the longer built-in prefix alone.
    assert_eq!(s.ceiling(Some("claude-opus-4-5")), 64_000);
    assert_eq!(s.ceiling(Some("some-new-model")), 4096);
    assert_eq!(s.ceiling(None), 4096);
    // Without the section: the built-in table and marks.
    let d = parse_str(MINIMAL).unwrap();
    assert_eq!(d.detection.policy.score.pinned_fraction, 0.95);
    assert_eq!(
        d.detection.policy.score.ceiling(Some("some-new-model")),
        8192
    );
    assert_eq!(
        d.detection.policy.score.model_ceilings,
        crate::engine::score::ScorePolicy::default().model_ceilings
    );
    for (bad, key) in [
        ("pinned_fraction = 0.0", "detection.pinned_fraction"),
        ("pinned_fraction = 1.5", "detection.pinned_fraction"),
        (
            "default_model_ceiling = 0",
            "detection.default_model_ceiling",
        ),
        (
            "[[detection.model_ceiling]]\nprefix = \"\"\nmax_output_tokens = 10",
            "detection.model_ceiling[0].prefix",
        ),
        (
            "[[detection.model_ceiling]]\nprefix = \"m\"\nmax_output_tokens = 0",
            "detection.model_ceiling[0].max_output_tokens",
        ),
        (
            "[[detection.model_ceiling]]\nprefix = \"m\"\nmax_output_tokens = 5\n\
             [[detection.model_ceiling]]\nprefix = \"m\"\nmax_output_tokens = 6",
            "detection.model_ceiling[1].prefix",
        ),
    ] {
        let e = parse_str(&format!("{MINIMAL}[detection]\n{bad}\n")).unwrap_err();
        assert_eq!(e.key, key, "{bad}: {e}");
    }
}

#[test]
fn missing_file_is_an_error() {
    let e = load(Path::new("/nonexistent/distill-guard.toml")).unwrap_err();
    assert!(e.to_string().contains("cannot read"), "{e}");
}

/// Every config the project ships must load.
#[test]
fn shipped_configs_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files = vec![];
    for dir in [root.clone(), root.join("examples")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                files.push(p);
            }
        }
    }
    assert!(
        files.len() >= 2,
        "expected shipped configs, found {files:?}"
    );
    for f in files {
        if let Err(e) = load(&f) {
            panic!("{e}");
        }
    }
}

/// The shipped policy keeps the weights' design rule: everything a
/// legitimate templated workload can show (template reuse, regular timing,
/// volume, a young account, breadth, a fingerprint mismatch) sums below
/// the cluster core's mark, so honest members of a campaign's cluster stay
/// out of its core (and below Slow), whatever a fit moves.
#[test]
fn shipped_context_weights_stay_below_the_core_mark() {
    use crate::engine::score::Signal;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/distill-guard.toml");
    let c = load(&path).unwrap();
    let d = &c.detection.policy;
    let context: f32 = Signal::CONTEXT
        .iter()
        .map(|&s| d.score.weights.get(s))
        .sum();
    assert!(
        context < d.core_min_raw && context < d.score.thresholds.slow.enter,
        "context weights sum to {context}, core mark {}",
        d.core_min_raw
    );
}

#[test]
fn unusable_asn_database_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("asn.mmdb");
    std::fs::write(&db, b"not a maxmind database").unwrap();
    let text = format!(
        "{MINIMAL}[fingerprint]\nasn_database_path = \"{}\"\n",
        db.display()
    );
    let e = parse(&dir.path().join("t.toml"), &text).unwrap_err();
    assert_eq!(e.key, "fingerprint.asn_database_path", "{e}");
    assert!(e.reason.contains("invalid ASN database"), "{e}");
    let text = format!("{MINIMAL}[fingerprint]\nasn_database_path = \"missing.mmdb\"\n");
    let e = parse(&dir.path().join("t.toml"), &text).unwrap_err();
    assert!(e.reason.contains("cannot read"), "{e}");
}

/// The shipped phrase-list files are exactly the built-in lists.
#[test]
fn shipped_phrase_lists_match_the_built_in_ones() {
    use crate::prompt::{DEFAULT_ELICITATION, DEFAULT_RUBRIC, DEFAULT_TRAJECTORY};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/signals");
    for (file, builtin) in [
        ("elicitation.txt", DEFAULT_ELICITATION),
        ("rubric.txt", DEFAULT_RUBRIC),
        ("trajectory.txt", DEFAULT_TRAJECTORY),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let listed: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert_eq!(listed, builtin.to_vec(), "{file}");
    }
}

/// `[cluster] budget_min_level` takes a ladder level below block; the file
/// default gates budgets at slow, as the shipped config does.
#[test]
fn cluster_budget_gate_parses_and_rejects_unknown_levels() {
    use crate::engine::score::Level;
    assert_eq!(
        parse_str(MINIMAL).unwrap().cluster.policy.budget_min_level,
        Level::Slow
    );
    let c = parse_str(&format!(
        "{MINIMAL}\n[cluster]\nbudget_min_level = \"allow\"\n"
    ))
    .unwrap();
    assert_eq!(c.cluster.policy.budget_min_level, Level::Allow);
    for bad in ["block", "sometimes"] {
        let e = parse_str(&format!(
            "{MINIMAL}\n[cluster]\nbudget_min_level = \"{bad}\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "cluster.budget_min_level", "{e}");
        assert!(e.position.is_some(), "{e}");
    }
}

/// `[cluster.ignore] prompt_files`: the file's prompt-signature keys are
/// ignored by the linker, the file is watched, and a missing or too-short
/// file is an error at its key.
#[test]
fn ignored_prompt_files_become_ignored_prompt_keys() {
    use crate::engine::link::AttrKind;
    let dir = tempfile::tempdir().unwrap();
    let prompt = "You are an interactive command line coding agent. You help the user with \
                  software engineering tasks in their repository. Use the available tools to \
                  read files, search the code, run commands and edit files.";
    std::fs::write(dir.path().join("tool.txt"), prompt).unwrap();
    std::fs::write(dir.path().join("short.txt"), "hello there").unwrap();
    let with = |file: &str| {
        let text = format!("{MINIMAL}\n[cluster.ignore]\nprompt_files = [\"{file}\"]\n");
        parse(&dir.path().join("t.toml"), &text)
    };
    let c = with("tool.txt").unwrap();
    let keys = crate::engine::signature::signature(prompt).index_keys();
    for k in keys {
        assert!(c
            .cluster
            .policy
            .link
            .ignored
            .contains(&(AttrKind::Prompt, k)));
    }
    assert_eq!(c.cluster.prompt_files, vec![dir.path().join("tool.txt")]);
    for bad in ["missing.txt", "short.txt"] {
        let e = with(bad).unwrap_err();
        assert_eq!(e.key, "cluster.ignore.prompt_files[0]", "{e}");
    }
}

/// Found by the `config_load` fuzz target: a control character in a
/// comment gave an error with an empty reason (the TOML parser has no
/// message for it).
#[test]
fn syntax_error_without_a_parser_message_still_has_a_reason() {
    let text = "# forward_http_header = \"x-dis\u{1}# The default scenario\n";
    let e = parse_str(text).unwrap_err();
    assert_eq!(e.position, Some((1, 31)), "{e}");
    assert_eq!(e.reason, "invalid TOML: unexpected '\\u{1}'", "{e}");
    assert!(e
        .to_string()
        .ends_with(": invalid TOML: unexpected '\\u{1}'"));
}

#[test]
fn front_headers_are_validated() {
    let ok = parse_str(&format!(
        "{MINIMAL}[fingerprint.front]\nja4_header = \"CloudFront-Viewer-JA4-Fingerprint\"\n\
         address_header = \"CloudFront-Viewer-Address\"\naddress_format = \"ip_port\"\n"
    ))
    .unwrap();
    let f = &ok.fingerprint.front;
    assert_eq!(
        f.ja4_header.as_ref().map(|h| h.as_str()),
        Some("cloudfront-viewer-ja4-fingerprint")
    );
    assert_eq!(f.address_format, AddressFormat::IpPort);
    assert!(!parse_str(MINIMAL).unwrap().fingerprint.front.is_enabled());
    for (body, key) in [
        (
            "ja4_header = \"bad header\"",
            "fingerprint.front.ja4_header",
        ),
        (
            "address_header = \"cf-connecting-ip\"\naddress_format = \"port\"",
            "fingerprint.front.address_format",
        ),
        (
            "address_format = \"ip\"",
            "fingerprint.front.address_format",
        ),
        (
            "address_header = \"X-Forwarded-For\"",
            "fingerprint.front.address_header",
        ),
        ("ja4_header = \"x-api-key\"", "fingerprint.front.ja4_header"),
        ("ja4 = \"cf-ja4\"", "fingerprint.front.ja4"),
    ] {
        let e = parse_str(&format!("{MINIMAL}[fingerprint.front]\n{body}\n")).unwrap_err();
        assert_eq!(e.key, key, "{e}");
    }
}

#[test]
fn account_created_header_is_validated() {
    assert_eq!(
        parse_str(MINIMAL).unwrap().identity.account_created_header,
        None
    );
    let ok = parse_str(&format!(
        "{MINIMAL}[identity]\naccount_created_header = \"X-Account-Created\"\n"
    ))
    .unwrap();
    assert_eq!(
        ok.identity
            .account_created_header
            .as_ref()
            .map(|h| h.as_str()),
        Some("x-account-created")
    );
    for body in [
        "account_created_header = \"bad header\"",
        "account_created_header = \"\"",
        "account_created_header = \"x-api-key\"",
        "account_created_header = \"x-forwarded-for\"",
        "key_headers = [\"x-key\"]\naccount_created_header = \"x-key\"",
    ] {
        let e = parse_str(&format!("{MINIMAL}[identity]\n{body}\n")).unwrap_err();
        assert_eq!(e.key, "identity.account_created_header", "{body}: {e}");
    }
}

#[test]
fn state_section_is_validated_with_clear_errors() {
    let with = |state: &str| parse_str(&format!("{MINIMAL}\n[state]\n{state}\n"));
    assert_eq!(parse_str(MINIMAL).unwrap().state, StateConfig::Local);
    let c = with(
        "backend = \"redis\"\nurl = \"rediss://cache.internal:6380/2\"\non_failure = \"closed\"",
    )
    .unwrap();
    let StateConfig::Redis(r) = c.state else {
        panic!("expected redis");
    };
    assert_eq!(r.on_failure, OnFailure::Closed);
    assert_eq!(r.command_timeout, Duration::from_millis(50));
    assert_eq!(r.key_prefix, "dg");
    assert_eq!(
        r.stream,
        Some(crate::config::StreamConfig {
            max_entries: 200_000,
            queue_entries: 16_384
        })
    );
    assert!(!r.cluster);
    assert_eq!(r.urls, ["rediss://cache.internal:6380/2"]);
    let seeds = with(
        "backend = \"redis\"\ncluster = true\nurl = [\"redis://a:7000\", \"redis://b:7001/0\"]",
    )
    .unwrap();
    let StateConfig::Redis(rc) = seeds.state else {
        panic!("not redis")
    };
    assert!(rc.cluster);
    assert_eq!(rc.urls, ["redis://a:7000", "redis://b:7001/0"]);
    assert_eq!(rc.url, "redis://a:7000, redis://b:7001/0");
    let one_seed = with("backend = \"redis\"\ncluster = true\nurl = \"redis://a:7000\"").unwrap();
    assert!(matches!(one_seed.state, StateConfig::Redis(r) if r.cluster && r.urls.len() == 1));
    let off = with("backend = \"redis\"\nurl = \"redis://h\"\nshare_observations = false").unwrap();
    assert!(matches!(off.state, StateConfig::Redis(r) if r.stream.is_none()));
    let cases = [
        (
            "backend = \"redis\"\nurl = \"redis://h\"\nstream_max_entries = 10",
            "state.stream_max_entries",
            "1000 to",
        ),
        (
            "backend = \"redis\"\nurl = \"redis://h\"\nstream_queue_entries = 0",
            "state.stream_queue_entries",
            "64 to",
        ),
        (
            "backend = \"etcd\"",
            "state.backend",
            "\"local\" or \"redis\"",
        ),
        ("backend = \"redis\"", "state.url", "needs a url"),
        (
            "backend = \"redis\"\nurl = \"http://h:1\"",
            "state.url",
            "redis:// or rediss://",
        ),
        (
            "backend = \"redis\"\nurl = \"redis://:hunter2@h:6379\"",
            "state.url",
            "password_env",
        ),
        (
            "backend = \"redis\"\nurl = \"redis://h\"\npassword_env = \"DG_TEST_UNSET_VARIABLE_X\"",
            "state.password_env",
            "not set",
        ),
        (
            "backend = \"redis\"\nurl = \"redis://h/x\"",
            "state.url",
            "database number",
        ),
        (
            "backend = \"redis\"\nurl = \"redis://h\"\npool_size = 0",
            "state.pool_size",
            "1 to 64",
        ),
        (
            "backend = \"redis\"\nurl = \"redis://h\"\nkey_prefix = \"a{b}\"",
            "state.key_prefix",
            "hash tag",
        ),
        (
            "backend = \"redis\"\nurl = \"redis://h\"\non_failure = \"retry\"",
            "state.on_failure",
            "\"closed\"",
        ),
        (
            "backend = \"redis\"\nurl = \"redis://h\"\ncommand_timeout_ms = 0",
            "state.command_timeout_ms",
            "above 0",
        ),
        (
            "backend = \"redis\"\nurl = \"redis://h\"\ncommand_timeout_ms = 60000",
            "state.command_timeout_ms",
            "at most 10000",
        ),
        (
            "backend = \"redis\"\nurl = \"redis://h\"\nca_path = \"ca.pem\"",
            "state.ca_path",
            "rediss://",
        ),
        (
            "backend = \"redis\"\nurl = \"rediss://h\"\nca_path = \"no-such-ca.pem\"",
            "state.ca_path",
            "readable PEM",
        ),
        (
            "backend = \"redis\"\nurl = [\"redis://a\", \"redis://b\"]",
            "state.url",
            "state.cluster = true",
        ),
        (
            "backend = \"redis\"\ncluster = true\nurl = []",
            "state.url",
            "at least one seed",
        ),
        (
            "backend = \"redis\"\ncluster = true\nurl = [\"redis://a\", \"rediss://b\"]",
            "state.url",
            "or all rediss://",
        ),
        (
            "backend = \"redis\"\ncluster = true\nurl = [\"redis://a/3\"]",
            "state.url",
            "database 0 only",
        ),
        (
            "backend = \"redis\"\ncluster = true\nurl = [\"http://a\"]",
            "state.url",
            "redis:// or rediss://",
        ),
        (
            "backend = \"redis\"\nurl = \"redis://h\"\nbreaker_failures = 0",
            "state.breaker_failures",
            "above 0",
        ),
    ];
    for (body, key, reason) in cases {
        let e = with(body).unwrap_err();
        assert_eq!(e.key, key, "{body}: {e}");
        assert!(e.reason.contains(reason), "{body}: {e}");
        assert!(e.position.is_some(), "{body}: {e}");
    }
}
