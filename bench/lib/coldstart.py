#!/usr/bin/env python3
"""Cold start: wall time from spawning a server process to its first HTTP 200.

Invoked by bench/run with everything it needs in the environment (BULKHEAD,
BENCH_APP, WASMTIME, WASMTIME_OPTS, BENCH_CWASM, BENCH_WASM). For each run it
picks a fresh loopback port, starts the server, polls `GET /` every ~1 ms over
a raw socket (no client library start-up in the measured path), stops the
server and appends one JSON line per run to --out.

The variants alternate run by run (A B C A B C ...) so machine noise is spread
evenly; --warmup runs of each are made first and discarded (they fill the
page cache and, for bulkhead, the compile cache).

Beside the wall time, each run records the server's CPU time (user + system,
every thread, the exited ones included) from spawn to that first 200, read
from the process's CPU clock (clock_getcpuclockid) at the moment the 200
arrives, in nanoseconds: less sensitive to the machine's load than wall time
(issue 17).
"""

import argparse
import ctypes
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time


_LIBC = ctypes.CDLL(None, use_errno=True)


def cpu_ms(pid):
    """CPU time (user + system, all threads, exited ones included) the
    process `pid` has used so far, in ms; None if it cannot be read."""
    clock = ctypes.c_int()
    if _LIBC.clock_getcpuclockid(pid, ctypes.byref(clock)) != 0:
        return None
    try:
        return time.clock_gettime(clock.value) * 1000.0
    except OSError:
        return None


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe(port):
    """The status code of `GET /`, or None if nothing answered yet."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        return None
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while b"\r\n" not in data and len(data) < 4096:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        parts = data.split(b" ", 2)
        if len(parts) >= 2 and parts[0].startswith(b"HTTP/"):
            return int(parts[1])
        return None
    except (OSError, ValueError):
        return None
    finally:
        s.close()


def stop(proc):
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def commands():
    wopts = os.environ["WASMTIME_OPTS"].split()
    bulkhead = os.environ["BULKHEAD"]
    wasmtime = os.environ["WASMTIME"]
    return {
        # Warm compile cache under APP/.bulkhead/dev/compile-cache.
        "bulkhead": lambda addr: [bulkhead, "serve", os.environ["BENCH_APP"], "--listen", addr],
        # For comparing two builds (A/B): BULKHEAD_B serving its own copy of
        # the app, BENCH_APP_B (so neither's state is the other's).
        "bulkhead-b": lambda addr: [
            os.environ.get("BULKHEAD_B", bulkhead), "serve",
            os.environ.get("BENCH_APP_B", os.environ["BENCH_APP"]), "--listen", addr,
        ],
        # The fair peer: code compiled ahead of time by `wasmtime compile`.
        "wasmtime-cwasm": lambda addr: [
            wasmtime, "serve", *wopts, "--allow-precompiled", "--addr", addr,
            os.environ["BENCH_CWASM"],
        ],
        # For information only: wasmtime compiling the .wasm at every start.
        "wasmtime-compile": lambda addr: [
            wasmtime, "serve", *wopts, "-C", "cache=n", "--addr", addr,
            os.environ["BENCH_WASM"],
        ],
    }


def one_run(label, make_cmd, log, deadline_s):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    cmd = make_cmd(addr)
    first_status = None
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{label}: server exited with {proc.returncode} before answering; see its log")
            status = probe(port)
            if status == 200:
                wall = (time.perf_counter() - t0) * 1000.0
                return wall, cpu_ms(proc.pid), first_status
            if status is not None and first_status is None:
                first_status = status
            if time.perf_counter() - t0 > deadline_s:
                raise RuntimeError(f"{label}: no HTTP 200 within {deadline_s}s")
            time.sleep(0.001)
    finally:
        stop(proc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--variants", default="bulkhead,wasmtime-cwasm,wasmtime-compile")
    ap.add_argument("--log-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--deadline", type=float, default=60.0)
    args = ap.parse_args()

    table = commands()
    variants = args.variants.split(",")
    logs = {v: open(os.path.join(args.log_dir, f"coldstart-{v}.log"), "ab") for v in variants}
    times = {v: [] for v in variants}
    cpus = {v: [] for v in variants}
    try:
        for i in range(args.warmup + args.runs):
            for v in variants:
                ms, cpu, early = one_run(v, table[v], logs[v], args.deadline)
                measured = i >= args.warmup
                if measured:
                    times[v].append(ms)
                    if cpu is not None:
                        cpus[v].append(cpu)
                tag = f"run {i + 1 - args.warmup}" if measured else f"warm-up {i + 1}"
                note = f" (answered {early} before its first 200)" if early else ""
                cpu_note = f", CPU {cpu:6.1f} ms" if cpu is not None else ""
                print(f"[bench]   cold start {v:17s} {tag:9s}: {ms:8.1f} ms{cpu_note}{note}", file=sys.stderr, flush=True)
                time.sleep(0.2)
    finally:
        for f in logs.values():
            f.close()
    with open(args.out, "a") as out:
        for v in variants:
            out.write(json.dumps({
                "kind": "cold",
                "server": v,
                "runs_ms": [round(t, 2) for t in times[v]],
                "median_ms": round(statistics.median(times[v]), 2),
                "min_ms": round(min(times[v]), 2),
                "max_ms": round(max(times[v]), 2),
                # CPU (user + system) of the server from spawn to its first 200.
                "cpu_runs_ms": [round(t, 2) for t in cpus[v]],
                "cpu_median_ms": round(statistics.median(cpus[v]), 2) if cpus[v] else None,
            }) + "\n")


if __name__ == "__main__":
    main()
