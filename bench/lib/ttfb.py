"""Time to first byte of a streamed response, per server, alternating.

For each request: connect, send a GET, and time (from the send) the first
byte of the head and the first byte of the body (the first event). Prints
medians per round and the ratio of the first server's to the second's.
"""
import argparse
import socket
import statistics
import time


def one(addr, path):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = time.perf_counter()
    s.sendall(f"GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n".encode())
    seen = b""
    head_at = body_at = None
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        now = time.perf_counter()
        if head_at is None:
            head_at = now
        seen += chunk
        if body_at is None and b"data: " in seen:
            body_at = now
    end = time.perf_counter()
    s.close()
    if head_at is None or body_at is None or not seen.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"bad answer from {addr}: {seen[:200]!r}")
    return (head_at - start) * 1000, (body_at - start) * 1000, (end - start) * 1000


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", action="append", required=True, help="NAME=HOST:PORT")
    p.add_argument("--path", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=10)
    a = p.parse_args()
    servers = [s.split("=", 1) for s in a.server]
    for name, addr in servers:  # warm-up
        one(addr, a.path)
    ratios = []
    for r in range(1, a.rounds + 1):
        med = {}
        for name, addr in servers:
            times = [one(addr, a.path) for _ in range(a.runs)]
            head = statistics.median(t[0] for t in times)
            first = statistics.median(t[1] for t in times)
            whole = statistics.median(t[2] for t in times)
            med[name] = first
            print(f"[bench-stream]   round {r} {name:9s} head {head:8.2f} ms  first event {first:8.2f} ms  whole {whole:8.1f} ms")
        (n1, _), (n2, _) = servers[0], servers[1]
        ratios.append(med[n1] / med[n2])
        print(f"[bench-stream]   round {r} first-event ratio {n1}/{n2}: {ratios[-1]:.2f}")
    print(f"[bench-stream] first-event ratio, median of rounds: {statistics.median(ratios):.2f} ({', '.join(f'{x:.2f}' for x in ratios)})")


if __name__ == "__main__":
    main()
