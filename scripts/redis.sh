#!/usr/bin/env bash
# A local Redis for development: `scripts/redis.sh [PORT]` (default 6379) runs
# redis-server in the foreground with its data in target/redis-PORT/ and the append-only
# file on (fsync every second), so a fleet's rooms survive restarts of Redis too.
# Stop it with Ctrl-C. Point instances at it with `--redis redis://127.0.0.1:PORT`.
set -euo pipefail
cd "$(dirname "$0")/.."
port="${1:-6379}"
if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis-server is not installed (Debian: sudo apt-get install redis-server)" >&2
    exit 1
fi
dir="target/redis-$port"
mkdir -p "$dir"
echo "redis on 127.0.0.1:$port, data in $dir (Ctrl-C stops it)" >&2
exec redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" \
    --appendonly yes --appendfsync everysec --save ""
