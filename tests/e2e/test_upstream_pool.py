"""Upstream keep-alive pool (docs/config.md): idle pooled connections are reused, closed after
upstream_idle_ms, and upstream_idle_per_backend: 0 turns reuse off. Connections are counted by the
backend itself (/__stats), not by corral."""
import pytest

from upstreams import BackendProbe, ms, totals, wait_until, wproxy  # noqa: F401
from util import Client

pytestmark = pytest.mark.corral_only


def test_pooled_connection_is_reused_then_closed_after_upstream_idle_ms(wproxy, backend, request):
    probe = BackendProbe(backend)
    request.addfinalizer(probe.close)
    idle_ms = ms(1000)
    p = wproxy([backend], workers={"cores": [0]}, timeouts={"upstream_idle_ms": idle_ms})
    with Client(p.port) as c:
        for _ in range(5):
            assert c.get("/").status == 200
    assert probe.conns() == 1  # one upstream connection, reused
    assert totals(p)["pool"]["idle"] == 1
    # Closed once idle for upstream_idle_ms: the pool empties and the backend sees the close.
    assert wait_until(lambda: totals(p)["pool"]["idle"] == 0, idle_ms / 1000.0 + 3), totals(p)["pool"]
    assert wait_until(lambda: probe.active() == 0, 2), backend.stats()
    assert probe.conns() == 1
    # The next request needs a new connection.
    with Client(p.port) as c:
        assert c.get("/").status == 200
    assert probe.conns() == 2


def test_idle_connection_survives_shorter_than_upstream_idle_ms(wproxy, backend, request):
    probe = BackendProbe(backend)
    request.addfinalizer(probe.close)
    p = wproxy([backend], workers={"cores": [0]}, timeouts={"upstream_idle_ms": ms(20000)})
    with Client(p.port) as c:
        assert c.get("/").status == 200
    assert wait_until(lambda: totals(p)["pool"]["idle"] == 1, 2)
    # Four of corral's 10 ms ticks and a health scan later it is still there and reused.
    import time
    time.sleep(0.3)
    with Client(p.port) as c:
        assert c.get("/").status == 200
    assert probe.conns() == 1


def test_upstream_idle_per_backend_zero_turns_keep_alive_off(wproxy, backend, request):
    probe = BackendProbe(backend)
    request.addfinalizer(probe.close)
    p = wproxy([backend], workers={"cores": [0]}, limits={"upstream_idle_per_backend": 0})
    t0 = totals(p)
    with Client(p.port) as c:
        for _ in range(5):
            assert c.get("/").status == 200
    assert probe.conns() == 5
    t1 = totals(p)
    assert t1["pool"]["idle"] == 0
    assert t1["pool"]["hits"] == t0["pool"]["hits"]
    assert wait_until(lambda: probe.active() == 0, 2), backend.stats()


def test_upstream_idle_per_backend_bounds_the_pool(wproxy, backend, request):
    probe = BackendProbe(backend)
    request.addfinalizer(probe.close)
    import threading
    p = wproxy([backend], workers={"cores": [0]}, limits={"upstream_idle_per_backend": 2})
    # Four requests in flight at once need four upstream connections; only two stay pooled.
    hold = ms(400)
    out = []
    clients = [Client(p.port) for _ in range(4)]
    try:
        ts = [threading.Thread(target=lambda c=c: out.append(c.get("/delay/%d" % hold).status)) for c in clients]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
    finally:
        for c in clients:
            c.close()
    assert out == [200] * 4
    assert probe.conns() == 4
    assert wait_until(lambda: totals(p)["pool"]["idle"] == 2, 2), totals(p)["pool"]
    assert wait_until(lambda: probe.active() == 2, 2), backend.stats()


def closing_second_request(up, req):
    """A backend that closes a kept-alive connection instead of answering its second request,
    as one does when its own keep-alive timeout ends just as corral reuses the connection."""
    from recorder import OK
    if len(up.requests) >= 2:
        return "close"
    up.send(OK)
    return "keep"


def test_idempotent_request_on_a_pooled_connection_the_backend_closed_is_retried_uncounted(wproxy):
    from recorder import Recorder
    rec = Recorder(handler=closing_second_request)
    try:
        # upstream_attempts_max 1: the retry on a fresh connection must not count as an attempt.
        p = wproxy([rec.address], workers={"cores": [0]}, limits={"upstream_attempts_max": 1})
        t0 = totals(p)
        with Client(p.port) as c:
            assert c.get("/one").status == 200
            r = c.get("/two")
            assert r.status == 200 and r.body == b"ok", r
            t1 = totals(p)
            # A POST is not idempotent: corral cannot know whether the backend acted on it.
            r = c.request("POST", "/three", body=b"data")
            assert r.status == 502, r
        with Client(p.port) as c:  # the same without a body
            assert c.get("/four").status == 200
            r = c.request("POST", "/five")
            assert r.status == 502, r
        rec.settle()
        got = [(q.method, q.target, q.complete) for q in rec.requests]
    finally:
        rec.close()
    assert got == [("GET", "/one", True), ("GET", "/two", True), ("GET", "/two", True),
                   ("POST", "/three", True), ("GET", "/four", True), ("POST", "/five", True)], got
    # /one and the first /two on the first connection; the retried /two, then the POST, on the second.
    assert [len(u.requests) for u in rec.conns] == [2, 2, 2], [len(u.requests) for u in rec.conns]
    assert t1["upstream_retries"] - t0["upstream_retries"] == 1
    assert t1["responses"]["2xx"] - t0["responses"]["2xx"] == 2
