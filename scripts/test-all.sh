#!/usr/bin/env bash
# Runs every check and test of the workspace: formatting, lints, dependency policy (cargo
# deny), docs, unit, property, conformance and doc tests. Brokers that tests need are installed and started first by the
# scripts next to this one (idempotent: install if missing, start if not running, wait until
# ready, bind to 127.0.0.1 only).
set -euo pipefail
cd "$(dirname "$0")/.."

# A clean clone's build has nothing to reuse: no incremental caches (they double the target
# directory's size). The full test build's target directory is about 4.5 GiB (4.3 GiB measured
# on a fresh clone), more on a first run that also builds nisshi; a CI run that ran out
# ("No space left on device", a linker's bus error) said nothing clear, so say it up front.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target"
free_kib=$(df -Pk "$target" | awk 'NR == 2 { print $4 }')
if [ "$free_kib" -lt $((3 * 1024 * 1024)) ]; then
    echo "test-all: only $((free_kib / 1024)) MiB free for $target; the build needs about 5 GiB" >&2
    exit 1
elif [ "$free_kib" -lt $((8 * 1024 * 1024)) ]; then
    echo "test-all: warning: $((free_kib / 1024 / 1024)) GiB free for $target; the build needs about 5 GiB"
fi

for setup in scripts/brokers/*.sh; do
    [ -e "$setup" ] || continue
    echo "==> $setup"
    bash "$setup"
done

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

echo "==> cargo deny (licences, bans, sources; advisories where reachable)"
bash scripts/deny.sh

echo "==> cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps --locked --quiet

echo "==> quickstart"
cargo run --locked --quiet -p messaging-examples --bin quickstart

echo "==> cargo test"
cargo test --workspace --locked --all-features --no-fail-fast
