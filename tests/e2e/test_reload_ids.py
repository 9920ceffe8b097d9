"""Reload changes the backend list in every way an operator can (issue 8, defect 1): after
`corralctl reload` returns, each request goes to a backend of the new list, balanced as
configured, a pooled upstream connection is reused only for the address it was opened to, and
idle connections to removed backends are closed. Pools are warm on both workers before each
reload, so a pool keyed by a reused id would hand out a connection to the wrong address."""
import json
import time

import pytest
import yaml

from conftest import SLOW
from upstreams import ctl
from util import Client

# name: (backends before, backends after), by letter
CASES = {
    "insert_before": ("AB", "CAB"),
    "append": ("AB", "ABC"),
    "remove_first": ("AB", "B"),
    "replace_all": ("AB", "CD"),
    "replace_all_by_one": ("AB", "C"),
    "reorder": ("AB", "BA"),
    "replace_one_of_three": ("ABC", "ADC"),
    "add_to_single": ("A", "AB"),
    "add_before_single": ("A", "BA"),
}


def core_pool_idle(p):
    out = ctl(p, "stats", "--json")
    assert out.returncode == 0, out.stderr
    return [c["pool"]["idle"] for c in json.loads(out.stdout)["cores"]]


def answers(port, conns, per_conn):
    """X-Backend-Id of every response, over `conns` fresh keep-alive connections in turn."""
    ids = []
    for _ in range(conns):
        with Client(port, timeout=5 * SLOW) as c:
            for _ in range(per_conn):
                r = c.get("/")
                assert r.status == 200, r
                ids.append(r.header("X-Backend-Id"))
    return ids


@pytest.mark.corral_only
@pytest.mark.parametrize("case", sorted(CASES))
def test_reload_routes_to_the_new_backends(case, corral, backend_factory):
    before, after = CASES[case]
    be = {n: backend_factory(ident=n) for n in sorted(set(before + after))}
    p = corral([be[n] for n in before], steering={"policy": "round-robin"},
               limits={"upstream_idle_per_backend": 64})
    assert len(p.cfg["workers"]["cores"]) == 2

    # Warm pools: round-robin steering spreads the connections over both workers, and every
    # worker's round-robin balancer visits every backend, leaving an idle connection to each.
    ids = answers(p.port, 8, 2 * len(before))
    assert set(ids) == set(before), ids
    deadline = time.monotonic() + 5 * SLOW
    while min(core_pool_idle(p)) < len(before) and time.monotonic() < deadline:
        ids += answers(p.port, 2, 2 * len(before))
    assert min(core_pool_idle(p)) >= len(before), core_pool_idle(p)

    p.cfg["backends"] = [{"address": be[n].address, "weight": 1} for n in after]
    with open(p.cfg_path, "w") as f:
        yaml.safe_dump(p.cfg, f)
    out = ctl(p, "reload")
    assert out.returncode == 0, out.stdout + out.stderr
    removed = {n: be[n].stats()["requests"] for n in set(before) - set(after)}

    per_conn = 4 * len(after)
    ids = answers(p.port, 8, per_conn)
    # Every request went to a backend of the new list, and each got its share: the per-worker
    # smooth round-robin may start off-phase after the reload, by at most one pick per worker.
    assert set(ids) <= set(after), (case, ids)
    expect = len(ids) // len(after)
    counts = {n: ids.count(n) for n in after}
    assert all(abs(k - expect) <= 2 for k in counts.values()), (case, counts, ids)
    # No request reached a removed backend after the reload returned...
    for n, seen in removed.items():
        assert be[n].stats()["requests"] == seen, (case, n)
    # ...and its idle pooled connections are closed (its only connection is our /__stats one).
    deadline = time.monotonic() + 5 * SLOW
    for n in removed:
        while be[n].stats()["active"] > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert be[n].stats()["active"] == 1, (case, n, be[n].stats())
