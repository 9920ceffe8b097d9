"""End-to-end tests of the receive-buffer pool (proxy/bufpool.c): resident receive memory
follows the buffers in use, not limits.buffers_per_core, and a ring that runs dry still
serves every receive."""
import threading
import time

from conftest import SLOW
from util import Client, rss_bytes

BUF_BYTES = 16384


def _download(port, n, size, errors, done, deadline):
    try:
        with Client(port, timeout=10 * SLOW) as c:
            for _ in range(n):
                if time.monotonic() > deadline:
                    raise RuntimeError("load did not finish in time")
                r = c.get("/bytes/%d" % size)
                if r.status != 200 or r.body_len != size:
                    raise RuntimeError("bad response %r" % r)
                done.append(1)
    except Exception as e:  # reported by the main thread
        errors.append(e)


def _load(port, clients, n, size):
    errors, done = [], []
    deadline = time.monotonic() + 60 * SLOW
    ts = [threading.Thread(target=_download, args=(port, n, size, errors, done, deadline), daemon=True)
          for _ in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(70 * SLOW)
    assert not errors, errors
    assert len(done) == clients * n
    return len(done)


def test_resident_receive_memory_follows_busy_connections_not_ring_size(corral, backend):
    """A keep-alive load through a large pool: 4 busy connections downloading 256 KiB bodies make
    far more receives (> 5,000) than the pool has buffers (4,096). A ring stocked with the whole
    pool hands them out FIFO and all 64 MiB become resident; the bounded ring fed from the LIFO
    reuses the few warm ones."""
    nbufs = 4096
    pool = nbufs * BUF_BYTES
    p = corral([backend], workers={"cores": [0]},
               limits={"buffers_per_core": nbufs, "buffer_bytes": BUF_BYTES})
    pid = p.proc.pid
    base = rss_bytes(pid)
    _load(p.port, clients=4, n=80, size=262144)
    grown = rss_bytes(pid) - base
    assert grown < pool // 8, \
        "RSS grew %.1f MiB for 4 busy connections (pool %.0f MiB)" % (grown / 2**20, pool / 2**20)
    # Still serving, and every buffer comes back at the stop (CHECK_IFs in worker.c, teardown).
    p.wait_idle()


def _burst(port, conns, size):
    """conns connections send their request at the same moment (connected first, then one
    write each in a tight loop), so one loop pass of the proxy sees far more receives complete
    than its ring holds; then every response is read whole."""
    cs = [Client(port, timeout=20 * SLOW) for _ in range(conns)]
    try:
        req = b"GET /bytes/%d HTTP/1.1\r\nHost: e2e.test\r\n\r\n" % size
        for c in cs:
            c.send(req)
        for c in cs:
            r = c.read_response()
            assert r.status == 200 and r.body_len == size, r
    finally:
        for c in cs:
            c.close()


def test_ring_that_runs_dry_grows_and_starves_no_receive(corral, backend):
    """More receives at once than the ring's minimum fill (32): the ones that find it empty get
    -ENOBUFS, wait in the no-buffer queue and are served once the ring grows; every download
    completes intact, and keep-alive streams running meanwhile too."""
    p = corral([backend], workers={"cores": [0]},
               limits={"buffers_per_core": 1024, "buffer_bytes": 4096})
    for _ in range(3):
        _burst(p.port, 150, 65536)
    _load(p.port, clients=48, n=4, size=1 << 20)
    p.wait_idle()


def test_tiny_pool_serves_more_streams_than_buffers(corral, backend):
    """buffers_per_core at its minimum (16, below the ring's minimum fill): more streams than
    buffers take turns through the wait queue; bodies arrive whole."""
    p = corral([backend], workers={"cores": [0]},
               limits={"buffers_per_core": 16, "buffer_bytes": 4096})
    for _ in range(2):
        _burst(p.port, 64, 300000)
    p.wait_idle()
