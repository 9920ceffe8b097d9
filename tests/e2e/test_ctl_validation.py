"""The runtime accepts what the config accepts, and says no in the config's words (issue 8,
defect 7): core and backend weights are checked by the same code as the file, and disabling
the last enabled backend needs --force (as draining the last core is refused)."""
import re
import subprocess

import pytest
import yaml

from conftest import binary
from upstreams import ctl
from util import simple_get


def refused(p, *args):
    r = ctl(p, *args)
    assert r.returncode == 1, (args, r)
    assert r.stderr.startswith("corralctl: ") and len(r.stderr.splitlines()) == 1, r.stderr
    return r.stderr.strip()[len("corralctl: "):]


def file_says(tmp_path, **over):
    """The message `corral --check` gives for a config with these keys, without file:line."""
    cfg = {"listen": ["127.0.0.1:0"], "workers": {"cores": [0, 1]},
           "backends": ["127.0.0.1:9001", "127.0.0.1:9002"]}
    cfg.update(over)
    path = tmp_path / "check.yaml"
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    r = subprocess.run([binary("corral"), "--check", "-c", str(path)], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 1, r
    m = re.match(r"corral: .*?:\d+: (.*)$", r.stderr.strip())
    assert m, r.stderr
    return m.group(1)


@pytest.mark.corral_only
def test_core_weights_as_the_file_checks_them(corral, backend, tmp_path):
    p = corral([backend])
    assert ctl(p, "status").returncode == 0
    too_big = file_says(tmp_path, steering={"weights": [1001, 1]})
    assert too_big == "steering.weights[0]: must be an integer between 0 and 1000"
    assert refused(p, "weight", 0, 1001) == too_big
    assert refused(p, "weight", 0, 4294967295) == too_big  # was "Invalid argument"
    all_zero = file_says(tmp_path, steering={"weights": [0, 0]})
    assert ctl(p, "weight", 0, 0).returncode == 0
    assert refused(p, "weight", 1, 0) == all_zero
    assert ctl(p, "weight", 1, 1000).returncode == 0
    assert ctl(p, "weight", 0, 1).returncode == 0
    assert simple_get(p.port, "/").status == 200


@pytest.mark.corral_only
def test_backend_weights_and_last_enabled_backend(corral, backend_factory, tmp_path):
    a, b = backend_factory(ident="a"), backend_factory(ident="b")
    p = corral([a, b])
    too_big = file_says(tmp_path, backends=[{"address": "127.0.0.1:9001", "weight": 5000}])
    assert too_big == "backends[0].weight: must be an integer between 0 and 1000"
    assert refused(p, "backend", "weight", a.address, 5000) == too_big
    assert refused(p, "backend", "weight", b.address, 1001) == too_big.replace("[0]", "[1]")
    all_zero = file_says(tmp_path, backends=[{"address": "127.0.0.1:9001", "weight": 0}])
    assert ctl(p, "backend", "weight", a.address, 0).returncode == 0
    assert refused(p, "backend", "weight", b.address, 0) == all_zero
    assert ctl(p, "backend", "weight", a.address, 1).returncode == 0

    assert ctl(p, "backend", "disable", a.address).returncode == 0
    msg = refused(p, "backend", "disable", b.address)
    assert "last enabled backend" in msg and "--force" in msg, msg
    assert simple_get(p.port, "/").header("x-backend-id") == "b"
    r = ctl(p, "backend", "disable", "--force", b.address)
    assert r.returncode == 0, r
    assert simple_get(p.port, "/").status == 503
    assert ctl(p, "backend", "enable", b.address).returncode == 0
    assert simple_get(p.port, "/").status == 200
    # --force belongs to disable only.
    assert ctl(p, "backend", "enable", "--force", a.address).returncode == 2
