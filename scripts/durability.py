#!/usr/bin/env python3
"""The table of `scripts/bench.sh durability`: the server without Redis beside the server
with `--redis` (durable acks) for each appendfsync policy, at a fixed rate and at saturation.

    scripts/durability.py bench/results/<stamp>-durability

Reads each step's result.json and the Redis lines the preset wrote to redis.txt; prints
the table and the ratios against the server without Redis (bench.sh also writes them to
durability.txt).
"""

import json
import sys
from pathlib import Path


def load(run: Path, step: str):
    try:
        return json.loads((run / step / "result.json").read_text())
    except (OSError, ValueError):
        return None


def redis_lines(run: Path):
    """(version, [fsync policies in the order they ran]) from redis.txt."""
    try:
        lines = (run / "redis.txt").read_text().splitlines()
    except OSError:
        return "?", []
    version = next((w[2:] for w in lines[0].split() if w.startswith("v=")), "?") if lines else "?"
    policies = [l.split("appendfsync ", 1)[1].split(",")[0] for l in lines if "appendfsync " in l]
    return version, policies


def started(run: Path):
    try:
        return (run / "started.txt").read_text().strip()
    except OSError:
        # The folder is named after the local start time: YYYYMMDD-HHMMSS-durability.
        stamp = run.name.split("-")
        if len(stamp) >= 2 and len(stamp[0]) == 8 and len(stamp[1]) == 6:
            d, t = stamp[0], stamp[1]
            return f"{d[:4]}-{d[4:6]}-{d[6:]} {t[:2]}:{t[2:4]}:{t[4:]} local time"
        return "?"


def row(step, r):
    m, p, a = r["metrics"], r["params"], r["latency"].get("ack", {})
    load = (f"{p['clients']} x {p['hz']:g} Hz" if p.get("hz") is not None
            else f"{p['clients']} x {p['in_flight']} in flight")
    ms = lambda k: f"{a[k] / 1000:.3f}" if k in a else "-"
    redis_cpu = f"{m['redis_cpu_share']:.2f}" if "redis_cpu_share" in m else "-"
    others = m.get("server_cores_other_load", 0) + m.get("bench_cores_other_load", 0)
    return (f"{step:<20} {load:<24} {m.get('acks_per_s', 0):>11,.0f} {ms('p50_us'):>8} "
            f"{ms('p99_us'):>7} {ms('p99.9_us'):>7} {ms('max_us'):>7} "
            f"{m.get('server_cpu_share', 0):>10.2f} {redis_cpu:>9} "
            f"{m.get('bench_cpu_share', 0):>9.2f} {others:>6.2f}  "
            f"{'OK' if r.get('ok') else 'FAILED'}")


def main(run: Path):
    version, policies = redis_lines(run)
    steps = ["rate-no-redis", "max-no-redis"]
    for fsync in policies:
        steps += [f"rate-redis-{fsync}", f"max-redis-{fsync}"]
    results = {s: r for s in steps if (r := load(run, s)) is not None}
    if not results:
        print(f"{run}: no durability results")
        return 1
    duration = next(iter(results.values()))["params"].get("duration_s", 0)
    print(f"the cost of durability (started {started(run)}, {duration:g} s windows; "
          f"redis-server {version}, AOF on, durable acks on)")
    print("CPU in cores; 'others': the rest of the busy time of the server's and the bench's "
          "cores (Redis runs there too)")
    print(f"{'step':<20} {'load':<24} {'acked ops/s':>11} {'ack p50':>8} {'p99':>7} "
          f"{'p99.9':>7} {'max ms':>7} {'server CPU':>10} {'Redis CPU':>9} {'bench CPU':>9} "
          f"{'others':>6}  checks")
    for step, r in results.items():
        print(row(step, r))
    base_rate, base_max = results.get("rate-no-redis"), results.get("max-no-redis")
    for fsync in policies:
        saturated = results.get(f"max-redis-{fsync}")
        if saturated is None or base_max is None:
            continue
        ratio = saturated["metrics"]["acks_per_s"] / max(base_max["metrics"]["acks_per_s"], 1e-9)
        line = f"with Redis ({fsync}): {ratio:.2f}x the acked ops/s at saturation"
        rate = results.get(f"rate-redis-{fsync}")
        if rate and base_rate and "ack" in rate["latency"] and "ack" in base_rate["latency"]:
            x = lambda k: rate["latency"]["ack"][k] / max(base_rate["latency"]["ack"][k], 1)
            line += f"; at the fixed rate {x('p50_us'):.2f}x the ack p50, {x('p99_us'):.2f}x the p99"
        print(line)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1])))
