//! User errors: each says what failed, on which input, and exits 1
//! (2 for command-line usage errors), without panicking or caching.

mod common;

use std::fs;

use common::Fixture;

#[test]
fn malformed_fragment_line_is_named_by_file_and_line() {
    let fx = Fixture::git();
    let frag = fx.write_file(
        "bad.config",
        "CONFIG_FIXTURE_EXTRA=y\nthis is not a kconfig line\n",
    );
    let run = fx.build(&["--extra-kconfig", frag.to_str().unwrap()]);
    run.assert_fails().assert_hint();
    let at = format!("{}:2", frag.display());
    assert!(
        run.error_text().contains(&at),
        "the error should name {at}\n{}",
        run.describe()
    );
    assert_eq!(
        fx.build_count(),
        0,
        "nothing should be built: {:?}",
        fx.make_log()
    );
    assert!(fx.entries_on_disk().is_empty());
}

#[test]
fn fragment_disabling_a_required_symbol_is_rejected() {
    let fx = Fixture::git();
    let frag = fx.write_file("nobpf.config", "# CONFIG_BPF is not set\n");
    let run = fx.build(&["--extra-kconfig", frag.to_str().unwrap()]);
    run.assert_fails().assert_hint();
    let err = run.error_text();
    assert!(
        err.contains("CONFIG_BPF"),
        "the error should list CONFIG_BPF\n{}",
        run.describe()
    );
    assert!(
        err.contains("--extra-kconfig"),
        "the error should name --extra-kconfig\n{}",
        run.describe()
    );
    assert!(
        fx.entries_on_disk().is_empty(),
        "{:?}",
        fx.entries_on_disk()
    );
    assert!(fx.list_json().is_empty());
}

#[test]
fn missing_fragment_file_is_an_error() {
    let fx = Fixture::git();
    let missing = fx.root.path().join("no-such.config");
    let run = fx.build(&["--extra-kconfig", missing.to_str().unwrap()]);
    run.assert_fails();
    assert!(
        run.error_text().contains(missing.to_str().unwrap()),
        "{}",
        run.describe()
    );
}

#[test]
fn nonexistent_kernel_path_is_named() {
    let fx = Fixture::git();
    let missing = fx.root.path().join("does-not-exist/linux");
    let run = fx.run(&["build", "--kernel", missing.to_str().unwrap()]);
    run.assert_fails();
    assert!(
        run.error_text().contains(missing.to_str().unwrap()),
        "the error should name the path\n{}",
        run.describe()
    );
}

#[test]
fn directory_that_is_not_a_kernel_tree_is_named() {
    let fx = Fixture::git();
    let dir = fx.root.path().join("not-a-kernel");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("README"), "hello\n").unwrap();
    let run = fx.run(&["build", "--kernel", dir.to_str().unwrap()]);
    run.assert_fails().assert_hint();
    assert!(
        run.error_text().contains(dir.to_str().unwrap()),
        "the error should name the path\n{}",
        run.describe()
    );
    assert!(
        fx.make_log().is_empty(),
        "make must not run: {:?}",
        fx.make_log()
    );
}

#[test]
fn cpu_cap_zero_is_rejected() {
    let fx = Fixture::git();
    let run = fx.build(&["--cpu-cap", "0"]);
    // Either ktstr's own validation (1) or clap's (2); never success.
    assert!(matches!(run.code(), Some(1 | 2)), "{}", run.describe());
    run.assert_no_panic().assert_stderr_has("at least 1");
    assert!(
        fx.make_log().is_empty(),
        "make must not run: {:?}",
        fx.make_log()
    );
}

#[test]
fn failing_build_shows_the_compiler_error() {
    let fx = Fixture::git();
    let frag = fx.write_file("fail.config", "CONFIG_FIXTURE_FAIL=y\n");
    let run = fx.build(&["--extra-kconfig", frag.to_str().unwrap()]);
    run.assert_fails().assert_hint();
    assert!(
        run.stderr
            .contains("fixture.c:1: error: deliberate failure"),
        "the log tail should show the compiler error\n{}",
        run.describe()
    );
    assert!(
        run.stdout.is_empty(),
        "no image on failure\n{}",
        run.describe()
    );
    assert!(
        fx.entries_on_disk().is_empty(),
        "{:?}",
        fx.entries_on_disk()
    );
}

#[test]
fn missing_make_is_reported() {
    let fx = Fixture::git();
    let bin = common::path_without(fx.root.path(), &["make", "gmake"]);
    let mut cmd = fx.command(&fx.build_args(&[]));
    cmd.env("PATH", &bin);
    let run = fx.run_cmd(cmd, &fx.build_args(&[]));
    run.assert_fails().assert_hint();
    assert!(
        run.error_text().contains("make"),
        "the error should mention make\n{}",
        run.describe()
    );
    assert!(fx.entries_on_disk().is_empty());
}

#[test]
fn cache_root_that_is_a_file_is_a_clear_error() {
    let mut fx = Fixture::git();
    let file = fx.write_file("cache-is-a-file", "not a directory\n");
    fx.cache = file.clone();
    let run = fx.build(&[]);
    run.assert_fails().assert_hint();
    assert!(
        run.error_text().contains(file.to_str().unwrap()),
        "the error should name the cache root\n{}",
        run.describe()
    );
    // `kernel list` fails the same way, or shows nothing; it must not panic.
    let list = fx.run(&["kernel", "list"]);
    list.assert_no_panic();
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        "not a directory\n",
        "the file was modified"
    );
}

#[test]
fn usage_errors_exit_2() {
    let fx = Fixture::git();
    let run = fx.run(&["build"]);
    assert_eq!(
        run.code(),
        Some(2),
        "build without --kernel\n{}",
        run.describe()
    );
    let run = fx.run(&["no-such-command"]);
    assert_eq!(run.code(), Some(2), "{}", run.describe());
    let run = fx.build(&["--no-such-flag"]);
    assert_eq!(run.code(), Some(2), "{}", run.describe());
    let run = fx.build(&["--arch", "vax"]);
    assert_eq!(run.code(), Some(2), "{}", run.describe());
    let run = fx.run(&["plugins", "new", "x", "--kind", "nope"]);
    assert_eq!(run.code(), Some(2), "{}", run.describe());
    run.assert_stderr_has("ktstr:   [possible values: source, reserver, configurer");
    // clap's multi-line errors too: every line is a ktstr line.
    for args in [&["build"][..], &["plugins", "new", "x", "--kind", "nope"]] {
        let run = fx.run(args);
        for line in run.stderr.lines() {
            assert!(
                line.starts_with("ktstr: "),
                "unprefixed line {line:?}\n{}",
                run.describe()
            );
        }
    }
}

#[test]
fn unknown_profile_is_a_usage_error_listing_the_profiles() {
    let fx = Fixture::git();
    let run = fx.build(&["--profile", "no-such-profile"]);
    assert_eq!(run.code(), Some(2), "a bad flag value\n{}", run.describe());
    run.assert_no_panic()
        .assert_hint()
        .assert_stderr_has("--profile no-such-profile")
        .assert_stderr_has("choose one of: default (defconfig + fragment), tiny")
        .assert_stderr_lacks("did you mean");
    assert!(fx.make_log().is_empty(), "{:?}", fx.make_log());
    // A near miss is named.
    let run = fx.build(&["--profile", "tiy"]);
    assert_eq!(run.code(), Some(2), "{}", run.describe());
    run.assert_stderr_has("ktstr: hint: did you mean \"tiny\"? ");
    assert!(fx.make_log().is_empty(), "{:?}", fx.make_log());
    // The built-in profiles are listed in the help (and offered by completion).
    let help = fx.run(&["build", "--help"]);
    let words = help.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("[possible values: default, tiny]"),
        "{}",
        help.stdout
    );
}

#[test]
fn misspelt_plugin_names_get_a_suggestion() {
    let fx = Fixture::git();
    let run = fx.build(&["--plugin", "s3cache"]);
    run.assert_fails()
        .assert_stderr_has("--plugin s3cache")
        .assert_stderr_has("ktstr: hint: did you mean \"s3-cache\"? ");
    let run = fx.build(&["--reserver", "lcc"]);
    assert_eq!(run.code(), Some(2), "a bad flag value\n{}", run.describe());
    run.assert_stderr_has("ktstr: error: --reserver lcc: no reserver plugin named \"lcc\"")
        .assert_stderr_has("ktstr: hint: did you mean \"llc\"? ");
    let run = fx.build(&["--plugin", "qqqqzzzz"]);
    run.assert_fails().assert_stderr_lacks("did you mean");
    assert!(fx.make_log().is_empty(), "{:?}", fx.make_log());
}

#[test]
fn help_names_every_kernel_spec_form_and_where_to_read_on() {
    let fx = Fixture::git();
    let build = fx.run(&["build", "--help"]);
    assert_eq!(build.code(), Some(0), "{}", build.describe());
    for form in [
        "a kernel tree",
        "6.12.3",
        "6.10..6.12",
        "#sha256=HEX",
        "git+URL",
        "Examples:",
        "ktstr build --kernel 6.12 ",
        "ktstr build --kernel 'git+https://",
    ] {
        assert!(
            build.stdout.contains(form),
            "build --help lacks {form:?}:\n{}",
            build.stdout
        );
    }
    let top = fx.run(&["--help"]);
    assert_eq!(top.code(), Some(0), "{}", top.describe());
    for want in [
        "$KTSTR_CONFIG",
        "~/.config/ktstr/config.toml",
        "KTSTR_CACHE_DIR",
        "NO_COLOR",
        "Exit codes: 0 success, 1 failure, 2 usage error, 3 a kernel failed its",
        "boot check (--verify, kernel verify-boot), 130 interrupted",
        "ktstr man",
    ] {
        assert!(
            top.stdout.contains(want),
            "--help lacks {want:?}:\n{}",
            top.stdout
        );
    }
    // The guides it names are built in: `ktstr docs` lists them and prints
    // each, wherever the binary was installed.
    assert!(
        top.stdout.contains("`ktstr docs`"),
        "--help names no guides:\n{}",
        top.stdout
    );
    let list = fx.run(&["docs"]);
    list.assert_ok();
    for topic in ["cli", "config", "sources", "cache", "plugin-authoring"] {
        assert!(
            list.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(topic)),
            "`ktstr docs` lacks {topic}:\n{}",
            list.stdout
        );
    }
    let cli = fx.run(&["docs", "cli"]);
    cli.assert_ok();
    assert!(
        cli.stdout.starts_with("# ktstr command line") && cli.stdout.contains("--kernel"),
        "{}",
        cli.describe()
    );
    let typo = fx.run(&["docs", "cahce"]);
    assert_eq!(typo.code(), Some(2), "{}", typo.describe());
    assert!(typo.stderr.contains("'cache'"), "{}", typo.describe());
}

#[test]
fn verbose_log_lines_are_prefixed_and_plain_off_a_terminal() {
    let fx = Fixture::git();
    let run = fx.run(&["-v", "build", "--kernel", fx.tree.to_str().unwrap()]);
    run.assert_ok();
    assert!(
        !run.stderr.contains('\x1b'),
        "no colour into a pipe or file\n{}",
        run.describe()
    );
    let events: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("DEBUG") || l.contains("debug:"))
        .collect();
    assert!(
        !events.is_empty(),
        "-v logs debug events\n{}",
        run.describe()
    );
    for line in events {
        assert!(
            line.starts_with("ktstr: debug: ktstr"),
            "a -v line without the ktstr: prefix: {line:?}"
        );
    }
}
