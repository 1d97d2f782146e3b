#!/usr/bin/env bash
# A tiny kernel built locally vs through a distccd on loopback, same tree, same -j.
#
#   tests/bench/distcc-vs-local.sh [TREE] [CPUS]
#
# TREE defaults to a fresh git-committed extract of Debian's linux-source-6.12
# (apt-get install linux-source-6.12 distcc + build deps). CPUS (default 2) is
# --cpu-cap for both builds; distccd gets as many jobs and DISTCC_HOSTS as many
# slots, so -j is the same. Both builds are out of tree (--output) into fresh
# directories, the distcc one with --force (same key), so each is a full build.
# Loopback means the same CPUs compile either way: this measures distcc's
# overhead (client, preprocessing, transfer), not a speed-up. Prints a markdown
# table row for docs/benchmarks.md, with the load average before each build.
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
cpus=${2:-2}
tarball=/usr/src/linux-source-6.12.tar.xz

cargo build --release -p ktstr --manifest-path "$here/Cargo.toml" >&2
ktstr="$here/target/release/ktstr"
work=$(mktemp -d /tmp/ktstr-bench-distcc.XXXXXX)
chmod 755 "$work"
export KTSTR_CACHE_DIR="$work/cache"

tree=${1:-}
if [ -z "$tree" ]; then
  [ -f "$tarball" ] || { echo "need $tarball (apt-get install linux-source-6.12)" >&2; exit 1; }
  echo "extracting $tarball into $work" >&2
  tar -xJf "$tarball" -C "$work"
  tree="$work/linux-source-6.12"
  sed -i '/^\/\*$/,$d' "$tree/.gitignore"    # Debian's ignore-everything packaging block
  git -C "$tree" init -q
  git -C "$tree" add -A
  git -C "$tree" -c gc.auto=0 -c user.name=bench -c user.email=bench@localhost commit -qm base
fi

# distccd drops root to its own user: its log directory must be writable by it.
mkdir -m 1777 "$work/logs"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
distccd --no-detach --daemon --allow 127.0.0.1 --listen 127.0.0.1 --port "$port" \
  --jobs "$cpus" --log-level info --log-file "$work/logs/distccd.log" &
distccd_pid=$!
trap 'kill "$distccd_pid" 2>/dev/null; rm -rf "$work/out-local" "$work/out-distcc"' EXIT
mkdir "$work/distcc"

seconds() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
load() { cut -d' ' -f1 /proc/loadavg; }

load_local=$(load)
local_s=$(seconds "$ktstr" build --kernel "$tree" --profile tiny --cpu-cap "$cpus" \
  --output "$work/out-local")
load_distcc=$(load)
distcc_s=$(DISTCC_HOSTS="127.0.0.1:$port/$cpus" DISTCC_DIR="$work/distcc" \
  seconds "$ktstr" build --kernel "$tree" --profile tiny --cpu-cap "$cpus" --force \
  --output "$work/out-distcc" --wrapper distcc --wrapper-required)
jobs=$(grep -c ' COMPILE_OK ' "$work/logs/distccd.log" || true)

echo "| tiny kernel, -j$cpus | local ${local_s%.*} s (load $load_local) | distcc on loopback ${distcc_s%.*} s (load $load_distcc), $jobs jobs on distccd | $(echo "scale=2; $distcc_s / $local_s" | bc) x |"
