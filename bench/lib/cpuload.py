#!/usr/bin/env python3
"""Server CPU time per request (issue 17): bench/costs and bench/refusals.

    cpuload.py SPEC.json RAW.jsonl

SPEC: {"bulkhead": PATH, "summary_lua": PATH, "threads": 1, "connections": 16,
       "seconds": 4, "warmup": 2, "rounds": 3, "log_dir": DIR,
       "variants": [{"name", "app", "path", "env": {}, "headers": [],
                     "expect": 200, "hold": "/s/sse?...", "warm": "/",
                     "cmd": [PATH, "127.0.0.1:{port}"] (optional: another server)}]}

Starts one `bulkhead serve` per variant on its own loopback port, then loads
them alternately, round after round (A B C ... A B C ...), each with
`wrk -tT -cC -dS` (bounded in time, 5 s per-request timeout). Around each
wrk run it reads the server's user + system CPU time from /proc/PID/stat;
CPU per request = that time / requests answered. The load generator's own
CPU (it shares the two cores) is not counted. Every answer must carry the
variant's expected status (wrk counts non-2xx); a variant whose answers are
not all as expected fails the run. One JSON line per measured run goes to
RAW; a summary per variant (median and runs, µs per request) to stdout.
"""

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        # Fields after the command (which may hold spaces) start after ')'.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def status_of(port, path, headers, timeout=2.0):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError:
        return None
    try:
        head = "".join(f"{h}\r\n" for h in headers)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Connection: close\r\n\r\n".encode())
        data = s.recv(64)
        parts = data.split(b" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") else None
    except (OSError, ValueError):
        return None
    finally:
        s.close()


def hold(port, path):
    """A request whose answer streams for a while, kept open: it holds its
    admission place until the server ends the stream or we close it. Sent
    from another loopback address (127.0.0.2), another caller than wrk, so
    wrk is refused because every place is taken (`Full`), not for its share."""
    for _ in range(100):
        s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = s.recv(64)
        if data.startswith(b"HTTP/1.1 200"):
            return s
        # The previous hold's place is not given back yet.
        s.close()
        time.sleep(0.1)
    raise SystemExit(f"hold {path}: {data!r}")


def say(text):
    print(f"[cpuload {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def main():
    spec = json.load(open(sys.argv[1]))
    raw = open(sys.argv[2], "a")
    log_dir = spec["log_dir"]
    os.makedirs(log_dir, exist_ok=True)
    procs = {}
    held = {}
    try:
        for v in spec["variants"]:
            port = free_port()
            env = dict(os.environ)
            env.update(v.get("env", {}))
            log = open(os.path.join(log_dir, f"{v['name']}.stderr.jsonl"), "w")
            # A variant may run another server ("cmd", "{port}" filled in):
            # bench/refusals' floor, a bare hyper server.
            cmd = ([a.replace("{port}", str(port)) for a in v["cmd"]] if v.get("cmd") else
                   [spec["bulkhead"], "serve", v["app"], "--listen", f"127.0.0.1:{port}", "--admin-listen", "off"])
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
            procs[v["name"]] = (p, port, v)
            warm = v.get("warm", v["path"])
            for _ in range(1200):
                if p.poll() is not None:
                    raise SystemExit(f"{v['name']} exited during start-up; see {log_dir}")
                if status_of(port, warm, v.get("warm_headers", v.get("headers", []))) is not None:
                    break
                time.sleep(0.05)
            else:
                raise SystemExit(f"{v['name']} did not answer within 60 s")
            if v.get("hold"):
                held[v["name"]] = hold(port, v["hold"])
            got = status_of(port, v["path"], v.get("headers", []))
            if got != v.get("expect", 200):
                raise SystemExit(f"{v['name']}: GET {v['path']} answered {got}, expected {v.get('expect', 200)}")
            say(f"{v['name']}: pid {p.pid} on port {port}, answers {got}")

        def run(v, seconds):
            p, port, _ = procs[v["name"]]
            cmd = ["wrk", f"-t{spec['threads']}", f"-c{spec['connections']}", f"-d{seconds}s",
                   "--timeout", "5s", "-s", spec["summary_lua"]]
            for h in v.get("headers", []):
                cmd += ["-H", h]
            cmd.append(f"http://127.0.0.1:{port}{v['path']}")
            if v.get("hold"):
                # A fresh hold for every run: the stream ends by its timeout.
                held.pop(v["name"]).close()
                held[v["name"]] = hold(port, v["hold"])
            before = cpu_seconds(p.pid)
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
            after = cpu_seconds(p.pid)
            line = next((l[9:] for l in out.stdout.splitlines() if l.startswith("WRK_JSON ")), None)
            if line is None:
                raise SystemExit(f"wrk against {v['name']}: {out.stdout}{out.stderr}")
            w = json.loads(line)
            return w, after - before

        for v in spec["variants"]:
            run(v, spec["warmup"])
        summary = {}
        for rnd in range(1, spec["rounds"] + 1):
            for v in spec["variants"]:
                w, cpu = run(v, spec["seconds"])
                n = w["requests"]
                bad = w["errors_connect"] + w["errors_read"] + w["errors_write"] + w["errors_timeout"]
                non2xx = w["errors_status"]
                expect_refusal = v.get("expect", 200) >= 300
                wrong = (n - non2xx) if expect_refusal else non2xx
                if n == 0 or bad or wrong:
                    raise SystemExit(f"{v['name']} round {rnd}: {n} requests, {bad} socket errors, "
                                     f"{wrong} answers not {v.get('expect', 200)}")
                us = cpu / n * 1e6
                rate = n / (w["duration_us"] / 1e6)
                raw.write(json.dumps({"variant": v["name"], "round": rnd, "requests": n, "server_cpu_s": cpu,
                                      "cpu_us_per_request": us, "rps": rate, "wrk": w}) + "\n")
                raw.flush()
                summary.setdefault(v["name"], []).append(us)
                say(f"round {rnd} {v['name']:20s} {rate:9,.0f} req/s  {us:7.2f} µs CPU/request")
        print(json.dumps({k: {"median": statistics.median(x), "runs": x} for k, x in summary.items()}))
    finally:
        for s in held.values():
            s.close()
        for p, _, _ in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p, _, _ in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
