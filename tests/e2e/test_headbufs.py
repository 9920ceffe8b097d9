"""End-to-end test of the head-buffer table's size: every connection slot can hold the head buffers
one exchange needs at once (proxy/constants.h: HBUF_PER_CONN), so a full table of slow exchanges
never runs out of them."""
import threading
import time

from conftest import SLOW
from recorder import Recorder
from util import Client, Closed

SLOTS = 100


def test_a_full_table_of_exchanges_holding_three_head_buffers_each_is_served(corral):
    """Each of SLOTS connections holds three head buffers at once: its request head arrives in two
    reads (assembled in a head buffer, which keeps the pipelined start of a next request), its
    serialised request head, and a response head the backend sends in two parts, the second only
    once every request has arrived. With 2 x slots + 64 head buffers (before) the last ones got
    an error instead of the response."""
    all_in = threading.Event()

    def handler(up, r):
        up.send(b"HTTP/1.1 200 OK\r\nContent-")
        all_in.wait(5 * SLOW)
        up.send(b"Length: 2\r\n\r\nok")
        return "close"

    rec = Recorder(handler)
    try:
        p = corral([rec.address], workers={"cores": [0]},
                   limits={"connections_per_core": SLOTS},
                   timeouts={"upstream_response_ms": 20000, "client_header_ms": 20000})
        clients = [Client(p.port, timeout=10 * SLOW) for _ in range(SLOTS)]
        try:
            for i, c in enumerate(clients):
                c.send(b"GET /%d HTTP/1.1\r\nHost: e2e.test\r\n" % i)
            time.sleep(0.3 * SLOW)  # each first part is read on its own
            for c in clients:
                c.send(b"\r\nGET /next HTTP/1.1\r\nHost: e2e")
            got_all = rec.wait_requests(SLOTS, timeout=5 * SLOW)
            time.sleep(0.2 * SLOW)  # every first response part is read by corral
            all_in.set()
            statuses = []
            for c in clients:
                try:
                    r = c.read_response()
                    statuses.append((r.status, r.body))
                except Closed:
                    statuses.append(("closed", None))
        finally:
            for c in clients:
                c.close()
        bad = [(i, s) for i, s in enumerate(statuses) if s != (200, b"ok")]
        assert not bad, "%d of %d exchanges failed: %r" % (len(bad), SLOTS, bad[:5])
        assert got_all, "only %d of %d requests reached the backend" % (len(rec.requests), SLOTS)
    finally:
        rec.close()
