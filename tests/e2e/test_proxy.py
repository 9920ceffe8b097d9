"""End-to-end data-plane tests: forwarding, keep-alive on both sides, pipelining, body framings."""
import os
import random
import socket

import pytest

from conftest import SLOW
from recorder import Recorder
from util import Client, build_request, chunked, parse_head_lines, pattern, simple_get


def test_get_root(proxied):
    r = simple_get(proxied.port, "/")
    assert r.status == 200
    assert r.body == b"Hello, world!"
    assert r.framing == "length" and r.header("content-length") == "13"


def test_keepalive_reused_on_both_sides(proxied, backend):
    """200 requests over 4 client connections: no client connection is closed, and the proxy
    reuses its upstream connections (the backend sees far fewer connections than requests)."""
    before = backend.stats()
    clients = [Client(proxied.port) for _ in range(4)]
    try:
        for i in range(200):
            c = clients[i % 4]
            r = c.get("/" if i % 3 else "/bytes/%d" % (i * 7))
            assert r.status == 200, (i, r)
            assert not r.will_close, "proxy announced a close on request %d: %r" % (i, r.headers)
            if i % 3:
                assert r.body == b"Hello, world!"
            else:
                assert r.body == pattern(0, i * 7)
        # Each client connection is still the one we opened: a request on it still works.
        for c in clients:
            assert c.get("/").status == 200
    finally:
        for c in clients:
            c.close()
    after = backend.stats()
    requests = after["requests"] - before["requests"]
    conns = after["connections"] - before["connections"]
    assert requests == 204
    # One request in flight at a time: one upstream connection per worker suffices; allow slack.
    assert conns <= 8, "backend saw %d connections for %d requests: no upstream keep-alive" % (conns, requests)


def test_pipelined_requests_answered_in_order(proxied):
    """Ten requests in one write, with different body sizes and framings: responses in order."""
    reqs = [
        ("GET", "/", None, b"Hello, world!"),
        ("GET", "/bytes/1", None, pattern(0, 1)),
        ("GET", "/bytes/100000", None, pattern(0, 100000)),
        ("GET", "/status/404", None, None),
        ("POST", "/echo", b"pipelined body " * 100, b"pipelined body " * 100),
        ("GET", "/bytes/0", None, b""),
        ("GET", "/delay/50", None, b"ok\n"),
        ("GET", "/bytes/70000?chunked=1", None, pattern(0, 70000)),
        ("HEAD", "/bytes/5000", None, b""),
        ("GET", "/bytes/12345", None, pattern(0, 12345)),
    ]
    wire = b"".join(build_request(m, t, body=b) for m, t, b, _ in reqs)
    with Client(proxied.port) as c:
        c.send(wire)
        for i, (m, t, _, want) in enumerate(reqs):
            r = c.read_response(m)
            if t.startswith("/status/"):
                assert r.status == int(t.rsplit("/", 1)[1]), (i, r)
                continue
            assert r.status == 200, (i, t, r)
            assert r.body == want, "response %d (%s %s) out of order or damaged" % (i, m, t)
            if m == "HEAD":
                assert r.header("content-length") == "5000"
        # The connection is still good after the batch.
        assert c.get("/").body == b"Hello, world!"


@pytest.mark.parametrize("size", [0, 1, 4096, 65537, 3 * 1024 * 1024 + 5])
def test_content_length_upload_echoed(proxied, size):
    body = os.urandom(size)
    with Client(proxied.port) as c:
        r = c.request("POST", "/echo", body=body)
        assert r.status == 200
        assert r.body == body
        assert c.get("/").status == 200


@pytest.mark.parametrize("sizes", [[1], [5, 0, 17], [70000, 3, 65536, 1], [1000] * 200, [2 * 1024 * 1024 + 3]])
def test_chunked_upload_echoed(proxied, sizes):
    rnd = random.Random(len(sizes))
    pieces = [bytes(rnd.getrandbits(8) for _ in range(min(n, 64))) * (n // 64 + 1) for n in sizes]
    pieces = [p[:n] for p, n in zip(pieces, sizes)]
    payload = b"".join(pieces)
    head = build_request("PUT", "/echo", [("Transfer-Encoding", "chunked")])
    with Client(proxied.port) as c:
        c.send(head + chunked(pieces, ext=True))
        r = c.read_response("PUT")
        assert r.status == 200
        assert r.body == payload
        assert r.framing in ("chunked", "length")
        assert c.get("/").status == 200


def test_chunked_upload_sent_slowly(proxied):
    """Chunk boundaries split across many small writes must not confuse the proxy's decoder."""
    pieces = [b"a" * 10, b"b" * 300, b"c" * 7]
    wire = build_request("POST", "/echo", [("Transfer-Encoding", "chunked")]) + chunked(pieces)
    with Client(proxied.port) as c:
        for i in range(0, len(wire), 5):
            c.send(wire[i:i + 5])
        r = c.read_response("POST")
        assert r.status == 200 and r.body == b"".join(pieces)


@pytest.mark.parametrize("n", [0, 1, 250, 251, 65536, 1000003])
def test_chunked_download(proxied, n):
    with Client(proxied.port) as c:
        r = c.get("/bytes/%d?chunked=1" % n)
        assert r.status == 200
        assert r.body == pattern(0, n)
        assert c.get("/").status == 200


@pytest.mark.parametrize("n", [0, 1, 65535, 1000003])
def test_content_length_download(proxied, n):
    with Client(proxied.port) as c:
        r = c.get("/bytes/%d" % n)
        assert r.status == 200
        assert r.framing == "length" and int(r.header("content-length")) == n
        assert r.body == pattern(0, n)


def test_head_has_no_body_and_keeps_connection(proxied):
    with Client(proxied.port) as c:
        r = c.request("HEAD", "/bytes/1000")
        assert r.status == 200 and r.body == b""
        assert r.header("content-length") == "1000"
        assert c.get("/").body == b"Hello, world!"


@pytest.mark.parametrize("code", [201, 204, 304, 404, 500, 503])
def test_status_codes_pass_through(proxied, code):
    with Client(proxied.port) as c:
        r = c.get("/status/%d" % code)
        assert r.status == code
        if code in (204, 304):
            assert r.body == b""
        else:
            assert r.body == b"status %d\n" % code
        assert c.get("/").status == 200


def test_backend_close_does_not_close_client(proxied):
    """A backend that closes after its response must not cost the client its connection."""
    with Client(proxied.port) as c:
        for _ in range(3):
            r = c.get("/close")
            assert r.status == 200 and r.body == b"bye\n"
            assert c.get("/").status == 200


def test_http10_client_gets_close(proxied):
    with Client(proxied.port) as c:
        c.send(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.body == b"Hello, world!"
        assert c.wait_closed(2.0)


def test_connection_close_honoured(proxied):
    with Client(proxied.port) as c:
        r = c.request("GET", "/", [("Connection", "close")])
        assert r.status == 200 and r.body == b"Hello, world!"
        assert c.wait_closed(2.0)


def test_forwarded_head(proxied):
    """The backend receives a well-formed head with the client's headers and X-Forwarded-For."""
    with Client(proxied.port) as c:
        r = c.request("GET", "/headers?x=1", [("X-Custom", "hello"), ("Accept", "*/*")])
        assert r.status == 200
    line, hdrs = parse_head_lines(r.body)
    assert line == "GET /headers?x=1 HTTP/1.1"
    names = [k.lower() for k, _ in hdrs]
    assert ("x-custom", "hello") in [(k.lower(), v) for k, v in hdrs]
    assert "host" in names
    assert any(k.lower() == "x-forwarded-for" and v.endswith("127.0.0.1") for k, v in hdrs), hdrs


@pytest.mark.corral_only
def test_hop_by_hop_headers_removed(proxied):
    """Connection, Keep-Alive, TE, Upgrade-less hop-by-hop and headers named in Connection are not forwarded;
    Via and X-Forwarded-Proto are added (corral re-serialises the head)."""
    with Client(proxied.port) as c:
        r = c.request("GET", "/headers", [("Connection", "keep-alive, X-Hop"), ("Keep-Alive", "timeout=5"),
                                          ("X-Hop", "secret"), ("TE", "trailers"), ("X-Keep", "1")])
        assert r.status == 200
    _, hdrs = parse_head_lines(r.body)
    names = [k.lower() for k, _ in hdrs]
    for hop in ("keep-alive", "x-hop", "te"):
        assert hop not in names, "%s was forwarded: %r" % (hop, hdrs)
    assert "x-keep" in names
    assert "via" in names and "x-forwarded-proto" in names


def test_two_backends_both_used(corral, backend_factory):
    b1, b2 = backend_factory(), backend_factory()
    p = corral([b1, b2])
    s1, s2 = b1.stats(), b2.stats()
    for _ in range(40):
        assert simple_get(p.port, "/").status == 200
    d1 = b1.stats()["requests"] - s1["requests"]
    d2 = b2.stats()["requests"] - s2["requests"]
    assert d1 + d2 == 40
    assert d1 >= 10 and d2 >= 10, "round-robin sent %d/%d" % (d1, d2)


@pytest.mark.parametrize("wire", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
], ids=["garbage", "version", "dup-cl", "space-in-name"])
def test_bad_request_gets_400_and_close(proxied, wire):
    with Client(proxied.port) as c:
        c.send(wire)
        r = c.read_response()
        assert r.status in (400, 505), r
        assert c.wait_closed(2.0)
    # The proxy is unharmed.
    assert simple_get(proxied.port, "/").status == 200


@pytest.mark.corral_only
@pytest.mark.parametrize("wire", [
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\nHost: x\n\n",
], ids=["cl-and-te", "te-not-only-chunked", "obs-fold", "bare-lf"])
def test_ambiguous_framing_rejected(corral, wire):
    """Strict parsing: anything ambiguous about framing is a 4xx (or 501) and a close, and not one
    byte of it is forwarded."""
    rec = Recorder()
    try:
        p = corral([rec.address], workers={"cores": [0]})
        with Client(p.port) as c:
            c.send(wire)
            r = c.read_response()
            assert 400 <= r.status < 500 or r.status == 501, r
            assert c.wait_closed(2.0 * SLOW)
        # A canary through the same (single) worker: whatever corral might still have been
        # sending is on the wire before it, and the recorder gets quiet after it.
        assert simple_get(p.port, "/__canary").status == 200
        rec.settle()
        forwarded = [q.raw for q in rec.requests + rec.partial if q.raw and q.target != "/__canary"]
        assert forwarded == [], "forwarded: %r" % forwarded
        canary = sum(len(q.raw) for q in rec.requests)
        assert rec.received() == canary, "%d bytes reached the backend besides the canary" % (
            rec.received() - canary)
    finally:
        rec.close()


def test_many_sequential_connections(proxied, backend):
    """Short-lived client connections (no keep-alive) still reuse upstream connections."""
    before = backend.stats()
    for _ in range(100):
        with Client(proxied.port) as c:
            r = c.request("GET", "/", [("Connection", "close")])
            assert r.status == 200
    after = backend.stats()
    assert after["requests"] - before["requests"] == 100
    assert after["connections"] - before["connections"] <= 8


def test_client_reads_slowly(proxied):
    """A 4 MiB response read with pauses arrives intact (backpressure, no truncation, no timeout)."""
    import time
    n = 4 * 1024 * 1024
    with Client(proxied.port) as c:
        c.send(build_request("GET", "/bytes/%d" % n))
        got = bytearray()
        marks = {256 * 1024, 1024 * 1024, 3 * 1024 * 1024}

        def sink(piece):
            before = len(got)
            got.extend(piece)
            for m in marks:
                if before < m <= len(got):
                    time.sleep(0.3)

        r = c.read_response(sink=sink)
        assert r.status == 200 and bytes(got) == pattern(0, n)
        assert c.get("/").status == 200


def test_concurrent_mixed_traffic(proxied, backend):
    """32 clients at once, each with its own mix of routes and sizes: every body arrives intact on
    its own connection (no cross-talk between connections or pooled upstreams)."""
    import threading
    errors = []

    def client(k):
        rnd = random.Random(k)
        try:
            with Client(proxied.port) as c:
                for i in range(15):
                    kind = rnd.randrange(5)
                    if kind == 0:
                        r = c.get("/")
                        assert r.body == b"Hello, world!"
                    elif kind == 1:
                        n = rnd.randrange(200000)
                        assert c.get("/bytes/%d" % n).body == pattern(0, n)
                    elif kind == 2:
                        n = rnd.randrange(100000)
                        assert c.get("/bytes/%d?chunked=1" % n).body == pattern(0, n)
                    elif kind == 3:
                        body = ("%d-%d-" % (k, i)).encode() * rnd.randrange(1, 5000)
                        assert c.request("POST", "/echo", body=body).body == body
                    else:
                        assert c.get("/delay/%d" % rnd.randrange(30)).body == b"ok\n"
        except Exception as e:  # reported below with the client number
            errors.append((k, repr(e)))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:5]
    assert all(not t.is_alive() for t in threads)


def test_expect_100_continue(proxied):
    """A client that waits for 100 Continue before its body gets it promptly, then the echo."""
    body = b"e" * 50000
    with Client(proxied.port, timeout=3) as c:
        c.send(build_request("POST", "/echo", [("Content-Length", str(len(body))), ("Expect", "100-continue")]))
        interim = c.read_response("POST", interim=True)
        assert interim.status == 100, interim
        c.send(body)
        r = c.read_response("POST")
        assert r.status == 200 and r.body == body
        assert c.get("/").status == 200


def test_pipelined_large_responses_unread_for_a_while(proxied):
    """20 pipelined 1 MB downloads that the client does not read for half a second: all arrive in
    order and intact, and the proxy does not buffer them all (RSS growth stays small)."""
    import time
    from util import tree_rss
    sizes = [1000000 + i for i in range(20)]
    with Client(proxied.port) as c:
        base = tree_rss(proxied.proc.pid)
        c.send(b"".join(build_request("GET", "/bytes/%d" % n) for n in sizes))
        time.sleep(0.5)
        grown = tree_rss(proxied.proc.pid) - base
        for n in sizes:
            r = c.read_response()
            assert r.status == 200 and r.body == pattern(0, n)
    assert grown < 16 * 1024 * 1024, "proxy RSS grew %.1f MiB holding unread responses" % (grown / 2**20)
