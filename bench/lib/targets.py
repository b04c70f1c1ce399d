#!/usr/bin/env python3
"""Issue 17's targets: one JSON file per target under RESULTS/targets/.

    targets.py write DIR --id ID --target TEXT --goal "<= 2" --unit us \
        --runs 1.2 1.4 1.1 --note TEXT [--rows ROWS.json]
    targets.py table DIR            # Markdown table of every target
    targets.py check DIR            # exit 1 if any target is missed or not measured

A file holds {"id", "target", "goal", "measured", "unit", "runs", "pass",
"note"} (and "rows" for a table such as stage-costs); `measured` is the
median of `runs`. The table lists every expected target: a missing file is
"not measured", never a pass.
"""

import argparse
import json
import os
import statistics
import sys

# Every target of issue 17, in the order the table shows them, with the
# goal shown when no script measured it.
EXPECTED = [
    ("hello-throughput", "hello throughput, bulkhead / wasmtime serve", ">= 1.25"),
    ("hello-p99", "hello p99 latency, bulkhead / wasmtime serve", "<= 1.0"),
    ("cold-start", "cold start to first 200, bulkhead / wasmtime serve (warm caches)", "<= 1.0"),
    ("stage-costs", "CPU per request each stage adds (auth and body validation excepted), by instruction count", "<= 2 us"),
    ("stage-costs-cpu", "informational: the same by CPU time (noise about as large as the goal)", "informational"),
    ("jwt-es256", "JWT ES256 verification p50", "<= 40"),
    ("jwt-eddsa", "JWT EdDSA verification p50", "<= 30"),
    ("refusal-ratelimit", "admitted hello CPU / rate-limited refusal CPU", ">= 10"),
    ("refusal-overload", "admitted hello CPU / admission-full refusal CPU", ">= 10"),
    ("refusal-unauthenticated", "admitted hello CPU / unauthenticated refusal CPU", ">= 10"),
    ("refusal-floor", "informational: admitted hello CPU / a bare hyper server's fixed 429", "informational"),
    ("python-call-cost", "Python call cost", "see bench/lang"),
    ("js-call-cost", "JavaScript call cost", "see bench/lang"),
    ("scaling", "scaling with cores", "see bench/scaling"),
]


def parse_goal(goal):
    """'<= 2' -> ('<=', 2.0); anything else -> (None, None)."""
    parts = goal.split()
    if len(parts) >= 2 and parts[0] in ("<=", ">=", "<", ">"):
        try:
            return parts[0], float(parts[1])
        except ValueError:
            pass
    return None, None


def meets(value, goal):
    op, bound = parse_goal(goal)
    if op is None or value is None:
        return None
    return {"<=": value <= bound, ">=": value >= bound, "<": value < bound, ">": value > bound}[op]


def write(args):
    runs = [float(x) for x in args.runs]
    measured = statistics.median(runs) if runs else None
    record = {
        "id": args.id,
        "target": args.target,
        "goal": args.goal,
        "measured": measured,
        "unit": args.unit,
        "runs": runs,
        "pass": meets(measured, args.goal) if args.pass_ is None else args.pass_ == "yes",
        "note": args.note,
    }
    if args.rows:
        with open(args.rows) as f:
            record["rows"] = json.load(f)
    os.makedirs(os.path.join(args.dir, "targets"), exist_ok=True)
    path = os.path.join(args.dir, "targets", f"{args.id}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(path + ".tmp", path)
    print(f"[targets] {args.id}: {fmt(measured)} {args.unit} (goal {args.goal}): "
          f"{verdict(record)}", file=sys.stderr)


def fmt(x):
    if x is None:
        return "—"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def verdict(record):
    if record is None:
        return "not measured"
    if record.get("pass") is True:
        return "pass"
    if record.get("pass") is False:
        return "MISS"
    return "info"


def load(directory):
    found = {}
    tdir = os.path.join(directory, "targets")
    if os.path.isdir(tdir):
        for name in sorted(os.listdir(tdir)):
            if name.endswith(".json"):
                try:
                    with open(os.path.join(tdir, name)) as f:
                        record = json.load(f)
                    found[record.get("id", name[:-5])] = record
                except (OSError, ValueError) as e:
                    print(f"[targets] unreadable {name}: {e}", file=sys.stderr)
    return found


def table(directory):
    found = load(directory)
    ids = [i for i, _, _ in EXPECTED] + sorted(k for k in found if k not in {i for i, _, _ in EXPECTED})
    labels = {i: (t, g) for i, t, g in EXPECTED}
    out = ["| target | goal | measured (median) | runs | result |", "|---|---|---:|---|---|"]
    for i in ids:
        r = found.get(i)
        if r is None:
            t, g = labels.get(i, (i, "—"))
            out.append(f"| `{i}`: {t} | {g} | — | — | not measured |")
            continue
        unit = r.get("unit", "")
        unit = "" if unit == "ratio" else f" {unit}"
        runs = r.get("runs") or []
        spread = ", ".join(fmt(x) for x in runs)
        out.append(f"| `{i}`: {r.get('target', '')} | {r.get('goal', '')}{unit} | "
                   f"{fmt(r.get('measured'))}{unit} | {spread} | {verdict(r)} |")
    lines = ["\n".join(out)]
    for i in ids:
        r = found.get(i)
        if r and r.get("rows"):
            lines.append(f"\n`{i}` rows:\n")
            lines.append(rows_table(r["rows"]))
    notes = [f"- `{i}`: {found[i]['note']}" for i in ids if i in found and found[i].get("note")]
    if notes:
        lines.append("\nMethods:\n\n" + "\n".join(notes))
    return "\n".join(lines)


def rows_table(rows):
    keys = list(rows[0].keys())
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        out.append("| " + " | ".join(fmt(v) if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("dir")
    w.add_argument("--id", required=True)
    w.add_argument("--target", required=True)
    w.add_argument("--goal", required=True)
    w.add_argument("--unit", required=True)
    w.add_argument("--runs", nargs="*", default=[])
    w.add_argument("--note", default="")
    w.add_argument("--rows")
    w.add_argument("--pass", dest="pass_", choices=["yes", "no"])
    t = sub.add_parser("table")
    t.add_argument("dir")
    c = sub.add_parser("check")
    c.add_argument("dir")
    args = p.parse_args()
    if args.cmd == "write":
        write(args)
    elif args.cmd == "table":
        print(table(args.dir))
    else:
        found = load(args.dir)
        bad = [i for i, _, g in EXPECTED if g != "informational" and verdict(found.get(i)) != "pass"]
        print("\n".join(f"{i}: {verdict(found.get(i))}" for i in bad) or "every target passes")
        sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
