#!/usr/bin/env bash
# Tarball acquire vs `tar -xJf`, side by side in one run.
#
#   tests/bench/tarball-acquire.sh [TARBALL] [RUNS]
#
# TARBALL defaults to Debian's /usr/src/linux-source-6.12.tar.xz
# (apt-get install linux-source-6.12). Each of RUNS (default 3) alternating
# rounds times
#   A: tar -xJf TARBALL -C <fresh dir>                      (file already on disk)
#   B: the tarball plugin acquiring TARBALL from a loopback HTTP server into a
#      ready tree (download + sha256 + decompress + extract, overlapped)
# B is timed inside the example binary (server start-up and removal excluded);
# both trees are removed outside the timings. Prints the medians as a markdown
# row: | date | cpus | runs | tar -xJf | ktstr acquire | ratio |
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
tarball=${1:-/usr/src/linux-source-6.12.tar.xz}
runs=${2:-3}
[ -f "$tarball" ] || { echo "need $tarball (apt-get install linux-source-6.12)" >&2; exit 1; }

cargo build --release -p ktstr-plugin-tarball --example acquire --manifest-path "$here/Cargo.toml" >&2
acquire="$here/target/release/examples/acquire"
work=$(mktemp -d /tmp/ktstr-bench-tarball.XXXXXX)
trap 'rm -rf "$work"' EXIT
export BENCH_DIR=$work

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }

# Warm the page cache so neither side pays for the first read of the file.
cat "$tarball" >/dev/null

tar_times=() acq_times=()
for i in $(seq "$runs"); do
  mkdir "$work/tar"
  t0=$(now); tar -xJf "$tarball" -C "$work/tar"; t1=$(now)
  tar_times+=("$(echo "$t1 - $t0" | bc)")
  rm -rf "$work/tar"; sync
  acq_times+=("$("$acquire" "$tarball" --serve 2>/dev/null)")
  sync
done

t=$(printf '%s\n' "${tar_times[@]}" | median)
a=$(printf '%s\n' "${acq_times[@]}" | median)
ratio=$(printf "%.3f" "$(echo "scale=4; $a / $t" | bc)")
echo "tar -xJf runs:      ${tar_times[*]}" >&2
echo "ktstr acquire runs: ${acq_times[*]}" >&2
echo "| $(date -u +%F) | $(nproc) | $runs | ${t} s | ${a} s | ${ratio} |"
