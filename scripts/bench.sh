#!/usr/bin/env bash
# Runs a named bench preset with the server and the bench pinned to separate cores.
#
#   scripts/bench.sh PRESET [extra kasagi-bench flags...]
#   scripts/bench.sh list
#
# Builds the release binaries, starts nothing by hand: kasagi-bench starts the server itself
# (taskset -c $SERVER_CPUS), runs pinned to $BENCH_CPUS, and writes summary.txt,
# result.json, *.hgrm, latency.png and server.log under
# bench/results/<timestamp>-<preset>/<step>/ (gitignored). Prints every summary at the end.
#
# Environment: SERVER_CPUS (default 0), BENCH_CPUS (default 1), DURATION (default 10s),
# WARMUP (default 2s), PROTO (msgpack|json, default msgpack), SWEEP_HZ (latency-sweep's
# rates, default "0.1 0.25 0.5 1 2 3 4 5").
# Exit status: 0 when every step's correctness checks passed, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVER_CPUS=${SERVER_CPUS:-0}
BENCH_CPUS=${BENCH_CPUS:-1}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
PROTO=${PROTO:-msgpack}
RATE_ARGS="--rate-limit 100000 --rate-burst 100000 --log warn"

PRESETS="jitter fanout-1core latency-10k latency-sweep ack idle-20k join-storm big-state cross-shard json all"
SWEEP_HZ=${SWEEP_HZ:-"0.1 0.25 0.5 1 2 3 4 5"}

usage() {
    cat <<USAGE
usage: scripts/bench.sh PRESET [extra kasagi-bench flags]
presets:
  jitter        how late a sleeping thread wakes on the server's and the bench's CPUs, and
                how much time a spinning one loses in stalls, nothing else started: the
                machine's own latency floor
  fanout-1core  coalesced fan-out throughput: 40 rooms x 50 clients x 10 Hz (1M deliveries/s offered)
  latency-10k   latency at half of saturation: 10,000 connections, 400 rooms of 25, 2 Hz
                (500k deliveries/s; latency-sweep shows the shape saturating past 4 Hz)
  latency-sweep latency-10k's shape at each rate of SWEEP_HZ (default: 0.1 to 5 Hz), with a
                table of rate, server CPU and percentiles
  ack           request -> ack latency at light load (100 clients x 10 Hz) beside a bare TCP echo
  idle-20k      server memory per idle connection at 20,000 connections
  join-storm    connections + handshakes + joins per second (64 in flight)
  big-state     join latency of a ~1 MB room (4 joiners)
  cross-shard   server with 2 shards on one core: same-shard vs cross-shard rooms, CPU per delivery
  json          fanout-1core's load on the JSON subprotocol
  all           every preset above, one after the other
USAGE
}

preset=${1:-}
[ -n "$preset" ] || { usage; exit 2; }
shift
case " $PRESETS list " in
    *" $preset "*) ;;
    *) usage; exit 2 ;;
esac
[ "$preset" = list ] && { usage; exit 0; }

cargo build --release -p kasagi -p kasagi-bench --bins
BENCH=target/release/kasagi-bench
SERVER=target/release/kasagi

out="bench/results/$(date +%Y%m%d-%H%M%S)-$preset"
mkdir -p "$out"
status=0
steps=()

# step NAME SERVER_ARGS SCENARIO [scenario flags...]
step() {
    local name=$1 server_args=$2
    shift 2
    local dir="$out/$name"
    mkdir -p "$dir"
    local cmd=(taskset -c "$BENCH_CPUS" "$BENCH" "$@"
        --server-bin "$SERVER" --server-cpus "$SERVER_CPUS" --server-args "$server_args"
        --cpus "$BENCH_CPUS" --duration "$DURATION" --warmup "$WARMUP" --out "$dir")
    echo "+ ${cmd[*]} ${EXTRA[*]:-}" | tee "$dir/command.txt"
    if "${cmd[@]}" ${EXTRA[@]+"${EXTRA[@]}"} >"$dir/stdout.txt" 2>"$dir/stderr.txt"; then
        :
    else
        status=1
    fi
    tail -n 1 "$dir/stdout.txt" >>"$out/results.jsonl" || true
    steps+=("$name")
}

EXTRA=("$@")
run_preset() {
    case $1 in
        fanout-1core)
            step fanout-1core "--shards 1 $RATE_ARGS" fanout --proto "$PROTO" \
                --rooms 40 --clients-per-room 50 --hz 10 ;;
        jitter)
            # A sleeping thread's late wake-ups, then a spinning thread's lost stretches.
            local name mode
            for name in jitter stalls; do
                mode=()
                [ "$name" = stalls ] && mode=(--spin)
                local dir="$out/$name"
                mkdir -p "$dir"
                local cmd=("$BENCH" jitter "${mode[@]}" --cpus "$SERVER_CPUS,$BENCH_CPUS"
                    --duration "$DURATION" --out "$dir")
                echo "+ ${cmd[*]}" | tee "$dir/command.txt"
                "${cmd[@]}" >"$dir/stdout.txt" 2>"$dir/stderr.txt" || status=1
                tail -n 1 "$dir/stdout.txt" >>"$out/results.jsonl" || true
                steps+=("$name")
            done ;;
        latency-10k)
            step latency-10k "--shards 1 $RATE_ARGS" fanout --proto "$PROTO" \
                --rooms 400 --clients-per-room 25 --hz 2 ;;
        latency-sweep)
            for hz in $SWEEP_HZ; do
                step "sweep-${hz}hz" "--shards 1 $RATE_ARGS" fanout --proto "$PROTO" \
                    --rooms 400 --clients-per-room 25 --hz "$hz"
            done ;;
        ack)
            step ack "--shards 1 $RATE_ARGS" ack --proto "$PROTO" --clients 100 --hz 10 ;;
        idle-20k)
            step idle-20k "--shards 1 $RATE_ARGS" idle --proto "$PROTO" --connections 20000 ;;
        join-storm)
            step join-storm "--shards 1 $RATE_ARGS" join-storm --proto "$PROTO" \
                --rooms 100 --concurrency 64 ;;
        big-state)
            step big-state "--shards 1 $RATE_ARGS" big-state --proto "$PROTO" --joiners 4 ;;
        cross-shard)
            # Both server shards share one core, so CPU per delivery compares like with like.
            step cross-shard-same "--shards 2 $RATE_ARGS" fanout --proto "$PROTO" \
                --rooms 40 --clients-per-room 25 --hz 10 --cross-shard 0
            step cross-shard-cross "--shards 2 $RATE_ARGS" fanout --proto "$PROTO" \
                --rooms 40 --clients-per-room 25 --hz 10 --cross-shard 1 ;;
        json)
            step json "--shards 1 $RATE_ARGS" fanout --proto json \
                --rooms 40 --clients-per-room 50 --hz 10 ;;
        all)
            for p in jitter fanout-1core latency-10k ack idle-20k join-storm big-state cross-shard json; do
                run_preset "$p"
            done ;;
    esac
}
run_preset "$preset"

echo
for name in "${steps[@]}"; do
    cat "$out/$name/summary.txt" 2>/dev/null || { echo "== $name: no summary"; cat "$out/$name/stderr.txt"; }
done
if [ "$preset" = latency-sweep ]; then
    python3 - "$out" "${steps[@]}" <<'PY' || true
import json, sys
out, steps = sys.argv[1], sys.argv[2:]
print("latency by offered load (10,000 connections, rooms of 25):")
print(f"{'Hz':>5} {'deliveries/s':>13} {'server CPU':>10} {'CPU-s/M':>8} {'bench CPU':>9} "
      f"{'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8}")
for step in steps:
    with open(f"{out}/{step}/result.json") as f:
        r = json.load(f)
    m, d = r["metrics"], r["latency"]["delivery"]
    ms = lambda k: d[k] / 1000
    print(f"{r['params']['hz']:>5} {m['deliveries_per_s']:>13,.0f} {m.get('server_cpu_share', 0):>10.2f} "
          f"{m.get('server_cpu_s_per_million_deliveries', 0):>8.2f} {m['bench_cpu_share']:>9.2f} "
          f"{ms('p50_us'):>8.3f} {ms('p99_us'):>8.2f} {ms('p99.9_us'):>9.2f} {ms('max_us'):>8.2f}")
PY
fi
if [ "$preset" = cross-shard ] || [ "$preset" = all ]; then
    python3 - "$out" <<'PY' || true
import json, sys
def cpu(step):
    with open(f"{sys.argv[1]}/{step}/result.json") as f:
        return json.load(f)["metrics"].get("server_cpu_s_per_million_deliveries")
same, cross = cpu("cross-shard-same"), cpu("cross-shard-cross")
if same and cross:
    print(f"cross-shard CPU per delivery: {cross / same:.2f}x same-shard (target <= 1.10x)")
PY
fi
if [ "$preset" = all ]; then
    # Medians over several runs: scripts/targets.py DIR1 DIR2 DIR3
    python3 scripts/targets.py "$out" || true
fi
echo "results: $out"
exit $status
