"""Issue 8 defect 15: any RFC 9110 method token is forwarded, with and without a body, byte-exact; an
unknown method is not idempotent (never retried on a stale pooled connection)."""
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import SLOW  # noqa: E402
from recorder import OK, Recorder  # noqa: E402
from util import Client, chunked  # noqa: E402

pytestmark = pytest.mark.corral_only

# Registered (IANA) methods outside llhttp 8.1's table, extension methods, and a lower-case spelling
# (methods are case-sensitive: "get" is its own method).
METHODS = ["QUERY", "BAN", "X-CUSTOM", "VERSION-CONTROL", "MKWORKSPACE", "UPDATEREDIRECTREF",
           "BASELINE-CONTROL", "LABEL", "get", "PATCH", "PURGE"]


@pytest.fixture
def rec_proxy(corral):
    recs = []

    def start(handler=None):
        rec = Recorder(handler) if handler else Recorder()
        recs.append(rec)
        return corral([rec.address], workers={"cores": [0]}), rec

    yield start
    for r in recs:
        r.close()


@pytest.mark.parametrize("method", METHODS)
def test_method_token_is_forwarded_with_and_without_body(rec_proxy, method):
    p, rec = rec_proxy()
    body = b"q=select+1&x=%00"
    with Client(p.port, timeout=3 * SLOW) as c:
        r = c.request(method, "/m/plain")
        assert r.status == 200 and r.body == b"ok", r
        r = c.request(method, "/m/length", body=body)
        assert r.status == 200 and r.body == b"ok", r
        c.send(("%s /m/chunked HTTP/1.1\r\nHost: e2e.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                % method).encode() + chunked([body[:5], body[5:]]))
        r = c.read_response(method)
        assert r.status == 200 and r.body == b"ok", r
    got = [(q.method, q.target, q.body, q.complete) for q in rec.requests]
    assert got == [(method, "/m/plain", b"", True), (method, "/m/length", body, True),
                   (method, "/m/chunked", body, True)], got
    assert rec.requests[1].header("Content-Length") == str(len(body))
    assert rec.requests[2].header("Transfer-Encoding") == "chunked"


def test_connect_and_pri_are_still_not_implemented(rec_proxy):
    p, rec = rec_proxy()
    for line in (b"CONNECT e2e.test:443 HTTP/1.1", b"PRI / HTTP/1.1"):
        with Client(p.port, timeout=3 * SLOW) as c:
            c.send(line + b"\r\nHost: e2e.test\r\n\r\n")
            assert c.read_response().status == 501
    assert rec.requests == []


def test_unknown_method_is_not_retried_on_a_stale_pooled_connection(rec_proxy):
    """An extension method is treated as non-idempotent: a pooled connection the backend closed gives
    a 502, and the request reached the backend once (GET, for contrast, is retried)."""
    def handler(up, r):
        if up.index == 0 and len(up.requests) >= 2:
            return "close"
        up.send(OK)
        return "keep"

    p, rec = rec_proxy(handler)
    with Client(p.port, timeout=3 * SLOW) as c:
        assert c.request("GET", "/one").status == 200
        r = c.request("X-CUSTOM", "/two")
        assert r.status == 502, r
    time.sleep(0.1)
    assert [q.target for q in rec.requests if q.method == "X-CUSTOM"] == ["/two"]
