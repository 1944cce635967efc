#!/usr/bin/env bash
# The whole test suite: formatting, lints, the Autobahn conformance run, then every unit,
# property and integration test (nextest when installed, cargo test otherwise).
#
# On a fresh Debian machine with only Rust, it first installs what the tests need
# (Python's venv for the Autobahn runner, redis-server for the Redis tests, a C compiler).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
# The Redis tests start their own redis-server processes (own port, own temp dir).
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${missing[@]}"
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
scripts/autobahn.sh
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
else
    cargo test --workspace --no-fail-fast
fi
