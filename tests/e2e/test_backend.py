"""Tests of corral-backend itself (no proxy): the routes the other end-to-end tests rely on."""
import json
import threading
import time

from conftest import SLOW
from util import Client, build_request, chunked, pattern, simple_get


def test_stats_count_connections_and_requests(backend):
    """/__stats counts accepted connections and requests (not itself)."""
    s0 = backend.stats()
    with Client(backend.port) as c:
        for _ in range(5):
            assert c.get("/").status == 200
    s1 = backend.stats()
    assert s1["requests"] - s0["requests"] == 5
    # This client's connection plus the stats() connection in between.
    assert s1["connections"] - s0["connections"] == 2


def test_routes(backend):
    with Client(backend.port) as c:
        r = c.get("/")
        assert (r.status, r.body, r.header("content-length")) == (200, b"Hello, world!", "13")
        assert c.get("/bytes/1000").body == pattern(0, 1000)
        r = c.get("/bytes/70000?chunked=1")
        assert r.framing == "chunked" and r.body == pattern(0, 70000)
        assert c.get("/work").status == 200
        assert c.get("/status/418").status == 418
        assert c.get("/status/204").body == b""
        assert c.get("/nope").status == 404
        r = c.request("GET", "/headers", [("X-A", "1")])
        assert r.body.startswith(b"GET /headers HTTP/1.1\r\n") and b"\r\nX-A: 1\r\n" in r.body
        assert r.body.endswith(b"\r\n\r\n")
        c.send(build_request("POST", "/echo", [("Transfer-Encoding", "chunked")]) + chunked([b"ab", b"cde"]))
        r = c.read_response("POST")
        assert r.framing == "chunked" and r.body == b"abcde"
        assert c.request("POST", "/echo", body=b"xyz").body == b"xyz"
        r = c.request("HEAD", "/bytes/10")
        assert r.header("content-length") == "10" and r.body == b""
        r = c.get("/close")
        assert r.will_close and c.wait_closed(2)
    st = json.loads(simple_get(backend.port, "/__stats").body)
    assert set(st) >= {"connections", "requests"}


def test_pipelined_in_order(backend):
    reqs = [build_request("GET", "/bytes/%d" % n) for n in (5, 100000, 0, 3)] + [build_request("GET", "/delay/20"),
                                                                                 build_request("GET", "/")]
    with Client(backend.port) as c:
        c.send(b"".join(reqs))
        for n in (5, 100000, 0, 3):
            assert c.read_response().body == pattern(0, n)
        assert c.read_response().body == b"ok\n"
        assert c.read_response().body == b"Hello, world!"


def test_delay_does_not_block_other_connections(backend):
    """/delay is timer-based: 20 concurrent /delay/300 overlap, they do not run one after another.
    The condition, not a rate: every request was sent before the first answer came back."""
    n = 20
    clients = [Client(backend.port, timeout=10 * SLOW) for _ in range(n)]
    sent, done, results = [None] * n, [None] * n, [None] * n
    go = threading.Barrier(n, timeout=10 * SLOW)

    def one(i):
        go.wait()  # connected already: the sends follow one another at once
        sent[i] = time.monotonic()
        clients[i].send(build_request("GET", "/delay/300"))
        results[i] = clients[i].read_response().status
        done[i] = time.monotonic()

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15 * SLOW)
    finally:
        for c in clients:
            c.close()
    assert results == [200] * n
    assert all(d - s >= 0.29 for s, d in zip(sent, done)), "a /delay/300 answered early"
    assert max(sent) < min(done), "the first answer came %.3f s before the last request was sent" % (
        max(sent) - min(done))


def test_http10_keepalive_and_close(backend):
    with Client(backend.port) as c:
        c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and not r.will_close
        c.send(b"GET / HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.will_close
        assert c.wait_closed(2)


def test_rejects_garbage(backend):
    for wire in (b"\x00\x01garbage\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                 b"GET / HTTP/1.1\r\nX: " + b"a" * 40000 + b"\r\n\r\n"):
        with Client(backend.port) as c:
            c.send(wire)
            r = c.read_response()
            assert r.status in (400, 431), r
            assert c.wait_closed(2)
    assert backend.proc.poll() is None
    assert simple_get(backend.port).status == 200


def test_threads_share_one_port(backend_factory):
    b = backend_factory(threads=2, ident="b2")
    for _ in range(20):
        r = simple_get(b.port, "/")
        assert r.status == 200 and r.header("x-backend-id") == "b2"


def test_headers_with_body_answers_after_the_body(backend):
    """/headers answers only once the request body has been read (like an ordinary server), and a
    malformed body then gets a 400 instead of the held answer."""
    import socket
    with Client(backend.port) as c:
        head = build_request("POST", "/headers", [("Content-Length", "5")])
        c.send(head)
        c.settimeout(0.2)
        try:
            early = c.sock.recv(100)
        except socket.timeout:
            early = b""
        assert early == b"", "answered before the body: %r" % early
        c.settimeout(5)
        c.send(b"hello")
        r = c.read_response()
        assert r.status == 200 and r.body == head
        head = build_request("POST", "/headers", [("Transfer-Encoding", "chunked")])
        c.send(head + chunked([b"abc"]))
        assert c.read_response().body == head
        c.send(build_request("POST", "/headers", [("Transfer-Encoding", "chunked")]) + b"zz\r\n")
        r = c.read_response()
        assert r.status == 400
        assert c.wait_closed(2)


def test_clients_gone_mid_request_are_closed(backend):
    """A client that closes during a request body (or a held answer) leaves no connection behind."""
    import time
    base = backend.stats()["active"]
    wires = [build_request("POST", "/echo", [("Content-Length", "5000")]) + b"x" * 100,
             build_request("POST", "/headers", [("Content-Length", "5000")]) + b"x" * 100,
             build_request("PUT", "/echo", [("Transfer-Encoding", "chunked")]) + b"10\r\nabc",
             build_request("GET", "/delay/50"),
             b"GET / HTTP/1.1\r\nHost: x"]
    for half in (False, True):
        for w in wires:
            c = Client(backend.port)
            c.send(w)
            if half:
                import socket
                c.sock.shutdown(socket.SHUT_WR)
            time.sleep(0.02)
            c.close()
    deadline = time.monotonic() + 2
    while backend.stats()["active"] != base and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.stats()["active"] == base
