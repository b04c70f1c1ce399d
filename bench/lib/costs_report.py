#!/usr/bin/env python3
"""bench/costs: per-stage CPU cost table from cpuload.py's raw lines.

    costs_report.py COSTS_RAW.jsonl RESULTS_DIR > costs.md

A stage's cost in one round = CPU µs per request with it on minus with it
off, both measured in that round (paired, so drift between rounds cancels);
the row shows the median over rounds and every round's value. Writes the
target file `stage-costs` (goal: no stage over 2 µs, authentication and body
validation excepted).
"""

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import targets  # noqa: E402

LIMIT_US = 2.0
# (stage, how it is turned off, variant with it on, variant with it off, exempt from the 2 µs goal)
ROWS = [
    ("*noise floor: the same server twice (A/A)*", "nothing (a second identical server)", "base", "base-again", True),
    ("correlation (trace context, correlation ID)", "BULKHEAD_BENCH_SKIP=correlation", "base", "no-correlation", False),
    ("route (path decoding, route match)", "BULKHEAD_BENCH_SKIP=route", "base", "no-route", False),
    ("validation, head (host, path, query, headers; T10)", "BULKHEAD_BENCH_SKIP=validation", "base", "no-validation", False),
    ("rate limit, per caller (T02, T03)", "rate_limit = { per_caller = \"off\" }", "base", "no-ratelimit", False),
    ("dynamic throttle (T01, T02)", "dynamic_throttle = { enabled = false }", "base", "no-throttle", False),
    ("fair admission, app and function gates (T01)", "BULKHEAD_BENCH_SKIP=admission", "base", "no-admission", False),
    ("budget + metering (T04; one call: Meter::admit returns the charge)", "metering = false", "base", "no-metering", False),
    ("access log (T08)", "BULKHEAD_LOG=warn", "base", "no-log", False),
    ("audit: durable wait, refusal record (T09)", "BULKHEAD_BENCH_SKIP=audit", "base", "no-audit", False),
    ("metrics (Prometheus counters, histogram)", "BULKHEAD_BENCH_SKIP=metrics", "base", "no-metrics", False),
    ("auth: API key (T11)", "auth = \"public\" (same app)", "auth-api-key", "auth-public", True),
    ("auth: session token (T12)", "auth = \"public\" (same app)", "auth-session", "auth-public", True),
    ("auth: JWT ES256 (T11)", "auth = \"public\" (same app)", "auth-jwt-es256", "auth-public", True),
    ("auth: JWT EdDSA (T11)", "auth = \"public\" (same app)", "auth-jwt-eddsa", "auth-public", True),
]


def main():
    raw, results = sys.argv[1], sys.argv[2]
    per = {}
    for line in open(raw):
        r = json.loads(line)
        per.setdefault(r["variant"], {})[r["round"]] = r["cpu_us_per_request"]
    rows = []
    for stage, how, on, off, exempt in ROWS:
        if on not in per or off not in per:
            continue
        rounds = sorted(set(per[on]) & set(per[off]))
        diffs = [per[on][k] - per[off][k] for k in rounds]
        if not diffs:
            continue
        med = statistics.median(diffs)
        rows.append({
            "stage": stage,
            "turned off by": how,
            "CPU µs/request added (median)": round(med, 2),
            "per round": ", ".join(f"{d:.2f}" for d in diffs),
            "goal": ("info" if on == "base" else "exempt") if exempt else f"<= {LIMIT_US:g} µs",
            "result": ("info" if on == "base" else "exempt") if exempt else ("pass" if med <= LIMIT_US else "MISS"),
        })
    base = per.get("base", {})
    base_med = statistics.median(base.values()) if base else None
    checked = [r for r in rows if r["result"] not in ("exempt", "info")]
    worst = max(checked, key=lambda r: r["CPU µs/request added (median)"], default=None)
    print("# bench/costs: CPU per request each control adds\n")
    if base_med is not None:
        print(f"Hello with every control on: {base_med:.1f} µs of server CPU per request "
              f"(median of {len(base)} rounds: {', '.join(f'{x:.1f}' for x in base.values())}).\n")
    if rows:
        print(targets.rows_table(rows))
    print("\nA negative figure is a cost below this machine's noise (the stage off ran slower that round); "
          "the A/A row (two identical servers) shows how large a difference noise alone makes in this run.")
    if worst is None:
        return
    rows_path = os.path.join(results, "costs-rows.json")
    with open(rows_path, "w") as f:
        json.dump(rows, f)

    class Args:
        pass

    a = Args()
    a.dir = results
    # The instruction count (ir_report.py) decides `stage-costs`: on this
    # shared VM the CPU-time method's noise (the A/A row) is as large as
    # the goal, so its figure is shown for information only.
    a.id = "stage-costs-cpu"
    a.target = ("informational: CPU time per request of each stage, wall/CPU method (noise about as large "
                "as the 2 us goal, see the A/A row); measured = the costliest: " + worst["stage"])
    a.goal = "informational"
    a.unit = "us"
    a.runs = [float(x) for x in worst["per round"].split(", ")]
    a.note = ("server CPU (utime+stime, /proc/PID/stat) per request, wrk -t1 -c16, each stage on minus off, "
              "paired per round, median of rounds; pass only if every row is <= 2 us")
    a.rows = rows_path
    a.pass_ = None
    targets.write(a)


if __name__ == "__main__":
    main()
