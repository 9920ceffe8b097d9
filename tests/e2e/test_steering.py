"""End-to-end tests of eBPF steering through the real daemon: which worker core accepts each connection."""
import errno
import json
import os
import select
import signal
import socket
import threading
import time

import pytest

from conftest import SLOW, ms, need
from upstreams import ctl_ok, wait_until
from util import Client, simple_get

pytestmark = pytest.mark.corral_only

PIN_ROOT = "/sys/fs/bpf/corral"
POLICIES = ("hash", "round-robin", "least-conn", "least-load", "power-of-two", "weighted", "cpu-local")
_seq = [0]

# Every steering property is checked with 2 workers (one per CPU) and with 4 workers on the
# 2 CPUs (workers.cores: [0, 1, 0, 1]: two workers share each CPU).
WORKERS = pytest.mark.parametrize("n", [2, 4], ids=["2-workers", "4-workers"])


def cores_for(n):
    return [i % 2 for i in range(n)]


def instance():
    """An instance name no other test (or engineer's concurrent run) uses: its own pins."""
    _seq[0] += 1
    return "e2e-steer-%d-%d" % (os.getpid(), _seq[0])


def start(corral, backend, policy="round-robin", cores=(0, 1), weights=None, **over):
    steering = {"policy": policy}
    if weights is not None:
        steering["weights"] = list(weights)
    p = corral([backend], instance=instance(), workers={"cores": list(cores)}, steering=steering, **over)
    need_bpf(p)
    return p


def stats(p):
    return json.loads(ctl_ok(p, "stats", "--json"))


def per_core(s, field):
    return {c["core"]: c[field] for c in s["cores"]}


def accepted(p):
    return per_core(stats(p), "conns_accepted")


def delta(before, after):
    return {k: after[k] - before[k] for k in after}


def need_bpf(p):
    """Without the BPF program every test here is moot: skip locally, fail under CI."""
    s = stats(p)
    assert len(s["cores"]) == len(p.cfg["workers"]["cores"]), s["cores"]
    mode = s["steering"]["mode"]
    if mode != "bpf":
        need(False, "steering is not loaded (mode %s); log:\n%s" % (mode, p.log()[-2000:]))


def connections(p, n):
    """n new connections, one request each; returns the per-core accepted counts they added."""
    before = accepted(p)
    for _ in range(n):
        r = simple_get(p.port, "/")
        assert r.status == 200, r
    return delta(before, accepted(p))


def held(p, n):
    """n keep-alive connections, each proven accepted by one request, left open."""
    out = []
    for _ in range(n):
        c = Client(p.port)
        r = c.get("/")
        assert r.status == 200, r
        out.append(c)
    return out


def held_on(p, core, k, limit=64):
    """k keep-alive connections accepted by `core` (others opened on the way are closed)."""
    out, other = [], []
    for _ in range(limit):
        before = accepted(p)
        c = Client(p.port)
        assert c.get("/").status == 200
        d = delta(before, accepted(p))
        assert sum(d.values()) == 1, d
        (out if d[core] == 1 else other).append(c)
        if len(out) == k:
            break
    for c in other:
        c.close()
    assert len(out) == k, "only %d of %d connections landed on core %d" % (len(out), k, core)
    return out


def all_but(n, core, value):
    return {i: (0 if i == core else value) for i in range(n)}


# --- even, weighted, and the runtime controls -----------------------------------------------


@WORKERS
def test_round_robin_spreads_1000_connections_evenly_and_pins_the_maps(corral, backend, n):
    p = start(corral, backend, "round-robin", cores=cores_for(n))
    inst = p.cfg["instance"]
    for m in ("ctl", "cores", "stats", "socks"):
        assert os.path.exists(os.path.join(PIN_ROOT, inst, m)), "map %s not pinned" % m
    s0 = stats(p)
    d = connections(p, 1000)
    s1 = stats(p)
    print("round-robin, %d workers, 1000 connections: accepted %s, steered %s"
          % (n, d, delta(per_core(s0, "steered"), per_core(s1, "steered"))))
    assert sum(d.values()) == 1000, d
    for core, got in d.items():
        assert abs(got - 1000 / n) <= 1, "core %d got %d of 1000 (%d workers): %s" % (core, got, n, d)
    assert delta(per_core(s0, "steered"), per_core(s1, "steered")) == d
    assert s1["steering"]["policy"] == "round-robin"
    assert s1["steering"]["fallbacks"] == 0


@WORKERS
def test_weighted_three_to_one_within_three_percent(corral, backend, n):
    # Weights 3, 1, (3, 1): the CPU-0 workers together take 75%, each worker its own share.
    weights = [3 if i % 2 == 0 else 1 for i in range(n)]
    p = start(corral, backend, "weighted", cores=cores_for(n), weights=weights)
    total = 400
    d = connections(p, total)
    print("weighted %s, %d connections: %s" % (weights, total, d))
    assert sum(d.values()) == total, d
    for core, got in d.items():
        want = total * weights[core] / sum(weights)
        assert abs(got - want) <= 0.03 * total, "core %d got %d, want %.0f +- 3%%: %s" % (core, got, want, d)
    heavy = sum(got for core, got in d.items() if weights[core] == 3)
    assert abs(heavy / total - 0.75) <= 0.03, d
    assert stats(p)["steering"]["fallbacks"] == 0


@WORKERS
def test_runtime_policy_and_weight_changes_apply_to_the_next_connection(corral, backend, n):
    p = start(corral, backend, "hash", cores=cores_for(n))
    d = connections(p, 40)
    assert all(v > 0 for v in d.values()), "hash did not spread: %s" % d
    ctl_ok(p, "policy", "set", "weighted")
    for i in range(1, n):
        ctl_ok(p, "weight", i, 0)
    ctl_ok(p, "weight", 0, 1)
    assert connections(p, 12) == all_but(n, -1, 0) | {0: 12}
    ctl_ok(p, "weight", n - 1, 1)
    ctl_ok(p, "weight", 0, 0)
    assert connections(p, 12) == all_but(n, -1, 0) | {n - 1: 12}
    ctl_ok(p, "policy", "set", "round-robin")
    d = connections(p, 6 * n)
    assert d == all_but(n, -1, 6), d
    assert stats(p)["steering"]["fallbacks"] == 0


# --- the load-aware policies ------------------------------------------------------------------


@WORKERS
def test_least_conn_sends_each_connection_to_a_core_with_fewest_held(corral, backend, n):
    p = start(corral, backend, "weighted", cores=cores_for(n), weights=[1] + [0] * (n - 1))
    first = held(p, 4)  # all on core 0 (weight 0 elsewhere)
    assert per_core(stats(p), "conns_active") == all_but(n, 0, 0) | {0: 4}
    ctl_ok(p, "policy", "set", "least-conn")
    before = accepted(p)
    second = []
    for _ in range(4 * (n - 1)):  # each goes to a core holding the fewest, until all hold 4
        s = stats(p)
        active, acc = per_core(s, "conns_active"), per_core(s, "conns_accepted")
        second += held(p, 1)
        d = delta(acc, accepted(p))
        core = [k for k, v in d.items() if v][0]
        assert active[core] == min(active.values()), "went to core %d holding %s" % (core, active)
    assert delta(before, accepted(p)) == all_but(n, 0, 4)
    assert per_core(stats(p), "conns_active") == all_but(n, -1, 4)
    for c in first:
        c.close()
    assert wait_until(lambda: stats(p)["cores"][0]["conns_active"] == 0), "core 0 did not see the closes"
    before = accepted(p)
    third = held(p, 4)  # now core 0 is the emptiest one
    assert delta(before, accepted(p)) == all_but(n, -1, 0) | {0: 4}
    for c in second + third:
        c.close()
    assert stats(p)["steering"]["fallbacks"] == 0


@WORKERS
@pytest.mark.parametrize("policy", ["least-load", "power-of-two"])
def test_load_policies_avoid_a_core_with_heavy_requests_in_flight(corral, backend, policy, n):
    p = start(corral, backend, "weighted", cores=cores_for(n), weights=[1] + [0] * (n - 1))
    slow = []
    for _ in range(3):  # three slow requests in flight on core 0, for far longer than the test
        c = Client(p.port)
        c.send(b"GET /delay/30000 HTTP/1.1\r\nHost: e2e.test\r\n\r\n")
        slow.append(c)
    assert wait_until(lambda: sum(b["active"] for b in p.ctl_json("backends")["backends"]) == 3), \
        "slow requests did not reach the backend"
    assert accepted(p) == all_but(n, 0, 0) | {0: 3}
    ctl_ok(p, "policy", "set", policy)
    d = connections(p, 12)
    # The condition the test is about: the slow requests were still in flight all along.
    unanswered = not select.select([c.sock for c in slow], [], [], 0)[0]
    inflight = sum(b["active"] for b in p.ctl_json("backends")["backends"])
    print("%s, %d workers, core 0 busy: %s" % (policy, n, d))
    assert unanswered and inflight == 3, "the slow requests ended during the test (%d in flight)" % inflight
    assert d[0] == 0 and sum(d.values()) == 12, "%s sent new connections to the busy core: %s" % (policy, d)
    for c in slow:
        c.abort()
    assert stats(p)["steering"]["fallbacks"] == 0


@WORKERS
@pytest.mark.parametrize("policy", ["least-load", "power-of-two"])
def test_load_policies_count_accepted_connections_before_their_first_request(corral, backend, policy, n):
    p = start(corral, backend, "weighted", cores=cores_for(n), weights=[1] + [0] * (n - 1))
    # Three connections on core 0 that have sent nothing yet: accepted, no request started.
    silent = [socket.create_connection(("127.0.0.1", p.port), timeout=5 * SLOW) for _ in range(3)]
    try:
        assert wait_until(lambda: accepted(p) == all_but(n, 0, 0) | {0: 3}), accepted(p)
        ctl_ok(p, "policy", "set", policy)
        d = connections(p, 12)
        print("%s, %d workers, 3 silent connections on core 0: %s" % (policy, n, d))
        # Still open and silent: the condition the test is about.
        assert not select.select(silent, [], [], 0)[0], "corral answered or closed a silent connection"
        assert d[0] == 0 and sum(d.values()) == 12, "%s sent new connections to core 0: %s" % (policy, d)
    finally:
        for c in silent:
            c.close()
    assert stats(p)["steering"]["fallbacks"] == 0


def _from_cpu(p, cpu, n, errors):
    try:
        os.sched_setaffinity(0, {cpu})  # this thread only
        for _ in range(n):
            assert simple_get(p.port, "/").status == 200
    except Exception as e:  # reported by the test thread
        errors.append(e)


def on_cpu(p, cpu, n):
    """n connections made by a thread pinned to cpu: its SYNs are processed on that cpu."""
    errors = []
    before = accepted(p)
    t = threading.Thread(target=_from_cpu, args=(p, cpu, n, errors))
    t.start()
    t.join(30 * SLOW)
    assert not t.is_alive() and not errors, errors
    return delta(before, accepted(p))


@WORKERS
def test_cpu_local_serves_each_connection_on_the_clients_cpu(corral, backend, n):
    need(len(os.sched_getaffinity(0)) >= 2, "needs two CPUs")
    # Worker i on CPU 1 - i % 2 (1, 0[, 1, 0]), so that core == cpu cannot pass by accident.
    cores = [1 - i % 2 for i in range(n)]
    p = start(corral, backend, "cpu-local", cores=cores)
    for cpu in (0, 1):
        d = on_cpu(p, cpu, 20)
        print("cpu-local, %d workers on %s, client on CPU %d: %s" % (n, cores, cpu, d))
        assert sum(d.values()) == 20, d
        off = {w: v for w, v in d.items() if cores[w] != cpu and v}
        assert not off, "client on CPU %d served by workers of other CPUs: %s (cores %s)" % (cpu, d, cores)
    assert stats(p)["steering"]["fallbacks"] == 0


# --- hash: the kernel's own choice ------------------------------------------------------------


def _tuple_request(port, src, sport):
    """One request from src:sport (0 = kernel's pick), closed with a reset so that the 4-tuple
    leaves no TIME_WAIT behind and can be used again. Returns the source port used."""
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((src, sport))
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        c = Client.__new__(Client)
        c.sock, c.buf, c.port = s, bytearray(), port
        assert c.get("/").status == 200
        used = s.getsockname()[1]
        c.abort()
        return used
    finally:
        s.close()


def hash_choices(p, tuples):
    """The worker that accepted each (src, sport) connection; fills in kernel-chosen ports."""
    out = []
    for i, (src, sport) in enumerate(tuples):
        before = accepted(p)
        tuples[i] = (src, _tuple_request(p.port, src, sport))
        d = delta(before, accepted(p))
        assert sum(d.values()) == 1, d
        out.append([k for k, v in d.items() if v][0])
    return out


@WORKERS
def test_hash_picks_what_the_kernel_picks_without_a_program(corral, backend, monkeypatch, n):
    tuples = [("127.1.%d.%d" % (i // 200, i % 200 + 1), 0) for i in range(48)]
    p = start(corral, backend, "hash", cores=cores_for(n))
    port = p.port
    bpf = hash_choices(p, tuples)  # also learns a source port per source address
    again = hash_choices(p, tuples)
    s = stats(p)
    assert s["steering"]["fallbacks"] == 0
    assert per_core(s, "steered") == {w: bpf.count(w) + again.count(w) for w in range(n)}
    assert again == bpf, "hash is not a function of the 4-tuple"
    assert all(bpf.count(w) for w in range(n)), "hash did not spread: %s" % bpf
    # The port is needed again: keep it from being taken between the two daemons. A bound (not
    # listening) SO_REUSEPORT socket of the same user holds it; corral's listeners share it, and
    # it is in no listening group, so it takes no connection.
    hold = socket.socket()
    hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    hold.bind(("127.0.0.1", port))
    try:
        assert p.stop() == 0
        p.checked = True
        # The same daemon and 4-tuples, the same port, no program: the kernel's reuseport hash.
        monkeypatch.setenv("CORRAL_NO_BPF", "1")
        q = corral([backend], instance=instance(), listen=["127.0.0.1:%d" % port],
                   workers={"cores": cores_for(n)}, steering={"policy": "hash"})
        monkeypatch.delenv("CORRAL_NO_BPF")
    finally:
        hold.close()
    assert q.port == port
    assert stats(q)["steering"]["mode"] != "bpf"
    kernel = hash_choices(q, tuples)
    print("hash, %d workers, 48 4-tuples: bpf %s, kernel %s" % (n, bpf, kernel))
    diff = [(tuples[i], bpf[i], kernel[i]) for i in range(len(tuples)) if bpf[i] != kernel[i]]
    assert not diff, "%d of %d 4-tuples differ (tuple, bpf, kernel): %s" % (len(diff), len(tuples), diff[:5])


# --- drain ------------------------------------------------------------------------------------


RELISTEN_DELAY_MS = ms(300)  # a worker slow to listen again after undrain (a busy CPU, made certain)


@WORKERS
@pytest.mark.parametrize("core", [0, 1])
def test_drain_and_undrain_each_core(corral, backend, monkeypatch, core, n):
    # The contract: once `drain` returns no new connection reaches the core, once `undrain`
    # returns they do (and `stats` says so). The worker is made slow to listen again, as a
    # busy CPU makes it now and then: an answer or a state that ran ahead of it shows here.
    monkeypatch.setenv("CORRAL_TEST_RELISTEN_DELAY_MS", str(RELISTEN_DELAY_MS))
    p = start(corral, backend, "round-robin", cores=cores_for(n))
    ctl_ok(p, "drain", core)
    assert stats(p)["cores"][core]["state"] == "draining"
    d = connections(p, 5 * n)
    assert d[core] == 0 and sum(d.values()) == 5 * n, d
    t0 = time.monotonic()
    ctl_ok(p, "undrain", core)
    waited = time.monotonic() - t0
    assert stats(p)["cores"][core]["state"] == "active", "undrain returned %.3f s after it was asked" % waited
    d = connections(p, 5 * n)
    assert d == all_but(n, -1, 5), "after undrain of core %d: %s; log:\n%s" % (core, d, p.log()[-1500:])
    assert stats(p)["steering"]["fallbacks"] == 0


class Storm:
    """total new connections, one GET / each, from `threads` threads paced to `rate` per second.
    Every failure is recorded (connect refused, reset, timeout, a status other than 200)."""

    def __init__(self, port, total, rate, threads):
        self.port, self.total, self.rate = port, total, rate
        self.next = 0
        self.done = 0
        self.errors = []
        self.lock = threading.Lock()
        self.progress = threading.Condition(self.lock)
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self):
        self.t0 = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.join()

    def join(self):
        for t in self.threads:
            t.join(max(0.1, self.t0 + 60 * SLOW - time.monotonic()))
            assert not t.is_alive(), "storm thread stuck"
        self.elapsed = time.monotonic() - self.t0

    def end_after(self, k):
        """Ends the storm k connections after the ones already started (never later than its
        total): what a test needs after an event, however long the event took. Returns the new
        total."""
        with self.lock:
            self.total = min(self.total, self.next + k)
            return self.total

    def wait_done(self, k):
        with self.progress:
            assert self.progress.wait_for(lambda: self.done >= k, 30 * SLOW), "storm stalled at %d" % self.done

    def _run(self):
        while True:
            with self.lock:
                i = self.next
                if i >= self.total:
                    return
                self.next += 1
            wait = self.t0 + i / self.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            err = None
            try:
                r = simple_get(self.port, "/", timeout=5)
                if r.status != 200:
                    err = "status %d" % r.status
            except OSError as e:
                err = "%s (%s)" % (type(e).__name__, errno.errorcode.get(e.errno, e.errno))
            except Exception as e:  # util.Closed / ProtocolError: a reset or a broken reply
                err = repr(e)
            with self.lock:
                self.done += 1
                if err:
                    self.errors.append((i, err))
                self.progress.notify_all()


LONG_MS = ms(2000)  # the slow requests of the drain storm


@WORKERS
@pytest.mark.deadline(60)
def test_drain_under_a_storm_of_new_connections(corral, backend, n):
    # 1200 connections before the drain, 1200 after it however long the drain took (at most
    # 4000 in all), 600 per second from 8 threads.
    before, after, rate, threads = 1200, 1200, 600, 8
    p = start(corral, backend, "round-robin", cores=cores_for(n))
    longs = held_on(p, 1, 3)  # existing connections on core 1, busy through the drain
    base = stats(p)
    with Storm(p.port, 4000, rate, threads) as storm:
        storm.wait_done(before * 4 // 5)
        t_long = time.monotonic()
        for c in longs:
            c.send(b"GET /delay/%d HTTP/1.1\r\nHost: e2e.test\r\n\r\n" % LONG_MS)
        storm.wait_done(before)
        ctl_ok(p, "drain", 1)
        at_drain = stats(p)  # right after drain returned
        done_at_drain = storm.done
        total = storm.end_after(after)
        # Sent before the drain and not answered after it: in flight at the drain.
        answered_at_drain = select.select([c.sock for c in longs], [], [], 0)[0]
        time.sleep(0.3 * SLOW)
        settled = stats(p)  # the worker has shut its listener: queued connections moved
    end = stats(p)
    acc = [per_core(s, "conns_accepted") for s in (base, at_drain, settled, end)]
    steered = [per_core(s, "steered") for s in (base, at_drain, settled, end)]
    rate_seen = total / storm.elapsed
    print("drain storm, %d workers: %d connections in %.2f s (%.0f/s), drain after %d; errors %d %s\n"
          "  accepted: before %s, at drain %s, +0.3 s %s, end %s\n  steered: at drain %s, end %s"
          % (n, total, storm.elapsed, rate_seen, done_at_drain, len(storm.errors), storm.errors[:5],
             acc[0], acc[1], acc[2], acc[3], steered[1], steered[3]))
    assert not storm.errors, "%d of %d storm connections failed, e.g. %s" % (len(storm.errors), total,
                                                                           storm.errors[:5])
    # A storm through the drain, whatever the machine's speed: a good part of it came after.
    assert total - done_at_drain >= after // 2, "the storm was nearly over at the drain: %d of %d" % (
        done_at_drain, total)
    assert sum(delta(acc[0], acc[3]).values()) == total, "accepted %s for %d" % (delta(acc[0], acc[3]), total)
    assert acc[1][1] > acc[0][1], "core 1 accepted nothing before the drain: %s" % acc[:2]
    # No SYN is steered to core 1 once drain returned; at most the connections already in its
    # accept queue (one per storm thread) are accepted after, and none once it has settled.
    assert steered[3][1] == steered[1][1], "core 1 steered after the drain: %s -> %s" % (steered[1], steered[3])
    assert acc[3][1] - acc[1][1] <= threads, "core 1 accepted after the drain: %s -> %s" % (acc[1], acc[3])
    assert acc[3][1] == acc[2][1], "core 1 still accepting: %s -> %s" % (acc[2], acc[3])
    assert end["cores"][1]["state"] == "draining"
    assert at_drain["cores"][1]["conns_active"] >= len(longs), at_drain["cores"][1]
    assert not answered_at_drain, "the slow requests were not in flight at the drain"
    assert end["steering"]["fallbacks"] == 0
    for c in longs:  # in flight through the drain, on the drained core: they complete
        r = c.read_response()
        assert r.status == 200, r
        c.close()
    assert time.monotonic() - t_long >= LONG_MS / 1000 - 0.1
    ctl_ok(p, "undrain", 1)
    assert wait_until(lambda: stats(p)["cores"][1]["state"] == "active")
    d = connections(p, 5 * n)
    assert d == all_but(n, -1, 5), "after undrain: %s" % d


def _hammer(port, n, results):
    for _ in range(n):
        try:
            r = simple_get(port, "/", timeout=5)
            results.append(r.status)
        except Exception as e:  # a reset or refusal here is the failure under test
            results.append(repr(e))


@pytest.mark.deadline(60)
def test_drain_flapping_under_load_resets_no_connection(corral, backend):
    p = start(corral, backend, "round-robin")
    results = [[], []]
    threads = [threading.Thread(target=_hammer, args=(p.port, 250, results[i])) for i in range(2)]
    for t in threads:
        t.start()
    for _ in range(6):
        ctl_ok(p, "drain", 1)
        time.sleep(0.05)
        ctl_ok(p, "undrain", 1)
        time.sleep(0.05)
    for t in threads:
        t.join(50 * SLOW)
        assert not t.is_alive()
    bad = [r for r in results[0] + results[1] if r != 200]
    assert not bad, "%d of 500 failed, e.g. %s" % (len(bad), bad[:3])


# --- runtime changes under load ---------------------------------------------------------------


@WORKERS
@pytest.mark.deadline(60)
def test_policy_and_weight_changes_under_load_drop_nothing(corral, backend, n):
    rate, threads = 500, 6
    p = start(corral, backend, "round-robin", cores=cores_for(n))
    base = stats(p)
    changes = 0
    with Storm(p.port, 4000, rate, threads) as storm:
        storm.wait_done(100)
        for policy in POLICIES + ("round-robin",):
            ctl_ok(p, "policy", "set", policy)
            changes += 1
            storm.wait_done(storm.done + 40)
        ctl_ok(p, "policy", "set", "weighted")
        for w in range(n):
            ctl_ok(p, "weight", w, 1 + w)
            changes += 1
            storm.wait_done(storm.done + 30)
        # Last change: everything to core 0, from the next connection on.
        for w in range(1, n):
            ctl_ok(p, "weight", w, 0)
        changed = stats(p)
        done_at_change = storm.done
        total = storm.end_after(400)  # 400 more after the last change, however long it took
    end = stats(p)
    assert done_at_change < total - 200, "the storm ended before the last change"
    a0, a1, a2 = (per_core(s, "conns_accepted") for s in (base, changed, end))
    s1, s2 = per_core(changed, "steered"), per_core(end, "steered")
    print("runtime changes under load, %d workers: %d connections in %.2f s, %d changes, errors %d %s\n"
          "  accepted: before %s, at last change %s, end %s; steered at change %s, end %s"
          % (n, total, storm.elapsed, changes + n - 1, len(storm.errors), storm.errors[:5], a0, a1, a2, s1, s2))
    assert not storm.errors, "%d of %d connections failed, e.g. %s" % (len(storm.errors), total, storm.errors[:5])
    assert sum(delta(a0, a2).values()) == total
    for w in range(1, n):  # weight 0: not one SYN after the change
        assert s2[w] == s1[w], "core %d steered after its weight went to 0: %s -> %s" % (w, s1, s2)
        assert a2[w] - a1[w] <= threads, "core %d accepted after weight 0: %s -> %s" % (w, a1, a2)
    assert a2[0] - a1[0] >= total - done_at_change - threads
    assert end["steering"]["policy"] == "weighted"
    assert end["steering"]["fallbacks"] == 0


# --- pins -------------------------------------------------------------------------------------


def test_pins_survive_a_crash_are_reused_and_go_on_clean_exit(corral, backend):
    p = start(corral, backend, "round-robin")
    inst = p.cfg["instance"]
    d = os.path.join(PIN_ROOT, inst)
    assert os.path.isdir(d)
    p.proc.send_signal(signal.SIGKILL)  # a crash: nothing cleans up
    p.proc.wait(5)
    p.checked = True
    assert os.path.exists(os.path.join(d, "ctl")), "a crashed daemon's pins vanished"
    q = corral([backend], instance=inst, workers={"cores": [0, 1]}, steering={"policy": "round-robin"})
    need_bpf(q)
    assert connections(q, 10) == {0: 5, 1: 5}
    assert stats(q)["steering"]["fallbacks"] == 0
    assert q.stop() == 0
    q.checked = True
    assert not os.path.exists(d), "pins left after a clean exit: %s" % os.listdir(d)
