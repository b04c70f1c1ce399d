#!/usr/bin/env python3
"""bench/costs, instruction count part: each stage's instructions per
request (callgrind, bench/lib/irstages.py), and the same in µs of server CPU.

    ir_report.py IR_RAW.jsonl RESULTS_DIR > costs-ir.md

A stage's cost = instructions per request with it on minus with it off
(the median of each variant's windows). In µs: divided by the exchange
rate of this run, hello's instructions per request over hello's server CPU
µs per request measured natively with the same client (kernel time is in
the µs but not in the count, so the rate is low and each stage's µs figure
high: conservative). Writes the target `stage-costs`: every stage at most
2 µs (authentication and body validation excepted).
"""

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import targets  # noqa: E402
from costs_report import LIMIT_US, ROWS  # noqa: E402


def main():
    raw, results = sys.argv[1], sys.argv[2]
    ir = {}
    native = []
    for line in open(raw):
        r = json.loads(line)
        if "native_round" in r:
            native.append(r["cpu_us_per_request"])
        else:
            ir.setdefault(r["variant"], []).append(r["ir_per_request"])
    if "base" not in ir or not native:
        print("# bench/costs (instructions): no base measurement\n")
        return
    base_ir = statistics.median(ir["base"])
    base_us = statistics.median(native)
    rate = base_ir / base_us  # instructions per µs of server CPU
    rows = []
    for stage, how, on, off, exempt in ROWS:
        if on not in ir or off not in ir:
            continue
        delta = statistics.median(ir[on]) - statistics.median(ir[off])
        us = delta / rate
        spread = max(max(ir[on]) - min(ir[on]), max(ir[off]) - min(ir[off]))
        rows.append({
            "stage": stage,
            "turned off by": how,
            "instructions/request added": round(delta),
            "µs/request (at this run's rate)": round(us, 2),
            "window spread (instructions)": round(spread),
            "goal": ("info" if on == "base" else "exempt") if exempt else f"<= {LIMIT_US:g} µs",
            "result": ("info" if on == "base" else "exempt") if exempt
            else ("pass" if us <= LIMIT_US else "MISS"),
        })
    print("# bench/costs: instructions per request each control adds (callgrind)\n")
    print(f"Hello with every control on: {base_ir:,.0f} instructions per request "
          f"(windows: {', '.join(f'{x:,.0f}' for x in ir['base'])}); natively "
          f"{base_us:.1f} µs of server CPU per request with the same client "
          f"(rounds: {', '.join(f'{x:.1f}' for x in native)}), so {rate:,.0f} instructions per µs.\n")
    print(targets.rows_table(rows))
    print("\nOne keep-alive connection, one request at a time, the same request every time; counters zeroed "
          "after a warm-up and read after N requests, every thread counted. Window spread: how far two "
          "windows of the same server differ (the method's noise).")
    checked = [r for r in rows if r["result"] not in ("exempt", "info")]
    worst = max(checked, key=lambda r: r["µs/request (at this run's rate)"], default=None)
    if worst is None:
        return
    rows_path = os.path.join(results, "costs-ir-rows.json")
    with open(rows_path, "w") as f:
        json.dump(rows, f)

    class Args:
        pass

    a = Args()
    a.dir = results
    a.id = "stage-costs"
    a.target = ("CPU per request of each stage (not auth, not body validation), by instruction count; "
                "measured = the costliest: " + worst["stage"])
    a.goal = f"<= {LIMIT_US:g}"
    a.unit = "us"
    a.runs = [worst["µs/request (at this run's rate)"]]
    a.note = (f"callgrind instructions per request, each stage on minus off, converted at {rate:,.0f} "
              f"instructions per µs (hello: {base_ir:,.0f} instructions, {base_us:.1f} µs server CPU); "
              "pass only if every row is <= 2 us")
    a.rows = rows_path
    a.pass_ = "yes" if all(r["result"] == "pass" for r in checked) else "no"
    targets.write(a)


if __name__ == "__main__":
    main()
