"""The admin plane at the descriptor limit: when the main thread cannot accept a metrics or
control connection (EMFILE), the listener leaves the main thread's epoll set until the next
one-second tick instead of staying readable and spinning the main thread's poll; once
descriptors are free again the queued connection is served. The limit is lowered on the
running corral with `prlimit --pid` (a root process may lower another's soft limit) to the
number of descriptors it holds, so the next accept fails."""
import os
import socket
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import SLOW  # noqa: E402

pytestmark = pytest.mark.corral_only


def main_thread_cpu(pid):
    """User + system CPU seconds of corral's main thread (its tid is its pid)."""
    with open("/proc/%d/task/%d/stat" % (pid, pid)) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def set_soft_nofile(pid, soft):
    hard = int(subprocess.run(["prlimit", "--pid", str(pid), "--nofile", "--noheadings", "--raw",
                               "--output=HARD"], capture_output=True, text=True, check=True).stdout)
    subprocess.run(["prlimit", "--pid", str(pid), "--nofile=%d:%d" % (soft, hard)], check=True)
    return hard


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def recv_until(s, deadline, done=None):
    """Reads until end-of-file, done(got) or the deadline."""
    got = b""
    while time.monotonic() < deadline and not (done and done(got)):
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        got += chunk
    return got


@pytest.mark.parametrize("plane", ["metrics", "control"])
def test_admin_accept_at_emfile_does_not_spin_and_serves_after(proxied, plane):
    pid = proxied.proc.pid
    assert proxied.metrics_port
    soft0 = int(subprocess.run(["prlimit", "--pid", str(pid), "--nofile", "--noheadings", "--raw",
                                "--output=SOFT"], capture_output=True, text=True, check=True).stdout)
    hard = set_soft_nofile(pid, fd_count(pid))
    try:
        if plane == "metrics":
            s = socket.create_connection(("127.0.0.1", proxied.metrics_port), timeout=1)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        else:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(1)
            s.connect(proxied.cfg["admin"]["socket"])
            s.sendall(b'{"cmd":"status"}\n')
        # The connect completed in the listen backlog; corral's accept fails with EMFILE.
        time.sleep(0.3)
        t0, c0 = time.monotonic(), main_thread_cpu(pid)
        time.sleep(1.5)
        used = (main_thread_cpu(pid) - c0) / (time.monotonic() - t0)
        assert used < 0.15, "main thread used %.2f s of CPU per second at EMFILE (spinning)" % used
        assert "paused until the next second" in proxied.log()
    finally:
        set_soft_nofile(pid, soft0)
    assert hard >= soft0
    # Descriptors are free again: within a tick or two the queued connection is accepted.
    # The metrics answer ends with the connection (Connection: close); the control one is a line.
    got = recv_until(s, time.monotonic() + 5 * SLOW, None if plane == "metrics" else lambda g: b"\n" in g)
    s.close()
    if plane == "metrics":
        assert got.startswith(b"HTTP/1.1 200"), got[:200]
        assert b"corral_" in got
    else:
        assert got.startswith(b"{") and b'"ok"' in got, got[:200]
