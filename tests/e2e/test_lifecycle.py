"""End-to-end lifecycle tests: start-up, config check, graceful shutdown with requests in flight."""
import os
import subprocess
import threading
import time

import pytest

from conftest import SLOW, binary, ms
from upstreams import wait_until
from util import Client, Closed, build_request, connect_refused, simple_get


def test_graceful_shutdown_completes_inflight_requests(corral, backend):
    """SIGTERM with /delay/1500 requests in flight: they complete with 200, new connections are
    refused at once, and the process exits 0 soon after the last response."""
    p = corral([backend], timeouts={"shutdown_grace_ms": 5000})
    base = backend.stats()["requests"]
    clients = [Client(p.port, timeout=10) for _ in range(6)]
    results = [None] * len(clients)

    def run(i, c):
        try:
            results[i] = c.read_response()
        except Exception as e:  # checked below
            results[i] = e

    for c in clients:
        c.send(build_request("GET", "/delay/1500"))
    # Every request has reached the backend before the signal.
    assert wait_until(lambda: backend.stats()["requests"] - base >= len(clients), 2, step=0.01)
    threads = [threading.Thread(target=run, args=(i, c), daemon=True) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    p.signal_graceful()
    # New connections are refused (the listeners are closed), while the old ones finish.
    assert wait_until(lambda: connect_refused(p.port), 1.0, step=0.02), \
        "still accepting connections after SIGTERM"
    # Refused while the old requests were still in flight (none answered yet).
    assert p.alive() and results == [None] * len(clients), "exited or answered before the refusal: %r" % results
    for t in threads:
        t.join(5 * SLOW)
    for i, r in enumerate(results):
        assert not isinstance(r, BaseException) and r is not None, "request %d: %r" % (i, r)
        assert r.status == 200 and r.body == b"ok\n", (i, r)
    code = p.stop(timeout=5)
    elapsed = time.monotonic() - t0
    assert code == 0
    assert elapsed < 3.0 * SLOW, "exit took %.2f s after SIGTERM" % elapsed
    for c in clients:
        c.close()


def test_graceful_shutdown_closes_idle_keepalive_connections(corral, backend):
    """Idle keep-alive clients do not hold the shutdown for the whole grace period."""
    p = corral([backend], timeouts={"shutdown_grace_ms": 10000})
    idle = [Client(p.port) for _ in range(4)]
    for c in idle:
        assert c.get("/").status == 200
    t0 = time.monotonic()
    p.signal_graceful()
    for c in idle:
        assert c.wait_closed(3 * SLOW), "idle keep-alive connection not closed on shutdown"
    assert p.stop(timeout=5) == 0
    assert time.monotonic() - t0 < 3 * SLOW
    for c in idle:
        c.close()


@pytest.mark.corral_only
def test_shutdown_grace_expires(corral, backend):
    """A request still running when shutdown_grace_ms ends is cut off, and corral still exits 0."""
    grace = ms(500)
    p = corral([backend], timeouts={"shutdown_grace_ms": grace})
    with Client(p.port) as c:
        c.send(build_request("GET", "/delay/5000"))
        deadline = time.monotonic() + 5 * SLOW  # until the request is in flight to the backend
        while sum(b["active"] for b in p.ctl_json("backends")["backends"]) != 1:
            assert time.monotonic() < deadline, "the request never reached the backend"
            time.sleep(0.02)
        t0 = time.monotonic()
        p.signal_graceful()
        try:
            r = c.read_response()
            assert r.status >= 500, r  # a proxy-made error is acceptable; a 200 is not possible in time
        except Closed:
            pass
        code = p.stop(timeout=5)
        elapsed = time.monotonic() - t0
    assert code == 0
    assert grace / 1000 - 0.1 <= elapsed < grace / 1000 + 2.0 * SLOW, \
        "exit %.2f s after SIGTERM with shutdown_grace_ms %d" % (elapsed, grace)


def test_restart_on_same_backend(corral, backend):
    """Two proxies at once on kernel-chosen ports serve the same backend; one of them is then
    restarted: stopped, and started again from the same config (same instance, so the same BPF
    pins, and the same control socket path) while the other keeps serving."""
    p1 = corral([backend])
    p2 = corral([backend])
    assert p1.port != p2.port
    assert simple_get(p1.port).status == 200
    assert simple_get(p2.port).status == 200
    assert p1.stop() == 0
    assert simple_get(p2.port).status == 200
    again = type(p1)(p1.tmp, p1.cfg)
    try:
        again.start()
        assert simple_get(again.port).status == 200
        assert simple_get(p2.port).status == 200
        if again.kind == "corral":  # its control socket answers: the old one did not get in the way
            assert again.stats()["total"]["requests"] == 1
    finally:
        if again.proc is not None:
            again.check_exit()


@pytest.mark.corral_only
def test_check_accepts_good_and_rejects_bad_config(tmp_path, backend):
    good = tmp_path / "good.yaml"
    good.write_text('listen: ["127.0.0.1:0"]\nbackends: [ { address: "%s", weight: 1 } ]\n'
                    'admin: { socket: "" }\n' % backend.address)
    r = subprocess.run([binary("corral"), "--check", "-c", str(good)], capture_output=True, timeout=10 * SLOW)
    assert r.returncode == 0, r.stderr.decode()
    bad = tmp_path / "bad.yaml"
    bad.write_text('listen: ["127.0.0.1:0"]\nbackends: [ { address: "%s" } ]\nlimits: { header_bytes_mxa: 1 }\n'
                   'admin: { socket: "" }\n' % backend.address)
    r = subprocess.run([binary("corral"), "--check", "-c", str(bad)], capture_output=True, timeout=10 * SLOW)
    assert r.returncode != 0
    assert b"header_bytes_mxa" in r.stderr + r.stdout, "the error does not name the bad key"
