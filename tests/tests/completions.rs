//! `ktstr completions` and `ktstr man`: generated from the parser's own
//! definition, loadable by the shells and by man, and complete.

mod common;

use std::process::Command;

use common::ktstr_bin;

fn stdout_of(args: &[&str]) -> String {
    let out = Command::new(ktstr_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Bash loads the script and completes subcommands and flags from it.
#[test]
fn bash_completes_commands_and_flags() {
    let script = stdout_of(&["completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ktstr.bash");
    std::fs::write(&file, &script).unwrap();
    let complete = |words: &str| {
        let probe = format!(
            "source {file}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             COMP_LINE='{words}'; COMP_POINT=${{#COMP_LINE}}; \
             _ktstr ktstr \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file = file.display()
        );
        let out = Command::new("bash").args(["-c", &probe]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let commands = complete("ktstr ''");
    for want in [
        "build",
        "kernel",
        "cache",
        "locks",
        "plugins",
        "completions",
        "man",
    ] {
        assert!(
            commands.lines().any(|l| l == want),
            "{want} not offered: {commands}"
        );
    }
    assert_eq!(complete("ktstr bu").trim(), "build");
    let flags = complete("ktstr build --ke");
    assert!(flags.lines().any(|l| l == "--kernel"), "{flags}");
    let arches = complete("ktstr build --arch ar");
    assert!(arches.lines().any(|l| l == "arm64"), "{arches}");
}

#[test]
fn zsh_and_fish_scripts_name_ktstr_and_its_commands() {
    let zsh = stdout_of(&["completions", "zsh"]);
    assert!(
        zsh.starts_with("#compdef ktstr"),
        "{}",
        &zsh[..80.min(zsh.len())]
    );
    assert!(zsh.contains("--kernel"));
    let fish = stdout_of(&["completions", "fish"]);
    assert!(fish.contains("complete -c ktstr"), "{fish}");
    assert!(fish.contains("-l kernel"));
    if have("fish") {
        let out = Command::new("fish")
            .args(["--no-execute", "-c", &fish])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        ktstr_sdk::testing::skip("fish is not installed: its script is not syntax-checked");
    }
}

#[test]
fn an_unknown_shell_is_a_usage_error_listing_the_shells() {
    let out = Command::new(ktstr_bin())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("ktstr: error: "), "{err}");
    for shell in ["bash", "zsh", "fish"] {
        assert!(err.contains(shell), "{err}");
    }
}

/// The page is roff that man renders, with every command; --out-dir
/// writes one page per command.
#[test]
fn man_pages_render_and_cover_every_command() {
    let page = stdout_of(&["man"]);
    assert!(
        page.contains(".TH ktstr 1"),
        "{}",
        &page[..200.min(page.len())]
    );
    for command in [
        "build",
        "kernel",
        "cache",
        "locks",
        "plugins",
        "completions",
    ] {
        assert!(page.contains(command), "{command} missing from the page");
    }
    if have("man") {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ktstr.1");
        std::fs::write(&file, &page).unwrap();
        let out = Command::new("man")
            .arg("-l")
            .arg(&file)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("ktstr"));
    } else {
        ktstr_sdk::testing::skip("man is not installed: the page is not rendered");
    }
    let dir = tempfile::tempdir().unwrap();
    let listed = stdout_of(&["man", "--out-dir", dir.path().to_str().unwrap()]);
    for name in [
        "ktstr.1",
        "ktstr-build.1",
        "ktstr-kernel-list.1",
        "ktstr-cache-pull.1",
    ] {
        assert!(
            dir.path().join(name).is_file(),
            "{name} not written: {listed}"
        );
        assert!(listed.contains(name), "{name} not listed: {listed}");
    }
}

/// A reader that has gone away (`| head`) is not an error: stdout is a
/// pipe whose read end is already closed, so every write fails.
#[test]
fn a_closed_pipe_ends_quietly() {
    for args in [&["completions", "bash"][..], &["man"][..]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(ktstr_bin())
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
