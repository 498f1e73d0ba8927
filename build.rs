//! Build script: records the git commit the binary is built from, for
//! `distill-guard --version`.
//!
//! `DISTILL_GUARD_GIT_COMMIT` in the environment wins (container builds,
//! where `.git` is not in the build context, pass it as a build argument);
//! otherwise `git rev-parse --short HEAD` when the package root is the top
//! of a git checkout; otherwise (a source tarball, no git) "unknown".

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=DISTILL_GUARD_GIT_COMMIT");
    let commit = std::env::var("DISTILL_GUARD_GIT_COMMIT")
        .ok()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=DISTILL_GUARD_COMMIT={commit}");
}

/// The short commit of HEAD, and rerun-if-changed on the files that move
/// when HEAD does (HEAD itself, the branch it names, packed refs), so a new
/// commit rebuilds the version string without rebuilding on every edit.
fn git_commit() -> Option<String> {
    // A tarball unpacked inside some other repository is not a checkout of
    // distill-guard: that repository's commit would be a lie.
    let top = std::fs::canonicalize(git(&["rev-parse", "--show-toplevel"])?).ok()?;
    let manifest = std::fs::canonicalize(std::env::var_os("CARGO_MANIFEST_DIR")?).ok()?;
    if top != manifest {
        return None;
    }
    let commit = git(&["rev-parse", "--short", "HEAD"])?;
    for path in ["HEAD", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            rerun_if_changed(p);
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(p) = git(&["rev-parse", "--git-path", &branch]) {
            rerun_if_changed(p);
        }
    }
    Some(commit)
}

fn rerun_if_changed(path: String) {
    // `--git-path` answers relative to the working directory, which is the
    // package root while a build script runs.
    let path = PathBuf::from(path);
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}
