"""upstream_response_ms (docs/config.md): the time from request sent to response head, and between
reads of the response body. A backend that keeps sending slowly is never cut off; one that stalls
mid-body for longer is, and the client can tell the body is incomplete."""
import socket
import time

import pytest

from conftest import SLOW
from recorder import Recorder
from upstreams import ms, totals, wait_until, wproxy  # noqa: F401
from util import Client, Closed

pytestmark = pytest.mark.corral_only

TIMEOUT_MS = 500


def dripping(gap_s, pieces, stall_after=None, stall_s=0):
    def handler(up, req):
        up.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % pieces)
        for i in range(pieces):
            if stall_after is not None and i == stall_after:
                time.sleep(stall_s)
            time.sleep(gap_s)
            try:
                up.send(b"x")
            except OSError:
                return "close"
        return "keep"
    return handler


def test_a_body_that_keeps_coming_is_not_cut_by_upstream_response_ms(wproxy):
    timeout_s = ms(TIMEOUT_MS) / 1000.0
    # Eight pieces, each a quarter of the timeout apart: twice the timeout in all.
    rec = Recorder(handler=dripping(timeout_s / 4, 8))
    try:
        p = wproxy([rec.address], timeouts={"upstream_response_ms": ms(TIMEOUT_MS)})
        t0 = totals(p)
        with Client(p.port, timeout=20 * SLOW) as c:
            start = time.monotonic()
            r = c.get("/drip")
            took = time.monotonic() - start
        assert r.status == 200 and r.body == b"x" * 8, r
        assert took > timeout_s, "the body came faster than the test assumes (%.2f s)" % took
        assert totals(p)["timeouts"] == t0["timeouts"]
    finally:
        rec.close()


def test_a_body_that_stalls_longer_than_upstream_response_ms_is_cut(wproxy):
    timeout_s = ms(TIMEOUT_MS) / 1000.0
    rec = Recorder(handler=dripping(0.01, 4, stall_after=2, stall_s=timeout_s * 3))
    try:
        p = wproxy([rec.address], timeouts={"upstream_response_ms": ms(TIMEOUT_MS)})
        t0 = totals(p)
        with Client(p.port, timeout=20 * SLOW) as c:
            c.send(b"GET /stall HTTP/1.1\r\nHost: a\r\n\r\n")
            with pytest.raises(Closed):
                c.read_response()
        assert wait_until(lambda: totals(p)["timeouts"] == t0["timeouts"] + 1, 2), totals(p)["timeouts"]
    finally:
        rec.close()


def test_an_upload_that_keeps_coming_is_not_cut_by_client_body_ms(wproxy, backend):
    body_s = ms(TIMEOUT_MS) / 1000.0
    p = wproxy([backend], timeouts={"client_body_ms": ms(TIMEOUT_MS)})
    with Client(p.port, timeout=20 * SLOW) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\n")
        start = time.monotonic()
        for _ in range(8):
            time.sleep(body_s / 4)
            c.send(b"u")
        r = c.read_response("POST")
        took = time.monotonic() - start
    assert r.status == 200 and r.body == b"u" * 8, r
    assert took > body_s


@pytest.mark.parametrize("head", [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
                                  b"HTTP/1.0 200 OK\r\n\r\n"],
                         ids=["content-length", "close-delimited"])
def test_an_http10_client_whose_response_stalls_mid_body_gets_a_reset_not_a_fin(wproxy, head):
    # To an HTTP/1.0 client both bodies are close-delimited: a FIN after upstream_response_ms
    # would make the first 10 bytes look like the whole body.
    stall_s = ms(TIMEOUT_MS) / 1000.0 * 4

    def handler(up, req):
        up.send(head + b"x" * 10)
        time.sleep(stall_s)
        return "close"

    rec = Recorder(handler=handler)
    try:
        p = wproxy([rec.address], timeouts={"upstream_response_ms": ms(TIMEOUT_MS)})
        s = socket.create_connection(("127.0.0.1", p.port), timeout=20 * SLOW)
        try:
            s.sendall(b"GET /stall HTTP/1.0\r\nHost: a\r\n\r\n")
            got, reset = b"", False
            while True:
                try:
                    d = s.recv(65536)
                except ConnectionResetError:
                    reset = True
                    break
                if not d:
                    break
                got += d
        finally:
            s.close()
        assert got.endswith(b"\r\n\r\n" + b"x" * 10), got
        assert reset, "the cut body ended with a clean FIN: %r" % got
    finally:
        rec.close()
