"""End-to-end tests of active health checks: fall/rise, passive down held until a check passes,
slow start, and what corralctl, the log and /metrics say about it."""
import datetime
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import SLOW
from upstreams import backends, ctl, ctl_ok, scrape, wait_until
from util import simple_get

pytestmark = pytest.mark.corral_only


class HealthBackend:
    """An HTTP backend whose /health answer the test switches; counts the other requests."""

    def __init__(self, port=0):
        self.health_status = 200
        self.requests = 0
        self.health_hits = 0
        self.health_headers = None
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                with outer.lock:
                    if self.path == "/health":
                        outer.health_hits += 1
                        outer.health_headers = dict(self.headers)
                        status = outer.health_status
                    else:
                        outer.requests += 1
                        status = 200
                body = b"pyback\n"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        ThreadingHTTPServer.allow_reuse_address = True
        ThreadingHTTPServer.daemon_threads = True
        self.srv = ThreadingHTTPServer(("127.0.0.1", port), H)
        self.port = self.srv.server_address[1]
        self.address = "127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def count(self):
        with self.lock:
            return self.requests

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def pyback():
    made = []

    def make(port=0):
        b = HealthBackend(port)
        made.append(b)
        return b

    yield make
    for b in made:
        try:
            b.close()
        except OSError:
            pass


def metrics(proxy):
    body = scrape(proxy)[2]
    out = {}
    for fam in text_string_to_metric_families(body):
        for smp in fam.samples:
            out[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value
    return out


def log_time(stamp):
    """A log line's time stamp (2026-12-01T23:23:48.463Z) in seconds since the epoch."""
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def test_failing_health_path_marks_down_within_fall_intervals_and_rise_brings_it_back(corral, pyback):
    a = pyback()
    backend = pyback()
    interval, fall, rise = 200, 2, 2
    p = corral([a.address, backend.address],
               health={"path": "/health", "interval_ms": interval, "timeout_ms": 150, "rise": rise,
                       "fall": fall, "host": "health.e2e.test"})
    assert wait_until(lambda: backends(p)[a.address]["last_check"], 3), backends(p)
    assert a.health_headers["Host"] == "health.e2e.test", a.health_headers
    assert a.health_headers["User-Agent"].startswith("corral-health/"), a.health_headers
    st = backends(p)[a.address]
    assert st["state"] == "up" and st["last_check"]["ok"] and st["last_check"]["result"] == "200", st

    # Still accepting connections, but the health path answers 500.
    t0 = time.time()  # the clock corral stamps its log lines with
    a.health_status = 500
    assert wait_until(lambda: backends(p)[a.address]["state"] == "down", 3), backends(p)
    # When corral decided, from its log line's time stamp: polling corralctl from here adds its
    # own delay, which on a loaded machine is not corral's.
    m = p.err.wait_for(r"^(\S+) corral\[\d+\] \w+: backend %s DOWN" % re.escape(a.address), 1)
    assert m, p.log()[-2000:]
    took = log_time(m.group(1)) - t0
    print("health: marked down %.3f s after the health path began failing (fall %d x %d ms)"
          % (took, fall, interval))
    # fall checks at interval_ms apart, plus one interval for the check in progress.
    assert took <= ((fall + 1) * interval / 1000.0 + 0.3) * SLOW, took
    st = backends(p)[a.address]
    assert re.search(r"\d+ checks failed", st["reason"]) and "status 500" in st["reason"], st
    assert st["last_check"]["ok"] is False and st["checks_failed"] >= fall, st
    assert p.err.wait_for(r"backend %s DOWN: 2 checks failed \(status 500, expected 200-399\)"
                          % a.address.replace(".", r"\."), 1)
    m = metrics(p)
    assert m[("corral_backend_up", (("backend", a.address),))] == 0
    assert m[("corral_backend_up", (("backend", backend.address),))] == 1
    assert m[("corral_backend_health_checks_total", (("backend", a.address), ("result", "failed")))] >= fall
    assert m[("corral_backend_state_changes_total", (("backend", a.address),))] >= 1

    # No new request reaches it while it is down.
    before = a.count()
    for _ in range(20):
        r = simple_get(p.port, "/")
        assert r.status == 200, r
    assert a.count() == before, "a down backend got %d requests" % (a.count() - before)
    # A reload keeps its state: still down, still no requests.
    ctl_ok(p, "reload")
    assert backends(p)[a.address]["state"] == "down"
    for _ in range(10):
        assert simple_get(p.port, "/").status == 200
    assert a.count() == before

    # Healthy again: back after `rise` passed checks, and it takes traffic again.
    a.health_status = 200
    t0 = time.monotonic()
    assert wait_until(lambda: backends(p)[a.address]["state"] == "up", 3), backends(p)
    took = time.monotonic() - t0
    print("health: back up %.3f s after the health path recovered (rise %d x %d ms)" % (took, rise, interval))
    assert took <= ((rise + 1) * interval / 1000.0 + 0.3) * SLOW
    assert "2 checks passed" in backends(p)[a.address]["reason"]
    for _ in range(20):
        assert simple_get(p.port, "/").status == 200
    assert a.count() > before
    out = ctl(p, "backends").stdout
    assert "LAST CHECK" in out and "ok 200" in out, out


def test_killed_backend_stays_down_until_a_check_passes(corral, pyback):
    a = pyback()
    backend = pyback()
    port = a.port
    # Slow checks (fall 3 x 2 s), so only passive detection can mark it down quickly; the park
    # (backend_park_ms, 300 ms here) ends long before any check could bring it back.
    p = corral([a.address, backend.address], timeouts={"backend_park_ms": 300},
               health={"path": "/health", "interval_ms": 2000, "timeout_ms": 500, "rise": 1,
                       "fall": 3})
    assert wait_until(lambda: backends(p)[a.address]["last_check"], 3)
    a.close()
    # Requests still succeed (retried on the other backend) and mark it down at once.
    for _ in range(6):
        assert simple_get(p.port, "/").status == 200
    st = wait_until(lambda: backends(p)[a.address]["state"] == "down" and backends(p)[a.address], 1)
    assert st, backends(p)
    assert "passive" in st["reason"], st
    # Well past the park: still down, and no check has passed.
    time.sleep(0.8)
    st = backends(p)[a.address]
    assert st["state"] == "down", st
    # Back on the same port: the next check passes (rise 1) and it is up again.
    b = pyback(port)
    assert wait_until(lambda: backends(p)[a.address]["state"] == "up", 3), backends(p)
    st = backends(p)[a.address]
    assert "1 check passed" in st["reason"], st
    for _ in range(10):
        assert simple_get(p.port, "/").status == 200
    assert b.count() > 0


def test_slow_start_ramps_weight_after_recovery(corral, pyback):
    a = pyback()
    backend = pyback()
    p = corral([a.address, backend.address],
               health={"path": "/health", "interval_ms": 100, "timeout_ms": 80, "rise": 1, "fall": 1,
                       "slow_start_ms": 1500})
    assert wait_until(lambda: backends(p)[a.address]["last_check"], 3)
    ctl_ok(p, "backend", "weight", a.address, "100")
    a.health_status = 503
    assert wait_until(lambda: backends(p)[a.address]["state"] == "down", 2)
    a.health_status = 200
    assert wait_until(lambda: backends(p)[a.address]["state"] == "up", 2)
    seen = set()
    deadline = time.monotonic() + 4 * SLOW
    while time.monotonic() < deadline:
        w = backends(p)[a.address]["weight"]
        seen.add(w)
        if w == 100:
            break
        time.sleep(0.05)
    assert 100 in seen, seen
    assert any(1 <= w < 100 for w in seen), "weight did not ramp: %s" % sorted(seen)


def test_without_checks_passive_park_is_logged(corral, pyback):
    a = pyback()
    backend = pyback()
    p = corral([a.address, backend.address], timeouts={"backend_park_ms": 300})
    a.close()
    for _ in range(4):
        assert simple_get(p.port, "/").status == 200
    esc = a.address.replace(".", r"\.")
    assert p.err.wait_for(r"backend %s DOWN: connect failed on a request \(passive\)" % esc, 2 * SLOW)
    assert p.err.wait_for(r"backend %s UP: park ended" % esc, 2 * SLOW)
    assert backends(p)[a.address]["last_check"] is None
