#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzingclient cases (through the `kosoku` runner from PyPI)
# against `kasagi echo`, prints the summary, and fails on any FAILED or NON-STRICT case.
#
#   scripts/autobahn.sh            # cases 1-7, 9-10 (the conformance gate) and 12-13
#   CASES="9.*" scripts/autobahn.sh
#
# Reports land in target/autobahn/ (index.html for a person, index.json for scripts).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${KASAGI_AUTOBAHN_VENV:-target/autobahn-venv}
outdir=target/autobahn
cases=${CASES:-"1.* 2.* 3.* 4.* 5.* 6.* 7.* 9.* 10.* 12.* 13.*"}

if [ ! -x "$venv/bin/kosoku" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check kosoku==0.1.0
fi

cargo build --quiet --release --bin kasagi
log=$(mktemp)
ready=$(mktemp)
target/release/kasagi echo --listen 127.0.0.1:0 --shards 2 >"$ready" 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$log" "$ready"' EXIT

addr=
for _ in $(seq 1 200); do
    addr=$(sed -n 's/^kasagi listening on //p' "$ready")
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "kasagi echo exited" >&2; exit 1; }
    sleep 0.05
done
[ -n "$addr" ] || { echo "kasagi echo did not start" >&2; exit 1; }

include=()
for c in $cases; do include+=(-i "$c"); done
rm -rf "$outdir"
# kosoku exits non-zero when a case fails; the summary below decides, with the reason.
"$venv/bin/kosoku" "$addr" "${include[@]}" -p 4 -o "$outdir" >"$outdir.log" 2>&1 || true
# The groups asked for ("6.*" -> 6, "9.1.*" -> 9) must all have run.
groups=()
for c in $cases; do groups+=("${c%%.*}"); done
python3 scripts/autobahn_summary.py "$outdir/index.json" "${groups[@]}"
