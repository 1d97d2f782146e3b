//! Acquire one kernel tarball the way ktstr does and print the time:
//!
//!     cargo run --release -p ktstr-plugin-tarball --example acquire -- FILE [--serve] [--xz-threads N]
//!
//! With `--serve`, FILE is served from a loopback HTTP server started here
//! and acquired by URL (download, decompression and extraction overlap);
//! without it FILE is acquired as a local path. The cache root is a fresh
//! temporary directory, removed at exit. Used by tests/bench/tarball-acquire.sh.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use ktstr_plugin_tarball::TarballSource;
use ktstr_plugin_tarball::config::Settings;
use ktstr_sdk::prelude::*;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut file = None;
    let mut serve = false;
    let mut threads = 0;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--serve" => serve = true,
            "--xz-threads" => threads = args.next().and_then(|n| n.parse().ok()).unwrap_or(0),
            _ => file = Some(a),
        }
    }
    let file = file.expect("usage: acquire FILE [--serve] [--xz-threads N]");
    let root = tempfile::Builder::new()
        .prefix("ktstr-bench-acquire.")
        .tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp".into()))
        .unwrap();
    let source = TarballSource::with_settings(
        Settings {
            xz_threads: threads,
            ..Settings::default()
        },
        Some(root.path().to_path_buf()),
    );
    let _server;
    let spec = if serve {
        let server = support::Server::start();
        server.route("/linux.tar.xz", support::Reply::File(file.clone().into()));
        let url = server.url("/linux.tar.xz");
        _server = server;
        url
    } else {
        file
    };
    let start = Instant::now();
    let src = source
        .acquire(&KernelSpec::new(&spec), &StageContext::quiet())
        .unwrap_or_else(|e| panic!("acquire {spec}: {e} ({:?})", e.hint));
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "acquired {} ({}) into {}",
        spec,
        src.version.as_deref().unwrap_or("?"),
        src.source_dir.display()
    );
    println!("{secs:.3}");
}
