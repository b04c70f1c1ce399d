#!/usr/bin/env python3
"""Instructions per request of each pipeline stage (issue 17), by callgrind.

    irstages.py SPEC.json RAW.jsonl

SPEC: {"bulkhead": PATH, "log_dir": DIR, "requests": 400, "warmup": 100,
       "windows": 2, "native_requests": 3000,
       "variants": [{"name", "app", "path", "env": {}, "headers": [],
                     "bin": PATH (optional: another build, for an A/B)}]}

Wall and CPU time on this shared 2-core VM cannot tell a 2 µs stage from
noise (bench/costs' A/A row moves by ±4 µs). Instructions can: valgrind's
callgrind counts every instruction the server executes in user space, the
same count for the same binary and inputs whatever else the machine does.

For each variant, one `bulkhead serve` runs under callgrind (the app must be
small enough for valgrind to map: `[limits] max_instances = 1` keeps the
pooling allocator's reservation at about 16 GiB). A fixed client (one
keep-alive connection, one request at a time, the same bytes every time)
sends `warmup` requests, then callgrind's counters are zeroed
(`callgrind_control -z`), `requests` requests are sent and the counters are
dumped (`callgrind_control -d`): instructions per request = the dump's total
/ `requests`, over every thread (the log writer's and the audit writer's
work included). That window is repeated `windows` times: the figures agree
to well under 1 % (shown in the table), which is the method's noise.

To state the counts in time, the first variant ("base", hello with every
control on) is also run natively with the same client for
`native_requests` requests: its server CPU per request (user + system from
/proc) gives the exchange rate, instructions per µs of server CPU. Kernel
time has no instructions in the count but is in the CPU time, so the rate is
low and a stage's µs figure high: conservative.

One JSON line per variant and window goes to RAW.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpuload import cpu_seconds, free_port, say  # noqa: E402


class Client:
    """One keep-alive HTTP/1.1 connection; each request's answer is read
    whole (by Content-Length) before the next is sent."""

    def __init__(self, port, path, headers):
        self.port = port
        head = "".join(f"{h}\r\n" for h in headers)
        self.request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}\r\n".encode()
        self.sock = None
        self.buf = b""

    def connect(self):
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def one(self):
        if self.sock is None:
            self.connect()
        self.sock.sendall(self.request)
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit("the server closed the connection")
            self.buf += chunk
        head, rest = self.buf.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ", 2)[1])
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if m:
            length = int(m.group(1))
            rest = self.fill(rest, length)
            self.buf = rest[length:]
        elif re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
            # Chunk sizes until the last (0) chunk and its empty trailer.
            while True:
                while b"\r\n" not in rest:
                    rest = self.fill(rest, len(rest) + 1)
                size_line, rest = rest.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                rest = self.fill(rest, size + 2)
                rest = rest[size + 2:]
                if size == 0:
                    break
            self.buf = rest
        else:
            raise SystemExit(f"an answer without a length: {head!r}")
        if re.search(rb"(?im)^connection:\s*close", head):
            self.sock.close()
            self.sock = None
        return status

    def fill(self, data, length):
        while len(data) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit("the server closed the connection mid-body")
            data += chunk
        return data

    def many(self, n, expect):
        for _ in range(n):
            got = self.one()
            if got != expect:
                raise SystemExit(f"answered {got}, expected {expect}")

    def close(self):
        if self.sock is not None:
            self.sock.close()


def wait_ready(p, port, v, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if p.poll() is not None:
            return False
        try:
            c = Client(port, v["path"], v.get("headers", []))
            c.connect()
            c.one()
            c.close()
            return True
        except (OSError, SystemExit, IndexError, ValueError):
            time.sleep(0.5)
    return False


def total_ir(path):
    """The `summary:` (or `totals:`) Ir of a callgrind dump."""
    summary = None
    with open(path) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                summary = int(line.split()[1])
    if summary is None:
        raise SystemExit(f"{path}: no summary line")
    return summary


def callgrind_control(*args):
    out = subprocess.run(["callgrind_control", *args], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"callgrind_control {' '.join(args)}: {out.stdout}{out.stderr}")


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def measure(spec, v, raw):
    port = free_port()
    env = dict(os.environ)
    env.update(v.get("env", {}))
    out_dir = os.path.join(spec["log_dir"], v["name"])
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(out_dir):
        os.remove(os.path.join(out_dir, name))
    log = open(os.path.join(spec["log_dir"], f"{v['name']}.stderr.log"), "w")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/callgrind.out.%p",
           "--dump-line=no", "--compress-strings=no",
           v.get("bin", spec["bulkhead"]), "serve", v["app"], "--listen", f"127.0.0.1:{port}", "--admin-listen", "off"]
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        if not wait_ready(p, port, v, 600):
            raise SystemExit(f"{v['name']}: the server under callgrind did not answer; see {log.name}")
        client = Client(port, v["path"], v.get("headers", []))
        expect = v.get("expect", 200)
        client.many(spec["warmup"], expect)
        results = []
        for window in range(1, spec["windows"] + 1):
            callgrind_control("-z", str(p.pid))
            started = time.time()
            client.many(spec["requests"], expect)
            seconds = time.time() - started
            before = set(os.listdir(out_dir))
            callgrind_control("-d", f"window-{window}", str(p.pid))
            dumps = sorted(set(os.listdir(out_dir)) - before)
            if not dumps:
                raise SystemExit(f"{v['name']}: callgrind wrote no dump")
            ir = sum(total_ir(os.path.join(out_dir, d)) for d in dumps)
            per = ir / spec["requests"]
            results.append(per)
            raw.write(json.dumps({"variant": v["name"], "window": window, "requests": spec["requests"],
                                  "ir": ir, "ir_per_request": per, "wall_s": seconds}) + "\n")
            raw.flush()
            say(f"{v['name']:20s} window {window}: {per:12,.0f} instructions/request")
        client.close()
        return results
    finally:
        stop(p)
        log.close()


def native(spec, v, raw):
    """Server CPU µs per request of `v` run natively with the same client."""
    port = free_port()
    env = dict(os.environ)
    env.update(v.get("env", {}))
    log = open(os.path.join(spec["log_dir"], f"{v['name']}.native.stderr.log"), "w")
    p = subprocess.Popen([spec["bulkhead"], "serve", v["app"], "--listen", f"127.0.0.1:{port}",
                          "--admin-listen", "off"], stdin=subprocess.DEVNULL, stdout=log,
                         stderr=subprocess.STDOUT, env=env)
    try:
        if not wait_ready(p, port, v, 120):
            raise SystemExit(f"{v['name']}: the native server did not answer")
        client = Client(port, v["path"], v.get("headers", []))
        client.many(spec["warmup"] * 5, v.get("expect", 200))
        runs = []
        for rnd in range(1, 4):
            before = cpu_seconds(p.pid)
            client.many(spec["native_requests"], v.get("expect", 200))
            us = (cpu_seconds(p.pid) - before) / spec["native_requests"] * 1e6
            runs.append(us)
            raw.write(json.dumps({"variant": v["name"], "native_round": rnd,
                                  "requests": spec["native_requests"], "cpu_us_per_request": us}) + "\n")
            raw.flush()
            say(f"{v['name']:20s} native round {rnd}: {us:7.2f} µs server CPU/request")
        client.close()
        return runs
    finally:
        stop(p)
        log.close()


def main():
    spec = json.load(open(sys.argv[1]))
    raw = open(sys.argv[2], "a")
    os.makedirs(spec["log_dir"], exist_ok=True)
    summary = {}
    # Under valgrind the CPU reports other features, so the component is
    # compiled again (minutes) at each app's first start under callgrind;
    # a native start prunes that cache entry, so the native run is last.
    for v in spec["variants"]:
        summary[v["name"]] = measure(spec, v, raw)
    summary["native"] = native(spec, spec["variants"][0], raw)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
