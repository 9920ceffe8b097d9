#!/usr/bin/python3
"""Slow readers for bench.py: COUNT connections each GET /bytes/BYTES through the proxy and read it
at about RATE bytes/s (a small receive buffer, so the proxy - not this client's kernel - holds what
is not read yet), for at most SECONDS; prints one JSON line with what they read."""
import argparse
import json
import selectors
import socket
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--bytes", type=int, default=10 * 1024 * 1024)
    ap.add_argument("--rate", type=int, default=100 * 1024)
    ap.add_argument("--seconds", type=float, default=20)
    a = ap.parse_args()
    sel = selectors.DefaultSelector()
    socks = []
    req = f"GET /bytes/{a.bytes} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    for _ in range(a.count):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.connect(("127.0.0.1", a.port))
        s.sendall(req)
        s.setblocking(False)
        socks.append(s)
    got = [0] * a.count
    t0 = time.monotonic()
    end = t0 + a.seconds
    tick = 0.1
    per_tick = max(1, int(a.rate * tick))
    closed = 0
    while time.monotonic() < end:
        t = time.monotonic()
        allowed = int((t - t0) * a.rate) + per_tick
        for i, s in enumerate(socks):
            if s is None:
                continue
            want = allowed - got[i]
            while want > 0:
                try:
                    d = s.recv(min(want, 65536))
                except BlockingIOError:
                    break
                except OSError:
                    d = b""
                if not d:
                    s.close()
                    socks[i] = None
                    closed += 1
                    break
                got[i] += len(d)
                want -= len(d)
        time.sleep(max(0, tick - (time.monotonic() - t)))
    secs = time.monotonic() - t0
    for s in socks:
        if s is not None:
            s.close()
    tot = sum(got)
    print(json.dumps({"count": a.count, "seconds": round(secs, 1), "bytes_read": tot,
                      "per_reader_kb_s": round(tot / a.count / secs / 1024, 1), "closed_early": closed}))


if __name__ == "__main__":
    main()
