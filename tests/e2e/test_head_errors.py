"""Issue 8 defect 16: corral's own responses to HEAD end at the head (RFC 9110 9.3.2), for every status
corral generates. Content-Length may still say what a GET would get; no byte may follow the head (a
stray body would be read as the start of the next response)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import SLOW  # noqa: E402
from upstreams import ctl_ok  # noqa: E402
from util import SilentServer, dead_address, exchange  # noqa: E402

pytestmark = pytest.mark.corral_only

LIMITS = {"header_bytes_max": 2048, "uri_bytes_max": 512, "body_bytes_max": 1000}
TIMEOUTS = {"client_header_ms": 500, "upstream_response_ms": 400, "upstream_connect_ms": 400}


def raw_exchange(port, wire, timeout=5.0):
    """Sends wire, reads everything until the proxy closes; returns the bytes."""
    return exchange(port, wire, timeout * SLOW, ends=ConnectionResetError, total=timeout * SLOW)


def assert_head_only(out, status):
    assert b"\r\n\r\n" in out, out
    head, rest = out.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 %d " % status), out
    assert b"\r\nContent-Length: " in head, head
    assert rest == b"", "a body (or stray bytes) after the head of a HEAD response: %r" % rest


def head_line(target="/", version="HTTP/1.1", extra=b""):
    return b"HEAD %s %s\r\nHost: e2e.test\r\n%s\r\n" % (target.encode(), version.encode(), extra)


PARSE_CASES = [
    (400, head_line(extra=b"X-Bad: a\x01b\r\n")),
    (413, head_line(extra=b"Content-Length: 5000\r\n")),
    (414, head_line(target="/" + "a" * 600)),
    (431, head_line(extra=b"X-Big: " + b"b" * 3000 + b"\r\n")),
    (501, head_line(extra=b"Transfer-Encoding: gzip, chunked\r\n")),
    (505, head_line(version="HTTP/1.2")),
    (408, b"HEAD / HTTP/1.1\r\nHost: e2e"),  # an incomplete head: the header deadline answers
]


@pytest.mark.parametrize("status,wire", PARSE_CASES, ids=[str(c[0]) for c in PARSE_CASES])
def test_client_side_errors_to_head_have_no_body(corral, backend, status, wire):
    p = corral([backend], limits=LIMITS, timeouts=TIMEOUTS, workers={"cores": [0]})
    assert_head_only(raw_exchange(p.port, wire), status)
    # The same error to GET still carries its body (the Content-Length it announces).
    if status != 408:
        out = raw_exchange(p.port, b"GET" + wire[4:])
        head, rest = out.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 %d " % status) and len(rest) > 0, out


def test_error_to_head_after_a_keep_alive_get_has_no_body(corral, backend):
    """The second request on a connection is a bad HEAD: its 400 has no body either."""
    p = corral([backend], limits=LIMITS, timeouts=TIMEOUTS, workers={"cores": [0]})
    out = raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: e2e.test\r\n\r\n" + head_line(extra=b"X-Bad: a\x01b\r\n"))
    first, second = out.split(b"HTTP/1.1 400 ", 1)
    assert first.startswith(b"HTTP/1.1 200 "), out
    assert_head_only(b"HTTP/1.1 400 " + second, 400)


def test_502_to_head_has_no_body(corral):
    p = corral([dead_address()], limits=LIMITS, timeouts=TIMEOUTS, workers={"cores": [0]})
    assert_head_only(raw_exchange(p.port, head_line()), 502)


def test_504_to_head_has_no_body(corral):
    silent = SilentServer()
    try:
        p = corral([silent.address], limits=LIMITS, timeouts=TIMEOUTS, workers={"cores": [0]})
        assert_head_only(raw_exchange(p.port, head_line()), 504)
    finally:
        silent.close()


def test_503_to_head_has_no_body(corral, backend):
    p = corral([backend], limits=LIMITS, timeouts=TIMEOUTS, workers={"cores": [0]})
    ctl_ok(p, "backend", "disable", "--force", backend.address)
    assert_head_only(raw_exchange(p.port, head_line()), 503)
