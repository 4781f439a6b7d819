#!/usr/bin/env bash
# cargo deny for the workspace (deny.toml): licences, bans (one TLS stack per client) and
# sources always; advisories only where the RustSec database can be fetched from GitHub, which
# this project's test machines cannot reach: there the check is skipped, saying so, rather than
# failed. Installs cargo-deny once if missing (about 3 minutes on 2 cores). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.20.2
if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny $version"; then
    echo "deny: installing cargo-deny $version"
    cargo install --locked --quiet cargo-deny --version "$version"
fi
cargo deny --log-level error check licenses bans sources
if timeout 60 cargo deny --log-level error fetch db >/dev/null 2>&1; then
    cargo deny --log-level error check advisories
else
    echo "deny: advisories SKIPPED: the RustSec advisory database (github.com/RustSec/advisory-db) cannot be fetched from this machine; run 'cargo deny check advisories' where it can"
fi
