#!/usr/bin/env bash
# What a Python process plugin (docs/plugin-protocol.md) adds to a cache hit,
# printed in milliseconds.
#
#   tests/bench/process-plugin-hit.sh [RUNS]
#
# Builds ktstr (release; KTSTR_BENCH_PROFILE=dev uses the debug build), scaffolds the
# Python cache plugin (`plugins new bench-py --kind cache --lang python`), builds the
# fixture kernel once through it, then runs, RUNS times each (default 31), alternating:
#   A: ktstr build --kernel TREE                     (a local hit, no plugin)
#   B: ktstr build --kernel TREE --plugin bench-py   (the same hit with the plugin
#      selected: its handshake and capabilities are remembered from earlier runs,
#      so it is not started; docs/plugin-protocol.md, Lifetime)
#   C: B without the local entry                     (the hit comes from the plugin:
#      cache.lookup copies the entry into the staging dir with sha256 checks, ktstr
#      backfills its local cache)
#   D: the hit served by the example `shared-dir-cache` loaded as a library
#   E: the same hit served by the same Rust code over stdio (its `shared-dir-cache-stdio`
#      binary installed as `ktstr-plugin-shared-dir-cache`): E - D is what the process
#      transport itself adds to a hit, with the backend's own work held equal
# and prints median(B) - median(A), the cost a process plugin adds to every cache hit
# (target: under 20 ms), median(C) - median(A), a hit served through the Python plugin,
# and median(E) - median(D).
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-31}
profile=${KTSTR_BENCH_PROFILE:-release}
cargo build --profile "$profile" --quiet -p ktstr -p ktstr-plugin-shared-dir-cache \
  --manifest-path "$here/Cargo.toml" >&2
target=$(cargo metadata --format-version 1 --no-deps --manifest-path "$here/Cargo.toml" |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
ktstr="$target/$dir/ktstr"

# A private, trusted plugin directory (the plugin's file and every ancestor must be
# writable only by us or root).
work=$(mktemp -d /tmp/ktstr-proc-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
# ktstr also searches its own directory, where cargo put the example library: run a copy.
mkdir -p "$work/bin"
install -m755 "$ktstr" "$work/bin/ktstr"
ktstr="$work/bin/ktstr"
cp -a "$here/tests/fixtures/kernel" "$work/linux"
git -C "$work/linux" init -q
git -C "$work/linux" add -A
git -C "$work/linux" -c user.name=bench -c user.email=bench@ktstr.invalid commit -qm base
"$ktstr" plugins new bench-py --kind cache --lang python --dir "$work/scaffold" 2>/dev/null
mkdir -p "$work/plugins" "$work/config/ktstr"
install -m755 "$work/scaffold/ktstr-plugin-bench-py" "$work/plugins/"
printf '[plugin.bench-py]\ndir = "%s"\n' "$work/shared" >"$work/config/ktstr/config.toml"
export KTSTR_PLUGIN_PATH="$work/plugins" XDG_CONFIG_HOME="$work/config" \
  KTSTR_CACHE_DIR="$work/cache"
# The plugin's `#!/usr/bin/env python3` runs the first python3 in PATH; a version
# manager's shim there (pyenv: a shell script) costs more than the protocol. Measure
# the system interpreter, and report its bare start-up beside the numbers.
export PATH="/usr/bin:/bin:$PATH"
tree="$work/linux"
# The Rust example, as a library and as a process, each in its own plugin dir (one name
# found as both in one search path is refused).
mkdir -p "$work/lib" "$work/exe"
install -m644 "$target/$dir/libktstr_plugin_shared_dir_cache.so" "$work/lib/"
install -m755 "$target/$dir/shared-dir-cache-stdio" "$work/exe/ktstr-plugin-shared-dir-cache"
printf '[plugin.shared-dir-cache]\ndir = "%s"\n' "$work/rshared" >>"$work/config/ktstr/config.toml"
KTSTR_PLUGIN_PATH="$work/lib" "$ktstr" build --kernel "$tree" --plugin shared-dir-cache \
  >/dev/null 2>&1

"$ktstr" build --kernel "$tree" --plugin bench-py >/dev/null 2>&1   # build and store once

now() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }
ms() { echo "scale=3; $1 / 1000" | bc; }

plain=() loaded=() served=() python=() lib=() exe=()
hello='{"id":0,"method":"hello","params":{"protocols":[1]}}'
for _ in $(seq "$runs"); do
  t0=$(now); echo "$hello" | "$work/plugins/ktstr-plugin-bench-py" >/dev/null; t1=$(now)
  python+=("$(( (t1 - t0) / 1000 ))")
  t0=$(now); "$ktstr" build --kernel "$tree" >/dev/null 2>&1; t1=$(now)
  plain+=("$(( (t1 - t0) / 1000 ))")
  t0=$(now); "$ktstr" build --kernel "$tree" --plugin bench-py >/dev/null 2>&1; t1=$(now)
  loaded+=("$(( (t1 - t0) / 1000 ))")
  rm -rf "$work/cache/kernels"   # the local entries; the plugin's memo stays
  t0=$(now); "$ktstr" build --kernel "$tree" --plugin bench-py >/dev/null 2>&1; t1=$(now)
  served+=("$(( (t1 - t0) / 1000 ))")
  rm -rf "$work/cache/kernels"
  t0=$(now); KTSTR_PLUGIN_PATH="$work/lib" "$ktstr" build --kernel "$tree" --plugin shared-dir-cache >/dev/null 2>&1; t1=$(now)
  lib+=("$(( (t1 - t0) / 1000 ))")
  rm -rf "$work/cache/kernels"
  t0=$(now); KTSTR_PLUGIN_PATH="$work/exe" "$ktstr" build --kernel "$tree" --plugin shared-dir-cache >/dev/null 2>&1; t1=$(now)
  exe+=("$(( (t1 - t0) / 1000 ))")
done
a=$(printf '%s\n' "${plain[@]}" | median)
b=$(printf '%s\n' "${loaded[@]}" | median)
c=$(printf '%s\n' "${served[@]}" | median)
p=$(printf '%s\n' "${python[@]}" | median)
d=$(printf '%s\n' "${lib[@]}" | median)
e=$(printf '%s\n' "${exe[@]}" | median)
echo "medians ($profile, $runs runs each): local hit $(ms "$a") ms; with the Python plugin loaded $(ms "$b") ms; served by the plugin into an empty local cache $(ms "$c") ms; the plugin alone answering hello by hand (python3 start-up, imports, exit) $(ms "$p") ms" >&2
echo "hit served through the Python plugin: +$(ms "$(echo "$c - $a" | bc)") ms"
echo "process plugin added to a cache hit: +$(ms "$(echo "$b - $a" | bc)") ms"
echo "shared-dir-cache hit: library $(ms "$d") ms, over stdio $(ms "$e") ms: transport +$(ms "$(echo "$e - $d" | bc)") ms"
