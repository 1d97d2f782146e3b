#!/bin/sh
# Boot time of the qemu verifier on this machine: runs the real boot checks
# (tests/tests/real/boot.rs, through plugins/qemu/tests/boot.rs) N times on
# an image and prints each "qemu boot check took ..." line: the pass check's
# wall time (including the init's compile: each run starts with an empty
# state dir) and qemu-start-to-`done` time. TCG, as in CI. The image is an
# x86_64 bzImage or an arm64 Image (told apart by the arm64 header magic).
#
#   tests/bench/qemu-boot.sh /path/to/bzImage-or-Image [N]
set -eu
image=${1:?usage: $0 IMAGE [RUNS]}
runs=${2:-5}
cd "$(dirname "$0")/../.."
cargo test -q -p ktstr-plugin-qemu --test boot --no-run >/dev/null 2>&1
i=0
while [ "$i" -lt "$runs" ]; do
    KTSTR_BOOT_IMAGE=$image cargo test -q -p ktstr-plugin-qemu --test boot -- --nocapture 2>&1 |
        grep -E 'qemu (boot check|forced panic) took'
    i=$((i + 1))
done
