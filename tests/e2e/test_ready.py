"""Readiness and liveness on the metrics listener: GET /ready (503 while draining for shutdown)
and GET /healthz (503 when a worker stops ticking)."""
import ctypes
import os
import signal

import pytest

from conftest import SLOW
from upstreams import scrape, wait_until
from util import Client, build_request

pytestmark = pytest.mark.corral_only

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000


def probe(proxy, path):
    """(status, body) of one GET on the metrics listener."""
    status, _, body = scrape(proxy, path)
    return status, body


def test_ready_and_healthz_while_serving(proxied):
    assert probe(proxied, "/ready") == (200, "ready\n")
    assert probe(proxied, "/healthz") == (200, "ok\n")
    assert probe(proxied, "/ready?verbose")[0] == 200
    assert probe(proxied, "/nope")[0] == 404


def test_ready_is_503_while_draining_for_shutdown(corral, backend):
    p = corral([backend], timeouts={"shutdown_grace_ms": 10000})
    before = backend.stats()["requests"]
    c = Client(p.port, timeout=10 * SLOW)
    c.send(build_request("GET", "/delay/2500"))
    # The request is in flight at the backend before the stop begins.
    assert wait_until(lambda: backend.stats()["requests"] > before, 3)
    p.proc.send_signal(signal.SIGTERM)
    assert wait_until(lambda: probe(p, "/ready") == (503, "draining\n"), 2), p.log()
    # Alive all the same: the drain is work in progress, not a dead process.
    assert probe(p, "/healthz") == (200, "ok\n")
    assert c.read_response().status == 200
    c.close()
    assert p.proc.wait(15 * SLOW) == 0


def test_healthz_is_503_when_a_worker_stops_ticking(proxied):
    pid = proxied.proc.pid
    tid = None
    for t in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/comm" % (pid, t)) as f:
            if f.read().strip() == "corral-w1":
                tid = int(t)
    assert tid, "no thread named corral-w1"
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    # Stop that one thread (ptrace stops a single task; SIGSTOP would stop the whole process).
    assert libc.ptrace(PTRACE_SEIZE, tid, None, None) == 0, os.strerror(ctypes.get_errno())
    try:
        assert libc.ptrace(PTRACE_INTERRUPT, tid, None, None) == 0, os.strerror(ctypes.get_errno())
        os.waitpid(tid, WALL)
        st = wait_until(lambda: probe(proxied, "/healthz")[0] == 503 and probe(proxied, "/healthz"), 8)
        assert st, probe(proxied, "/healthz")
        assert st[1].startswith("worker 1: no heartbeat for "), st
        assert probe(proxied, "/ready")[0] == 200
    finally:
        libc.ptrace(PTRACE_DETACH, tid, None, None)
    assert wait_until(lambda: probe(proxied, "/healthz") == (200, "ok\n"), 2)
