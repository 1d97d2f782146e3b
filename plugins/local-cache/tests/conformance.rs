//! local-cache against the SDK's cache conformance suite.

use ktstr_plugin_local_cache::LocalCache;
use ktstr_sdk::cache::{CacheKey, METADATA_NAME};
use ktstr_sdk::conformance::cache::{self, Fixture, Options};
use ktstr_sdk::paths::KERNELS_DIR_NAME;
use ktstr_sdk::read_only::ReadOnly;

fn root(fx: &Fixture) -> std::path::PathBuf {
    fx.shared.join("cache")
}

/// Truncate every stored file but the metadata to half its size: what a
/// crash or a full disk leaves.
fn truncate_entry(fx: &Fixture, key: &CacheKey) {
    let dir = root(fx).join(KERNELS_DIR_NAME).join(key.as_str());
    for file in std::fs::read_dir(&dir).unwrap().flatten() {
        if file.file_name() != METADATA_NAME {
            let len = file.metadata().unwrap().len();
            let f = std::fs::File::options()
                .write(true)
                .open(file.path())
                .unwrap();
            f.set_len(len / 2).unwrap();
        }
    }
}

#[test]
fn local_cache_conforms() {
    cache::run(
        &|fx: &Fixture| Box::new(LocalCache::at(root(fx))),
        Options::default()
            // The local cache has no read-only setting of its own: a
            // read-only view is the SDK's wrapper, as the host builds it.
            .read_only(|fx: &Fixture| {
                Box::new(ReadOnly::new(
                    Box::new(LocalCache::at(root(fx))),
                    "use a writable cache root",
                ))
            })
            .corrupt(truncate_entry),
    );
}
