"""End-to-end tests of corralctl against the running daemon: every command, its effect, its errors."""
import json
import os
import signal
import socket
import stat
import subprocess
import threading
import time

import pytest
import yaml

from conftest import SLOW, binary, need
from upstreams import ctl, ctl_json, ctl_ok, wait_until
from util import counted_get, simple_get

pytestmark = pytest.mark.corral_only


def ctl_fails(proxy, *args, code=1):
    """The command must fail with one clear line on stderr and the given exit code."""
    r = ctl(proxy, *args)
    assert r.returncode == code, "expected exit %d, got %d: %s%s" % (code, r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, "expected one error line, got %r" % r.stderr
    assert lines[0].startswith("corralctl: "), lines
    return lines[0]


def need_bpf(proxy):
    """Steering commands need the BPF program; without it, skip locally and fail under CI."""
    mode = ctl_json(proxy, "status")["steering"]["mode"]
    if mode != "bpf":
        need(False, "steering is not loaded (mode %s); log:\n%s" % (mode, proxy.log()[-2000:]))


def core_rows(stats):
    return {c["core"]: c for c in stats["cores"]}


def test_status_reports_version_uptime_config_steering_and_cores(corral, backend):
    p = corral([backend])
    s = ctl_json(p, "status")
    assert s["version"]
    assert s["pid"] == p.proc.pid
    assert s["uptime_s"] >= 0
    assert os.path.abspath(s["config"]) == os.path.abspath(p.cfg_path)
    assert s["steering"]["mode"] in ("bpf", "kernel-hash")
    assert s["steering"]["policy"]
    assert [c["core"] for c in s["cores"]] == [0, 1]
    assert all(c["state"] == "active" for c in s["cores"])
    text = ctl_ok(p, "status")
    assert "config:" in text and "steering:" in text
    assert len([ln for ln in text.splitlines() if ln.split()[:1] in (["0"], ["1"])]) == 2


def test_control_socket_is_private(proxied):
    st = os.lstat(proxied.cfg["admin"]["socket"])
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_stats_json_shape_and_totals_follow_traffic(corral, backend):
    p = corral([backend])
    fast, slow = 20, 40
    n = fast + slow
    sent = received = 0
    for i in range(fast):
        r, out, back = counted_get(p.port, "/" if i % 4 else "/status/503")
        assert r.status in (200, 503)
        sent, received = sent + out, received + back
    # More than half of the requests take at least 50 ms (at once, to keep the test short):
    # the median latency is bounded from below, and from above by what the clients measured.
    results, lock = [], threading.Lock()

    def delayed():
        t0 = time.monotonic()
        got = counted_get(p.port, "/delay/50")
        with lock:
            results.append(got + (time.monotonic() - t0,))

    threads = [threading.Thread(target=delayed) for _ in range(slow)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30 * SLOW)
    assert len(results) == slow and all(r.status == 200 for r, _, _, _ in results), results
    sent += sum(out for _, out, _, _ in results)
    received += sum(back for _, _, back, _ in results)
    longest_us = max(took for _, _, _, took in results) * 1e6

    def landed():
        st = ctl_json(p, "stats")
        return st if (st["total"]["bytes_in"], st["total"]["bytes_out"]) == (sent, received) else None

    # Each worker counts a send when it completes: wait (with a deadline) for the last ones.
    s = wait_until(landed) or ctl_json(p, "stats")
    assert set(s["steering"]) >= {"mode", "policy"}
    assert len(s["cores"]) == 2
    fields = ["conns_active", "conns_accepted", "steered", "requests", "rps", "bytes_in", "bytes_out",
              "responses", "upstream_errors", "latency_us", "pool", "accept_queue", "cpu_pct"]
    for c in s["cores"] + [s["total"]]:
        for f in fields:
            assert f in c, (f, c)
        assert set(c["responses"]) == {"1xx", "2xx", "3xx", "4xx", "5xx"}
        assert set(c["latency_us"]) >= {"p50", "p99", "p999"}
        assert set(c["pool"]) >= {"idle", "hits", "misses"}
    for c in s["cores"]:
        assert c["state"] in ("active", "draining")
    tot = s["total"]
    # Every counter of the total is the sum of the cores'.
    for f in ["conns_accepted", "requests", "bytes_in", "bytes_out", "steered", "upstream_errors"]:
        assert tot[f] == sum(c[f] for c in s["cores"]), f
    for k in tot["responses"]:
        assert tot["responses"][k] == sum(c["responses"][k] for c in s["cores"])
    assert tot["requests"] == n
    assert tot["conns_accepted"] == n  # one connection per request
    assert tot["responses"]["5xx"] == fast // 4
    assert tot["responses"]["2xx"] == n - fast // 4
    # Bytes as the clients counted them: every byte sent, every byte of every response.
    assert (tot["bytes_in"], tot["bytes_out"]) == (sent, received), (tot, sent, received)
    # p50 is a bucket's midpoint, within 12.5 % of a true sample: the median sample is one of
    # the /delay/50 requests, and no longer than the longest one a client timed.
    p50 = tot["latency_us"]["p50"]
    assert 0.875 * 50000 <= p50 <= 1.125 * longest_us, (tot["latency_us"], longest_us)
    assert p50 <= tot["latency_us"]["p99"] <= tot["latency_us"]["p999"]
    assert s["imbalance"]["conns"] >= 1.0 and s["imbalance"]["cpu"] >= 1.0
    if s["steering"]["mode"] == "bpf":
        assert tot["steered"] >= n
    # Rates are per second over the last 1-2 s: with traffic just sent, requests/s is positive.
    assert tot["rps"] > 0


def test_stats_table_has_a_row_per_core_and_a_total(proxied):
    for _ in range(5):
        simple_get(proxied.port, "/")
    out = ctl_ok(proxied, "stats")
    rows = [ln.split() for ln in out.splitlines()]
    # Two tables (traffic, then responses and latency), each a row per core and a total row.
    assert [r[:3] for r in rows if r and r[0] == "CORE"] == [["CORE", "STATE", "CONNS"],
                                                          ["CORE", "1xx", "2xx"]]
    assert [r[0] for r in rows if r and r[0] in ("0", "1", "total")] == ["0", "1", "total"] * 2
    assert all(len(ln) <= 100 for ln in out.splitlines()), "stats must fit a normal terminal"
    traffic = {r[0]: r for r in rows if r and r[0] in ("0", "1") and r[1] == "active"}
    assert sum(int(traffic[c][6]) for c in ("0", "1")) == 5  # the REQS column
    assert "imbalance" in out


def test_stats_watch_repeats_until_interrupted(proxied):
    args = [binary("corralctl"), "-s", proxied.cfg["admin"]["socket"], "stats", "--json", "--watch", "0.2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = [proc.stdout.readline() for _ in range(3)]  # three frames (bounded by the test deadline)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=5 * SLOW)
    assert proc.returncode == 0, err
    frames = [json.loads(ln) for ln in "".join(first).splitlines() + out.splitlines()]
    assert len(frames) >= 3, out
    assert all(len(f["cores"]) == 2 for f in frames)


def test_policy_show_set_and_unknown(proxied):
    need_bpf(proxied)
    assert "hash" in ctl_ok(proxied, "policy")
    ctl_ok(proxied, "policy", "set", "round-robin")
    assert ctl_json(proxied, "status")["steering"]["policy"] == "round-robin"
    assert ctl_json(proxied, "stats")["steering"]["policy"] == "round-robin"
    line = ctl_fails(proxied, "policy", "set", "no-such-policy")
    assert "unknown policy" in line and "no-such-policy" in line
    assert ctl_json(proxied, "status")["steering"]["policy"] == "round-robin"
    # round-robin spreads new connections over both cores
    before = core_rows(ctl_json(proxied, "stats"))
    for _ in range(20):
        simple_get(proxied.port, "/")
    after = core_rows(ctl_json(proxied, "stats"))
    got = [after[i]["conns_accepted"] - before[i]["conns_accepted"] for i in (0, 1)]
    assert sum(got) == 20 and min(got) >= 5, got


def test_weight_changes_core_weight_and_unknown_core_fails(proxied):
    need_bpf(proxied)
    ctl_ok(proxied, "weight", 1, 5)
    assert {c["core"]: c["weight"] for c in ctl_json(proxied, "status")["cores"]}[1] == 5
    line = ctl_fails(proxied, "weight", 7, 1)
    assert "unknown core 7" in line
    ctl_fails(proxied, "weight", "x", 1, code=2)


def test_drain_moves_new_connections_off_the_core_and_undrain_brings_them_back(proxied):
    need_bpf(proxied)
    ctl_ok(proxied, "policy", "set", "round-robin")
    ctl_ok(proxied, "drain", 1)
    assert core_rows(ctl_json(proxied, "stats"))[1]["state"] == "draining"
    assert wait_until(lambda: core_rows(ctl_json(proxied, "status"))[1]["state"] == "draining")
    before = core_rows(ctl_json(proxied, "stats"))
    for _ in range(20):
        assert simple_get(proxied.port, "/").status == 200
    after = core_rows(ctl_json(proxied, "stats"))
    assert after[1]["conns_accepted"] == before[1]["conns_accepted"], "a drained core accepted"
    assert after[0]["conns_accepted"] - before[0]["conns_accepted"] == 20
    # Draining every core would refuse everything: the daemon says no.
    line = ctl_fails(proxied, "drain", 0)
    assert "last active core" in line
    ctl_ok(proxied, "undrain", 1)
    assert core_rows(ctl_json(proxied, "stats"))[1]["state"] == "active"

    def core1_accepts():
        b = core_rows(ctl_json(proxied, "stats"))[1]["conns_accepted"]
        for _ in range(10):
            simple_get(proxied.port, "/")
        return core_rows(ctl_json(proxied, "stats"))[1]["conns_accepted"] > b

    assert wait_until(core1_accepts, timeout=5), "undrained core got no new connection"
    assert "unknown core 9" in ctl_fails(proxied, "drain", 9)
    assert "unknown core 9" in ctl_fails(proxied, "undrain", 9)


def test_backends_list_disable_enable_weight(corral, backend_factory):
    a, b = backend_factory(ident="a"), backend_factory(ident="b")
    p = corral([a, b])
    bs = ctl_json(p, "backends")["backends"]
    assert [x["addr"] for x in bs] == [a.address, b.address]
    for x in bs:
        assert x["state"] == "up" and x["weight"] == 1
        assert set(x) >= {"addr", "weight", "state", "active", "requests", "errors", "latency_us"}

    ctl_ok(p, "backend", "disable", a.address)
    assert ctl_json(p, "backends")["backends"][0]["state"] == "disabled"
    before = a.stats()["requests"]
    for _ in range(10):
        r = simple_get(p.port, "/")
        assert r.status == 200 and r.header("x-backend-id") == "b", r.headers
    assert a.stats()["requests"] == before
    ctl_ok(p, "backend", "enable", a.address)
    assert ctl_json(p, "backends")["backends"][0]["state"] == "up"
    ids = {simple_get(p.port, "/").header("x-backend-id") for _ in range(10)}
    assert ids == {"a", "b"}

    ctl_ok(p, "backend", "weight", b.address, 5)
    assert ctl_json(p, "backends")["backends"][1]["weight"] == 5
    bs = ctl_json(p, "backends")["backends"]
    assert sum(x["requests"] for x in bs) == 20
    assert all(x["latency_us"] > 0 for x in bs)
    table = ctl_ok(p, "backends")
    assert a.address in table and b.address in table
    assert "unknown backend" in ctl_fails(p, "backend", "disable", "10.9.9.9:1")
    ctl_fails(p, "backend", "weight", b.address, "-3", code=2)


def test_reload_applies_a_good_config_and_rejects_a_bad_one(corral, backend_factory):
    a, b = backend_factory(ident="a"), backend_factory(ident="b")
    p = corral([a])
    v1 = ctl_json(p, "status")["config_version"]  # operations.md documents it
    cfg = dict(p.cfg)
    cfg["backends"] = [{"address": a.address, "weight": 1}, {"address": b.address, "weight": 1}]
    with open(p.cfg_path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    ctl_ok(p, "reload")
    assert [x["addr"] for x in ctl_json(p, "backends")["backends"]] == [a.address, b.address]
    assert ctl_json(p, "status")["config_version"] > v1
    assert {simple_get(p.port, "/").header("x-backend-id") for _ in range(10)} == {"a", "b"}

    # Runtime changes: a disabled backend stays disabled over a reload, weights go back to the file.
    ctl_ok(p, "backend", "disable", a.address)
    ctl_ok(p, "backend", "weight", b.address, 7)
    ctl_ok(p, "reload")
    bs = ctl_json(p, "backends")["backends"]
    assert [(x["state"], x["weight"]) for x in bs] == [("disabled", 1), ("up", 1)]
    ctl_ok(p, "backend", "enable", a.address)

    with open(p.cfg_path, "w") as f:
        f.write("listen: [\"127.0.0.1:0\"]\nno_such_key: 1\n")
    line = ctl_fails(p, "reload")
    assert "no_such_key" in line, line
    # The old config stays in force.
    assert [x["addr"] for x in ctl_json(p, "backends")["backends"]] == [a.address, b.address]
    assert simple_get(p.port, "/").status == 200


def test_daemon_not_running(tmp_path):
    line = ctl_fails(str(tmp_path / "nothing.sock"), "status", code=3)
    assert "daemon not running" in line
    # A stale socket file (nobody listening) reads the same way.
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "stale.sock"))
    s.close()
    assert "daemon not running" in ctl_fails(str(tmp_path / "stale.sock"), "stats", code=3)


def test_permission_denied_for_another_user(proxied):
    need(os.geteuid() == 0, "needs root to switch to an unprivileged user")
    sock = proxied.cfg["admin"]["socket"]
    r = subprocess.run([binary("corralctl"), "-s", sock, "status"], capture_output=True, text=True,
                       timeout=10, preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)))
    assert r.returncode == 3, r
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "permission denied" in r.stderr


class FakeDaemon:
    """A Unix socket that answers every request line with a fixed reply."""

    def __init__(self, path, reply):
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(path)
        self.srv.listen(4)
        self.reply = reply
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        try:
            c, _ = self.srv.accept()
            c.settimeout(5)
            c.recv(4096)
            c.sendall(self.reply)
            c.close()
        except OSError:
            pass

    def close(self):
        self.srv.close()


@pytest.mark.parametrize("reply", [b"this is not json\n", b"{\"no_ok\": 1}\n", b"{\"ok\": tr"])
def test_malformed_reply_is_reported(tmp_path, reply):
    path = str(tmp_path / "fake.sock")
    fake = FakeDaemon(path, reply)
    try:
        line = ctl_fails(path, "status", code=1)
        assert "malformed reply" in line, line
    finally:
        fake.close()


def test_stale_socket_is_replaced_and_live_one_not_stolen(corral, backend, tmp_path):
    sock = str(tmp_path / "shared.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(sock)  # a stale socket left by a dead process
    s.close()
    first = corral([backend], admin={"socket": sock, "metrics": "127.0.0.1:0"})
    assert ctl_json(sock, "status")["pid"] == first.proc.pid
    # Its own BPF pin folder, so that the two daemons share nothing but the socket path.
    second = corral([backend], admin={"socket": sock, "metrics": "127.0.0.1:0"},
                    instance="e2e-second-%d" % os.getpid())
    assert second.err.wait_for(r"control socket.*another process", 5 * SLOW), second.log()[-2000:]
    # The first daemon still owns the socket, also after the second one exits.
    assert ctl_json(sock, "status")["pid"] == first.proc.pid
    second.check_exit()
    assert ctl_json(sock, "status")["pid"] == first.proc.pid


def test_usage_errors_exit_2(proxied):
    for args in (["frobnicate"], ["drain"], ["drain", "-1"], ["policy", "set"], ["backend", "x"],
                 ["stats", "--watch", "0"]):
        assert "corralctl -h" in ctl_fails(proxied, *args, code=2)
    r = ctl(proxied)
    assert r.returncode == 2 and "usage:" in r.stderr
