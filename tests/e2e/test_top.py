"""End-to-end test of `corralctl top`: rendered in a real terminal (tmux), one row per core, clean exit."""
import os
import shutil
import subprocess
import time
import uuid

import pytest

from conftest import SLOW, binary, need
from util import Client

pytestmark = pytest.mark.corral_only


class Tmux:
    """A private tmux server (its own socket) running one command in a fixed-size window."""

    def __init__(self, cmd, width=160, height=30):
        need(shutil.which("tmux"), "tmux is not installed (deploy/install-deps.sh installs it)")
        self.name = "corral-top-%s" % uuid.uuid4().hex[:8]
        # Keep the pane after the command exits, to read what it left on the screen; the shell
        # itself survives Ctrl-C (trap), only corralctl gets to handle it.
        self.run("new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height),
                 "sh -c 'trap : INT; %s; echo EXIT=$?; stty -a | tr \" ;\" \"\\\\n\\\\n\" | "
                 "grep -x -e echo -e icanon | tr \"\\\\n\" +; echo; sleep 60'" % cmd)

    def run(self, *args):
        return subprocess.run(["tmux", "-L", self.name, "-f", "/dev/null"] + list(args),
                              capture_output=True, text=True, timeout=10)

    def screen(self):
        r = self.run("capture-pane", "-p", "-t", "t")
        assert r.returncode == 0, r.stderr
        return r.stdout

    def keys(self, *k):
        self.run("send-keys", "-t", "t", *k)

    def wait_for(self, pred, timeout=5.0):
        deadline = time.monotonic() + timeout * SLOW
        while True:
            s = self.screen()
            if pred(s):
                return s
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)

    def close(self):
        self.run("kill-server")


def rows(screen):
    """{core: row text} for the lines of the per-core table."""
    out = {}
    for ln in screen.splitlines():
        f = ln.split()
        if len(f) >= 3 and f[0].isdigit() and f[1] in ("active", "draining"):
            out[int(f[0])] = ln
    return out


def top_cmd(proxy):
    return "%s -s %s top" % (binary("corralctl"), proxy.cfg["admin"]["socket"])


@pytest.mark.parametrize("width", [160, 80])
def test_top_shows_a_row_per_core_with_a_bar_and_quits_on_q(proxied, width):
    t = Tmux(top_cmd(proxied), width=width)
    try:
        s = t.wait_for(lambda s: len(rows(s)) == 2)
        assert s, "no row per core on the screen:\n%s" % t.screen()
        assert "CORE" in s and "STATE" in s and "CPU" in s
        for core, ln in rows(s).items():
            assert "[" in ln and "]" in ln, "no bar on core %d's row: %r" % (core, ln)
        # Nothing wraps: every line fits in the window.
        assert all(len(ln) <= width for ln in s.splitlines())
        t.keys("q")
        s = t.wait_for(lambda s: "EXIT=" in s)
        assert s and "EXIT=0" in s, s
        assert not rows(s), "the screen was not restored after q:\n%s" % s
        # The terminal modes are back: echo and canonical input on again.
        assert t.wait_for(lambda s: "icanon+echo+" in s or "echo+icanon+" in s), t.screen()
    finally:
        t.close()


def test_top_refreshes_and_follows_state_and_ctrl_c_exits(proxied):
    t = Tmux(top_cmd(proxied))
    try:
        assert t.wait_for(lambda s: len(rows(s)) == 2)
        # Traffic on a kept-alive connection shows up as an open connection within a refresh.
        with Client(proxied.port) as c:
            for _ in range(20):
                assert c.get("/").status == 200
            s = t.wait_for(lambda s: "conns 1 " in s, timeout=3)
            assert s, t.screen()
        r = subprocess.run([binary("corralctl"), "-s", proxied.cfg["admin"]["socket"], "drain", "1"],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr
        s = t.wait_for(lambda s: "draining" in rows(s).get(1, ""), timeout=3)
        assert s, "drained core not shown:\n%s" % t.screen()
        t.keys("C-c")
        s = t.wait_for(lambda s: "EXIT=" in s)
        assert s and "EXIT=0" in s, s
    finally:
        t.close()


def test_top_survives_the_daemon_going_away(corral, backend):
    p = corral([backend])
    t = Tmux(top_cmd(p))
    try:
        assert t.wait_for(lambda s: len(rows(s)) == 2)
        p.check_exit()
        s = t.wait_for(lambda s: "daemon not running" in s, timeout=4)
        assert s, t.screen()
        t.keys("q")
        assert "EXIT=0" in (t.wait_for(lambda s: "EXIT=" in s) or "")
    finally:
        t.close()


def test_top_without_a_terminal_says_so(proxied):
    r = subprocess.run([binary("corralctl"), "-s", proxied.cfg["admin"]["socket"], "top"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)
    assert r.returncode == 2
    assert "needs a terminal" in r.stderr
