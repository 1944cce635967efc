#!/usr/bin/env bash
# The whole test suite: formatting, lints, the Autobahn conformance run, then every unit,
# property and integration test (nextest when installed, cargo test otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
scripts/autobahn.sh
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
else
    cargo test --workspace --no-fail-fast
fi
