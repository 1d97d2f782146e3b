//! shared-dir-cache against the SDK's cache conformance suite, as a third
//! party runs it in its own CI.

use ktstr_plugin_shared_dir_cache::SharedDirCache;
use ktstr_sdk::cache::{CacheKey, METADATA_NAME};
use ktstr_sdk::conformance::cache::{self, Fixture, Options};

fn dir(fx: &Fixture) -> std::path::PathBuf {
    fx.shared.join("shared")
}

/// Truncate every stored file but the metadata to half its size.
fn truncate_entry(fx: &Fixture, key: &CacheKey) {
    let entry = dir(fx).join("kernels").join(key.as_str());
    for file in std::fs::read_dir(&entry).unwrap().flatten() {
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
fn shared_dir_cache_conforms() {
    cache::run(
        &|fx: &Fixture| Box::new(SharedDirCache::new(dir(fx))),
        Options::default()
            .read_only(|fx: &Fixture| {
                let cfg = serde_json::json!({"dir": dir(fx), "read_only": true});
                Box::new(SharedDirCache::from_config(&cfg).unwrap())
            })
            .corrupt(truncate_entry),
    );
}
