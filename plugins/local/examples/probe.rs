//! Time the local-tree probe: `cargo run --release -p ktstr-plugin-local
//! --example probe -- PATH [RUNS]`. Prints the state and each run's time.

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: probe PATH [RUNS]");
        std::process::exit(2);
    };
    let runs: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(5);
    for run in 1..=runs {
        let started = std::time::Instant::now();
        match ktstr_plugin_local::probe_tree(std::path::Path::new(&path)) {
            Ok(state) => println!(
                "run {run}: {:.3}s dirty={} git={} head={}",
                started.elapsed().as_secs_f64(),
                state.is_dirty,
                state.is_git,
                state.head.as_deref().unwrap_or("-"),
            ),
            Err(e) => {
                eprintln!("probe failed: {e}");
                std::process::exit(1);
            }
        }
    }
}
