"""End-to-end tests of eBPF steering through the real daemon: which worker core accepts each connection."""
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from conftest import IN_CI, SLOW, binary
from util import Client, simple_get

pytestmark = pytest.mark.corral_only

PIN_ROOT = "/sys/fs/bpf/corral"
_seq = [0]


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


def ctl(p, *args):
    return subprocess.run([binary("corralctl"), "-s", p.cfg["admin"]["socket"]] + [str(a) for a in args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10 * SLOW)


def ctl_ok(p, *args):
    r = ctl(p, *args)
    assert r.returncode == 0, "corralctl %s: %s" % (" ".join(map(str, args)), r.stderr)
    return r.stdout


def stats(p):
    return json.loads(ctl_ok(p, "stats", "--json"))


def accepted(p):
    return {c["core"]: c["conns_accepted"] for c in stats(p)["cores"]}


def delta(before, after):
    return {k: after[k] - before[k] for k in after}


def need_bpf(p):
    """Without the BPF program every test here is moot: skip locally, fail under CI."""
    mode = json.loads(ctl_ok(p, "status", "--json"))["steering"]["mode"]
    if mode != "bpf":
        msg = "steering is not loaded (mode %s); log:\n%s" % (mode, p.log()[-2000:])
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


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


def wait_until(pred, timeout=5.0):
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_round_robin_spreads_connections_evenly_and_pins_the_maps(corral, backend):
    p = start(corral, backend, "round-robin")
    inst = p.cfg["instance"]
    for m in ("ctl", "cores", "stats", "socks"):
        assert os.path.exists(os.path.join(PIN_ROOT, inst, m)), "map %s not pinned" % m
    d = connections(p, 40)
    assert abs(d[0] - 20) <= 1 and abs(d[1] - 20) <= 1, d
    s = stats(p)
    assert s["steering"]["policy"] == "round-robin"
    assert s["steering"]["fallbacks"] == 0
    assert sum(c["steered"] for c in s["cores"]) >= 40


def test_weighted_three_to_one_within_three_percent(corral, backend):
    p = start(corral, backend, "weighted", weights=[3, 1])
    d = connections(p, 200)
    assert abs(d[0] - 150) <= 6, d
    assert d[0] + d[1] == 200
    assert stats(p)["steering"]["fallbacks"] == 0


def test_runtime_policy_and_weight_changes_apply_to_the_next_connection(corral, backend):
    p = start(corral, backend, "hash")
    d = connections(p, 30)
    assert d[0] > 0 and d[1] > 0, "hash did not spread: %s" % d
    ctl_ok(p, "policy", "set", "weighted")
    ctl_ok(p, "weight", 1, 0)
    assert connections(p, 12) == {0: 12, 1: 0}
    ctl_ok(p, "weight", 1, 1)
    ctl_ok(p, "weight", 0, 0)
    assert connections(p, 12) == {0: 0, 1: 12}
    ctl_ok(p, "policy", "set", "round-robin")
    d = connections(p, 12)
    assert d == {0: 6, 1: 6}, d
    assert stats(p)["steering"]["fallbacks"] == 0


def test_least_conn_follows_the_workers_live_connection_counts(corral, backend):
    p = start(corral, backend, "weighted", weights=[1, 0])
    first = held(p, 4)  # all on core 0 (weight 0 on core 1)
    assert {c["core"]: c["conns_active"] for c in stats(p)["cores"]} == {0: 4, 1: 0}
    ctl_ok(p, "policy", "set", "least-conn")
    before = accepted(p)
    second = held(p, 4)  # core 0 has 4 open, core 1 fewer until it has 4 too
    assert delta(before, accepted(p)) == {0: 0, 1: 4}
    for c in first:
        c.close()
    assert wait_until(lambda: stats(p)["cores"][0]["conns_active"] == 0), "core 0 did not see the closes"
    before = accepted(p)
    third = held(p, 4)  # now core 0 is the emptier one
    assert delta(before, accepted(p)) == {0: 4, 1: 0}
    for c in second + third:
        c.close()


@pytest.mark.parametrize("policy", ["least-load", "power-of-two"])
def test_load_policies_avoid_a_core_with_requests_in_flight(corral, backend, policy):
    p = start(corral, backend, "weighted", weights=[1, 0])
    slow = []
    for _ in range(3):  # three slow requests in flight on core 0
        c = Client(p.port)
        c.send(b"GET /delay/1500 HTTP/1.1\r\nHost: e2e.test\r\n\r\n")
        slow.append(c)
    assert wait_until(lambda: backend.stats()["active"] >= 3, 2), "slow requests did not reach the backend"
    d0 = accepted(p)
    assert d0[1] == 0
    ctl_ok(p, "policy", "set", policy)
    d = connections(p, 10)
    assert d == {0: 0, 1: 10}, "%s sent new connections to the busy core: %s" % (policy, d)
    for c in slow:
        assert c.read_response().status == 200
        c.close()


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


def test_cpu_local_serves_each_connection_on_the_clients_cpu(corral, backend):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    # Worker 0 on CPU 1 and worker 1 on CPU 0, so that core == cpu cannot pass by accident.
    p = start(corral, backend, "cpu-local", cores=(1, 0))
    assert on_cpu(p, 0, 15) == {0: 0, 1: 15}
    assert on_cpu(p, 1, 15) == {0: 15, 1: 0}
    assert stats(p)["steering"]["fallbacks"] == 0


# More workers than CPUs (say 4 workers on 2 CPUs) cannot be configured: workers.cores
# refuses a CPU listed twice. The policies' behaviour for that case is covered by
# tests/unit/test_steer_policy.c and tests/unit/test_steer_kernel.c.


# Known bug outside steering (proxy/main.c, listeners_create): with "listen: ...:0" worker 0's
# listener is the one that bound port 0, and a shut-down socket that did not bind its port
# explicitly gives the port back; on undrain listen() picks a new random port, in a new
# reuseport group, so core 0 never gets a connection again (its selections fall back).
# Fix: bind every worker's listener to the explicit port (learn it with a probe socket).
# Not strict, so that the fix does not break the suite: once fixed this shows XPASS; then
# remove the marker.
CORE0_UNDRAIN_BUG = pytest.mark.xfail(strict=False, reason="worker 0 re-listens on a new port after undrain "
                                      "(port-0 listen address; see comment above)")


@pytest.mark.parametrize("core", [1, pytest.param(0, marks=CORE0_UNDRAIN_BUG)])
def test_drain_and_undrain_each_core(corral, backend, core):
    p = start(corral, backend, "round-robin")
    ctl_ok(p, "drain", core)
    assert wait_until(lambda: stats(p)["cores"][core]["state"] == "draining")
    d = connections(p, 10)
    assert d[core] == 0 and d[1 - core] == 10, d
    ctl_ok(p, "undrain", core)
    assert wait_until(lambda: stats(p)["cores"][core]["state"] == "active")
    d = connections(p, 10)
    assert d == {0: 5, 1: 5}, "after undrain of core %d: %s; log:\n%s" % (core, d, p.log()[-1500:])
    assert stats(p)["steering"]["fallbacks"] == 0


def _hammer(port, n, results):
    for _ in range(n):
        try:
            r = simple_get(port, "/", timeout=5)
            results.append(r.status)
        except Exception as e:  # a reset or refusal here is the failure under test
            results.append(repr(e))


@pytest.mark.deadline(60)
def test_drain_under_load_resets_no_connection(corral, backend):
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
