#!/usr/bin/env python3
"""The bench targets (README, "Bench"), scored from one or more `scripts/bench.sh all` results.

    scripts/targets.py bench/results/<stamp>-all [more result directories...]

With several directories each figure is the median over them, followed by its range, as
the README's tables quote them. A step missing from a directory is skipped there; a target
with no figure at all prints as "no data".
"""

import json
import statistics
import sys
from pathlib import Path


def load(run: Path, step: str):
    try:
        return json.loads((run / step / "result.json").read_text())
    except (OSError, ValueError):
        return None


def figures(runs, step, pick):
    """pick(result) -> number or None, for every run that has the step."""
    out = []
    for run in runs:
        result = load(run, step)
        if result is None:
            continue
        try:
            value = pick(result)
        except (KeyError, TypeError, ZeroDivisionError):
            value = None
        if value is not None:
            out.append(value)
    return out


def metric(name):
    return lambda r: r["metrics"][name]


def latency_ms(hist, pct):
    return lambda r: r["latency"][hist][pct] / 1000


def cross_ratio(runs):
    out = []
    for run in runs:
        same, cross = load(run, "cross-shard-same"), load(run, "cross-shard-cross")
        if same and cross:
            key = "server_cpu_s_per_million_deliveries"
            out.append(cross["metrics"][key] / same["metrics"][key])
    return out


def correct(runs):
    """How many fan-out steps were read, and those with a gap or a missing delivery."""
    bad, seen = [], 0
    for run in runs:
        for step in ("fanout-1core", "latency-10k", "ack", "cross-shard-same",
                     "cross-shard-cross", "json"):
            result = load(run, step)
            if result is None:
                continue
            seen += 1
            counters = result.get("counters", {})
            if counters.get("gaps", 0) or counters.get("missing_deliveries", 0):
                bad.append(f"{run.name}/{step}")
    return seen, bad


def show(values, fmt):
    if not values:
        return "no data"
    mid = statistics.median(values)
    if len(values) == 1:
        return fmt.format(mid)
    return f"{fmt.format(mid)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main(argv):
    runs = [Path(a) for a in argv[1:]]
    if not runs:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    missing = [str(r) for r in runs if not r.is_dir()]
    if missing:
        print("not a results directory: " + ", ".join(missing), file=sys.stderr)
        return 2
    # (target, values, format, met(median), goal)
    rows = [
        ("fan-out deliveries/s (fanout-1core)",
         figures(runs, "fanout-1core", metric("deliveries_per_s")), "{:,.0f}",
         lambda v: v >= 1_000_000, ">= 1,000,000"),
        ("server CPU-s per million deliveries (fanout-1core)",
         figures(runs, "fanout-1core", metric("server_cpu_s_per_million_deliveries")),
         "{:.3f}", lambda v: v <= 1.0, "<= 1.0"),
        ("latency-10k delivery p50 ms",
         figures(runs, "latency-10k", latency_ms("delivery", "p50_us")), "{:.3f}",
         lambda v: v <= 0.5, "<= 0.5"),
        ("latency-10k delivery p99 ms",
         figures(runs, "latency-10k", latency_ms("delivery", "p99_us")), "{:.2f}",
         lambda v: v <= 2.0, "<= 2"),
        ("latency-10k delivery p99.9 ms",
         figures(runs, "latency-10k", latency_ms("delivery", "p99.9_us")), "{:.2f}",
         lambda v: v <= 5.0, "<= 5"),
        ("ack p99 / bare loopback echo p99",
         figures(runs, "ack", metric("ack_p99_over_echo_p99")), "{:.2f}x",
         lambda v: v <= 1.5, "<= 1.5x"),
        ("server bytes per idle connection (idle-20k)",
         figures(runs, "idle-20k", metric("server_bytes_per_idle_connection")), "{:,.0f}",
         lambda v: v <= 2048, "<= 2,048"),
        ("joins per second of one server core (join-storm)",
         figures(runs, "join-storm", metric("joins_per_server_cpu_s")), "{:,.0f}",
         lambda v: v >= 20_000, ">= 20,000"),
        ("cross-shard CPU per delivery / same-shard",
         cross_ratio(runs), "{:.3f}x", lambda v: v <= 1.10, "<= 1.10x"),
    ]
    print(f"targets over {len(runs)} run(s): median (range)")
    width = max(len(r[0]) for r in rows)
    for name, values, fmt, met, goal in rows:
        verdict = "" if not values else ("met" if met(statistics.median(values)) else "MISSED")
        print(f"  {name:<{width}}  {show(values, fmt):<32} {goal:<13} {verdict}")
    measured = figures(runs, "join-storm", metric("joins_per_s"))
    if measured:
        print(f"  (join-storm measured {show(measured, '{:,.0f}')}/s; the generator, which pays "
              "for TCP on both ends of loopback, usually limits it)")
    seen, bad = correct(runs)
    if bad:
        print("  correctness: gaps or missing deliveries in " + ", ".join(bad))
    elif seen:
        print(f"  correctness: 0 gaps and 0 missing deliveries in all {seen} fan-out steps")
    else:
        print("  correctness: no fan-out step found")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
