#!/usr/bin/env bash
# What verifying digests on every cache hit would cost, at real kernel sizes.
#
#   tests/bench/verify-cost.sh [RUNS]
#
# Builds the fixture kernel once into a private cache, then swaps the entry's
# artifacts for random files the size of a real x86_64 build (bzImage 13 MiB,
# stripped vmlinux 60 MiB, config 200 KiB; sizes overridable with BZ_MIB,
# VMLINUX_MIB) and rewrites metadata.json to match, so the entry is valid.
# Then RUNS (default 7) alternating rounds time
#   A: ktstr build (a cache hit: metadata read + one stat per artifact)
#   B: ktstr kernel verify KEY (sha256 of every artifact)
#   C: sha256 of the image alone (what a hit checking only the image would add)
# and print the medians as a markdown row for docs/benchmarks.md.
# KTSTR=path/to/ktstr uses that binary instead of building the release one.
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-7}
bz_mib=${BZ_MIB:-13}
vm_mib=${VMLINUX_MIB:-60}

if [ -z "${KTSTR:-}" ]; then
  cargo build --release -p ktstr --manifest-path "$here/Cargo.toml" >&2
  KTSTR="$here/target/release/ktstr"
fi
work=$(mktemp -d /tmp/ktstr-bench-verify.XXXXXX)
trap 'rm -rf "$work"' EXIT
export KTSTR_CACHE_DIR="$work/cache"
tree="$work/linux"
cp -r "$here/tests/fixtures/kernel" "$tree"
git -C "$tree" init -q
git -C "$tree" add -A
git -C "$tree" -c user.name=bench -c user.email=bench@localhost commit -qm base

key=$("$KTSTR" build --kernel "$tree" 2>&1 >/dev/null | sed -n 's/.*cached \([^ :]*\).*/\1/p' | head -1)
[ -n "$key" ] || { echo "the priming build cached nothing" >&2; exit 1; }
entry="$KTSTR_CACHE_DIR/kernels/$key"
head -c $((bz_mib << 20)) /dev/urandom > "$entry/bzImage"
head -c $((vm_mib << 20)) /dev/urandom > "$entry/vmlinux"
head -c $((200 << 10)) /dev/urandom > "$entry/config"
python3 - "$entry" <<'PY'
import hashlib, json, os, sys
entry = sys.argv[1]
path = os.path.join(entry, "metadata.json")
meta = json.load(open(path))
for name in meta["artifacts"]:
    data = open(os.path.join(entry, name), "rb").read()
    meta["artifacts"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
json.dump(meta, open(path, "w"), indent=2)
PY

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }
hit=() verify=() image=()
for i in $(seq "$runs"); do
  t0=$(now); out=$("$KTSTR" build --kernel "$tree" 2>&1 >/dev/null); t1=$(now)
  case "$out" in *"cache hit"*) ;; *) echo "run $i was not a cache hit: $out" >&2; exit 1 ;; esac
  hit+=("$(echo "$t1 - $t0" | bc)")
  t0=$(now); "$KTSTR" kernel verify "$key" >/dev/null; t1=$(now)
  verify+=("$(echo "$t1 - $t0" | bc)")
  t0=$(now); sha256sum "$entry/bzImage" >/dev/null; t1=$(now)
  image+=("$(echo "$t1 - $t0" | bc)")
done
h=$(printf '%s\n' "${hit[@]}" | median)
v=$(printf '%s\n' "${verify[@]}" | median)
c=$(printf '%s\n' "${image[@]}" | median)
echo "hit runs:          ${hit[*]}" >&2
echo "verify runs:       ${verify[*]}" >&2
echo "image sha256 runs: ${image[*]}" >&2
echo "| $(date -u +%F) | $(nproc) | $runs | ${bz_mib}+${vm_mib} MiB | ${h} s | ${v} s | ${c} s |"
