//! The deployment files (container, compose, Kubernetes, systemd) agree
//! with the configs they run: ports, probe paths, secret variables,
//! shutdown timings, and the shipped policy itself; and a Kubernetes
//! ConfigMap volume is reloaded live on every update.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_distill-guard");

mod support;
use support::{read_repo_file as read, repo_root as root};

fn toml_file(rel: &str) -> toml::Value {
    toml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml_docs(rel: &str) -> Vec<serde_yaml::Value> {
    let text = read(rel);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            <serde_yaml::Value as serde::Deserialize>::deserialize(d)
                .unwrap_or_else(|e| panic!("{rel}: {e}"))
        })
        .collect()
}

fn yaml(rel: &str) -> serde_yaml::Value {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel}: one document expected");
    docs.remove(0)
}

/// `v` at a `/`-separated path of mapping keys and sequence indexes.
fn at<'a>(v: &'a serde_yaml::Value, path: &str) -> &'a serde_yaml::Value {
    path.split('/').fold(v, |v, k| match k.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[k],
    })
}

fn s<'a>(v: &'a serde_yaml::Value, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path}: not a string: {:?}", at(v, path)))
}

fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

// ------------------------------------------------------------------ deployment configs

fn check(rel: &str) -> std::process::Output {
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(root().join(rel))
        .env(
            "DISTILL_GUARD_HASH_SECRET",
            "a-test-secret-of-32-bytes-length",
        )
        .env("DISTILL_GUARD_ADMIN_TOKEN", "test-admin-token")
        .output()
        .unwrap()
}

#[test]
fn deployment_configs_pass_check_and_need_the_admin_token() {
    for rel in [
        "deploy/container/distill-guard.toml",
        "deploy/compose/distill-guard.toml",
        "deploy/kubernetes/distill-guard.toml",
    ] {
        let out = check(rel);
        assert!(
            out.status.success(),
            "{rel}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The admin listener is reachable from outside: no token, no start.
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(root().join(rel))
            .env_remove("DISTILL_GUARD_ADMIN_TOKEN")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{rel} passes without a token");
    }
}

/// Drop `path` (dotted) from a TOML table.
fn remove(v: &mut toml::Value, path: &str) {
    let (parent, key) = match path.rsplit_once('.') {
        Some((p, k)) => (Some(p), k),
        None => (None, path),
    };
    let mut t = v;
    if let Some(p) = parent {
        for k in p.split('.') {
            t = t.get_mut(k).unwrap();
        }
    }
    t.as_table_mut().unwrap().remove(key);
}

#[test]
fn deployment_configs_keep_the_shipped_policy() {
    // What a deployment may change; everything else is the shipped file's.
    let differ = [
        "upstream.url",
        "admin.address",
        "admin.state_path",
        "logging.format",
        "detection.phrase_lists",
        // The compose stack runs Redis beside the proxy.
        "state.backend",
        "state.url",
    ];
    let mut shipped = toml_file("config/distill-guard.toml");
    for k in differ {
        remove(&mut shipped, k);
    }
    for rel in [
        "deploy/container/distill-guard.toml",
        "deploy/compose/distill-guard.toml",
        "deploy/kubernetes/distill-guard.toml",
    ] {
        let mut c = toml_file(rel);
        assert_eq!(
            c["admin"]["state_path"].as_str(),
            Some("/var/lib/distill-guard/state.json")
        );
        assert_eq!(c["logging"]["format"].as_str(), Some("json"));
        for k in differ {
            remove(&mut c, k);
        }
        assert!(
            c == shipped,
            "{rel} differs from config/distill-guard.toml beyond {differ:?}"
        );
    }
}

/// The proxy and admin ports of a deployment config.
fn ports(rel: &str) -> (u16, u16) {
    let c = toml_file(rel);
    let listeners = c["listener"].as_array().unwrap();
    assert_eq!(listeners.len(), 1, "{rel}");
    (
        port_of(listeners[0]["address"].as_str().unwrap()),
        port_of(c["admin"]["address"].as_str().unwrap()),
    )
}

// ------------------------------------------------------------------ container

#[test]
fn the_dockerfile_runs_unprivileged_and_checks_health_on_the_admin_listener() {
    let text = read("Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let from: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .copied()
        .collect();
    assert_eq!(from.len(), 2, "a build stage and a runtime stage: {from:?}");
    assert!(from[0].starts_with("FROM rust:") && from[0].ends_with(" AS build"));
    assert!(from[1].contains("-slim"), "{}", from[1]);
    let user = lines.iter().rev().find(|l| l.starts_with("USER ")).unwrap();
    let uid = user["USER ".len()..].split(':').next().unwrap();
    assert!(uid != "0" && uid != "root", "{user}");
    assert!(
        text.contains(&format!("--uid {uid}")),
        "the user {uid} is created"
    );

    let (proxy, admin) = ports("deploy/container/distill-guard.toml");
    assert!(text.contains(
        "COPY deploy/container/distill-guard.toml /etc/distill-guard/distill-guard.toml"
    ));
    let expose = lines.iter().find(|l| l.starts_with("EXPOSE ")).unwrap();
    assert!(
        expose.split(' ').any(|p| p == proxy.to_string()),
        "{expose}"
    );
    assert!(
        expose.split(' ').any(|p| p == admin.to_string()),
        "{expose}"
    );
    let health = text.split("HEALTHCHECK").nth(1).unwrap();
    let health = health.lines().take(2).collect::<String>();
    assert!(
        health.contains(&format!("\"127.0.0.1:{admin}\"")) && health.contains("\"/healthz\""),
        "{health}"
    );
    assert!(text.contains("--locked"));
    assert!(text.contains("DISTILL_GUARD_GIT_COMMIT=${GIT_COMMIT}"));
    // The build context must hold what cargo needs and not the target dir.
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l == "target"));
    for needed in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "benches",
        "deploy",
        "config",
    ] {
        assert!(!ignore.lines().any(|l| l == needed), "{needed} ignored");
    }
}

#[test]
fn the_compose_stack_agrees_with_its_config() {
    let c = yaml("deploy/compose.yaml");
    let cfg = toml_file("deploy/compose/distill-guard.toml");
    let (proxy, admin) = ports("deploy/compose/distill-guard.toml");
    let services = at(&c, "services").as_mapping().unwrap();
    for name in [
        "distill-guard",
        "mock-upstream",
        "redis",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "no service {name}");
    }
    // The proxy's shared state is the stack's Redis, which it waits for.
    assert_eq!(cfg["state"]["backend"].as_str(), Some("redis"));
    assert_eq!(cfg["state"]["url"].as_str(), Some("redis://redis:6379/0"));
    assert_eq!(
        s(
            at(&c, "services/distill-guard/depends_on/redis"),
            "condition"
        ),
        "service_healthy"
    );
    let dg = at(&c, "services/distill-guard");
    // The mounted config is the one checked here.
    let mounts: Vec<&str> = at(dg, "volumes")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        mounts.contains(&"./compose/distill-guard.toml:/etc/distill-guard/distill-guard.toml:ro")
    );
    let published: Vec<&str> = at(dg, "ports")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(published.contains(&format!("127.0.0.1:{proxy}:{proxy}").as_str()));
    assert!(published.contains(&format!("127.0.0.1:{admin}:{admin}").as_str()));
    // Secrets reach the variables the config names.
    let env = at(dg, "environment");
    let token = s(env, cfg["admin"]["token_env"].as_str().unwrap());
    assert!(!s(env, cfg["identity"]["hash_secret_env"].as_str().unwrap()).is_empty());
    // Stopping waits for the shutdown grace.
    let grace_ms = cfg["server"]["shutdown_grace_ms"].as_integer().unwrap();
    let stop = s(dg, "stop_grace_period")
        .trim_end_matches('s')
        .parse::<i64>()
        .unwrap();
    assert!(
        stop * 1000 > grace_ms,
        "stop_grace_period {stop}s vs {grace_ms} ms"
    );

    // The upstream is the mock, where the mock listens.
    let mock = at(&c, "services/mock-upstream");
    let args: Vec<&str> = at(mock, "command")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "mock-upstream");
    let listen = args[args.iter().position(|a| *a == "--listen").unwrap() + 1];
    assert_eq!(
        cfg["upstream"]["url"].as_str().unwrap(),
        format!("http://mock-upstream:{}", port_of(listen))
    );

    // Prometheus scrapes the admin listener with the admin token.
    let p = yaml("deploy/compose/prometheus/prometheus.yml");
    let job = at(&p, "scrape_configs/0");
    assert_eq!(s(job, "metrics_path"), "/metrics");
    assert_eq!(
        s(job, "static_configs/0/targets/0"),
        format!("distill-guard:{admin}")
    );
    assert_eq!(s(job, "authorization/credentials"), token);

    // Grafana gets a Prometheus data source and the shipped dashboard.
    let g = at(&c, "services/grafana/volumes").as_sequence().unwrap();
    let g: Vec<&str> = g.iter().map(|v| v.as_str().unwrap()).collect();
    let dash = g.iter().find(|m| m.contains("distill-guard.json")).unwrap();
    let (src, dst) = dash.split_once(':').unwrap();
    assert_eq!(src, "../config/grafana/distill-guard.json");
    assert!(root().join("deploy").join(src).exists());
    let ds = yaml("deploy/compose/grafana/provisioning/datasources/prometheus.yaml");
    assert_eq!(s(&ds, "datasources/0/type"), "prometheus");
    assert_eq!(s(&ds, "datasources/0/url"), "http://prometheus:9090");
    let provider = yaml("deploy/compose/grafana/provisioning/dashboards/distill-guard.yaml");
    let dir = s(&provider, "providers/0/options/path");
    assert!(dst.starts_with(&format!("{dir}/")), "{dst} outside {dir}");
    assert!(g.contains(&"./compose/grafana/provisioning:/etc/grafana/provisioning:ro"));
}

// ------------------------------------------------------------------ kubernetes

/// Kubernetes objects by kind.
fn kubernetes() -> BTreeMap<String, serde_yaml::Value> {
    let k = yaml("deploy/kubernetes/kustomization.yaml");
    let mut out = BTreeMap::new();
    let resources = at(&k, "resources").as_sequence().unwrap();
    for r in resources {
        for doc in yaml_docs(&format!("deploy/kubernetes/{}", r.as_str().unwrap())) {
            out.insert(s(&doc, "kind").to_string(), doc);
        }
    }
    out
}

#[test]
fn kubernetes_manifests_agree_with_their_config() {
    let objects = kubernetes();
    let kustomization = yaml("deploy/kubernetes/kustomization.yaml");
    let cfg = toml_file("deploy/kubernetes/distill-guard.toml");
    let (proxy, admin) = ports("deploy/kubernetes/distill-guard.toml");
    let d = &objects["Deployment"];
    let pod = at(d, "spec/template/spec");
    let labels = at(d, "spec/template/metadata/labels");
    assert_eq!(at(d, "spec/selector/matchLabels"), labels);
    let c = at(pod, "containers/0");
    // kustomization.yaml's `images` rewrites this image.
    let image = s(c, "image").split(':').next().unwrap();
    assert_eq!(s(&kustomization, "images/0/name"), image);

    // Named ports are the config's.
    let port = |name: &str| -> u64 {
        at(c, "ports")
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| s(p, "name") == name)
            .map(|p| at(p, "containerPort").as_u64().unwrap())
            .unwrap_or_else(|| panic!("no port {name}"))
    };
    assert_eq!(port("proxy"), u64::from(proxy));
    assert_eq!(port("admin"), u64::from(admin));
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(s(c, &format!("{probe}/httpGet/path")), path);
        assert_eq!(s(c, &format!("{probe}/httpGet/port")), "admin");
    }

    // The config file is the ConfigMap, mounted as a directory (a subPath
    // mount never sees updates), where args point.
    let cm = s(&kustomization, "configMapGenerator/0/name");
    assert_eq!(
        s(&kustomization, "configMapGenerator/0/files/0"),
        "distill-guard.toml"
    );
    assert_eq!(
        at(&kustomization, "generatorOptions/disableNameSuffixHash").as_bool(),
        Some(true)
    );
    let volume = at(pod, "volumes")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| at(v, "configMap/name").as_str() == Some(cm))
        .unwrap();
    let mount = at(c, "volumeMounts")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| s(m, "name") == s(volume, "name"))
        .unwrap();
    assert!(at(mount, "subPath").is_null());
    let args: Vec<&str> = at(c, "args")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "serve",
            "--config",
            &format!("{}/distill-guard.toml", s(mount, "mountPath"))
        ]
    );
    assert_eq!(cfg["admin"]["watch_config"].as_bool(), Some(true));
    // The state path is on a writable volume.
    let state = cfg["admin"]["state_path"].as_str().unwrap();
    assert!(at(c, "volumeMounts")
        .as_sequence()
        .unwrap()
        .iter()
        .any(|m| state.starts_with(&format!("{}/", s(m, "mountPath")))
            && at(m, "readOnly").is_null()));

    // Secrets reach the variables the config names.
    let env: BTreeMap<&str, &str> = at(c, "env")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| (s(e, "name"), s(e, "valueFrom/secretKeyRef/key")))
        .collect();
    let example = yaml("deploy/kubernetes/secret.example.yaml");
    for var in [
        cfg["identity"]["hash_secret_env"].as_str().unwrap(),
        cfg["admin"]["token_env"].as_str().unwrap(),
    ] {
        let key = env
            .get(var)
            .unwrap_or_else(|| panic!("{var} not set from the Secret"));
        assert!(
            !at(&example, &format!("stringData/{key}")).is_null(),
            "{key}"
        );
    }

    // Graceful shutdown: preStop, then the config's grace, within the pod's.
    let grace_ms = cfg["server"]["shutdown_grace_ms"].as_integer().unwrap() as u64;
    let pre_stop = at(c, "lifecycle/preStop/exec/command")
        .as_sequence()
        .unwrap();
    let pre_stop_s: u64 = pre_stop[1].as_str().unwrap().parse().unwrap();
    let period = at(pod, "terminationGracePeriodSeconds").as_u64().unwrap();
    assert!(
        period * 1000 > pre_stop_s * 1000 + grace_ms,
        "terminationGracePeriodSeconds {period} vs preStop {pre_stop_s} s + {grace_ms} ms"
    );
    assert_eq!(
        at(pod, "securityContext/runAsNonRoot").as_bool(),
        Some(true)
    );

    // The PodDisruptionBudget and the Service select these pods.
    let pdb = &objects["PodDisruptionBudget"];
    assert_eq!(at(pdb, "spec/selector/matchLabels"), labels);
    assert!(
        at(d, "spec/replicas").as_u64().unwrap() > at(pdb, "spec/minAvailable").as_u64().unwrap()
    );
    let svc = &objects["Service"];
    assert_eq!(at(svc, "spec/selector"), labels);
    for p in at(svc, "spec/ports").as_sequence().unwrap() {
        port(s(p, "targetPort"));
    }
}

// ------------------------------------------------------------------ systemd

/// `Key=value` lines of a unit (keys may repeat).
fn unit_entries(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_systemd_unit_is_sandboxed_reloads_with_sighup_and_verifies() {
    let rel = "deploy/systemd/distill-guard.service";
    let text = read(rel);
    let entries = unit_entries(&text);
    let get = |k: &str| -> Vec<&str> {
        entries
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(get(k), [v], "{k}");
    }
    assert_eq!(
        get("ExecStart"),
        ["/usr/bin/distill-guard serve --config /etc/distill-guard/distill-guard.toml"]
    );
    let stop: u64 = get("TimeoutStopSec")[0]
        .trim_end_matches('s')
        .parse()
        .unwrap();
    let grace_ms = toml_file("config/distill-guard.toml")["server"]["shutdown_grace_ms"]
        .as_integer()
        .unwrap() as u64;
    assert!(stop * 1000 > grace_ms);

    // systemd's own check, where systemd-analyze is installed. It wants
    // the binary the unit names to exist: point it at the one just built.
    let probe = Command::new("systemd-analyze").arg("--version").output();
    if !probe.map(|o| o.status.success()).unwrap_or(false) {
        eprintln!("SKIPPED systemd-analyze verify: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("distill-guard.service");
    std::fs::write(&unit, text.replace("/usr/bin/distill-guard", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--recursive-errors=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

// ------------------------------------------------------------------ reload from a ConfigMap

/// A port nothing listens on now: bound and released at once. Only a
/// probe that must find no listener uses it; a listener is never started on
/// a port picked this way (that would race other processes for it).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(what: &str, child: &mut Child, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("exited early ({status}) waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("gave up waiting for {what}");
}

fn reloads_ok(admin: u16) -> Option<u64> {
    use std::io::{Read as _, Write as _};
    let mut c = TcpStream::connect(("127.0.0.1", admin)).ok()?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    c.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("distill_guard_config_reloads_total{result=\"ok\"} "))
        .and_then(|n| n.trim().parse().ok())
}

/// The kubelet's atomic update of a ConfigMap volume: the data in a new
/// timestamped directory, `..data` re-pointed at it by a rename, the old
/// directory deleted. The file the config names is `NAME -> ..data/NAME`.
fn kubelet_update(dir: &Path, generation: u32, text: &str) {
    let new = format!("..gen_{generation}");
    std::fs::create_dir(dir.join(&new)).unwrap();
    std::fs::write(dir.join(&new).join("distill-guard.toml"), text).unwrap();
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::os::unix::fs::symlink(&new, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

#[test]
fn a_configmap_volume_is_reloaded_on_every_update_and_the_healthcheck_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = |level: &str| {
        format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"http://127.0.0.1:9\"\n\
             [admin]\naddress = \"127.0.0.1:0\"\nwatch_config = true\n\
             [logging]\nlevel = \"{level}\"\n"
        )
    };
    // The first generation, as a pod starts with it.
    std::fs::create_dir(dir.path().join("..gen_0")).unwrap();
    std::fs::write(
        dir.path().join("..gen_0/distill-guard.toml"),
        config("info"),
    )
    .unwrap();
    std::os::unix::fs::symlink("..gen_0", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink(
        "..data/distill-guard.toml",
        dir.path().join("distill-guard.toml"),
    )
    .unwrap();

    // The listeners are on port 0; their addresses are read from the log.
    let spawned = support::spawn_listening(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(dir.path().join("distill-guard.toml"))
            .stdout(Stdio::null()),
        1,
        true,
    );
    let admin = spawned.admin.unwrap().port();
    let mut child = spawned.child;
    wait_for("the admin listener", &mut child, || {
        reloads_ok(admin) == Some(0)
    });

    let health = |port: u16, path: &str| {
        Command::new(BIN)
            .args([
                "healthcheck",
                "--address",
                &format!("127.0.0.1:{port}"),
                "--path",
                path,
            ])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(health(admin, "/healthz"));
    assert!(!health(admin, "/no-such-path"), "only 200 is healthy");
    assert!(
        !health(closed_port(), "/healthz"),
        "nothing listening is unhealthy"
    );

    for generation in 1..=3 {
        let level = if generation % 2 == 1 { "debug" } else { "info" };
        kubelet_update(dir.path(), generation, &config(level));
        wait_for(&format!("reload {generation}"), &mut child, || {
            reloads_ok(admin) == Some(u64::from(generation))
        });
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}
