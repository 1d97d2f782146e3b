//! `ktstr build` on a clean git tree: store, hit, --force, --clean, profiles
//! and fragments each get their own entry.

mod common;

use std::fs;

use common::{Fixture, assert_stripped_vmlinux, canon, is_fixture_key};

#[test]
fn first_build_stores_the_kernel_in_the_cache() {
    let fx = Fixture::git();
    let run = fx.build(&[]);
    let image = run.image_path();
    run.assert_stderr_prefixed();

    // The printed image is the cached copy, in <cache>/kernels/<key>/.
    let kernels = canon(&fx.kernels_dir());
    let image = canon(&image);
    assert!(
        image.starts_with(&kernels),
        "image {} not in the cache {}\n{}",
        image.display(),
        kernels.display(),
        run.describe()
    );
    assert_eq!(image.file_name().unwrap(), "bzImage", "{}", run.describe());
    let entry = image.parent().unwrap();
    assert_eq!(entry.parent().unwrap(), kernels);
    let key = entry.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        is_fixture_key(&key),
        "key {key:?} should look like 6.99.0-local-x86_64-<16 hex>"
    );
    assert_eq!(
        run.cached_key(),
        key,
        "`ktstr: cached <key>` should name the entry\n{}",
        run.describe()
    );
    assert!(
        run.stderr.contains(&format!("ktstr: cached {key}")),
        "{}",
        run.describe()
    );
    run.assert_stderr_lacks("cache hit ");

    // Entry contents.
    for name in ["bzImage", "vmlinux", "config", "metadata.json"] {
        assert!(
            entry.join(name).is_file(),
            "entry lacks {name}: {:?}",
            fs::read_dir(entry).unwrap().collect::<Vec<_>>()
        );
    }
    assert_eq!(
        fs::read(entry.join("bzImage")).unwrap(),
        fs::read(fx.tree_image()).unwrap(),
        "cached image differs from the built one"
    );
    assert_stripped_vmlinux(&entry.join("vmlinux"));
    let config = fs::read_to_string(entry.join("config")).unwrap();
    assert_eq!(
        config,
        fs::read_to_string(fx.tree.join(".config")).unwrap(),
        "cached config is not the tree's final .config"
    );
    common::assert_required_symbols(&config);
    let meta: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(entry.join("metadata.json")).unwrap())
            .expect("metadata.json is JSON");
    assert!(meta.is_object(), "metadata.json: {meta}");

    // The build went through kbuild: configure, build, compile_commands.json.
    let log = fx.make_log();
    assert!(log.iter().any(|l| l == "defconfig"), "make log: {log:?}");
    assert!(
        log.iter().any(|l| l.contains("olddefconfig")),
        "make log: {log:?}"
    );
    assert_eq!(fx.build_count(), 1, "make log: {log:?}");
    assert!(
        fx.tree.join("compile_commands.json").is_file(),
        "compile_commands.json not generated; make log: {log:?}"
    );

    // The tree is still clean: build outputs are ignored.
    assert_eq!(common::git(&fx.tree, &["status", "--porcelain"]), "");

    // kernel list knows it.
    let list = fx.list_json();
    assert_eq!(list.len(), 1, "{list:?}");
    let e = &list[0];
    assert_eq!(e["key"], key.as_str());
    assert_eq!(e["version"], "6.99.0");
    assert_eq!(e["profile"], "default");
    assert_eq!(e["status"], "ok");
    assert!(
        e["source"]["kind"].as_str().is_some_and(|k| !k.is_empty()),
        "source.kind: {e}"
    );
    assert!(e["source"]["identity"].is_string(), "source.identity: {e}");
    assert!(
        e["built_at"].is_string() || e["built_at"].is_number(),
        "built_at: {e}"
    );
    assert_eq!(
        canon(std::path::Path::new(
            e["image"].as_str().expect("image is a string")
        )),
        image
    );
}

#[test]
fn second_build_is_a_cache_hit_without_make() {
    let fx = Fixture::git();
    let first = fx.build(&[]);
    let image = first.image_path();
    let key = first.cached_key();
    let log_before = fx.make_log();

    let second = fx.build(&[]);
    assert_eq!(second.image_path(), image, "{}", second.describe());
    second.assert_stderr_prefixed();
    assert_eq!(second.hit_key(), key, "{}", second.describe());
    second.assert_stderr_lacks("ktstr: cached ");
    assert_eq!(
        fx.make_log(),
        log_before,
        "a cache hit must not run make\n{}",
        second.describe()
    );
    assert_eq!(fx.list_json().len(), 1);
}

#[test]
fn force_rebuilds_without_reconfiguring_a_configured_tree() {
    let fx = Fixture::git();
    let first = fx.build(&[]);
    let image = first.image_path();
    let key = first.cached_key();
    let log_before = fx.make_log();

    let forced = fx.build(&["--force"]);
    assert_eq!(forced.image_path(), image, "{}", forced.describe());
    forced.assert_stderr_lacks("cache hit ");
    assert_eq!(forced.cached_key(), key, "{}", forced.describe());
    assert_eq!(
        fx.build_count(),
        2,
        "--force must run the build again: {:?}",
        fx.make_log()
    );
    // .config already holds every profile line: no defconfig/olddefconfig.
    let new_lines = &fx.make_log()[log_before.len()..];
    assert!(
        !new_lines.iter().any(|l| l.contains("defconfig")),
        "a configured tree must not be reconfigured; make ran {new_lines:?}\n{}",
        forced.describe()
    );
    assert_eq!(fx.list_json().len(), 1, "same key, one entry");
}

#[test]
fn clean_runs_mrproper_before_configuring() {
    let fx = Fixture::git();
    let first = fx.build(&[]);
    let key = first.cached_key();
    let before = fx.make_log().len();

    let run = fx.build(&["--clean", "--force"]);
    run.image_path();
    let new_lines = fx.make_log()[before..].to_vec();
    let mrproper = new_lines
        .iter()
        .position(|l| l.contains("mrproper"))
        .unwrap_or_else(|| panic!("no mrproper in {new_lines:?}\n{}", run.describe()));
    let defconfig = new_lines
        .iter()
        .position(|l| l.split_whitespace().any(|g| g == "defconfig"))
        .unwrap_or_else(|| panic!("no defconfig after mrproper in {new_lines:?}"));
    assert!(
        mrproper <= defconfig,
        "mrproper must come first: {new_lines:?}"
    );
    // Cleaning changes how, not what, is built.
    assert_eq!(run.cached_key(), key, "{}", run.describe());
}

/// Two checkouts of one commit share a cache: the profiles get separate
/// entries, and each is built once.
///
/// (Switching profiles in ONE tree is not tested: a configured tree's
/// `.config` is the base for the next profile, so `--profile tiny` after a
/// default build is "default + tiny lines", a different kernel.)
#[test]
fn profiles_have_their_own_entries() {
    let a = Fixture::git();
    let mut b = Fixture::git();
    b.cache = a.cache.clone();

    let default = a.build(&[]);
    let default_image = default.image_path();
    let tiny = b.build(&["--profile", "tiny"]);
    let tiny_image = tiny.image_path();
    assert_ne!(default_image, tiny_image, "{}", tiny.describe());
    let tiny_key = tiny.cached_key();
    assert!(is_fixture_key(&tiny_key), "{tiny_key}");
    assert_ne!(tiny_key, default.cached_key());

    let list = a.list_json();
    assert_eq!(list.len(), 2, "{list:?}");
    let tiny_entry = list
        .iter()
        .find(|e| e["key"] == tiny_key.as_str())
        .expect("tiny entry listed");
    assert_eq!(tiny_entry["profile"], "tiny");

    // Each again is a hit without building.
    let again = a.build(&[]);
    assert_eq!(again.image_path(), default_image);
    assert_eq!(
        again.hit_key(),
        default.cached_key(),
        "{}",
        again.describe()
    );
    let tiny_again = b.build(&["--profile", "tiny"]);
    assert_eq!(tiny_again.image_path(), tiny_image);
    assert_eq!(tiny_again.hit_key(), tiny_key, "{}", tiny_again.describe());
    assert_eq!(
        a.build_count() + b.build_count(),
        2,
        "{:?} {:?}",
        a.make_log(),
        b.make_log()
    );
}

/// The key depends on the commit and configuration, not on where the tree
/// is: a second checkout of the same commit is configured, then served.
#[test]
fn same_commit_in_another_checkout_is_a_hit() {
    let a = Fixture::git();
    let mut b = Fixture::git();
    b.cache = a.cache.clone();
    assert_eq!(
        common::git(&a.tree, &["rev-parse", "HEAD"]),
        common::git(&b.tree, &["rev-parse", "HEAD"])
    );
    let first = a.build(&[]);
    let key = first.cached_key();
    let second = b.build(&[]);
    assert_eq!(second.image_path(), first.image_path());
    assert_eq!(second.hit_key(), key, "{}", second.describe());
    assert_eq!(
        b.build_count(),
        0,
        "the same kernel was built twice: {:?}",
        b.make_log()
    );
}

#[test]
fn extra_kconfig_fragment_changes_the_key_and_lands_in_the_config() {
    let fx = Fixture::git();
    let plain = fx.build(&[]);
    let plain_key = plain.cached_key();

    let frag = fx.write_file(
        "extra.config",
        "# a comment\nCONFIG_FIXTURE_EXTRA=y\n\nCONFIG_FIXTURE_STRING=\"hello\"\n",
    );
    let run = fx.build(&["--extra-kconfig", frag.to_str().unwrap()]);
    let image = run.image_path();
    let key = run.cached_key();
    assert_ne!(
        key,
        plain_key,
        "a fragment must change the key\n{}",
        run.describe()
    );
    let config = fs::read_to_string(image.parent().unwrap().join("config")).unwrap();
    assert!(
        config.lines().any(|l| l == "CONFIG_FIXTURE_EXTRA=y"),
        "{config}"
    );
    assert!(
        config
            .lines()
            .any(|l| l == "CONFIG_FIXTURE_STRING=\"hello\""),
        "{config}"
    );

    // Same fragment again: a hit.
    let again = fx.build(&["--extra-kconfig", frag.to_str().unwrap()]);
    assert_eq!(again.hit_key(), key, "{}", again.describe());
}

#[test]
fn fragment_line_dropped_by_olddefconfig_is_reported() {
    let fx = Fixture::git();
    // The fixture's olddefconfig always drops CONFIG_FIXTURE_UNMET.
    let frag = fx.write_file("unmet.config", "CONFIG_FIXTURE_UNMET=y\n");
    let run = fx.build(&["--extra-kconfig", frag.to_str().unwrap()]);
    run.image_path();
    run.assert_stderr_has("CONFIG_FIXTURE_UNMET");
}

#[test]
fn tiny_profile_starts_from_tinyconfig() {
    let fx = Fixture::git();
    let run = fx.build(&["--profile", "tiny"]);
    let image = run.image_path();
    assert!(
        fx.make_log().iter().any(|l| l == "tinyconfig"),
        "{:?}\n{}",
        fx.make_log(),
        run.describe()
    );
    assert!(
        !fx.make_log().iter().any(|l| l == "defconfig"),
        "{:?}",
        fx.make_log()
    );
    let config = fs::read_to_string(image.parent().unwrap().join("config")).unwrap();
    assert!(
        config.contains("CONFIG_FIXTURE_BASE=\"tinyconfig\""),
        "{config}"
    );
    assert_eq!(fx.list_json()[0]["profile"], "tiny");
}

/// Fragments apply in command-line order; the last occurrence wins.
#[test]
fn later_fragments_override_earlier_ones() {
    let fx = Fixture::git();
    let a = fx.write_file("a.config", "CONFIG_FIXTURE_CHOICE=\"a\"\n");
    let b = fx.write_file("b.config", "CONFIG_FIXTURE_CHOICE=\"b\"\n");
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());

    let ab = fx.build(&["--extra-kconfig", a, "--extra-kconfig", b]);
    let config = fs::read_to_string(ab.image_path().parent().unwrap().join("config")).unwrap();
    assert!(
        config.lines().any(|l| l == "CONFIG_FIXTURE_CHOICE=\"b\""),
        "{config}"
    );
    assert!(!config.contains("CONFIG_FIXTURE_CHOICE=\"a\""), "{config}");

    let ba = fx.build(&["--extra-kconfig", b, "--extra-kconfig", a]);
    let config = fs::read_to_string(ba.image_path().parent().unwrap().join("config")).unwrap();
    assert!(
        config.lines().any(|l| l == "CONFIG_FIXTURE_CHOICE=\"a\""),
        "{config}"
    );
    assert_ne!(ab.cached_key(), ba.cached_key());
}

/// A relative --kernel is resolved against the working directory; stdout
/// still carries an absolute path.
#[test]
fn relative_kernel_path() {
    let fx = Fixture::git();
    let name = fx.tree.file_name().unwrap().to_str().unwrap().to_string();
    // Fixture::command runs in the temp dir that holds the tree.
    let first = fx.run(&["build", "--kernel", &name]);
    let image = first.image_path();
    let key = first.cached_key();
    let second = fx.build(&[]);
    assert_eq!(second.image_path(), image);
    assert_eq!(second.hit_key(), key, "{}", second.describe());
}

/// A `.config` ktstr wrote for one profile is not reused for another, even
/// when it happens to carry every line the other profile asks for.
#[test]
fn switching_profile_on_one_tree_starts_from_the_new_base() {
    let fx = Fixture::git();
    fx.build(&[]).assert_ok();
    let run = fx.build(&["--profile", "tiny"]);
    let image = run.image_path();
    run.assert_stderr_has("written by ktstr for another profile");
    assert!(
        fx.make_log().iter().any(|l| l == "tinyconfig"),
        "{:?}\n{}",
        fx.make_log(),
        run.describe()
    );
    let config = fs::read_to_string(image.parent().unwrap().join("config")).unwrap();
    assert!(
        config.contains("CONFIG_FIXTURE_BASE=\"tinyconfig\""),
        "{config}"
    );
    // And back: the default entry is a hit again once reconfigured.
    let back = fx.build(&[]);
    back.assert_ok().assert_stderr_has("cache hit");
}

/// A fragment used once does not stick to the tree: the next build without
/// it configures from the profile's base again instead of keeping its lines.
#[test]
fn a_fragment_does_not_stick_to_the_tree() {
    let fx = Fixture::git();
    let frag = fx.write_file("extra.kconfig", "CONFIG_FIXTURE_EXTRA=y\n");
    let with = fx.build(&["--extra-kconfig", frag.to_str().unwrap()]);
    let with_key = with.cached_key();
    let without = fx.build(&[]);
    let without_key = without.cached_key();
    assert_ne!(with_key, without_key, "{}", without.describe());
    let image = without.image_path();
    let config = fs::read_to_string(image.parent().unwrap().join("config")).unwrap();
    assert!(!config.contains("CONFIG_FIXTURE_EXTRA=y"), "{config}");
}

/// `--explain` names the input that differs from the nearest entry.
#[test]
fn explain_names_the_differing_input() {
    let fx = Fixture::git();
    fx.build(&[]).assert_ok();
    let frag = fx.write_file("extra.kconfig", "CONFIG_FIXTURE_EXTRA=y\n");
    // Configure with the fragment once so the tree's .config carries it,
    // then edit .config by hand: the key now misses on `config` alone.
    fx.build(&["--extra-kconfig", frag.to_str().unwrap()])
        .assert_ok();
    let mut config = fs::read_to_string(fx.tree.join(".config")).unwrap();
    config.push_str("CONFIG_FIXTURE_HAND_EDIT=y\n");
    fs::write(fx.tree.join(".config"), config).unwrap();
    let run = fx.build(&["--explain"]);
    run.assert_ok()
        .assert_stderr_has("explain:")
        .assert_stderr_has("config: wanted .config:")
        .assert_stderr_has(".config symbols that differ")
        .assert_stderr_has("CONFIG_FIXTURE_HAND_EDIT=y, entry has none (absent)");
}
