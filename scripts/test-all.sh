#!/usr/bin/env bash
# Runs every check and test of the workspace: formatting, lints, docs, unit, property,
# conformance and doc tests. Brokers that tests need are installed and started first by the
# scripts next to this one (idempotent: install if missing, start if not running, wait until
# ready, bind to 127.0.0.1 only).
set -euo pipefail
cd "$(dirname "$0")/.."

for setup in scripts/brokers/*.sh; do
    [ -e "$setup" ] || continue
    echo "==> $setup"
    bash "$setup"
done

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

echo "==> cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps --locked --quiet

echo "==> quickstart"
cargo run --locked --quiet -p messaging-examples --bin quickstart

echo "==> cargo test"
cargo test --workspace --locked --all-features --no-fail-fast
