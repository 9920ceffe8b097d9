"""Signals a daemon conventionally receives (issue 8, defect 4): SIGUSR1 reopens the access log
at its configured path (logrotate's rename + postrotate), SIGPIPE does not kill (SIGUSR2 is a binary
upgrade: tests/e2e/test_upgrade.py)."""
import os
import signal
import time

import pytest

from conftest import SLOW
from util import Client


def lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().splitlines()


def wait_lines(path, n, timeout=5):
    deadline = time.monotonic() + timeout * SLOW
    while len(lines(path)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return lines(path)


def get(p, target):
    with Client(p.port, timeout=5 * SLOW) as c:
        r = c.get(target)
        assert r.status == 200, r


@pytest.mark.corral_only
def test_sigusr1_reopens_the_access_log(corral, backend, tmp_path):
    path = str(tmp_path / "access.log")
    p = corral([backend], access_log={"path": path, "format": "json"})
    get(p, "/?before")
    assert len(wait_lines(path, 1)) == 1, lines(path)

    # logrotate: rename, then USR1 (deploy/logrotate-corral).
    os.rename(path, path + ".1")
    p.proc.send_signal(signal.SIGUSR1)
    assert p.err.wait_for(r"access log .* reopened", 5 * SLOW), p.log()[-2000:]
    assert p.alive()
    get(p, "/?after")
    new = wait_lines(path, 1)
    assert len(new) == 1 and "?after" in new[0], new
    old = lines(path + ".1")
    assert len(old) == 1 and "?before" in old[0], old

    # A second rotation works the same way (the fd number stays the workers' fd).
    os.rename(path, path + ".2")
    p.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5 * SLOW
    while p.log().count("reopened") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    get(p, "/?third")
    third = wait_lines(path, 1)
    assert len(third) == 1 and "?third" in third[0], third
    assert len(lines(path + ".2")) == 1


@pytest.mark.corral_only
def test_sigusr1_without_access_log_is_harmless(corral, backend):
    p = corral([backend])
    p.proc.send_signal(signal.SIGUSR1)
    assert p.err.wait_for(r"no log file to reopen", 5 * SLOW), p.log()[-2000:]
    assert p.alive()
    get(p, "/")


@pytest.mark.corral_only
@pytest.mark.parametrize("sig", [signal.SIGPIPE])
def test_conventional_signals_do_not_kill(corral, backend, sig):
    p = corral([backend])
    for _ in range(3):
        p.proc.send_signal(sig)
    # The daemon handles signals on its main loop; give it a few periods, then it must serve.
    deadline = time.monotonic() + 1 * SLOW
    while time.monotonic() < deadline and p.alive():
        time.sleep(0.05)
    assert p.alive(), "corral died on %s (exit %s)" % (sig.name, p.proc.poll())
    get(p, "/")
    # check_exit at teardown: SIGTERM still stops it with exit 0.
