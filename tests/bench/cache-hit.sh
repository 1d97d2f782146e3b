#!/usr/bin/env bash
# Cache-hit latency vs a no-op `make` on the same real kernel tree, side by side.
#
#   tests/bench/cache-hit.sh [TREE] [RUNS]
#
# TREE defaults to a fresh git-committed extract of Debian's linux-source-6.12
# (apt-get install linux-source-6.12 + build deps). The tree is built once with
# `ktstr build --profile tiny` (a few minutes) so that both measurements below see a
# fully built tree; then RUNS (default 7) alternating rounds time
#   A: make -jN KCFLAGS=-Wno-error LOCALVERSION=   (exactly what ktstr's builder runs)
#   B: ktstr build --kernel TREE --profile tiny     (a cache hit)
#   C: git status --porcelain                        (the budget: a hit costs at most half)
# and print the medians as a markdown table row for docs/benchmarks.md.
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
runs=${2:-7}
jobs=$(nproc)
tarball=/usr/src/linux-source-6.12.tar.xz

cargo build --release -p ktstr --manifest-path "$here/Cargo.toml" >&2
ktstr="$here/target/release/ktstr"
export KTSTR_CACHE_DIR=${KTSTR_CACHE_DIR:-$(mktemp -d /tmp/ktstr-bench-cache.XXXXXX)}

tree=${1:-}
if [ -z "$tree" ]; then
  [ -f "$tarball" ] || { echo "need $tarball (apt-get install linux-source-6.12)" >&2; exit 1; }
  work=$(mktemp -d /tmp/ktstr-bench-tree.XXXXXX)
  echo "extracting $tarball into $work" >&2
  tar -xJf "$tarball" -C "$work"
  tree="$work/linux-source-6.12"
  sed -i '/^\/\*$/,$d' "$tree/.gitignore"    # Debian's ignore-everything packaging block
  git -C "$tree" init -q
  git -C "$tree" add -A
  git -C "$tree" -c gc.auto=0 -c user.name=bench -c user.email=bench@localhost commit -qm base
fi

echo "priming: ktstr build --kernel $tree --profile tiny" >&2
"$ktstr" build --kernel "$tree" --profile tiny >/dev/null

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }

make_times=() hit_times=() git_times=()
for i in $(seq "$runs"); do
  t0=$(now); git -C "$tree" status --porcelain >/dev/null; t1=$(now)
  git_times+=("$(echo "$t1 - $t0" | bc)")
  t0=$(now); make -C "$tree" -j"$jobs" KCFLAGS=-Wno-error LOCALVERSION= >/dev/null 2>&1; t1=$(now)
  make_times+=("$(echo "$t1 - $t0" | bc)")
  t0=$(now); out=$("$ktstr" build --kernel "$tree" --profile tiny 2>&1 >/dev/null); t1=$(now)
  case "$out" in *"cache hit"*) ;; *) echo "run $i was not a cache hit: $out" >&2; exit 1 ;; esac
  hit_times+=("$(echo "$t1 - $t0" | bc)")
done

m=$(printf '%s\n' "${make_times[@]}" | median)
h=$(printf '%s\n' "${hit_times[@]}" | median)
g=$(printf '%s\n' "${git_times[@]}" | median)
ratio=$(printf "%.3f" "$(echo "scale=4; $h / $m" | bc)")
gratio=$(printf "%.3f" "$(echo "scale=4; $h / $g" | bc)")
echo "no-op make runs: ${make_times[*]}" >&2
echo "cache-hit runs:  ${hit_times[*]}" >&2
echo "git status runs: ${git_times[*]}" >&2
echo "| $(date -u +%F) | $(nproc) | $runs | ${m} s | ${g} s | ${h} s | ${ratio} | ${gratio} |"
