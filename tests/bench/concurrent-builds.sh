#!/usr/bin/env bash
# Two 1-CPU builds on one host: together vs one alone, with the `llc` reserver's
# default mode (builds share an LLC on disjoint CPUs) and with mode = "exclusive-llc"
# (a build owns its LLC, so on a 1-LLC host the second waits for the first).
#
#   tests/bench/concurrent-builds.sh [BURN_SECONDS] [RUNS]
#
# Each build is of its own copy of the fixture kernel tree (tests/fixtures/kernel, two
# commits, so two keys and no build lock between them), with `--cpu-cap 1` (root, or a
# delegated cgroup: the cap is enforced by a cpuset). The fixture's one compile goes
# through a `gcc` wrapper that first burns BURN_SECONDS (default 5) of CPU time, so the
# build is CPU-bound and two builds on one CPU would take twice as long. Every round
# uses a fresh cache. RUNS (default 3) rounds of
#   alone:     one build
#   shared:    both builds at once, default mode
#   exclusive: both builds at once, [plugin.llc] mode = "exclusive-llc"
# and the medians are printed as a markdown table row: wall seconds, the ratio
# both-together / one-alone (1.0 = fully side by side, 2.0 = one after the other), and
# the overlap of the two compiles (the time both burned at once, over the shorter one:
# 100% = side by side, 0% = one after the other), which other load on the host does not
# blur the way it blurs wall times.
# KTSTR=path/to/ktstr skips the release build.
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
burn=${1:-5}
runs=${2:-3}

if [ -z "${KTSTR:-}" ]; then
  cargo build --release -p ktstr --manifest-path "$here/Cargo.toml" >&2
  KTSTR="$here/target/release/ktstr"
fi
work=$(mktemp -d /tmp/ktstr-bench-concurrent.XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

# A gcc that burns CPU time before compiling (only for compiles: `gcc --version`
# and friends, which ktstr may ask for the compiler's identity, pass straight through).
real_gcc=$(command -v gcc)
mkdir -p "$work/bin"
cat > "$work/bin/gcc" <<WRAP
#!/bin/sh
case " \$* " in *" -c "*)
  echo "\$\$ start \$(date +%s.%N)" >> "$work/compiles"
  python3 -c 'import time
while time.process_time() < $burn: pass'
  echo "\$\$ end \$(date +%s.%N)" >> "$work/compiles" ;;
esac
exec "$real_gcc" "\$@"
WRAP
chmod +x "$work/bin/gcc"
export PATH="$work/bin:$PATH"

for t in a b; do
  cp -a "$here/tests/fixtures/kernel" "$work/$t"
  echo "/* tree $t */" >> "$work/$t/fixture.c"
  git -C "$work/$t" init -q
  git -C "$work/$t" add -A
  git -C "$work/$t" -c user.name=bench -c user.email=bench@localhost commit -qm "$t"
done
printf '[plugin.llc]\nmode = "exclusive-llc"\n' > "$work/exclusive.toml"
printf '' > "$work/shared.toml"

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m}'; }

build() { # TREE CONFIG LOG
  KTSTR_CONFIG="$work/$2.toml" "$KTSTR" build --kernel "$work/$1" --cpu-cap 1 \
    >/dev/null 2>"$3" || { cat "$3" >&2; exit 1; }
}

# CONFIG TREES...: wall seconds of building TREES at once in a fresh cache.
round() {
  local config=$1; shift
  export KTSTR_CACHE_DIR="$work/cache-$RANDOM$RANDOM"
  local t0 t1 pids=()
  : > "$work/compiles"
  t0=$(now)
  for t in "$@"; do build "$t" "$config" "$work/$t.$config.log" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p"; done
  t1=$(now)
  rm -rf "$KTSTR_CACHE_DIR"
  echo "$t1 - $t0" | bc
}

# Overlap of the two compiles of the last round, in % of the shorter one.
overlap() {
  awk '$2 == "start" {s[$1] = $3} $2 == "end" {e[$1] = $3}
    END {n = 0; for (p in s) {n++; a[n] = s[p]; b[n] = e[p]}
      if (n != 2) {print "?"; exit}
      lo = (a[1] > a[2]) ? a[1] : a[2]; hi = (b[1] < b[2]) ? b[1] : b[2]
      d1 = b[1] - a[1]; d2 = b[2] - a[2]; short = (d1 < d2) ? d1 : d2
      o = (hi > lo) ? (hi - lo) / short * 100 : 0; printf "%.0f", o}' "$work/compiles"
}

alone=() shared=() exclusive=() shared_ov=() exclusive_ov=()
for i in $(seq "$runs"); do
  alone+=("$(round shared a)")
  shared+=("$(round shared a b)")
  shared_ov+=("$(overlap)")
  grep -q "sharing LLC" "$work/a.shared.log" "$work/b.shared.log" ||
    echo "note: no build said it shared an LLC (more than one LLC here?)" >&2
  exclusive+=("$(round exclusive a b)")
  exclusive_ov+=("$(overlap)")
done

a=$(printf '%s\n' "${alone[@]}" | median)
s=$(printf '%s\n' "${shared[@]}" | median)
x=$(printf '%s\n' "${exclusive[@]}" | median)
so=$(printf '%s\n' "${shared_ov[@]}" | median)
xo=$(printf '%s\n' "${exclusive_ov[@]}" | median)
echo "alone:     ${alone[*]}" >&2
echo "shared:    ${shared[*]} (overlap % ${shared_ov[*]})" >&2
echo "exclusive: ${exclusive[*]} (overlap % ${exclusive_ov[*]})" >&2
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "| date | CPUs | burn | runs | one alone | two, shared-llc | ratio | overlap | two, exclusive-llc | ratio | overlap |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
echo "| $(date -u +%F) | $(nproc) | ${burn} s | $runs | ${a} s | ${s} s | $(printf "%.2f" "$(echo "scale=4; $s / $a" | bc)") | ${so%.*}% | ${x} s | $(printf "%.2f" "$(echo "scale=4; $x / $a" | bc)") | ${xo%.*}% |"
