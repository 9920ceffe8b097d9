#!/usr/bin/python3
"""Idle keep-alive client for bench.sh: opens N connections to a proxy, does one GET on each,
holds them all idle and reports the proxy's VmRSS growth per connection (bytes). --tls: every
connection is TLS 1.3 (full handshake, certificate not checked, TLS_AES_128_GCM_SHA256)."""
import argparse
import errno
import json
import select
import socket
import ssl
import sys
import time

TLS_CTX = None


def tls_ctx():
    global TLS_CTX
    if TLS_CTX is None:
        TLS_CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        TLS_CTX.check_hostname = False
        TLS_CTX.verify_mode = ssl.CERT_NONE
        TLS_CTX.minimum_version = ssl.TLSVersion.TLSv1_3
    return TLS_CTX


def vmrss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Conn:
    __slots__ = ("sock", "state", "buf", "tries", "sent")

    def __init__(self):
        self.sock = None
        self.state = "new"
        self.buf = b""
        self.tries = 0
        self.sent = 0


def response_done(buf):
    """Returns (complete, status) for one HTTP/1.1 response in buf; (False, 0) if more is needed."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return False, 0
    head = buf[:end].decode("latin-1").split("\r\n")
    parts = head[0].split(" ")
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    body = buf[end + 4:]
    clen = None
    chunked = False
    for h in head[1:]:
        name, _, value = h.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            clen = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        return body.endswith(b"0\r\n\r\n"), status
    if clen is None:
        clen = 0
    return len(body) >= clen, status


def warm_up(host, port, req, count, deadline, tls):
    """A few keep-alive requests so that lazily created state (upstream pool, buffers) exists."""
    s = socket.create_connection((host, port), timeout=max(1.0, deadline - time.monotonic()))
    if tls:
        s = tls_ctx().wrap_socket(s, server_hostname="bench.test")
    try:
        for _ in range(count):
            s.sendall(req)
            buf = b""
            while True:
                data = s.recv(65536)
                if not data:
                    raise RuntimeError("warm-up: connection closed by proxy")
                buf += data
                done, status = response_done(buf)
                if done:
                    if status != 200:
                        raise RuntimeError(f"warm-up: status {status}")
                    break
    finally:
        s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True, help="process whose VmRSS is measured")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--window", type=int, default=256, help="connections in handshake/request at once")
    ap.add_argument("--path", default="/")
    ap.add_argument("--warm", type=int, default=200)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=90.0)
    ap.add_argument("--tls", action="store_true", help="TLS 1.3 connections")
    ap.add_argument("--steps", default="", help="counts below --count (e.g. 2000) where opening pauses "
                    "until all are idle and the RSS is read: the output's steps give the RSS at each")
    a = ap.parse_args()

    deadline = time.monotonic() + a.timeout
    req = (f"GET {a.path} HTTP/1.1\r\nHost: {a.host}:{a.port}\r\nUser-Agent: corral-bench\r\n\r\n"
           ).encode()
    warm_up(a.host, a.port, req, a.warm, deadline, a.tls)
    time.sleep(a.settle)
    rss_before = vmrss_kb(a.pid)

    ep = select.epoll()
    conns = [Conn() for _ in range(a.count)]
    by_fd = {}
    next_new = 0
    active = 0
    idle = 0
    failed = 0
    t0 = time.monotonic()

    def start(c):
        c.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.sock.setblocking(False)
        c.tries += 1
        c.buf = b""
        c.sent = 0
        rc = c.sock.connect_ex((a.host, a.port))
        if rc not in (0, errno.EINPROGRESS):
            raise OSError(rc, "connect")
        c.state = "connecting"
        by_fd[c.sock.fileno()] = c
        ep.register(c.sock.fileno(), select.EPOLLOUT | select.EPOLLIN)

    def drop(c, retry):
        nonlocal active, failed
        fd = c.sock.fileno()
        ep.unregister(fd)
        del by_fd[fd]
        c.sock.close()
        if retry and c.tries < 3:
            start(c)
            return
        c.state = "failed"
        active -= 1
        failed += 1

    targets = sorted(int(x) for x in a.steps.split(",") if x and 0 < int(x) < a.count) + [a.count]
    steps = []
    while idle + failed < a.count:
        if time.monotonic() > deadline:
            print(json.dumps({"error": "timeout", "idle": idle, "failed": failed}))
            return 1
        if idle + failed >= targets[0]:
            time.sleep(a.settle)
            steps.append({"idle": idle, "rss_kb": vmrss_kb(a.pid)})
            targets.pop(0)
        while active < a.window and next_new < targets[0]:
            start(conns[next_new])
            next_new += 1
            active += 1
        for fd, ev in ep.poll(1.0):
            c = by_fd.get(fd)
            if c is None:
                continue
            if c.state == "connecting":
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    drop(c, True)
                    continue
                if a.tls:
                    # The SSLSocket shares the fd (detached from the plain socket object).
                    c.sock = tls_ctx().wrap_socket(c.sock, server_hostname="bench.test",
                                                   do_handshake_on_connect=False)
                    c.state = "handshake"
                else:
                    c.state = "sending"
                    ep.modify(fd, select.EPOLLOUT)
            if c.state == "handshake":
                try:
                    c.sock.do_handshake()
                except ssl.SSLWantReadError:
                    ep.modify(fd, select.EPOLLIN)
                    continue
                except ssl.SSLWantWriteError:
                    ep.modify(fd, select.EPOLLOUT)
                    continue
                except OSError:
                    drop(c, True)
                    continue
                c.state = "sending"
                ep.modify(fd, select.EPOLLOUT)
            if c.state == "sending":
                try:
                    c.sent += c.sock.send(req[c.sent:])
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    continue
                except OSError:
                    drop(c, True)
                    continue
                if c.sent == len(req):
                    c.state = "reading"
                    ep.modify(fd, select.EPOLLIN)
                continue
            if c.state == "reading":
                try:
                    data = c.sock.recv(65536)
                    # Records already decrypted in the SSL object do not wake epoll again.
                    while data and a.tls and c.sock.pending():
                        data += c.sock.recv(65536)
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    continue
                except OSError:
                    drop(c, True)
                    continue
                if not data:
                    drop(c, True)
                    continue
                c.buf += data
                done, status = response_done(c.buf)
                if not done:
                    continue
                if status != 200:
                    drop(c, False)
                    continue
                c.state = "idle"
                c.buf = b""
                # Keep watching: an event on an idle socket means the proxy closed it.
                ep.modify(fd, select.EPOLLIN | select.EPOLLRDHUP)
                active -= 1
                idle += 1
    open_s = time.monotonic() - t0

    time.sleep(a.settle)
    rss_after = vmrss_kb(a.pid)
    # Any idle connection the proxy closed meanwhile shows up as readable.
    lost = sum(1 for fd, _ in ep.poll(0) if fd in by_fd and by_fd[fd].state == "idle")
    for c in conns:
        if c.sock is not None and c.state == "idle":
            c.sock.close()
    delta = (rss_after - rss_before) * 1024
    steps.append({"idle": idle, "rss_kb": rss_after})
    print(json.dumps({
        "count": a.count, "idle": idle, "failed": failed, "lost": lost,
        "open_seconds": round(open_s, 2),
        "rss_before_kb": rss_before, "rss_after_kb": rss_after,
        "bytes_per_conn": round(delta / max(1, idle - lost), 1),
        "steps": steps,
    }))
    return 0 if failed == 0 and lost == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
