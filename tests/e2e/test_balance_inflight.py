"""End-to-end tests of the balancing state the workers keep: per-backend in-flight counts (the input
of least-conn, exported as corral_backend_active) must come back to zero when exchanges end, however
they end."""
import time

import pytest

from conftest import SLOW
from recorder import OK, Recorder
from upstreams import scrape
from util import Client

pytestmark = pytest.mark.corral_only


def backend_active(proxy):
    """corral_backend_active per backend address, from one scrape of the metrics listener."""
    out = {}
    for line in scrape(proxy)[2].split("\n"):
        if line.startswith("corral_backend_active{"):
            out[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
    return out


def wait_active(proxy, addr, want, timeout):
    deadline = time.monotonic() + timeout
    got = backend_active(proxy).get(addr)
    while got != want and time.monotonic() < deadline:
        time.sleep(0.05)
        got = backend_active(proxy).get(addr)
    return got


def test_in_flight_count_returns_to_zero_when_the_client_resets_before_the_response(corral):
    """The client resets while the backend is still working: corral only sees it when the
    response's send fails, after the response was complete (RS_DONE). That abort must still end
    the exchange's in-flight count, or least-conn avoids the backend for good."""
    n = 5

    def handler(up, r):
        time.sleep(0.3 * SLOW)  # the client is gone by now
        up.send(OK)
        return "close"

    rec = Recorder(handler)
    try:
        p = corral([rec.address], workers={"cores": [0]}, balance="least-conn")
        for i in range(n):
            c = Client(p.port, timeout=5 * SLOW)
            c.send(b"GET /gone%d HTTP/1.1\r\nHost: e2e.test\r\n\r\n" % i)
            assert rec.wait_requests(i + 1, timeout=5 * SLOW)
            c.abort()
        assert wait_active(p, rec.address, 0, 3 * SLOW) == 0
        # And the backend still serves.
        with Client(p.port, timeout=5 * SLOW) as c:
            assert c.get("/after").status == 200
        assert wait_active(p, rec.address, 0, 3 * SLOW) == 0
    finally:
        rec.close()
