#!/usr/bin/env python3
"""bench/refusals: admitted / refused server CPU per request, per path.

    refusals_report.py REFUSALS_RAW.jsonl RESULTS_DIR LOG_DIR > refusals.md

Ratio per round = admitted hello's CPU µs per request / the refusal's, both
from the same round; the target's figure is the median over rounds. Also
counts the refusals' access-log lines (every refusal is logged, T09).
"""

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import targets  # noqa: E402

PATHS = [
    ("ratelimit", "refusal-ratelimit", "rate-limited", "a caller over its per-caller rate limit (429 rate-limited)"),
    # Every running place is taken by a held stream: the dynamic throttle's
    # in-flight signal is at its limit, so new work is shed (`overloaded`)
    # before the gate counts it full (`too-many-requests`); both are 429.
    ("overload", "refusal-overload", ("overloaded", "too-many-requests"),
     "overload: every place taken, new work shed (429 overloaded)"),
    ("unauthenticated", "refusal-unauthenticated", "unauthenticated", "no credential on an authenticated route (401)"),
]


def log_counts(path):
    counts = {}
    try:
        for line in open(path, errors="replace"):
            try:
                r = json.loads(line)
            except ValueError:
                continue
            fields = r.get("fields", r)
            reason = fields.get("reason")
            if reason:
                counts[reason] = counts.get(reason, 0) + 1
    except OSError:
        pass
    return counts


def main():
    raw, results, logs = sys.argv[1:4]
    per = {}
    served = {}
    for line in open(raw):
        r = json.loads(line)
        per.setdefault(r["variant"], {})[r["round"]] = r["cpu_us_per_request"]
        served[r["variant"]] = served.get(r["variant"], 0) + r["requests"]
    admitted = per.get("admitted", {})
    print("# bench/refusals: server CPU per refusal against an admitted hello\n")
    print("| path | CPU µs/request (median) | per round | admitted ÷ refused (median) | per round | goal | result | refusal log lines / requests |")
    print("|---|---:|---|---:|---|---|---|---|")
    if admitted:
        print(f"| admitted hello | {statistics.median(admitted.values()):.1f} | "
              f"{', '.join(f'{x:.1f}' for x in admitted.values())} | | | | | |")
    for name, target_id, reason, what in PATHS:
        if name not in per:
            continue
        rounds = sorted(set(per[name]) & set(admitted))
        ratios = [admitted[k] / per[name][k] for k in rounds if per[name][k] > 0]
        med = statistics.median(ratios) if ratios else None
        counts = log_counts(os.path.join(logs, f"{name}.stderr.jsonl"))
        logged = sum(counts.get(r, 0) for r in (reason if isinstance(reason, tuple) else (reason,)))
        print(f"| {what} | {statistics.median(per[name].values()):.1f} | "
              f"{', '.join(f'{x:.1f}' for x in per[name].values())} | "
              f"{'—' if med is None else f'{med:.1f}×'} | {', '.join(f'{x:.1f}' for x in ratios)} | ≥ 10× | "
              f"{'pass' if med is not None and med >= 10 else 'MISS'} | {logged:,} / {served.get(name, 0):,} (warm-up included in lines) |")

        class A:
            pass

        a = A()
        a.dir, a.id, a.unit, a.rows, a.pass_ = results, target_id, "ratio", None, None
        a.target = f"admitted hello CPU / refusal CPU per request: {what}"
        a.goal = ">= 10"
        a.runs = ratios
        a.note = ("server CPU (utime+stime, /proc/PID/stat) per request, wrk -t1 -c16, admitted and refused "
                  "servers alternating, ratio paired per round, median of rounds")
        targets.write(a)

    floor = per.get("floor", {})
    if floor and admitted:
        rounds = sorted(set(floor) & set(admitted))
        ratios = [admitted[k] / floor[k] for k in rounds if floor[k] > 0]
        med = statistics.median(ratios) if ratios else None
        print(f"| floor: a bare hyper server answering a fixed 429 (no gateway) | "
              f"{statistics.median(floor.values()):.1f} | {', '.join(f'{x:.1f}' for x in floor.values())} | "
              f"{'—' if med is None else f'{med:.1f}×'} | {', '.join(f'{x:.1f}' for x in ratios)} | "
              f"informational | the best ratio any refusal can reach here | |")

        class F:
            pass

        f = F()
        f.dir, f.id, f.unit, f.rows, f.pass_ = results, "refusal-floor", "ratio", None, None
        f.target = ("informational: admitted hello CPU / CPU of a bare hyper server's fixed 429 "
                    "(crates/gateway/examples/refusal_floor.rs): the best ratio a refusal can reach on this stack")
        f.goal = "informational"
        f.runs = ratios
        f.note = ("the same runtime and HTTP/1.1 settings as bulkhead serve, no checks, no log, no audit; "
                  "server CPU per request, alternating with the others, paired per round")
        targets.write(f)


if __name__ == "__main__":
    main()
