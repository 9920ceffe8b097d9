"""Issue 12: one file-descriptor budget per worker that counts what the worker holds, client and
upstream connections (in use, pooled, closing) together, as NGINX's worker_connections does. An
idle keep-alive client holds one fd, so a corral whose RLIMIT_NOFILE is N holds about N minus a
reserve idle clients (it used to hold half: two fds were set aside for every client). At the budget
a new client makes room by closing an idle pooled upstream connection first, else an idle client;
an upstream connect does the same, so a request on an established client gets its upstream (200)
instead of running into EMFILE. corral runs under `prlimit --nofile=N:N` with a small N."""
import os
import re
import select
import socket
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import SLOW  # noqa: E402
from test_fdlimit import fd_count, limited  # noqa: E402,F401 (the fixture)
from upstreams import totals  # noqa: E402
from util import Client  # noqa: E402

pytestmark = pytest.mark.corral_only

NOFILE = 400


def budget(p):
    """The fds per core the start-up log says the limit holds for connections."""
    log = p.log()
    m = re.search(r"file descriptors: limit %d .*holds about (\d+) (?:client )?connections per core"
                  % NOFILE, log)
    assert m, log[-3000:]
    return int(m.group(1))


def is_open(sock):
    """True while corral has not closed this idle connection (nothing to read, no EOF)."""
    if not select.select([sock], [], [], 0)[0]:
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def settle(p, key, timeout=5.0):
    """Polls corral's stats until key stops changing for a while; returns the last totals."""
    deadline = time.monotonic() + timeout * SLOW
    last, since = totals(p), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        st = totals(p)
        if st[key] != last[key]:
            last, since = st, time.monotonic()
        elif time.monotonic() - since > 0.3 * SLOW:
            break
    return last


def wait_for(p, pred, timeout=5.0):
    """Polls corral's stats until pred(totals) holds; returns the last totals (pred may not hold)."""
    deadline = time.monotonic() + timeout * SLOW
    st = totals(p)
    while not pred(st) and time.monotonic() < deadline:
        time.sleep(0.02)
        st = totals(p)
    return st


def bare_client(port):
    """A client connection that has sent nothing yet (on the head deadline, reclaimable)."""
    return socket.create_connection(("127.0.0.1", port), timeout=5 * SLOW)


@pytest.mark.deadline(120)
def test_idle_keepalive_clients_fill_the_fd_limit_not_half_of_it(limited, backend):
    """NOFILE clients, each after one request an idle keep-alive connection: corral holds about
    its budget of them (minus the one pooled upstream connection), far more than half the limit,
    never runs into EMFILE and refuses none; the longest-idle ones made room for the newest."""
    p = limited(NOFILE, [backend], workers={"cores": [0]}, limits={"connections_per_core": 1000},
                timeouts={"client_idle_ms": 120000})
    cap = budget(p)
    held = []
    try:
        for _ in range(NOFILE):
            c = Client(p.port, timeout=5 * SLOW)
            assert c.get("/").status == 200
            held.append(c)
        st = settle(p, "conns_reclaimed")
        still = sum(is_open(c.sock) for c in held)
        print("budget", cap, "held", still, "of", NOFILE, st)
        assert still > 0.6 * NOFILE, (still, cap)
        assert cap - 2 <= still <= cap, (still, cap)
        assert st["conns_active"] == still, st
        assert st["conns_reclaimed"] == NOFILE - still, st
        assert st["fd_exhausted"] == 0 and st["conns_rejected"] == 0, st
        assert st["responses"]["5xx"] == 0, st
        # The newest ones are the ones held: the longest idle made room.
        assert all(is_open(c.sock) for c in held[-(still // 2):])
    finally:
        for c in held:
            c.close()
    assert p.alive()


@pytest.mark.deadline(120)
def test_a_request_at_a_full_budget_gets_its_upstream_from_an_idle_client(limited, backend):
    """The budget full of clients (one established keep-alive client, the rest idle ones that
    have sent nothing) and no pooled upstream connection: the established client's next request
    needs an fd for its upstream, so one idle client is closed for it (the oldest) and the request
    gets its 200, not a 502/503; once that upstream is closed again the next requests fit."""
    p = limited(NOFILE, [backend], workers={"cores": [0]},
                limits={"connections_per_core": 1000, "upstream_idle_per_backend": 0},
                timeouts={"client_header_ms": 120000, "client_idle_ms": 120000})
    cap = budget(p)
    assert cap > NOFILE // 2, cap
    pid = p.proc.pid
    a = Client(p.port, timeout=5 * SLOW)
    idle = []
    try:
        assert a.get("/").status == 200
        # Its upstream connection is not pooled: closed, so the budget holds only a.
        deadline = time.monotonic() + 5 * SLOW
        n0 = fd_count(pid)
        while time.monotonic() < deadline:
            time.sleep(0.05)
            n = fd_count(pid)
            if n == n0:
                break
            n0 = n
        for _ in range(cap - 1):
            idle.append(bare_client(p.port))
        st = wait_for(p, lambda s: s["conns_active"] == cap)
        assert st["conns_active"] == cap and st["conns_reclaimed"] == 0, (cap, st)
        assert fd_count(pid) == n0 + cap - 1, (fd_count(pid), n0, cap)
        r = a.get("/")
        assert r.status == 200, r
        st = wait_for(p, lambda s: s["conns_reclaimed"] >= 1)
        assert st["conns_reclaimed"] == 1, st
        deadline = time.monotonic() + 5 * SLOW
        while is_open(idle[0]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not is_open(idle[0]), "the oldest idle client was not the one closed"
        assert all(is_open(s) for s in idle[1:])
        for _ in range(3):  # the one closed made room for good: no more are closed
            assert a.get("/").status == 200
        st = settle(p, "conns_reclaimed")
        assert st["conns_reclaimed"] == 1, st
        assert st["fd_exhausted"] == 0 and st["upstream_errors"] == 0, st
        assert st["responses"]["5xx"] == 0, st
    finally:
        a.close()
        for s in idle:
            s.close()
    assert p.alive()


@pytest.mark.deadline(120)
def test_pooled_upstream_connections_give_way_to_new_clients(limited, backend):
    """Many idle pooled upstream connections (left by concurrent requests whose clients went
    away), then new clients up to the budget: each one past the fds left closes a pooled upstream
    connection, not a client, so all of them are held; only once the pool is empty does a new
    client close the longest-idle client."""
    k = 100
    p = limited(NOFILE, [backend], workers={"cores": [0]}, limits={"connections_per_core": 1000},
                timeouts={"client_header_ms": 120000, "upstream_idle_ms": 120000})
    cap = budget(p)
    assert cap > NOFILE // 2 + k // 2, cap
    busy, fresh = [], []
    try:
        for _ in range(k):  # k requests in flight at once: k upstream connections
            c = Client(p.port, timeout=10 * SLOW)
            c.send(b"GET /delay/%d HTTP/1.1\r\nHost: x\r\n\r\n" % int(1000 * SLOW))
            busy.append(c)
        for c in busy:
            assert c.read_response().status == 200
            c.close()
        st = wait_for(p, lambda s: s["conns_active"] == 0 and s["pool"]["idle"] == k)
        assert st["pool"]["idle"] == k and st["conns_active"] == 0, st
        # In bursts of 16: a multishot accept takes a whole burst of waiting connections in one
        # pass, an fd each, before the pooled connections closed for them give theirs back (when
        # their cancelled receives complete); a burst larger than the fds the budget leaves
        # spare meets EMFILE on accept and waits in the queue for the next tick.
        while len(fresh) < cap:
            for _ in range(min(16, cap - len(fresh))):
                fresh.append(bare_client(p.port))
            wait_for(p, lambda s, n=len(fresh): s["conns_active"] == n)
        st = wait_for(p, lambda s: s["conns_active"] == cap and s["pool"]["idle"] == 0)
        print("budget", cap, st)
        assert st["conns_active"] == cap and st["pool"]["idle"] == 0, st
        assert st["conns_reclaimed"] == 0 and st["conns_rejected"] == 0, st
        assert st["fd_exhausted"] == 0, st
        assert all(is_open(s) for s in fresh)
        # The pool is empty: the next one closes the oldest idle client.
        fresh.append(bare_client(p.port))
        st = wait_for(p, lambda s: s["conns_reclaimed"] >= 1)
        assert st["conns_reclaimed"] == 1 and st["fd_exhausted"] == 0, st
        deadline = time.monotonic() + 5 * SLOW
        while is_open(fresh[0]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not is_open(fresh[0])
        assert all(is_open(s) for s in fresh[1:])
    finally:
        for c in busy:
            c.close()
        for s in fresh:
            s.close()
    assert p.alive()


@pytest.mark.deadline(120)
def test_an_upstream_connect_at_a_full_budget_closes_a_pooled_connection_to_another_backend(
        limited, backend_factory):
    """Two backends, round-robin: the budget full of clients and one idle pooled upstream
    connection, to the backend the next request does not go to. That request's connect closes
    the pooled connection (it waits on nothing), not a client."""
    b1, b2 = backend_factory(), backend_factory()
    p = limited(NOFILE, [b1, b2], workers={"cores": [0]}, limits={"connections_per_core": 1000},
                timeouts={"client_header_ms": 120000, "client_idle_ms": 120000,
                          "upstream_idle_ms": 120000})
    cap = budget(p)
    assert cap > NOFILE // 2, cap
    a = Client(p.port, timeout=5 * SLOW)
    idle = []
    try:
        assert a.get("/").status == 200  # its upstream connection stays, pooled
        st = wait_for(p, lambda s: s["pool"]["idle"] == 1)
        assert st["pool"]["idle"] == 1, st
        first = 0 if b1.stats()["requests"] == 1 else 1
        for _ in range(cap - 2):  # a, its pooled upstream connection and these: the budget
            idle.append(bare_client(p.port))
        st = wait_for(p, lambda s: s["conns_active"] == cap - 1)
        assert st["conns_active"] == cap - 1 and st["conns_reclaimed"] == 0, (cap, st)
        assert st["pool"]["idle"] == 1, st
        r = a.get("/")  # round-robin: the other backend, which has no pooled connection
        assert r.status == 200, r
        reqs = [b1.stats()["requests"], b2.stats()["requests"]]
        assert reqs[1 - first] == 1, reqs
        st = settle(p, "conns_reclaimed")
        assert st["conns_reclaimed"] == 0 and st["fd_exhausted"] == 0, st
        assert st["pool"]["idle"] == 1, st  # the new one, pooled; the old one closed for it
        assert all(is_open(s) for s in idle)
    finally:
        a.close()
        for s in idle:
            s.close()
    assert p.alive()
