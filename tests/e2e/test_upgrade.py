"""Binary upgrade (issue 10, done-when 1, 2 and 7): `corralctl upgrade` and SIGUSR2 start the binary
on disk in place of the running corral under a steady load of new connections and keep-alive GETs
and POSTs, and nothing is refused, reset or lost: every POST reaches the backend exactly once, the
old process exits within the grace period, the control socket and /metrics answer throughout,
steering stays bpf and /ready answers 503 from the draining old process. A failed upgrade (a bad
config, a binary that exits at once) leaves the old process serving and says why."""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
import yaml

import conftest
from conftest import SLOW, binary
from recorder import OK, Recorder

pytestmark = pytest.mark.corral_only

GRACE_MS = 4000
SLOW_MS = 1500  # a request held in flight across each upgrade: the old process drains for it


def handler(up, req):
    if req.target.startswith("/slow"):
        time.sleep(SLOW_MS / 1000.0)
    up.send(OK)
    return "keep"


def ctl(sock_path, req, timeout=10.0):
    """One control-socket request over a raw Unix socket (no corralctl process per poll)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout * SLOW)
    try:
        s.connect(sock_path)
        s.sendall((json.dumps(req) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            d = s.recv(65536)
            if not d:
                raise ConnectionError("control socket closed without a reply")
            buf += d
        return json.loads(buf)
    finally:
        s.close()


def pid_gone(pid):
    """True once pid has exited (no /proc entry, or a zombie waiting for its reaper)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


def wait_gone(pid, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pid_gone(pid):
            return True
        time.sleep(0.01)
    return pid_gone(pid)


class Load:
    """Bounded load: `threads` clients, each opening connections of 1-4 keep-alive requests (or
    40 for every other client), GET and POST alternately, each POST with a unique id, a few ms
    apart, until stopped or `max_conns` is reached. Every error is kept."""

    def __init__(self, port, threads=8, max_conns=6000):
        self.port = port
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.conns = 0
        self.gets = 0
        self.posts_ok = []
        self.errors = []
        self.max_conns = max_conns
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()

    def run(self, tid):
        n = 0
        while not self.stop_ev.is_set():
            with self.lock:
                if self.conns >= self.max_conns:
                    return
                self.conns += 1
            n += 1
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20 * SLOW)
            try:
                # Half the clients keep a connection for 40 requests: it spans a drain.
                for k in range(40 if tid % 2 else 1 + n % 4):
                    if k:
                        # Think time: keep-alive connections are idle when a drain begins.
                        time.sleep(0.001 * ((n + k) % 6))
                    if (n + k) % 2:
                        pid = "%d-%d-%d" % (tid, n, k)
                        c.request("POST", "/post/" + pid, body=pid.encode(),
                                  headers={"Content-Type": "text/plain"})
                        r = c.getresponse()
                        body = r.read()
                        if r.status != 200 or body != b"ok":
                            raise AssertionError("POST %s: %d %r" % (pid, r.status, body))
                        with self.lock:
                            self.posts_ok.append(pid)
                    else:
                        c.request("GET", "/get/%d-%d-%d" % (tid, n, k))
                        r = c.getresponse()
                        body = r.read()
                        if r.status != 200 or body != b"ok":
                            raise AssertionError("GET: %d %r" % (r.status, body))
                        with self.lock:
                            self.gets += 1
            except Exception as e:  # refused, reset, cut short: all count
                with self.lock:
                    self.errors.append("conn %d/%d: %r" % (tid, n, e))
            finally:
                c.close()

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(30 * SLOW)


class Poller:
    """Polls the control socket (status) and /metrics, /ready every 20 ms; keeps failures and
    the pids and /ready answers seen."""

    def __init__(self, sock_path, metrics_port):
        self.sock_path = sock_path
        self.metrics_port = metrics_port
        self.stop_ev = threading.Event()
        self.errors = []
        self.ready = []  # (status, body)
        self.pids = set()
        self.polls = 0
        self.t = threading.Thread(target=self.run, daemon=True)

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=5 * SLOW)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def run(self):
        while not self.stop_ev.is_set():
            try:
                st = ctl(self.sock_path, {"cmd": "status"})
                if not st.get("ok"):
                    raise AssertionError("status: %r" % st)
                self.pids.add(st["pid"])
                code, body = self.get("/metrics")
                if code != 200 or b"corral_" not in body:
                    raise AssertionError("/metrics: %d" % code)
                self.ready.append(self.get("/ready"))
                self.polls += 1
            except Exception as e:
                self.errors.append(repr(e))
            time.sleep(0.02)

    def start(self):
        self.t.start()

    def stop(self):
        self.stop_ev.set()
        self.t.join(10 * SLOW)


def pinned_owner(instance):
    """owner_pid of the pinned control map (struct steer_ctl: the sixth 32-bit field)."""
    conftest.need(shutil.which("bpftool"), "bpftool is missing (deploy/install-deps.sh installs it)")
    out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", "/sys/fs/bpf/corral/%s/ctl" % instance],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    v = bytes(int(b, 16) for b in json.loads(out.stdout)[0]["value"])
    return int.from_bytes(v[20:24], "little")


def pids_running(cfg_path):
    """Processes running corral with this test's config file: the one the test started and the
    successors the upgrades started from it."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if cfg_path.encode() in args and not pid_gone(int(d)):
            out.append(int(d))
    return out


@pytest.fixture
def start_corral(corral):
    """corral() with this file's grace period; at teardown every successor an upgrade started
    from it is stopped (by pid, SIGTERM) before the fixture stops the first process."""
    started = []

    def start(rec, timeouts=None, **over):
        t = dict({"shutdown_grace_ms": GRACE_MS}, **(timeouts or {}))
        p = corral([rec.address], timeouts=t, **over)
        started.append(p)
        return p

    yield start
    for p in started:
        for pid in pids_running(p.cfg_path):
            if pid != p.proc.pid:
                stop_pid(pid)


def slow_request(port, out):
    """A GET held by the backend for SLOW_MS: keeps the old process draining."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30 * SLOW)
    try:
        c.request("GET", "/slow")
        r = c.getresponse()
        out.append((r.status, r.read()))
    except Exception as e:
        out.append(("error", repr(e)))
    finally:
        c.close()


def stop_pid(pid):
    """SIGTERM to a successor we started through the upgrade (not our child), and its exit."""
    if not pid_gone(pid):
        os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid, (GRACE_MS / 1000.0 + 10) * SLOW), "pid %d did not exit on SIGTERM" % pid


@pytest.mark.deadline(240)
def test_three_upgrades_under_load_drop_nothing(start_corral):
    rec = Recorder(handler)
    p = start_corral(rec, steering={"policy": "round-robin"})
    sock = p.cfg["admin"]["socket"]
    st = ctl(sock, {"cmd": "status"})
    assert st["steering"]["mode"] == "bpf", st
    assert st["upgrade"] is None and st["upgrading"] is False, st
    # A runtime change that must carry over to every successor.
    assert ctl(sock, {"cmd": "weight", "core": 1, "weight": 3})["ok"]

    load = Load(p.port)
    poller = Poller(sock, p.metrics_port)
    pids = [st["pid"]]
    last_pid = st["pid"]
    try:
        load.start()
        poller.start()
        for i in range(3):
            # Under load: wait for some more connections before each upgrade.
            target = (i + 1) * 400
            deadline = time.monotonic() + 60 * SLOW
            while load.conns < target and time.monotonic() < deadline:
                time.sleep(0.02)
            assert load.conns >= target, "the load made only %d connections" % load.conns
            held = []
            t = threading.Thread(target=slow_request, args=(p.port, held))
            t.start()
            time.sleep(0.2 * SLOW)  # the slow request is in flight at the old process
            old = last_pid
            t0 = time.monotonic()
            if i == 1:
                os.kill(old, signal.SIGUSR2)  # NGINX's convention: the same as corralctl upgrade
                deadline = time.monotonic() + 30 * SLOW
                while time.monotonic() < deadline:
                    new = ctl(sock, {"cmd": "status"})["pid"]
                    if new != old:
                        break
                    time.sleep(0.01)
            else:
                r = subprocess.run([binary("corralctl"), "-s", sock, "upgrade"], capture_output=True,
                                   text=True, timeout=40 * SLOW)
                assert r.returncode == 0, r.stdout + r.stderr
                new = int(r.stdout.split("new pid ")[1].split()[0])
            assert new != old
            st = ctl(sock, {"cmd": "status"})
            assert st["pid"] == new, st
            assert st["upgrade"]["count"] == i + 1 and st["upgrade"]["from_pid"] == old, st
            assert st["steering"]["mode"] == "bpf", st
            assert st["steering"]["policy"] == "round-robin", st
            assert [c["weight"] for c in st["cores"]] == [1, 3], st
            # The old process exits within the grace period (the slow request holds it ~1.5 s).
            assert wait_gone(old, GRACE_MS / 1000.0 + 2 * SLOW), "old pid %d still running" % old
            gone_s = time.monotonic() - t0
            assert gone_s < GRACE_MS / 1000.0 + 2 * SLOW, gone_s
            t.join(30 * SLOW)
            assert held == [(200, b"ok")], held
            # The successor answers /ready (200) once the old process has gone.
            n = len(poller.ready)
            deadline = time.monotonic() + 5 * SLOW
            while time.monotonic() < deadline and (200, b"ready\n") not in poller.ready[n:]:
                time.sleep(0.01)
            pids.append(new)
            last_pid = new
        # At least 2,000 connections over the test, with the third upgrade behind us.
        deadline = time.monotonic() + 90 * SLOW
        while load.conns < 2000 and time.monotonic() < deadline:
            time.sleep(0.05)
        load.stop()
        poller.stop()

        print("load: %d connections, %d GETs, %d POSTs, %d admin polls, 3 upgrades" %
              (load.conns, load.gets, len(load.posts_ok), poller.polls))
        assert load.conns >= 2000, load.conns
        assert not load.errors, "%d failed connections, first: %s" % (len(load.errors), load.errors[:5])
        assert not poller.errors, "control socket or metrics failed: %s" % poller.errors[:5]
        assert poller.polls > 20, poller.polls
        # /ready: 503 from a draining old process (it serves /metrics until it exits), then 200.
        codes = [c for c, _ in poller.ready]
        assert set(poller.ready) == {(200, b"ready\n"), (503, b"draining\n")}, set(poller.ready)
        flips = sum(1 for a, b in zip(codes, codes[1:]) if (a, b) == (200, 503))
        backs = sum(1 for a, b in zip(codes, codes[1:]) if (a, b) == (503, 200))
        assert flips == 3 and backs == 3, codes
        assert set(pids) <= poller.pids | {pids[0]}, (pids, poller.pids)

        # Every POST reached the backend exactly once.
        posts = [r.target[len("/post/"):] for r in rec.requests if r.method == "POST"]
        seen = {}
        for pid in posts:
            seen[pid] = seen.get(pid, 0) + 1
        dup = [k for k, v in seen.items() if v != 1]
        assert not dup, "POSTs delivered more than once: %s" % dup[:10]
        assert sorted(seen) == sorted(load.posts_ok), (len(seen), len(load.posts_ok))
        assert len(load.posts_ok) > 1000 and load.gets > 1000, (len(load.posts_ok), load.gets)
        st = ctl(sock, {"cmd": "stats"})
        assert st["steering"]["mode"] == "bpf", st["steering"]
        # The newest process steers: its program chose the workers for its connections.
        assert st["total"]["steered"] > 0, st["total"]
        stop_pid(last_pid)
        assert "stopped" in p.log()
    finally:
        load.stop()
        poller.stop()
        rec.close()


def test_upgrade_with_a_bad_config_fails_and_the_old_one_serves(start_corral):
    rec = Recorder()
    p = start_corral(rec)
    sock = p.cfg["admin"]["socket"]
    before = ctl(sock, {"cmd": "status"})
    with open(p.cfg_path) as f:
        good = f.read()
    bad = yaml.safe_load(good)
    bad["balance"] = "no-such-balance"
    with open(p.cfg_path, "w") as f:
        yaml.safe_dump(bad, f)
    try:
        r = subprocess.run([binary("corralctl"), "-s", sock, "upgrade"], capture_output=True, text=True,
                           timeout=40 * SLOW)
    finally:
        with open(p.cfg_path, "w") as f:
            f.write(good)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "upgrade failed" in r.stderr and "balance" in r.stderr, r.stderr
    assert "balance: must be one of" in r.stderr, r.stderr
    after = ctl(sock, {"cmd": "status"})
    assert after["pid"] == before["pid"] == p.proc.pid and after["upgrading"] is False, after
    assert after["steering"]["mode"] == before["steering"]["mode"]
    for _ in range(20):
        c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5 * SLOW)
        c.request("GET", "/")
        assert c.getresponse().status == 200
        c.close()
    assert "upgrade failed, still serving" in p.log()
    if after["steering"]["mode"] == "bpf":
        # The old program steers again: no connection fell back to the kernel hash.
        fb = ctl(sock, {"cmd": "stats"})["steering"]["fallbacks"]
        for _ in range(10):
            c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5 * SLOW)
            c.request("GET", "/")
            assert c.getresponse().status == 200
            c.close()
        assert ctl(sock, {"cmd": "stats"})["steering"]["fallbacks"] == fb
    # A working upgrade afterwards still goes through.
    r = subprocess.run([binary("corralctl"), "-s", sock, "upgrade"], capture_output=True, text=True,
                       timeout=40 * SLOW)
    assert r.returncode == 0, r.stdout + r.stderr
    new = int(r.stdout.split("new pid ")[1].split()[0])
    assert wait_gone(p.proc.pid, GRACE_MS / 1000.0 + 2 * SLOW)
    stop_pid(new)
    rec.close()


def test_upgrade_to_a_binary_that_exits_at_once_fails_and_the_old_one_serves(start_corral, tmp_path, monkeypatch):
    build = tmp_path / "build"
    build.mkdir()
    for name in ("corral", "corralctl"):
        shutil.copy2(binary(name), str(build / name))
    monkeypatch.setattr(conftest, "BUILD", str(build))
    rec = Recorder()
    p = start_corral(rec)
    sock = p.cfg["admin"]["socket"]
    # The "new binary": replaced on disk (rename over, as a package manager does).
    script = build / "corral.new"
    script.write_text("#!/bin/sh\necho 'broken build' >&2\nexit 3\n")
    script.chmod(0o755)
    os.replace(str(script), str(build / "corral"))
    r = subprocess.run([str(build / "corralctl"), "-s", sock, "upgrade"], capture_output=True, text=True,
                       timeout=40 * SLOW)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "upgrade failed" in r.stderr and "exited with status 3 before it was ready" in r.stderr, r.stderr
    st = ctl(sock, {"cmd": "status"})
    assert st["pid"] == p.proc.pid and st["upgrading"] is False, st
    for _ in range(20):
        c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5 * SLOW)
        c.request("GET", "/")
        assert c.getresponse().status == 200
        c.close()
    # SIGUSR2 with the same binary: refused the same way, logged, and the old one serves on.
    with p.err.cond:
        start = len(p.err.lines)
    p.proc.send_signal(signal.SIGUSR2)
    assert p.err.wait_for(r"upgrade failed, still serving.*exited with status 3", 20 * SLOW, start), \
        p.log()[-2000:]
    assert ctl(sock, {"cmd": "status"})["pid"] == p.proc.pid
    rec.close()


def test_upgrade_under_systemd_notify_sends_the_new_mainpid(tmp_path):
    from test_sdnotify import Daemon, Notify, get
    n = Notify(str(tmp_path))
    rec = Recorder()
    d = Daemon(str(tmp_path), rec, {"NOTIFY_SOCKET": n.env, "WATCHDOG_USEC": "400000"})
    # As systemd does: WATCHDOG_PID is the main process's pid (exec keeps the shell's pid).
    d.proc.kill()
    d.proc.wait(5)
    env = dict(os.environ, NOTIFY_SOCKET=n.env, WATCHDOG_USEC="400000")
    d.proc = subprocess.Popen(["/bin/sh", "-c", 'WATCHDOG_PID=$$ exec "$0" -c "$1"', binary("corral"),
                               d.cfg_path], stdin=subprocess.DEVNULL, stdout=d.log, stderr=subprocess.STDOUT,
                              env=env)
    new = None
    try:
        m = n.recv(15)
        while m and m.get("WATCHDOG") == "1":
            m = n.recv(15)
        assert m and m.get("READY") == "1" and m.get("MAINPID") == str(d.proc.pid), (m, d.text())
        r = subprocess.run([binary("corralctl"), "-s", d.sock, "upgrade"], capture_output=True, text=True,
                           timeout=40 * SLOW)
        assert r.returncode == 0, r.stdout + r.stderr + d.text()
        new = int(r.stdout.split("new pid ")[1].split()[0])
        m = n.recv(10)
        while m and m.get("WATCHDOG") == "1":
            m = n.recv(10)
        assert m and m.get("MAINPID") == str(new) and m.get("READY") == "1", m
        assert d.proc.wait(20 * SLOW) == 0
        # The old process said nothing that would make systemd think the service stops, and
        # the new one keeps the watchdog fed (WATCHDOG_PID named the old pid).
        pings = 0
        deadline = time.monotonic() + 2 * SLOW
        while time.monotonic() < deadline and pings < 3:
            m = n.recv(1)
            assert m is None or "STOPPING" not in m, m
            if m and m.get("WATCHDOG") == "1":
                pings += 1
        assert pings >= 3, d.text()
        assert get(d.port()) == 200
        os.kill(new, signal.SIGTERM)
        m = n.recv(10)
        assert m and m.get("STOPPING") == "1", m
        assert wait_gone(new, 20 * SLOW)
        new = None
    finally:
        if new:
            stop_pid(new)
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(5)
        d.log.close()
        n.close()
        rec.close()


def test_upgrade_carries_the_drain_and_policy_over(start_corral):
    rec = Recorder()
    p = start_corral(rec)
    sock = p.cfg["admin"]["socket"]
    st = ctl(sock, {"cmd": "status"})
    if st["steering"]["mode"] != "bpf":
        conftest.need(False, "steering is not bpf here: %s" % st["steering"])
    assert ctl(sock, {"cmd": "drain", "core": 0})["ok"]
    assert ctl(sock, {"cmd": "policy", "set": "least-conn"})["ok"]
    r = subprocess.run([binary("corralctl"), "-s", sock, "upgrade", "--json"], capture_output=True,
                       text=True, timeout=40 * SLOW)
    assert r.returncode == 0, r.stdout + r.stderr
    new = json.loads(r.stdout)["pid"]
    st = ctl(sock, {"cmd": "status"})
    assert st["pid"] == new, st
    assert st["steering"] == {"mode": "bpf", "policy": "least-conn"}, st
    human = subprocess.run([binary("corralctl"), "-s", sock, "status"], capture_output=True, text=True,
                           timeout=10 * SLOW).stdout
    assert "(pid %d)" % new in human and "upgrade:  last at %s (from pid %d, upgrade 1)" % (
        st["upgrade"]["at"], p.proc.pid) in human, human
    assert [c["state"] for c in st["cores"]] == ["draining", "active"], st
    before = ctl(sock, {"cmd": "stats"})["cores"]
    for _ in range(20):
        c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5 * SLOW)
        c.request("GET", "/")
        assert c.getresponse().status == 200
        c.close()
    after = ctl(sock, {"cmd": "stats"})["cores"]
    # The drained core of the new process takes no new connection.
    assert after[0]["conns_accepted"] == before[0]["conns_accepted"], (before, after)
    assert after[1]["conns_accepted"] >= before[1]["conns_accepted"] + 20, (before, after)
    assert os.path.isdir("/sys/fs/bpf/corral/%s" % p.cfg["instance"])
    assert wait_gone(p.proc.pid, GRACE_MS / 1000.0 + 2 * SLOW)
    # The pins are the new process's: still there after the old one exited.
    assert os.path.exists("/sys/fs/bpf/corral/%s/ctl" % p.cfg["instance"])
    assert pinned_owner(p.cfg["instance"]) == new
    stop_pid(new)
    rec.close()


def test_upgrade_that_never_becomes_ready_is_killed_and_the_old_one_serves(start_corral, monkeypatch):
    # The old process waits 1.5 s; the new one (tests only) hangs after it took the control socket.
    monkeypatch.setenv("CORRAL_TEST_UPGRADE_STALL_MS", "60000")
    rec = Recorder()
    p = start_corral(rec, timeouts={"upgrade_ready_ms": conftest.ms(1500)})
    sock = p.cfg["admin"]["socket"]
    mode = ctl(sock, {"cmd": "status"})["steering"]["mode"]
    first = subprocess.Popen([binary("corralctl"), "-s", sock, "upgrade"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert p.err.wait_for(r"upgrade: started", 10 * SLOW), p.log()[-2000:]
    # While one is starting, a second upgrade is refused (the stalled new process holds the
    # control socket path by now, so ask the old one by signal).
    p.proc.send_signal(signal.SIGUSR2)
    assert p.err.wait_for(r"signal USR2: upgrade not started: an upgrade is already under way",
                          10 * SLOW), p.log()[-2000:]
    out, err = first.communicate(timeout=40 * SLOW)
    assert first.returncode == 1, out + err
    assert "upgrade failed" in err and "was not ready within" in err, err
    m = p.err.wait_for(r"upgrade: started .* as pid (\d+)", 1)
    assert m and wait_gone(int(m.group(1)), 5 * SLOW), "the stalled new process was not killed"
    # The control socket path is the old process's again, and it serves, steering as before.
    st = ctl(sock, {"cmd": "status"})
    assert st["pid"] == p.proc.pid and st["steering"]["mode"] == mode, st
    fb = ctl(sock, {"cmd": "stats"})["steering"].get("fallbacks", 0)
    if mode == "bpf":
        # The killed process had replaced the pins with its own; the old process pins its maps
        # again (bpftool and the next upgrade's carry-over read them there).
        for name in ("ctl", "cores", "stats", "socks"):
            assert os.path.exists("/sys/fs/bpf/corral/%s/%s" % (p.cfg["instance"], name)), name
        assert pinned_owner(p.cfg["instance"]) == p.proc.pid
    for _ in range(20):
        c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5 * SLOW)
        c.request("GET", "/")
        assert c.getresponse().status == 200
        c.close()
    assert ctl(sock, {"cmd": "stats"})["steering"].get("fallbacks", 0) == fb
    rec.close()


def test_a_tunnel_runs_on_through_the_drain_until_the_grace_period_ends(start_corral):
    from test_hardening import UPGRADE, ws_handler
    from util import Client
    ws = ws_handler()

    def handler(up, req):
        if req.target == "/ws":
            return ws(up, req)
        up.send(OK)
        return "keep"

    def echo(c, msg):
        c.send(msg)
        assert c.read_at_least(len(msg)) == msg.upper()

    rec = Recorder(handler)
    p = start_corral(rec, timeouts={"tunnel_idle_ms": 60000})
    sock = p.cfg["admin"]["socket"]
    with Client(p.port, timeout=20 * SLOW) as c:
        c.send(UPGRADE)
        assert c.read_response().status == 101
        echo(c, b"before")
        t0 = time.monotonic()
        r = subprocess.run([binary("corralctl"), "-s", sock, "upgrade"], capture_output=True, text=True,
                           timeout=40 * SLOW)
        assert r.returncode == 0, r.stdout + r.stderr
        new = int(r.stdout.split("new pid ")[1].split()[0])
        # The old process still carries the tunnel, both ways; new connections go to the new one.
        time.sleep(0.3 * SLOW)
        echo(c, b"during the drain")
        assert not pid_gone(p.proc.pid)
        h = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5 * SLOW)
        h.request("GET", "/")
        assert h.getresponse().status == 200
        h.close()
        assert ctl(sock, {"cmd": "status"})["pid"] == new
        # The grace period ends the tunnel and the old process.
        assert wait_gone(p.proc.pid, GRACE_MS / 1000.0 + 3 * SLOW)
        took = time.monotonic() - t0
        assert GRACE_MS / 1000.0 - 0.5 <= took <= GRACE_MS / 1000.0 + 3 * SLOW, took
    stop_pid(new)
    rec.close()


def cpu_s(pid):
    """User plus system CPU seconds of every thread of pid."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_client_that_stops_waiting_for_its_upgrade_costs_nothing(start_corral, monkeypatch):
    monkeypatch.setenv("CORRAL_TEST_UPGRADE_STALL_MS", "60000")
    rec = Recorder()
    p = start_corral(rec, timeouts={"upgrade_ready_ms": conftest.ms(2000)})
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(p.cfg["admin"]["socket"])
    s.sendall(b'{"cmd":"upgrade"}\n')
    assert p.err.wait_for(r"upgrade: started", 10 * SLOW), p.log()[-2000:]
    s.close()  # gone before the answer
    c0, t0 = cpu_s(p.proc.pid), time.monotonic()
    assert p.err.wait_for(r"upgrade failed, still serving", 20 * SLOW), p.log()[-2000:]
    used, took = cpu_s(p.proc.pid) - c0, time.monotonic() - t0
    # The old process waited without spinning on the closed client.
    assert used < 0.3 * took, "%.2f s of CPU in %.2f s" % (used, took)
    assert ctl(p.cfg["admin"]["socket"], {"cmd": "status"})["pid"] == p.proc.pid
    rec.close()
