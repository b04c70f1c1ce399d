#!/usr/bin/env python3
"""Turn bench/run's raw JSON lines into the Markdown report.

usage: report.py RAW_JSONL META_JSON BULKHEAD_STDERR_LOG [RESULTS_DIR] > latest.md

With RESULTS_DIR it also writes issue 17's targets hello-throughput,
hello-p99 and cold-start into RESULTS_DIR/targets/ and ends the report with
the table of every target found there (lib/targets.py).
"""

import gzip
import json
import re
import statistics
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import targets  # noqa: E402

# Issue 17's goals, bulkhead / wasmtime serve.
THROUGHPUT_GOAL = 1.25
P99_GOAL = 1.0
COLD_GOAL = 1.0


def fmt_us(us):
    if us is None:
        return "—"
    if us < 1000:
        return f"{us:.0f} µs"
    if us < 1_000_000:
        return f"{us / 1000:.2f} ms"
    return f"{us / 1_000_000:.2f} s"


def fmt_ms(ms):
    return "—" if ms is None else f"{ms:.1f} ms"


def fmt_rps(rps):
    return f"{rps:,.0f}"


def ratio(a, b):
    return None if not a or not b else a / b


def fmt_ratio(r):
    return "—" if r is None else f"{r:.2f}"


def rps(run):
    return run["requests"] / (run["duration_us"] / 1e6)


def errors(run):
    return sum(run[k] for k in ("errors_connect", "errors_read", "errors_write", "errors_status", "errors_timeout"))


def aggregate(runs):
    """Throughput over all rounds pooled; latency percentiles: median of the rounds'."""
    if not runs:
        return None
    return {
        "rps": sum(r["requests"] for r in runs) / (sum(r["duration_us"] for r in runs) / 1e6),
        "p50": statistics.median(r["lat_p50_us"] for r in runs),
        "p99": statistics.median(r["lat_p99_us"] for r in runs),
        # Exact mean time per request of each run (elapsed / requests), median over the rounds.
        "t_req": statistics.median(r["duration_us"] / r["requests"] for r in runs),
        "errors": sum(errors(r) for r in runs),
        "status_errors": sum(r["errors_status"] for r in runs),
        "requests": sum(r["requests"] for r in runs),
    }


def verdict(paired, at_least_one, goal=1.0):
    """From the per-round paired ratios: met / NOT met, or a tie when they straddle the goal."""
    if not paired:
        return "—"
    rounds = ", ".join(f"{x:.2f}" for x in paired)
    if min(paired) <= goal <= max(paired):
        return f"tie: rounds straddle {goal:.2f} ({rounds})"
    med = statistics.median(paired)
    met = med >= goal if at_least_one else med <= goal
    return f"{'met' if met else 'NOT met'} (rounds {rounds})"


def bulkhead_log_summary(path):
    statuses = Counter()
    reasons = Counter()
    levels = Counter()
    other = []
    status_re = re.compile(r'"status":(\d+)')
    reason_re = re.compile(r'"reason":"([^"]*)"')
    level_re = re.compile(r'"level":"([A-Z]+)"')
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", errors="replace") as f:
            for line in f:
                lv = level_re.search(line)
                levels[lv.group(1) if lv else "?"] += 1
                if '"bulkhead::access"' in line:
                    st = status_re.search(line)
                    statuses[st.group(1) if st else "?"] += 1
                    rs = reason_re.search(line)
                    if rs:
                        reasons[rs.group(1)] += 1
                elif (lv and lv.group(1) in ("WARN", "ERROR")) and len(other) < 10:
                    other.append(line.strip()[:300])
    except FileNotFoundError:
        return None
    return statuses, reasons, levels, other


def main():
    raw_path, meta_path, log_path = sys.argv[1:4]
    results_dir = sys.argv[4] if len(sys.argv) > 4 else None
    meta = json.load(open(meta_path))
    rows = [json.loads(l) for l in open(raw_path) if l.strip()]
    load = [r for r in rows if r["kind"] == "load"]
    cold = {r["server"]: r for r in rows if r["kind"] == "cold"}

    def runs(phase, server):
        return sorted((r for r in load if r["phase"] == phase and r["server"] == server), key=lambda r: r["round"])

    def paired(phase, key, a="bulkhead", b="wasmtime"):
        out = []
        for x, y in zip(runs(phase, a), runs(phase, b)):
            if key(y):
                out.append(key(x) / key(y))
        return out

    def per_request_us(agg):
        """Exact mean time per request in a closed loop (elapsed / requests), median of the rounds."""
        return agg["t_req"]

    def signed_us(d):
        return ("+" if d >= 0 else "−") + fmt_us(abs(d))

    C = meta["connections"]
    servers = ("bulkhead", "wasmtime", "bulkhead-nolog")
    hi = {s: aggregate(runs("load", s)) for s in servers}
    lo = {s: aggregate(runs("seq", s)) for s in servers}
    tp_pairs = paired("load", rps)
    p99_pairs = paired("load", lambda r: r["lat_p99_us"])
    out = []
    w = out.append

    w(f"# Bulkhead vs `wasmtime serve` — {meta['started']}")
    w("")
    w(f"Same `hello` component, same limits (timeout {meta['timeout']}, memory {meta['memory_mib']} MiB), "
      f"both on loopback, measured in the same run. Ratios are bulkhead / wasmtime serve.")
    w("")
    w("## Summary")
    w("")
    w("| measure | bulkhead | wasmtime serve | bulkhead / wasmtime | target | verdict |")
    w("|---|---:|---:|---:|---|---|")
    if hi["bulkhead"] and hi["wasmtime"]:
        b, m = hi["bulkhead"], hi["wasmtime"]
        w(f"| throughput, {C} connections (req/s) | {fmt_rps(b['rps'])} | {fmt_rps(m['rps'])} | "
          f"**{fmt_ratio(ratio(b['rps'], m['rps']))}** | ≥ {THROUGHPUT_GOAL:.2f} | {verdict(tp_pairs, True, THROUGHPUT_GOAL)} |")
        w(f"| p50 latency, {C} connections ¹ | {fmt_us(b['p50'])} | {fmt_us(m['p50'])} | "
          f"{fmt_ratio(ratio(b['p50'], m['p50']))} | — | |")
        w(f"| p99 latency, {C} connections ¹ | {fmt_us(b['p99'])} | {fmt_us(m['p99'])} | "
          f"**{fmt_ratio(ratio(b['p99'], m['p99']))}** | ≤ {P99_GOAL:.2f} | {verdict(p99_pairs, False, P99_GOAL)} |")
    if lo["bulkhead"] and lo["wasmtime"]:
        b, m = lo["bulkhead"], lo["wasmtime"]
        tb, tm = per_request_us(b), per_request_us(m)
        w(f"| time per request at concurrency 1 (elapsed / requests) ² | {fmt_us(tb)} | {fmt_us(tm)} | "
          f"{fmt_ratio(ratio(tb, tm))} | — | bulkhead {signed_us(tb - tm)} per request |")
        w(f"| p50 / p99 latency at concurrency 1 ¹ ² | {fmt_us(b['p50'])} / {fmt_us(b['p99'])} | "
          f"{fmt_us(m['p50'])} / {fmt_us(m['p99'])} | {fmt_ratio(ratio(b['p50'], m['p50']))} / "
          f"{fmt_ratio(ratio(b['p99'], m['p99']))} | — | |")
    cb, cw, cc = cold.get("bulkhead"), cold.get("wasmtime-cwasm"), cold.get("wasmtime-compile")
    if cb and cw:
        n = len(cb["runs_ms"])
        w(f"| cold start to first 200, median of {n} ³ | {fmt_ms(cb['median_ms'])} | {fmt_ms(cw['median_ms'])} | "
          f"{fmt_ratio(ratio(cb['median_ms'], cw['median_ms']))} | ≤ {COLD_GOAL:.2f} | |")
    if cb and cc:
        w(f"| cold start, wasmtime compiling at start (info) ⁴ | {fmt_ms(cb['median_ms'])} | {fmt_ms(cc['median_ms'])} | "
          f"{fmt_ratio(ratio(cb['median_ms'], cc['median_ms']))} | — | |")
    eb = sum(errors(r) for r in load if r["server"] == "bulkhead")
    ew = sum(errors(r) for r in load if r["server"] == "wasmtime")
    sb = sum(r["errors_status"] for r in load if r["server"] == "bulkhead")
    sw = sum(r["errors_status"] for r in load if r["server"] == "wasmtime")
    w(f"| errors in all measured load runs (non-2xx/3xx; socket) | {sb}; {eb - sb} | {sw}; {ew - sw} | — | 0 | "
      f"{'met' if eb == 0 else 'NOT met'} |")
    n_ = hi.get("bulkhead-nolog")
    if n_ and hi["wasmtime"]:
        m = hi["wasmtime"]
        pairs = paired("load", rps, "bulkhead-nolog")
        w(f"| *info: bulkhead with its access log off (`BULKHEAD_LOG=warn`), throughput, {C} connections* | "
          f"{fmt_rps(n_['rps'])} | {fmt_rps(m['rps'])} | {fmt_ratio(ratio(n_['rps'], m['rps']))} | — | "
          f"rounds {', '.join(f'{x:.2f}' for x in pairs)} |")
        w(f"| *info: the same, p99 latency, {C} connections* | {fmt_us(n_['p99'])} | {fmt_us(m['p99'])} | "
          f"{fmt_ratio(ratio(n_['p99'], m['p99']))} | — | |")
        ln, lm = lo.get("bulkhead-nolog"), lo.get("wasmtime")
        if ln and lm:
            tn, tm = per_request_us(ln), per_request_us(lm)
            w(f"| *info: the same, time per request at concurrency 1* | {fmt_us(tn)} | {fmt_us(tm)} | "
              f"{fmt_ratio(ratio(tn, tm))} | — | bulkhead {signed_us(tn - tm)} per request |")
    w("")
    w("¹ wrk's latency percentiles are corrected for coordinated omission: before reporting, wrk "
      "(`stats_correct`) adds, for every response slower than twice the mean interval between requests on "
      "a connection, the samples that requests queued behind it would have shown. Stalls therefore weigh "
      "more in p99 than in a raw list of response times. Both servers get the same treatment. "
      "p50 and p99 are the median over the rounds.")
    w("")
    w(f"² Estimate of the per-request cost, instantiation included: one connection, one request at a time "
      f"({meta['seq_duration']} s per run), both servers creating a fresh instance for every request. The time "
      f"per request (run time / requests of each run, exact; median of the rounds) is instantiation + the handler + the HTTP round trip on "
      f"loopback + wrk's own share (+ for bulkhead its gateway: routing, admission, limits, access log). "
      f"It is an upper bound on instantiation, not a direct measure of it; the difference between the two "
      f"servers is what bulkhead adds per request.")
    w("")
    w("³ Process spawn to the first `200` on `GET /`, polled every ~1 ms, warm caches: bulkhead with its compile "
      "cache (APP_DIR/.bulkhead/dev/compile-cache) filled by a discarded first run; wasmtime serve given the same "
      "component precompiled by `wasmtime compile` (same flags) and `--allow-precompiled`. "
      f"Runs alternate between the servers; {meta['cold_warmup']} discarded warm-up run(s) each.")
    if cc:
        w("")
        w("⁴ For information: `wasmtime serve hello.wasm -C cache=n`, compiling with Cranelift at every start; "
          "this is what bulkhead's compile cache saves.")
    w("")

    w("## Every measured run, in the order run (servers alternate)")
    w("")
    w("| phase | round | server | req/s | p50 ¹ | p90 ¹ | p99 ¹ | max | non-2xx | socket errors |")
    w("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in load:
        phase = f"{r['connections']} conn" if r["phase"] == "load" else "1 conn"
        w(f"| {phase} | {r['round']} | {r['server']} | {fmt_rps(rps(r))} | {fmt_us(r['lat_p50_us'])} | "
          f"{fmt_us(r['lat_p90_us'])} | {fmt_us(r['lat_p99_us'])} | {fmt_us(r['lat_max_us'])} | "
          f"{r['errors_status']} | {errors(r) - r['errors_status']} |")
    w("")
    if tp_pairs:
        seq_pairs = paired("seq", lambda r: r["duration_us"] / r["requests"])
        w("Per-round ratios bulkhead / wasmtime: at %d connections, throughput %s and p99 %s; "
          "at concurrency 1, time per request %s." % (
            C, ", ".join(f"{x:.2f}" for x in tp_pairs), ", ".join(f"{x:.2f}" for x in p99_pairs),
            ", ".join(f"{x:.2f}" for x in seq_pairs)))
        w("")
    if cold:
        w("Cold start runs (ms): " + "; ".join(
            f"{k}: {', '.join(f'{t:.1f}' for t in v['runs_ms'])}" for k, v in cold.items()) + ".")
        w("")

    w("## Bulkhead's log")
    w("")
    summary = bulkhead_log_summary(log_path)
    if summary is None:
        w("No log file found.")
    else:
        statuses, reasons, levels, other = summary
        w(f"From `{meta['bulkhead_log_name']}` (JSON lines on stderr, all phases including warm-ups): "
          f"access-log statuses {dict(sorted(statuses.items())) or '{}'}; "
          f"refusal reasons {dict(reasons) or 'none'}; lines by level {dict(levels)}.")
        if other:
            w("")
            w("Non-access warnings/errors (first 10):")
            w("")
            w("```")
            out.extend(other)
            w("```")
    w("")

    if results_dir:
        write_targets(results_dir, tp_pairs, p99_pairs, cb, cw, meta)
        w("## Issue 17 targets")
        w("")
        w("Every target's measured value (median of the runs) and pass/miss, from "
          f"`{os.path.join(results_dir, 'targets')}`; a target whose script did not run is *not measured*.")
        w("")
        w(targets.table(results_dir))
        w("")

    w("## Setup")
    w("")
    for k, label in (
        ("bulkhead_version", "bulkhead"),
        ("git", "bulkhead commit"),
        ("wasmtime_version", "peer"),
        ("wrk_version", "load generator"),
        ("load", "load"),
        ("bulkhead_limits", "bulkhead [limits]"),
        ("wasmtime_opts", "wasmtime serve flags"),
        ("machine", "machine"),
        ("loadavg_before", "load average before"),
        ("loadavg_after", "load average after"),
    ):
        if k in meta:
            w(f"- {label}: {meta[k]}")
    w("")
    sys.stdout.write("\n".join(out))


def write_targets(results_dir, tp_pairs, p99_pairs, cb, cw, meta):
    """bench/run's own targets: per-round ratios, median of the rounds."""

    class A:
        pass

    def put(tid, target, goal, runs, note):
        a = A()
        a.dir, a.id, a.target, a.goal, a.unit, a.runs, a.note, a.rows, a.pass_ = (
            results_dir, tid, target, goal, "ratio", runs, note, None, None)
        targets.write(a)

    load = meta.get("load", "")
    if tp_pairs:
        put("hello-throughput", "hello throughput with every default control on, bulkhead / wasmtime serve",
            f">= {THROUGHPUT_GOAL}", tp_pairs, f"per-round ratio of req/s, servers alternating; {load}")
    if p99_pairs:
        put("hello-p99", "hello p99 latency, bulkhead / wasmtime serve", f"<= {P99_GOAL}", p99_pairs,
            f"per-round ratio of wrk's p99; {load}")
    if cb and cw:
        pairs = [b / w for b, w in zip(cb["runs_ms"], cw["runs_ms"]) if w]
        put("cold-start", "cold start to first 200 (warm compile cache vs precompiled .cwasm), bulkhead / wasmtime serve",
            f"<= {COLD_GOAL}", pairs,
            f"spawn to first 200, alternating runs, ratio per pair of runs; medians {cb['median_ms']:.1f} vs "
            f"{cw['median_ms']:.1f} ms")


if __name__ == "__main__":
    main()
