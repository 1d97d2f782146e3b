//! Claiming specs, expanding `~`, the kernel-tree checks and the plugin's
//! registration.

use super::*;
use crate::NAME;
use crate::spec::{claims_spec, expand_home_with};
use crate::tree::TREE_HINT;

#[test]
fn claims_paths_but_not_urls_or_tarballs() {
    let claimed = [
        "/src/linux",
        "./linux",
        "../linux",
        "~/linux",
        "~",
        ".",
        "..",
        "./missing-dir",
        "/no/such/dir",
    ];
    for spec in claimed {
        assert!(claims_spec(spec), "{spec} should be claimed");
    }
    let not_claimed = [
        "",
        "6.12.3",
        "6.12",
        "linux-not-here",
        "https://cdn.kernel.org/linux-6.12.tar.xz",
        "git+https://host/linux.git#tag=v6.12",
        "git+ssh://host/linux.git",
        "file:///src/linux",
        "./linux-6.12.tar.xz",
        "/tmp/linux-6.12.tar.gz",
        "../linux.tgz",
        "~/linux.tar",
        "./linux.tar.zst",
        "/tmp/LINUX.TAR.XZ",
    ];
    for spec in not_claimed {
        assert!(!claims_spec(spec), "{spec} should not be claimed");
    }

    // A bare name is claimed only when it is an existing directory.
    let tmp = tempfile::tempdir().unwrap();
    let name = tmp
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let cwd_relative = std::env::temp_dir().join(&name);
    assert!(claims_spec(cwd_relative.to_str().unwrap()));
    assert!(LocalSource.claims(&KernelSpec::new("./linux")));
    assert!(!LocalSource.claims(&KernelSpec::new("6.12.3")));
    assert!(!LocalSource.accepted_forms().is_empty());
}

#[test]
fn expands_home() {
    let home = Some(std::ffi::OsString::from("/home/u"));
    assert_eq!(
        expand_home_with("~/linux", home.clone()).unwrap(),
        PathBuf::from("/home/u/linux")
    );
    assert_eq!(
        expand_home_with("~", home.clone()).unwrap(),
        PathBuf::from("/home/u")
    );
    assert_eq!(
        expand_home_with("./~/x", home.clone()).unwrap(),
        PathBuf::from("./~/x")
    );
    assert_eq!(
        expand_home_with("~user/x", home).unwrap(),
        PathBuf::from("~user/x")
    );
    let e = expand_home_with("~/linux", None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert!(e.message.contains("$HOME"));
}

#[test]
fn missing_path_is_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = format!("{}/missing-dir", tmp.path().display());
    let e = acquire(&raw).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert_eq!(e.to_string(), format!("--kernel {raw}: no such directory"));
    assert!(e.hint.is_some());

    let e = acquire("./ktstr-surely-missing-dir").unwrap_err();
    assert_eq!(
        e.to_string(),
        "--kernel ./ktstr-surely-missing-dir: no such directory"
    );
    assert!(e.hint.unwrap().contains("relative paths"));
}

#[test]
fn non_kernel_directory_is_invalid_input() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fs::canonicalize(tmp.path()).unwrap();
    fs::write(dir.join("Makefile"), "all:\n\ttrue\n").unwrap();
    let e = acquire(dir_str(&dir)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert_eq!(
        e.to_string(),
        format!(
            "--kernel {0}: {0} is not a kernel source tree (missing VERSION/PATCHLEVEL lines in Makefile, Kconfig, arch/)",
            dir.display()
        )
    );
    assert_eq!(e.hint.as_deref(), Some(TREE_HINT));

    let empty = dir.join("empty");
    fs::create_dir(&empty).unwrap();
    let e = acquire(dir_str(&empty)).unwrap_err();
    assert!(
        e.message
            .ends_with("is not a kernel source tree (missing Makefile, Kconfig, arch/)"),
        "{e}"
    );
}

#[test]
fn file_is_invalid_input() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("Makefile");
    fs::write(&file, "VERSION = 6\n").unwrap();
    let e = acquire(file.to_str().unwrap()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert!(e.message.contains("is not a directory"), "{e}");
    assert_eq!(e.hint.as_deref(), Some(TREE_HINT));
}

#[test]
fn subdirectory_of_kernel_tree_points_at_the_top() {
    let tmp = tempfile::tempdir().unwrap();
    let top = fs::canonicalize(tmp.path()).unwrap();
    fake_kernel(&top);
    let e = acquire(dir_str(&top.join("arch/x86"))).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    let hint = e.hint.unwrap();
    assert!(
        hint.contains(&format!("point --kernel at {}", top.display())),
        "{hint}"
    );
}

#[test]
fn acquire_canonicalizes_and_parses_version() {
    let tmp = tempfile::tempdir().unwrap();
    let top = fs::canonicalize(tmp.path()).unwrap();
    fake_kernel(&top.join("linux"));
    std::os::unix::fs::symlink(top.join("linux"), top.join("link")).unwrap();
    let raw = format!("{}/link/../linux/.", top.display());
    let src = acquire(&raw).unwrap();
    assert_eq!(src.source_dir, top.join("linux"));
    assert_eq!(src.version.as_deref(), Some("6.99.0"));
    assert_eq!(src.identity.kind, "local");
}

#[test]
fn registered_as_builtin() {
    let p = ktstr_sdk::registry::builtins()
        .into_iter()
        .find(|p| p.name == NAME)
        .expect("local is registered");
    assert_eq!(p.constructor.kind(), StageKind::Source);
    let Constructor::Source(make) = p.constructor else {
        unreachable!()
    };
    assert!(
        make(&PluginConfig::Null)
            .unwrap()
            .claims(&KernelSpec::new("./linux"))
    );
}
