#!/usr/bin/env bash
# Remote-cache pull benchmarks against a local s3s-fs (loopback).
#
#   tests/bench/remote-pull.sh            # throughput: lookup vs plain GET
#   tests/bench/remote-pull.sh --e2e [SPEC]
#
# Throughput (default): runs the ignored `bench` test of ktstr-plugin-remote-cache
# in release mode. It pushes a kernel-like entry (12 MiB incompressible image +
# KTSTR_BENCH_MB MiB of vmlinux that compresses ~3:1, default 160) and compares
#   plain GET of the archive (same object_store client, bytes discarded)
#   lookup = GET + sha256 + zstd + untar + per-file sha256 into a scratch dir
# The issue's bar: lookup throughput >= 80% of the plain GET.
#
# --e2e: the real thing. Builds `ktstr` (release), starts s3s-fs, then
#   A: ktstr build --kernel SPEC --profile tiny --plugin s3-cache  (cold: unpack, build, push)
#   B: same command with a fresh, empty KTSTR_CACHE_DIR             (pull + backfill)
# and prints B/A (the bar: < 5%). SPEC defaults to Debian's
# /usr/src/linux-source-6.12.tar.xz (apt-get install linux-source-6.12 + build deps);
# any --kernel spec works. The build uses ktstr's default CPU budget.
#
# Needs: s3s-fs (cargo install s3s-fs@0.14.1 --features binary --locked).
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
s3s=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
[ -x "$s3s" ] || { echo "need s3s-fs: cargo install s3s-fs@0.14.1 --features binary --locked" >&2; exit 1; }

if [ "${1:-}" != "--e2e" ]; then
  exec cargo test --release --manifest-path "$here/Cargo.toml" -p ktstr-plugin-remote-cache \
    --test bench -- --ignored --nocapture
fi

spec=${2:-/usr/src/linux-source-6.12.tar.xz}
cargo build --release -p ktstr --manifest-path "$here/Cargo.toml" >&2
ktstr="$here/target/release/ktstr"

work=$(mktemp -d /tmp/ktstr-remote-bench.XXXXXX)
s3pid=
cleanup() { [ -n "$s3pid" ] && kill "$s3pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/s3/kernels"
"$s3s" --host 127.0.0.1 --port "$port" --access-key bench --secret-key bench-secret "$work/s3" \
  >"$work/s3s.log" 2>&1 &
s3pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done

export KTSTR_S3_ENDPOINT="http://127.0.0.1:$port" KTSTR_S3_BUCKET=kernels
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret

now() { date +%s.%N; }
run() { # $1 = cache dir
  KTSTR_CACHE_DIR="$1" "$ktstr" build --kernel "$spec" --profile tiny --plugin s3-cache
}

echo "A: cold build + push" >&2
t0=$(now); run "$work/cache-a" >/dev/null; t1=$(now)
cold=$(echo "$t1 - $t0" | bc)

echo "B: empty cache, pull from s3-cache" >&2
t0=$(now); out=$(run "$work/cache-b" 2>&1 >/dev/null); t1=$(now)
pull=$(echo "$t1 - $t0" | bc)
case "$out" in *s3-cache*|*"cache hit"*) ;; *) echo "B did not hit the remote: $out" >&2; exit 1 ;; esac
size=$(du -sb "$work/s3/kernels" | cut -f1)

ratio=$(printf "%.3f" "$(echo "scale=4; $pull / $cold" | bc)")
echo "| $(date -u +%F) | $(nproc) | cold ${cold} s | pull ${pull} s | ${ratio} | remote $((size >> 20)) MiB |"
