#!/usr/bin/env bash
# Runs a named bench preset with the server and the bench pinned to separate cores.
#
#   scripts/bench.sh PRESET [extra kasagi-bench flags...]
#   scripts/bench.sh list
#
# Builds the release binaries, starts nothing by hand: kasagi-bench starts the server itself
# (taskset -c $SERVER_CPUS), runs pinned to $BENCH_CPUS (`durability` also starts a
# redis-server of its own, and stops it by PID when the script exits), and writes summary.txt,
# result.json, *.hgrm, latency.png and server.log under
# bench/results/<timestamp>-<preset>/<step>/ (gitignored). Prints every summary at the end.
#
# Environment: SERVER_CPUS (default 0), BENCH_CPUS (default 1), DURATION (default 10s),
# WARMUP (default 2s), PROTO (msgpack|json, default msgpack), SWEEP_HZ (latency-sweep's
# rates, default "0.1 0.25 0.5 1 2 3 4 5"); for `durability`: DURABILITY_FSYNC (Redis's
# appendfsync policies, default "everysec always"), DURABILITY_CLIENTS (100),
# DURABILITY_HZ (the fixed rate per client, 100), DURABILITY_IN_FLIGHT (ops in flight per
# client at saturation, 8), REDIS_CPUS (pin Redis with taskset; default unpinned).
# Exit status: 0 when every step's correctness checks passed, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVER_CPUS=${SERVER_CPUS:-0}
BENCH_CPUS=${BENCH_CPUS:-1}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
PROTO=${PROTO:-msgpack}
RATE_ARGS="--rate-limit 100000 --rate-burst 100000 --log warn"

PRESETS="jitter fanout-1core latency-10k latency-sweep ack durability idle-20k join-storm big-state cross-shard json all"
SWEEP_HZ=${SWEEP_HZ:-"0.1 0.25 0.5 1 2 3 4 5"}
DURABILITY_FSYNC=${DURABILITY_FSYNC:-"everysec always"}
DURABILITY_CLIENTS=${DURABILITY_CLIENTS:-100}
DURABILITY_HZ=${DURABILITY_HZ:-100}
DURABILITY_IN_FLIGHT=${DURABILITY_IN_FLIGHT:-8}
REDIS_CPUS=${REDIS_CPUS:-}

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
  durability    the cost of durable acks: the server without Redis, then with --redis on its
                own redis-server (AOF, each policy of DURABILITY_FSYNC); each at a fixed
                rate (100 clients x 100 Hz) and at saturation (8 ops in flight per client);
                a table of acked ops/s, ack p50/p99/p99.9/max, server and Redis CPU
  idle-20k      server memory per idle connection at 20,000 connections
  join-storm    connections + handshakes + joins per second (64 in flight)
  big-state     join latency of a ~1 MB room (4 joiners)
  cross-shard   server with 2 shards on one core: same-shard vs cross-shard rooms, CPU per delivery
  json          fanout-1core's load on the JSON subprotocol
  all           every preset above but durability (it needs redis-server), one after the other
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

# The durability preset's own redis-server: a free port, a fresh directory, the append-only
# file on with the given fsync policy (as scripts/redis.sh), stopped by its PID.
REDIS_PID=
REDIS_DIR=
REDIS_PORT=
stop_redis() {
    if [ -n "$REDIS_PID" ]; then
        kill "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
        REDIS_PID=
    fi
    if [ -n "$REDIS_DIR" ]; then
        rm -rf "$REDIS_DIR"
        REDIS_DIR=
    fi
}
trap stop_redis EXIT
trap 'exit 130' INT TERM
start_redis() {
    local fsync=$1 pin=()
    command -v redis-server >/dev/null 2>&1 || {
        echo "durability: redis-server is not installed (Debian: apt-get install redis-server)" >&2
        exit 1
    }
    REDIS_DIR=$(mktemp -d -t kasagi-bench-redis.XXXXXX)
    REDIS_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    [ -n "$REDIS_CPUS" ] && pin=(taskset -c "$REDIS_CPUS")
    # taskset execs redis-server, so $! is Redis's own PID.
    "${pin[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$REDIS_DIR" \
        --appendonly yes --appendfsync "$fsync" --save "" --logfile "$REDIS_DIR/redis.log" &
    REDIS_PID=$!
    local i
    for i in $(seq 100); do
        if redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
            echo "redis-server $REDIS_PID on 127.0.0.1:$REDIS_PORT, appendfsync $fsync, dir $REDIS_DIR" \
                | tee -a "$out/redis.txt"
            return 0
        fi
        kill -0 "$REDIS_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "durability: redis-server on port $REDIS_PORT did not answer" >&2
    cat "$REDIS_DIR/redis.log" >&2 || true
    exit 1
}

# The same two loads on the server without Redis, then with --redis for each fsync policy:
# DURABILITY_CLIENTS clients alone in their rooms, at DURABILITY_HZ each (open loop, a rate
# both carry), then closed loop with DURABILITY_IN_FLIGHT ops in flight each (saturation).
durability_steps() {
    local fsync server_args redis_args
    local rate=(ack --proto "$PROTO" --clients "$DURABILITY_CLIENTS" --hz "$DURABILITY_HZ")
    local max=(ack --proto "$PROTO" --clients "$DURABILITY_CLIENTS" --in-flight "$DURABILITY_IN_FLIGHT")
    server_args="--shards 1 $RATE_ARGS"
    date -u '+%Y-%m-%d %H:%M:%S UTC' >"$out/started.txt"
    redis-server --version >"$out/redis.txt" 2>&1 || true
    step rate-no-redis "$server_args" "${rate[@]}" --echo-connections 0
    step max-no-redis "$server_args" "${max[@]}"
    for fsync in $DURABILITY_FSYNC; do
        start_redis "$fsync"
        redis_args="$server_args --redis redis://127.0.0.1:$REDIS_PORT --durable-acks true"
        step "rate-redis-$fsync" "$redis_args" "${rate[@]}" --echo-connections 0 --watch "redis=$REDIS_PID"
        step "max-redis-$fsync" "$redis_args" "${max[@]}" --watch "redis=$REDIS_PID"
        cp "$REDIS_DIR/redis.log" "$out/redis-$fsync.log" 2>/dev/null || true
        stop_redis
    done
}

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
        durability)
            durability_steps ;;
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
if [ "$preset" = durability ]; then
    python3 scripts/durability.py "$out" | tee "$out/durability.txt" || true
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
