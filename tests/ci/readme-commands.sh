#!/usr/bin/env bash
# Run the README's two Quick start commands as written, on a fresh Debian 12
# CI machine (as root), so the first thing a new user types cannot rot.
#
# The commands are extracted from README.md (its first two ```sh blocks),
# never copied here, so they cannot drift. The first (apt-get update,
# apt-get install, cargo run --release ... build) runs verbatim, twice: the
# second run must be the cache hit the README promises. The second command
# (cargo test --workspace) is what .ci/run itself runs; running the whole
# suite twice would double CI time, so this checks that .ci/run runs exactly
# that command instead.
#
# Usage: tests/ci/readme-commands.sh [--print]   (--print: show, run nothing)
set -euo pipefail

cd "$(dirname "$0")/../.."

# The body of the Nth ```sh block of README.md.
block() {
    awk -v n="$1" '
        /^```sh[[:space:]]*$/ { i++; inside = (i == n); next }
        /^```[[:space:]]*$/   { inside = 0; next }
        inside' README.md
}

build_cmd=$(block 1)
test_cmd=$(block 2)

fail() {
    echo "readme-commands: $*" >&2
    exit 1
}

# What the README promises, so a reshuffled README fails here, loudly,
# rather than running the wrong block.
case "$build_cmd" in
    *"apt-get update"*"apt-get install"*"cargo run --release -p ktstr -- build"*) ;;
    *) fail "README.md's first sh block is not the apt-get + cargo run build command:
$build_cmd" ;;
esac
[ "$test_cmd" = "cargo test --workspace" ] \
    || fail "README.md's second sh block is not 'cargo test --workspace': $test_cmd"

echo "readme-commands: command 1 (README.md, verbatim):"
printf '    %s\n' "$build_cmd"
echo "readme-commands: command 2 (README.md, verbatim):"
printf '    %s\n' "$test_cmd"

# Command 2 is .ci/run's own test step: it must run it as written.
grep -qE "^${test_cmd}( |$)" .ci/run \
    || fail ".ci/run does not run README.md's '$test_cmd' as written; make them agree"
echo "readme-commands: .ci/run runs command 2 as written"

[ "${1:-}" = "--print" ] && exit 0

export DEBIAN_FRONTEND=noninteractive
# Run command 1 with its output on stderr (and in file $1); print the seconds.
run_build() {
    local out=$1 start end
    start=$(date +%s)
    # As a user pastes it: one bash, the command's own && chain.
    if ! bash -c "$build_cmd" </dev/null 2>&1 | tee "$out" >&2; then
        echo "readme-commands: command 1 failed (its output is above)" >&2
        return 1
    fi
    end=$(date +%s)
    echo $((end - start))
}

first_err=$(mktemp /tmp/readme-build-1.XXXXXX)
second_err=$(mktemp /tmp/readme-build-2.XXXXXX)
trap 'rm -f "$first_err" "$second_err"' EXIT

echo "readme-commands: running command 1"
t1=$(run_build "$first_err")
echo "readme-commands: command 1 took ${t1}s"

echo "readme-commands: running command 1 again: the README promises a cache hit"
t2=$(run_build "$second_err")
grep -q "cache hit" "$second_err" \
    || fail "the second run of command 1 was not a cache hit (see its output above)"
if grep -q "unpacked" "$second_err"; then
    fail "the second run of command 1 unpacked the tarball again"
fi
echo "readme-commands: second run took ${t2}s and was a cache hit"
