"""Backends at run time (operations.md): `corralctl backend disable/enable/weight` take effect on
traffic, `backends` shows the state, and a reload sets weights back to the file while a disabled
backend stays disabled for as long as its address stays in the config."""
import collections

import pytest

from upstreams import backends, ctl, ids_of, reload_with, wproxy  # noqa: F401

pytestmark = pytest.mark.corral_only


def ok(p, *args):
    r = ctl(p, *args)
    assert r.returncode == 0, "corralctl %s: %s" % (" ".join(args), r.stderr)


def spread(p, n=24):
    got = collections.Counter(ids_of(p.port, ["/"] * n))
    got.update(ids_of(p.port, ["/"] * 6, keep_alive=False))
    return got


def start(wproxy, backend_factory, names):
    bs = {n: backend_factory(ident=n) for n in names}
    return bs, wproxy([{"address": b.address, "weight": 1} for b in bs.values()])


def test_disable_and_enable_take_effect_on_traffic(wproxy, backend_factory):
    bs, p = start(wproxy, backend_factory, "AB")
    ok(p, "backend", "disable", bs["A"].address)
    assert backends(p)[bs["A"].address]["state"] == "disabled"
    assert spread(p) == {"B": 30}
    ok(p, "backend", "enable", bs["A"].address)
    assert backends(p)[bs["A"].address]["state"] == "up"
    assert set(spread(p)) == {"A", "B"}


def test_backend_weight_zero_by_corralctl_and_reload_resets_it(wproxy, backend_factory):
    bs, p = start(wproxy, backend_factory, "AB")
    ok(p, "backend", "weight", bs["A"].address, "0")
    assert backends(p)[bs["A"].address]["weight"] == 0
    assert spread(p) == {"B": 30}
    reload_with(p)  # the same file: weights back to its values
    assert backends(p)[bs["A"].address]["weight"] == 1
    got = spread(p)
    assert got["A"] >= 10 and got["B"] >= 10, got


def test_a_disabled_backend_stays_disabled_across_a_reload(wproxy, backend_factory):
    bs, p = start(wproxy, backend_factory, "ABC")
    ok(p, "backend", "disable", bs["B"].address)
    reload_with(p, backends=[{"address": bs[n].address, "weight": 2 if n == "A" else 1} for n in "ABC"])
    rows = backends(p)
    assert rows[bs["B"].address]["state"] == "disabled", rows
    assert rows[bs["A"].address]["weight"] == 2
    got = spread(p)
    assert got["B"] == 0 and got["A"] > got["C"] > 0, got


def test_a_disabled_backend_removed_and_added_back_is_enabled(wproxy, backend_factory):
    bs, p = start(wproxy, backend_factory, "AB")
    ok(p, "backend", "disable", bs["B"].address)
    reload_with(p, backends=[{"address": bs["A"].address, "weight": 1}])
    reload_with(p, backends=[{"address": bs[n].address, "weight": 1} for n in "AB"])
    assert backends(p)[bs["B"].address]["state"] == "up"
    assert set(spread(p)) == {"A", "B"}


def test_a_backend_added_by_reload_starts_with_zero_counters(wproxy, backend_factory):
    bs, p = start(wproxy, backend_factory, "AB")
    ids_of(p.port, ["/"] * 10)
    assert backends(p)[bs["B"].address]["requests"] == 5
    c = backend_factory(ident="C")
    reload_with(p, backends=[{"address": bs["A"].address, "weight": 1}])
    reload_with(p, backends=[{"address": a, "weight": 1} for a in (bs["A"].address, c.address)])
    row = backends(p)[c.address]
    assert row["requests"] == 0 and row["errors"] == 0, row
