"""Differential run of the hardening suite's raw request cases through corral, NGINX and HAProxy: prints a
markdown table of what each proxy answered and whether it forwarded the request (docs/http-hardening.md).

    CORRAL_BUILD=$PWD/build /usr/bin/python3 tests/e2e/differential.py [--only corral,nginx,haproxy] [-k substr]
"""
import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import yaml  # noqa: E402

from recorder import Recorder  # noqa: E402
from test_hardening import ACCEPT, MALFORMED_RESPONSES, PIPE_BAD, REJECT, req  # noqa: E402
from util import Client, Closed, ProtocolError, free_port  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.abspath(os.environ.get("CORRAL_BUILD") or os.path.join(REPO, "build"))
STATUS_LINE_RE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})[^\r\n]*\r?\n")
QUIET_S = 0.3  # a connection silent this long after its answer counts as left open
DIFFERS = {}  # (proxy, case id) -> what the backend got, where it differs from what corral's suite wants


def wait_listen(port, proc, what, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s exited: %s" % (what, proc.stdout.read().decode(errors="replace")))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("%s did not listen on %d" % (what, port))


# Short, like the NGINX and HAProxy configs below (1 s), so every case ends within exchange()'s
# 3 s window (test_hardening's own TIMEOUTS are long on purpose).
TIMEOUTS = {
    "client_header_ms": 800,
    "client_idle_ms": 5000,
    "client_body_ms": 600,
    "upstream_connect_ms": 300,
    "upstream_response_ms": 700,
    "upstream_idle_ms": 5000,
    "tunnel_idle_ms": 1000,
    "shutdown_grace_ms": 1000,
}


class Corral:
    name = "corral"

    def __init__(self, tmp, upstream):
        cfg = {"listen": ["127.0.0.1:0"], "workers": {"cores": [0]},
               "backends": [{"address": upstream, "weight": 1}], "timeouts": dict(TIMEOUTS),
               "admin": {"socket": os.path.join(tmp, "corral.sock")}, "instance": "diff-%d" % os.getpid()}
        path = os.path.join(tmp, "corral.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f)
        self.proc = subprocess.Popen([os.path.join(BUILD, "corral"), "-c", path], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        self.port = None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode(errors="replace")
            if not line:
                raise RuntimeError("corral exited")
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
            if re.search(r"\bready\b", line):
                break
        self.log = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in iter(self.proc.stdout.readline, b""):
            self.log.append(line.decode(errors="replace").rstrip())

    def stop(self):
        if self.proc.poll() is not None:
            sys.stderr.write("corral died (exit %s) during the run; log tail:\n%s\n"
                             % (self.proc.returncode, "\n".join(self.log[-40:])))
            return
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


class Nginx:
    name = "nginx"

    def __init__(self, tmp, upstream):
        self.port = free_port()
        conf = f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log stderr crit;
events {{ worker_connections 256; }}
http {{
	access_log off;
	client_body_temp_path {tmp}/cb; proxy_temp_path {tmp}/px; fastcgi_temp_path {tmp}/fc;
	uwsgi_temp_path {tmp}/uw; scgi_temp_path {tmp}/sc;
	client_header_timeout 1s; client_body_timeout 1s;
	upstream up {{ server {upstream}; keepalive 8; }}
	server {{
		listen 127.0.0.1:{self.port};
		location / {{
			proxy_pass http://up;
			proxy_http_version 1.1;
			proxy_set_header Host $http_host;
			proxy_set_header Connection "";
			proxy_read_timeout 1s;
		}}
	}}
}}
"""
        path = os.path.join(tmp, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.proc = subprocess.Popen(["nginx", "-p", tmp, "-e", "stderr", "-c", path], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_listen(self.port, self.proc, "nginx")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


class Haproxy:
    name = "haproxy"

    def __init__(self, tmp, upstream):
        self.port = free_port()
        conf = f"""
global
	maxconn 256
defaults
	mode http
	option http-keep-alive
	timeout connect 1s
	timeout client 5s
	timeout server 1s
	timeout http-request 1s
frontend fe
	bind 127.0.0.1:{self.port}
	default_backend be
backend be
	server s1 {upstream}
"""
        path = os.path.join(tmp, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(conf)
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", path], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_listen(self.port, self.proc, "haproxy")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


def exchange(port, wire):
    """Sends wire on a new connection; returns (bytes received, how it ended: "close", "reset" or "open")."""
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    try:
        s.sendall(wire)
    except OSError:
        pass
    out = bytearray()
    end = "open"
    deadline = time.monotonic() + 3
    try:
        while time.monotonic() < deadline:
            # Wait long for the first byte (a proxy may be waiting on a timeout), briefly after that.
            s.settimeout(QUIET_S if out else max(0.05, deadline - time.monotonic()))
            d = s.recv(65536)
            if not d:
                end = "close"
                break
            out += d
    except socket.timeout:
        pass
    except ConnectionResetError:
        end = "reset"
    finally:
        s.close()
    return bytes(out), end


def parse_statuses(data, method="GET"):
    """The status codes of the responses in data, in order (tolerant: stops at the first thing it cannot parse)."""
    out, pos = [], 0
    while pos < len(data):
        m = STATUS_LINE_RE.match(data, pos)
        if not m:
            out.append("junk")
            break
        code = int(m.group(1))
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            out.append(code)
            break
        head = data[pos:end].decode("latin-1").lower()
        pos = end + 4
        out.append(code)
        if 100 <= code < 200 or code in (204, 304) or method == "HEAD":
            continue
        cl = re.search(r"\ncontent-length:\s*(\d+)", head)
        if "transfer-encoding: chunked" in head:
            while True:
                e = data.find(b"\r\n", pos)
                if e < 0:
                    return out
                size = int(data[pos:e].split(b";")[0], 16)
                pos = e + 2 + size + 2
                if size == 0:
                    break
        elif cl:
            pos += int(cl.group(1))
        else:
            break  # close-delimited: the rest is body
    return out


def run_case(proxy, rec, case):
    """One row cell: statuses (comma-separated), how the connection ended, and what the backend got."""
    seen = {id(q) for q in rec.requests}
    seen_partial = {id(q) for q in rec.partial}
    got, end = exchange(proxy.port, case.wire)
    rec.settle(quiet=0.05, timeout=1)
    # Arrival order is per upstream connection; a pooled connection may get new requests too.
    new = [q for q in rec.requests if id(q) not in seen]
    new_partial = [q for q in rec.partial if id(q) not in seen_partial and q.raw]
    statuses = parse_statuses(got, case.wire.split(b" ", 1)[0].decode("latin-1"))
    cell = ",".join(str(x) for x in statuses) or ("no-status" if got else "none")
    if end != "open":
        cell += " " + end
    fwd = ""
    if new:
        fwd = "fwd%s" % (len(new) if len(new) > 1 else "")
        check = getattr(case, "check", None)
        if not check and (case.cls != "pipeline" or len(new) > 1):
            DIFFERS[(proxy.name, case.id)] = b"".join(q.raw for q in new)
        if check and len(new) == 1:
            try:
                check(new[0])
            except AssertionError:
                fwd += "(differs)"
                DIFFERS[(proxy.name, case.id)] = new[0].raw
    elif new_partial:
        fwd = "head-only"
    return statuses, end, fwd, (cell + (" " + fwd if fwd else ""))


class PipeCase:
    def __init__(self, cid, bad):
        self.id = "pipe-" + cid
        self.cls = "pipeline"
        self.wire = req(b"GET /one HTTP/1.1") + bad + req(b"GET /after HTTP/1.1")
        self.status = {200}
        self.why = "good, bad, good in one write"
        self.check = None


def expected(case, kind):
    if kind == "accept":
        return "/".join(str(s) for s in sorted(case.status)) + " fwd"
    if kind == "pipe":
        return "200,400/505 fwd (1 request)"
    return "/".join(str(s) for s in sorted(case.status)) + (" (head-only ok)" if case.forwarded == "incomplete"
                                                            else "")


def verdict(case, kind, statuses, fwd):
    """'ok' when the proxy did what corral's suite asks for, else a short word."""
    if kind == "reject":
        if fwd.startswith("fwd"):
            return "FORWARDED"
        if statuses and statuses[0] in case.status:
            return "ok"
        if not statuses:
            return "no answer"
        return "other status"
    if kind == "pipe":
        if fwd not in ("fwd", ""):
            return "FORWARDED"
        return "ok" if statuses[:1] == [200] and statuses[1:2] in ([400], [505]) else "no 4xx/5xx for the bad one"
    if statuses and statuses[0] == 200 and fwd == "fwd":
        return "ok"
    if statuses and statuses[0] in case.status and not fwd:
        return "ok (rejects)"
    if fwd.startswith("fwd(differs)"):
        return "forwarded differently"
    return "rejects" if statuses and 400 <= statuses[0] < 600 else "other"


# Upstream-side cases: (id, response bytes for the first request, what the backend does after, method,
# what the issue asks for).
EXTRA = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nSMUGGLE"
RESPONSE_CASES = [(n, r, "keep", "GET", "502, new upstream connection") for n, r in MALFORMED_RESPONSES] + [
    ("bad-chunk-later", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n", "keep", "GET",
     "502, or the valid data then an abort; new upstream connection"),
    ("101-not-asked", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
     "keep", "GET", "502, new upstream connection"),
    ("extra-after-cl", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + EXTRA, "keep", "GET",
     "200 ok, extra bytes dropped, new upstream connection"),
    ("body-on-head", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "keep", "HEAD",
     "200 no body, new upstream connection"),
    ("body-on-204", b"HTTP/1.1 204 No Content\r\n\r\n" + EXTRA, "keep", "GET", "204, new upstream connection"),
    ("body-on-304", b"HTTP/1.1 304 Not Modified\r\n\r\n" + EXTRA, "keep", "GET", "304, new upstream connection"),
    # "body bytes" below are the bytes after the head as the client received them (chunk framing included).
    ("close-mid-cl-body", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"a" * 40, "close", "GET",
     "abort the client can detect"),
    ("close-mid-chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "close", "GET",
     "abort the client can detect"),
    ("reset-before-response", b"", "reset", "GET", "502 fast (a GET may be retried once)"),
    ("silent", b"", "hold", "GET", "504 at the response timeout, sent once"),
    ("conn-named-resp-header", b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nContent-Length: 2\r\n"
     b"\r\nok", "keep", "GET", "200 without X-Secret"),
]


def run_response_case(proxy, rec, case):
    cid, first, after, method, _ = case

    def handler(up, r):
        if r.target == "/bad-" + cid:
            if first:
                up.send(first)
            return after
        up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return "keep"

    rec.handler = handler
    t0 = time.monotonic()
    c = Client(proxy.port, timeout=3)
    raw = bytearray()
    fill = c._fill

    def recording_fill(want=262144):
        n = len(c.buf)
        fill(want)
        raw.extend(c.buf[n:])

    c._fill = recording_fill
    try:
        c.send(b"%s /bad-%s HTTP/1.1\r\nHost: e2e.test\r\n\r\n" % (method.encode(), cid.encode()))
        try:
            r = c.read_response(method)
            res = str(r.status)
            names = [k.lower() for k, _ in r.headers]
            if "x-secret" in names:
                res += " X-Secret!"
            if r.body and r.status >= 500:
                pass
            elif r.body not in (b"", b"ok"):
                res += " body=%r" % r.body[:12]
            c.sock.settimeout(0.2)
            try:
                stray = c.sock.recv(100)
                if stray:
                    res += " +stray %r" % stray[:10]
            except (socket.timeout, OSError):
                pass
        except Closed:
            m = STATUS_LINE_RE.match(bytes(raw))
            i = raw.find(b"\r\n\r\n")
            if m and i > 0:
                res = "%s head, %d body bytes, then close" % (m.group(1).decode(), len(raw) - i - 4)
            else:
                res = "close, %d bytes" % len(raw) if raw else "close, no response"
        except ProtocolError as e:
            res = "bad response to client: %s" % str(e)[:40]
        except socket.timeout:
            res = "no answer in 3 s"
    finally:
        c.close()
    took = time.monotonic() - t0
    if cid in ("silent", "reset-before-response"):
        res += " %.1fs" % took
    sent = sum(1 for q in rec.requests + rec.partial if q.target == "/bad-" + cid)
    if sent != 1:
        res += " sent x%d" % sent
    # The next request: over a new upstream connection, or the suspect one?
    with Client(proxy.port, timeout=3) as c2:
        try:
            r2 = c2.request("GET", "/next-" + cid)
            nxt = "" if r2.status == 200 and r2.body == b"ok" else "next: %s %r" % (r2.status, r2.body[:10])
        except (Closed, ProtocolError, socket.timeout) as e:
            nxt = "next: %s" % type(e).__name__
    rec.settle(quiet=0.05, timeout=1)
    with rec.lock:
        reused = any(any(q.target == "/bad-" + cid for q in cn.requests) and
                     any(q.target == "/next-" + cid for q in cn.requests) for cn in rec.conns)
    res += "; reused" if reused else "; new conn"
    return res + ("; " + nxt if nxt else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="corral,nginx,haproxy")
    ap.add_argument("-k", default="")
    ap.add_argument("--no-responses", action="store_true", help="skip the upstream-response cases")
    ap.add_argument("--show", action="store_true", help="print what was forwarded where it differs")
    args = ap.parse_args()
    kinds = {"corral": Corral, "nginx": Nginx, "haproxy": Haproxy}
    names = [n for n in args.only.split(",") if n]
    cases = [("reject", c) for c in REJECT] + [("accept", c) for c in ACCEPT]
    cases += [("pipe", PipeCase(i, b)) for i, b in PIPE_BAD]
    cases = [(k, c) for k, c in cases if args.k in c.id]
    rcases = [rc for rc in RESPONSE_CASES if args.k in rc[0]]

    tmp = tempfile.mkdtemp(prefix="corral-diff-")
    results = {}
    running = []
    try:
        for n in names:
            rec = Recorder()
            d = os.path.join(tmp, n)
            os.makedirs(d)
            p = kinds[n](d, rec.address)
            running.append((n, p, rec))

        def run_all(n, p, rec):
            for kind, c in cases:
                if p.proc.poll() is not None:
                    sys.stderr.write("%s exited (%s) before case %s\n" % (n, p.proc.returncode, c.id))
                    results[(n, c.id)] = ("proxy died", "proxy died")
                    continue
                statuses, end, fwd, cell = run_case(p, rec, c)
                results[(n, c.id)] = (cell, verdict(c, kind, statuses, fwd))
            if not args.no_responses:
                for rc in rcases:
                    results[(n, "resp:" + rc[0])] = run_response_case(p, rec, rc)

        threads = [threading.Thread(target=run_all, args=r) for r in running]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for n, p, rec in running:
            try:
                p.stop()
            except Exception:
                p.proc.kill()
            rec.close()
        shutil.rmtree(tmp, ignore_errors=True)

    versions = []
    for n in names:
        if n == "nginx":
            versions.append(subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip())
        elif n == "haproxy":
            versions.append(subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split("\n")[0])
    print("<!-- differential.py run %s UTC; %s -->" % (time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                                                      "; ".join(versions)))
    print()
    print("| class | case | expected | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    tally = {n: {} for n in names}
    for kind, c in cases:
        row = ["%s" % c.cls, "`%s`" % c.id, expected(c, kind)]
        for n in names:
            cell, v = results[(n, c.id)]
            tally[n][v] = tally[n].get(v, 0) + 1
            row.append(cell if v.startswith("ok") else "**%s** (%s)" % (cell, v))
        print("| " + " | ".join(row) + " |")
    print()
    for n in names:
        print("- %s: %s" % (n, ", ".join("%s %d" % kv for kv in sorted(tally[n].items()))))
    if args.show and DIFFERS:
        print()
        print("What the backend received where a proxy forwarded a case differently (or at all, for a reject case):")
        print()
        for (n, cid), raw in sorted(DIFFERS.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            print("- `%s` via %s: `%r`" % (cid, n, raw[:400]))
    if rcases and not args.no_responses:
        print()
        print("| upstream response | issue asks for | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        for rc in rcases:
            print("| `%s` | %s | " % (rc[0], rc[4]) + " | ".join(results[(n, "resp:" + rc[0])] for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
