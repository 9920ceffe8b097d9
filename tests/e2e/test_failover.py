"""Failover and passive health as README step 4 and docs/config.md promise them: a dead backend
next to a live one costs no request, is parked for backend_park_ms (state `down`) and is tried
again afterwards; upstream_attempts_max bounds the connect attempts of one request. Connection
attempts to the dead backends are counted in the kernel (SynCounter), not guessed."""
import time

import pytest

from upstreams import (SynCounter, backends, ctl, get_from, metric, ms, port_of, reload_with, totals,
                       wait_until, wproxy)  # noqa: F401
from util import BlackholeServer, Client, dead_address

pytestmark = pytest.mark.corral_only


def statuses(port, n, target="/"):
    out = []
    for _ in range(n):
        out.append(get_from(port, target).status)
    return out


def test_failover_answers_every_request_and_marks_the_dead_backend_down(wproxy, backend_factory):
    live = backend_factory(ident="live")
    dead = dead_address()
    with SynCounter([port_of(dead)]) as syn:
        p = wproxy([dead, live], timeouts={"backend_park_ms": ms(10000)})
        t0 = totals(p)
        rs = [get_from(p.port, "/") for _ in range(40)]
        assert [r.status for r in rs] == [200] * 40
        assert {r.header("x-backend-id") for r in rs} == {"live"}
        assert live.stats()["requests"] == 40
        tried = syn.settle()
    assert tried >= 1, "corral never tried the dead backend (round-robin over two backends)"
    t1 = totals(p)
    # Every failed connect was retried on the live backend, and counted as such.
    assert t1["upstream_retries"] - t0["upstream_retries"] == tried, (t0, t1, tried)
    assert t1["upstream_errors"] - t0["upstream_errors"] == tried
    assert t1["responses"]["2xx"] - t0["responses"]["2xx"] == 40
    rows = backends(p)
    assert rows[dead]["state"] == "down", rows
    assert rows[dead]["errors"] == tried, rows
    assert rows[live.address]["state"] == "up", rows
    assert rows[live.address]["requests"] == 40
    # The same in corralctl's table and in Prometheus terms.
    table = ctl(p, "backends")
    assert table.returncode == 0, table.stderr
    row = [ln.split() for ln in table.stdout.splitlines() if dead in ln]
    assert len(row) == 1 and "down" in row[0], table.stdout
    row = [ln.split() for ln in table.stdout.splitlines() if live.address in ln]
    assert len(row) == 1 and "up" in row[0], table.stdout

    assert metric(p, "corral_backend_up", backend=dead) == 0
    assert metric(p, "corral_backend_up", backend=live.address) == 1
    assert metric(p, "corral_backend_errors_total", backend=dead) == tried


def test_unreachable_backend_costs_each_core_one_connect_timeout_at_most(wproxy, backend_factory):
    live = backend_factory(ident="live")
    hole = BlackholeServer()
    try:
        # The listener's own filler connections retransmit their SYNs: not corral's attempts.
        fillers = [f.getsockname()[1] for f in hole.fill]
        with SynCounter([hole.port], ignore_src=fillers) as syn:
            p = wproxy([hole.address, live], timeouts={"upstream_connect_ms": ms(300),
                                                      "backend_park_ms": ms(20000)})
            t0 = totals(p)
            assert statuses(p.port, 30) == [200] * 30
            tried = syn.settle()
        t1 = totals(p)
    finally:
        hole.close()
    cores = len(p.cfg["workers"]["cores"])
    # The connect timeout is several times the health scan's period, so by the time a core has
    # paid one, the backend is parked for every core.
    assert 1 <= tried <= cores, "%d connect attempts to the unreachable backend (%d cores)" % (tried, cores)
    assert t1["timeouts"] - t0["timeouts"] == tried, (t0["timeouts"], t1["timeouts"], tried)
    assert t1["upstream_retries"] - t0["upstream_retries"] == tried
    assert backends(p)[hole.address]["state"] == "down"


def test_parked_backend_is_skipped_for_backend_park_ms_then_tried_again(wproxy, backend_factory):
    live = backend_factory(ident="live")
    dead = dead_address()
    park_s = ms(1500) / 1000.0
    with SynCounter([port_of(dead)]) as syn:
        p = wproxy([dead, live], timeouts={"backend_park_ms": int(park_s * 1000)})
        for _ in range(10):
            assert get_from(p.port, "/").status == 200
            if syn.count():
                break
        t_fail = time.monotonic()  # a refused connect fails at once: this is about when corral saw it
        assert syn.count() >= 1, "the dead backend was never tried"
        assert wait_until(lambda: backends(p)[dead]["state"] == "down", 2), backends(p)
        syn.settle()
        syn.reset()
        # Parked: every core skips it, for the whole of backend_park_ms (here most of it: requests
        # on new connections, both cores, until 70% of the park has passed).
        n = 0
        while time.monotonic() - t_fail < 0.7 * park_s or n < 10:
            assert get_from(p.port, "/").status == 200
            n += 1
            time.sleep(0.01)
        still = backends(p)[dead]["state"]
        elapsed = time.monotonic() - t_fail
        assert elapsed < park_s, "the machine is too slow for this check (%.2f s)" % elapsed
        assert syn.settle() == 0, "a parked backend was tried %d times within backend_park_ms" % syn.count()
        assert still == "down", "parked for less than backend_park_ms (%.2f s of %.2f s)" % (elapsed, park_s)
        # After the park it is tried again (a restarted backend is back within about a second).
        assert wait_until(lambda: backends(p)[dead]["state"] == "up", park_s + 2), backends(p)
        assert statuses(p.port, 10) == [200] * 10
        assert syn.settle() >= 1, "the dead backend was never tried again after its park ran out"


def test_park_zero_turns_passive_health_off(wproxy, backend_factory):
    live = backend_factory(ident="live")
    dead = dead_address()
    with SynCounter([port_of(dead)]) as syn:
        p = wproxy([dead, live], timeouts={"backend_park_ms": 0}, workers={"cores": [0]})
        assert statuses(p.port, 20) == [200] * 20
        # One core, round-robin over two: every other request tries the dead one first.
        assert syn.settle() == 10
    assert backends(p)[dead]["state"] == "up"


def test_attempts_max_one_means_no_failover(wproxy, backend_factory):
    live = backend_factory(ident="live")
    dead = dead_address()
    with SynCounter([port_of(dead)]) as syn:
        p = wproxy([dead, live], timeouts={"backend_park_ms": 0}, limits={"upstream_attempts_max": 1},
                   workers={"cores": [0]})
        got = statuses(p.port, 20)
        tried = syn.settle()
    assert got.count(502) == 10 and got.count(200) == 10, got
    assert tried == 10
    assert live.stats()["requests"] == 10


def test_a_failed_connect_with_no_attempt_left_counts_an_error_and_no_retry(wproxy):
    dead = dead_address()
    p = wproxy([dead], timeouts={"backend_park_ms": 0}, workers={"cores": [0]})
    t0 = totals(p)
    assert statuses(p.port, 3) == [502] * 3
    t1 = totals(p)
    # One backend: nothing was retried, and each failure counts once.
    assert t1["upstream_retries"] - t0["upstream_retries"] == 0, (t0, t1)
    assert t1["upstream_errors"] - t0["upstream_errors"] == 3, (t0, t1)
    assert backends(p)[dead]["errors"] == 3


def test_attempts_max_bounds_attempts_and_a_reload_raises_it(wproxy, backend_factory):
    live = backend_factory(ident="live")
    d1, d2 = dead_address(), dead_address()
    with SynCounter([port_of(d1), port_of(d2)]) as syn:
        p = wproxy([d1, d2, live], timeouts={"backend_park_ms": 0}, limits={"upstream_attempts_max": 2},
                   workers={"cores": [0]})
        got = statuses(p.port, 12)
        tried = syn.settle()
        n502 = got.count(502)
        assert n502 >= 1 and got.count(200) + n502 == 12, got
        # A 502 is two failed connects; a 200 took at most one before it.
        assert 2 * n502 <= tried <= 2 * n502 + got.count(200), (got, tried)
        syn.reset()
        lim = dict(p.cfg["limits"], upstream_attempts_max=3)
        reload_with(p, limits=lim)
        assert statuses(p.port, 12) == [200] * 12
        assert syn.settle() >= 1


def test_attempts_never_exceed_the_number_of_backends(wproxy):
    d1, d2 = dead_address(), dead_address()
    with SynCounter([port_of(d1), port_of(d2)]) as syn:
        p = wproxy([d1, d2], timeouts={"backend_park_ms": 0}, limits={"upstream_attempts_max": 16})
        t0 = totals(p)
        got = statuses(p.port, 10)
        tried = syn.settle()
        t1 = totals(p)
    assert got == [502] * 10, got
    assert syn.count(port_of(d1)) == 10 and syn.count(port_of(d2)) == 10, syn.counts
    assert tried == 20
    assert t1["upstream_errors"] - t0["upstream_errors"] >= 20
    assert t1["responses"]["5xx"] - t0["responses"]["5xx"] == 10


def test_hash_key_whose_backend_is_dead_fails_over_to_another(wproxy, backend_factory):
    a, b = backend_factory(ident="A"), backend_factory(ident="B")
    dead = dead_address()
    with SynCounter([port_of(dead)]) as syn:
        # park 0: the retry itself must step past the key's dead backend, every time.
        p = wproxy([dead, a, b], balance="hash-uri", timeouts={"backend_park_ms": 0})
        got = [get_from(p.port, "/?k=%d" % i) for i in range(30)]
        tried = syn.settle()
    assert [r.status for r in got] == [200] * 30, [r.status for r in got]
    # Some keys belong to the dead backend (rendezvous over three), and each was tried once.
    assert 1 <= tried <= 30


def test_failover_past_a_dead_backend_with_more_than_64_backends(wproxy, backend_factory):
    live = backend_factory(ident="live")
    dead = dead_address()
    idle = [{"address": dead_address(), "weight": 0} for _ in range(63)]
    p = wproxy([{"address": dead, "weight": 1}] + idle + [{"address": live.address, "weight": 1}],
               timeouts={"backend_park_ms": 0}, workers={"cores": [0]})
    assert statuses(p.port, 10) == [200] * 10


def test_a_failed_backend_is_not_tried_again_by_the_same_core_within_backend_park_ms(wproxy, backend_factory):
    live = backend_factory(ident="live")
    # Five rounds, each with a fresh dead backend: one round can pass by luck (the scan may run
    # right after the first failure), five in a row cannot.
    worst = []
    for _ in range(5):
        dead = dead_address()
        with SynCounter([port_of(dead)]) as syn:
            p = wproxy([dead, live], workers={"cores": [0]}, timeouts={"backend_park_ms": ms(10000)})
            with Client(p.port) as c:
                for _ in range(8):
                    assert c.get("/").status == 200
            worst.append(syn.settle())
        p.check_exit()
    assert max(worst) == 1, "connect attempts to the dead backend per round (one core): %r" % worst


def test_when_every_backend_is_parked_they_are_tried_anyway(wproxy):
    d1, d2 = dead_address(), dead_address()
    with SynCounter([port_of(d1), port_of(d2)]) as syn:
        p = wproxy([d1, d2], timeouts={"backend_park_ms": ms(20000)})
        assert statuses(p.port, 4) == [502] * 4
        assert wait_until(lambda: all(b["state"] == "down" for b in backends(p).values()), 2), backends(p)
        syn.settle()
        syn.reset()
        # Both parked: corral still tries them (a 502 from a connect attempt, not a 503 from
        # having no backend), so a backend that comes back is found at once.
        assert statuses(p.port, 4) == [502] * 4
        assert syn.settle() == 8
