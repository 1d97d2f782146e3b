//! The shared-dir cache as a process plugin: the same `Plugin` the library
//! exports, served over stdin/stdout by the SDK (`ktstr_sdk::stdio`).
//! Install it as `ktstr-plugin-shared-dir-cache` in a plugin directory
//! (instead of the library: a name may be one or the other).

fn main() -> std::process::ExitCode {
    ktstr_sdk::stdio::serve(ktstr_plugin_shared_dir_cache::plugin())
}
