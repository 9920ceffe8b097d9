"""corral under a minimal sd_notify listener: READY=1 only once the port serves, RELOADING=1 ...
READY=1 around a reload, STOPPING=1 on SIGTERM, WATCHDOG=1; and the unit passes systemd-analyze."""
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest
import yaml

import util

from conftest import IN_CI, REPO, SLOW, binary
from upstreams import LogFileDaemon, ctl_ok

pytestmark = pytest.mark.corral_only


class Notify:
    """The service manager's side: an AF_UNIX datagram socket that records each message."""

    def __init__(self, tmp, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = "corral-e2e-%d-%d" % (os.getpid(), time.monotonic_ns())
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            path = os.path.join(tmp, "notify.sock")
            self.sock.bind(path)
            self.env = path

    def recv(self, timeout):
        """The next message as a dict, or None after timeout seconds."""
        self.sock.settimeout(timeout * SLOW)
        try:
            data = self.sock.recv(4096).decode()
        except socket.timeout:
            return None
        return dict(line.split("=", 1) for line in data.split("\n") if line)

    def close(self):
        self.sock.close()


class Daemon(LogFileDaemon):
    def __init__(self, tmp, backend, env_extra):
        self.tmp = tmp
        self.cfg_path = os.path.join(tmp, "corral.yaml")
        self.log_path = os.path.join(tmp, "corral.log")
        self.sock = os.path.join(tmp, "corral.sock")
        self.cfg = {
            "instance": "e2e-sd-%d" % os.getpid(),
            "listen": ["127.0.0.1:0"],
            "workers": {"cores": [0, 1]},
            "backends": [backend.address],
            "admin": {"socket": self.sock},
        }
        self.write_cfg(self.cfg)
        env = dict(os.environ)
        env.update(env_extra)
        self.spawn(env)

    def write_cfg(self, cfg):
        with open(self.cfg_path, "w") as f:
            yaml.safe_dump(cfg, f)

    def port(self):
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.text())
        return int(m.group(1)) if m else None



def get(port):
    return util.status_of(util.exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 2 * SLOW))


@pytest.fixture
def daemon(tmp_path, backend):
    made = []

    def start(env):
        d = Daemon(str(tmp_path), backend, env)
        made.append(d)
        return d

    yield start
    for d in made:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(5)


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_reload_stopping(tmp_path, daemon, abstract):
    n = Notify(str(tmp_path), abstract)
    try:
        d = daemon({"NOTIFY_SOCKET": n.env})
        m = n.recv(15)
        assert m is not None, "no notification; log:\n%s" % d.text()
        assert m.get("READY") == "1", m
        assert m.get("MAINPID") == str(d.proc.pid), m
        # READY=1 means serving: a request right now is answered.
        port = d.port()
        assert port, d.text()
        assert get(port) == 200
        assert "ready:" in d.text()

        for how in ("SIGHUP", "corralctl"):
            t0 = time.monotonic_ns() // 1000
            if how == "SIGHUP":
                d.proc.send_signal(signal.SIGHUP)
            else:
                ctl_ok(d.sock, "reload")
            m = n.recv(5)
            assert m and m.get("RELOADING") == "1", (how, m)
            usec = int(m["MONOTONIC_USEC"])
            assert t0 <= usec <= time.monotonic_ns() // 1000, (t0, usec)
            m = n.recv(5)
            assert m and m.get("READY") == "1", (how, m)
            assert "reloaded" in m.get("STATUS", ""), m

        # A refused reload: still RELOADING=1 then READY=1 (the old configuration serves).
        bad = dict(d.cfg, balance="nonsense")
        d.write_cfg(bad)
        d.proc.send_signal(signal.SIGHUP)
        m = n.recv(5)
        assert m and m.get("RELOADING") == "1", m
        m = n.recv(5)
        assert m and m.get("READY") == "1" and "refused" in m.get("STATUS", ""), m
        assert get(port) == 200

        d.proc.send_signal(signal.SIGTERM)
        m = n.recv(5)
        assert m and m.get("STOPPING") == "1", m
        assert d.stop() == 0
    finally:
        n.close()


def test_watchdog_pings(tmp_path, daemon):
    n = Notify(str(tmp_path))
    try:
        d = daemon({"NOTIFY_SOCKET": n.env, "WATCHDOG_USEC": "400000"})
        assert n.recv(15).get("READY") == "1"
        pings = 0
        deadline = time.monotonic() + 2 * SLOW
        while time.monotonic() < deadline and pings < 3:
            m = n.recv(1)
            if m and m.get("WATCHDOG") == "1":
                pings += 1
        assert pings >= 3, d.text()
        assert d.stop() == 0
    finally:
        n.close()


def test_unit_passes_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if not tool:
        msg = "systemd-analyze is missing (deploy/install-deps.sh installs systemd)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    build = os.path.dirname(binary("corral"))
    binary("corralctl")
    with open(os.path.join(REPO, "deploy", "corral.service")) as f:
        unit = f.read()
    assert re.search(r"^Type=notify$", unit, re.M)
    # all: an upgrade's successor (a child of the main process) sends MAINPID= and READY=1.
    assert re.search(r"^NotifyAccess=all$", unit, re.M)
    assert re.search(r"^ExecReload=/usr/local/bin/corral --check ", unit, re.M)
    # The unit names installed paths; verify a copy that points at this build's binaries.
    path = tmp_path / "corral.service"
    path.write_text(unit.replace("/usr/local/bin/", build + "/"))
    r = subprocess.run([tool, "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
