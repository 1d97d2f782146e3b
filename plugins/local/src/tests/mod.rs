//! Tests of the local source: fixtures shared by the probe and acquire
//! tests (git repositories built with the `git` binary, a fake kernel
//! tree).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use ktstr_sdk::prelude::*;

use crate::LocalSource;
use crate::probe_tree;

mod acquire;
mod probe;
mod stat_match;

/// `git` is needed to build the fixture repositories.
fn git_available() -> bool {
    let ok = Command::new("git")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        ktstr_sdk::testing::skip("git is not installed");
    }
    ok
}

/// Run git in `dir` isolated from the host's git config, with a fixed
/// identity; return trimmed stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "protocol.file.allow=always"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_SYSTEM", "/dev/null")
        .env("GIT_AUTHOR_NAME", "ktstr-test")
        .env("GIT_AUTHOR_EMAIL", "ktstr-test@localhost")
        .env("GIT_COMMITTER_NAME", "ktstr-test")
        .env("GIT_COMMITTER_EMAIL", "ktstr-test@localhost")
        .env_remove("GIT_DIR")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_WORK_TREE")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A minimal tree that passes the kernel-tree check.
fn fake_kernel(dir: &Path) {
    fs::create_dir_all(dir.join("arch/x86")).unwrap();
    fs::write(
        dir.join("Makefile"),
        "# SPDX-License-Identifier: GPL-2.0\nVERSION = 6\nPATCHLEVEL = 99\nSUBLEVEL = 0\nEXTRAVERSION =\nNAME = Test\n\nall:\n\ttrue\n",
    )
    .unwrap();
    fs::write(dir.join("Kconfig"), "mainmenu \"Test\"\n").unwrap();
    fs::write(dir.join("arch/x86/Kconfig"), "config X86\n\tdef_bool y\n").unwrap();
    fs::write(dir.join("main.c"), "int main(void) { return 0; }\n").unwrap();
}

fn init_commit(dir: &Path) {
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "base"]);
}

/// A fake kernel tree committed to a fresh repository.
fn committed_kernel() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fs::canonicalize(tmp.path()).unwrap();
    fake_kernel(&dir);
    init_commit(&dir);
    (tmp, dir)
}

fn probe(dir: &Path) -> SourceState {
    probe_tree(dir).expect("probe")
}

fn acquire(raw: &str) -> Result<AcquiredSource> {
    LocalSource.acquire(&KernelSpec::new(raw), &StageContext::quiet())
}

fn dir_str(dir: &Path) -> &str {
    dir.to_str().unwrap()
}
