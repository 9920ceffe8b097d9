"""pytest harness for corral's end-to-end tests: real binaries on loopback, kernel-chosen ports.

Environment:
  CORRAL_BUILD  the build folder holding corral, corral-backend, corralctl (default: <repo>/build)
  E2E_PROXY     "corral" (default) or "nginx": run the same data-plane tests against NGINX, to check
                the tests themselves; tests marked corral_only are skipped there (they fail under CI).
  ASAN_OPTIONS  when set, corral's stderr must hold no sanitizer report, and deadlines are longer.
  CORRAL_SLOW   a factor (default 1) that stretches every deadline and every timeout the tests
                configure, on top of ASan's 3: e.g. CORRAL_SLOW=2 on a loaded machine.
  CI            "true" or "1": a test that cannot run here fails instead of being skipped (need()).
"""
import copy
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

sys.path.insert(0, os.path.dirname(__file__))
import util  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.abspath(os.environ.get("CORRAL_BUILD") or os.path.join(REPO, "build"))
PROXY_KIND = os.environ.get("E2E_PROXY", "corral")
# The same rule as tests/unit/need.h: CI=true and CI=1 both mean "a skip is a failure".
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
UNDER_ASAN = bool(os.environ.get("ASAN_OPTIONS"))


def _slow_factor():
    v = os.environ.get("CORRAL_SLOW") or "1"
    try:
        f = float(v)
    except ValueError:
        raise RuntimeError("CORRAL_SLOW=%r is not a number" % v)
    if not 1.0 <= f <= 20.0:
        raise RuntimeError("CORRAL_SLOW=%r: expected a factor from 1 to 20" % v)
    return f


# Sanitized binaries are slower; every deadline the harness owns, and every timeout a test
# configures (ms() below), is stretched by this. CORRAL_SLOW raises it on a loaded machine.
SLOW = (3.0 if UNDER_ASAN else 1.0) * _slow_factor()
TEST_DEADLINE_S = 60

# Test-friendly defaults: short enough to keep the suite fast, long enough not to flake.
DEFAULT_TIMEOUTS = {
    "client_header_ms": 10000,
    "client_idle_ms": 60000,
    "upstream_connect_ms": 2000,
    "upstream_response_ms": 30000,
    "shutdown_grace_ms": 10000,
}
DEFAULT_LIMITS = {
    "header_bytes_max": 16384,
    "headers_max": 100,
    "uri_bytes_max": 8192,
    "body_bytes_max": 104857600,
    "connections_per_core": 16384,
}


def ms(v):
    """A timeout a test configures, in ms, stretched by SLOW: ms(500) is 500 on an idle machine."""
    return int(round(v * SLOW))


def need(cond, why):
    """A precondition of a test: skips it on a developer's machine, fails it under CI (where a
    skip would hide a broken setup). Returns only when cond holds."""
    if cond:
        return
    if IN_CI:
        pytest.fail("%s (CI=%s: a skip is a failure)" % (why, os.environ.get("CI")))
    pytest.skip(why)


def pytest_configure(config):
    config.addinivalue_line("markers", "corral_only: corral behaviour that NGINX legitimately does differently")
    config.addinivalue_line("markers", "deadline(seconds): wall-clock limit for the test (default 60 s)")


def pytest_runtest_setup(item):
    # Against another proxy, corral_only tests are skipped; under CI they fail (need()), so that
    # a stray E2E_PROXY cannot silently skip them.
    if PROXY_KIND != "corral" and item.get_closest_marker("corral_only"):
        need(False, "corral-specific behaviour; E2E_PROXY=%s" % PROXY_KIND)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Remembers each phase's outcome on the item, so fixtures can dump logs when the test failed."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


class DeadlineExceeded(Exception):
    """A test ran past its wall-clock deadline."""


@pytest.fixture(autouse=True)
def _deadline(request):
    """Bounds every test in time with SIGALRM (no plugin needed)."""
    m = request.node.get_closest_marker("deadline")
    seconds = (m.args[0] if m else TEST_DEADLINE_S) * SLOW

    def expire(signum, frame):
        raise DeadlineExceeded("test ran longer than %.0f s" % seconds)

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def binary(name):
    path = os.path.join(BUILD, name)
    if not os.access(path, os.X_OK):
        # Under CI a missing binary is a failure, never a skip.
        pytest.fail("%s is missing: run make (CORRAL_BUILD=%s)" % (path, BUILD))
    return path


# --- the backend -------------------------------------------------------------------------


class Backend:
    def __init__(self, threads=1, ident=None):
        args = [binary("corral-backend"), "--listen", "127.0.0.1:0", "--threads", str(threads)]
        if ident:
            args += ["--id", ident]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out = util.LogReader(self.proc.stdout, "backend-stdout")
        self.err = util.LogReader(self.proc.stderr, "backend-stderr")
        m = self.out.wait_for(r"listening on 127\.0\.0\.1:(\d+)", 5 * SLOW)
        if not m:
            self.stop()
            raise RuntimeError("corral-backend did not start: %s" % self.err.text())
        self.port = int(m.group(1))
        self.address = "127.0.0.1:%d" % self.port

    def stats(self):
        """The backend's counters: {"connections", "requests", "active"} (/__stats is not counted)."""
        import json
        r = util.simple_get(self.port, "/__stats")
        assert r.status == 200, r
        return json.loads(r.body)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


    def check(self):
        """Teardown assertion: under ASan, the backend printed no sanitizer report."""
        self.stop()
        self.err.join()
        if UNDER_ASAN:
            rep = util.sanitizer_report(self.err.text())
            assert rep is None, "sanitizer report in corral-backend's stderr:\n%s" % rep


@pytest.fixture
def backend():
    b = Backend()
    yield b
    b.check()


@pytest.fixture
def backend_factory():
    started = []

    def start(threads=1, ident=None):
        b = Backend(threads, ident)
        started.append(b)
        return b

    yield start
    for b in started:
        b.check()


# --- the proxy under test ------------------------------------------------------------------


def _merge(base, over):
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


class Proxy:
    """A running proxy under test. .port is its client port, .proc its process, .kind "corral"/"nginx"."""

    kind = None

    def __init__(self, tmp, cfg):
        self.tmp = tmp
        self.cfg = cfg
        self.proc = None
        self.port = None
        self.metrics_port = None
        self.exit_code = None
        self.checked = False

    @property
    def timeouts(self):
        return self.cfg["timeouts"]

    @property
    def limits(self):
        return self.cfg["limits"]

    def log(self):
        return self.err.text()

    def alive(self):
        return self.proc.poll() is None

    def signal_graceful(self):
        """Asks for a graceful shutdown (corral: SIGTERM)."""
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout=None):
        """Graceful stop; returns the exit code."""
        if self.proc.poll() is None:
            self.signal_graceful()
        if timeout is None:
            timeout = self.cfg["timeouts"]["shutdown_grace_ms"] / 1000.0 + 10
        try:
            self.exit_code = self.proc.wait(timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            self.checked = True  # reported here; teardown need not report it again
            raise AssertionError("%s did not exit within %.1f s of SIGTERM; log:\n%s"
                                 % (self.kind, timeout, self.log()[-4000:]))
        self.err.join()
        return self.exit_code

    def wait_idle(self, timeout=5.0):
        """Waits until the proxy holds no client connection. NGINX has no counter to poll: a
        short sleep there (E2E_PROXY=nginx only checks the tests themselves)."""
        time.sleep(0.2 * SLOW)

    def check_exit(self):
        """Teardown assertions: exit code 0 and, under ASan, no sanitizer report."""
        if self.checked:
            return
        self.checked = True
        code = self.stop()
        assert code == 0, "%s exited with %s; log:\n%s" % (self.kind, code, self.log()[-4000:])
        if self.kind == "corral":
            # A CHECK_IF (bug.h) that fired is a bug even though corral carried on.
            assert "check failed:" not in self.log(), "%s:\n%s" % (self.kind, self.log()[-4000:])
        if UNDER_ASAN:
            rep = util.sanitizer_report(self.log())
            assert rep is None, "sanitizer report in %s's stderr:\n%s" % (self.kind, rep)


class CorralProxy(Proxy):
    kind = "corral"

    def ctl_json(self, *args):
        """`corralctl ARGS --json` against this proxy's control socket, parsed."""
        import json
        out = subprocess.run([binary("corralctl"), "-s", self.cfg["admin"]["socket"], *args, "--json"],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10 * SLOW)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def stats(self):
        """`corralctl stats --json`."""
        return self.ctl_json("stats")

    def wait_idle(self, timeout=5.0):
        """Polls until conns_active is 0 on every core (every client slot given back); fails
        the test after timeout * SLOW seconds. Returns the last stats."""
        deadline = time.monotonic() + timeout * SLOW
        while True:
            s = self.stats()
            if s["total"]["conns_active"] == 0:
                return s
            assert time.monotonic() < deadline, \
                "conns_active still %d after %.1f s: %s" % (s["total"]["conns_active"], timeout * SLOW, s["total"])
            time.sleep(0.05)

    def start(self):
        self.cfg_path = os.path.join(self.tmp, "corral.yaml")
        with open(self.cfg_path, "w") as f:
            yaml.safe_dump(self.cfg, f, sort_keys=False, default_flow_style=None)
        self.proc = subprocess.Popen([binary("corral"), "-c", self.cfg_path],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.err = util.LogReader(self.proc.stdout, "corral-log")
        ready = self.err.wait_for(r"\bready\b", 15 * SLOW)
        if not ready:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(5)
            self.checked = True
            raise AssertionError("corral did not log 'ready' (exit %s); log:\n%s"
                                 % (self.proc.returncode, self.log()[-4000:]))
        m = self.err.wait_for(r"listening on 127\.0\.0\.1:(\d+)", 1)
        assert m, "corral did not log its port; log:\n%s" % self.log()[-4000:]
        self.port = tls_port(self.cfg["listen"][0], int(m.group(1)))
        m = self.err.wait_for(r"metrics on 127\.0\.0\.1:(\d+)", 0.2)
        self.metrics_port = int(m.group(1)) if m else None


# --- TLS listeners ----------------------------------------------------------------------------


class TlsCert:
    """A certificate the test made: .cert and .key (PEM files), .names (its DNS subjectAltNames)."""

    def __init__(self, cert, key, names):
        self.cert, self.key, self.names = cert, key, names

    def entry(self):
        """Its certificates[] entry in a listener's tls: block."""
        return {"cert": self.cert, "key": self.key}


def make_tls_cert(folder, name, names=("e2e.test", "localhost"), days=2, key="ec"):
    """A self-signed certificate (its own trust anchor, no CA) for names, made with the openssl CLI:
    ECDSA P-256 by default (key="rsa" for RSA 2048), valid from now for days (a negative days gives
    one that expired that many days ago). The subject CN is the first name."""
    cert, keyf = os.path.join(folder, name + ".pem"), os.path.join(folder, name + ".key")
    san = ",".join(["DNS:" + n for n in names] + ["IP:127.0.0.1"])
    args = ["openssl", "req", "-x509", "-nodes", "-keyout", keyf, "-out", cert, "-subj", "/CN=" + names[0],
            "-addext", "subjectAltName=" + san, "-addext", "basicConstraints=critical,CA:FALSE"]
    if key == "ec":
        args += ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    else:
        args += ["-newkey", "rsa:2048"]
    if days >= 0:
        subprocess.run(args + ["-days", str(days)], check=True, capture_output=True, timeout=30 * SLOW)
        return TlsCert(cert, keyf, list(names))
    # In the past: OpenSSL 3.0's req cannot set the dates; its ca -selfsign can (a throw-away
    # CA database in a folder of its own).
    import datetime
    now = datetime.datetime.now(datetime.timezone.utc)
    fmt = "%Y%m%d%H%M%SZ"
    ca = os.path.join(folder, name + ".ca")
    os.makedirs(ca, exist_ok=True)
    open(os.path.join(ca, "index.txt"), "w").close()
    with open(os.path.join(ca, "serial"), "w") as f:
        f.write("01\n")
    with open(os.path.join(ca, "ca.cnf"), "w") as f:
        f.write("[ca]\ndefault_ca = d\n[d]\ndatabase = %s/index.txt\nnew_certs_dir = %s\nserial = %s/serial\n"
                "default_md = sha256\npolicy = p\ncopy_extensions = copy\nunique_subject = no\n"
                "[p]\ncommonName = supplied\n" % (ca, ca, ca))
    csr = os.path.join(ca, "req.csr")
    req = [a for a in args if a != "-x509"]
    req[req.index("-out") + 1] = csr
    subprocess.run(["openssl", "req", "-new"] + req[2:], check=True, capture_output=True, timeout=30 * SLOW)
    subprocess.run(["openssl", "ca", "-batch", "-notext", "-config", os.path.join(ca, "ca.cnf"), "-selfsign",
                    "-keyfile", keyf, "-in", csr, "-out", cert,
                    "-startdate", (now + datetime.timedelta(days=days - 1)).strftime(fmt),
                    "-enddate", (now + datetime.timedelta(days=days)).strftime(fmt)],
                   check=True, capture_output=True, timeout=30 * SLOW)
    return TlsCert(cert, keyf, list(names))


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory):
    """One ECDSA P-256 self-signed certificate for e2e.test and localhost, made once per run."""
    return make_tls_cert(str(tmp_path_factory.mktemp("tls")), "e2e")


def tls_listen(*certs, address="127.0.0.1:0", **tls):
    """A listen entry serving TLS with certs (TlsCert; the first is the default) and any other tls:
    keys (protocols=, session_tickets=, ...). Put first in listen: the proxy's .port is then a
    util.TlsPort, which every util.Client speaks TLS to, trusting these certificates."""
    return {"address": address, "tls": dict(tls, certificates=[c.entry() for c in certs])}


def tls_port(entry, port):
    """port as the tests use it for the listen entry: a util.TlsPort trusting the entry's
    certificates when it serves TLS, else the plain number."""
    if not (isinstance(entry, dict) and entry.get("tls")):
        return port
    trust = [c["cert"] for c in entry["tls"]["certificates"]]
    return util.TlsPort(port, util.tls_client_context(trust))


def _ms(v):
    return "%dms" % v


class NginxProxy(Proxy):
    """NGINX configured as close to corral's semantics as it goes, to validate the tests."""

    kind = "nginx"

    def signal_graceful(self):
        self.proc.send_signal(signal.SIGQUIT)  # NGINX: QUIT is graceful, TERM is fast

    def start(self):
        t, lim = self.cfg["timeouts"], self.cfg["limits"]
        self.port = util.free_port()
        d = self.tmp
        upstreams = "\n".join("\t\tserver %s;" % b["address"] for b in self.cfg["backends"])
        conf = f"""
worker_processes {len(self.cfg["workers"]["cores"])};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log stderr notice;
worker_shutdown_timeout {_ms(t["shutdown_grace_ms"])};
events {{ worker_connections {max(lim["connections_per_core"], 64)}; }}
http {{
	access_log off;
	client_body_temp_path {d}/client_body;
	proxy_temp_path {d}/proxy;
	fastcgi_temp_path {d}/fastcgi;
	uwsgi_temp_path {d}/uwsgi;
	scgi_temp_path {d}/scgi;
	keepalive_requests 10000;
	keepalive_timeout {_ms(t["client_idle_ms"])};
	client_header_timeout {_ms(t["client_header_ms"])};
	client_header_buffer_size 1k;
	large_client_header_buffers 4 {max(lim["uri_bytes_max"], 1024)};
	client_max_body_size {lim["body_bytes_max"]};
	upstream backend {{
{upstreams}
		keepalive 32;
		keepalive_requests 10000;
	}}
	server {{
		listen 127.0.0.1:{self.port} reuseport;
		location / {{
			proxy_pass http://backend;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
			proxy_buffering off;
			proxy_request_buffering off;
			proxy_connect_timeout {_ms(t["upstream_connect_ms"])};
			proxy_read_timeout {_ms(t["upstream_response_ms"])};
			proxy_send_timeout {_ms(t["upstream_response_ms"])};
			proxy_next_upstream off;
		}}
	}}
}}
"""
        self.cfg_path = os.path.join(d, "nginx.conf")
        with open(self.cfg_path, "w") as f:
            f.write(conf)
        self.proc = subprocess.Popen(["nginx", "-p", d, "-e", "stderr", "-c", self.cfg_path],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.err = util.LogReader(self.proc.stdout, "nginx-log")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("nginx exited: %s" % self.log())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise AssertionError("nginx did not listen; log:\n%s" % self.log())
        # The master accepts nothing; wait until the workers are up too.
        deadline = time.monotonic() + 5
        while len(util.tree_pids(self.proc.pid)) < 1 + len(self.cfg["workers"]["cores"]):
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)


def proxy_config(tmp, instance, rows):
    """The config a proxy factory starts from: rows are corral's backends entries."""
    return {
        # Own BPF pin folder per proxy: concurrent runs never share steering maps.
        "instance": instance,
        "listen": ["127.0.0.1:0"],
        "workers": {"cores": [0, 1]},
        "backends": rows,
        "balance": "round-robin",
        "timeouts": dict(DEFAULT_TIMEOUTS),
        "limits": dict(DEFAULT_LIMITS),
        "admin": {"socket": os.path.join(tmp, "corral.sock"), "metrics": "127.0.0.1:0"},
    }


def check_all(started, request):
    """A proxy factory's teardown: every proxy it started must exit cleanly (check_exit); the
    log of each is shown when the test failed. Fails the test with all the errors."""
    errors = []
    rep = getattr(request.node, "rep_call", None)
    for p in started:
        if p.proc is None:
            continue
        if rep is not None and rep.failed:
            # Shown in the failure report (captured stdout of the teardown).
            print("---- %s log (%s) ----\n%s" % (p.kind, p.cfg_path, p.log()[-6000:]))
        try:
            p.check_exit()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n\n".join(errors))


@pytest.fixture
def corral(tmp_path, request):
    """Factory: corral(backends, timeouts={..}, limits={..}, workers={..}, **other_top_level_keys) -> Proxy.

    backends: list of "ip:port" strings or Backend objects. The proxy is stopped on teardown with
    SIGTERM; it must exit 0 (and, under ASan, print no sanitizer report)."""
    started = []

    def start(backends, **over):
        n = len(started)
        tmp = str(tmp_path / ("proxy%d" % n))
        os.makedirs(tmp, exist_ok=True)
        # An entry is an address, a Backend, or a whole backends row (a dict, e.g. send_proxy).
        rows = [b if isinstance(b, dict) else
                {"address": b.address if isinstance(b, Backend) else b, "weight": 1} for b in backends]
        cfg = proxy_config(tmp, "e2e-%d-%d" % (os.getpid(), n), rows)
        cfg = _merge(cfg, over)
        cls = NginxProxy if PROXY_KIND == "nginx" else CorralProxy
        p = cls(tmp, cfg)
        started.append(p)
        p.start()
        return p

    yield start
    check_all(started, request)


@pytest.fixture
def proxied(corral, backend):
    """The common case: one backend, one proxy with default settings in front of it."""
    return corral([backend])
