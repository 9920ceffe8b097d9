"""Issue 8 defect 5: a steady keep-alive load above 64 clients per core does not churn upstream
connections: with 200 keep-alive clients on one worker, the backend accepts no more connections
than there are clients. limits.upstream_idle_per_backend still caps the pool when set."""
import os
import re
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import SLOW  # noqa: E402

pytestmark = pytest.mark.corral_only

CLIENTS = 200


def wrk(port, seconds=2):
    out = subprocess.run(["wrk", "-t2", "-c%d" % CLIENTS, "-d%ds" % seconds, "--timeout", "5s",
                          "http://127.0.0.1:%d/" % port],
                         capture_output=True, text=True, timeout=seconds + 30 * SLOW)
    assert out.returncode == 0, out.stderr
    m = re.search(r"(\d+) requests in", out.stdout)
    assert m, out.stdout
    assert "Non-2xx" not in out.stdout and "Socket errors" not in out.stdout, out.stdout
    return int(m.group(1))


@pytest.mark.deadline(90)
def test_200_keep_alive_clients_on_one_core_open_at_most_200_backend_connections(corral, backend):
    p = corral([backend], workers={"cores": [0]})
    requests = wrk(p.port)
    st = backend.stats()
    print("requests %d, backend connections %d" % (requests, st["connections"]))
    assert requests > 2 * CLIENTS, "too little load to tell: %d requests" % requests
    # The backend counts the connection of the /__stats query itself too.
    assert st["connections"] - 1 <= CLIENTS, st


@pytest.mark.deadline(90)
def test_a_configured_per_backend_cap_still_applies(corral, backend):
    p = corral([backend], workers={"cores": [0]}, limits={"upstream_idle_per_backend": 8})
    requests = wrk(p.port, seconds=1)
    st = backend.stats()
    print("requests %d, backend connections %d" % (requests, st["connections"]))
    assert st["connections"] > CLIENTS, st  # the cap of 8 makes the pool churn, as configured
