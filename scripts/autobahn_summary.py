"""Summarizes a kosoku/Autobahn index.json and fails on FAILED or NON-STRICT cases.

Usage: python3 scripts/autobahn_summary.py target/autobahn/index.json [GROUP...]
Prints the cases per outcome and per group, and a closing line `autobahn: N passed, M
failed`. Each GROUP given (e.g. 1 2 9) must have run: a run that stopped early, or a case
filter that matched nothing, fails instead of passing on fewer cases.
Compression groups (12, 13) are expected to be UNIMPLEMENTED: Kasagi declines
permessage-deflate, and they count as passed when they are.
"""

import collections
import json
import sys


def main(path: str, groups: list[str]) -> int:
    try:
        with open(path) as f:
            index = json.load(f)
    except OSError as err:
        print(f"autobahn: no report at {path}: {err}")
        return 1
    counts = collections.Counter()
    per_group = collections.Counter()
    bad = []
    for agent, cases in index.items():
        for case_id, result in cases.items():
            behavior = result.get("behavior")
            close = result.get("behaviorClose")
            group = case_id.split(".")[0]
            counts[behavior] += 1
            per_group[group] += 1
            ok = behavior in ("OK", "INFORMATIONAL") or (
                behavior == "UNIMPLEMENTED" and group in ("12", "13")
            )
            if close not in ("OK", "INFORMATIONAL", "UNIMPLEMENTED", None):
                ok = False
            if not ok:
                bad.append(f"{agent} {case_id}: {behavior} (close: {close})")
    for line in sorted(bad):
        print("  " + line)
    total = sum(counts.values())
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"autobahn cases: {total} ({summary})")
    by_group = ", ".join(
        f"{g}: {n}" for g, n in sorted(per_group.items(), key=lambda kv: int(kv[0]))
    )
    print(f"autobahn cases per group: {by_group}")
    missing = [g for g in groups if per_group[g] == 0]
    if missing:
        print(f"autobahn: no cases ran for group(s) {', '.join(missing)}")
        bad.extend(f"group {g}: no cases" for g in missing)
    print(f"autobahn: {total - len(bad)} passed, {len(bad)} failed")
    return 1 if bad or total == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
