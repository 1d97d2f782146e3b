#!/usr/bin/env bash
# Time to load a dynamic plugin (release build), printed in milliseconds.
#
#   tests/bench/plugin-load.sh [RUNS]
#
# Builds ktstr and the shared-dir-cache example in release mode, then runs, RUNS times
# each (default 51), alternating:
#   A: ktstr plugins info local-cache                 (a built-in: no library loaded)
#   B: ktstr plugins info <path to the example .so>   (dlopen, header + ABI version
#      check, abi_stable layout check, root module, attach, manifest)
# and prints median(B) - median(A): the cost of loading one plugin, process start-up and
# everything else being equal. The last line is the number, for docs/benchmarks.md.
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-51}
cargo build --release --quiet -p ktstr -p ktstr-plugin-shared-dir-cache \
  --manifest-path "$here/Cargo.toml" >&2
target=$(cargo metadata --format-version 1 --no-deps --manifest-path "$here/Cargo.toml" |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
ktstr="$target/release/ktstr"
lib="$target/release/libktstr_plugin_shared_dir_cache.so"
# A private, trusted copy: the target directory may be group-writable.
work=$(mktemp -d /tmp/ktstr-plugin-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
install -m644 "$lib" "$work/"
lib="$work/$(basename "$lib")"
export KTSTR_CACHE_DIR="$work/cache" XDG_CONFIG_HOME="$work/config"

now() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }

"$ktstr" plugins info "$lib" >/dev/null   # warm the page cache
builtin=() plugin=()
for _ in $(seq "$runs"); do
  t0=$(now); "$ktstr" plugins info local-cache >/dev/null; t1=$(now)
  builtin+=("$(( (t1 - t0) / 1000 ))")
  t0=$(now); "$ktstr" plugins info "$lib" >/dev/null; t1=$(now)
  plugin+=("$(( (t1 - t0) / 1000 ))")
done
a=$(printf '%s\n' "${builtin[@]}" | median)
b=$(printf '%s\n' "${plugin[@]}" | median)
echo "median without plugin: $(echo "scale=3; $a / 1000" | bc) ms, with plugin: $(echo "scale=3; $b / 1000" | bc) ms ($runs runs each)" >&2
echo "plugin load time: $(echo "scale=3; ($b - $a) / 1000" | bc) ms"
