"""The listen backlog (issue 8, defect 14): net.core.somaxconn unless limits.listen_backlog is
set, so the sysctl file's somaxconn is not silently overridden by a hard-coded number."""
import subprocess

import pytest


def backlogs(port):
    """Send-Q of each listening socket on port: the backlog the listener was given."""
    out = subprocess.run(["ss", "-Hltn", "sport = :%d" % port], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 0, out.stderr
    return [int(line.split()[2]) for line in out.stdout.splitlines() if line.strip()]


def somaxconn():
    with open("/proc/sys/net/core/somaxconn") as f:
        return int(f.read())


@pytest.mark.corral_only
def test_backlog_from_config(corral, backend):
    p = corral([backend], limits={"listen_backlog": 123})
    assert backlogs(p.port) == [123, 123]  # one listener per worker
    assert "listen backlog 123 (limits.listen_backlog)" in p.log()


@pytest.mark.corral_only
def test_backlog_defaults_to_somaxconn(corral, backend):
    p = corral([backend])
    n = somaxconn()
    assert backlogs(p.port) == [n, n]
    assert "listen backlog %d (net.core.somaxconn)" % n in p.log()
