#!/usr/bin/env python3
"""Load generator for bench/overload (issue 11, item 4).

Two modes, both HTTP/1.1 over loopback, one connection per request
(`Connection: close`), standard library only:

  closed URL SECONDS WORKERS
      WORKERS clients call back to back: the server's capacity (req/s) and
      the latency of one request at that concurrency.
  open URL SECONDS RATE SOURCES
      Open loop: requests are started at RATE per second whatever the server
      does (the offered load does not drop when the server slows down, as a
      closed loop's would), from SOURCES loopback addresses 127.0.0.1..N in
      turn (many callers, as an overload from many clients looks).
      Latency is measured from the time a request was due, so a generator
      that falls behind is not hidden (no coordinated omission).

Prints one JSON object: counts by status, admitted (200) requests completed
per second within the window, latency percentiles of the admitted requests,
and admitted completions in each second of the run (to show whether
admission flaps). Status 0: no response within 20 s or a failed connection.
"""

import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

TIMEOUT = 20.0


async def one(host, port, path, source):
    """One GET; returns the status (0 for a failure)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(source, 0) if source else None),
            TIMEOUT,
        )
    except (OSError, asyncio.TimeoutError):
        return 0
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nhost: {host}:{port}\r\nconnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), TIMEOUT)
        parts = data.split(b" ", 2)
        return int(parts[1]) if len(parts) > 2 and parts[0].startswith(b"HTTP/") else 0
    except (OSError, asyncio.TimeoutError, ValueError):
        return 0
    finally:
        writer.close()


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def ms(seconds):
    return None if seconds is None else seconds * 1000


def summarise(results, start, seconds, extra):
    """results: (due_offset_s, status, latency_s). Throughput counts the
    admitted requests that completed within the run's window, so a backlog
    drained after it does not count."""
    by_status = {}
    for _, status, _ in results:
        by_status[str(status)] = by_status.get(str(status), 0) + 1
    admitted = sorted(lat for _, status, lat in results if status == 200)
    per_second = [0] * int(seconds)
    in_window = 0
    for due, status, lat in results:
        done = due + lat
        if status == 200 and done < seconds:
            in_window += 1
            per_second[int(done)] += 1
    out = {
        "seconds": seconds,
        "requests": len(results),
        "by_status": by_status,
        "admitted_per_s": in_window / seconds,
        "p50_ms": ms(percentile(admitted, 0.50)),
        "p99_ms": ms(percentile(admitted, 0.99)),
        "max_ms": ms(admitted[-1]) if admitted else None,
        "admitted_each_second": per_second,
    }
    out.update(extra)
    return out


async def closed(url, seconds, workers):
    u = urlsplit(url)
    results = []
    start = time.monotonic()
    end = start + seconds

    async def worker():
        while time.monotonic() < end:
            t0 = time.monotonic()
            status = await one(u.hostname, u.port, u.path + ("?" + u.query if u.query else ""), None)
            results.append((t0 - start, status, time.monotonic() - t0))

    await asyncio.gather(*(worker() for _ in range(workers)))
    return summarise(results, start, seconds, {"mode": "closed", "workers": workers})


async def open_loop(url, seconds, rate, sources):
    u = urlsplit(url)
    path = u.path + ("?" + u.query if u.query else "")
    results = []
    tasks = []
    start = time.monotonic()
    total = int(seconds * rate)

    async def timed(due, source):
        status = await one(u.hostname, u.port, path, source)
        results.append((due, status, time.monotonic() - (start + due)))

    for i in range(total):
        due = i / rate
        delay = start + due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        source = f"127.0.0.{1 + i % sources}"
        tasks.append(asyncio.create_task(timed(due, source)))
    await asyncio.gather(*tasks)
    lag = max(0.0, time.monotonic() - start - seconds)
    return summarise(
        results, start, seconds, {"mode": "open", "offered_per_s": rate, "sources": sources, "drain_s": lag}
    )


def main():
    mode, url, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    if mode == "closed":
        out = asyncio.run(closed(url, seconds, int(sys.argv[4])))
    elif mode == "open":
        out = asyncio.run(open_loop(url, seconds, float(sys.argv[4]), int(sys.argv[5])))
    else:
        sys.exit(f"unknown mode {mode}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
