"""Adversarial review of the TLS transport (ctls.c, upstream_tls.c, tls.c) and of the HTTP paths
it runs through: each test here shows a defect that review found (seen failing before its fix).

Every proxy has its TLS listener first (proxy.port is a util.TlsPort: util.Client speaks TLS to
it) and a plaintext listener second, where the same defect showed over TCP too."""
import re
import time
import socket

import pytest

from conftest import SLOW, tls_listen
from util import Client, pattern

pytestmark = pytest.mark.corral_only

IO = 10 * SLOW


def start(corral, backends, cert, **over):
    """corral with a TLS listener (p.port) and a plaintext one (p.plain_port)."""
    p = corral(backends, listen=[tls_listen(cert), "127.0.0.1:0"], **over)
    ports = [int(m) for m in re.findall(r"listening on 127\.0\.0\.1:(\d+)", p.log())]
    assert len(ports) >= 2, p.log()[-2000:]
    p.plain_port = ports[1]
    return p


def post_then_fin(port, body, close_notify):
    """POST /echo with body, sent at once, then the TCP FIN (over TLS after close_notify when
    close_notify): a client that half-closes once its request is out and reads the answer."""
    c = Client(port, timeout=IO)
    c.send(b"POST /echo HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    raw = getattr(c.sock, "raw", c.sock)
    if close_notify:
        c.sock.shutdown(socket.SHUT_WR)  # TlsSocket: close_notify, the TCP stream stays open
    raw.shutdown(socket.SHUT_WR)
    return c


@pytest.mark.parametrize("how", ["tls", "tls+close_notify", "plain"])
def test_an_upload_followed_by_a_fin_is_forwarded_whole(corral, backend, tls_cert, how):
    """client.c:c_on_poll and exchange.c:exchange_req_pump took the FIN the EOF poll sees for the
    end of the client's bytes: with the rest of the body still in the socket (or, over TLS, in
    records already read) the request was dropped as a 499 and the client got a reset. The FIN
    follows the body: a receive must read what came before it."""
    p = start(corral, [backend], tls_cert)
    port = p.plain_port if how == "plain" else p.port
    body = pattern(0, 300000)
    for i in range(5):
        with post_then_fin(port, body, how == "tls+close_notify") as c:
            r = c.read_response("POST")
            assert r.status == 200 and r.body == body, (i, r.status, len(r.body))
    assert p.stats()["total"]["client_aborts"] == 0, p.stats()["total"]


@pytest.mark.parametrize("how", ["tls", "plain"])
def test_a_request_pipelined_before_a_fin_is_answered(corral, backend, tls_cert, how):
    """client.c:req_next closed the connection once an exchange ended with nothing in c->in when
    the EOF poll had seen the client's FIN, though the request the client pipelined before that
    FIN still waited in the socket (over TLS: in its records): it was never answered."""
    p = start(corral, [backend], tls_cert)
    port = p.plain_port if how == "plain" else p.port
    with Client(port, timeout=IO) as c:
        c.send(b"GET /delay/%d HTTP/1.1\r\nHost: e2e.test\r\n\r\n" % int(300 * SLOW))
        time.sleep(0.1 * SLOW)  # the first request is read and its exchange is under way
        c.send(b"GET /bytes/10 HTTP/1.1\r\nHost: e2e.test\r\n\r\n")
        getattr(c.sock, "raw", c.sock).shutdown(socket.SHUT_WR)
        r = c.read_response()
        assert r.status == 200, r
        r = c.read_response()
        assert r.status == 200 and r.body == pattern(0, 10), r
