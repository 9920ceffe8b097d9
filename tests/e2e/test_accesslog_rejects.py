"""Issue 8 defect 10: the access log keeps valid UTF-8 as it is, and a request corral rejects is logged
with what was read of its request line (method, URI, protocol when known) and the reason."""
import json
import os
import socket
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import SLOW  # noqa: E402
from upstreams import access_log_raw  # noqa: E402
from util import Client, exchange  # noqa: E402

pytestmark = pytest.mark.corral_only


def send_raw(port, wire, wait=5.0):
    return exchange(port, wire, wait * SLOW, ends=(ConnectionResetError, socket.timeout))


def test_utf8_is_kept_and_rejected_requests_say_what_and_why(corral, backend, tmp_path):
    log = str(tmp_path / "access.log")
    p = corral([backend], access_log={"path": log, "format": "json"}, workers={"cores": [0]},
               timeouts={"client_header_ms": 500})
    with Client(p.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: e2e.test\r\nUser-Agent: " + "caf\u00e9 \u20ac".encode()
               + b"\r\n\r\n")
        assert c.read_response().status == 200
    bad = b"GET /x?q=1 HTTP/1.1\r\nHost: e2e.test\r\nX-Bad: a\x01b\r\n\r\n"
    assert send_raw(p.port, bad).startswith(b"HTTP/1.1 400 ")
    # A second request on a keep-alive connection is the bad one: nothing of the first leaks in.
    ka = b"GET /first HTTP/1.1\r\nHost: e2e.test\r\n\r\n" + b"POST /second HTTP/1.1\r\nHost: a b\r\n\r\n"
    out = send_raw(p.port, ka)
    assert out.startswith(b"HTTP/1.1 404 ") and b"HTTP/1.1 400 " in out, out
    # An incomplete head the header deadline ends: the version was never read.
    assert send_raw(p.port, b"GET /slow HTT").startswith(b"HTTP/1.1 408 ")
    raw = access_log_raw(log, 5)
    lines = [json.loads(x.decode("utf-8")) for x in raw]  # strict UTF-8 decode: fails on bad bytes
    assert "caf\u00e9 \u20ac".encode() in raw[0], raw[0]  # kept as UTF-8, not \u00c3\u00a9
    assert lines[0]["user_agent"] == "caf\u00e9 \u20ac", lines[0]
    assert "reason" not in lines[0]

    e = lines[1]
    assert (e["status"], e["method"], e["uri"], e["protocol"]) == (400, "GET", "/x?q=1", "HTTP/1.1"), e
    assert e["reason"] and e["upstream"] is None and e["bytes_in"] == len(bad), e

    assert lines[2]["status"] == 404 and lines[2]["uri"] == "/first"
    e = lines[3]
    assert (e["status"], e["method"], e["uri"], e["protocol"]) == (400, "POST", "/second", "HTTP/1.1"), e
    assert "Host" in e["reason"] and e["upstream"] is None, e
    assert e["duration_us"] == 0 and e["bytes_out"] < 200, e

    e = lines[4]
    assert (e["status"], e["method"], e["uri"], e["protocol"]) == (408, "GET", "/slow", None), e
    assert e["reason"] and e["bytes_in"] == len(b"GET /slow HTT"), e


def test_rejected_request_in_combined_format(corral, backend, tmp_path):
    log = str(tmp_path / "access.log")
    p = corral([backend], access_log={"path": log, "format": "combined"}, workers={"cores": [0]})
    assert send_raw(p.port, b"DELETE /y HTTP/1.1\r\nHost: e2e.test\r\nX-Bad: a\x01b\r\n\r\n").startswith(
        b"HTTP/1.1 400 ")
    line = access_log_raw(log, 1)[0].decode()
    assert '"DELETE /y HTTP/1.1" 400 ' in line, line
