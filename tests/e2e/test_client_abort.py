"""Issue 8 defect 2: a client that gives up aborts its upstream exchange. While a request is in flight
(its body sent or not, the response not complete), a client close (FIN) or reset is noticed well under a
second, the upstream connection is closed (not pooled), and the access log says 499 with the bytes
actually sent. A client that only half-closes and still reads gets its full response (test_hardening.py:
test_half_closed_client_gets_full_response)."""
import os
import socket
import struct
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import SLOW  # noqa: E402
from recorder import OK, Recorder  # noqa: E402
from upstreams import log_lines, totals  # noqa: E402
from util import Client  # noqa: E402

pytestmark = pytest.mark.corral_only

PROMPT = 1.0  # "well under a second" from the client's close to the upstream close


def hold_handler(up, r):
    """Never answers the slow request (the client gives up first); answers everything else."""
    if r.target.startswith("/slow"):
        return "hold"
    up.send(OK)
    return "keep"


@pytest.fixture
def setup(corral, tmp_path):
    recs = []

    def start():
        rec = Recorder(hold_handler)
        recs.append(rec)
        log = str(tmp_path / "access.log")
        p = corral([rec.address], workers={"cores": [0]}, access_log={"path": log, "format": "json"},
                   timeouts={"upstream_response_ms": 20000, "client_body_ms": 20000})
        return p, rec, log

    yield start
    for r in recs:
        r.close()


def wait_upstream_closed(rec, index, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with rec.lock:
            if len(rec.conns) > index and rec.conns[index].eof:
                return rec.conns[index].closed_at
        time.sleep(0.005)
    return None


def give_up(c, how):
    if how == "reset":
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.sock.close()
    return time.monotonic()


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("kind", ["get", "post-body-sent", "post-body-partial"])
def test_client_that_gives_up_aborts_the_upstream_exchange(setup, how, kind):
    p, rec, log = setup()
    c = Client(p.port, timeout=5 * SLOW)
    if kind == "get":
        c.send(b"GET /slow HTTP/1.1\r\nHost: e2e.test\r\n\r\n")
    elif kind == "post-body-sent":
        c.send(b"POST /slow HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: 5\r\n\r\nhello")
    else:
        c.send(b"POST /slow HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    # The request (or the part of it sent) has reached the backend: the exchange is in flight.
    deadline = time.monotonic() + 3 * SLOW
    while time.monotonic() < deadline:
        with rec.lock:
            if rec.conns and len(rec.conns[0].data) >= (1000 if kind == "post-body-partial" else 1):
                break
        time.sleep(0.005)
    time.sleep(0.2)
    t0 = give_up(c, how)
    closed_at = wait_upstream_closed(rec, 0, 5 * SLOW)
    assert closed_at is not None, "corral kept the upstream exchange after the client went away"
    assert closed_at - t0 < PROMPT * SLOW, "noticed only after %.3f s" % (closed_at - t0)
    e = log_lines(log, 1)[0]
    assert e["status"] == 499 and e["method"] in ("GET", "POST") and e["uri"] == "/slow", e
    assert e["upstream"] == rec.address, e
    assert e["bytes_out"] in (0, len(b"HTTP/1.1 100 Continue\r\n\r\n")), e
    assert e["duration_us"] < (PROMPT * SLOW + 0.5) * 1e6, e
    st = totals(p)
    assert st["client_aborts"] == 1 and st["responses"]["4xx"] == 1, st
    # The aborted upstream connection was closed, not pooled: the next request opens a new one.
    with Client(p.port, timeout=5 * SLOW) as c2:
        assert c2.get("/next").status == 200
    assert len(rec.conns) == 2 and [q.target for q in rec.conns[1].requests if q.complete] == ["/next"]
    assert totals(p)["pool"]["idle"] == 1


def test_client_gone_mid_response_is_logged_499_with_bytes_sent(corral, tmp_path):
    """The response has started (head and part of the body sent) when the client resets."""
    def handler(up, r):
        up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"y" * 1000)
        return "hold"

    rec = Recorder(handler)
    try:
        log = str(tmp_path / "access.log")
        p = corral([rec.address], workers={"cores": [0]}, access_log={"path": log, "format": "json"})
        c = Client(p.port, timeout=5 * SLOW)
        c.send(b"GET /part HTTP/1.1\r\nHost: e2e.test\r\n\r\n")
        got = b""
        while len(got) < 1000:
            got += c.sock.recv(65536)
        t0 = give_up(c, "reset")
        closed_at = wait_upstream_closed(rec, 0, 5 * SLOW)
        assert closed_at is not None and closed_at - t0 < PROMPT * SLOW
        e = log_lines(log, 1)[0]
        assert e["status"] == 499 and e["bytes_out"] == len(got), (e, len(got))
        assert totals(p)["responses"]["2xx"] == 1  # the response's own status counted once
    finally:
        rec.close()
