"""Sequential keep-alive latency of two Bulkhead nodes, alternately (bench/cluster).

Usage: cluster_latency.py LOCAL_ADDR SHARED_ADDR N ROUNDS
Prints a Markdown table: per round, p50/p99 of each node in µs, the p99 the
shared (Redis) limiter adds, and the ratio shared / local; then the median
over rounds against the issue-16 target (≤ 150 µs added at p99).
"""

import http.client
import statistics
import sys
import time

TARGET_US = 150.0


def sample(addr: str, n: int) -> list[float]:
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    out = []
    for i in range(n + n // 10):
        start = time.perf_counter_ns()
        conn.request("GET", "/")
        reply = conn.getresponse()
        reply.read()
        elapsed = (time.perf_counter_ns() - start) / 1000.0
        if reply.status != 200:
            raise SystemExit(f"{addr}: status {reply.status}")
        if i >= n // 10:  # the first tenth warms up
            out.append(elapsed)
    conn.close()
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1)))]


def main() -> None:
    local, shared, n, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rows = []
    print("| round | local p50 | local p99 | shared p50 | shared p99 | added p99 | p99 ratio shared/local |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in range(1, max(rounds, 3) + 1):
        # Alternate the order so drift on the shared machine hits both.
        if r % 2:
            a, b = sample(local, n), sample(shared, n)
        else:
            b, a = sample(shared, n), sample(local, n)
        row = (pct(a, 0.5), pct(a, 0.99), pct(b, 0.5), pct(b, 0.99))
        rows.append(row)
        print(
            f"| {r} | {row[0]:.0f} µs | {row[1]:.0f} µs | {row[2]:.0f} µs | {row[3]:.0f} µs "
            f"| {row[3] - row[1]:.0f} µs | {row[3] / row[1]:.2f} |"
        )
    added = statistics.median(r[3] - r[1] for r in rows)
    ratio = statistics.median(r[3] / r[1] for r in rows)
    verdict = "meets" if added <= TARGET_US else "misses"
    print()
    print(
        f"Median over {len(rows)} rounds: the shared limiter adds {added:.0f} µs at p99 "
        f"(ratio {ratio:.2f}); target ≤ {TARGET_US:.0f} µs: {verdict}. Two scopes per "
        "request (the app's per-caller limit and the function's), in one Redis script call."
    )


if __name__ == "__main__":
    main()
