"""Summarizes a kosoku/Autobahn index.json and fails on FAILED or NON-STRICT cases.

Usage: python3 scripts/autobahn_summary.py target/autobahn/index.json
Prints one line per outcome and a closing line `autobahn: N passed, M failed`.
Compression groups (12, 13) are expected to be UNIMPLEMENTED: Kasagi declines
permessage-deflate, and they count as passed when they are.
"""

import collections
import json
import sys


def main(path: str) -> int:
    try:
        with open(path) as f:
            index = json.load(f)
    except OSError as err:
        print(f"autobahn: no report at {path}: {err}")
        return 1
    counts = collections.Counter()
    bad = []
    for agent, cases in index.items():
        for case_id, result in cases.items():
            behavior = result.get("behavior")
            close = result.get("behaviorClose")
            group = case_id.split(".")[0]
            counts[behavior] += 1
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
    print(f"autobahn: {total - len(bad)} passed, {len(bad)} failed")
    return 1 if bad or total == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
