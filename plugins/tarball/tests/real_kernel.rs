//! Acquire Debian's linux-source-6.12 tarball over the loopback server:
//! the real-size case (≈140 MiB compressed, ≈90k files). CI installs the
//! package; elsewhere the test says why it skipped.

mod support;

use std::path::Path;
use std::sync::Arc;

use ktstr_plugin_tarball::TarballSource;
use ktstr_plugin_tarball::config::Settings;
use ktstr_sdk::prelude::*;
use ktstr_sdk::testing::{RecordingRunner, context_with};

const TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";

#[test]
fn debian_linux_source_over_http() {
    if !Path::new(TARBALL).is_file() {
        ktstr_sdk::testing::skip(format!(
            "{TARBALL} is missing (apt-get install linux-source-6.12)"
        ));
        return;
    }
    let server = support::Server::start();
    server.route(
        "/linux-source-6.12.tar.xz",
        support::Reply::File(TARBALL.into()),
    );
    let root = tempfile::tempdir().unwrap();
    let source = TarballSource::with_settings(Settings::default(), Some(root.path().to_path_buf()));
    let (cx, progress) = context_with(Arc::new(RecordingRunner::default()));
    let url = server.url("/linux-source-6.12.tar.xz");
    let r = source.resolve(&KernelSpec::new(&url), &cx).unwrap();
    assert!(!r[0].is_keyable());
    let src = source.acquire(&r[0].spec, &cx).unwrap();
    let version = src.version.clone().unwrap();
    assert!(version.starts_with("6.12."), "{version}");
    assert!(src.source_dir.join("kernel/sched/core.c").is_file());
    assert!(src.source_dir.join("arch/x86/Kconfig").is_file());
    assert_eq!(src.identity.kind, "tarball");
    assert_eq!(src.identity.id.len(), 64);
    assert!(src.is_temp && !src.is_dirty);
    let lines = progress.lines();
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("downloaded 144.9 MiB of 144.9 MiB (100%)"),
        "{lines:?}"
    );
    let makefile = std::fs::read_to_string(src.source_dir.join("Makefile")).unwrap();
    assert!(makefile.contains("PATCHLEVEL = 12"));
}
