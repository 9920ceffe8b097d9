"""Privilege drop: with `user: nobody` corral runs as that uid with no capability after start-up,
still steers with BPF, and reload, drain/undrain, the access log and shutdown clean-up work."""
import json
import os
import pwd
import re
import shutil
import subprocess
import time

import pytest
import yaml

from conftest import SLOW, binary
from upstreams import LogFileDaemon, need_root, open_folder  # noqa: F401
from util import simple_get

pytestmark = pytest.mark.corral_only


class Daemon(LogFileDaemon):
    def __init__(self, folder, backend, **over):
        self.folder = folder
        self.cfg_path = os.path.join(folder, "corral.yaml")
        self.sock = os.path.join(folder, "corral.sock")
        self.log_path = os.path.join(folder, "corral.log")
        self.instance = "e2e-priv-%d-%d" % (os.getpid(), time.monotonic_ns() % 1000000)
        self.cfg = {
            "instance": self.instance,
            "listen": ["127.0.0.1:0"],
            "workers": {"cores": [0, 1]},
            "backends": [backend.address],
            "balance": "round-robin",
            "steering": {"policy": "round-robin"},
            "admin": {"socket": self.sock, "metrics": "127.0.0.1:0"},
            "access_log": {"path": os.path.join(folder, "access.log")},
            "user": "nobody",
        }
        self.cfg.update(over)
        self.write()
        os.chmod(self.cfg_path, 0o644)
        self.spawn()
        deadline = time.monotonic() + 15 * SLOW
        while time.monotonic() < deadline and not re.search(r"\bready:", self.text()):
            assert self.proc.poll() is None, self.text()
            time.sleep(0.02)
        assert re.search(r"\bready:", self.text()), self.text()
        self.port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", self.text()).group(1))

    def write(self):
        with open(self.cfg_path, "w") as f:
            yaml.safe_dump(self.cfg, f)

    def ctl(self, *args):
        r = subprocess.run([binary("corralctl"), "-s", self.sock] + [str(a) for a in args], capture_output=True,
                           text=True, timeout=10 * SLOW)
        assert r.returncode == 0, "corralctl %s: %s" % (args, r.stderr)
        return r.stdout

    def stats(self):
        return json.loads(self.ctl("stats", "--json"))

    def accepted(self):
        return {c["core"]: c["conns_accepted"] for c in self.stats()["cores"]}

    def connections(self, n):
        before = self.accepted()
        for _ in range(n):
            assert simple_get(self.port, "/").status == 200
        after = self.accepted()
        return {k: after[k] - before[k] for k in after}

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def status_ids(path):
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.split()
    return out


def test_runs_as_nobody_and_keeps_steering_reloading_draining(open_folder, backend):
    need_root("the privilege drop test")
    nobody = pwd.getpwnam("nobody")
    d = Daemon(open_folder, backend)
    try:
        assert "running as user nobody (uid %d" % nobody.pw_uid in d.text()
        # Every thread: all four uids and gids are nobody's, and no capability is left.
        tasks = os.listdir("/proc/%d/task" % d.proc.pid)
        assert len(tasks) >= 3
        for t in tasks:
            st = status_ids("/proc/%d/task/%s/status" % (d.proc.pid, t))
            assert st["Uid"] == [str(nobody.pw_uid)] * 4, (t, st["Uid"])
            assert st["Gid"] == [str(nobody.pw_gid)] * 4, (t, st["Gid"])
            assert st["Groups"] in ([], [str(nobody.pw_gid)]), st["Groups"]
            assert int(st["CapEff"][0], 16) == 0 and int(st["CapPrm"][0], 16) == 0, st
        status = json.loads(d.ctl("status", "--json"))
        assert status["steering"]["mode"] == "bpf", d.text()

        # Steering: round-robin over both cores.
        got = d.connections(10)
        assert got == {0: 5, 1: 5}, got

        # Reload reads the file again as nobody.
        d.cfg["balance"] = "least-conn"
        d.write()
        assert "reloaded" in d.ctl("reload")
        assert json.loads(d.ctl("status", "--json"))["config_version"] == 2

        # Drain shuts core 0's listener; undrain listens again and puts it back in the map.
        d.ctl("drain", 0)
        got = d.connections(6)
        assert got == {0: 0, 1: 6}, got
        d.ctl("undrain", 0)
        time.sleep(0.2)
        got = d.connections(10)
        assert got == {0: 5, 1: 5}, got
        assert d.stats()["steering"]["fallbacks"] == 0
        assert "re-listen" not in d.text() and "register" not in d.text(), d.text()

        # The access log was opened before the drop and handed to nobody: a reopen of the same
        # path can append to it.
        alog = os.path.join(open_folder, "access.log")
        deadline = time.monotonic() + 3 * SLOW
        while time.monotonic() < deadline and os.path.getsize(alog) == 0:
            time.sleep(0.05)
        assert os.path.getsize(alog) > 0
        assert os.stat(alog).st_uid == nobody.pw_uid
        # The folder is root's: corral says a reopen after rotation could not create the file.
        assert "cannot create files in the folder of %s" % alog in d.text()

        pins = "/sys/fs/bpf/corral/%s" % d.instance
        assert sorted(os.listdir(pins)) == ["cores", "ctl", "socks", "stats"]
        assert d.stop() == 0
        # Shutdown as nobody still unpinned its maps (the empty folder is root's to remove).
        assert os.listdir(pins) == [], os.listdir(pins)
    finally:
        d.kill()
        shutil.rmtree("/sys/fs/bpf/corral/%s" % d.instance, ignore_errors=True)


def test_unknown_user_or_lone_group_is_a_config_error(open_folder, backend):
    path = os.path.join(open_folder, "c.yaml")
    for extra, want in (("user: no-such-user-here\n", r"c\.yaml:3: user: no such user 'no-such-user-here'"),
                        ("user: nobody\ngroup: no-such-group\n", r"c\.yaml:4: group: no such group 'no-such-group'"),
                        ("group: nogroup\n", r"c\.yaml:3: group: needs user:")):
        with open(path, "w") as f:
            f.write('listen: ["127.0.0.1:0"]\nbackends: ["%s"]\n%s' % (backend.address, extra))
        r = subprocess.run([binary("corral"), "--check", "-c", path], capture_output=True, text=True,
                           timeout=10 * SLOW)
        assert r.returncode == 1, r
        assert re.search(want, r.stderr), r.stderr


def test_upgrade_after_the_drop_is_refused_with_the_reason_and_keeps_serving(open_folder, backend):
    """A successor would start as nobody: it could not load the steering program nor bind into
    the listeners' reuseport group (root's). corral refuses up front, says why and what to do,
    starts no process, and keeps serving with its pins in place (before: the successor was
    started, failed with "cannot listen", and the old process lost its pins trying to
    re-pin them as nobody)."""
    need_root("the privilege drop test")
    d = Daemon(open_folder, backend)
    try:
        r = subprocess.run([binary("corralctl"), "-s", d.sock, "upgrade"], capture_output=True, text=True,
                           timeout=30 * SLOW)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "not possible after the privilege drop to user nobody" in r.stderr, r.stderr
        assert "restart instead" in r.stderr
        assert "upgrade: started" not in d.text(), d.text()
        assert simple_get(d.port, "/").status == 200
        assert json.loads(d.ctl("status", "--json"))["upgrading"] is False
        pins = "/sys/fs/bpf/corral/%s" % d.instance
        assert sorted(os.listdir(pins)) == ["cores", "ctl", "socks", "stats"]
        assert d.stop() == 0
    finally:
        d.kill()
        shutil.rmtree("/sys/fs/bpf/corral/%s" % d.instance, ignore_errors=True)
