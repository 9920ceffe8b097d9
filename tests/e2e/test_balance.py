"""Balancing as docs/config.md promises it, against the real binary: weighted round-robin and
weight 0, least-conn following in-flight exchanges, and both rendezvous hashes (same key, same
backend; removing a backend moves only its keys)."""
import collections
import threading

import pytest

from conftest import SLOW
from upstreams import backends, get_from, ids_of, ms, reload_with, wait_until, wproxy  # noqa: F401
from util import Client

pytestmark = pytest.mark.corral_only


def start_backends(backend_factory, names):
    return {n: backend_factory(ident=n) for n in names}


def be_cfg(bs, weights=None):
    weights = weights or {}
    return [{"address": b.address, "weight": weights.get(n, 1)} for n, b in bs.items()]


def test_weighted_round_robin_3_to_1(wproxy, backend_factory):
    bs = start_backends(backend_factory, ["A", "B"])
    p = wproxy(be_cfg(bs, {"A": 3, "B": 1}))
    got = collections.Counter()
    # Four keep-alive clients, 100 requests each: whichever cores they land on, every core's
    # smooth weighted round-robin gives 3:1 over each run of four picks.
    for _ in range(4):
        got.update(ids_of(p.port, ["/"] * 100))
    assert sum(got.values()) == 400
    share = got["A"] / 400.0
    assert abs(share - 0.75) <= 0.03, "A got %d of 400 (%.1f%%), want 75%% +- 3%%" % (got["A"], share * 100)
    # The backends saw the same split (the header is not lying).
    assert bs["A"].stats()["requests"] == got["A"]
    assert bs["B"].stats()["requests"] == got["B"]


def test_weight_zero_drains_a_backend_by_reload(wproxy, backend_factory):
    bs = start_backends(backend_factory, ["A", "B"])
    p = wproxy(be_cfg(bs))
    first = collections.Counter(ids_of(p.port, ["/"] * 20))
    assert first["A"] == 10 and first["B"] == 10, first
    reload_with(p, backends=be_cfg(bs, {"B": 0}))
    b_before = bs["B"].stats()["requests"]
    after = collections.Counter()
    for _ in range(2):
        after.update(ids_of(p.port, ["/"] * 20))
        after.update(ids_of(p.port, ["/"] * 5, keep_alive=False))
    assert after == {"A": 50}, after
    assert bs["B"].stats()["requests"] == b_before
    rows = backends(p)
    assert rows[bs["B"].address]["weight"] == 0


def test_weight_zero_from_the_start_gets_nothing(wproxy, backend_factory):
    bs = start_backends(backend_factory, ["A", "B", "C"])
    p = wproxy(be_cfg(bs, {"A": 0}))
    got = collections.Counter(ids_of(p.port, ["/"] * 30))
    got.update(ids_of(p.port, ["/"] * 10, keep_alive=False))
    assert got["A"] == 0 and got["B"] > 0 and got["C"] > 0, got
    assert bs["A"].stats()["requests"] == 0


@pytest.mark.parametrize("balance", ["round-robin", "least-conn", "hash-uri", "hash-client"])
def test_weight_zero_gets_nothing_under_every_balance(wproxy, backend_factory, balance):
    bs = start_backends(backend_factory, ["Z", "B", "C"])
    p = wproxy(be_cfg(bs, {"Z": 0}), balance=balance)
    got = collections.Counter(ids_of(p.port, hash_uris(20)))
    got.update(ids_of(p.port, hash_uris(10), keep_alive=False))
    assert got["Z"] == 0 and sum(got.values()) == 30, got
    assert bs["Z"].stats()["requests"] == 0


def test_least_conn_follows_in_flight_requests(wproxy, backend_factory):
    bs = start_backends(backend_factory, ["A", "B", "C"])
    # One worker: least-conn counts the exchanges in flight from this core.
    p = wproxy(be_cfg(bs), balance="least-conn", workers={"cores": [0]})
    hold_ms = ms(3000)
    held, results = [], []

    def slow(c):
        results.append(c.get("/delay/%d" % hold_ms))

    threads = []
    try:
        for i in range(2):
            c = Client(p.port, timeout=30 * SLOW)
            held.append(c)
            t = threading.Thread(target=slow, args=(c,), daemon=True)
            t.start()
            threads.append(t)
            # Wait until corral counts it in flight before sending the next one.
            assert wait_until(lambda: sum(b["active"] for b in backends(p).values()) == i + 1, 5), backends(p)
        busy = {a for a, b in backends(p).items() if b["active"] == 1}
        assert len(busy) == 2, "least-conn put two exchanges on one backend: %r" % backends(p)
        free = [n for n, b in bs.items() if b.address not in busy]
        assert len(free) == 1
        # While those two are in flight, every new request goes to the third backend.
        got = ids_of(p.port, ["/"] * 6)
        assert got == free * 6, "expected all 6 on %s while the others hold a request: %r" % (free, got)
        for t in threads:
            t.join(hold_ms / 1000.0 + 10 * SLOW)
        assert [r.status for r in results] == [200, 200]
    finally:
        for c in held:
            c.close()
    # Finished exchanges are no longer counted: the in-flight figures return to 0.
    assert wait_until(lambda: all(b["active"] == 0 for b in backends(p).values()), 5), backends(p)
    # ...and with nothing in flight, least-conn spreads again.
    got = collections.Counter(ids_of(p.port, ["/"] * 9))
    assert set(got) == {"A", "B", "C"}, got


def hash_uris(n):
    return ["/?k=%d" % i for i in range(n)]


def check_sticky_and_spread(first, second, names):
    assert first == second, "the same key went to different backends: %r" % [
        (i, a, b) for i, (a, b) in enumerate(zip(first, second)) if a != b]
    spread = collections.Counter(first)
    assert set(spread) == set(names) and min(spread.values()) >= len(first) // 20, \
        "keys are not spread over the backends: %r" % spread


def test_hash_uri_sticks_and_moves_only_the_removed_backends_keys(wproxy, backend_factory):
    bs = start_backends(backend_factory, ["A", "B", "C"])
    p = wproxy(be_cfg(bs), balance="hash-uri")
    uris = hash_uris(60)
    first = ids_of(p.port, uris)
    second = ids_of(p.port, uris, keep_alive=False)  # other connections, other cores
    check_sticky_and_spread(first, second, "ABC")
    reload_with(p, backends=be_cfg({n: bs[n] for n in "AB"}))
    after = ids_of(p.port, uris)
    for u, was, now in zip(uris, first, after):
        if was == "C":
            assert now in "AB", (u, now)
        else:
            assert now == was, "%s moved from %s to %s although %s is still configured" % (u, was, now, was)
    assert ids_of(p.port, uris, keep_alive=False) == after


def test_hash_client_sticks_and_moves_only_the_removed_backends_keys(wproxy, backend_factory):
    bs = start_backends(backend_factory, ["A", "B", "C"])
    p = wproxy(be_cfg(bs), balance="hash-client")
    clients = ["127.1.%d.%d" % (i // 200, 1 + i % 200) for i in range(0, 400, 10)]

    def ids():
        out = []
        for src in clients:
            r = get_from(p.port, "/", src=src)
            assert r.status == 200, (src, r)
            out.append(r.header("x-backend-id"))
        return out

    first = ids()
    check_sticky_and_spread(first, ids(), "ABC")
    # The URI is not the key: one client asking for many URIs stays on its backend.
    one = ids_of(p.port, hash_uris(12))
    assert len(set(one)) == 1, one
    reload_with(p, backends=be_cfg({n: bs[n] for n in "AB"}))
    after = ids()
    for src, was, now in zip(clients, first, after):
        if was == "C":
            assert now in ("A", "B"), (src, now)
        else:
            assert now == was, "client %s moved from %s to %s" % (src, was, now)


def test_least_conn_weighs_in_flight_counts_by_weight(wproxy, backend_factory):
    bs = start_backends(backend_factory, ["A", "B"])
    p = wproxy(be_cfg(bs, {"A": 3, "B": 1}), balance="least-conn", workers={"cores": [0]})
    hold_ms = ms(1500)
    held, threads, results = [], [], []
    try:
        for i in range(4):
            c = Client(p.port, timeout=30 * SLOW)
            held.append(c)
            t = threading.Thread(target=lambda c=c: results.append(c.get("/delay/%d" % hold_ms).status),
                                 daemon=True)
            t.start()
            threads.append(t)
            assert wait_until(lambda: sum(b["active"] for b in backends(p).values()) == i + 1, 5), backends(p)
        rows = backends(p)
        # Fewest in flight relative to weight: 3 on A (weight 3) for 1 on B (weight 1), whatever
        # the first pick was.
        assert (rows[bs["A"].address]["active"], rows[bs["B"].address]["active"]) == (3, 1), rows
        for t in threads:
            t.join(hold_ms / 1000.0 + 10 * SLOW)
        assert results == [200] * 4
    finally:
        for c in held:
            c.close()


def test_hash_uri_spreads_keys_by_weight(wproxy, backend_factory):
    bs = start_backends(backend_factory, ["A", "B"])
    p = wproxy(be_cfg(bs, {"A": 3, "B": 1}), balance="hash-uri")
    got = collections.Counter(ids_of(p.port, hash_uris(200)))
    # Weighted rendezvous: A's share of keys is 3/4 (binomial, n=200: sd 3%; these bounds are 5 sd).
    assert 0.6 <= got["A"] / 200.0 <= 0.9, got
