#!/usr/bin/python3
"""Slow-reader client: N connections each GET /bytes/SIZE from a proxy and read it at RATE
bytes/s, while a few normal keep-alive clients keep requesting small responses. Samples the
proxy's VmRSS and prints one JSON line: baseline, peak and final RSS (KiB) and the growth.
Bounded in time (--max-seconds) and in connections; traffic goes to 127.0.0.1 only."""
import argparse
import json
import select
import socket
import sys
import threading
import time


def vmrss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def normal_client(port, stop, counts):
    """Keep-alive GET / in a loop until stop is set; counts completed responses."""
    while not stop.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = b""
            while not stop.is_set():
                s.sendall(b"GET /bytes/2048 HTTP/1.1\r\nHost: bench\r\n\r\n")
                while True:
                    end = buf.find(b"\r\n\r\n")
                    if end >= 0:
                        head = buf[:end].lower()
                        i = head.find(b"content-length:")
                        n = int(head[i + 15:].split(b"\r\n")[0]) if i >= 0 else 0
                        if len(buf) >= end + 4 + n:
                            buf = buf[end + 4 + n:]
                            break
                    d = s.recv(65536)
                    if not d:
                        raise OSError("closed")
                    buf += d
                counts[0] += 1
            s.close()
        except OSError:
            counts[1] += 1
            time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True, help="the proxy process to sample")
    ap.add_argument("--conns", type=int, default=200)
    ap.add_argument("--size", type=int, default=2 << 20, help="bytes each slow reader downloads")
    ap.add_argument("--rate", type=int, default=100 * 1024, help="bytes/s per slow reader")
    ap.add_argument("--rcvbuf", type=int, default=65536, help="client SO_RCVBUF")
    ap.add_argument("--normal", type=int, default=2, help="normal keep-alive clients")
    ap.add_argument("--max-seconds", type=float, default=120)
    a = ap.parse_args()

    stop = threading.Event()
    counts = [0, 0]
    normals = [threading.Thread(target=normal_client, args=(a.port, stop, counts), daemon=True)
               for _ in range(a.normal)]
    time.sleep(0.2)
    base = vmrss_kb(a.pid)
    for t in normals:
        t.start()
    socks = {}
    for _ in range(a.conns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, a.rcvbuf)
        s.connect(("127.0.0.1", a.port))
        s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n" % a.size)
        s.setblocking(False)
        socks[s.fileno()] = [s, 0, 0.0]  # socket, bytes read, read credit
    t0 = last = time.monotonic()
    peak = base
    samples = 0
    quantum = 0.02
    while socks and time.monotonic() - t0 < a.max_seconds:
        now = time.monotonic()
        for st in socks.values():
            st[2] = min(st[2] + a.rate * (now - last), a.rate * 0.1)
        last = now
        ready = [fd for fd, st in socks.items() if st[2] >= 1]
        if ready:
            r, _, _ = select.select(ready, [], [], quantum)
            for fd in r:
                st = socks[fd]
                try:
                    d = st[0].recv(int(st[2]))
                except BlockingIOError:
                    continue
                except OSError:
                    d = b""
                if not d:
                    st[0].close()
                    del socks[fd]
                    continue
                st[1] += len(d)
                st[2] -= len(d)
        time.sleep(quantum)
        peak = max(peak, vmrss_kb(a.pid))
        samples += 1
    unfinished = len(socks)
    for st in socks.values():
        st[0].close()
    stop.set()
    for t in normals:
        t.join(5)
    final = vmrss_kb(a.pid)
    print(json.dumps({"base_kb": base, "peak_kb": peak, "final_kb": final, "growth_kb": peak - base,
                      "seconds": round(time.monotonic() - t0, 1), "unfinished": unfinished,
                      "normal_responses": counts[0], "normal_errors": counts[1], "samples": samples}))
    return 1 if unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
