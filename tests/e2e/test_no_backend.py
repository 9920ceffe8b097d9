"""Issue 8 defect 8: a 503 because no backend is eligible names no upstream in the access log and is
counted as "no backend" (stats and metrics), never as an error of backend 0."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_metrics import families  # noqa: E402
from upstreams import ctl_ok, log_lines, scrape  # noqa: E402
from util import Client  # noqa: E402

pytestmark = pytest.mark.corral_only


def test_no_eligible_backend_is_not_blamed_on_backend_0(corral, backend_factory, tmp_path):
    a, b = backend_factory(), backend_factory()
    log = str(tmp_path / "access.log")
    p = corral([a, b], access_log={"path": log, "format": "json"})
    with Client(p.port) as c:
        assert c.get("/").status == 200  # a normal request first: it names its upstream
    ctl_ok(p, "backend", "disable", a.address)
    ctl_ok(p, "backend", "disable", "--force", b.address)  # the last one: needs --force
    for _ in range(3):
        with Client(p.port) as c:
            assert c.get("/").status == 503
    # Each core writes its own lines: across cores the file is not in request order.
    lines = sorted(log_lines(log, 4), key=lambda e: e["status"])
    assert lines[0]["status"] == 200 and lines[0]["upstream"] in (a.address, b.address), lines[0]
    for e in lines[1:]:
        assert e["status"] == 503 and e["upstream"] is None, e
    st = json.loads(ctl_ok(p, "stats", "--json"))["total"]
    assert st["no_backend"] == 3, st
    assert st["upstream_errors"] == 0, st
    be = json.loads(ctl_ok(p, "backends", "--json"))["backends"]
    assert [x["errors"] for x in be] == [0, 0], be
    fams = families(scrape(p)[2])
    assert sum(s.value for s in fams["corral_no_backend"].samples) == 3
    assert sum(s.value for s in fams["corral_backend_errors"].samples) == 0
