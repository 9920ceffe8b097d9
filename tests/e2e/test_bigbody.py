"""End-to-end tests of 200 MB bodies through the proxy: streamed both ways, exact SHA-256, flat proxy RSS."""
import hashlib
import os
import struct
import threading
import time

import pytest

from conftest import SLOW
from util import Client, RssSampler, build_request, chunked, pattern_sha256, tree_rss

BIG = 200 * 1024 * 1024
# The proxy must stream with bounded buffers: its RSS may not grow by more than this during a transfer.
RSS_GROWTH_MAX = 32 * 1024 * 1024
BLOCK = 1024 * 1024


def big_blocks(n, seed):
    """n bytes of incompressible data, 1 MiB at a time, each block stamped with its index so that
    reordered or repeated blocks change the hash."""
    base = bytearray(hashlib.shake_256(seed).digest(BLOCK))
    i = 0
    while n > 0:
        struct.pack_into("<Q", base, 0, i)
        struct.pack_into("<Q", base, BLOCK - 8, i ^ 0x5A5A5A5A)
        take = min(n, BLOCK)
        yield bytes(base[:take])
        n -= take
        i += 1


def upload_and_echo(port, total, chunked_upload, pid):
    """Sends total bytes to /echo from a thread while reading the echo; returns (sent_sha, got_sha, got_len, peak)."""
    sent = hashlib.sha256()
    got = hashlib.sha256()
    errors = []
    with Client(port, timeout=30) as c:
        hdrs = [("Transfer-Encoding", "chunked")] if chunked_upload else [("Content-Length", str(total))]
        c.send(build_request("POST", "/echo", hdrs))

        def sender():
            try:
                for b in big_blocks(total, b"upload"):
                    sent.update(b)
                    c.send((b"%x\r\n" % len(b)) + b + b"\r\n" if chunked_upload else b)
                if chunked_upload:
                    c.send(b"0\r\n\r\n")
            except Exception as e:  # reported by the main thread
                errors.append(e)

        t = threading.Thread(target=sender, daemon=True)
        base = tree_rss(pid)
        with RssSampler(pid) as rss:
            t.start()
            r = c.read_response("POST", sink=got.update)
            t.join(30)
        assert not errors, errors
        assert r.status == 200, r
        return sent.hexdigest(), got.hexdigest(), r.body_len, base, rss.peak


# NGINX is half-duplex here: it stops reading the request body once the response has begun, so a
# large /echo deadlocks through it by design. corral streams both directions at once.
@pytest.mark.corral_only
@pytest.mark.deadline(120)
def test_upload_200mb_streamed_and_echoed(corral, backend):
    p = corral([backend], limits={"body_bytes_max": 256 * 1024 * 1024})
    sent, got, n, base, peak = upload_and_echo(p.port, BIG, False, p.proc.pid)
    assert n == BIG
    assert got == sent, "echoed body differs from the uploaded one"
    assert peak - base < RSS_GROWTH_MAX, "proxy RSS grew %.1f MiB during the upload" % ((peak - base) / 2**20)


# NGINX is half-duplex here: it stops reading the request body once the response has begun, so a
# large /echo deadlocks through it by design. corral streams both directions at once.
@pytest.mark.corral_only
@pytest.mark.deadline(120)
def test_upload_chunked_64mb_streamed_and_echoed(corral, backend):
    p = corral([backend], limits={"body_bytes_max": 256 * 1024 * 1024})
    total = 64 * 1024 * 1024 + 12345
    sent, got, n, base, peak = upload_and_echo(p.port, total, True, p.proc.pid)
    assert n == total
    assert got == sent
    assert peak - base < RSS_GROWTH_MAX, "proxy RSS grew %.1f MiB during the upload" % ((peak - base) / 2**20)


@pytest.mark.deadline(120)
@pytest.mark.parametrize("chunked_resp", [False, True], ids=["content-length", "chunked"])
def test_download_200mb_with_a_slow_start(corral, backend, chunked_resp):
    """200 MB download; the client stops reading for a second early on (the proxy must apply
    backpressure to the backend, not buffer the rest), then reads everything and checks SHA-256."""
    p = corral([backend])
    want = pattern_sha256(BIG)
    h = hashlib.sha256()
    seen = [0]
    paused = [False]

    def sink(piece):
        h.update(piece)
        seen[0] += len(piece)
        if not paused[0] and seen[0] >= 8 * 1024 * 1024:
            paused[0] = True
            time.sleep(1.0)

    target = "/bytes/%d%s" % (BIG, "?chunked=1" if chunked_resp else "")
    with Client(p.port, timeout=30) as c:
        base = tree_rss(p.proc.pid)
        with RssSampler(p.proc.pid) as rss:
            c.send(build_request("GET", target))
            r = c.read_response(sink=sink, max_body=BIG)
        assert r.status == 200, r
        assert r.body_len == BIG
        assert h.hexdigest() == want, "downloaded body differs from the backend's pattern"
        assert rss.peak - base < RSS_GROWTH_MAX, \
            "proxy RSS grew %.1f MiB during the download" % ((rss.peak - base) / 2**20)
        # The connection survives a big exchange.
        assert c.get("/").status == 200


def send_until_pushed_back(c, n, chunk=64 * 1024):
    """Sends up to n bytes in chunks and returns how many went out; stops early once a send
    waits longer than a second (times SLOW), i.e. when the peer's backpressure reaches it."""
    data = os.urandom(chunk)
    sent = 0
    c.settimeout(1.0 * SLOW)
    try:
        while sent < n:
            c.send(data)
            sent += len(data)
    except TimeoutError:
        pass
    return sent


def test_client_aborts_big_upload_and_download(corral, backend):
    """Aborting a client mid-transfer (either direction) frees its slot and its upstream connection,
    and leaves the proxy healthy."""
    p = corral([backend], limits={"body_bytes_max": 256 * 1024 * 1024})
    for _ in range(3):
        with Client(p.port) as c:
            c.send(build_request("POST", "/echo", [("Content-Length", str(BIG))]))
            # Up to 4 MiB of the body, then the abort. The echo comes back while this client
            # reads nothing, so how much fits before backpressure reaches this send depends on
            # the sockets' buffer sizes: a blocking sendall of all of it could wait for good.
            sent = send_until_pushed_back(c, 4 * 1024 * 1024)
            assert sent >= 256 * 1024, "only %d bytes of the upload went out" % sent
            c.abort()
        with Client(p.port) as c:
            c.send(build_request("GET", "/bytes/%d" % BIG))
            c.sock.recv(1024 * 1024)
            c.abort()
    if p.kind == "corral":
        # Every client slot back, nothing in flight to the backend, and the backend holds no
        # connection but the ones corral keeps idle in its pool (a half-sent upload or download
        # cannot go back to the pool: it must have been closed).
        deadline = time.monotonic() + 10 * SLOW
        while True:
            s = p.stats()["total"]
            inflight = sum(b["active"] for b in p.ctl_json("backends")["backends"])
            upstream_open = backend.stats()["active"] - 1  # less the /__stats connection itself
            state = (s["conns_active"], inflight, upstream_open, s["pool"]["idle"])
            if s["conns_active"] == 0 and inflight == 0 and upstream_open <= s["pool"]["idle"]:
                break
            assert time.monotonic() < deadline, \
                "not freed (conns_active, in flight, backend conns, pool idle): %s" % (state,)
            time.sleep(0.05)
    else:
        p.wait_idle()
    with Client(p.port) as c:
        body = os.urandom(100000)
        assert c.request("POST", "/echo", body=body).body == body
        c.send(build_request("POST", "/echo", [("Transfer-Encoding", "chunked")]) + chunked([b"x" * 10]))
        assert c.read_response("POST").body == b"x" * 10


def test_backend_echoes_200mb_directly(backend):
    """The backend alone streams a 200 MB echo in bounded memory (checks the backend and this harness,
    so that a failure through the proxy points at the proxy)."""
    sent, got, n, base, peak = upload_and_echo(backend.port, BIG, False, backend.proc.pid)
    assert n == BIG and got == sent
    assert peak - base < 8 * 1024 * 1024
