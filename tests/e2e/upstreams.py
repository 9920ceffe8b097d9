"""Helpers for the end-to-end tests that need the suite's SLOW factor or corralctl: corralctl in
JSON, counters, /metrics scrapes, the access log's lines, polling with a deadline, and (for the
upstream-side tests: balancing, failover, passive health, pools) a kernel-side counter of
connection attempts to ports that refuse them."""
import ctypes
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

import pytest
import yaml

from conftest import SLOW, UNDER_ASAN, binary
from util import Client, exchange, pattern, sanitizer_report, status_of


def ctl(proxy, *args, timeout=10):
    """Runs corralctl against proxy's control socket (or the socket path proxy); the
    CompletedProcess (text)."""
    sock = proxy if isinstance(proxy, str) else proxy.cfg["admin"]["socket"]
    return subprocess.run([binary("corralctl"), "-s", sock] + [str(a) for a in args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout * SLOW)


def ctl_ok(proxy, *args):
    """ctl() that must succeed; its stdout."""
    r = ctl(proxy, *args)
    assert r.returncode == 0, "corralctl %s: rc %d: %s" % (" ".join(map(str, args)), r.returncode, r.stderr)
    return r.stdout


def ctl_json(proxy, *args):
    r = ctl(proxy, *args, "--json")
    assert r.returncode == 0, "corralctl %s: %s" % (" ".join(map(str, args)), r.stderr)
    return json.loads(r.stdout)


def totals(proxy):
    """The `stats --json` total row."""
    return ctl_json(proxy, "stats")["total"]


def backends(proxy):
    """{addr: {weight, state, active, requests, errors, ...}} from `corralctl backends --json`."""
    out = ctl_json(proxy, "backends")
    rows = out["backends"] if isinstance(out, dict) else out
    return {b["addr"]: b for b in rows}


def metric(proxy, name, **labels):
    """The value of one series from corral's /metrics (None when absent)."""
    from util import simple_get
    r = simple_get(proxy.metrics_port, "/metrics")
    assert r.status == 200, r
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    for line in r.body.decode().splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        n, _, lab = key.partition("{")
        if n != name:
            continue
        got = ",".join(sorted(x for x in lab.rstrip("}").split(",") if x))
        if got == want:
            return float(value)
    return None


def scrape(proxy, path="/metrics", timeout=5.0):
    """(status, head text, body text) of one GET on proxy's metrics listener, read to its close."""
    data = exchange(proxy.metrics_port, ("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode(), timeout * SLOW)
    head, _, body = data.partition(b"\r\n\r\n")
    return status_of(head), head.decode(), body.decode()


def access_log_raw(path, n, timeout=5.0):
    """The access log's lines as bytes once it holds at least n (the workers write them
    asynchronously); fails the test after timeout*SLOW seconds."""
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path, "rb") as f:
                lines = f.read().splitlines()
            if len(lines) >= n:
                return lines
        time.sleep(0.02)
    raise AssertionError("access log has fewer than %d lines" % n)


def log_lines(path, n, timeout=5.0):
    """access_log_raw() of a JSON access log, each line parsed."""
    return [json.loads(ln) for ln in access_log_raw(path, n, timeout)]


def wait_until(pred, timeout=5.0, step=0.02, what="condition"):
    """Polls pred() until it returns a true value or timeout*SLOW seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout * SLOW
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


def ms(v):
    """A configured duration in ms, stretched by the suite's SLOW factor."""
    return int(v * SLOW)


def reload_with(proxy, **changes):
    """Rewrites proxy's config file with the top-level changes, runs `corralctl reload` and waits
    for the new snapshot version."""
    before = ctl_json(proxy, "status")["config_version"]
    cfg = dict(proxy.cfg)
    cfg.update(changes)
    with open(proxy.cfg_path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False, default_flow_style=None)
    proxy.cfg = cfg
    r = ctl(proxy, "reload")
    assert r.returncode == 0, r.stderr
    assert ctl_json(proxy, "status")["config_version"] == before + 1


def ctl_reload_reply(proxy):
    """The control socket's own JSON reply to a reload (restart_needed and all), not corralctl's
    rendering of it."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10 * SLOW)
    s.connect(proxy.cfg["admin"]["socket"])
    s.sendall(b'{"cmd": "reload"}\n')
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(4096)
        assert chunk, buf
        buf += chunk
    s.close()
    return json.loads(buf)


def backend_id(resp):
    v = resp.header("x-backend-id")
    assert v, "response without X-Backend-Id: %r" % resp.head_raw
    return v


def get_from(port, target="/", src=None, host="127.0.0.1"):
    """One GET on a new connection, optionally from source address src; the response."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(10 * SLOW)
    if src:
        s.bind((src, 0))
    s.connect((host, port))
    c = Client.__new__(Client)
    c.sock, c.buf, c.port = s, bytearray(), port
    with c:
        return c.get(target)


def ids_of(port, targets, keep_alive=True):
    """X-Backend-Id for each target, on one keep-alive connection (or one connection each)."""
    out = []
    if keep_alive:
        with Client(port, timeout=10 * SLOW) as c:
            for t in targets:
                r = c.get(t)
                assert r.status == 200, (t, r, r.body[:200])
                out.append(backend_id(r))
    else:
        for t in targets:
            r = get_from(port, t)
            assert r.status == 200, (t, r, r.body[:200])
            out.append(backend_id(r))
    return out


def listen_ports(proxy):
    """Every "listening on ADDR" line of corral's log, as [(host, port)]."""
    out = []
    for line in proxy.log().splitlines():
        i = line.find("listening on ")
        if i < 0:
            continue
        addr = line[i + len("listening on "):].split()[0]
        host, _, port = addr.rpartition(":")
        out.append((host.strip("[]"), int(port)))
    return out


# --- counting connection attempts in the kernel ------------------------------------------------

_ETH_P_ALL = 3
_SO_ATTACH_FILTER = 26
_PACKET_OUTGOING = 4


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def _syn_filter(ports):
    """Classic BPF: outgoing IPv4 TCP segments with SYN and without ACK to one of ports."""
    ld_w, ld_h, ld_b, ldx_msh = 0x20, 0x28, 0x30, 0xb1
    ld_h_ind, ld_b_ind = 0x48, 0x50
    jeq, jset, ret = 0x15, 0x45, 0x06
    ports = list(ports)
    n = len(ports)
    # Layout: 0..10 header checks, then one jeq per port, then flag checks, accept, reject.
    prog = []
    prog.append([ld_w, 0, 0, 0xfffff004])          # 0: pkttype
    prog.append([jeq, 0, "R", _PACKET_OUTGOING])   # 1
    prog.append([ld_h, 0, 0, 12])                  # 2: ethertype
    prog.append([jeq, 0, "R", 0x0800])             # 3
    prog.append([ld_b, 0, 0, 23])                  # 4: IP protocol
    prog.append([jeq, 0, "R", 6])                  # 5
    prog.append([ldx_msh, 0, 0, 14])               # 6: x = IP header length
    prog.append([ld_h_ind, 0, 0, 16])              # 7: TCP destination port
    for i, p in enumerate(ports):                  # 8 .. 8+n-1
        left = n - 1 - i
        prog.append([jeq, left, "R" if i == n - 1 else 0, p])
    prog.append([ld_b_ind, 0, 0, 27])              # TCP flags
    prog.append([jset, "R", 0, 0x10])              # ACK set: not a connect attempt
    prog.append([jset, 0, "R", 0x02])              # SYN clear: not a connect attempt
    prog.append([ret, 0, 0, 0xffff])               # accept
    prog.append([ret, 0, 0, 0])                    # reject
    reject = len(prog) - 1
    out = (_SockFilter * len(prog))()
    for i, (code, jt, jf, k) in enumerate(prog):
        jt = reject - i - 1 if jt == "R" else jt
        jf = reject - i - 1 if jf == "R" else jf
        out[i] = _SockFilter(code, jt, jf, k)
    return out


class SynCounter:
    """Counts TCP connection attempts (SYNs sent on loopback) to the given ports, as the kernel
    sees them: a refused connect leaves no trace in userspace, so this is how a test knows how
    often corral tried a dead backend. Needs CAP_NET_RAW (the suite runs as root)."""

    def __init__(self, ports, ignore_src=()):
        self.ports = [int(p) for p in ports]
        self.ignore_src = set(ignore_src)  # source ports whose SYNs are not corral's
        self.counts = {p: 0 for p in self.ports}
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
        self._filt = _syn_filter(self.ports)
        prog = _SockFprog(len(self._filt), self._filt)
        self.sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER,
                             bytes(ctypes.string_at(ctypes.addressof(prog), ctypes.sizeof(prog))))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(("lo", 0))
        # Packets that matched before the filter was attached: drop them.
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(128)
        except BlockingIOError:
            pass
        self.sock.settimeout(0.05)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="syn-counter", daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(128)
            except socket.timeout:
                continue
            except OSError:
                return
            if len(data) < 38:
                continue
            ihl = (data[14] & 15) * 4
            sport, port = struct.unpack("!HH", data[14 + ihl:14 + ihl + 4])
            if sport in self.ignore_src:
                continue
            with self.lock:
                if port in self.counts:
                    self.counts[port] += 1

    def count(self, port=None):
        with self.lock:
            return sum(self.counts.values()) if port is None else self.counts[int(port)]

    def reset(self):
        with self.lock:
            for p in self.counts:
                self.counts[p] = 0

    def settle(self, quiet=0.1):
        """Waits until no attempt has been counted for quiet seconds (bounded)."""
        deadline = time.monotonic() + 2 * SLOW
        last = -1
        while time.monotonic() < deadline:
            n = self.count()
            if n == last:
                return n
            last = n
            time.sleep(quiet)
        return self.count()

    def close(self):
        self._stop.set()
        self.thread.join(2)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def port_of(addr):
    return int(addr.rpartition(":")[2])


class LogFileDaemon:
    """corral started by hand rather than by the corral fixture (its own user, environment or
    folder), its output in the file log_path. A subclass sets cfg_path and log_path, writes the
    config, then calls spawn()."""

    def spawn(self, env=None):
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([binary("corral"), "-c", self.cfg_path], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def text(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        """SIGTERM (if still running) and wait; under ASan, no sanitizer report in the log. The exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(20 * SLOW)
        self.log.close()
        if UNDER_ASAN:
            rep = sanitizer_report(self.text())
            assert rep is None, "sanitizer report in corral's log:\n%s" % rep
        return code


@pytest.fixture
def open_folder():
    """A folder everyone can reach (pytest's tmp_path is root-only), for a daemon that drops to
    another user or a client that runs as one."""
    d = tempfile.mkdtemp(prefix="corral-e2e-open-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def need_root(what):
    if os.geteuid() != 0:
        from conftest import IN_CI
        msg = "%s needs root" % what
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


# --- a proxy whose backends carry weights -------------------------------------------------------

import conftest  # noqa: E402


@pytest.fixture
def wproxy(tmp_path, request):
    """Factory like conftest's corral fixture, but backends is a list of Backend objects or
    {"address", "weight"} mappings (corral's own config form), so weights are set at start-up."""
    started = []

    def start(bes, **over):
        n = len(started)
        tmp = str(tmp_path / ("wproxy%d" % n))
        os.makedirs(tmp, exist_ok=True)
        rows = []
        for b in bes:
            if isinstance(b, dict):
                rows.append(dict(b))
            else:
                rows.append({"address": b if isinstance(b, str) else b.address, "weight": 1})
        cfg = conftest._merge(conftest.proxy_config(tmp, "e2e-%d-w%d" % (os.getpid(), n), rows), over)
        p = conftest.CorralProxy(tmp, cfg)
        started.append(p)
        p.start()
        return p

    yield start
    conftest.check_all(started, request)


class BackendProbe:
    """Reads a corral-backend's /__stats over one keep-alive connection of its own, and reports
    the connections that are not that one: what corral opened (conns) and holds open (active)."""

    def __init__(self, backend):
        self.c = Client(backend.port, timeout=10 * SLOW)

    def _stats(self):
        r = self.c.get("/__stats")
        assert r.status == 200, r
        return json.loads(r.body)

    def conns(self):
        return self._stats()["connections"] - 1

    def active(self):
        return self._stats()["active"] - 1

    def close(self):
        self.c.close()


def make_tls_cert(folder, name, cn, san):
    """Writes folder/name.pem and folder/name.key: a self-signed P-256 certificate for cn with
    the subjectAltName san ("DNS:a.test", "IP:127.0.0.1"), which is also its own CA. Returns
    (cert, key) paths."""
    cert, key = os.path.join(folder, name + ".pem"), os.path.join(folder, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=" + cn,
                    "-addext", "subjectAltName=" + san],
                   check=True, capture_output=True, timeout=30 * SLOW)
    return cert, key


class TLSBackend:
    """An HTTP/1.1 keep-alive backend behind TLS (Python's ssl): GET answers its path, POST
    echoes the body's length and SHA-256. It counts the TLS connections it accepted
    (handshakes that completed), the ones that failed, the requests, the server names the
    clients sent and the connections that ended with a close_notify."""

    def __init__(self, cert, key, protocols=None, idle_timeout=None):
        import hashlib
        import ssl
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.lock = threading.Lock()
        self.handshakes = 0
        self.resumed = 0
        self.failed = []
        self.requests = 0
        self.snis = []
        self.close_notify = 0
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        if protocols:
            ctx.minimum_version, ctx.maximum_version = protocols
        ctx.set_alpn_protocols(["http/1.1"])
        ctx.sni_callback = self._sni
        owner = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                try:
                    self.request.settimeout(30 * SLOW)
                    self.request.do_handshake()
                except (OSError, ValueError) as e:
                    with owner.lock:
                        owner.failed.append(str(e))
                    self.ok = False
                    return
                self.ok = True
                with owner.lock:
                    owner.handshakes += 1
                    owner.resumed += 1 if self.request.session_reused else 0
                super().setup()
                if idle_timeout:
                    # An idle keep-alive connection is ended by the backend (close_notify).
                    self.request.settimeout(idle_timeout)

            def handle(self):
                if self.ok:
                    super().handle()

            def finish(self):
                try:
                    super().finish()
                except (OSError, AttributeError):
                    pass
                if not self.ok:
                    return
                # A clean TLS end from corral is a close_notify before the FIN: unwrap() reads
                # it (and answers with ours).
                try:
                    self.request.settimeout(2 * SLOW)
                    self.request.unwrap()
                    with owner.lock:
                        owner.close_notify += 1
                except (OSError, ValueError):
                    pass

            def _reply(self, body):
                with owner.lock:
                    owner.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/ws" and self.headers.get("Upgrade"):
                    # A tunnel after a 101: what comes is sent back upper-cased, until EOF.
                    self.send_response(101)
                    self.send_header("Upgrade", self.headers["Upgrade"])
                    self.send_header("Connection", "Upgrade")
                    self.end_headers()
                    self.wfile.flush()
                    self.close_connection = True
                    while True:
                        try:
                            d = self.connection.recv(65536)
                        except OSError:
                            break
                        if not d:
                            break
                        self.connection.sendall(d.upper())
                elif self.path.startswith("/big/"):
                    self._reply(pattern(0, int(self.path[5:])))
                elif self.path.startswith("/close/"):
                    # A close-delimited body, ended with close_notify ("/close/notify") or
                    # with a bare TCP close (anything else): a truncation as TLS sees it.
                    with owner.lock:
                        owner.requests += 1
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(b"close-delimited body")
                    self.wfile.flush()
                    self.close_connection = True
                    self.ok = self.path == "/close/notify"  # finish() unwraps only then
                else:
                    self._reply(("tls backend: %s" % self.path).encode())

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                data = self.rfile.read(n)
                self._reply(("%d %s" % (len(data), hashlib.sha256(data).hexdigest())).encode())

            def log_message(self, *a):
                pass

            def handle_one_request(self):
                try:
                    super().handle_one_request()
                except TimeoutError:
                    self.close_connection = True

        ThreadingHTTPServer.daemon_threads = True
        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.socket = ctx.wrap_socket(self.srv.socket, server_side=True,
                                          do_handshake_on_connect=False)
        self.port = self.srv.server_address[1]
        self.address = "127.0.0.1:%d" % self.port
        self.t = threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        self.t.start()

    def _sni(self, sock, name, ctx):
        with self.lock:
            self.snis.append(name)

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()
