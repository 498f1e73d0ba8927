//! The deployment files (container, compose, Kubernetes, systemd) agree
//! with the configs they run: ports, probe paths, secret variables,
//! shutdown timings, and the shipped policy itself; and a Kubernetes
//! ConfigMap volume is reloaded live on every update.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_distill-guard");

// ------------------------------------------------------------------ reload from a ConfigMap

fn free_port() -> u16 {
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
    let (proxy, admin) = (free_port(), free_port());
    let config = |level: &str| {
        format!(
            "[[listener]]\naddress = \"127.0.0.1:{proxy}\"\n\
             [upstream]\nurl = \"http://127.0.0.1:9\"\n\
             [admin]\naddress = \"127.0.0.1:{admin}\"\nwatch_config = true\n\
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

    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(dir.path().join("distill-guard.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
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
        !health(free_port(), "/healthz"),
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
