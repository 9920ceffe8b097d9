"""Responses corral makes itself (400, 408, 502, 503, 504) end to end: the status the client gets,
the access-log line (operations.md: `upstream` is null when corral answered by itself), and the
counter that must move (`parse_errors`, `timeouts`, `conns_rejected`, `upstream_errors`)."""

import pytest

from conftest import SLOW
from upstreams import ctl, log_lines, ms, totals, wait_until, wproxy  # noqa: F401
from util import Client, Closed, SilentServer, dead_address, exchange, simple_get

pytestmark = pytest.mark.corral_only


def raw_exchange(port, data, timeout=5):
    """Sends data on a new connection and returns what comes back until the server closes."""
    return exchange(port, data, timeout * SLOW, ends=ConnectionResetError)


def test_400_is_logged_without_upstream_and_counted_as_a_parse_error(wproxy, backend, tmp_path):
    log = str(tmp_path / "access.log")
    p = wproxy([backend], access_log={"path": log, "format": "json"})
    t0 = totals(p)
    before = backend.stats()["requests"]
    out = raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 "), out[:200]
    assert simple_get(p.port, "/").status == 200
    lines = log_lines(log, 2)
    bad = [ln for ln in lines if ln["status"] == 400]
    good = [ln for ln in lines if ln["status"] == 200]
    assert len(bad) == 1 and len(good) == 1, lines
    assert bad[0]["upstream"] is None, bad[0]
    assert good[0]["upstream"] == backend.address, good[0]
    t1 = totals(p)
    assert t1["parse_errors"] - t0["parse_errors"] == 1
    assert t1["responses"]["4xx"] - t0["responses"]["4xx"] == 1
    assert backend.stats()["requests"] == before + 1  # only the good one


def test_413_is_logged_without_upstream_and_nothing_is_forwarded(wproxy, backend, tmp_path):
    log = str(tmp_path / "access.log")
    p = wproxy([backend], limits={"body_bytes_max": 1000}, access_log={"path": log, "format": "json"})
    before = backend.stats()["requests"]
    with Client(p.port) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n")
        r = c.read_response("POST")
    assert r.status == 413
    line = log_lines(log, 1)[0]
    assert line["status"] == 413, line
    assert line["upstream"] is None, line
    assert backend.stats()["requests"] == before


def test_access_log_names_the_backend_that_answered(wproxy, backend_factory, tmp_path):
    bs = {n: backend_factory(ident=n) for n in "AB"}
    log = str(tmp_path / "access.log")
    p = wproxy(list(bs.values()), access_log={"path": log, "format": "json"})
    ids = []
    with Client(p.port) as c:
        for i in range(10):
            r = c.get("/?n=%d" % i)
            assert r.status == 200
            ids.append(r.header("x-backend-id"))
    assert set(ids) == {"A", "B"}
    lines = {ln["uri"]: ln for ln in log_lines(log, 10)}
    key = "/?n=%d"
    for i, who in enumerate(ids):
        assert lines[key % i]["upstream"] == bs[who].address, (i, who, lines[key % i])


def test_408_on_a_slow_head_counts_a_timeout(wproxy, backend):
    p = wproxy([backend], timeouts={"client_header_ms": ms(300)})
    t0 = totals(p)
    with Client(p.port, timeout=10 * SLOW) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
        r = c.read_response()
    assert r.status == 408
    t1 = wait_until(lambda: (lambda t: t if t["timeouts"] > t0["timeouts"] else None)(totals(p)), 2)
    assert t1 and t1["timeouts"] - t0["timeouts"] == 1, (t0, t1)
    assert t1["parse_errors"] == t0["parse_errors"]


def test_504_from_a_silent_backend_is_logged_with_its_upstream_and_counted(wproxy, tmp_path):
    silent = SilentServer()
    log = str(tmp_path / "access.log")
    try:
        p = wproxy([silent.address], timeouts={"upstream_response_ms": ms(300)},
                   access_log={"path": log, "format": "json"})
        t0 = totals(p)
        r = simple_get(p.port, "/slow")
        assert r.status == 504
        t1 = totals(p)
        lines = log_lines(log, 1)
    finally:
        silent.close()
    assert lines[0]["status"] == 504 and lines[0]["uri"] == "/slow"
    assert lines[0]["upstream"] == silent.address, lines[0]
    assert t1["timeouts"] - t0["timeouts"] == 1
    assert t1["upstream_errors"] - t0["upstream_errors"] == 1
    assert t1["responses"]["5xx"] - t0["responses"]["5xx"] == 1


def test_502_from_a_dead_backend_is_logged_with_the_backend_it_tried(wproxy, tmp_path):
    dead = dead_address()
    log = str(tmp_path / "access.log")
    p = wproxy([dead], access_log={"path": log, "format": "json"})
    t0 = totals(p)
    assert simple_get(p.port, "/x").status == 502
    t1 = totals(p)
    line = log_lines(log, 1)[0]
    assert line["status"] == 502 and line["upstream"] == dead, line
    assert t1["upstream_errors"] - t0["upstream_errors"] >= 1
    assert t1["responses"]["5xx"] - t0["responses"]["5xx"] == 1


def test_503_with_every_backend_disabled_is_logged_without_upstream(wproxy, backend, tmp_path):
    log = str(tmp_path / "access.log")
    p = wproxy([backend], access_log={"path": log, "format": "json"})
    r = ctl(p, "backend", "disable", "--force", backend.address)  # the last one: needs --force
    assert r.returncode == 0, r.stderr
    assert simple_get(p.port, "/").status == 503
    line = log_lines(log, 1)[0]
    assert line["status"] == 503
    assert line["upstream"] is None, line


def test_full_connection_table_rejects_with_503_and_counts_it(wproxy, backend):
    p = wproxy([backend], workers={"cores": [0]}, limits={"connections_per_core": 1})
    t0 = totals(p)
    with Client(p.port) as held:
        assert held.get("/").status == 200  # the one slot is taken by this keep-alive client
        out = raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 503 "), out[:200]
        t1 = totals(p)
        assert t1["conns_rejected"] - t0["conns_rejected"] == 1, (t0, t1)
        assert held.get("/").status == 200  # the held client is not affected
    # Once the slot is free again, a new client is served.
    def served():
        try:
            return simple_get(p.port, "/").status == 200
        except (Closed, OSError):
            return False
    assert wait_until(served, 3)
